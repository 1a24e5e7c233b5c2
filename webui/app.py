"""The Gradio page: a Train tab and an Evaluate tab over llmtune's own arguments.

Fields come from :mod:`webui.fields` (the dataclasses); buttons call :mod:`webui.actions`; the
run panel re-reads the run's files every second (:mod:`webui.runs`), so a reloaded page, a second
browser or a restarted UI shows the same run.
"""

from __future__ import annotations

import os
from itertools import groupby
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from an offline machine

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from webui import actions, runs  # noqa: E402
from webui.fields import (  # noqa: E402
    Field,
    all_method_groups,
    dataset_names,
    eval_fields,
    method_groups,
    preset_values,
    presets,
    start_values,
    task_names,
    train_fields,
)

GROUP_TITLES = {
    "ModelArguments": "Model",
    "DataArguments": "Data",
    "FinetuningArguments": "Method",
    "TrainingArguments": "Training",
}
OPEN_GROUPS = ("ModelArguments", "DataArguments", "FinetuningArguments", "TrainingArguments")
PER_ROW = 3
REFRESH_S = 1.0


def _component(f: Field, value: Any, datasets: list[str]) -> gr.components.Component:
    """The widget for one field (a switch, a closed choice, or a text box showing the default)."""
    label, info, elem = f.name, (f.help or None), f"f-{f.name}"
    if f.kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=info, elem_id=elem)
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), value=value or f.default, label=label, info=info, elem_id=elem)
    if f.name == "dataset":
        chosen = [v for v in str(value).split(",") if v]
        return gr.Dropdown(
            datasets, value=chosen, multiselect=True, allow_custom_value=True, label=label, info=info, elem_id=elem
        )
    return gr.Textbox(value=str(value), label=label, info=info, placeholder=f.default_text, elem_id=elem)


def _form_values(keys: list[str], raw: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(keys, raw, strict=True))
    if isinstance(values.get("dataset"), list):
        values["dataset"] = ",".join(values["dataset"])
    return values


def _loss_frame(view: runs.RunView | None) -> pd.DataFrame:
    points = view.losses if view else []
    return pd.DataFrame(points, columns=["step", "loss"])


def _results_frame(view: runs.RunView | None) -> pd.DataFrame:
    rows = view.results if view else []
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["task"])


def _chart_frame(view: runs.RunView | None) -> pd.DataFrame:
    rows = [(r["task"], k, v) for r in (view.results if view else []) for k, v in r.items() if k != "task"]
    return pd.DataFrame(rows, columns=["task", "metric", "value"])


def _run_choices() -> list[tuple[str, str]]:
    return [(f"{r.id} · {r.kind} · {r.output_dir}", r.id) for r in runs.list_launches()]


def _newest(kind: str | None = None) -> str | None:
    """The run a fresh page shows: the newest one still going, else the newest one."""
    found = [r for r in runs.list_launches() if kind is None or r.kind == kind]
    going = [r for r in found if runs.alive(r.pid)]
    chosen = going or found
    return chosen[0].id if chosen else None


