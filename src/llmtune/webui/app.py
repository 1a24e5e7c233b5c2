"""The Gradio page: a Train tab and an Evaluate tab over llmtune's own arguments.

Fields come from :mod:`llmtune.webui.fields` (the dataclasses); buttons call :mod:`llmtune.webui.actions`; the
run panel re-reads the run's files every second (:mod:`llmtune.webui.runs`), so a reloaded page, a second
browser or a restarted UI shows the same run.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from an offline machine

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from llmtune.webui import actions, runs  # noqa: E402
from llmtune.webui.fields import (  # noqa: E402
    STARTING_POINTS,
    Field,
    all_method_groups,
    dataset_names,
    eval_fields,
    method_groups,
    method_summaries,
    model_choices,
    preset_values,
    presets,
    run_folders,
    sections,
    start_values,
    task_names,
    train_fields,
)

PER_ROW = 3
# The settings the memory picture depends on: it is redrawn when one of them changes.
MEMORY_KEYS = (
    "model_name_or_path",
    "finetuning_type",
    "per_device_train_batch_size",
    "cutoff_len",
    "bf16",
    "fp16",
    "quantization_bit",
    "gradient_checkpointing",
)
REFRESH_S = 1.0


def _component(
    f: Field, value: Any, datasets: list[str], listed: dict[str, list[str]], scale: int | None = None, tab: str = ""
) -> gr.components.Component:
    """The widget for one field (a switch, a closed choice, a list with free text, or a text box);
    ``listed``: the model and adapter boxes' lists (``models``, ``adapters``); ``tab``: its element id's prefix
    beyond the Train tab (the Evaluate tab has keys of the same names)."""
    info = None if f.name == "finetuning_type" else f.help or None  # the method line under it explains the choice
    common = {"label": f.name, "info": info, "elem_id": f"{tab}f-{f.name}", "scale": scale}
    if f.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), value=value or f.default, **common)
    if f.name == "dataset":
        chosen = [v for v in str(value).split(",") if v]
        return gr.Dropdown(datasets, value=chosen, multiselect=True, allow_custom_value=True, **common)
    if f.name in ("model_name_or_path", "adapter_name_or_path"):  # a list to pick from, or any text
        choices = listed["models"] if f.name == "model_name_or_path" else listed["adapters"]
        return gr.Dropdown(choices, value=str(value), allow_custom_value=True, **common)
    return gr.Textbox(value=str(value), placeholder=f.default_text, **common)


def _shown(f: Field, value: Any) -> Any:
    """A form value as its widget holds it (the dataset box holds a list)."""
    return [v for v in str(value or "").split(",") if v] if f.name == "dataset" else value


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


def _run_folders() -> list[str]:
    """The output folders of the training runs this UI knows, newest first (the Compare tab's choices)."""
    return list(dict.fromkeys(r.output_dir for r in runs.list_launches() if r.kind == "train"))


def _newest(kind: str | None = None) -> str | None:
    """The run a fresh page shows: the newest one still going, else the newest one."""
    found = [r for r in runs.list_launches() if kind is None or r.kind == kind]
    going = [r for r in found if runs.alive(r.pid)]
    chosen = going or found
    return chosen[0].id if chosen else None


def _method_line(finetuning_type: str) -> str:
    return f"**{finetuning_type}**: {method_summaries().get(finetuning_type, '')}"


def _method_title(group: str) -> str:
    users = [name for name, groups in method_groups().items() if groups and groups[0] == group]
    return f"{group.removesuffix('Arguments')} options ({', '.join(users) or 'method'})"


def _train_form(start: dict[str, Any], listed: dict[str, list[str]]) -> SimpleNamespace:
    """The Train tab's left column: the starting points, the keys people change, then every other key in
    collapsed sections by concern (a method's options only for its finetuning types); ``listed``: the
    model and adapter boxes' lists."""
    datasets = dataset_names()
    method_set = set(all_method_groups())
    by_name = {f.name: f for f in train_fields()}
    made: dict[str, gr.components.Component] = {}
    ui = SimpleNamespace(accordions={})

    def put(*names: str, scales: tuple[int | None, ...] = ()) -> None:
        for name, scale in zip(names, scales or (None,) * len(names), strict=True):
            made[name] = _component(by_name[name], start[name], datasets, listed, scale)

    with gr.Row():
        ui.starts = {
            name: gr.Button(point.label, size="sm", elem_id=f"start-{name}") for name, point in STARTING_POINTS.items()
        }
    ui.start_message = gr.Markdown(elem_id="start-message")
    with gr.Row():
        put("model_name_or_path", "adapter_name_or_path", "finetuning_type")
    ui.method_line = gr.Markdown(_method_line(start["finetuning_type"]), elem_id="method-line")
    with gr.Row():
        put("dataset", "train_as_classification", scales=(2, 2))  # the switch's long name needs the room
        ui.preview_data = gr.Button("Preview data", size="sm", scale=1, elem_id="preview-data")
    ui.data_preview = gr.HTML(elem_id="data-preview", max_height=320)
    with gr.Row():
        put("learning_rate", "num_train_epochs", "max_steps")
    with gr.Row():
        put("per_device_train_batch_size", "cutoff_len", "output_dir")
    for section, members in sections().items():
        visible = section not in method_set or section in method_groups()[start["finetuning_type"]]
        title = _method_title(section) if section in method_set else section
        with gr.Accordion(title, open=False, visible=visible, elem_id=f"section-{section}") as acc:
            for i in range(0, len(members), PER_ROW):
                with gr.Row():
                    put(*[f.name for f in members[i : i + PER_ROW]])
        if section in method_set:
            ui.accordions[section] = acc
    with gr.Accordion("Presets and other keys", open=False, elem_id="section-other"):
        with gr.Row():
            ui.preset = gr.Dropdown(list(presets()), value=None, label="Preset (examples/)", elem_id="preset")
            ui.load_preset = gr.Button("Load preset", elem_id="load-preset")
        ui.extra = gr.Textbox(label="Other keys (YAML, one `key: value` a line)", lines=2, elem_id="extra")
    ui.components = [made[f.name] for f in train_fields()]  # the form's order: fields.train_fields
    return ui


def _gpu_memory_gb() -> float:
    """This machine's GPU memory in GB, else 24 (a common card; the user types theirs)."""
    try:
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    except Exception:  # noqa: BLE001 - no torch or no CUDA: the default
        pass
    return 24.0


def _train_panel() -> SimpleNamespace:
    """The Train tab's right column: the buttons, the command and YAML, and the run being watched."""
    ui = SimpleNamespace()
    with gr.Row():
        ui.preview = gr.Button("Preview", elem_id="preview")
        ui.estimate = gr.Button("Estimate memory", elem_id="estimate")
    with gr.Row():
        ui.start = gr.Button("Start", variant="primary", elem_id="start")
        ui.abort = gr.Button("Abort", variant="stop", elem_id="abort")
    ui.message = gr.Markdown(elem_id="message")
    ui.command = gr.Code(label="Command", language="shell", wrap_lines=True, elem_id="command")
    with gr.Accordion("YAML, save, llmtune estimate", open=False, elem_id="section-yaml"):
        ui.yaml = gr.Code(label="YAML", language="yaml", elem_id="yaml")
        with gr.Row():
            ui.save_path = gr.Textbox(value="saves/webui/config.yaml", label="Save config as", elem_id="save-path")
            ui.save = gr.Button("Save config", elem_id="save")
        ui.estimate_out = gr.Textbox(label="Memory estimate (llmtune estimate)", lines=6, elem_id="estimate-out")
    ui.memory_plot = gr.Plot(label="What fits: every finetuning type for this run", elem_id="memory-plot")
    with gr.Row():
        ui.gpu_memory = gr.Number(value=_gpu_memory_gb(), label="GPU memory (GB)", elem_id="gpu-memory")
        ui.memory_line = gr.Markdown(elem_id="memory-line")
    gr.Markdown("## Runs")
    ui.run_pick = gr.Dropdown(_run_choices(), label="Run", elem_id="run-pick")
    ui.status = gr.Markdown("no run yet", elem_id="run-status")
    ui.progress = gr.HTML(elem_id="run-progress")
    ui.loss_plot = gr.LinePlot(_loss_frame(None), x="step", y="loss", title="training loss", elem_id="loss-plot")
    ui.log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, elem_id="run-log")
    return ui


