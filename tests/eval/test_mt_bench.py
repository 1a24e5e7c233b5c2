"""MT-bench end to end: the tiny model answers, the loopback judge (127.0.0.1) rates, llmtune aggregates.

The judge's prompts must hold the question, the answer and (math, reasoning, coding) the reference;
scores are checked against values computed by hand from the judge's scripted ratings; an
interrupted run resumes without asking the model or the judge again; garbage and errors are counted;
the API key reaches the judge and nothing else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llmtune.cli import main
from llmtune.errors import ConfigError
from llmtune.eval import mt_bench
from llmtune.eval.config import parse_eval_args
from llmtune.eval.judge import ERROR, OK, Judgment
from llmtune.eval.model import resolve_template
from llmtune.eval.mt_bench_report import aggregate

from .conftest import RATINGS, SAMPLE_MT_BENCH, completion, marker

SECRET = "sk-llmtune-test-0123456789abcdef"
KEY_ENV = "LLMTUNE_TEST_JUDGE_KEY"
QUESTIONS = [json.loads(line) for line in (SAMPLE_MT_BENCH / "question.jsonl").read_text().splitlines()]
REFERENCES = {
    3: ["REF3 12 + 34 = 46.", "REF3b 46 doubled is 92."],
    4: ["REF4 Bo is the shortest.", "REF4b Tom is the tallest."],
}


def mt_args(out: Path, url: str, *extra: str) -> list[str]:
    return [
        "eval",
        "--task",
        "mt_bench",
        "--model_name_or_path",
        "llmtune/tiny-llama",
        "--template",
        "default",
        "--mt_bench_dir",
        str(SAMPLE_MT_BENCH),
        "--output_dir",
        str(out),
        "--max_new_tokens",
        "6",
        "--judge_model",
        "test-judge",
        "--judge_api_base",
        url,
        "--judge_api_key_env",
        KEY_ENV,
        "--judge_backoff_seconds",
        "0",
        "--judge_max_retries",
        "1",
        *extra,
    ]


def answers_of(out: Path) -> dict[int, list[str]]:
    lines = (out / "mt_bench" / "answers.jsonl").read_text().splitlines()
    return {r["question_id"]: r["choices"][0]["turns"] for r in map(json.loads, lines)}


def files_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def count_generate(monkeypatch):
    """Count the model's generate calls (one per batch and turn); ``calls.fail_at`` raises Ctrl-C there."""
    import llmtune.eval.mt_bench as mt_bench_module

    real = mt_bench_module.generate
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        if getattr(counted, "fail_at", None) == len(calls):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mt_bench_module, "generate", counted)
    counted.calls = calls
    return counted


def test_end_to_end_prompts_scores_and_the_key(judge, tmp_path, monkeypatch, capsys, caplog) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "eval"
    assert main(mt_args(out, judge.url)) == 0
    answers = answers_of(out)
    assert sorted(answers) == [1, 2, 3, 4] and all(len(turns) == 2 for turns in answers.values())

    prompts = mt_bench.load_judge_prompts(
        parse_eval_args({"task": "mt_bench", "model_name_or_path": "llmtune/tiny-llama"})
    )
    assert sorted(judge.asked()) == sorted(RATINGS)
    for sent in judge.requests:
        assert sent["headers"]["Authorization"] == f"Bearer {SECRET}"
        system, user = (m["content"] for m in sent["body"]["messages"])
        name = marker(sent["body"])
        qid, turn = int(name[1]), 2 if name.endswith("b") else 1
        question, answer = QUESTIONS[qid - 1], answers[qid]
        needs_reference = question["category"] in ("math", "reasoning")
        prompt_name = ("single-math-v1" if needs_reference else "single-v1") + ("-multi-turn" if turn == 2 else "")
        assert system == prompts[prompt_name]["system_prompt"]
        assert question["turns"][0] in user and f"\n{answer[0]}\n" in user
        if turn == 2:
            assert question["turns"][1] in user and f"\n{answer[1]}\n" in user
        if needs_reference:
            assert all(ref in user for ref in REFERENCES[qid][:turn])  # from reference_answer/gpt-4.jsonl
        else:
            assert "Reference" not in user

    result = json.loads((out / "mt_bench" / "results.json").read_text())
    # ratings: Q1 8/6, Q2 4/5 (writing), Q3 9/7 (math), Q4 3/2 (reasoning)
    assert result["overall"]["median"] == pytest.approx(44 / 8)
    assert result["turn 1"]["median"] == pytest.approx(6.0) and result["turn 2"]["median"] == pytest.approx(5.0)
    assert {c: s["median"] for c, s in result["categories"].items()} == {"writing": 5.75, "math": 8.0, "reasoning": 2.5}
    assert result["counts"] == {"expected": 8, "scored": 8, "unparsed": 0, "missing": 0}
    printed = capsys.readouterr()
    assert "| overall | 5.50 |" in printed.out and (out / "mt_bench" / "mt_bench.png").stat().st_size > 1000
    # the key went to the judge and nowhere else
    assert SECRET not in files_text(out) and SECRET not in printed.out + printed.err + caplog.text
    assert (out / "mt_bench" / "eval_args.yaml").read_text().count(KEY_ENV) == 1


