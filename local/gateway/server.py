"""A small HTTP/1.1 server on asyncio protocols and httptools, for the gateway's request path.

Keep-alive, pipelined requests answered in order, Content-Length and chunked request bodies,
responses whole or streamed (chunked), backpressure on slow clients, and a request body cap
(413). No TLS: the gateway listens on 127.0.0.1 behind whatever terminates TLS.

A handler is called synchronously and either answers at once, answers later from protocol
callbacks (it then sets `Responder.on_cancel`, `on_pause`, `on_resume`), or returns a
coroutine that runs as a task. Most requests take one of the first two ways: a task and its
futures per request cost more than the rest of the gateway's work (see bench/). A client that
disconnects cancels its request (the task, or `on_cancel`), so handlers release what they hold.
Writes go out at the end of the event-loop round (writes.py).

Hostile or broken clients are bounded: a request head is at most MAX_HEAD_BYTES (at most
MAX_HEADERS headers), a body over the cap gets 413 as soon as that is known (not after reading
it), at most MAX_QUEUED pipelined requests wait (reading pauses beyond), no request starts while
the client is not reading the answers, and a client silent for `client_timeout` seconds while
it owes the rest of a request (408) or holds an idle connection is let go. A refused request
ends the connection with a lingering close (answer, half-close, discard what still comes, for
a while) so that the client reads the answer instead of a reset.

Before a body is read, `check_head` (when given) sees the method, path and headers: the
gateway refuses a model call without a valid key there (401), through the same lingering close,
so a client without a key cannot make it read megabytes. What it returns travels in
`Request.caller`. One call per request, only for heads that passed the other checks.

At most `max_connections` clients are connected at once. Beyond that the server stops
accepting (the listening sockets leave the event loop) and the connections that arrive wait in
the kernel's listen queue (LISTEN_BACKLOG), to be accepted in order as soon as one closes; the
kernel has completed their handshake, so their requests just wait, and past the queue's length
it slows new connects down (SYN retries) rather than refusing them. Accepting and closing at
once (or with a 503) was the other choice: it keeps no one waiting, but turns a burst into
errors that every client must retry, and holds a descriptor per refused client meanwhile. The
clients already connected are served as before, whatever waits behind them.

A stop drains (`Listener.shutdown(grace)`): the listening sockets close (a new connection is
refused), idle kept-alive connections are closed, a request that arrives on a connection
meanwhile (or waited behind one in its pipeline) is answered 503 with `Connection: close`, and
every response in progress goes on, its connection closed once it ends. After `grace` seconds
the connections still open are aborted, which cancels their requests as a client's disconnect
does (the task, or `on_cancel`), and `shutdown` returns once they are all gone: the handlers
have released what they held, and the loop has no connection left when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, cast

import httptools

from local.gateway.writes import WriteBatch
from shared.errors import BackendUnavailable, MaasError

log = logging.getLogger("maas.gateway")

# Generous for any real client (browsers send a few KiB); bounds what a client can make us hold.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
# Pipelined requests waiting behind the one being answered before reading pauses.
MAX_QUEUED = 16
# Connections waiting in the kernel while the server is at its connection cap.
LISTEN_BACKLOG = 1024
# How long accepting pauses when the process is out of file descriptors (EMFILE): a listening
# socket stays readable, and retrying at once would spin.
_ACCEPT_RETRY_S = 0.5
# How often a stop checks whether its connections have closed (it is no hot path).
_DRAIN_POLL_S = 0.02
# After the grace period: how long the aborted connections' handlers get to finish (they only
# release what they hold, within a loop round or two).
_ABORT_WAIT_S = 5.0

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}


@dataclass(slots=True)
class Request:
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]  # names lower-cased
    body: bytes
    # Set by the handler's head check (the gateway's authenticated caller), read by the handler.
    caller: Any = None
    # The served model the body names, once the handler knows it (for the access line).
    model: str = ""

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _head(status: int, headers: Mapping[str, str], extra: bytes) -> bytes:
    lines = [status_line(status)]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(extra)
    return b"".join(lines)


def _nothing() -> None:
    pass


def _ignore(_: object) -> None:
    pass


def _given(protocol: _HttpProtocol) -> _HttpProtocol:
    """A protocol factory that hands over one made in advance (bound with partial, not a
    closure over a loop variable)."""
    return protocol


class Responder:
    """How a handler answers: `send` a whole response, or `start`, `write`..., `end` a stream.

    `send_head` / `write_now` are the callback-driven variants: no await, the handler pauses
    its source from `on_pause` until `on_resume` instead of draining.
    """

    __slots__ = ("_protocol", "finished", "keep_alive", "on_cancel", "on_pause", "on_resume", "started")

    def __init__(self, protocol: _HttpProtocol, keep_alive: bool) -> None:
        self._protocol = protocol
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.on_cancel: Callable[[], None] = _nothing
        self.on_pause: Callable[[], None] = _nothing
        self.on_resume: Callable[[], None] = _nothing

    @property
    def paused(self) -> bool:
        """Whether the client is not keeping up (`on_pause` was, or would have been, called)."""
        return self._protocol.paused

    def _connection_header(self) -> bytes:
        return b"\r\n" if self.keep_alive else b"Connection: close\r\n\r\n"

    def send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        head = _head(status, headers, b"Content-Length: %d\r\n" % len(body) + self._connection_header())
        self.send_raw(head + body)

    def send_raw(self, response: bytes) -> None:
        """A whole response, already encoded; its head ends with `close_head()`."""
        self.started = self.finished = True
        self._protocol.write(response)
        self._protocol.finished(self)

    def close_head(self) -> bytes:
        """The end of a head: the Connection header when closing, then the blank line."""
        return self._connection_header()

    def start(self, status: int, headers: Mapping[str, str]) -> None:
        self.started = True
        self._protocol.write(_head(status, headers, b"Transfer-Encoding: chunked\r\n" + self._connection_header()))

    def start_raw(self, head: bytes) -> None:
        """`start` with the head already encoded (chunked, ending with `close_head()`)."""
        self.started = True
        self._protocol.write(head)

    async def write(self, chunk: bytes) -> None:
        if chunk:
            self._protocol.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await self._protocol.drain()

    def write_now(self, chunk: bytes) -> None:
        if chunk:
            self._protocol.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))

    def cork(self) -> None:
        """Hold writes until `uncork`, then send them in one system call (a stream's events
        arrive several to a read, and a write each would cost more than the relaying)."""
        self._protocol.cork()

    def uncork(self) -> None:
        self._protocol.uncork()

    def end(self) -> None:
        self.finished = True
        self._protocol.write(b"0\r\n\r\n")
        self._protocol.finished(self)

    def abort(self) -> None:
        """Cut the connection: the response cannot be completed (or was never started)."""
        self._protocol.abort(self)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Finish this response in a coroutine after all (as if the handler had returned it)."""
        self._protocol.spawn(work, self)


