"""One access line per gateway request, written off the request path.

The request path only appends a tuple to a list; every `interval_s` (0.1 s: short batches hold the loop briefly) the batch is formatted in
a worker thread and written to the stream (stderr, beside the other logs, in their format) in
one write. Not through `logging`: a record per request cost the gateway half its throughput at
20,000 requests a second (bench/), while formatting a line is a few microseconds. Lines hold
method, path, status, model, team, user, tokens and duration, never a credential: a path is cut
to 200 characters, anything key-shaped in it (`maas_...`) is redacted and control characters
are escaped, since paths are the client's.

    2026-12-02 01:20:00,123 INFO maas.access: POST /v1/chat/completions 200 model=qwen3-0-6b-instruct team=t1 user=alice tokens=53 ms=4.1
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from shared.logsafety import clean

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_PATH = 200

# (method, path, status, model, team, user, tokens, started) — the raw values, formatted later.
Entry = tuple[bytes, bytes, int, str, str, str, int, float]


def shown_path(path: bytes) -> str:
    # Redacted and escaped as every log line is (shared/logsafety.py): these lines bypass logging.
    text = clean(path[: _MAX_PATH * 4].decode("utf-8", "replace"))
    return text if len(text) <= _MAX_PATH else text[:_MAX_PATH] + "..."


def _field(value: str) -> str:
    return _CONTROL.sub("?", value).replace(" ", "_") or "-"


_MEMO_MAX = 4096


class _Memo(dict[Any, str]):
    """What a path or name is shown as, computed once: a batch repeats a few of each, and the
    worker holds the interpreter while it formats (a regex per field per line showed in bench/)."""

    def __init__(self, show: Callable[[Any], str]) -> None:
        super().__init__()
        self._show = show

    def __missing__(self, value: Any) -> str:
        if len(self) >= _MEMO_MAX:
            self.clear()  # a client inventing paths: bounded, not grown
        shown = self[value] = self._show(value)
        return shown


_PATHS = _Memo(shown_path)
_FIELDS = _Memo(lambda value: _field(value.decode("latin-1") if isinstance(value, bytes) else value))


def format_entry(entry: Entry, now: float) -> str:
    method, path, status, model, team, user, tokens, started = entry
    fields = _FIELDS
    return (
        f"{fields[method]} {_PATHS[path]} {status} model={fields[model]} team={fields[team]} "
        f"user={fields[user]} tokens={tokens} ms={(now - started) * 1000:.1f}"
    )


class _Stamps:
    """`logging`'s default asctime ("2026-12-02 01:20:00,123"), the second formatted once."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text},{int((at - second) * 1000):03d}"


class AccessLog:
    def __init__(self, *, enabled: bool = True, interval_s: float = 0.1, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self._interval = interval_s
        self._stream = stream
        self._entries: list[tuple[Entry, float, float]] = []
        self._task: asyncio.Task[None] | None = None
        self._stamps = _Stamps()

    def record(self, method: bytes, path: bytes, status: int, model: str, team: str, user: str, tokens: int,
               started: float) -> None:
        if self.enabled:
            self._entries.append(((method, path, status, model, team, user, tokens, started), time.monotonic(), time.time()))

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _write(self, entries: list[tuple[Entry, float, float]]) -> None:
        stamp = self._stamps
        text = "".join(f"{stamp(at)} INFO maas.access: {format_entry(entry, ended)}\n" for entry, ended, at in entries)
        stream = self._stream if self._stream is not None else sys.stderr  # (as it is now: tests swap it)
        stream.write(text)
        stream.flush()

    async def flush(self) -> None:
        entries, self._entries = self._entries, []
        if entries:
            await asyncio.get_running_loop().run_in_executor(None, self._write, entries)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()
