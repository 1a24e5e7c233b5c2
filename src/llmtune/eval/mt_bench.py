"""MT-bench: the questions, the model's two-turn answers (resumable), and the judge's prompts.

Questions come from ``mt_bench_dir`` in FastChat's layout (``question.jsonl`` with ``question_id``,
``category``, ``turns`` and an optional ``reference``; ``reference_answer/gpt-4.jsonl`` in FastChat's
answer schema; optionally ``judge_prompts.jsonl``) or from the hub (``mt_bench_hub_id``).
Single-answer grading as FastChat does it: turn 1 with ``single-v1``, turn 2 with
``single-v1-multi-turn`` (the whole conversation, judged on the second answer); math, reasoning
and coding questions with the ``-math-`` variants, which show the reference answer. The built-in
``judge_prompts.jsonl`` holds those four prompts verbatim from lm-sys/FastChat
(``fastchat/llm_judge/data/judge_prompts.jsonl``, Apache-2.0), so scores compare with published ones.

Answers are written to ``answers.jsonl`` (FastChat's model-answer schema) one question at a time,
as they are produced: a rerun answers only the questions not in it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.data.readers import read_table
from llmtune.errors import DataError, DataFileNotFoundError
from llmtune.eval.judge import JudgeRequest
from llmtune.eval.model import generate, resolve_template, stop_token_ids

if TYPE_CHECKING:
    from llmtune.data.template import Template
    from llmtune.eval.config import EvalRun

logger = logging.getLogger("llmtune")

NEED_REFERENCE = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS
# FastChat's gen_model_answer temperatures, used with category_temperatures: true.
CATEGORY_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
JUDGE_PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
BUILTIN_JUDGE_PROMPTS = Path(__file__).with_name("judge_prompts.jsonl")
ANSWERS_FILE = "answers.jsonl"
ANSWER_TOKENS = 1024


@dataclass
class Question:
    """One MT-bench question: its turns and, for math/reasoning/coding, the reference answers."""

    question_id: int | str
    category: str
    turns: list[str]
    reference: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Loading


def load_questions(run: EvalRun) -> list[Question]:
    """The questions (from ``mt_bench_dir`` or the hub), with references where the judge needs them."""
    folder = run.eval.mt_bench_dir
    questions = _questions_from_dir(Path(folder)) if folder else _questions_from_hub(run.eval.mt_bench_hub_id)
    missing = [q for q in questions if q.category in NEED_REFERENCE and not q.reference]
    if missing:
        q = missing[0]
        raise DataError(
            f"mt_bench: question {q.question_id} ({q.category}) has no reference answer, which its judge prompt needs; "
            "add reference_answer/gpt-4.jsonl or a 'reference' field"
        )
    return questions


def _questions_from_dir(folder: Path) -> list[Question]:
    path = folder / "question.jsonl"
    if not path.is_file():
        raise DataFileNotFoundError(f"mt_bench_dir: no question.jsonl in '{folder}'")
    table = read_table(path)
    questions = []
    for row in table.rows:
        value = row.value
        where = table.where(row)
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object with question_id, category, turns")
        for column in ("question_id", "category", "turns"):
            if column not in value:
                raise DataError(
                    f"{where}: column '{column}' is missing; MT-bench rows need question_id, category, turns"
                )
        turns = value["turns"]
        if not isinstance(turns, list) or not 1 <= len(turns) <= 2 or not all(isinstance(t, str) and t for t in turns):
            raise DataError(f"{where}: 'turns' must be a list of one or two non-empty strings")
        reference = value.get("reference") or []
        questions.append(Question(value["question_id"], str(value["category"]), list(turns), list(reference)))
    references = _references(folder / "reference_answer")
    for question in questions:
        if question.question_id in references:
            question.reference = references[question.question_id]
    return questions


def _references(folder: Path) -> dict[Any, list[str]]:
    """``question_id -> turns`` from ``gpt-4.jsonl`` (or the only file there), FastChat's answer schema."""
    if not folder.is_dir():
        return {}
    files = sorted(folder.glob("*.jsonl"))
    chosen = [f for f in files if f.name == "gpt-4.jsonl"] or files[:1]
    found = {}
    for path in chosen:
        table = read_table(path)
        for row in table.rows:
            try:
                found[row.value["question_id"]] = list(row.value["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise DataError(f"{table.where(row)}: expected question_id and choices[0].turns") from None
    return found


def _questions_from_hub(hub_id: str) -> list[Question]:
    import datasets

    try:
        rows = datasets.load_dataset(hub_id, split="train").to_list()
    except Exception as error:  # offline, missing repo: all mean "not loadable"
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"mt_bench: could not load '{hub_id}' from the Hugging Face Hub ({type(error).__name__}: {reason}); "
            "offline, set mt_bench_dir to a folder with FastChat's question.jsonl and reference_answer/"
        ) from None
    try:
        return [
            Question(r["prompt_id"], r["category"], list(r["prompt"]), [x for x in r.get("reference") or [] if x])
            for r in rows
        ]
    except (KeyError, TypeError):
        raise DataError(f"mt_bench: '{hub_id}' does not have the columns prompt_id, category, prompt") from None


def load_judge_prompts(run: EvalRun) -> dict[str, dict]:
    """The four single-grading prompts: ``mt_bench_dir/judge_prompts.jsonl`` if present, else the built-in ones."""
    local = Path(run.eval.mt_bench_dir) / "judge_prompts.jsonl" if run.eval.mt_bench_dir else None
    path = local if local is not None and local.is_file() else BUILTIN_JUDGE_PROMPTS
    prompts = {}
    table = read_table(path)
    for row in table.rows:
        if isinstance(row.value, dict) and row.value.get("name") in JUDGE_PROMPT_NAMES:
            prompts[row.value["name"]] = row.value
    missing = [name for name in JUDGE_PROMPT_NAMES if name not in prompts]
    if missing:
        raise DataError(f"{path}: has no judge prompt '{missing[0]}' (needed: {', '.join(JUDGE_PROMPT_NAMES)})")
    return prompts


# ---------------------------------------------------------------------------------------------
# Answering


def read_answers(path: Path) -> dict[Any, dict]:
    """``question_id -> record`` of the answers file; a line cut short by an interruption is dropped."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)  # appended records must start on their own line
    answers = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            answers[record["question_id"]] = record
        except (ValueError, KeyError, TypeError):
            continue
    return answers


def answer_turns(record: dict) -> list[str]:
    """The answer texts of a model-answer record (FastChat schema)."""
    return list(record["choices"][0]["turns"])


def answer_questions(
    run: EvalRun,
    questions: list[Question],
    path: Path,
    load_model: Any,
) -> dict[Any, dict]:
    """Answer every question not yet in ``path``, appending each as soon as both turns are done.

    ``load_model()`` returns ``(model, tokenizer)``; it is called only when something is left to answer.
    Returns ``question_id -> record`` for all questions.
    """

    answers = read_answers(path)
    todo = [q for q in questions if q.question_id not in answers]
    if answers:
        logger.info(
            "mt_bench: %d of %d questions already answered in %s", len(questions) - len(todo), len(questions), path
        )
    if not todo:
        return answers
    model, tokenizer = load_model()
    template = resolve_template(run, tokenizer)
    stops = stop_token_ids(model, tokenizer, template)
    max_new = run.eval.max_new_tokens or ANSWER_TOKENS
    path.parent.mkdir(parents=True, exist_ok=True)
    for batch in _batches(run, todo):
        temperature = _temperature(run, batch[0])
        turns = _answer_batch(run, batch, model, tokenizer, template, stops, max_new, temperature)
        with path.open("a", encoding="utf-8") as handle:
            for question, answer in zip(batch, turns, strict=True):
                record = {
                    "question_id": question.question_id,
                    "answer_id": f"{run.model_id}-{question.question_id}",
                    "model_id": run.model_id,
                    "choices": [{"index": 0, "turns": answer}],
                    "tstamp": time.time(),
                    "category": question.category,
                    "template": template.name,
                    "temperature": temperature,
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                answers[question.question_id] = record
            handle.flush()
            os.fsync(handle.fileno())
        logger.info("mt_bench: answered %d/%d questions", len(answers), len(questions))
    return answers


def _temperature(run: EvalRun, question: Question) -> float:
    return CATEGORY_TEMPERATURES.get(question.category, 0.7) if run.eval.category_temperatures else 0.0


def _batches(run: EvalRun, questions: list[Question]) -> list[list[Question]]:
    """Consecutive questions in groups of ``eval_batch_size``, never mixing temperatures or turn counts."""
    batches: list[list[Question]] = []
    for question in questions:
        last = batches[-1] if batches else None
        if (
            last
            and len(last) < run.eval.eval_batch_size
            and _temperature(run, last[0]) == _temperature(run, question)
            and len(last[0].turns) == len(question.turns)
        ):
            last.append(question)
        else:
            batches.append([question])
    return batches


def _answer_batch(run, batch, model, tokenizer, template, stops, max_new, temperature) -> list[list[str]]:
    """Both turns of every question in ``batch``: turn 2 sees the model's own turn-1 answer."""
    import torch

    if temperature > 0:
        torch.manual_seed(run.eval.seed + zlib.crc32(str(batch[0].question_id).encode()))
    answers: list[list[str]] = [[] for _ in batch]
    for turn in range(len(batch[0].turns)):
        prompts = []
        for question, previous in zip(batch, answers, strict=True):
            messages = []
            for index in range(turn + 1):
                messages.append({"role": "user", "content": question.turns[index]})
                messages.append({"role": "assistant", "content": previous[index] if index < turn else ""})
            prompts.append(conversation_prompt_ids(template, tokenizer, messages, run.data.default_system))
        for answer, text in zip(answers, generate(model, tokenizer, prompts, max_new, stops, temperature), strict=True):
            answer.append(text.strip())
    return answers


def conversation_prompt_ids(template: Template, tokenizer: Any, messages: list[dict], system: str | None) -> list[int]:
    """Ids of a conversation up to where the model answers its last user turn (the last assistant message
    is a placeholder), rendered with the answering model's chat template."""
    pairs = template.encode(tokenizer, {"system": None, "messages": messages}, system)
    ids: list[int] = []
    for prompt_ids, response_ids in pairs[:-1]:
        ids += prompt_ids + response_ids
    return ids + pairs[-1][0]


# ---------------------------------------------------------------------------------------------
# The judge's prompts


def judge_requests(
    questions: list[Question], answers: dict[Any, dict], prompts: dict[str, dict], runs: int
) -> list[JudgeRequest]:
    """One request per answered turn and judge run, with FastChat's single-grading prompts."""
    requests = []
    for question in questions:
        record = answers.get(question.question_id)
        if record is None:
            continue
        turns = answer_turns(record)
        math = question.category in NEED_REFERENCE
        for turn in range(1, len(question.turns) + 1):
            name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn == 2 else "")
            prompt = prompts[name]
            if turn == 1:
                fields = {"question": question.turns[0], "answer": turns[0]}
                if math:
                    fields["ref_answer_1"] = question.reference[0]
            else:
                fields = {
                    "question_1": question.turns[0],
                    "question_2": question.turns[1],
                    "answer_1": turns[0],
                    "answer_2": turns[1],
                }
                if math:
                    fields |= {"ref_answer_1": question.reference[0], "ref_answer_2": _second(question.reference)}
            user = prompt["prompt_template"].format(**fields)
            for run_index in range(runs):
                requests.append(
                    JudgeRequest(
                        question.question_id, question.category, turn, run_index, name, prompt["system_prompt"], user
                    )
                )
    return requests


def _second(reference: list[str]) -> str:
    return reference[1] if len(reference) > 1 else reference[0]