Handler = Callable[[Request, Responder], Coroutine[Any, Any, None] | None]
# Answers a refusal: a status the server chose (400, 408, 413) with its message, or the
# MaasError that `check_head` raised.
Reject = Callable[[Responder, MaasError | int, str], None]
# (method, path, headers) -> what the handler finds in `Request.caller`; raises MaasError to refuse.
HeadCheck = Callable[[bytes, bytes, dict[bytes, bytes]], Any]


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that was refused."""


class _Clients:
    """The open client connections, and one periodic sweep for their timeouts (no timer each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self._tick = min(timeout / 4, 1.0)
        self._open: set[_HttpProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None
        # The listener's: accepted connections becoming clients, and leaving (room for one more).
        self.on_join: Callable[[_HttpProtocol], None] = _ignore
        self.on_leave: Callable[[], None] = _nothing
        # The handlers' tasks still running (a stop waits for them to end).
        self.tasks: set[asyncio.Task[None]] = set()
        # Set by a stop: no new request is served (see `_HttpProtocol.wind_down`).
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    @property
    def in_flight(self) -> int:
        """Connections with a request in progress (being answered, queued, or still arriving)."""
        return sum(1 for protocol in self._open if protocol.in_flight)

    def drain(self) -> None:
        self.draining = True
        for protocol in list(self._open):
            protocol.wind_down()

    def abort(self) -> None:
        for protocol in list(self._open):
            protocol.kill()

    def add(self, protocol: _HttpProtocol) -> None:
        self._open.add(protocol)
        self.on_join(protocol)
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._sweep)

    def discard(self, protocol: _HttpProtocol) -> None:
        if protocol in self._open:
            self._open.discard(protocol)
            self.on_leave()

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        for protocol in list(self._open):
            protocol.check_quiet(now, self.timeout)
        if self._open:
            self._timer = self._loop.call_later(self._tick, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, reject: Reject, max_body: int, writes: WriteBatch, clients: _Clients,
                 head_check: HeadCheck | None = None) -> None:
        self._handler = handler
        self._writes = writes
        self._reject = reject
        self._head_check = head_check
        self._max_body = max_body
        self._clients = clients
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._path = b""
        self._caller: Any = None
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        # Client-side state: in a request's head / anywhere in a request; bytes of a head
        # that spans reads; whether the client sent anything since the last sweep.
        self._in_head = False
        self._partial = False
        self._head_size = 0
        self._active = True
        self._quiet_since = 0.0
        self._eof = False
        self._reading_paused = False
        # Set once a request is refused: what to answer, and that the rest is discarded.
        self._refusal: tuple[MaasError | int, str] | None = None
        self._queue: deque[tuple[Request | None, bool]] = deque()
        self._current: Responder | None = None
        self._task: asyncio.Task[None] | None = None
        self._work: Coroutine[Any, Any, None] | None = None  # until its task starts it
        self._dispatching = False
        self._closed = False
        self._paused = False
        self._corked: list[bytes] | None = None
        self._can_write: asyncio.Future[None] | None = None
        self._killed = False

    # -- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._quiet_since = self._loop.time()
        self._clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._clients.discard(self)
        self._closed = True
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        work, self._work = self._work, None
        if work is not None:
            work.close()  # its task never started: close it rather than leave it unawaited
        current, self._current = self._current, None
        if current is not None and not current.finished:
            on_cancel = current.on_cancel
            current.on_cancel = current.on_pause = current.on_resume = _nothing
            on_cancel()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_exception(ConnectionResetError("client disconnected"))

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_writing(self) -> None:
        self._paused = True
        if self._current is not None:
            self._current.on_pause()

    def resume_writing(self) -> None:
        self._paused = False
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        if self._current is not None:
            self._current.on_resume()
        elif self._queue:
            self._next()  # held back while the client was not reading

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif not self._closed and self._transport is not None:
            self._writes.write(self._transport, data)

    def cork(self) -> None:
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and not self._closed and self._transport is not None:
            self._transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("client disconnected")
        if self._paused:
            if self._can_write is None or self._can_write.done():
                self._can_write = self._loop.create_future()
            await self._can_write

    def eof_received(self) -> bool:
        """The client is done sending: answer what it asked (HTTP allows a half-close), then close."""
        self._eof = True
        return self._current is not None or bool(self._queue)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: what still comes is discarded until the connection closes
        self._active = True
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "malformed HTTP request: protocol upgrades are not supported")
        except httptools.HttpParserError:
            if self._refusal is None:  # else a callback refused the request and stopped the parser
                self._refuse(400, "malformed HTTP request")
        if self._in_head and in_head:
            # A head that spans reads: all of this read is head (the one where it started is
            # bounded by the read size; heads within one read are checked at their end).
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_BYTES:
                self._refuse(400, f"request head larger than {MAX_HEAD_BYTES} bytes")

    # -- parser callbacks ---------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The first callback of every request (the parser calls only the callbacks a protocol
        # defines: no on_message_begin, one call fewer per request).
        self._url += url
        self._in_head = self._partial = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_size = 0
        headers = self._headers
        if b"host" not in headers or len(headers) > MAX_HEADERS or len(self._url) > MAX_HEAD_BYTES:
            self._check_head()
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._refuse(413, "request body too large")
            raise _Refused
        url = self._url
        self._path = path = url.split(b"?", 1)[0] if b"?" in url else url
        check = self._head_check
        if check is not None:
            try:
                self._caller = check(self._parser.get_method(), path, headers)
            except MaasError as exc:
                self._refuse(exc)  # before the body: what follows is discarded unread
                raise _Refused from None
            except Exception:
                log.exception("head check failed on %s", path.decode("latin-1"))
                self._refuse(MaasError("internal gateway error"))
                raise _Refused from None

    def _check_head(self) -> None:
        """The rare heads: no Host (HTTP/1.0 and earlier), too many headers, a huge URL."""
        if len(self._headers) > MAX_HEADERS:
            self._refuse(400, f"more than {MAX_HEADERS} request headers")
            raise _Refused
        if len(self._url) > MAX_HEAD_BYTES:
            self._refuse(400, f"request target longer than {MAX_HEAD_BYTES} bytes")
            raise _Refused
        if b"host" not in self._headers and self._parser.get_http_version() != "1.0":
            # HTTP/1.1 requires Host (RFC 9112 3.2); HTTP/0.9 is not spoken here.
            self._refuse(400, "malformed HTTP request: HTTP/1.1 requires a Host header")
            raise _Refused

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._refuse(413, "request body too large")
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        queue = self._queue
        request = Request(self._parser.get_method(), self._path, self._headers, body, self._caller)
        queue.append((request, self._parser.should_keep_alive()))
        # Ready for the next message here rather than in an on_message_begin callback.
        self._url = b""
        self._caller = None
        self._headers = {}
        self._body = []
        self._size = 0
        self._partial = False
        if len(queue) > MAX_QUEUED and self._transport is not None:
            # A client pipelining faster than it is answered: stop reading until caught up.
            self._reading_paused = True
            self._transport.pause_reading()
        self._next()

    # -- refusals and timeouts -------------------------------------------------------------

    def _refuse(self, error: MaasError | int, message: str = "") -> None:
        """Answer `error` (a status and `message`, or a MaasError) after the requests before
        it, then close; discard the rest."""
        if self._refusal is not None:
            return
        self._refusal = (error, message)
        self._in_head = False
        self._queue.append((None, False))
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()  # to discard, so the client can finish sending
        self._next()

    def check_quiet(self, now: float, timeout: float) -> None:
        """Called by the sweep: let a client go that has sent nothing for `timeout` seconds
        while it owed the rest of a request or held the connection idle."""
        if self._active or (self._current is not None and not self._closed):
            # Sent something, or is waiting for its answer (the upstream timeout's business).
            self._active = False
            self._quiet_since = now
            return
        transport = self._transport
        if now - self._quiet_since < timeout or transport is None:
            return
        if self._closed or self._refusal is not None or self._queue:
            # A lingering close that lasted long enough, or a client not reading its answers.
            transport.abort()
        elif self._partial:
            self._quiet_since = now  # the lingering close gets its own timeout
            self._refuse(408, f"request not completed within {timeout:g} s")
        else:
            self._close()  # idle

    # -- running handlers, one at a time per connection ---------------------------------

    def _next(self) -> None:
        if self._dispatching:
            return  # the loop below picks the request up
        self._dispatching = True
        try:
            while self._current is None and self._queue and not self._closed and not self._paused:
                request, keep_alive = self._queue.popleft()
                if request is not None and self._clients.draining:
                    self._refuse_draining()
                    request = None
                if self._reading_paused and len(self._queue) <= MAX_QUEUED // 2:
                    self._reading_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                responder = self._current = Responder(self, keep_alive and request is not None)
                if request is None:
                    error, message = self._refusal or (400, "malformed HTTP request")
                    self._reject(responder, error, message)
                    continue
                try:
                    work = self._handler(request, responder)
                except Exception:
                    self.abort(responder)  # handlers answer their own errors; this is a bug
                    raise
                if work is not None:
                    self.spawn(work, responder)
        finally:
            self._dispatching = False

    def spawn(self, work: Coroutine[Any, Any, None], responder: Responder) -> None:
        self._work = work
        self._task = task = self._loop.create_task(self._run(work, responder))
        tasks = self._clients.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, work: Coroutine[Any, Any, None], responder: Responder) -> None:
        self._work = None
        try:
            await work
        except asyncio.CancelledError:
            return  # the client went away; the handler cleaned up in its finally blocks
        except ConnectionError:
            self.abort(responder)
        finally:
            self._task = None
        if not responder.finished:
            self.abort(responder)

    def finished(self, responder: Responder) -> None:
        """The current response is complete: close, or go on with the next request."""
        # Drop the handler's callbacks: they reference its state, which references the
        # responder, and a cycle would leave every request's objects to the cyclic GC.
        responder.on_cancel = responder.on_pause = responder.on_resume = _nothing
        if responder is not self._current:
            return
        self._current = None
        if not responder.keep_alive:
            self._close()
        elif self._queue:
            if not self._dispatching:
                # After the handler's remaining work (settling) rather than inside it.
                self._loop.call_soon(self._next)
        elif self._eof:
            self._close()  # the client half-closed and has had all its answers
        elif self._clients.draining and not self._partial:
            self._close()  # stopping: no next request (one still arriving is answered 503)

    def abort(self, responder: Responder) -> None:
        responder.on_cancel = responder.on_pause = responder.on_resume = _nothing
        if responder is self._current or self._current is None:
            self._current = None
            self._close()

    # -- a stop ------------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        """A request in progress: being answered, waiting in the pipeline, or still arriving."""
        if self._closed:
            return self._task is not None  # a handler still ending after a refusal or an abort
        return self._current is not None or bool(self._queue) or self._partial or self._task is not None

    def wind_down(self) -> None:
        """The server is stopping: the response in progress goes on (its head, if not sent yet,
        says `Connection: close`) and the connection closes after it; an idle one closes now."""
        if self._closed:
            return
        current = self._current
        if current is not None:
            if not current.started:
                current.keep_alive = False
        elif not self._queue and not self._partial:
            self._close()
        # (Requests queued or still arriving are answered 503 when their turn comes: `_next`.)

    def _refuse_draining(self) -> None:
        """The request just taken from the queue arrived or waited during a stop: refused
        (503, `Connection: close`, with the lingering close of any refusal) with those behind."""
        self._refusal = (
            BackendUnavailable("the gateway is shutting down; retry in a moment", headers={"Retry-After": "1"}),
            "",
        )
        self._queue.clear()
        self._in_head = False
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()  # to discard what still comes

    def kill(self) -> None:
        """Abort the connection (the end of a stop's grace period): as a client's reset, it
        cancels the request in progress."""
        if self._killed or self._transport is None:
            return
        self._killed = True
        self._transport.abort()

    def _close(self) -> None:
        self.uncork()
        self._writes.flush()  # what this response wrote goes before the close
        self._closed = True
        self._queue.clear()
        transport = self._transport
        if transport is None:
            return
        if self._refusal is not None and not self._eof and transport.can_write_eof():
            # A lingering close: closing with unread bytes would reset the connection, and a
            # reset can destroy the answer before the client reads it. Half-close instead and
            # discard what comes until the client closes (or the timeout sweep aborts it).
            transport.write_eof()
            self._active = False
            self._quiet_since = self._loop.time()
        else:
            transport.close()


