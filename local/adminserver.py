"""The admin API's HTTP server, the same in `make run` and in the image: gunicorn, the server
functions-framework runs a Flask function on, with one worker process of gunicorn's threaded
kind (gthread) whose waiting for clients happens on the worker's event loop, not in a thread.

What was read to choose it (the sources in .venv):

- functions-framework 3.10.2, `functions_framework/_http/__init__.py`: a Flask app is served by
  `functions_framework/_http/gunicorn.py` `GunicornApplication` unless --debug; that sets
  `workers` = $WORKERS (1), `threads` = $THREADS (4 per CPU), `timeout` =
  $CLOUD_RUN_TIMEOUT_SECONDS (0), `limit_request_line` = 0, and, with threads, gunicorn picks
  the gthread worker. Its CLI (`_cli.py`) takes no other option, so the image runs this
  module's `main` instead of `functions-framework`: functions-framework's own app
  (`functions_framework.create_app`) on the same gunicorn, configured here.
- gunicorn 27.0.1 (what functions-framework pulls in; pinned in requirements.txt, since the
  worker below builds on its internals), `gunicorn/workers/gthread.py`: the main loop accepts
  (`ThreadWorker.accept`) and hands every new connection to the thread pool at once
  (`enqueue_req`). In the thread, `TConn.wait_for_data` waits up to 5 s for a first byte
  (`DEFAULT_WORKER_DATA_TIMEOUT`, gunicorn PR #3519) before handing the connection back to
  the poller, then `TConn.init()` wraps the socket (`gunicorn/sock.py` `ssl_wrap_socket`) and
  calls `do_handshake()` on a blocking socket with no timeout. So the TLS handshake runs in a
  worker thread, not the accept loop (moved there by PR #2573 for issue #2507, whose author
  notes many such clients "can still cause thread exhaustion"), and neither it nor the
  request head that follows has a deadline; a kept-alive connection goes back to a thread
  at its next byte, so the same holds for its next request. And `finish_request` closes a
  connection with `util.close_graceful` on the main loop, which waits up to 2 s for the
  client to close its side. Measured (TLS, 4 threads): after 4 idle connections the next
  request took 4.7 s; with 4 half ClientHellos, or 4 heads stalled after their first bytes,
  every request timed out for as long as they stayed open; 6 clients that keep their side
  open after an HTTP/1.0 answer delayed the next request by 3.8 s.
- werkzeug (the server before): its listening socket is TLS-wrapped, so the handshake runs in
  its one accept loop (`werkzeug/serving.py`) and one idle connection stops every client; a
  thread per connection, no timeouts.

So `AdminWorker` keeps gthread (the main loop accepts, at most `threads` threads run requests,
at most `worker_connections` connections are open: accepting pauses at the cap and the rest
wait in the listen queue) and moves every wait for a client onto the main loop's poller, in
non-blocking steps with deadlines:

1. a TLS handshake (only when a certificate is configured: locally, not in the image);
2. waiting for a request, new or on a kept-alive connection: at most `idle_s`, then closed;
3. the request's head, from its first byte: at most `head_s` (the handshake, from the
   client's first byte, too), then a 408 and closed; a head over MAX_HEAD_BYTES is a 431;
4. the body, by Content-Length or chunked, within `body_s` of the end of the head, with
   `Expect: 100-continue` answered here; one over `max_body_bytes` goes to the app without
   the rest (enough of it for the app's 413), and the connection closes after;
5. closing: the write side is shut and the client's leftovers drained for at most 2 s.

A thread gets a connection only with its request in hand, so no number of idle, slow or
half-open clients can take the threads. Its socket reads (which none of the above needs) end
`body_s` after it took the connection, and each send gives up after `body_s`.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn import util as gutil
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from shared.settings import ConfigurationError, Settings, load_settings

WSGIApp = Callable[..., Iterable[bytes]]
_request_log = logging.getLogger("maas.admin")

# A request line and its headers together; werkzeug took lines of up to 64 KiB (a 60 kB path
# reaches the app, which answers it), and this leaves room for the headers.
MAX_HEAD_BYTES = 128 * 1024
# How long a closed connection's leftovers are drained, so the kernel does not answer them
# with a reset that could cut the response short (gunicorn's close_graceful, without blocking).
LINGER_S = 2.0
_LINGER_DRAIN_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
# The worker's heartbeat to its arbiter; the main loop ticks every second whatever clients do,
# so only a wedged loop misses it (then the arbiter replaces the worker).
_HEARTBEAT_S = 30
_GRACEFUL_S = 10


@dataclass(frozen=True)
class Limits:
    """The clients' time and size limits; the rest is gunicorn's configuration."""

    idle_s: float
    head_s: float
    body_s: float
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(idle_s=settings.admin_idle_timeout_s, head_s=settings.admin_header_timeout_s,
                   body_s=settings.admin_body_timeout_s, max_body_bytes=settings.max_body_bytes)


def gunicorn_options(settings: Settings, *, bind: str, certfile: str | None = None,
                     keyfile: str | None = None) -> dict[str, Any]:
    """The one configuration of the admin server, for `make run` and the image alike."""
    options: dict[str, Any] = {
        "bind": [bind],
        "worker_class": f"{__name__}.AdminWorker",
        "workers": 1,  # functions-framework's default; the local runtime's channel assumes it
        "threads": settings.admin_threads,
        "worker_connections": settings.admin_max_connections,
        # gunicorn keeps a connection alive only when this is non-zero; the idle timeout
        # itself is Limits.idle_s, on the worker's poller.
        "keepalive": max(1, round(settings.admin_idle_timeout_s)),
        "timeout": _HEARTBEAT_S,
        "graceful_timeout": _GRACEFUL_S,
        "limit_request_line": 0,  # as functions-framework: the head as a whole is bounded instead
        # As functions-framework: gunicorn's own errors only. A request it refuses before the
        # app is logged as a request (_write_error), once.
        "loglevel": "error",
        "accesslog": None,  # as functions-framework; `make run`'s router logs a line per request
        "proc_name": "maas-admin",
    }
    if certfile is not None:
        options.update(certfile=certfile, keyfile=keyfile)
    return options


class AdminApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's application: the options above, and the WSGI app `load` makes (called in the
    worker process, after the fork, so that the app's threads and connections start there)."""

    def __init__(self, load: Callable[[], WSGIApp], options: dict[str, Any], limits: Limits,
                 post_worker_init: Callable[[], None] | None = None) -> None:
        self._load, self._options, self.limits = load, options, limits
        self._post_worker_init = post_worker_init
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)
        if self._post_worker_init is not None:
            ready = self._post_worker_init
            self.cfg.set("post_worker_init", lambda worker: ready())

    def load(self) -> WSGIApp:
        return self._load()


