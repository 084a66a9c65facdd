"""One access line per gateway request, written off the request path.

The request path only appends a tuple to a list; every `interval_s` the batch is formatted and
handed to the `maas.access` logger in a worker thread, so formatting and the log's I/O never
run on the gateway's event loop. Lines hold method, path, status, model, team, user, tokens and
duration, never a credential: a path is cut to 200 characters, anything key-shaped in it
(`maas_...`) is redacted and control characters are escaped, since paths are the client's.

    POST /v1/chat/completions 200 model=qwen3-0-6b-instruct team=t1 user=alice tokens=53 ms=4.1
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

log = logging.getLogger("maas.access")

_KEY_SHAPED = re.compile(r"maas_[A-Za-z0-9_\-]{8,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_PATH = 200

# (method, path, status, model, team, user, tokens, started) — the raw values, formatted later.
Entry = tuple[bytes, bytes, int, str, str, str, int, float]


def shown_path(path: bytes) -> str:
    text = path[: _MAX_PATH * 4].decode("utf-8", "replace")
    text = _KEY_SHAPED.sub("maas_[redacted]", text)
    text = _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
    return text if len(text) <= _MAX_PATH else text[:_MAX_PATH] + "..."


def _field(value: str) -> str:
    return _CONTROL.sub("?", value).replace(" ", "_") or "-"


def format_entry(entry: Entry, now: float) -> str:
    method, path, status, model, team, user, tokens, started = entry
    return (
        f"{_field(method.decode('latin-1'))} {shown_path(path)} {status} model={_field(model)} team={_field(team)} "
        f"user={_field(user)} tokens={tokens} ms={(now - started) * 1000:.1f}"
    )


class AccessLog:
    def __init__(self, *, enabled: bool = True, interval_s: float = 0.5) -> None:
        self.enabled = enabled
        self._interval = interval_s
        self._entries: list[tuple[Entry, float]] = []
        self._task: asyncio.Task[None] | None = None

    def record(self, method: bytes, path: bytes, status: int, model: str, team: str, user: str, tokens: int,
               started: float) -> None:
        if self.enabled:
            self._entries.append(((method, path, status, model, team, user, tokens, started), time.monotonic()))

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _write(self, entries: list[tuple[Entry, float]]) -> None:
        for entry, ended in entries:
            log.info("%s", format_entry(entry, ended))

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
