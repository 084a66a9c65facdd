"""A small HTTP/1.1 server on asyncio protocols and httptools, for the gateway's request path.

Keep-alive, pipelined requests answered in order, Content-Length and chunked request bodies,
responses whole or streamed (chunked), backpressure on slow clients, and a request body cap
(413). A client that disconnects cancels its request's task, so handlers release what they hold
in `finally`. No TLS: the gateway listens on 127.0.0.1 behind whatever terminates TLS.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from typing import cast

import httptools

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]  # names lower-cased
    body: bytes

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


def _head(status: int, headers: Mapping[str, str], extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(extra)
    return b"".join(lines)


class Responder:
    """How a handler answers: `send` a whole response, or `start`, `write`..., `end` a stream."""

    __slots__ = ("_protocol", "keep_alive", "started", "finished")

    def __init__(self, protocol: _HttpProtocol, keep_alive: bool) -> None:
        self._protocol = protocol
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False

    def _connection_header(self) -> bytes:
        return b"\r\n" if self.keep_alive else b"Connection: close\r\n\r\n"

    def send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.started = self.finished = True
        head = _head(status, headers, b"Content-Length: %d\r\n" % len(body) + self._connection_header())
        self._protocol.write(head + body)

    def start(self, status: int, headers: Mapping[str, str]) -> None:
        self.started = True
        self._protocol.write(_head(status, headers, b"Transfer-Encoding: chunked\r\n" + self._connection_header()))

    async def write(self, chunk: bytes) -> None:
        if chunk:
            self._protocol.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await self._protocol.drain()

    def end(self) -> None:
        self.finished = True
        self._protocol.write(b"0\r\n\r\n")


Handler = Callable[[Request, Responder], Awaitable[None]]
Reject = Callable[[Responder, int, str], None]


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, reject: Reject, max_body: int) -> None:
        self._handler = handler
        self._reject = reject
        self._max_body = max_body
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._queue: deque[tuple[Request | None, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._can_write: asyncio.Future[None] | None = None

    # -- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_exception(ConnectionResetError("client disconnected"))

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    def write(self, data: bytes) -> None:
        if not self._closed and self._transport is not None:
            self._transport.write(data)

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("client disconnected")
        if self._can_write is not None and not self._can_write.done():
            await self._can_write

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._queue.append((None, False))
            self._next()
        except httptools.HttpParserError:
            self._queue.append((None, False))
            self._next()

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._too_large = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large = True
            self._body = []
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        if self._too_large:
            self._queue.append((None, True))
        else:
            path = self._url.split(b"?", 1)[0].decode("latin-1")
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            method = self._parser.get_method().decode("latin-1")
            self._queue.append((Request(method, path, self._headers, body), keep_alive))
        self._next()

    # -- running handlers, one at a time per connection ---------------------------------

    def _next(self) -> None:
        if self._task is None and self._queue and not self._closed:
            request, keep_alive = self._queue.popleft()
            self._task = asyncio.get_running_loop().create_task(self._run(request, keep_alive))

    async def _run(self, request: Request | None, keep_alive: bool) -> None:
        responder = Responder(self, keep_alive and request is not None)
        try:
            if request is None:
                # keep_alive here marks "too large" (413) versus unparsable (400).
                self._reject(responder, 413 if keep_alive else 400, "request body too large" if keep_alive else "malformed HTTP request")
            else:
                await self._handler(request, responder)
        except asyncio.CancelledError:
            return  # the client went away; the handler cleaned up in its finally blocks
        except ConnectionError:
            responder.keep_alive = False
        finally:
            self._task = None
        if not responder.finished or not responder.keep_alive:
            if self._transport is not None:
                self._transport.close()
            self._closed = True
            return
        self._next()


async def serve(
    handler: Handler, reject: Reject, *, host: str, port: int, max_body: int
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _HttpProtocol(handler, reject, max_body), host, port, backlog=1024, reuse_address=True
    )
