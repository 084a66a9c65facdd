"""A minimal HTTP/1.1 client for model backends: one keep-alive connection pool per backend.

Built on asyncio protocols and httptools (the parser uvicorn uses) because a general client
costs more per request than everything else the gateway does; see bench/ for the numbers.
Only what a proxy needs: POST/GET with a body, Content-Length or chunked responses, streaming
chunk by chunk, a read timeout per wait, abort on cancel.

Two ways to drive a call: `Pool.request` (awaitable, futures per wait) and, for a connection
already open, `Pool.take_idle` + `_Connection.begin(sink, ...)`, where the parser's callbacks go
straight to a `Sink` with no future or task in between (the gateway's hot path).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from local.gateway.writes import WriteBatch


class UpstreamConnectError(Exception):
    """The backend could not be reached (refused, reset before answering, DNS...)."""


class UpstreamReadTimeout(Exception):
    """The backend did not answer (or send the next chunk) in time."""


class Sink(Protocol):
    """Receives one response's events; must not raise (it runs inside the parser)."""

    def on_headers(self) -> None: ...

    def on_body(self, body: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_error(self, exc: Exception) -> None: ...

    relaying: bool  # whether it wants on_read_end

    def on_read_end(self) -> None:
        """After the callbacks of one read (a place to flush what they buffered)."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.loop = asyncio.get_running_loop()
        self.sink: Sink | None = None
        self.last_read = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: httptools.HttpResponseParser | None = None
        # Set when a response completes within a read; cleared at the next read.
        self._answered_in_read = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_ready: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.status = 0
        self.keep_alive = False
        self.got_bytes = False

    # -- protocol callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.sink is not None:
            self.last_read = self.loop.time()
        if self._parser is None or self.complete:
            # Nothing was asked (no request yet, or the last answer is complete and no new
            # request is out): bytes now would be taken for the next request's answer.
            self._fail(UpstreamConnectError("unsolicited data from the backend"))
            return
        sink = self.sink
        self._answered_in_read = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectError(f"malformed or unsolicited response from the backend: {exc}"))
        finally:
            if sink is not None and sink.relaying:
                sink.on_read_end()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(UpstreamConnectError("the backend closed the connection"))

    def on_message_begin(self) -> None:
        if self._answered_in_read:
            # A second response in the read that completed the first: nobody asked for it
            # (requests are never pipelined to a backend). Stop parsing; drop the connection.
            raise UpstreamConnectError("unsolicited response from the backend")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        if self.sink is not None:
            self.sink.on_headers()
        elif self._headers_ready is not None and not self._headers_ready.done():
            self._headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(body)
            return
        self._chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self.complete = True
        self._answered_in_read = True
        self.keep_alive = self._parser.should_keep_alive()
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.on_complete()
            return
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        sink, self.sink = self.sink, None
        for future in (self._headers_ready, self._waiter):
            if future is not None and not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        if sink is not None:
            sink.on_error(exc)

    def detach(self) -> None:
        """Stop reporting to the sink (its call is over: timed out or cancelled)."""
        self.sink = None

    # -- used by Pool / Response ---------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._chunks.clear()
        self.complete = False
        self.got_bytes = False
        self._headers_ready = self.loop.create_future()
        self._pool.writes.write(self.transport, request)
        return self._headers_ready

    def begin(self, sink: Sink, request: bytes) -> None:
        """Send a whole request on this open, idle connection; events go to `sink`."""
        assert self.transport is not None
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        # An idle connection's last response completed, so its parser is at a message start.
        self._headers = []
        self.complete = False
        self.got_bytes = False
        self.sink = sink
        self.last_read = self.loop.time()
        self._pool.writes.write(self.transport, request)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self._headers:
            if key.lower() == name:
                return value
        return None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next body piece, or None at the end of the body."""
        while not self._chunks:
            if self.complete:
                return None
            if self.closed:
                raise UpstreamConnectError("the backend closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await _within(self._waiter, timeout)
            finally:
                self._waiter = None
        return self._chunks.popleft()

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers


class Response:
    def __init__(self, pool: Pool, conn: _Connection, timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self.status = conn.status
        self.headers = conn.headers
        self._done = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._conn.next_chunk(self._timeout)
            if chunk is None:
                return
            yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def discard(self) -> None:
        """Abort the connection whatever was read: the backend cannot be trusted on it."""
        self._conn.keep_alive = False
        self.close()

    def close(self) -> None:
        """Give the connection back when the body was read whole; abort the call otherwise."""
        if self._done:
            return
        self._done = True
        self._pool.release(self._conn)


class Pool:
    """Keep-alive connections to one backend (scheme, host, port)."""

    def __init__(
        self, base_url: str, *, writes: WriteBatch | None = None, connect_timeout: float = 5.0, max_idle: int = 256
    ) -> None:
        self.writes = writes if writes is not None else WriteBatch()
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        # Closed when the models file no longer names this server: calls still on it finish,
        # and their connections are not kept.
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                ),
                self._connect_timeout,
            )
        except asyncio.TimeoutError as exc:
            raise UpstreamConnectError(f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return conn

    def take_idle(self) -> _Connection | None:
        """An open keep-alive connection, if one is idle (no connecting on this path)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def request(self, request: bytes, *, timeout: float) -> Response:
        """Send a whole request; return once the response headers are in."""
        for _ in range(2):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            if conn.closed:
                continue
            headers_ready = conn.send(request)
            try:
                await _within(headers_ready, timeout)
            except UpstreamReadTimeout:
                conn._fail(UpstreamReadTimeout())
                raise
            except UpstreamConnectError:
                # A kept-alive connection the backend closed meanwhile: try once on a new one.
                if reused and not conn.got_bytes:
                    continue
                raise
            except BaseException:
                conn._fail(UpstreamConnectError("request cancelled"))
                raise
            return Response(self, conn, timeout)
        raise UpstreamConnectError(f"cannot reach {self.host}:{self.port}")

    def release(self, conn: _Connection) -> None:
        if conn.complete and conn.keep_alive and not conn.closed and not self._closed and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        elif not conn.closed:
            conn.closed = True
            assert conn.transport is not None
            conn.transport.abort()  # cancels the backend's work on an unfinished response

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            if conn.transport is not None:
                conn.transport.close()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(UpstreamReadTimeout())


async def _within(future: asyncio.Future[None], timeout: float) -> None:
    """Await a future, failing it with UpstreamReadTimeout after `timeout` seconds.

    A timer on the future itself, because asyncio.wait_for costs a task per call, which on
    this path is more than the rest of the request.
    """
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    finally:
        timer.cancel()
