"""`make run`'s admin API as the image runs it: gunicorn's arbiter and one AdminWorker
(local/adminserver.py), in a child process of the runtime.

The runtime binds the port (so a busy one is its usual one-line error) and hands the socket
down; the child gets the runtime's settings, and the simulator's token for the model listing's
readiness probes, on stdin (a pipe: never in an environment or a file), and is stopped with
the runtime:

- Ctrl-C or SIGTERM: the runtime stops the child (SIGTERM: gunicorn stops gracefully) first,
  then the rest; the child is in a session of its own, so a terminal's Ctrl-C reaches the
  runtime only and the order is the runtime's;
- the child's arbiter dies (crash, kill -9): the runtime says so and stops everything, exit 1;
  a dead worker is replaced by the arbiter, as in the image;
- the runtime dies (kill -9): the kernel sends the arbiter SIGTERM (PR_SET_PDEATHSIG).

What the admin functions shared with the gateway in one process goes over a socketpair:

- usage: the gateway keeps its latest counts in memory and writes them to the ledger's SQLite
  file every 0.5 s. A usage read here first asks the runtime to flush, and reads once it has
  (or after 2 s without an answer), so it sees every count recorded before it was asked, as
  the in-process ledger did; a flush of a few rows costs about a millisecond, where waiting
  for the next timed flush would have cost up to 0.5 s on every read and a shorter interval
  only made the race rarer;
- token counters: explain (shared/explain.py) reads the gateway's counters as they are now, on
  the gateway's loop (`counters`), whichever store holds them (the process or Redis);
- team changes: the Context's `teams_changed` runs in the runtime, where the cleanup events
  follow team deletes (local/events.py) and, with the Kubernetes store, the policies are
  synced, once, as before; the request waits for it.

Store changes need nothing: the gateway notices every commit through the store's generation
file (shared/store/generation.py), whichever process made it.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from local.admin import listen, url_of
from local.adminserver import AdminApplication, Limits, gunicorn_options
from shared.context import Context
from shared.errors import BackendUnavailable
from shared.ledger import UsageLedger, UsageRow
from shared.settings import Settings

log = logging.getLogger("maas.admin")

_READY_S = 60.0  # a first start compiles bytecode; a slow disk takes its time
_FLUSH_WAIT_S = 2.0
_TEAMS_WAIT_S = 60.0  # a policy sync against a cluster
_STOP_S = 20.0  # gunicorn's graceful_timeout (10 s) and its own exit
_MESSAGE = 65_536  # a counters request names at most a few dozen counters
_PR_SET_PDEATHSIG = 1


def _dumped(settings: Settings, simulator_token: SecretStr | None) -> bytes:
    """What the child is told on stdin (a pipe: never in its environment or on disk)."""
    values = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values[name] = value.get_secret_value()
    token = simulator_token.get_secret_value() if simulator_token is not None else None
    return json.dumps({"settings": values, "simulator_token": token}).encode()


# -- the runtime's side -----------------------------------------------------------------------


class AdminProcess:
    """The admin API in a child process; `start()` returns once it serves, `stop()` once it
    has stopped. `on_exit` is called (from a watcher thread) if it stops on its own;
    `failed` is then True."""

    def __init__(self, settings: Settings, *, ctx: Context, ledger: UsageLedger | None,
                 on_exit: Callable[[], None], simulator_token: SecretStr | None = None,
                 counters: Callable[[list[tuple[str, int]]], list[tuple[int, int, int]]] | None = None) -> None:
        self._settings, self._ctx, self._ledger, self._on_exit = settings, ctx, ledger, on_exit
        self._counters = counters
        # The model listing probes each backend's readiness; the simulator answers only its token.
        self._simulator_token = simulator_token
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.failed = False
        self.url = ""

    def start(self) -> None:
        listener = listen(self._settings.host, self._settings.admin_port)  # OSError: port in use
        url = url_of(listener, tls=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Found as this process found `local` (the same working directory and environment).
            self._process = subprocess.Popen(
                [sys.executable, "-m", "local.adminprocess", str(os.getpid()), str(listener.fileno()),
                 str(theirs.fileno())],
                stdin=subprocess.PIPE, pass_fds=(theirs.fileno(), listener.fileno()), start_new_session=True,
            )
            assert self._process.stdin is not None
            self._process.stdin.write(_dumped(self._settings, self._simulator_token))
            self._process.stdin.close()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            listener.close()  # the child's now: if it goes, so does the port
        self._channel = ours
        self._spawn(self._serve_channel, "admin-api-channel")
        deadline = time.monotonic() + _READY_S
        while not self._ready.wait(0.1):
            if self._process.poll() is not None:
                raise RuntimeError(f"the admin API's server exited while starting (code {self._process.returncode}); "
                                   "its output is above")
            if time.monotonic() > deadline:
                self._terminate()
                raise RuntimeError(f"the admin API's server did not start in {_READY_S:.0f}s")
        self.url = url
        self._spawn(self._watch, "admin-api-watch")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve_channel(self) -> None:
        """The child's requests, one at a time: ready, flush the ledger, teams changed."""
        assert self._channel is not None
        while True:
            try:
                message = self._channel.recv(_MESSAGE)
            except OSError:
                return
            if not message:
                return  # the child has gone
            kind, number, payload = (message.decode("utf-8", "replace").split(" ", 2) + ["", ""])[:3]
            if kind == "ready":
                self._ready.set()
                continue
            ok, data = True, ""
            try:
                if kind == "flush" and self._ledger is not None:
                    self._ledger.flush()
                elif kind == "teams":
                    self._ctx.teams_changed()
                elif kind == "counters":
                    if self._counters is None:
                        ok = False
                    else:
                        data = json.dumps(self._counters([(str(key), int(window_s))
                                                          for key, window_s in json.loads(payload)]))
            except Exception:  # noqa: BLE001 - reported to the child, which answers for it
                log.exception("the admin API's %s request failed", kind)
                ok = False
            try:
                self._channel.send(f"{number} {'ok' if ok else 'failed'} {data}".rstrip().encode())
            except OSError:
                return

    def _watch(self) -> None:
        assert self._process is not None
        code = self._process.wait()
        if not self._stopping:
            self.failed = True
            print(f"error: the admin API's server exited (code {code}); stopping the runtime",
                  file=sys.stderr, flush=True)
            self._on_exit()

    def _terminate(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        self._stopping = True
        self._terminate()
        if self._channel is not None:
            self._channel.close()
        for thread in self._threads:
            thread.join(timeout=5)


# -- the child's side -------------------------------------------------------------------------


class _Channel:
    """Requests to the runtime over the inherited socketpair, answered by number (several
    threads ask at once; the answers come back in any order)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list[tuple[bool, str]]]] = {}

    def start(self) -> None:
        """In the worker, after gunicorn's fork: the thread that reads the answers."""
        threading.Thread(target=self._read, name="runtime-channel", daemon=True).start()

    def ready(self) -> None:
        self._sock.send(b"ready")

    def ask(self, kind: str, timeout: float) -> bool | None:
        """True or False as the runtime answered; None without an answer in `timeout`."""
        answer = self.fetch(kind, timeout)
        return None if answer is None else answer[0]

    def fetch(self, kind: str, timeout: float, payload: str = "") -> tuple[bool, str] | None:
        """(ok, the runtime's data) as it answered; None without an answer in `timeout`."""
        number, done = next(self._numbers), threading.Event()
        answer: list[tuple[bool, str]] = []
        with self._lock:
            self._waiting[number] = (done, answer)
        try:
            self._sock.send(f"{kind} {number} {payload}".rstrip().encode())
            done.wait(timeout)
        except OSError:
            pass
        finally:
            with self._lock:
                self._waiting.pop(number, None)
        return answer[0] if answer else None

    def _read(self) -> None:
        while True:
            try:
                message = self._sock.recv(_MESSAGE)
            except OSError:
                return
            if not message:
                return
            number, _, result = message.decode("utf-8", "replace").partition(" ")
            outcome, _, data = result.partition(" ")
            with self._lock:
                waiting = self._waiting.get(int(number)) if number.isdigit() else None
            if waiting is not None:
                waiting[1].append((outcome == "ok", data))
                waiting[0].set()


class _FlushedLedger(UsageLedger):
    """The ledger's file, read after the runtime has flushed what the gateway holds."""

    def __init__(self, path: Path, channel: _Channel) -> None:
        super().__init__(path, flush_interval_s=3600)  # it records nothing: no timed flushes
        self._channel = channel

    def totals(self, **where: Any) -> list[UsageRow]:
        self._channel.ask("flush", _FLUSH_WAIT_S)
        return super().totals(**where)

    def series(self, **where: Any) -> list[tuple[datetime, UsageRow]]:
        self._channel.ask("flush", _FLUSH_WAIT_S)
        return super().series(**where)


def _serving(settings: Settings, simulator_token: SecretStr | None, channel: _Channel,
             closers: list[Callable[[], None]]) -> Any:
    """The admin app and its Context, made in gunicorn's worker."""
    from functions._context import install_context, reset_context
    from local.admin import create_admin_app
    from shared.catalog.filecatalog import FollowingCatalog
    from shared.context import build_context
    from shared.modelsfile import ModelsFile

    channel.start()
    models = ModelsFile(settings.models_file, simulator_port=settings.simulator_port, simulator_token=simulator_token)
    models.start()
    ledger = _FlushedLedger(settings.usage_ledger_path, channel)
    ctx = build_context(settings, ledger=ledger, catalog=FollowingCatalog(models))

    def teams_changed() -> None:
        if channel.ask("teams", _TEAMS_WAIT_S) is not True:
            raise BackendUnavailable("the runtime did not take the team change's follow-ups; see its log")

    def counters(keys: list[tuple[str, int]]) -> list[tuple[int, int, int]]:
        answer = channel.fetch("counters", _FLUSH_WAIT_S, json.dumps(keys))
        if answer is None or not answer[0]:
            raise BackendUnavailable("the gateway did not answer for its token counters; see its log")
        return [(int(a), int(b), int(c)) for a, b, c in json.loads(answer[1])]

    ctx.teams_changed = teams_changed
    ctx.counters = counters
    install_context(ctx)
    closers.extend([reset_context, ledger.close, models.stop])
    return create_admin_app()


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # gone before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def child_main(argv: list[str]) -> int:
    """`python -m local.adminprocess PARENT_PID LISTEN_FD CHANNEL_FD`, the settings on stdin."""
    parent, listen_fd, channel_fd = (int(arg) for arg in argv)
    _die_with_parent(parent)
    from shared import logsafety

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logsafety.safe_handler()])
    # The runtime follows the same models file and data dir, and says what it finds there (an
    # edit, a bad edit, a data dir others may enter); here they are followed quietly, so that
    # each is said once.
    for reported_by_the_runtime in ("maas.models", "maas.files"):
        logging.getLogger(reported_by_the_runtime).setLevel(logging.ERROR)
    told = json.loads(sys.stdin.read())
    settings = Settings.model_validate(told["settings"])
    token = SecretStr(told["simulator_token"]) if told["simulator_token"] is not None else None
    channel = _Channel(channel_fd)
    from local.tls import ensure_certificate

    certfile, keyfile = ensure_certificate(settings.data_dir / "tls")
    options = gunicorn_options(settings, bind=f"fd://{listen_fd}", certfile=str(certfile), keyfile=str(keyfile))
    closers: list[Callable[[], None]] = []

    def worker_exit(_arbiter: object, _worker: object) -> None:
        for close in closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                log.exception("closing the admin API's context failed")

    options["worker_exit"] = worker_exit
    AdminApplication(lambda: _serving(settings, token, channel, closers), options, Limits.from_settings(settings),
                     post_worker_init=channel.ready).run()
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
