"""The gateway's request path: authenticate, pick the backend, limit, forward, count.

Bodies are parsed once (to read `model`, `max_tokens`, `stream`) and re-encoded only when they
must change: for streams (to inject `stream_options.include_usage`) or when the backend knows
the model under another name. Usage is read from the response's `usage.total_tokens` without
decoding the response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from local.gateway.auth import Caller, KeyCache
from local.gateway.limiter import Reservation, TokenLimiter
from local.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from local.gateway.metrics import UsageMeter
from local.gateway.server import Request, Responder
from local.gateway.upstream import Pool, Response, UpstreamConnectError, UpstreamReadTimeout
from shared.errors import (
    InvalidRequest,
    MaasError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    openai_body,
)
from shared.modelsfile import ModelBackend

log = logging.getLogger("maas.gateway")

# Reserved for the completion when a request sets no max_tokens: the limiter needs some
# estimate to bound overshoot; it is settled to the real usage at completion.
DEFAULT_COMPLETION_ESTIMATE = 256
# A token is at least a few bytes of JSON, so body bytes / 4 bounds the prompt from above for
# ordinary text without tokenizing it.
_PROMPT_BYTES_PER_TOKEN = 4
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
_JSON = {"Content-Type": "application/json"}
_PATHS = {"/v1/chat/completions": b"/chat/completions", "/v1/completions": b"/completions"}
_GET_PATHS = ("/health", "/metrics", "/v1/models")


def last_total_tokens(data: bytes) -> int | None:
    """The last `"total_tokens": N` in a response (a quote inside JSON text is escaped)."""
    found = None
    for found in _TOTAL_TOKENS.finditer(data):
        pass
    return None if found is None else int(found.group(1))


class _Route:
    """A model name bound to its backend and that backend's connection pool."""

    def __init__(self, backend: ModelBackend, pool: Pool) -> None:
        self.backend = backend
        self.pool = pool
        auth = b""
        if backend.api_key is not None:
            auth = b"Authorization: Bearer " + backend.api_key.get_secret_value().encode("latin-1") + b"\r\n"
        self._prefixes = {
            path: (
                b"POST " + pool.base_path.encode() + suffix + b" HTTP/1.1\r\nHost: "
                + pool.host_header.encode() + b"\r\nContent-Type: application/json\r\nAccept: */*\r\n" + auth
            )
            for path, suffix in _PATHS.items()
        }

    def request(self, path: str, payload: bytes) -> bytes:
        return self._prefixes[path] + b"Content-Length: %d\r\n\r\n" % len(payload) + payload


