"""`make run`: every function, the gateway and the model simulator on one machine."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from functions._context import install_context, reset_context
from local.adminprocess import AdminProcess
from local.adminkey import ensure_admin_key
from local.events import EventsService
from local.gateway.limits import DataDirInUse, DataDirLock
from local.gateway.service import GatewayService
from local.simulator import SimulatorService
from shared import logsafety
from shared.catalog.filecatalog import FollowingCatalog
from shared.context import build_context
from shared.ledger import UsageLedger
from shared.modelsfile import ModelsFile
from shared.settings import Settings
from shared.version import VERSION


class Service(Protocol):
    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class CannotStart(Exception):
    """A service could not start for a reason the user can fix (e.g. a port in use)."""


def _say(line: str) -> None:
    print(line, flush=True)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _open_models_file(settings: Settings, simulator_token: SecretStr | None = None) -> ModelsFile:
    try:
        return ModelsFile(settings.models_file, simulator_port=settings.simulator_port, simulator_token=simulator_token)
    except ValueError as exc:
        raise CannotStart(
            f"{exc}. Fix it (config/models.local.yaml describes every field) or point MAAS_MODELS_FILE "
            "at another file (unset: the built-in simulator)."
        ) from None


def _check_data_dir_free(settings: Settings) -> None:
    probe = DataDirLock(settings.data_dir, shared=settings.redis_url is not None)
    try:
        probe.acquire()
    except DataDirInUse as exc:
        raise CannotStart(str(exc)) from None
    probe.release()


def serve(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logsafety.safe_handler()])
    settings, key_file, generated = ensure_admin_key(settings)
    stop = threading.Event()
    # Run by a second Ctrl-C (or SIGTERM) while stopping: the gateway's drain is cut short.
    hurry: list[Callable[[], None]] = []

    def on_signal(*_: object) -> None:
        if stop.is_set():
            for each in hurry:
                each()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    services: list[tuple[str, Service]] = []

    def launch(label: str, service: Service) -> None:
        try:
            service.start()
        except DataDirInUse as exc:
            raise CannotStart(str(exc)) from None
        except OSError as exc:
            raise CannotStart(
                f"the {label} cannot listen: {exc.strerror or exc}. Is another `make run` running? "
                "Choose other ports with MAAS_ADMIN_PORT, MAAS_GATEWAY_PORT, MAAS_METRICS_PORT, "
                "MAAS_SIMULATOR_PORT."
            ) from None
        services.append((label, service))

    # The gateway's ledger; the usage endpoints (in the admin API's process) have it flushed
    # before they read, so usage includes every count recorded before it was asked for.
    ledger = UsageLedger(settings.usage_ledger_path)
    ctx = None
    models: ModelsFile | None = None
    admin: AdminProcess | None = None
    try:
        # A bad models file is the first thing to say, before anything tries to listen: a busy
        # port would otherwise hide it.
        _open_models_file(settings)  # read once and dropped (no watcher started)
        # So is a data dir another runtime holds (the gateway takes the lock for good when it
        # starts): the second `make run` would otherwise first be told of a busy port.
        _check_data_dir_free(settings)
        simulator = SimulatorService(settings)
        launch("simulator", simulator)
        # The default models file points at the simulator: use the port it actually bound.
        settings = settings.model_copy(update={"simulator_port": int(simulator.url.rsplit(":", 1)[1])})
        # The simulator answers only requests with its token, which the models file's
        # simulator entries send: the token stays in this process (and the admin API's, on a pipe).
        models = _open_models_file(settings, simulator.token)
        # The admin API's model listing follows the same file as the gateway: one reading.
        ctx = build_context(settings, ledger=ledger, catalog=FollowingCatalog(models))
        install_context(ctx)
        gateway = GatewayService(settings, ctx.store, ledger=ledger, models=models,
                                 progress=lambda line: _say(f"  gateway: {line}"))
        launch("gateway", gateway)
        hurry.append(gateway.hurry)
        models.start()
        # `kill -HUP` re-reads the file now rather than within the second.
        signal.signal(signal.SIGHUP, lambda *_: models.poke())
        # Knative Eventing's part: the cleanup function fed on team deletes and on a timer.
        launch("cleanup", EventsService(ctx, interval_s=settings.cleanup_interval_s))
        # In a process of its own, on the server the image runs (local/adminprocess.py); if it
        # stops on its own, so does everything.
        admin = AdminProcess(settings, ctx=ctx, ledger=ledger, on_exit=stop.set, simulator_token=simulator.token,
                             counters=gateway.peek_counters)
        launch("admin API", admin)
        _say(f"MaaS key manager {VERSION}: {settings.store} store in {settings.data_dir}/")
        for label, service in reversed(services):
            _say(f"  {label:<11} {service.url}")
            if service is gateway:
                _say(f"  {'metrics':<11} {gateway.metrics_url}  (GET /metrics, for Prometheus; apart from the model port)")
        count = len(models.table.backends)
        _say(f"  {'models':<11} {_shown(models.path)} ({count} model{'' if count == 1 else 's'}; "
             "edits are picked up within a second, no restart)")
        if generated and settings.admin_key is not None and sys.stdout.isatty():
            _say(f"  admin key   {settings.admin_key.get_secret_value()}  (generated; shown once, kept 0600 in {key_file})")
        elif generated:
            # Output that is not a terminal is a log file or a pipe: the key must not end up there.
            _say(f"  admin key   generated into {key_file} (0600; not shown, this output is not a terminal)")
        elif key_file is not None:
            _say(f"  admin key   in {key_file}   (export ADMIN_KEY=$(cat {key_file}))")
        else:
            _say("  admin key   from ADMIN_KEY")
        _say("Press Ctrl-C to stop.")
        stop.wait()
        _say("stopping ... (Ctrl-C again: cut off the model calls in flight at once)")
    except CannotStart as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if models is not None:
            models.stop()
        for _, service in reversed(services):
            service.stop()
        if ctx is not None:
            reset_context()
        ledger.close()
    _say("stopped.")
    return 1 if admin is not None and admin.failed else 0


def main(argv: list[str] | None = None) -> int:
    del argv
    return serve(Settings())


if __name__ == "__main__":
    sys.exit(main())
