"""GatewayService: the local gateway on settings.host:settings.gateway_port, run from sync code.

Its `/metrics` (every team's and user's counts, as Limitador's) is served on a listener of its
own, settings.host:settings.metrics_port, and not on the model port: any key holder reaches the
model port, while the metrics port is for Prometheus (keep it on loopback or behind a network
policy). Both listeners run on the gateway's loop, so the counts are read where they are kept.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

from local.gateway.auth import KeyCache
from local.gateway.accesslog import AccessLog
from local.gateway.contexts import ContextKey, ContextLearner
from local.gateway.limiter import RedisLimiter, TokenLimiter
from local.gateway.limits import LimiterService
from local.gateway.loopthread import LoopThread
from local.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from local.gateway.metrics import UsageMeter
from local.gateway.proxy import Gateway
from local.gateway.server import Listener, Reject, Request, Responder, serve
from shared.errors import MaasError, MethodNotAllowed, NotFound
from shared.ledger import UsageLedger
from shared.modelsfile import ModelsFile, ModelsTable
from shared.settings import Settings
from shared.store import Store, open_store

log = logging.getLogger("maas.gateway")

# Prometheus and a person with curl: a few connections are plenty, and bound what the port holds.
METRICS_MAX_CONNECTIONS = 32
_METRICS_PATHS = (b"/metrics", b"/health")


class MetricsEndpoint:
    """The metrics listener's requests: GET /metrics (the exposition), GET /health; any other
    path 404, any other method 405, in the OpenAI shape like the model port's errors."""

    def __init__(self, meter: UsageMeter, reject: Reject) -> None:
        self._meter = meter
        self._reject = reject

    def handle(self, request: Request, responder: Responder) -> None:
        path, method = request.path, request.method
        try:
            if path not in _METRICS_PATHS:
                raise NotFound(f"no such endpoint: {path.decode('latin-1')} (this port serves /metrics)")
            if method != b"GET":
                raise MethodNotAllowed(f"method {method.decode('latin-1')} is not allowed on {path.decode('latin-1')}")
            if path == b"/metrics":
                responder.send(200, {"Content-Type": METRICS_CONTENT_TYPE}, self._meter.exposition())
            else:
                responder.send(200, {"Content-Type": "application/json"}, b'{"status":"ok"}')
        except MaasError as exc:
            self._reject(responder, exc, "")


