"""Score a model on a task of ``tasks.json``: rank options by log-likelihood, or generate and compare.

Choice tasks (sst2, rte, ...): every option is scored by the (length-normalised) log-likelihood of
its tokens after the prompt, in batches of ``eval_batch_size`` examples, by the same function that
``train_as_classification`` trains (:func:`llmtune.train.classification.option_scores`); the
prediction is the best-scoring option. Generation tasks (squad, drop): greedy answers of at most
``max_new_tokens`` tokens, cut at the first line break, scored by exact match and token F1.
``num_demos`` demonstrations from the training split precede each prompt.

Writes ``<output_dir>/<task>/results.json`` and ``predictions.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from llmtune.data.registry import load_registry, resolve_dataset_dir, split_names
from llmtune.data.task_encoding import encode_choice, encode_generation_prompt
from llmtune.data.tasks import Task, load_task_examples, load_tasks, sample_demos
from llmtune.errors import DataError, DataFileNotFoundError
from llmtune.eval.metrics import choice_metrics, generation_metrics
from llmtune.eval.model import generate, resolve_template, stop_token_ids
from llmtune.train.classification import ClassificationCollator, option_scores

if TYPE_CHECKING:
    from llmtune.eval.config import EvalRun

logger = logging.getLogger("llmtune")

DEMO_POOL = 1000  # demonstrations are drawn from the first rows of the train split (MeZO samples 1000)
GENERATION_TOKENS = 32


def task_format(run: EvalRun, task: Task) -> str:
    """``plain`` or ``chat``: ``auto`` is chat for a run trained by SFT on a task, else plain."""
    fmt = run.eval.task_format
    if fmt != "auto":
        return fmt
    config = run.run_config
    if not config or config.get("train_as_classification"):
        return "plain"
    names = split_names(config.get("dataset")) + split_names(config.get("eval_dataset"))
    try:
        registry = load_registry(resolve_dataset_dir(run.data.dataset_dir))
    except (DataFileNotFoundError, DataError):
        registry = {}
    tasks = load_tasks(run.data.dataset_dir)
    return "chat" if any(n in tasks and n not in registry for n in names) else "plain"


@dataclass
class PreparedTask:
    """A task's examples (and demonstration pool), read and checked before any model loads."""

    task: Task
    examples: list
    pool: list
    skipped_rows: int


def prepare_task(run: EvalRun, name: str) -> PreparedTask:
    """Read and check the split to score (and the training rows demonstrations come from)."""
    task = load_tasks(run.data.dataset_dir)[name]
    args = run.eval
    examples, count = load_task_examples(
        task, args.eval_split, run.data.max_samples, run.data.skip_bad_rows, args.task_file
    )
    pool: list = []
    if args.num_demos:
        pool, _ = load_task_examples(task, "train", DEMO_POOL, skip_bad_rows=True)
        sample_demos(pool, args.num_demos, args.seed, 0)  # too few to draw from: say so now
    return PreparedTask(task, examples, pool, sum(count.skipped.values()))


def evaluate_task(run: EvalRun, prepared: PreparedTask, model: Any, tokenizer: Any) -> dict[str, Any]:
    """Score ``model`` on a prepared task; write and return the results (metrics, counts, settings)."""
    task, examples, pool = prepared.task, prepared.examples, prepared.pool
    args = run.eval
    fmt = task_format(run, task)
    template = resolve_template(run, tokenizer) if fmt == "chat" else None
    started = time.perf_counter()
    if task.kind == "choice":
        records, metrics = _score_choices(run, task, examples, pool, template, model, tokenizer)
    else:
        records, metrics = _score_generation(run, task, examples, pool, template, model, tokenizer)
    result = {
        "task": task.name,
        "model_id": run.model_id,
        "split": args.eval_split,
        "examples": len(examples),
        "skipped_rows": prepared.skipped_rows,
        "num_demos": args.num_demos,
        "format": fmt,
        "template": template.name if template is not None else None,
        "length_normalization": args.length_normalization if task.kind == "choice" else None,
        "metrics": metrics,
        "eval_seconds": round(time.perf_counter() - started, 2),
    }
    out = run.output_dir / task.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return result


def _demos(run: EvalRun, pool: list, index: int) -> list:
    return sample_demos(pool, run.eval.num_demos, run.eval.seed, index)


@torch.no_grad()
def _score_choices(run, task, examples, pool, template, model, tokenizer) -> tuple[list[dict], dict]:
    collate = ClassificationCollator(pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    max_length = _max_length(run, model)
    predictions: list[int] = []
    records: list[dict] = []
    size = run.eval.eval_batch_size
    for start in range(0, len(examples), size):
        batch_examples = examples[start : start + size]
        features = []
        for offset, example in enumerate(batch_examples):
            try:
                encoded = encode_choice(
                    tokenizer,
                    example,
                    _demos(run, pool, start + offset),
                    template,
                    run.data.default_system,
                    max_length,
                )
            except ValueError as error:
                raise DataError(f"task '{task.name}': {error}") from None
            features.append(encoded.as_features())
        batch = {k: v.to(device) for k, v in collate(features).items()}
        scores = option_scores(model, batch, run.eval.length_normalization).float().cpu()
        for example, row in zip(batch_examples, scores, strict=True):
            predicted = int(row.argmax())
            predictions.append(predicted)
            records.append(
                {
                    "where": example.where,
                    "prediction": predicted,
                    "label": example.label,
                    "correct": predicted == example.label,
                    "scores": [round(float(s), 4) for s in row[: len(example.options)]],
                }
            )
    labels = [e.label for e in examples]
    return records, choice_metrics(task.metrics, predictions, labels, len(task.options))


def _max_length(run: EvalRun, model: Any) -> int:
    """``cutoff_len``, but never more positions than the model has."""
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(run.data.cutoff_len, positions) if positions else run.data.cutoff_len


def _score_generation(run, task, examples, pool, template, model, tokenizer) -> tuple[list[dict], dict]:
    max_new = run.eval.max_new_tokens or GENERATION_TOKENS
    stops = stop_token_ids(model, tokenizer, template)
    answers: list[str] = []
    size = run.eval.eval_batch_size
    for start in range(0, len(examples), size):
        prompts = [
            encode_generation_prompt(
                tokenizer,
                example,
                _demos(run, pool, start + offset),
                template,
                run.data.default_system,
                run.data.cutoff_len,
            )
            for offset, example in enumerate(examples[start : start + size])
        ]
        for text in generate(model, tokenizer, prompts, max_new, stops):
            answers.append(text.strip().split("\n")[0].strip())
    records = [
        {"where": e.where, "prediction": a, "answers": e.answers} for e, a in zip(examples, answers, strict=True)
    ]
    return records, generation_metrics(task.metrics, answers, [e.answers for e in examples])


def summary_line(result: dict[str, Any]) -> str:
    """``demo_sst2 (eval, 128 examples, 0 demos): accuracy 0.9375``."""
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    return (
        f"{result['task']} ({result['split']}, {result['examples']} examples, {result['num_demos']} demos, "
        f"{result['format']}): {metrics}"
    )
