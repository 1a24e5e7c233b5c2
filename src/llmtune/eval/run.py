"""``llmtune eval``: score tasks, run MT-bench, or compare MT-bench results.

arguments (validated) -> for each task: data read and checked -> model loaded (once, and for
MT-bench only when answers are missing) -> scored -> results written into ``output_dir/<task>/``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmtune.eval import mt_bench
from llmtune.eval.config import MT_BENCH, EvalRun
from llmtune.eval.judge import JudgeClient, JudgeUnreachableError, judge_all
from llmtune.eval.model import load_eval_model
from llmtune.eval.mt_bench_report import (
    aggregate,
    compare_table,
    find_results,
    markdown_table,
    plot_scores,
    write_results,
)
from llmtune.eval.task_eval import evaluate_task, prepare_task, summary_line

logger = logging.getLogger("llmtune")

EVAL_CONFIG_FILE = "eval_args.yaml"


def run_eval(run: EvalRun, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Do what ``run`` asks; print one summary per task with ``say``; return the results."""
    if run.eval.compare:
        return [run_compare(run, say)]

    loaded: list[tuple[Any, Any]] = []

    def model_and_tokenizer() -> tuple[Any, Any]:
        if not loaded:
            loaded.append(load_eval_model(run))
        return loaded[0]

    # Every task's data (and MT-bench's questions and prompts) is read and checked before a model loads.

    prepared = {}
    for task in run.tasks:
        if task == MT_BENCH:
            prepared[task] = mt_bench.load_questions(run), mt_bench.load_judge_prompts(run)
        else:
            prepared[task] = prepare_task(run, task)
    results = []
    for task in run.tasks:
        out = run.output_dir / task
        out.mkdir(parents=True, exist_ok=True)
        save_eval_config(run, out)
        if task == MT_BENCH:
            results.append(run_mt_bench(run, out, *prepared[task], model_and_tokenizer, say))
        else:
            result = evaluate_task(run, prepared[task], *model_and_tokenizer())
            say(summary_line(result))
            results.append(result)
    say(f"results in {run.output_dir}")
    return results


def save_eval_config(run: EvalRun, out: Path) -> None:
    """The keys set (no secrets; the judge key is never a config value) as ``eval_args.yaml``."""
    with (out / EVAL_CONFIG_FILE).open("w", encoding="utf-8") as handle:
        yaml.safe_dump(run.public_config(), handle, sort_keys=False, allow_unicode=True)


def run_mt_bench(
    run: EvalRun, out: Path, questions: list, prompts: dict, model_and_tokenizer: Callable, say: Callable[[str], None]
) -> dict[str, Any]:
    """Answer (resuming), judge (cached) and score MT-bench; write answers, judgments and results into ``out``."""

    args = run.eval
    if run.data.max_samples:
        questions = questions[: run.data.max_samples]
    answers_path = out / mt_bench.ANSWERS_FILE
    answers = mt_bench.answer_questions(run, questions, answers_path, model_and_tokenizer)
    if not args.judge_model:
        say(f"mt_bench: {len(answers)} answers in {answers_path}; set judge_model (and judge_api_base) to judge them")
        return {"task": MT_BENCH, "answers": str(answers_path)}

    api_key = os.environ.get(args.judge_api_key_env) or None
    if api_key is None:
        logger.info("mt_bench: $%s is not set: asking the judge without an API key", args.judge_api_key_env)
    client = JudgeClient(
        args.judge_api_base,
        args.judge_model,
        api_key,
        timeout_seconds=args.judge_timeout_seconds,
        max_retries=args.judge_max_retries,
        backoff_seconds=args.judge_backoff_seconds,
        temperature=args.judge_temperature,
        max_tokens=args.judge_max_tokens,
    )
    requests = mt_bench.judge_requests(questions, answers, prompts, args.judge_runs)
    try:
        judgments = judge_all(client, requests, out / "judgments.jsonl", args.judge_concurrency, _progress)
    except JudgeUnreachableError as error:
        raise JudgeUnreachableError(
            f"{error}; the {len(answers)} answers are kept in {answers_path} and the judgments made so far in "
            f"{out / 'judgments.jsonl'}: rerun the same command to judge the rest"
        ) from None
    result = aggregate(judgments, args.judge_runs, len(requests), run.model_id, args.judge_model)
    result["task"] = MT_BENCH
    for path in write_results(result, out):
        logger.info("wrote %s", path)
    say(markdown_table(result).rstrip())
    return result


def _progress(done: int, total: int) -> None:
    if done == total or done % 20 == 0:
        logger.info("mt_bench: judged %d/%d", done, total)


def run_compare(run: EvalRun, say: Callable[[str], None]) -> dict[str, Any]:
    """Several evaluated runs' MT-bench results side by side: ``compare.md``, ``compare.json``, ``compare.png``."""

    folders = [Path(p.strip()) for p in run.eval.compare.split(",") if p.strip()]
    results = [find_results(folder) for folder in folders]
    out = Path(run.eval.output_dir) if run.eval.output_dir else Path("saves") / "eval" / "compare"
    out.mkdir(parents=True, exist_ok=True)
    table = compare_table(results)
    (out / "compare.md").write_text(table, encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot_scores(results, out / "compare.png")
    say(table.rstrip())
    say(f"written to {out}")
    return {"task": "compare", "results": results, "output_dir": str(out)}