class GatewayService:
    """start() returns once listening; stop() drains the calls in flight, then flushes the ledger.

    A stop refuses new connections and answers new requests 503 at once, and gives the calls in
    flight `settings.gateway_drain_timeout_s` (MAAS_GATEWAY_DRAIN_TIMEOUT) to finish; those still
    running then are cut off as a client's disconnect cuts them, charged what they relayed. Every
    call is settled before the token counters are saved and the ledger flushed. `progress` is
    told (in a line) how many calls it waits for; `hurry()` ends the wait at once.

    Without a `store`, the service opens (and closes) the one the settings name; likewise the
    usage ledger (settings.data_dir / "usage.db"). Pass the `ledger` that the usage endpoints
    read when both run in one process, so they see counts before they are flushed.

    The model table follows `models` (the models file the settings name, watched by the
    service itself when none is given): an edit is served from the next request on. The
    context of each model that declares no `max_context` is learned from its backend's
    `GET /v1/models` on a thread of its own, at start, on every edit and every few minutes
    (contexts.py): never on a request.
    """

    def __init__(self, settings: Settings, store: Store | None = None, *, ledger: UsageLedger | None = None,
                 models: ModelsFile | None = None, progress: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._progress = progress if progress is not None else log.info
        self._own_models = models is None
        # Raises ValueError (one line naming the file) for a bad models file.
        self.models = models if models is not None else ModelsFile(settings.models_file,
                                                                    simulator_port=settings.simulator_port)
        self._table = self.models.table
        self._unsubscribe: Callable[[], None] | None = None
        self._own_store = store is None
        self._store = store if store is not None else open_store(settings)
        self._own_ledger = ledger is None
        self.ledger = ledger if ledger is not None else UsageLedger(settings.usage_ledger_path)
        self.limits = LimiterService(settings)
        self.limiter = self.limits.limiter
        # Kept here too: the metrics listener shows what the gateway counts.
        self.meter = UsageMeter(self.ledger)
        self._keys = KeyCache(self._store)
        self._gateway = Gateway(
            keys=self._keys,
            limiter=self.limiter,
            meter=self.meter,
            backends=self._table.backends,
            upstream_timeout_s=settings.upstream_timeout_s,
            models_created=self._table.created,
            access=AccessLog(enabled=settings.access_log),
        )
        self._contexts = ContextLearner(self._learned)
        self._last_use_task: asyncio.Task[None] | None = None
        self._thread = LoopThread("maas-gateway")
        self._server: Listener | None = None
        self._metrics_server: Listener | None = None
        self._port: int | None = None
        self._metrics_port: int | None = None

    def peek_counters(self, counters: Sequence[tuple[str, int]], timeout: float = 2.0) -> list[tuple[int, int, int]]:
        """(spent, reserved, ms until the window ends) of each counter (its name and window
        length in seconds), read on the gateway's loop, where the counters change (the admin
        API's explain: shared/explain.py)."""
        limiter = self.limiter

        async def peek() -> list[tuple[int, int, int]]:
            if isinstance(limiter, TokenLimiter):
                return [limiter.counters.peek(key, window_s) for key, window_s in counters]
            assert isinstance(limiter, RedisLimiter)
            return list(await asyncio.gather(*(limiter.counters.peek(key, window_s) for key, window_s in counters)))

        return self._thread.call(peek, timeout=timeout)

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the gateway is not running")
        return f"http://{self._settings.host}:{self._port}"

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes: `{metrics_url}/metrics`."""
        if self._metrics_port is None:
            raise RuntimeError("the gateway is not running")
        return f"http://{self._settings.host}:{self._metrics_port}"

    def start(self) -> None:
        """Raises DataDirInUse when another runtime's counters hold the data dir."""
        self.limits.acquire()
        self._thread.start()
        try:
            self._port = self._thread.call(self._listen)
        except BaseException:
            self._thread.stop()
            self.limits.release()
            raise
        self._unsubscribe = self.models.subscribe(self._use)
        self._contexts.use(self._table.backends)
        self._contexts.start()
        if self.models.table is not self._table:
            self._use(self.models.table)  # changed since this service was made
        if self._own_models:
            self.models.start()

    def _use(self, table: ModelsTable) -> None:
        """A new models table (on the watcher's thread): swapped in on the gateway's loop, and
        its backends asked for their contexts (on the learner's thread)."""
        self._table = table
        try:
            loop = self._thread.loop
        except RuntimeError:
            return  # stopping
        loop.call_soon_threadsafe(lambda: self._gateway.use(table.backends, created=table.created))
        self._contexts.use(table.backends)

    def _learned(self, contexts: dict[ContextKey, int]) -> None:
        """What the backends said (on the learner's thread): in force on the gateway's loop
        before this returns, after the table it was learned for."""
        done = threading.Event()

        def take() -> None:
            try:
                self._gateway.learned(contexts)
            finally:
                done.set()

        try:
            self._thread.loop.call_soon_threadsafe(take)
        except RuntimeError:
            return  # stopped
        while not done.wait(1):
            if self._contexts.stopping:
                return

    def wait_for_contexts(self, timeout_s: float = 5.0) -> bool:
        """Whether the backends of the table served now were asked for their context (whatever
        they said is in force) within `timeout_s`: what a test waits for before its calls."""
        return self._contexts.wait(timeout_s)

    def contexts(self) -> dict[str, int | None]:
        """Each model's context as the gateway reserves it: declared or learned; None where
        4,096 is assumed (shared/modelsfile.py, DEFAULT_MAX_CONTEXT)."""
        return self._thread.call(self._contexts_now, timeout=5)

    async def _contexts_now(self) -> dict[str, int | None]:
        return self._gateway.contexts()

    async def _listen(self) -> int:
        await self.limits.start()
        self._gateway.access.start()
        self._server = await serve(
            self._gateway.handle,
            self._gateway.reject,
            host=self._settings.host,
            port=self._settings.gateway_port,
            max_body=self._settings.gateway_max_body_bytes,
            client_timeout=self._settings.gateway_client_timeout_s,
            writes=self._gateway.writes,
            check_head=self._gateway.check_head,
            max_connections=self._settings.gateway_max_connections,
        )
        try:
            self._metrics_server = await serve(
                MetricsEndpoint(self.meter, self._gateway.reject).handle,
                self._gateway.reject,
                host=self._settings.host,
                port=self._settings.metrics_port,
                max_body=1024,  # GETs only
                client_timeout=self._settings.gateway_client_timeout_s,
                max_connections=METRICS_MAX_CONNECTIONS,
            )
        except BaseException as exc:
            self._server.close()
            self._server = None
            if isinstance(exc, OSError):  # say which of the two ports it is
                raise OSError(exc.errno, f"{exc.strerror or exc} (metrics port {self._settings.metrics_port}, "
                              "MAAS_METRICS_PORT)") from exc
            raise
        self._metrics_port = int(self._metrics_server.sockets[0].getsockname()[1])
        self._last_use_task = asyncio.get_running_loop().create_task(self._record_last_use())
        return int(self._server.sockets[0].getsockname()[1])

    async def _record_last_use(self) -> None:
        """Keys' last_used_at, written in batches off the request path."""
        while True:
            await asyncio.sleep(self._settings.last_used_interval_s)
            await self._flush_last_use()

    async def _flush_last_use(self) -> None:
        used = self._keys.take_last_used()  # on the loop thread: no race with the requests
        if not used:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: self._store.touch_keys(last_used=used))
        except MaasError as exc:
            log.warning("could not record when %d key(s) were last used: %s", len(used), exc.message)

    async def _shutdown(self) -> None:
        try:
            await self._drain()
        finally:  # (whatever happened there, the counters are saved and the data dir let go)
            if self._last_use_task is not None:
                self._last_use_task.cancel()
                self._last_use_task = None
                await self._flush_last_use()
            self._gateway.close()
            await self.limits.stop()  # after the drain: every call in flight is settled
            await self._gateway.access.stop()

    async def _drain(self) -> None:
        """Stop taking requests, let the calls in flight finish within the grace period, cut
        off the rest; returns once every connection is gone and every call settled."""
        model, metrics = self._server, self._metrics_server
        servers = [server for server in (model, metrics) if server is not None]
        for server in servers:
            server.drain()
        grace = self._settings.gateway_drain_timeout_s
        calls = 0 if model is None else model.in_flight
        if calls and grace:
            self._progress(f"waiting up to {grace:g} s for {_calls(calls)} in flight")
        loop = asyncio.get_running_loop()
        began = loop.time()
        cut = await asyncio.gather(*(server.shutdown(grace) for server in servers))
        if cut and cut[0]:
            self._progress(f"cut off {_calls(cut[0])} still in flight after {loop.time() - began:.1f} s "
                           "(charged what was relayed)")
        self._server = self._metrics_server = None

    def hurry(self) -> None:
        """End a stop's grace period now (from any thread): the calls in flight are cut off."""
        try:
            loop = self._thread.loop
        except RuntimeError:
            return
        loop.call_soon_threadsafe(self._hurry)

    def _hurry(self) -> None:
        for server in (self._server, self._metrics_server):
            if server is not None:
                server.hurry()

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._own_models:
            self.models.stop()
        self._contexts.stop()
        try:
            self._thread.stop(self._shutdown, timeout=self._settings.gateway_drain_timeout_s + 30)
        finally:
            self._port = self._metrics_port = None
            if self._own_ledger:
                self.ledger.close()
            else:
                self.ledger.flush()
            if self._own_store:
                self._store.close()


def _calls(count: int) -> str:
    return f"{count} call{'' if count == 1 else 's'}"