def _saved_runs(saved: dict[str, list[str]]) -> list[str]:
    """The training runs that saved a model or an adapter, newest first (what Evaluate can score), from
    :func:`run_folders`' answer ``saved``."""
    return [*saved["adapters"], *saved["models"]]


def _lists() -> dict[str, list[str]]:
    """Every list of runs the page offers, from one read of the saved runs (each read opens every run's
    record): models and adapters to start from, runs Evaluate can score, run folders to compare."""
    saved = run_folders()
    return {
        "models": model_choices(saved),
        "adapters": saved["adapters"],
        "saved": _saved_runs(saved),
        "folders": _run_folders(),
    }


def _merged_dir(run: str | None) -> str:
    """Export's default target for ``run``."""
    return f"{run}-merged" if run else ""


def _eval_tab(listed: dict[str, list[str]]) -> SimpleNamespace:
    """The Evaluate tab: a run folder (``listed["saved"]``: the runs to pick from), tasks, the eval options, and
    the results."""
    ui = SimpleNamespace(components=[])
    saved = listed["saved"]
    ui.run_dir = gr.Dropdown(
        saved,
        value=saved[0] if saved else None,
        allow_custom_value=True,
        label="Run folder (written by llmtune train): the UI's runs, or any folder",
        elem_id="e-run",
    )
    ui.tasks = gr.Dropdown(task_names(), value=["demo_sst2"], multiselect=True, label="Tasks", elem_id="e-tasks")
    efields = eval_fields()
    with gr.Accordion("Evaluation options", open=False):
        for i in range(0, len(efields), PER_ROW):
            with gr.Row():
                for f in efields[i : i + PER_ROW]:
                    value = bool(f.default) if f.kind == "bool" else f.default_text
                    ui.components.append(_component(f, value, [], listed, tab="e-"))
    with gr.Row():
        ui.preview = gr.Button("Preview", elem_id="e-preview")
        ui.start = gr.Button("Start evaluation", variant="primary", elem_id="e-start")
    ui.message = gr.Markdown(elem_id="e-message")
    ui.command = gr.Code(label="Command", language="shell", wrap_lines=True, elem_id="e-command")
    ui.status = gr.Markdown(elem_id="e-status")
    ui.results = gr.Dataframe(label="Results", elem_id="e-results")
    ui.chart = gr.BarPlot(_chart_frame(None), x="metric", y="value", color="task", title="metrics", elem_id="e-chart")
    ui.log = gr.Textbox(label="Log (last lines)", lines=8, max_lines=8, elem_id="e-log")
    return ui


