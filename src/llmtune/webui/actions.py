"""What the buttons do, as plain functions of the form values (the Gradio wiring is in webui.app).

Each returns text for the page; user mistakes come back as one-line messages, never tracebacks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from llmtune.chat import load_chat_model, load_chat_options, prompt_ids
from llmtune.data.loader import load_conversations
from llmtune.data.processor import build_example
from llmtune.data.tasks import load_task_examples, named_tasks_of_kind
from llmtune.data.templates import get_template
from llmtune.errors import ConfigError, LlmtuneError
from llmtune.eval.model import generate, stop_token_ids
from llmtune.hparams.parser import RUN_CONFIG
from llmtune.model.loader import load_tokenizer
from llmtune.train.estimate import compare_methods, load_estimate_arguments, load_model_config
from llmtune.train.plot import read_log
from llmtune.train.run import check_output_dir, resolve_resume
from llmtune.webui import command as cmd
from llmtune.webui import fields, runs

ESTIMATE_TIMEOUT_S = 300


class UiState:
    """What one UI process remembers: the run it started last (one run at a time per UI)."""

    def __init__(self) -> None:
        self.current: runs.Launch | None = None

    def busy(self) -> str | None:
        """A message when this UI's last run still runs, else None. A run whose status file says it ended
        (the page shows ``finished``) is done, though its process may take a few seconds more to exit."""
        if self.current is not None and runs.view(self.current).state in ("starting", "running"):
            return f"a run is already going ({self.current.id}, pid {self.current.pid}): wait for it or abort it"
        return None


def _error(err: Exception) -> str:
    return f"**error:** {err}"


def preview(values: dict[str, Any], extra: str) -> tuple[str, str, str]:
    """(command, YAML, message) for the form, validated by llmtune's parser; nothing runs."""
    try:
        config = cmd.train_config(values, extra)
        argv = cmd.argv_for("train", config)
        _, text = cmd.validated_yaml(config)
    except (LlmtuneError, ValueError, OSError) as err:
        return "", "", _error(err)
    return cmd.shown_command(argv), text, "config OK (checked by llmtune's parser; no model loaded)"


def save_config(values: dict[str, Any], extra: str, path: str) -> str:
    """Write the form's YAML to ``path`` (a new or existing .yaml file)."""
    try:
        path = cmd.check_value("save path", (path or "").strip())
        target = Path(path).expanduser()
        if target.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"save path: {path!r} must end in .yaml or .yml")
        if target.is_dir():
            raise ConfigError(f"save path: {path!r} is a folder")
        _, text = cmd.validated_yaml(cmd.train_config(values, extra))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except (LlmtuneError, ValueError, OSError) as err:
        return _error(err)
    return f"saved {target} (run it with `llmtune train {target}`)"


def estimate(values: dict[str, Any], extra: str) -> str:
    """``llmtune estimate`` for the form's run (reads the model's config only, loads no weights)."""
    try:
        config = cmd.train_config(values, extra)
        cmd.validated_yaml(config)
        argv = cmd.launch_argv(cmd.argv_for("estimate", config))
    except (LlmtuneError, ValueError, OSError) as err:
        return f"error: {err}"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=ESTIMATE_TIMEOUT_S)  # noqa: S603
    except subprocess.TimeoutExpired:
        return f"llmtune estimate took over {ESTIMATE_TIMEOUT_S} s"
    return (done.stdout + done.stderr).strip()


def starting_point(name: str, model: str) -> tuple[dict[str, Any], str]:
    """The form for one of the two jobs (:data:`webui.fields.STARTING_POINTS`), with ``model`` kept, and
    one line saying which data it picked: the wanted dataset when this machine has it or can download
    it, else the shipped stand-in with what to do to get the real one."""

    point = fields.STARTING_POINTS[name]
    values = {
        **fields.start_values(),
        **point.values,
        "model_name_or_path": model or fields.START_VALUES["model_name_or_path"],
    }
    source = fields.hub_source(point.dataset)
    dataset, message = point.dataset, f"{point.label}: `{point.dataset}`"
    if source and not fields.hub_dataset_cached(source):
        if fields.hub_reachable():
            message += f" is downloaded from the Hugging Face Hub (`{source}`) on the first run, then cached"
        else:
            dataset = point.fallback
            message = (
                f"{point.label}: `{point.dataset}` must be downloaded once from the Hugging Face Hub (`{source}`), "
                f"and this machine cannot reach it; the shipped `{point.fallback}` is selected instead"
            )
    if name == "classification":
        others = [t for t in fields.choice_tasks() if t != dataset]
        message += f". Other choice tasks: {', '.join(others)}"
    values["dataset"] = dataset
    short = str(values["model_name_or_path"]).rstrip("/").rsplit("/", 1)[-1]
    values["output_dir"] = f"saves/webui/{short}/{name}"
    return values, message


