"""A lean, pipelined Redis client for the counters' two scripts: one connection, RESP2.

Why not redis-py: its asyncio client costs about 150 µs of Python per call (a pooled connection
taken and given back, a retry wrapper, command packing, a reply parser built for every command
Redis has), two calls per model request, which held a gateway with Redis counters to about 2,000
requests a second (bench/). The counters need three commands (EVALSHA, SCRIPT LOAD, PING, plus
AUTH and SELECT from the URL) and RESP2's five reply types; those are written here.

Every call is written at once on the one connection and its reply awaited in order (RESP answers
in the order asked), so calls from many requests share the connection without waiting for each
other. A call that gets no reply within `timeout_s` fails, and so does the connection (a reply
that late would answer the wrong call): the next call connects again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

Reply = int | bytes | list["Reply"] | None


class RespError(Exception):
    """Redis answered with an error reply (`-ERR ...`, `-NOSCRIPT ...`, `-WRONGTYPE ...`)."""


class RespConnectionError(ConnectionError):
    """The connection failed, closed, or stopped answering."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    path: str | None  # a unix socket
    tls: bool
    password: str | None
    username: str | None
    db: int

    @property
    def shown(self) -> str:
        """Where, for messages: never the password."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def parse_url(url: str) -> Address:
    """redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix:///path[?db=N]."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://, not {parts.scheme or '(none)'}://")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        query = dict(item.partition("=")[::2] for item in parts.query.split("&") if item)
        return Address("", 0, parts.path, False, password, username, int(query.get("db", "0") or 0))
    db = parts.path.strip("/")
    return Address(parts.hostname or "localhost", parts.port or 6379, None, parts.scheme == "rediss",
                   password, username, int(db) if db else 0)


def encode(*args: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buffer: bytes | bytearray, at: int) -> tuple[Reply | RespError, int]:
    """One reply from `buffer` at `at`: (reply, where the next starts); _Incomplete if short."""
    end = buffer.find(b"\r\n", at)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[at : at + 1], bytes(buffer[at + 1 : end])
    at = end + 2
    if kind == b":":
        return int(line), at
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, at
        if len(buffer) < at + length + 2:
            raise _Incomplete
        return bytes(buffer[at : at + length]), at + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, at
        items: list[Reply] = []
        for _ in range(count):
            item, at = _parse(buffer, at)
            if isinstance(item, RespError):
                raise item  # an error inside an array: only EXEC does that, never used here
            items.append(item)
        return items, at
    if kind == b"+":
        return line, at
    if kind == b"-":
        return RespError(line.decode("utf-8", "replace")), at
    raise RespConnectionError(f"not a Redis reply (starts with {kind!r})")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self.buffer = bytearray()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        waiting = self.waiting
        try:
            while at < len(buffer) and waiting:
                try:
                    reply, at = _parse(buffer, at)
                except _Incomplete:
                    break
                future, _ = waiting.popleft()
                if not future.done():
                    if isinstance(reply, RespError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except (RespConnectionError, ValueError) as exc:
            self.fail(RespConnectionError(str(exc)))
            return
        del buffer[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespConnectionError(str(exc) if exc else "the connection was closed"), close=False)

    def fail(self, exc: BaseException, *, close: bool = True) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)
        if close and self.transport is not None:
            self.transport.close()


class RespClient:
    """Calls to one Redis over one pipelined connection, made again when it fails."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.address = parse_url(url)
        self._timeout = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._watch: asyncio.TimerHandle | None = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected_done)
        return await asyncio.shield(self._connecting)

    def _connected_done(self, future: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if not future.cancelled() and future.exception() is None:
            self._protocol = future.result()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self.address
        try:
            async with asyncio.timeout(self._timeout):
                if address.path is not None:
                    _, protocol = await loop.create_unix_connection(_Protocol, address.path)
                else:
                    context = ssl.create_default_context() if address.tls else None
                    _, protocol = await loop.create_connection(
                        _Protocol, address.host, address.port, ssl=context,
                        server_hostname=address.host if context else None)
                hello: list[bytes] = []
                if address.password is not None:
                    hello.append(encode("AUTH", *([address.username] if address.username else []), address.password))
                if address.db:
                    hello.append(encode("SELECT", address.db))
                if hello:
                    replies = [self._send(protocol, command) for command in hello]
                    for reply in replies:
                        await reply
        except TimeoutError as exc:
            raise RespConnectionError(f"no answer within {self._timeout:g} s") from exc
        return protocol

    def _send(self, protocol: _Protocol, command: bytes) -> asyncio.Future[Reply]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        if protocol.lost is not None or protocol.transport is None:
            future.set_exception(protocol.lost or RespConnectionError("not connected"))
            return future
        protocol.waiting.append((future, loop.time() + self._timeout))
        protocol.transport.write(command)
        if self._watch is None:
            self._watch = loop.call_later(self._timeout / 4, self._sweep)
        return future

    def _sweep(self) -> None:
        """Fail the connection when its oldest call is overdue: replies come in order, so every
        call behind it waits too. One timer for all calls, not one per call."""
        self._watch = None
        protocol = self._protocol
        if protocol is None or not protocol.waiting:
            return
        loop = asyncio.get_running_loop()
        if protocol.waiting[0][1] <= loop.time():
            protocol.fail(RespConnectionError(f"no answer within {self._timeout:g} s"))
            return
        self._watch = loop.call_later(self._timeout / 4, self._sweep)

    async def call(self, *args: bytes | str | int) -> Reply:
        protocol = await self._connected()
        return await self._send(protocol, encode(*args))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.fail(RespConnectionError("closed"))
