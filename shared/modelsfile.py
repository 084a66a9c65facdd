"""The models file: which model name is served by which OpenAI-compatible backend.

One YAML document with a list under `models:`; each entry is one model clients can call:

    models:
      - name: qwen3-0-6b-instruct          # required: what clients put in the body's "model"
        url: http://127.0.0.1:8001/v1      # required: the backend's OpenAI base URL, ending in /v1
        upstream_model: Qwen/Qwen3-0.6B    # optional: the name the backend knows it by
        api_key: sk-...                    # optional: sent upstream as `Authorization: Bearer`

- `name` (required, 1-253 characters, unique in the file): the model's name for clients, in
  request bodies, in replies, in keys' `models` lists, in usage and in both model listings.
- `url` (required): the backend's OpenAI base URL, `http://` or `https://`, ending in `/v1`
  (a trailing `/` is dropped); the gateway calls `{url}/chat/completions`, `{url}/completions`
  and probes `{url}/models` for readiness. `{simulator_port}` in it is replaced by the
  simulator's port, so the default file (config/models.local.yaml) follows
  MAAS_SIMULATOR_PORT with zero configuration. Such an entry on a loopback host is the
  built-in simulator's: it is also sent the simulator's internal token (`simulator_token`,
  unless it sets `api_key`), without which the simulator answers 401. An entry naming the
  simulator's port as a number gets no token and is refused: `{simulator_port}` is the one
  way to point at the simulator.
- `upstream_model` (optional, default: `name`): the model name sent to the backend. When it
  differs from `name`, the gateway rewrites the body's `model` on the way up and every
  `"model"` in the reply (the JSON body, or each event of a stream) back to `name`, so
  clients only ever see the name they asked for.
- `api_key` (optional): the backend's own credential, sent as `Authorization: Bearer <api_key>`
  on calls and readiness probes; never logged, echoed or listed.
- `max_context` (optional, 1-10,000,000): the model's context length in tokens, what the gateway
  reserves for a request without `max_tokens`. Left out, the gateway learns it from the
  backend's `GET {url}/models` (vLLM's `max_model_len`; local/gateway/contexts.py), and assumes
  DEFAULT_MAX_CONTEXT until, or unless, the backend says.

Any other field is an error, so a misspelt one is not silently ignored.

`ModelsFile` is the one way to read it: loaded once at start (a bad file raises ValueError with
one line naming the file and the entry), then followed. A background thread compares the file's
inode, size and modification time every second (never on a request) and, when they change,
reads it again: a good edit replaces the table atomically and is handed to every subscriber
(the gateway's routes, the admin API's model listing); a bad edit keeps the previous table and
logs one line naming the file and the problem, and the next good edit is picked up.
`make run` also checks at once on SIGHUP (`kill -HUP <pid>`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "config" / "models.local.yaml"
_SIMULATOR_PLACEHOLDER = "{simulator_port}"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

log = logging.getLogger("maas.models")


DEFAULT_MAX_CONTEXT = 4096


class ModelBackend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    url: str = Field(description="OpenAI base URL of the backend, ending in /v1")
    upstream_model: str | None = Field(default=None, min_length=1)
    api_key: SecretStr | None = None
    # The model's context length (prompt plus completion, in tokens): what a request without
    # max_tokens can make the backend generate, so what the gateway reserves for it (vLLM
    # generates up to the context length when max_tokens is absent). None: the gateway asks the
    # backend (local/gateway/contexts.py), and assumes DEFAULT_MAX_CONTEXT until it says.
    max_context: int | None = Field(default=None, ge=1, le=10_000_000)

    @field_validator("url")
    @classmethod
    def _openai_base(cls, value: str) -> str:
        url = value.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if not url.endswith("/v1"):
            raise ValueError("must be the OpenAI base URL, ending in /v1")
        return url

    @property
    def served_model(self) -> str:
        """The model name to send upstream."""
        return self.upstream_model or self.name

    @property
    def renamed(self) -> bool:
        """Whether the backend knows the model by another name (replies are then rewritten)."""
        return self.upstream_model is not None and self.upstream_model != self.name


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own message spans several, with a source excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{where}: {problem}"


def _loopback(url: str) -> bool:
    """Whether a url names this machine: the simulator's token is never sent elsewhere."""
    try:
        return urlsplit(url).hostname in _LOOPBACK
    except ValueError:
        return False  # the url's own validation says what is wrong


