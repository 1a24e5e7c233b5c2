"""Fixtures for the eval tests: a recording OpenAI-compatible judge on 127.0.0.1, and MT-bench data.

The judge never leaves the loopback interface. By default it rates each answer from the markers in
the question it is shown (``Q3`` -> turn 1 of question 3, ``Q3b`` -> turn 2), with the ratings in
``judge.ratings``; a test may replace ``judge.script`` to return garbage, errors or varying ratings.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SAMPLE_MT_BENCH = HERE / "data" / "mt_bench"

# question marker -> rating the default script gives (turn 1: Qn, turn 2: Qnb)
RATINGS = {"Q1": 8, "Q1b": 6, "Q2": 4, "Q2b": 5, "Q3": 9, "Q3b": 7, "Q4": 3, "Q4b": 2}
_MARKER = re.compile(r"\bQ(\d+)(b?)\b")


def marker(body: dict) -> str:
    """``Q3`` or ``Q3b``: which answer a judge request grades (multi-turn prompts grade turn 2)."""
    text = "\n".join(m["content"] for m in body["messages"])
    found = _MARKER.search(text)
    assert found, f"no question marker in the judge prompt: {text[:200]!r}"
    second_turn = "### User:" in text
    return f"Q{found.group(1)}" + ("b" if second_turn else "")


def completion(text: str) -> dict:
    """An OpenAI chat-completions response body with ``text`` as the answer."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


class LoopbackJudge:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.ratings = dict(RATINGS)
        self.script: Callable[[dict, LoopbackJudge], tuple[int, object]] = self.default_script
        self._lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with judge._lock:
                    judge.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = judge.script(body, judge, dict(self.headers))
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def default_script(body: dict, judge: LoopbackJudge, headers: dict) -> tuple[int, object]:
        rating = judge.ratings[marker(body)]
        return 200, completion(f"The answer is judged fairly. Rating: [[{rating}]]")

    def asked(self) -> list[str]:
        """The markers of the requests received so far."""
        return [marker(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge() -> Iterator[LoopbackJudge]:
    """A started loopback judge; shut down after the test."""
    server = LoopbackJudge()
    yield server
    server.close()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nothing listens on (a port just released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