PREVIEW_ROWS = 3


def preview_data(values: dict[str, Any], extra: str, rows: int = PREVIEW_ROWS) -> str:
    """HTML: the row counts of the chosen datasets or tasks and the first ``rows`` rows as the model sees
    them: after the chat template (the trained tokens marked) for SFT, the prompt and its options (the
    gold one marked) with ``train_as_classification``. One line when something is wrong."""
    import html

    try:
        args, _ = cmd.validated_yaml(cmd.train_config(values, extra))
        if args.finetuning.train_as_classification:
            counts, shown = _choice_rows(args.data, rows)
        else:
            counts, shown = _sft_rows(args, rows)
    except (LlmtuneError, ValueError, OSError) as err:
        return f"<p><b>error:</b> {html.escape(str(err))}</p>"
    head = " · ".join(f"<b>{html.escape(name)}</b>: {count:,} rows" for name, count in counts)
    return f'<p id="data-counts">{head}</p>' + "".join(shown)


def _choice_rows(data_args: Any, rows: int) -> tuple[list[tuple[str, int]], list[str]]:
    import html

    tasks, names, _ = named_tasks_of_kind(
        data_args, "choice", "train_as_classification: '{name}' is {what}; it needs choice tasks ({allowed})"
    )
    counts, shown = [], []
    for name in names:
        examples, count = load_task_examples(tasks[name], "train", data_args.max_samples, data_args.skip_bad_rows)
        counts.append((name, count.rows))
        for example in examples[: max(0, rows - len(shown))]:
            options = " | ".join(
                f"<mark>{html.escape(o)}</mark>" if i == example.label else html.escape(o)
                for i, o in enumerate(example.options)
            )
            shown.append(f'<pre class="data-row">{html.escape(example.prompt)}</pre><p>options: {options}</p>')
    return counts, shown


def _sft_rows(args: Any, rows: int) -> tuple[list[tuple[str, int]], list[str]]:
    import html

    loaded = load_conversations(args.data)
    tokenizer = load_tokenizer(args.model)
    template = get_template(args.data.template, tokenizer)
    shown = []
    for conversation in loaded.train[:rows]:
        pairs = template.encode(tokenizer, conversation, args.data.default_system)
        input_ids, labels = build_example(pairs, args.data.train_on_prompt, args.data.mask_history)
        cutoff = args.data.cutoff_len  # training keeps the first cutoff_len tokens (llmtune.data.processor)
        kinds = ["cut" if i >= cutoff else "trained" if label >= 0 else "prompt" for i, label in enumerate(labels)]
        spans, start = [], 0  # runs of prompt, trained and cut-off tokens, in order
        for end in range(1, len(input_ids) + 1):
            if end == len(input_ids) or kinds[end] != kinds[start]:
                text = html.escape(tokenizer.decode(input_ids[start:end]))
                spans.append(
                    {"prompt": text, "trained": f"<mark>{text}</mark>", "cut": f"<del>{text}</del>"}[kinds[start]]
                )
                start = end
        cut = f" (the struck-out tail is past cutoff_len {cutoff}: not trained)" if len(input_ids) > cutoff else ""
        shown.append(f'<pre class="data-row">{"".join(spans)}</pre><p>{len(input_ids)} tokens{cut}</p>')
    return [(c.name if c.split == "train" else f"{c.name} ({c.split})", c.rows) for c in loaded.report.datasets], shown


PARTS = ("weights", "gradients", "optimizer", "activations")
GPU_OFF_SCALE = 4  # the GPU line is left off the y-axis when it is this many times the tallest bar