# -- sockets whose blocking reads and writes are bounded --------------------------------------


class _Bounded:
    """Reads end at `read_deadline` (absolute, monotonic); each send gives up after
    `write_timeout`. Both None: the socket is as it was set (non-blocking on the poller)."""

    read_deadline: float | None = None
    write_timeout: float | None = None

    def _before_read(self) -> None:
        if self.read_deadline is not None:
            left = self.read_deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client did not send its request in time")
            self.settimeout(left)  # type: ignore[attr-defined]

    def _sending(self, send: Callable[..., Any], *args: Any) -> Any:
        if self.write_timeout is not None:
            self.settimeout(self.write_timeout)  # type: ignore[attr-defined]
        try:
            return send(*args)
        except TimeoutError as exc:
            # A client that does not read its answer is gone as far as we care: EPIPE is what
            # gunicorn passes over quietly, where a timeout would be logged with a traceback.
            raise BrokenPipeError(errno.EPIPE, "the client did not read its response in time") from exc

    def recv(self, *args: Any) -> bytes:
        self._before_read()
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> int:
        self._before_read()
        return super().recv_into(*args)  # type: ignore[misc]

    def send(self, *args: Any) -> int:
        return self._sending(super().send, *args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> None:
        return self._sending(super().sendall, *args)  # type: ignore[misc]


class _PlainSocket(_Bounded, socket.socket):
    pass


class _TlsSocket(_Bounded, ssl.SSLSocket):
    pass


class _Conn(TConn):  # type: ignore[misc]
    """A connection and where it is on the poller: what has arrived of the request, the
    deadline of the current wait, and whether the request has begun (the head's clock runs)."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any, *, handshaking: bool) -> None:
        super().__init__(cfg, sock, client, server)
        self.handshaking = handshaking
        self.lingering = False
        self.linger_left = 0
        self.began = False
        self.deadline = 0.0
        self.reset(b"")

    def reset(self, leftover: bytes) -> None:
        """Ready for the next request, `leftover` (pipelined bytes) already in hand."""
        self.buffer = bytearray(leftover)
        self.scanned = 0  # how much of `buffer` is known not to end the head
        self.head_end = -1
        self.framing: _Framing | None = None
        self.chunk_at = 0  # chunked body: where the next chunk-size line starts
        self.decoded = 0  # chunked body: its bytes so far
        self.whole = True  # False: the app gets the request without (all of) its body


def _head_end(buffer: bytearray, start: int) -> int:
    """Index just past the blank line ending the head, or -1."""
    for ending in (b"\r\n\r\n", b"\n\n"):
        found = buffer.find(ending, max(0, start - len(ending) + 1))
        if found >= 0:
            return found + len(ending)
    return -1


@dataclass(frozen=True)
class _Framing:
    """How a request's body is delimited, from its head: `kind` is "none", "length" (`length`
    bytes), "chunked", or "unread": the app gets the request at once, without its body (one
    too large, which it refuses by its length, or a framing the parser refuses).
    `expects_continue`: an HTTP/1.1 `Expect: 100-continue`, answered on the poller."""

    kind: str
    length: int = 0
    expects_continue: bool = False


def _framing(head: bytes, max_body: int) -> _Framing:
    lines = head.split(b"\n")
    expects = lines[0].rstrip().endswith(b"HTTP/1.1") and any(
        name.strip().lower() == b"expect" and value.strip().lower() == b"100-continue"
        for name, _, value in (line.partition(b":") for line in lines[1:]))
    lengths, codings = [], []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            lengths.append(value.strip())
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
    if codings:
        chunked = not lengths and codings[-1] == b"chunked" and codings.count(b"chunked") == 1
        return _Framing("chunked" if chunked else "unread", expects_continue=expects)
    if not lengths:
        return _Framing("none", expects_continue=expects)
    if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        return _Framing("unread", expects_continue=expects)
    length = int(lengths[0])
    if length == 0:
        return _Framing("none", expects_continue=expects)
    if length > max_body:
        return _Framing("unread", expects_continue=expects)
    return _Framing("length", length, expects_continue=expects)


def _without_expect(head: bytes) -> bytes:
    """The head without its `Expect: 100-continue`: the poller answers it, or (for a body the
    app is to refuse unread) does not, and gunicorn must not invite the body either."""
    lines = head.split(b"\n")
    kept = [line for line in lines[1:] if line.partition(b":")[0].strip().lower() != b"expect"]
    return b"\n".join([lines[0], *kept])


_MAX_CHUNK_LINE = 4096
# A chunked body may take this many times `max_body_bytes` on the wire (its framing) on the
# poller; beyond, it is refused as too large.
_MAX_CHUNKED_OVERHEAD = 4


class _TooLarge(Exception):
    pass


class _Malformed(Exception):
    pass


def _scan_chunks(conn: _Conn, max_body: int) -> bool | None:
    """Follow a chunked body through `conn.buffer`: True once it has all arrived (trailers
    too), False while more is needed, None when it is over `max_body` (the app, which reads
    at most that much and one byte, has enough in hand to refuse it). _Malformed: a framing
    error, refused on the poller (the app would take the parser's error for its own fault)."""
    buffer = conn.buffer
    while True:
        line_end = buffer.find(b"\n", conn.chunk_at)
        if line_end < 0:
            if len(buffer) - conn.chunk_at > _MAX_CHUNK_LINE:
                raise _Malformed("a chunk size line is too long")
            return False
        size_field = bytes(buffer[conn.chunk_at:line_end]).split(b";", 1)[0].strip()
        if not size_field or len(size_field) > 16 or size_field.strip(b"0123456789abcdefABCDEF"):
            raise _Malformed("a chunk size is not a hexadecimal number")
        size = int(size_field, 16)
        if size == 0:  # the last chunk: then trailer fields, up to a blank line
            trailers = line_end + 1
            if buffer.startswith(b"\r\n", trailers) or buffer.startswith(b"\n", trailers):
                return True
            if _head_end(buffer, trailers) >= 0:
                return True
            if len(buffer) - trailers > MAX_HEAD_BYTES:
                raise _Malformed("its trailer fields are too long")
            return False
        data_at = line_end + 1
        if conn.decoded + min(size, len(buffer) - data_at) > max_body:
            return None  # the app has enough in hand to see that it is too large
        if len(buffer) < data_at + size + 2:  # the data, and its CRLF
            return False
        if buffer[data_at + size: data_at + size + 2] != b"\r\n":
            raise _Malformed("a chunk does not end with CRLF")
        conn.decoded += size
        conn.chunk_at = data_at + size + 2


def _answer(status: str, message: str) -> bytes:
    """A whole response in the admin API's error shape ({"error": message}), then close."""
    body = json.dumps({"error": message}).encode()  # ASCII: a client's control characters escaped
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def _write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (a request line or header it cannot parse) in our JSON shape
    rather than its HTML page: every refusal of the admin API is JSON. And a line in the
    request log, whose records are cleaned where they are made (shared/logsafety): `mesg`
    quotes the client's request line."""
    _request_log.info("the server answered %d: %s", status_int, mesg or reason)
    gutil.write_nonblock(sock, _answer(f"{status_int} {reason}", f"{reason}: {mesg}" if mesg else reason))


class AdminWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, with the TLS handshake, the wait for a request, its head and a small body read
    on the main loop's poller under deadlines (see the module docstring)."""

    limits: Limits

    def init_process(self) -> None:
        self._prepare()
        super().init_process()

    def _prepare(self) -> None:
        """What the worker needs before its loop runs, in the process that runs it."""
        self.limits = getattr(self.app, "limits", None) or Limits(idle_s=5, head_s=10, body_s=10,
                                                                  max_body_bytes=64 * 1024)
        self._tls: ssl.SSLContext | None = None
        if self.cfg.is_ssl:
            from gunicorn import sock as gsock

            self._tls = gsock.ssl_context(self.cfg)
            self._tls.sslsocket_class = _TlsSocket
        self._front: set[_Conn] = set()
        gutil.write_error = _write_error  # base.Worker.handle_error writes through it

    # -- accepting --------------------------------------------------------------------------

    def accept(self, listener: Any) -> None:
        try:
            raw, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        try:
            if raw.family in (socket.AF_INET, socket.AF_INET6):
                # A response's head and body are separate sends; Nagle would hold the body
                # back for the client's ACK of the head (16 ms a request, measured).
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setblocking(False)
            if self._tls is not None:
                sock: socket.socket = self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            else:
                sock = _PlainSocket(fileno=raw.detach())
            conn = _Conn(self.cfg, sock, client, listener.getsockname(), handshaking=self._tls is not None)
        except OSError:  # reset before we got to it
            raw.close()
            self.nr_conns -= 1
            return
        self._await_request(conn)

    # -- the poller's side of a connection --------------------------------------------------

    def _await_request(self, conn: _Conn, leftover: bytes = b"") -> None:
        """Wait, on the poller, for the (next) request on `conn`."""
        conn.reset(leftover)
        conn.began = False
        conn.deadline = time.monotonic() + self.limits.idle_s
        if leftover:
            self._begin(conn, self.limits.head_s)
        self._front.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._advance, conn))
        tls_held = isinstance(conn.sock, ssl.SSLSocket) and not conn.handshaking and conn.sock.pending()
        if leftover or tls_held:
            # The request may be here already, where the poller cannot see it: pipelined
            # behind the last one, or decrypted and held inside the TLS object.
            self._advance(conn)

    def _begin(self, conn: _Conn, seconds: float) -> None:
        if not conn.began:
            conn.began = True
            conn.deadline = time.monotonic() + seconds

    def _advance(self, conn: _Conn, fileobj: object = None) -> None:
        """One non-blocking step: handshake, read, and hand the request over when it is whole.
        `fileobj` is the poller's (the socket became ready); None when called directly."""
        if conn not in self._front:
            return
        if conn.lingering:
            self._drain(conn)
            return
        sock = conn.sock
        try:
            if conn.handshaking:
                if fileobj is not None:
                    self._begin(conn, self.limits.head_s)  # the client's first bytes are here
                sock.do_handshake()
                conn.handshaking, conn.began = False, False
                conn.deadline = time.monotonic() + self.limits.idle_s
            while not self._request_whole(conn):
                if conn.head_end < 0 and len(conn.buffer) > MAX_HEAD_BYTES:
                    self._refuse(conn, "431 Request Header Fields Too Large",
                                 f"the request head is over {MAX_HEAD_BYTES} bytes")
                    return
                chunk = sock.recv(_READ_CHUNK)
                if not chunk:
                    self._close(conn)  # the client left
                    return
                self._begin(conn, self.limits.head_s)
                conn.buffer += chunk
            self._hand_over(conn)
        except _TooLarge:
            self._refuse(conn, "413 Payload Too Large",
                         f"request body exceeds {self.limits.max_body_bytes} bytes")
        except _Malformed as exc:
            self._refuse(conn, "400 Bad Request", f"malformed chunked body: {exc}")
        except ssl.SSLWantReadError:
            self.poller.modify(sock, selectors.EVENT_READ, partial(self._advance, conn))
        except ssl.SSLWantWriteError:
            self.poller.modify(sock, selectors.EVENT_WRITE, partial(self._advance, conn))
        except BlockingIOError:
            pass  # nothing more now; still registered for reading
        except ssl.SSLError as exc:
            if conn.handshaking and exc.reason == "HTTP_REQUEST":
                self._plain_http(conn)
            else:
                self._close(conn)  # a bad handshake
        except (OSError, ValueError):  # a reset
            self._close(conn)

    def _plain_http(self, conn: _Conn) -> None:
        """A plain-HTTP request on the TLS port (OpenSSL saw its first bytes) is answered in plain
        HTTP, as nginx answers it, so that `curl http://...` says what to do, not "reset"."""
        self._leave_poller(conn)
        conn.sock = _PlainSocket(fileno=conn.sock.detach())
        conn.handshaking = False
        self._refuse(conn, "400 Bad Request", "the admin API speaks HTTPS only: call it with https://, not http://")

    def _request_whole(self, conn: _Conn) -> bool:
        """Whether the request is here as far as its thread will read it: the head, and the
        body unless the app is to get it without (see _Framing)."""
        if conn.framing is None:
            conn.head_end = _head_end(conn.buffer, conn.scanned)
            conn.scanned = len(conn.buffer)
            if conn.head_end < 0:
                return False
            head = bytes(conn.buffer[: conn.head_end])
            conn.framing = framing = _framing(head, self.limits.max_body_bytes)
            if framing.expects_continue:
                trimmed = _without_expect(head)
                conn.buffer[: conn.head_end] = trimmed
                conn.head_end = len(trimmed)
            if framing.kind in ("length", "chunked"):
                conn.deadline = time.monotonic() + self.limits.body_s  # the body's own clock
                conn.chunk_at = conn.head_end
                if framing.expects_continue:
                    # The client waits for this before it sends the body; the poller reads it.
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")  # small: fits any send buffer
            conn.whole = framing.kind != "unread"
        framing = conn.framing
        if framing.kind == "length":
            return len(conn.buffer) - conn.head_end >= framing.length
        if framing.kind == "chunked":
            if len(conn.buffer) - conn.head_end > _MAX_CHUNKED_OVERHEAD * self.limits.max_body_bytes:
                raise _TooLarge  # tiny chunks or long extensions: framing, not data
            done = _scan_chunks(conn, self.limits.max_body_bytes)
            if done is None:
                conn.whole = False
            return done is not False
        return True

    def _hand_over(self, conn: _Conn) -> None:
        self._leave_poller(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.buffer))
        conn.buffer = bytearray()
        conn.initialized = conn.data_ready = True  # TConn.init() must not wrap or wait again
        self.enqueue_req(conn)

    def _refuse(self, conn: _Conn, status: str, message: str) -> None:
        _request_log.info("the server answered %s: %s", status.split(" ", 1)[0], message)
        try:
            conn.sock.send(_answer(status, message))  # best effort: non-blocking, one try
        except (OSError, ValueError):
            pass
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        """Shut our side, drain theirs on the poller for LINGER_S at most, then close."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close(conn)
            return
        conn.lingering = True
        conn.linger_left = _LINGER_DRAIN_BYTES
        conn.deadline = time.monotonic() + LINGER_S
        if conn not in self._front:
            self._front.add(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._advance, conn))
        else:
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self._advance, conn))

    def _drain(self, conn: _Conn) -> None:
        try:
            while conn.linger_left > 0:
                chunk = conn.sock.recv(_READ_CHUNK)
                if not chunk:
                    break
                conn.linger_left -= len(chunk)
            else:
                self._close(conn)  # drained enough: a client still sending gets its reset
                return
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except (OSError, ValueError):
            pass
        self._close(conn)

    def _leave_poller(self, conn: _Conn) -> None:
        self._front.discard(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _close(self, conn: _Conn) -> None:
        self._leave_poller(conn)
        self.nr_conns -= 1
        conn.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._front if c.deadline <= now or (not self.alive and not c.began)]:
            if conn.lingering or conn.handshaking or not conn.began or conn.deadline > now:
                self._close(conn)  # idle, stopping, or never finished its handshake: nothing to say
            else:
                self._refuse(conn, "408 Request Timeout", "the request was not received in time")

    # -- gthread's hooks --------------------------------------------------------------------

    def murder_pending(self) -> None:
        """Called by gthread's loop every tick (and while stopping): our deadlines too."""
        super().murder_pending()
        self._expire()

    def handle(self, conn: _Conn) -> Any:
        """In a thread, with the whole request (or its head) in hand; the client gets `body_s`
        for whatever the app still reads, and each send as long."""
        conn.sock.read_deadline = time.monotonic() + self.limits.body_s
        conn.sock.write_timeout = self.limits.body_s
        return super().handle(conn)

    def _keepalive_after(self, conn: _Conn, keepalive: bool) -> bool:
        """A request whose body was left on the socket ends its connection: draining it here
        would have the thread wait for the client, so the poller drains it while closing."""
        return conn.whole and super()._keepalive_after(conn, keepalive)

    def finish_request(self, conn: _Conn, fs: Any) -> None:
        """Back on the main loop: a kept-alive connection waits on the poller for its next
        request (never in a thread), any other is closed without blocking the loop."""
        try:
            keep = bool(fs.result()) if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - gthread closes the connection on any failure too
            keep = False
        conn.sock.read_deadline = conn.sock.write_timeout = None
        try:
            conn.sock.setblocking(False)
        except (OSError, ValueError):
            self.nr_conns -= 1
            conn.close()
            return
        if keep and self.alive:
            self._await_request(conn, conn.parser.unreader.take_buffered())
        else:
            self._linger(conn)