class Listener:
    """The listening sockets of `serve()`, accepting while fewer than `max_connections` clients
    are connected (see the module's docstring); `close()` stops listening.

    Accepting is done here rather than by `loop.create_server`, whose server cannot pause: the
    sockets' readers are removed at the cap and added back when a client leaves.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 factory: Callable[[], _HttpProtocol], clients: _Clients, max_connections: int) -> None:
        self._loop = loop
        self._sockets = sockets
        self._factory = factory
        self._clients = clients
        self._limit = max_connections
        # Accepted and still being handed to the loop (not yet among `clients`): counted too,
        # so that the cap holds in between.
        self._starting: set[_HttpProtocol] = set()
        self._accepting = False
        self._closed = False
        self._hurry = False
        clients.on_join = self._starting.discard
        clients.on_leave = self._room

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    @property
    def connections(self) -> int:
        """Client connections open (or being opened) now."""
        return len(self._starting) + len(self._clients)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def in_flight(self) -> int:
        """Connections with a request in progress (what a stop waits for)."""
        return self._clients.in_flight

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if self._accepting or self._closed:
            return
        self._accepting = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())

    def _room(self) -> None:
        if not self._accepting and self.connections < self._limit:
            self._resume()

    def _accept(self, sock: socket.socket) -> None:
        while self.connections < self._limit:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty
            except ConnectionAbortedError:
                continue  # reset while it waited: the next one
            except OSError as exc:
                # Out of file descriptors or buffers: the socket stays readable, so wait a little
                # rather than spin; what waits stays in the queue.
                log.warning("gateway cannot accept connections (%s); retrying in %g s",
                            exc.strerror or exc, _ACCEPT_RETRY_S)
                self._pause()
                self._loop.call_later(_ACCEPT_RETRY_S, self._room)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            protocol = self._factory()
            self._starting.add(protocol)  # until its connection_made makes it one of the clients
            # Once per connection, not per request: the task is what connect_accepted_socket costs.
            made = self._loop.connect_accepted_socket(partial(_given, protocol), conn)
            task = self._loop.create_task(made)
            task.add_done_callback(partial(self._connected, conn, protocol))
        self._pause()  # at the cap: the rest waits in the kernel's queue

    def _connected(self, conn: socket.socket, protocol: _HttpProtocol, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: a connection that failed to start is just closed
        if protocol in self._starting:  # it never became a client (else connection_lost counts it out)
            self._starting.discard(protocol)
            conn.close()
            self._room()

    def close(self) -> None:
        """Stop listening; connected clients are not closed (as asyncio's servers do)."""
        self._pause()
        self._closed = True
        for sock in self._sockets:
            sock.close()

    async def wait_closed(self) -> None:
        return None

    def drain(self) -> None:
        """Stop listening and serving new requests: idle connections close now, the others once
        their response ends; a request that comes meanwhile is answered 503 (see the module's
        docstring). Idempotent; `shutdown` finishes the job."""
        self.close()
        self._clients.drain()

    def hurry(self) -> None:
        """End a `shutdown`'s grace period now."""
        self._hurry = True

    async def shutdown(self, grace: float) -> int:
        """Drain, wait up to `grace` seconds for every connection to close, then abort those
        left (their requests are cancelled, as when a client resets) and wait for them to be
        gone and their handlers' tasks to end. Returns how many requests were cut off."""
        self.drain()
        loop, clients = self._loop, self._clients
        deadline = loop.time() + grace
        while self.connections and not self._hurry and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        cut = clients.in_flight
        deadline = loop.time() + _ABORT_WAIT_S
        while self.connections or clients.tasks:
            clients.abort()  # (again for one that joined from `_starting` meanwhile)
            if loop.time() >= deadline:
                log.warning("%d connection(s) and %d handler(s) did not end after being aborted",
                            self.connections, len(clients.tasks))
                break
            await asyncio.sleep(_DRAIN_POLL_S)
        clients.close()
        return cut


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (as `loop.create_server` binds)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(
    handler: Handler,
    reject: Reject,
    *,
    host: str,
    port: int,
    max_body: int,
    client_timeout: float = 60.0,
    writes: WriteBatch | None = None,
    check_head: HeadCheck | None = None,
    max_connections: int = 1000,
) -> Listener:
    """Listen on host:port (0: a free port, `sockets[0]` says which) and serve until closed."""
    loop = asyncio.get_running_loop()
    batch = writes if writes is not None else WriteBatch()
    batch.bind(loop)
    clients = _Clients(loop, client_timeout)
    sockets = await _bind(loop, host, port)
    listener = Listener(
        loop, sockets, lambda: _HttpProtocol(handler, reject, max_body, batch, clients, check_head), clients,
        max_connections,
    )
    listener.start()
    return listener