def memory_estimates(values: dict[str, Any], extra: str) -> dict[str, Any]:
    """``llmtune estimate`` of the form's run under every finetuning type, in this process (the model's
    ``config.json`` only, no weights): ``{finetuning_type: MemoryEstimate}``. Raises one-line errors."""

    args = load_estimate_arguments(cmd.argv_for("estimate", cmd.train_config(values, extra))[2:])  # as the CLI
    return compare_methods(args, load_model_config(args))


def memory_picture(values: dict[str, Any], extra: str, gpu_memory_gb: float | None) -> tuple[Any, str]:
    """The memory picture: one stacked bar per finetuning type (weights, gradients, optimizer state,
    activations, in GB), the chosen type marked, a line at the GPU's memory; and one line of text.
    ``(None, message)`` when the form cannot be estimated."""
    try:
        found = memory_estimates(values, extra)
    except (LlmtuneError, ValueError, OSError) as err:
        return None, _error(err)
    if not found:
        return None, "**error:** no finetuning type could be estimated for this model"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = str(values.get("finetuning_type") or "lora")
    names = list(found)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    bottom = [0.0] * len(names)
    for part in PARTS:
        heights = [getattr(found[name], part) / 1e9 for name in names]
        axis.bar(names, heights, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if gpu_memory_gb:
        gpu = float(gpu_memory_gb)
        axis.axhline(gpu, color="black", linestyle="--", linewidth=1)
        tallest = max(bottom)
        if gpu > GPU_OFF_SCALE * tallest > 0:  # a small model under a big card: the bars stay readable
            axis.set_ylim(0, tallest * 1.25)
            axis.text(len(names) - 0.5, tallest * 1.2, f"GPU {gpu:g} GB: far above", va="top", ha="right")
        else:
            axis.text(len(names) - 0.5, gpu, f" GPU {gpu:g} GB", va="bottom", ha="right")
    for label in axis.get_xticklabels():
        if label.get_text() == chosen:
            label.set_fontweight("bold")
    axis.set_ylabel("GB")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    plt.close(figure)
    total = found[chosen].total / 1e9 if chosen in found else None
    fits = (
        ""
        if total is None or not gpu_memory_gb
        else (" (fits)" if total <= float(gpu_memory_gb) else " (does NOT fit)")
    )
    line = f"{chosen}: {total:.2f} GB{fits}" if total is not None else f"{chosen}: not estimated"
    return figure, line


class ChatSession:
    """The Chat tab's model, loaded in the UI's own process as ``llmtune chat`` loads it (its adapter
    applied, its chat template), answering with the same greedy generation, streamed."""

    def __init__(self) -> None:
        self.loaded: tuple | None = None

    def load(self, model_path: str, adapter_path: str = "", max_new_tokens: float = 256) -> str:
        """Load a base model, a saved run (a full model, or an adapter run on the base its config names) or
        a base with an adapter; a line that says which, or what is wrong."""

        try:
            model_path = cmd.check_value("model", (model_path or "").strip())
            adapter_path = cmd.check_value("adapter", (adapter_path or "").strip())
            run = Path(model_path).expanduser()
            if not adapter_path and (run / "adapter_config.json").is_file() and not (run / "config.json").is_file():
                model_path, adapter_path = run_base_model(run), str(run)  # an adapter run: its base, then it
            tokens = ["--model_name_or_path", model_path]
            if adapter_path:
                tokens += ["--adapter_name_or_path", adapter_path]
            tokens += ["--max_new_tokens", str(int(max_new_tokens or 256))]
            options = load_chat_options(tokens)
            model, tokenizer, template = load_chat_model(options)
        except (LlmtuneError, ValueError, OSError) as err:
            self.loaded = None
            return _error(err)
        self.loaded = (options, model, tokenizer, template, stop_token_ids(model, tokenizer, template))
        adapter = f" with adapter {options.model.adapter_name_or_path}" if options.model.adapter_name_or_path else ""
        return f"loaded {options.model.model_name_or_path}{adapter} (template {template.name})"

    def stream(self, message: str, history: list[dict]):
        """Yield the conversation with the answer to ``message`` growing as it is generated."""
        import threading

        from transformers import TextIteratorStreamer

        history = [{"role": h["role"], "content": str(h["content"])} for h in history or []]
        history.append({"role": "user", "content": message})
        if self.loaded is None:
            yield [*history, {"role": "assistant", "content": "(load a model first)"}]
            return
        options, model, tokenizer, template, stops = self.loaded
        ids = prompt_ids(template, tokenizer, history, options.system)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(
            target=generate,
            args=(model, tokenizer, [ids], options.max_new_tokens, stops, options.temperature),
            kwargs={"streamer": streamer},
        )
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield [*history, {"role": "assistant", "content": text}]
        worker.join()
        yield [*history, {"role": "assistant", "content": text.strip()}]


def compare_runs(folders: list[str]) -> tuple[Any, str]:
    """Several runs side by side: their training loss against steps and against wall time on one figure,
    and a table of each run's steps, last loss, last eval loss and evaluation results (``llmtune eval``)."""

    chosen = [Path(str(f)).expanduser() for f in folders or [] if str(f).strip()]
    if len(chosen) < 2:
        return None, "pick two runs or more"
    logs = {}
    for folder in chosen:
        records = [r for r in read_log(folder) if "loss" in r and "current_steps" in r]
        if not records:
            return None, _error(f"run folder: '{folder}' has no training log (trainer_log.jsonl)")
        logs[folder] = records
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(9, 3.2))
    for folder, records in logs.items():
        steps = [r["current_steps"] for r in records]
        losses = [r["loss"] for r in records]
        by_step.plot(steps, losses, label=folder.name)
        by_time.plot([r.get("elapsed_time", 0.0) for r in records], losses, label=folder.name)
    by_step.set_xlabel("step")
    by_time.set_xlabel("seconds")
    by_step.set_ylabel("training loss")
    by_step.legend(fontsize=8)
    figure.tight_layout()
    plt.close(figure)
    results = {folder: runs.read_results(str(folder), 0.0) for folder in logs}
    metrics = sorted({f"{row['task']}: {k}" for rows in results.values() for row in rows for k in row if k != "task"})
    rows = [["run", "steps", "last loss", "last eval loss", *metrics], ["---", *["---:"] * (3 + len(metrics))]]
    for folder, records in logs.items():
        evals = [r["eval_loss"] for r in read_log(folder) if "eval_loss" in r]
        flat = {f"{row['task']}: {k}": v for row in results[folder] for k, v in row.items() if k != "task"}
        cells = [f"{flat[m]:.4g}" if m in flat else "" for m in metrics]
        last_eval = f"{evals[-1]:.4f}" if evals else ""
        rows.append([folder.name, str(records[-1]["current_steps"]), f"{records[-1]['loss']:.4f}", last_eval, *cells])
    return figure, "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)