# -- in this process, without gunicorn's arbiter (tests that install a Context) --------------


class WorkerThread:
    """The same worker's loop on a thread of this process, on a socket already listening.
    `make run` and the image run the worker under gunicorn's arbiter instead."""

    def __init__(self, application: AdminApplication, listener: socket.socket) -> None:
        from gunicorn.glogging import Logger

        cfg = application.cfg
        self.worker = AdminWorker(0, os.getppid(), [listener], application, _HEARTBEAT_S, cfg, Logger(cfg))

    def run(self) -> None:
        worker = self.worker
        worker._prepare()
        worker.tpool = worker.get_thread_pool()
        worker.poller = selectors.DefaultSelector()
        worker.method_queue.init()
        worker.load_wsgi()
        worker.booted = True
        try:
            worker.run()
        finally:
            for conn in list(worker._front):  # past the graceful timeout: this process lives on
                worker._close(conn)
            worker.tmp.close()

    def stop(self) -> None:
        self.worker.alive = False
        self.worker.method_queue.defer(lambda: None)  # wake the loop


# -- the image's entry point ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m local.adminserver`: one function target, with functions-framework's CLI flags
    (the Containerfile's CMD fills them from FUNCTION_TARGET, FUNCTION_SIGNATURE_TYPE and PORT,
    as that CLI would read them), on the admin server above."""
    parser = argparse.ArgumentParser(prog="python -m local.adminserver", description=main.__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", default=None)
    parser.add_argument("--signature-type", default="http", choices=["http", "event", "cloudevent", "typed"])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2

    def load() -> WSGIApp:
        from functions_framework import create_app

        return create_app(args.target, args.source, args.signature_type)  # type: ignore[no-any-return]

    options = gunicorn_options(settings, bind=f"{args.host}:{args.port}")
    AdminApplication(load, options, Limits.from_settings(settings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