def test_an_interrupted_run_resumes_without_asking_again(judge, dead_url, tmp_path, count_generate, capsys) -> None:
    out = tmp_path / "eval"
    count_generate.fail_at = 3  # Ctrl-C while answering the second question (one question per batch)
    assert main(mt_args(out, judge.url, "--eval_batch_size", "1")) == 130
    assert sorted(answers_of(out)) == [1] and judge.requests == []

    # The judge is down: the remaining answers are generated and kept; one line says so.
    assert main(mt_args(out, dead_url, "--eval_batch_size", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"llmtune: error: the judge at {dead_url} is unreachable")
    assert "the 4 answers are kept in" in err
    # generate calls: 2 for question 1, the interrupted one, then 3 questions x 2 turns
    assert sorted(answers_of(out)) == [1, 2, 3, 4] and len(count_generate.calls) == 3 + 6

    # The judge is back: no question is answered again, every turn is judged once.
    assert main(mt_args(out, judge.url, "--eval_batch_size", "1")) == 0
    assert len(count_generate.calls) == 9 and sorted(judge.asked()) == sorted(RATINGS)
    first = json.loads((out / "mt_bench" / "results.json").read_text())

    # A rerun asks nobody anything and gives the same results.
    assert main(mt_args(out, judge.url)) == 0
    assert len(count_generate.calls) == 9 and len(judge.requests) == 8
    assert json.loads((out / "mt_bench" / "results.json").read_text()) == first


def test_garbage_errors_and_judge_runs_give_counts_median_and_spread(judge, tmp_path, capsys) -> None:
    seen: dict[str, int] = {}

    def script(body, server, headers):
        name = marker(body)
        if name == "Q1":
            return 200, completion("A fine answer, I would say.")  # no [[rating]]: unparsed
        if name == "Q2b":
            return 503, {"error": "down for this one"}  # retried, then missing
        run = seen.get(name, 0)
        seen[name] = run + 1
        return 200, completion(f"Rating: [[{RATINGS[name] + (0, 1, -1)[run]}]]")

    judge.script = script
    out = tmp_path / "eval"
    assert main(mt_args(out, judge.url, "--judge_runs", "3", "--judge_concurrency", "1")) == 0
    result = json.loads((out / "mt_bench" / "results.json").read_text())
    assert result["counts"] == {"expected": 24, "scored": 18, "unparsed": 3, "missing": 3}
    assert len(judge.requests) == 7 * 3 + 3 * 2  # Q2b: 1 try + 1 retry in each of the 3 runs
    # scored each run: Q1b 6, Q2 4, Q3 9, Q3b 7, Q4 3, Q4b 2 (mean 31/6), shifted by 0, +1, -1
    overall = result["overall"]
    assert overall["runs"] == pytest.approx([31 / 6, 31 / 6 + 1, 31 / 6 - 1], abs=1e-3)
    assert overall["median"] == pytest.approx(31 / 6, abs=1e-3) and overall["spread"] == pytest.approx(2.0)
    assert overall["stdev"] == pytest.approx((2 / 3) ** 0.5, abs=1e-3)
    assert result["turn 1"]["median"] == pytest.approx(16 / 3, abs=1e-3)  # Q2 4, Q3 9, Q4 3
    assert result["categories"]["writing"]["median"] == pytest.approx(5.0)  # Q1b 6, Q2 4
    table = capsys.readouterr().out
    assert "| overall | 5.17 ± 1.00 |" in table and "unparsed ratings 3; missing (judge errors) 3" in table
    judgments = [json.loads(line) for line in (out / "mt_bench" / "judgments.jsonl").read_text().splitlines()]
    assert sum(j["status"] == ERROR for j in judgments) == 3 and all(
        j["score"] is None for j in judgments if j["status"] != OK
    )


def test_compare_puts_runs_side_by_side(tmp_path, capsys) -> None:
    def result(model_id: str, rating: float) -> dict:
        judgments = [
            Judgment(f"{model_id}{q}{t}", q, category, t, 0, "judge", "single-v1", OK, rating + t)
            for q, category in ((1, "writing"), (2, "math"), (3, "coding"))
            for t in (1, 2)
        ]
        return aggregate(judgments, runs=1, expected=6, model_id=model_id, judge_model="judge")

    for folder, model_id, rating in (
        (tmp_path / "a" / "mt_bench", "run_a", 3.0),
        (tmp_path / "b" / "eval" / "mt_bench", "run_b", 5.0),
    ):
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(result(model_id, rating)))
    out = tmp_path / "cmp"
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output_dir", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert (
        "| | run_a | run_b |" in table and "| overall | 4.50 | 6.50 |" in table and "| coding | 4.50 | 6.50 |" in table
    )
    assert (out / "compare.png").stat().st_size > 1000 and "run_b" in capsys.readouterr().out
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2
    assert "compare: no MT-bench results.json in" in capsys.readouterr().err