def load_models_file(path: Path | None, *, simulator_port: int = 8001,
                     simulator_token: SecretStr | None = None) -> list[ModelBackend]:
    """Read and validate a models file; None means the default file (the built-in simulator).

    Entries whose url names `{simulator_port}` get `simulator_token` as their `api_key` (unless
    they set one): the built-in simulator answers only requests that carry it.

    Raises ValueError with one line naming the file and the entry for anything wrong in it.
    """
    source = path if path is not None else DEFAULT_MODELS_FILE
    try:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"models file {source}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"models file {source}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"models file {source}: not valid YAML{_yaml_problem(exc)}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ValueError(f"models file {source}: expected a list of models under 'models:'")

    backends: list[ModelBackend] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["models"]):
        label = f"entry {index + 1}"  # counted as people count them: the first entry is 1
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label = f"entry {index + 1} ({entry['name']!r})"
        if not isinstance(entry, dict):
            raise ValueError(f"models file {source}: {label} must be a mapping with name and url")
        if isinstance(entry.get("url"), str) and _SIMULATOR_PLACEHOLDER in entry["url"]:
            entry = {**entry, "url": entry["url"].replace(_SIMULATOR_PLACEHOLDER, str(simulator_port))}
            if simulator_token is not None and "api_key" not in entry and _loopback(entry["url"]):
                entry["api_key"] = simulator_token
        try:
            backend = ModelBackend.model_validate(entry)
        except ValidationError as exc:
            # err["msg"] never quotes the input, so a misplaced api_key is not echoed.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            )
            raise ValueError(f"models file {source}: {label}: {problems}") from exc
        if backend.name in seen:
            raise ValueError(f"models file {source}: {label}: model {backend.name!r} is listed twice")
        seen.add(backend.name)
        backends.append(backend)
    return backends


# What tells that a file changed without reading it: inode (an editor's save-by-rename),
# size and modification time in nanoseconds.
_Signature = tuple[int, int, int]


def _signature(path: Path) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ModelsTable:
    """One good reading of the models file."""

    path: Path
    backends: tuple[ModelBackend, ...]
    created: int  # the file's modification time (Unix seconds): `created` in the OpenAI listing
    signature: _Signature

    @property
    def names(self) -> list[str]:
        return [backend.name for backend in self.backends]


Listener = Callable[[ModelsTable], None]


class ModelsFile:
    """A models file loaded once and followed: the table its subscribers share.

    `table` is always a good reading (the constructor raises ValueError otherwise). `start()`
    runs the watcher thread (a stat every `interval_s`); `check()` compares and re-reads now
    (what the thread and `poke()`, e.g. on SIGHUP, do). Subscribers are called on the
    watcher's thread with each new table, in order, one change at a time.
    """

    def __init__(self, path: Path | None, *, simulator_port: int = 8001, simulator_token: SecretStr | None = None,
                 interval_s: float = 1.0) -> None:
        self.path = path if path is not None else DEFAULT_MODELS_FILE
        self._simulator_port = simulator_port
        self._simulator_token = simulator_token  # sent to the simulator's entries (see load_models_file)
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._poke = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        table = self._read()
        if table is None:  # written to while read twice: take what is there now
            backends = load_models_file(self.path, simulator_port=simulator_port, simulator_token=simulator_token)
            table = ModelsTable(self.path, tuple(backends), 0, (0, 0, 0))
        self.table: ModelsTable = table
        self._seen: _Signature | None = table.signature

    def _read(self) -> ModelsTable | None:
        """A fresh reading; None when the file changed while it was read (try again later)."""
        for _ in range(2):
            before = _signature(self.path)
            backends = load_models_file(self.path, simulator_port=self._simulator_port,
                                        simulator_token=self._simulator_token)  # ValueError
            if before is not None and _signature(self.path) == before:
                return ModelsTable(self.path, tuple(backends), before[2] // 1_000_000_000, before)
        return None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every later table; returns the function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def check(self) -> bool:
        """Re-read the file if it changed since last read; True when a new table was taken."""
        with self._lock:  # one check at a time: the watcher's and a poke's never interleave
            signature = _signature(self.path)
            if signature is not None and signature == self._seen:
                return False
            try:
                table = self._read()
            except ValueError as exc:
                if signature != self._seen:  # once per bad version, not once per tick
                    log.warning("%s; still serving the previous %d model(s) until the file is fixed",
                                exc, len(self.table.backends))
                self._seen = signature
                return False
            if table is None:
                return False  # being written: the next check reads the finished file
            self._seen = table.signature
            if table.backends == self.table.backends:
                self.table = table  # touched, not changed: nothing to tell
                return False
            self.table = table
            log.info("models file %s: now serving %d model(s): %s", self.path, len(table.backends),
                     ", ".join(table.names) or "none")
            for listener in list(self._listeners):
                try:
                    listener(table)
                except Exception:
                    log.exception("a models file subscriber failed")
            return True

    # -- the watcher thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="maas-models-file", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Check now rather than at the next tick (safe from a signal handler)."""
        self._poke.set()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._poke.set()
        thread.join(5)

    def _run(self) -> None:
        while True:
            self._poke.wait(self._interval_s)
            self._poke.clear()
            if self._stopping:
                return
            try:
                self.check()
            except Exception:
                log.exception("checking models file %s failed", self.path)