def create_app() -> gr.Blocks:
    """Build the page (one UiState per UI process: one run at a time)."""
    state = actions.UiState()
    fields = train_fields()
    keys = [f.name for f in fields]
    efields = eval_fields()
    start = start_values()
    listed = _lists()

    with gr.Blocks(title="llmtune") as app:
        gr.Markdown("# llmtune\nBuild, preview, start and watch a fine-tuning run. Runs go on when this page closes.")
        with gr.Tab("Train") as train_tab:
            with gr.Row():
                with gr.Column(scale=3):
                    form_ui = _train_form(start, listed)
                with gr.Column(scale=2):
                    panel = _train_panel()
        with gr.Tab("Evaluate") as eval_tab:
            ev = _eval_tab(listed)
        with gr.Tab("Chat") as chat_tab:
            chat = actions.ChatSession()
            with gr.Row():
                chat_model = gr.Dropdown(
                    [*listed["models"], *listed["adapters"]],
                    value="llmtune/tiny-llama",
                    allow_custom_value=True,
                    label="Model, run folder or adapter run",
                    elem_id="chat-model",
                )
                chat_adapter = gr.Textbox(label="Adapter (optional)", elem_id="chat-adapter")
                chat_tokens = gr.Number(value=256, label="max_new_tokens", elem_id="chat-tokens")
                chat_load = gr.Button("Load", elem_id="chat-load")
            chat_status = gr.Markdown(elem_id="chat-status")
            chatbot = gr.Chatbot(elem_id="chatbot", height=360)
            chat_input = gr.Textbox(label="Message", elem_id="chat-input")
            chat_clear = gr.Button("Clear", elem_id="chat-clear")
        with gr.Tab("Compare") as compare_tab:
            compare_pick = gr.Dropdown(
                listed["folders"],
                multiselect=True,
                allow_custom_value=True,
                label="Runs",
                info="two or more training run folders (this UI's runs, or type any folder): their loss against "
                "steps and time, and their results, side by side",
                elem_id="compare-pick",
            )
            compare_button = gr.Button("Compare", elem_id="compare")
            compare_plot = gr.Plot(elem_id="compare-plot")
            compare_table = gr.Markdown(elem_id="compare-table")
        with gr.Tab("Export") as export_tab:
            gr.Markdown("Merge a LoRA or LoRETTA reparam run's adapter into its base model (`llmtune export`).")
            adapters = listed["adapters"]
            with gr.Row():
                export_run = gr.Dropdown(
                    adapters,
                    value=adapters[0] if adapters else None,
                    allow_custom_value=True,
                    label="Run folder: the UI's adapter runs, or any folder",
                    elem_id="export-run",
                )
                export_dir = gr.Textbox(
                    value=_merged_dir(adapters[0] if adapters else None), label="Export to", elem_id="export-dir"
                )
                export_dtype = gr.Dropdown(
                    ["bf16", "fp16", "fp32"], value="fp32", label="dtype", elem_id="export-dtype"
                )
            export_button = gr.Button("Export", variant="primary", elem_id="export")
            export_message = gr.Markdown(elem_id="export-message")
        components, accordions, extra = form_ui.components, form_ui.accordions, form_ui.extra

        # ---- wiring
        def values_of(raw):
            return _form_values(keys, raw[: len(keys)]), raw[len(keys)]

        def on_preview(*raw):
            return actions.preview(*values_of(raw))

        def on_estimate(*raw):
            return actions.estimate(*values_of(raw))

        def on_memory(*raw):
            values, extra_text = values_of(raw[:-1])
            return actions.memory_picture(values, extra_text, raw[-1])

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
            return [gr.update(visible=g in own) for g in accordions] + [_method_line(ft)]

        def on_starting(name, model):
            values, message = actions.starting_point(name, model)
            out = [gr.update(value=_shown(f, values[f.name])) for f in fields]
            return [*out, gr.update(value=""), message, ""]

        def on_preview_data(*raw):
            return actions.preview_data(*values_of(raw))

        def on_preset(name):
            found = presets().get(name)
            if found is None:
                return [gr.update() for _ in components] + [gr.update()]
            values, leftover = preset_values(found)
            return [gr.update(value=_shown(f, values.get(f.name))) for f in fields] + [gr.update(value=leftover)]

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

        def run_lists():  # runs that finished since the page was drawn are models or adapters to pick now
            now = _lists()
            adapters = now["adapters"]
            return (
                gr.update(choices=now["models"]),
                gr.update(choices=adapters),
                gr.update(choices=[*now["models"], *adapters]),
                gr.update(choices=now["folders"]),
                gr.update(choices=now["saved"]),
                gr.update(choices=adapters),
                *(gr.update(choices=adapters) for _ in eval_adapter),
            )

        def on_load():
            return gr.update(choices=_run_choices(), value=_newest()), *run_lists()

        form = [*components, extra]
        watched = [panel.status, panel.progress, panel.loss_plot, panel.log]
        panel.preview.click(on_preview, form, [panel.command, panel.yaml, panel.message])
        panel.estimate.click(on_estimate, form, panel.estimate_out)
        memory_out = [panel.memory_plot, panel.memory_line]
        panel.estimate.click(on_memory, [*form, panel.gpu_memory], memory_out)
        for key in MEMORY_KEYS:  # the picture follows the settings it depends on
            components[keys.index(key)].change(on_memory, [*form, panel.gpu_memory], memory_out)
        panel.gpu_memory.change(on_memory, [*form, panel.gpu_memory], memory_out)
        panel.save.click(on_save, [*form, panel.save_path], panel.message)
        export_button.click(actions.export_run, [export_run, export_dir, export_dtype], export_message)
        compare_button.click(actions.compare_runs, compare_pick, [compare_plot, compare_table])
        chat_load.click(chat.load, [chat_model, chat_adapter, chat_tokens], chat_status)
        chat_input.submit(chat.stream, [chat_input, chatbot], chatbot).then(lambda: "", None, chat_input)
        chat_clear.click(lambda: [], None, chatbot)
        panel.start.click(on_start, form, [panel.message, panel.run_pick])
        panel.abort.click(on_abort, panel.run_pick, panel.message)
        form_ui.load_preset.click(on_preset, form_ui.preset, [*components, extra])
        type_box = components[keys.index("finetuning_type")]
        type_box.change(on_type, type_box, [*accordions.values(), form_ui.method_line])
        for name, button in form_ui.starts.items():
            button.click(
                on_starting,
                [gr.State(name), components[keys.index("model_name_or_path")]],
                [*components, extra, form_ui.start_message, form_ui.data_preview],
            )
        form_ui.preview_data.click(on_preview_data, form, form_ui.data_preview)
        eval_inputs = [ev.run_dir, ev.tasks, *ev.components]
        ev.preview.click(on_eval_preview, eval_inputs, [ev.command, ev.message])
        ev.start.click(on_eval_start, eval_inputs, [ev.command, ev.message, panel.run_pick])
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, panel.run_pick, watched)
        timer.tick(eval_refresh, None, [ev.status, ev.results, ev.chart, ev.log])
        panel.run_pick.change(refresh, panel.run_pick, watched)
        model_box, adapter_box = (components[keys.index(k)] for k in ("model_name_or_path", "adapter_name_or_path"))
        eval_keys = [f.name for f in efields]  # the Evaluate tab's adapter box lists the adapter runs too
        eval_adapter = [ev.components[eval_keys.index(k)] for k in ("adapter_name_or_path",) if k in eval_keys]
        lists = [model_box, adapter_box, chat_model, compare_pick, ev.run_dir, export_run, *eval_adapter]
        app.load(on_load, None, [panel.run_pick, *lists])
        for tab in (train_tab, eval_tab, chat_tab, compare_tab, export_tab):  # a run may have ended meanwhile
            tab.select(run_lists, None, lists)
        export_run.change(_merged_dir, export_run, export_dir)
        app.load(on_memory, [*form, panel.gpu_memory], memory_out)  # the picture is there from the start
    return app