def test_the_chat_template_comes_from_the_tokenizer_or_the_config_never_the_name(tmp_path) -> None:
    from llmtune.hparams import ModelArguments
    from llmtune.model import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path="llmtune/tiny-llama"))
    named = {"task": "mt_bench", "model_name_or_path": "meta-llama/Llama-2-7b-chat-hf"}  # a name that "says" llama2
    assert resolve_template(parse_eval_args(named), tokenizer).name == "auto"  # the tokenizer's own (chatml)
    assert resolve_template(parse_eval_args({**named, "template": "alpaca"}), tokenizer).name == "alpaca"
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="never guesses it from the model's name"):
        resolve_template(parse_eval_args(named), tokenizer)


def test_without_a_judge_the_answers_are_written_with_the_tokenizers_template(tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    flags = ["--task", "mt_bench", "--model_name_or_path", "llmtune/tiny-llama", "--mt_bench_dir", str(SAMPLE_MT_BENCH)]
    assert main(["eval", *flags, "--output_dir", str(out), "--max_new_tokens", "4", "--max_samples", "2"]) == 0
    assert "set judge_model" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "mt_bench" / "answers.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in records] == [1, 2] and {r["template"] for r in records} == {"auto"}


def test_fastchats_mt_bench_files_load_and_build_every_judge_prompt(shared_mt_bench: Path) -> None:
    run = parse_eval_args(
        {"task": "mt_bench", "model_name_or_path": "llmtune/tiny-llama", "mt_bench_dir": str(shared_mt_bench)}
    )
    questions = mt_bench.load_questions(run)
    assert len(questions) == 80 and len({q.category for q in questions}) == 8
    assert all(len(q.reference) == 2 for q in questions if q.category in mt_bench.NEED_REFERENCE)
    answers = {
        q.question_id: {"choices": [{"turns": [f"A1-{q.question_id}", f"A2-{q.question_id}"]}]} for q in questions
    }
    requests = mt_bench.judge_requests(questions, answers, mt_bench.load_judge_prompts(run), runs=1)
    assert len(requests) == 160
    for request in requests:
        question = next(q for q in questions if q.question_id == request.question_id)
        assert question.turns[0] in request.user and f"A1-{question.question_id}" in request.user
        if question.category in mt_bench.NEED_REFERENCE:
            assert question.reference[request.turn - 1] in request.user and "math" in request.prompt_name
        else:
            assert "Reference" not in request.user and "math" not in request.prompt_name
