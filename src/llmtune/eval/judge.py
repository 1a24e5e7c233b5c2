"""An OpenAI-compatible judge: chat-completions requests with retries, backoff, bounded concurrency and a cache.

Any server that speaks ``POST {api_base}/chat/completions`` works: OpenAI, vLLM, llama.cpp's
``llama-server``, ... The API key comes from the environment variable ``judge_api_key_env``
names; it is sent only in the ``Authorization`` header and is removed from every text the judge
returns before that text is logged or written (a server may echo it).

What can go wrong, and what happens:

* the server cannot be reached (connection refused, unknown host) after every retry, or it
  refuses the request for good (HTTP 401, 403, 404: bad key, wrong URL or model): the run stops
  with one line (:class:`JudgeUnreachableError`); judgments made so far stay in the cache;
* any other failure (HTTP 429/5xx, timeout, a body that is not a chat completion) is retried
  with exponential backoff; when the retries run out the judgment is recorded as **missing**
  (status ``error``): never scored, always counted, and asked again by the next run;
* a judgment whose text holds no ``[[rating]]`` is recorded as **unparsed**: kept, counted, not scored.

Judgments are appended to ``judgments.jsonl`` as they arrive; a judgment already there (status
``ok`` or ``unparsed``, same judge model, prompt and run index) is never asked again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from llmtune.errors import LlmtuneError

logger = logging.getLogger("llmtune")

OK, UNPARSED, ERROR = "ok", "unparsed", "error"
_RATING = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))  # FastChat's two patterns
_FATAL_STATUS = {401: "the API key was refused", 403: "access is forbidden", 404: "no such URL or model"}
REDACTED = "<redacted>"


class JudgeUnreachableError(LlmtuneError, ConnectionError):
    """The judge could not be reached, or refused every request; the run stops, answers are kept."""


class _Retryable(Exception):
    """One failed attempt that may succeed when tried again."""


class _Unreachable(Exception):
    """One attempt that could not connect."""


@dataclass
class JudgeRequest:
    """One judgment to ask for: which answer it grades, and the two messages the judge reads."""

    question_id: int | str
    category: str
    turn: int
    run: int
    prompt_name: str
    system: str
    user: str

    def key(self, judge_model: str) -> str:
        """Cache key: the judge model, the exact messages and the run index (not the URL: a moved server
        still answers the same question)."""
        text = json.dumps([judge_model, self.system, self.user, self.run], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class Judgment:
    """One line of ``judgments.jsonl``: status ok (``score`` set), unparsed or error (missing)."""

    key: str
    question_id: int | str
    category: str
    turn: int
    run: int
    judge_model: str
    prompt_name: str
    status: str
    score: float | None = None
    judgment: str = ""
    error: str | None = None
    attempts: int = 1


def parse_rating(text: str) -> float | None:
    """The ``[[rating]]`` in a judgment (FastChat's patterns), or None when there is none in 1..10."""
    for pattern in _RATING:
        match = pattern.search(text)
        if match:
            value = float(match.group(1))
            return value if 1.0 <= value <= 10.0 else None
    return None


class JudgeClient:
    """Chat completions from one OpenAI-compatible endpoint, with retries and exponential backoff."""

    def __init__(
        self,
        api_base: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_seconds: float = 120.0,
        max_retries: int = 3,
        backoff_seconds: float = 2.0,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.api_base = api_base
        self.model = model
        self._api_key = api_key or None
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._sleep = sleep

    def __repr__(self) -> str:  # never show the key
        return f"JudgeClient({self.url!r}, model={self.model!r}, key={'set' if self._api_key else 'none'})"

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``<redacted>``."""
        return text.replace(self._api_key, REDACTED) if self._api_key and text else text

    def complete(self, system: str, user: str) -> tuple[str, int]:
        """The judge's reply to ``system`` + ``user`` and the attempts it took.

        Raises :class:`JudgeUnreachableError` (stop the run) or ``RuntimeError`` (retries exhausted:
        the judgment is missing), both with the key redacted.
        """
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        last = ""
        unreachable = False
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.backoff_seconds * 2 ** (attempt - 1))
            try:
                return self._post(body), attempt + 1
            except _Unreachable as error:
                unreachable, last = True, str(error)
            except _Retryable as error:
                unreachable, last = False, str(error)
        if unreachable:
            raise JudgeUnreachableError(
                f"the judge at {self.api_base} is unreachable ({self.redact(last)}) after {self.max_retries + 1} tries"
            )
        raise RuntimeError(self.redact(last))

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310 - http(s) only
                raw = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            detail = self.redact(error.read().decode("utf-8", errors="replace")[:200].strip() or str(error.reason))
            if error.code in _FATAL_STATUS:
                raise JudgeUnreachableError(
                    f"the judge at {self.api_base} answered HTTP {error.code} ({_FATAL_STATUS[error.code]}: "
                    f"{detail}); check judge_api_base, judge_model and the key in the variable judge_api_key_env names"
                ) from None
            raise _Retryable(f"HTTP {error.code}: {detail}") from None
        except TimeoutError as error:
            raise _Retryable(f"timed out after {self.timeout_seconds:g} s ({error})") from None
        except urllib.error.URLError as error:  # could not connect (refused, unknown host, no route)
            if isinstance(error.reason, TimeoutError | socket.timeout):
                raise _Retryable(f"timed out after {self.timeout_seconds:g} s") from None
            raise _Unreachable(str(error.reason)) from None
        except (OSError, http.client.HTTPException) as error:  # connected, then the exchange broke off
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"not a chat completion: {self.redact(raw[:120])!r}") from None
        if not isinstance(content, str):
            raise _Retryable("the completion's content is not text")
        return self.redact(content)


# ---------------------------------------------------------------------------------------------
# Many judgments: the cache and bounded concurrency


def read_judgments(path: Path) -> dict[str, Judgment]:
    """The latest judgment per key in ``path`` (lines that do not parse, e.g. a cut last line, are skipped)."""
    found: dict[str, Judgment] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            judgment = Judgment(**json.loads(line))
        except (ValueError, TypeError):
            continue
        found[judgment.key] = judgment
    return found


def judge_all(
    client: JudgeClient,
    requests: list[JudgeRequest],
    cache_path: Path,
    concurrency: int = 4,
    on_done: Callable[[int, int], None] | None = None,
) -> list[Judgment]:
    """A judgment for every request: from the cache, or asked (``concurrency`` at a time) and appended to it.

    Raises :class:`JudgeUnreachableError` once the judge cannot be reached; the judgments already
    received are in ``cache_path``.
    """
    cached = read_judgments(cache_path)
    results: dict[str, Judgment] = {}
    todo = []
    for request in requests:
        key = request.key(client.model)
        if key in cached and cached[key].status in (OK, UNPARSED):
            results[key] = cached[key]
        else:
            todo.append((key, request))
    if not todo:
        return [results[r.key(client.model)] for r in requests]
    logger.info("judging %d answers with %s (%d cached)", len(todo), client.model, len(results))
    _repair_tail(cache_path)
    lock = threading.Lock()
    stop = threading.Event()
    done = [0]

    def ask(key: str, request: JudgeRequest) -> Judgment:
        if stop.is_set():
            raise _Cancelled
        base = {k: v for k, v in asdict(request).items() if k not in ("system", "user")}
        try:
            text, attempts = client.complete(request.system, request.user)
        except JudgeUnreachableError:
            stop.set()
            raise
        except RuntimeError as error:
            attempts = client.max_retries + 1
            judgment = Judgment(
                key, **base, judge_model=client.model, status=ERROR, error=str(error), attempts=attempts
            )
        else:
            score = parse_rating(text)
            status = OK if score is not None else UNPARSED
            judgment = Judgment(
                key, **base, judge_model=client.model, status=status, score=score, judgment=text, attempts=attempts
            )
        with lock:
            with cache_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(judgment), ensure_ascii=False) + "\n")
            done[0] += 1
            if on_done is not None:
                on_done(done[0], len(todo))
        return judgment

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = [pool.submit(ask, key, request) for key, request in todo]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in finished):
            stop.set()
    except BaseException:  # Ctrl-C: ask nothing more; the judgments received are in the cache
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=stop.is_set())
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    for error in sorted(errors, key=lambda e: not isinstance(e, JudgeUnreachableError)):
        if not isinstance(error, _Cancelled):
            raise error
    for future in futures:
        judgment = future.result()
        results[judgment.key] = judgment
    return [results[r.key(client.model)] for r in requests]


class _Cancelled(Exception):
    """A request skipped because the judge was found unreachable."""


def _repair_tail(path: Path) -> None:
    """Drop a last line cut short by an interrupted write, so appended lines start on their own line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