class Gateway:
    def __init__(
        self,
        *,
        keys: KeyCache,
        limiter: TokenLimiter,
        meter: UsageMeter,
        backends: list[ModelBackend],
        upstream_timeout_s: float,
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._meter = meter
        self._timeout = upstream_timeout_s
        pools: dict[tuple[str, str], Pool] = {}
        self._routes: dict[str, _Route] = {}
        for backend in backends:
            pool = Pool(backend.url)
            # One pool per backend server: models served by one server share its connections.
            pool = pools.setdefault((pool.host_header, pool.base_path), pool)
            self._routes[backend.name] = _Route(backend, pool)
        self._pools = list(pools.values())
        self._created = int(time.time())

    def close(self) -> None:
        for pool in self._pools:
            pool.close()

    # -- entry points --------------------------------------------------------------------

    async def handle(self, request: Request, responder: Responder) -> None:
        try:
            if request.method == "POST" and request.path in _PATHS:
                await self._proxy(request, responder)
            elif request.method == "GET" and request.path == "/health":
                responder.send(200, _JSON, b'{"status":"ok"}')
            elif request.method == "GET" and request.path == "/metrics":
                responder.send(200, {"Content-Type": METRICS_CONTENT_TYPE}, self._meter.exposition())
            elif request.method == "GET" and request.path == "/v1/models":
                self._list_models(request, responder)
            elif request.path in _PATHS or request.path in _GET_PATHS:
                raise MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
            else:
                raise NotFound(f"no such endpoint: {request.path}")
        except MaasError as exc:
            if responder.started:
                raise ConnectionAbortedError("error after the response started") from exc
            self.reject(responder, exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("gateway error on %s %s", request.method, request.path)
            if responder.started:
                raise ConnectionAbortedError("error after the response started") from None
            self.reject(responder, MaasError("internal gateway error"))

    def reject(self, responder: Responder, error: MaasError | int, message: str = "") -> None:
        """Answer with an error in the OpenAI shape (also used by the server for 400/413)."""
        if isinstance(error, int):
            error = PayloadTooLarge(message) if error == 413 else MalformedRequest(message)
        headers = {**_JSON, **error.headers}
        responder.send(error.status, headers, json.dumps(openai_body(error)).encode())

    def _list_models(self, request: Request, responder: Responder) -> None:
        caller = self._keys.authenticate(request.header(b"authorization"))
        data = [
            {"id": name, "object": "model", "created": self._created, "owned_by": "maas"}
            for name in sorted(self._routes)
            if caller.may_use(name)
        ]
        responder.send(200, _JSON, json.dumps({"object": "list", "data": data}).encode())

    # -- model calls ---------------------------------------------------------------------

    def _parse(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            raise MalformedRequest("request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise MalformedRequest("request body must be a JSON object")
        return body

    async def _proxy(self, request: Request, responder: Responder) -> None:
        caller = self._keys.authenticate(request.header(b"authorization"))
        body = self._parse(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a string")
        route = self._routes.get(model)
        if route is None:
            raise NotFound(f"model '{model}' not found")
        caller.check_model(model)
        stream = body.get("stream") is True
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            max_tokens = DEFAULT_COMPLETION_ESTIMATE
        prompt_estimate = len(request.body) // _PROMPT_BYTES_PER_TOKEN
        reservation = self._admit(caller, model, max_tokens + prompt_estimate)

        payload = request.body
        if stream or route.backend.upstream_model is not None:
            if stream:
                options = body.get("stream_options")
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            body["model"] = route.backend.served_model
            payload = json.dumps(body, separators=(",", ":")).encode()

        progress = _Progress(prompt_estimate)
        try:
            await self._forward(route, request.path, payload, responder, reservation, stream, progress)
        finally:
            tokens = progress.tokens()
            self._limiter.settle(reservation, tokens=tokens, team=caller.team)
            self._meter.authorized(team_id=caller.team.team_id, user_id=caller.key.user_id, model=model, tokens=tokens)

    def _admit(self, caller: Caller, model: str, estimate: int) -> Reservation:
        try:
            return self._limiter.admit(team=caller.team, user_id=caller.key.user_id, estimate=estimate)
        except RateLimited:
            self._meter.limited(team_id=caller.team.team_id, user_id=caller.key.user_id, model=model)
            raise

    async def _forward(
        self,
        route: _Route,
        path: str,
        payload: bytes,
        responder: Responder,
        reservation: Reservation,
        stream: bool,
        progress: _Progress,
    ) -> None:
        model = route.backend.name
        try:
            upstream = await route.pool.request(route.request(path, payload), timeout=self._timeout)
        except UpstreamConnectError as exc:
            progress.final = 0
            raise UpstreamError(f"model '{model}' is unavailable: {exc}") from exc
        except UpstreamReadTimeout as exc:
            progress.final = 0
            raise UpstreamTimeout(f"model '{model}' did not answer within {self._timeout:g} s") from exc
        try:
            headers = {"Content-Type": (upstream.header(b"content-type") or b"application/json").decode("latin-1")}
            headers.update(reservation.headers)
            if stream and 200 <= upstream.status < 300:
                await self._relay(upstream, responder, headers, progress, model)
                return
            try:
                data = await upstream.read()
            except UpstreamReadTimeout as exc:
                raise UpstreamTimeout(f"model '{model}' did not answer within {self._timeout:g} s") from exc
            except UpstreamConnectError as exc:
                raise UpstreamError(f"model '{model}' failed while answering: {exc}") from exc
            if 200 <= upstream.status < 300:
                progress.total = last_total_tokens(data)
            else:
                progress.final = 0  # the backend refused the request: nothing generated
            responder.send(upstream.status, headers, data)
        finally:
            upstream.close()

    async def _relay(
        self,
        upstream: Response,
        responder: Responder,
        headers: Mapping[str, str],
        progress: _Progress,
        model: str,
    ) -> None:
        responder.start(upstream.status, {**headers, "Cache-Control": "no-cache"})
        tail = b""
        try:
            async for chunk in upstream.chunks():
                await responder.write(chunk)
                # The usage event may be split across reads: search with the previous tail.
                window = tail + chunk
                if b"total_tokens" in window:
                    total = last_total_tokens(window)
                    if total is not None:
                        progress.total = total
                progress.events += chunk.count(b"data:")
                tail = window[-64:]
        except UpstreamReadTimeout as exc:
            log.warning("model '%s' stalled mid-stream; cutting the response", model)
            raise ConnectionAbortedError("upstream stalled") from exc
        except UpstreamConnectError as exc:
            log.warning("model '%s' failed mid-stream: %s", model, exc)
            raise ConnectionAbortedError("upstream failed") from exc
        responder.end()


class _Progress:
    """What a call has used, settled when it ends however it ends.

    `final` is set when the answer is known without a usage report (0: the backend was not
    reached or refused). Otherwise the backend's `usage.total_tokens` counts; when a call ends
    without one (client gone, stream cut) it is charged the prompt estimate plus one token per
    streamed event seen.
    """

    __slots__ = ("prompt_estimate", "events", "total", "final")

    def __init__(self, prompt_estimate: int) -> None:
        self.prompt_estimate = prompt_estimate
        self.events = 0
        self.total: int | None = None
        self.final: int | None = None

    def tokens(self) -> int:
        if self.final is not None:
            return self.final
        return self.total if self.total is not None else self.prompt_estimate + self.events