EXPORT_TIMEOUT_S = 3600


def run_base_model(run: Path) -> str:
    """The base model an adapter run trained on: ``model_name_or_path`` in its saved config."""
    import yaml

    saved = run / RUN_CONFIG
    if not saved.is_file():
        raise ConfigError(f"run folder: '{run}' has no {RUN_CONFIG} (not a finished llmtune train run)")
    base = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("model_name_or_path")
    if not base:
        raise ConfigError(f"run folder: '{saved}' names no model_name_or_path")
    return str(base)


def export_run(run_dir: str, export_dir: str, export_dtype: str) -> str:
    """``llmtune export`` of a LoRA run: its adapter merged into the base its ``training_args.yaml`` names,
    written to ``export_dir`` (new or empty). Returns the folder, or one line saying what is wrong."""
    try:
        run = Path(cmd.check_value("run folder", (run_dir or "").strip())).expanduser()
        config = {
            "model_name_or_path": run_base_model(run),
            "adapter_name_or_path": str(run),
            "export_dir": cmd.check_value("export_dir", (export_dir or "").strip()),
            "export_dtype": export_dtype,
        }
        argv = cmd.launch_argv(cmd.argv_for("export", config))
    except (LlmtuneError, ValueError, OSError) as err:
        return _error(err)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)  # noqa: S603
    except subprocess.TimeoutExpired:
        return f"**error:** llmtune export took over {EXPORT_TIMEOUT_S} s"
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        return _error(lines[-1].removeprefix("llmtune: error: ") if lines else f"exit status {done.returncode}")
    return f"merged into `{Path(config['export_dir']).resolve()}` (a plain Hugging Face model folder)"