def create_app() -> gr.Blocks:
    """Build the page (one UiState per UI process: one run at a time)."""
    state = actions.UiState()
    fields = train_fields()
    keys = [f.name for f in fields]
    start = start_values()
    datasets = dataset_names()
    method_set = set(all_method_groups())

    with gr.Blocks(title="llmtune") as app:
        gr.Markdown("# llmtune\nBuild, preview, start and watch a fine-tuning run. Runs go on when this page closes.")
        with gr.Tab("Train"):
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        preset = gr.Dropdown(list(presets()), value=None, label="Preset (examples/)", elem_id="preset")
                        load_preset = gr.Button("Load preset", elem_id="load-preset")
                    components: list[gr.components.Component] = []
                    accordions: dict[str, gr.Accordion] = {}
                    first_type = start["finetuning_type"]
                    for group, members in groupby(fields, key=lambda f: f.group):
                        members = list(members)
                        visible = group not in method_set or group in method_groups()[first_type]
                        title = GROUP_TITLES.get(group, f"{group.removesuffix('Arguments')} options")
                        with gr.Accordion(
                            title, open=group in OPEN_GROUPS or group in method_set, visible=visible
                        ) as acc:
                            for i in range(0, len(members), PER_ROW):
                                with gr.Row():
                                    row = members[i : i + PER_ROW]
                                    components += [_component(f, start[f.name], datasets) for f in row]
                        if group in method_set:
                            accordions[group] = acc
                    extra = gr.Textbox(label="Other keys (YAML, one `key: value` a line)", lines=2, elem_id="extra")
                with gr.Column(scale=2):
                    with gr.Row():
                        preview_btn = gr.Button("Preview", elem_id="preview")
                        estimate_btn = gr.Button("Estimate memory", elem_id="estimate")
                    with gr.Row():
                        start_btn = gr.Button("Start", variant="primary", elem_id="start")
                        abort_btn = gr.Button("Abort", variant="stop", elem_id="abort")
                    message = gr.Markdown(elem_id="message")
                    command = gr.Code(label="Command", language="shell", wrap_lines=True, elem_id="command")
                    yaml_box = gr.Code(label="YAML", language="yaml", elem_id="yaml")
                    with gr.Row():
                        save_path = gr.Textbox(
                            value="saves/webui/config.yaml", label="Save config as", elem_id="save-path"
                        )
                        save_btn = gr.Button("Save config", elem_id="save")
                    estimate_box = gr.Textbox(
                        label="Memory estimate (llmtune estimate)", lines=6, elem_id="estimate-out"
                    )
                    gr.Markdown("## Runs")
                    run_pick = gr.Dropdown(_run_choices(), label="Run", elem_id="run-pick")
                    status = gr.Markdown("no run yet", elem_id="run-status")
                    progress = gr.HTML(elem_id="run-progress")
                    loss_plot = gr.LinePlot(
                        _loss_frame(None), x="step", y="loss", title="training loss", elem_id="loss-plot"
                    )
                    log_box = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, elem_id="run-log")

        with gr.Tab("Evaluate"):
            run_dir = gr.Textbox(
                value=start["output_dir"], label="Run folder (written by llmtune train)", elem_id="e-run"
            )
            tasks = gr.Dropdown(task_names(), value=["demo_sst2"], multiselect=True, label="Tasks", elem_id="e-tasks")
            eval_components = []
            efields = eval_fields()
            with gr.Accordion("Evaluation options", open=False):
                for i in range(0, len(efields), PER_ROW):
                    with gr.Row():
                        for f in efields[i : i + PER_ROW]:
                            value = bool(f.default) if f.kind == "bool" else f.default_text
                            eval_components.append(_component(f, value, []))
            with gr.Row():
                eval_preview_btn = gr.Button("Preview", elem_id="e-preview")
                eval_start_btn = gr.Button("Start evaluation", variant="primary", elem_id="e-start")
            eval_message = gr.Markdown(elem_id="e-message")
            eval_command = gr.Code(label="Command", language="shell", wrap_lines=True, elem_id="e-command")
            eval_status = gr.Markdown(elem_id="e-status")
            results = gr.Dataframe(label="Results", elem_id="e-results")
            chart = gr.BarPlot(
                _chart_frame(None), x="metric", y="value", color="task", title="metrics", elem_id="e-chart"
            )
            eval_log = gr.Textbox(label="Log (last lines)", lines=8, max_lines=8, elem_id="e-log")

        # ---- wiring
        def values_of(raw):
            return _form_values(keys, raw[: len(keys)]), raw[len(keys)]

        def on_preview(*raw):
            return actions.preview(*values_of(raw))

        def on_estimate(*raw):
            return actions.estimate(*values_of(raw))

        def on_save(*raw):
            values, extra_text = values_of(raw[:-1])
            return actions.save_config(values, extra_text, raw[-1])

        def on_start(*raw):
            text = actions.start_train(state, *values_of(raw))
            chosen = state.current.id if state.current else None
            return text, gr.update(choices=_run_choices(), value=chosen)

        def on_abort(run_id):
            record = runs.get_launch(run_id) if run_id else state.current
            return actions.abort_message(record)

        def on_type(ft):
            own = method_groups().get(ft, ())
            return [gr.update(visible=g in own) for g in accordions]

        def on_preset(name):
            found = presets().get(name)
            if found is None:
                return [gr.update() for _ in components] + [gr.update()]
            values, leftover = preset_values(found)
            out = []
            for f in fields:
                value = values.get(f.name)
                if f.name == "dataset":
                    value = [v for v in str(value).split(",") if v]
                out.append(gr.update(value=value))
            return out + [gr.update(value=leftover)]

        def refresh(run_id):
            record = runs.get_launch(run_id) if run_id else None
            view = runs.view(record) if record else None
            log = "\n".join(view.log) if view else ""
            return actions.status_markdown(record, view), actions.progress_html(view), _loss_frame(view), log

        def eval_refresh():
            record = state.current if state.current and state.current.kind == "eval" else None
            newest = None if record else _newest("eval")
            record = record or (runs.get_launch(newest) if newest else None)
            view = runs.view(record) if record else None
            log = "\n".join(view.log) if view else ""
            if record is None:
                return "", _results_frame(None), _chart_frame(None), ""
            return actions.status_markdown(record, view), _results_frame(view), _chart_frame(view), log

        def eval_values(raw):
            return dict(zip([f.name for f in efields], raw, strict=True))

        def on_eval_preview(run, chosen, *raw):
            return actions.preview_eval(run, chosen, eval_values(raw))

        def on_eval_start(run, chosen, *raw):
            shown, text = actions.start_eval(state, run, chosen, eval_values(raw))
            return shown, text, gr.update(choices=_run_choices())

        def on_load():
            return gr.update(choices=_run_choices(), value=_newest())

        form = [*components, extra]
        preview_btn.click(on_preview, form, [command, yaml_box, message])
        estimate_btn.click(on_estimate, form, estimate_box)
        save_btn.click(on_save, [*form, save_path], message)
        start_btn.click(on_start, form, [message, run_pick])
        abort_btn.click(on_abort, run_pick, message)
        preset_btn_outputs = [*components, extra]
        load_preset.click(on_preset, preset, preset_btn_outputs)
        type_box = components[keys.index("finetuning_type")]
        type_box.change(on_type, type_box, list(accordions.values()))
        eval_inputs = [run_dir, tasks, *eval_components]
        eval_preview_btn.click(on_eval_preview, eval_inputs, [eval_command, eval_message])
        eval_start_btn.click(on_eval_start, eval_inputs, [eval_command, eval_message, run_pick])
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, run_pick, [status, progress, loss_plot, log_box])
        timer.tick(eval_refresh, None, [eval_status, results, chart, eval_log])
        run_pick.change(refresh, run_pick, [status, progress, loss_plot, log_box])
        app.load(on_load, None, run_pick)
    return app
