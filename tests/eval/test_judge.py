"""The judge client against the loopback judge: retries with backoff, errors, garbage, cache, concurrency, key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from llmtune.eval.judge import (
    ERROR,
    OK,
    UNPARSED,
    JudgeClient,
    JudgeRequest,
    JudgeUnreachableError,
    judge_all,
    read_judgments,
)

from .conftest import completion


def request(n: int, run: int = 0) -> JudgeRequest:
    return JudgeRequest(n, "writing", 1, run, "single-v1", "You are a judge.", f"[Question]\nQ{n} hello\n")


def client(url: str, waits: list | None = None, **kwargs) -> JudgeClient:
    sleep = waits.append if waits is not None else (lambda seconds: None)
    return JudgeClient(
        url, "test-judge", kwargs.pop("key", None), max_retries=2, backoff_seconds=0.5, sleep=sleep, **kwargs
    )


def test_a_rating_is_asked_once_with_the_right_request(judge) -> None:
    judge.script = lambda body, server, headers: (200, completion("Rating: [[8]]"))
    text, attempts = client(judge.url, key="sk-test").complete("system text", "user text")
    assert text == "Rating: [[8]]" and attempts == 1
    (sent,) = judge.requests
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["Authorization"] == "Bearer sk-test"
    body = sent["body"]
    assert body["model"] == "test-judge" and body["temperature"] == 0.0
    assert body["messages"] == [{"role": "system", "content": "system text"}, {"role": "user", "content": "user text"}]


def test_errors_are_retried_with_exponential_backoff_then_missing(judge, tmp_path: Path) -> None:
    seen = {"Q3": 0}

    def flaky(body, server, headers):
        text = body["messages"][1]["content"]
        if "Q1 " in text:
            return 500, {"error": "overloaded"}  # always fails: missing after 1 + 2 retries
        if "Q2 " in text:
            return 200, "<html>not json</html>"  # garbage body: retried, then missing
        seen["Q3"] += 1
        return (429, {"error": "slow down"}) if seen["Q3"] == 1 else (200, completion("fine [[7]]"))

    judge.script = flaky
    waits: list[float] = []
    results = judge_all(client(judge.url, waits), [request(1), request(2), request(3)], tmp_path / "j.jsonl", 1)
    assert [r.status for r in results] == [ERROR, ERROR, OK] and results[2].score == 7.0
    assert results[0].error.startswith("HTTP 500") and "not a chat completion" in results[1].error
    assert waits == [0.5, 1.0, 0.5, 1.0, 0.5]  # the backoff doubles, per request
    assert len(judge.requests) == 3 + 3 + 2
    # missing judgments are not cached: the next run asks for them again (and only them)
    judge.requests.clear()
    judge.script = lambda body, server, headers: (200, completion("[[5]]"))
    again = judge_all(client(judge.url), [request(1), request(2), request(3)], tmp_path / "j.jsonl", 2)
    assert [r.score for r in again] == [5.0, 5.0, 7.0] and len(judge.requests) == 2


def test_garbage_ratings_are_kept_counted_and_cached(judge, tmp_path: Path) -> None:
    judge.script = lambda body, server, headers: (200, completion("I liked it a lot."))
    (result,) = judge_all(client(judge.url), [request(1)], tmp_path / "j.jsonl")
    assert result.status == UNPARSED and result.score is None and result.judgment == "I liked it a lot."
    judge_all(client(judge.url), [request(1)], tmp_path / "j.jsonl")
    assert len(judge.requests) == 1  # an unparsed rating is a judgment: not asked again


def test_unreachable_or_refusing_judges_stop_with_one_line(judge, dead_url: str, tmp_path: Path) -> None:
    waits: list[float] = []
    with pytest.raises(JudgeUnreachableError) as caught:
        judge_all(client(dead_url, waits), [request(1), request(2)], tmp_path / "j.jsonl", 2)
    message = str(caught.value)
    assert f"the judge at {dead_url} is unreachable" in message and "after 3 tries" in message and "\n" not in message
    judge.script = lambda body, server, headers: (401, {"error": {"message": "bad key " + headers["Authorization"]}})
    with pytest.raises(JudgeUnreachableError) as caught:
        judge_all(client(judge.url, key="sk-secret-777"), [request(1)], tmp_path / "j.jsonl")
    assert "HTTP 401 (the API key was refused" in str(caught.value) and "sk-secret-777" not in str(caught.value)
    assert len(judge.requests) == 1  # a refused key is not retried


def test_concurrency_is_bounded(judge, tmp_path: Path) -> None:
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow(body, server, headers):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return 200, completion("[[6]]")

    judge.script = slow
    results = judge_all(client(judge.url), [request(n) for n in range(12)], tmp_path / "j.jsonl", concurrency=3)
    assert all(r.score == 6.0 for r in results) and state["most"] <= 3 and state["most"] >= 2
    assert len(read_judgments(tmp_path / "j.jsonl")) == 12


def test_the_key_is_redacted_from_whatever_the_judge_echoes(judge, tmp_path: Path) -> None:
    judge.script = lambda body, server, headers: (200, completion(f"Your header was {headers['Authorization']} [[4]]"))
    (result,) = judge_all(client(judge.url, key="sk-secret-777"), [request(1)], tmp_path / "j.jsonl")
    assert result.judgment == "Your header was Bearer <redacted> [[4]]"
    assert "sk-secret-777" not in (tmp_path / "j.jsonl").read_text()
    assert "sk-secret-777" not in repr(client(judge.url, key="sk-secret-777"))


def test_a_cut_last_line_is_repaired_before_appending(judge, tmp_path: Path) -> None:
    judge.script = lambda body, server, headers: (200, completion("[[9]]"))
    path = tmp_path / "j.jsonl"
    judge_all(client(judge.url), [request(1)], path)
    path.write_text(path.read_text() + '{"key": "cut sho')
    judge_all(client(judge.url), [request(1), request(2)], path)
    assert sorted(j.question_id for j in read_judgments(path).values()) == [1, 2]