def start_train(state: UiState, values: dict[str, Any], extra: str) -> str:
    """Validate, then launch ``llmtune train`` detached; returns a message."""
    busy = state.busy()
    if busy:
        return _error(busy)
    try:
        config = cmd.train_config(values, extra)
        argv = cmd.argv_for("train", config)
        args, _ = cmd.validated_yaml(config)
        for other in runs.list_launches():
            same = Path(other.output_dir) == Path(args.training.output_dir).expanduser().resolve()
            if same and runs.alive(other.pid):
                raise ConfigError(f"output_dir: run {other.id} (pid {other.pid}) is writing into it now")

        check_output_dir(args, resolve_resume(args))
    except (LlmtuneError, ValueError, OSError) as err:
        return _error(err)
    state.current = runs.launch("train", argv, cmd.launch_argv(argv), args.training.output_dir)
    return f"started run {state.current.id} (pid {state.current.pid}); it goes on if you close this page"


def start_eval(state: UiState, run_dir: str, tasks: list[str] | str, values: dict[str, Any]) -> tuple[str, str]:
    """Validate, then launch ``llmtune eval`` detached; returns (command, message)."""
    busy = state.busy()
    if busy:
        return "", _error(busy)
    try:
        config = cmd.eval_config(run_dir, tasks, values)
        argv = cmd.argv_for("eval", config)
        cmd.validated_eval(config)
    except (LlmtuneError, ValueError, OSError) as err:
        return "", _error(err)
    state.current = runs.launch("eval", argv, cmd.launch_argv(argv), config["model_name_or_path"])
    return cmd.shown_command(argv), f"started evaluation {state.current.id} (pid {state.current.pid})"


def preview_eval(run_dir: str, tasks: list[str] | str, values: dict[str, Any]) -> tuple[str, str]:
    """(command, message) of the evaluation, validated by ``llmtune eval``'s parser."""
    try:
        config = cmd.eval_config(run_dir, tasks, values)
        argv = cmd.argv_for("eval", config)
        run = cmd.validated_eval(config)
    except (LlmtuneError, ValueError, OSError) as err:
        return "", _error(err)
    return cmd.shown_command(argv), f"config OK: results go to {run.output_dir}"


def abort_message(record: runs.Launch | None) -> str:
    """Abort ``record`` (SIGINT: the step finishes, a checkpoint is saved) and say what happened."""
    if record is None:
        return "no run to abort"
    return runs.abort(record)


def status_markdown(record: runs.Launch | None, view: runs.RunView | None) -> str:
    """One block of markdown: state, step, last loss, pid, command and any error lines."""
    if record is None or view is None:
        return "no run yet"
    parts = [f"**{view.state}**", f"run {record.id}", f"pid {record.pid}"]
    if view.total_steps:
        parts.append(f"step {view.step}/{view.total_steps}")
    if view.losses:
        parts.append(f"loss {view.losses[-1][1]:.4f}")
    text = " · ".join(parts) + f"\n\n`{cmd.shown_command(record.command)}`\n\noutput: `{record.output_dir}`"
    if view.error:
        text += "\n\n```\n" + "\n".join(view.error) + "\n```"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def progress_html(view: runs.RunView | None) -> str:
    """The bar, with elapsed and remaining time, tokens per second, the last loss and the process's memory."""
    if view is None or not view.total_steps:
        return ""
    pct = 100.0 * view.step / view.total_steps
    parts = [f"{pct:.0f}%"]
    last = view.last or {}
    if isinstance(last.get("elapsed_time"), int | float):
        remaining = last.get("remaining_time")
        left = f", {_duration(remaining)} left" if isinstance(remaining, int | float) else ""
        parts.append(f"{_duration(last['elapsed_time'])} elapsed{left}")
    if isinstance(last.get("tokens_per_second"), int | float):
        parts.append(f"{last['tokens_per_second']:,.0f} tokens/s")
    if view.losses:
        parts.append(f"loss {view.losses[-1][1]:.4f}")
    if isinstance(last.get("memory_bytes"), int | float):
        parts.append(f"{last['memory_bytes'] / 1e9:.2f} GB")
    return (
        f'<progress value="{view.step}" max="{view.total_steps}" style="width:100%"></progress> '
        f'<span id="progress-text">{" · ".join(parts)}</span>'
    )
