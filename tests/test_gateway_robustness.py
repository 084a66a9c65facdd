"""The gateway against hostile or broken clients and backends.

One gateway (module-scoped) in front of the simulator and a scripted backend that misbehaves
on demand (the body's "mode"), all on 127.0.0.1. Malformed traffic goes over raw sockets.
After every test the gateway must still answer, and its limiter must hold no reservation once
the test's requests are over; the last test checks a normal call and /metrics after all of it,
and that no API key (nor the simulator's token) reached a response or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, cast

import httptools
import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench.backend import RequestReader
from local.gateway import GatewayService
from local.gateway.loopthread import LoopThread
from local.simulator import SimulatorService
from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.settings import Settings
from shared.store.base import ApiKey, Team
from shared.store.sqlite import SqliteStore

SIM = "qwen3-0-6b-instruct"
SCRIPTED = "scripted"
MAX_BODY = 64 * 1024
CLIENT_TIMEOUT = 0.5
UPSTREAM_TIMEOUT = 1.0
TEAM = Team("t1", "t1", "", "t1", 10**12, "1h", "user", datetime.now(timezone.utc))
USAGE_TOTAL = 8
CLIENT_ERRORS = {400, 401, 403, 404, 405, 408, 413, 422, 429}


# -- a backend that misbehaves on demand ----------------------------------------------------


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _reply(usage: bytes | None) -> bytes:
    body = b'{"id":"x","object":"chat.completion","model":"scripted","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]'
    return body + (b',"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":' + usage + b"}}" if usage is not None else b"}")


def _whole(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body)


class _Misbehaving(RequestReader):
    def on_request(self, body: bytes) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            request = {}
        asyncio.get_running_loop().create_task(self._answer(request if isinstance(request, dict) else {}))

    async def _answer(self, request: dict[str, Any]) -> None:
        out = self.transport
        mode = request.get("mode")
        stream = request.get("stream") is True
        usage_asked = isinstance(request.get("stream_options"), dict) and request["stream_options"].get("include_usage") is True
        if mode == "garbage":
            out.write(b"\x00\xff\xfeNOT HTTP AT ALL\r\n\r\n")
            out.close()
        elif mode == "close-mid-body":
            out.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":")
            await asyncio.sleep(0.01)
            out.close()
        elif mode == "half-head":
            out.write(b"HTTP/1.1 200 OK\r\nContent-")  # then nothing: the gateway's upstream timeout
        elif mode == "no-usage":
            out.write(_whole(_reply(None)))
        elif mode == "invalid-json":
            out.write(_whole(b'{"choices": [ not json'))
        elif mode == "huge-usage":
            out.write(_whole(_reply(b"9" * 5000)))
        elif mode == "big-usage":
            out.write(_whole(_reply(b"123456789012345678901234567890")))
        elif mode == "negative-usage":
            out.write(_whole(_reply(b"-50")))
        elif mode == "float-usage":
            out.write(_whole(_reply(b"1e30")))
        elif mode == "continue":
            # A 1xx, then an answer that must not be taken for the next request's.
            out.write(b"HTTP/1.1 100 Continue\r\n\r\n" + _whole(_reply(b"7777")))
        elif mode == "extra-answer":
            # An answer, then at once a second one nobody asked for: it must not become the
            # answer to the next request sent on this kept-alive connection (any user's).
            out.write(_whole(_reply(str(USAGE_TOTAL).encode())) + _whole(_reply(b"8888")))
        elif mode == "late-extra-answer":
            out.write(_whole(_reply(str(USAGE_TOTAL).encode())))
            await asyncio.sleep(0.05)  # arrives while the connection sits idle in the pool
            out.write(_whole(_reply(b"8888")))
        elif mode == "bad-status":
            out.write(b"HTTP/1.1 999 Whatever\r\nContent-Length: 2\r\n\r\n{}")
        elif stream:
            out.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            count = 50 if mode == "slow" else 3
            for i in range(count):
                out.write(_chunk(_event({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]})))
                await asyncio.sleep(0.02 if mode == "slow" else 0.002)
            if mode == "stream-cut":
                out.close()
                return
            if mode == "stream-huge-usage":
                out.write(_chunk(b'data: {"choices":[],"usage":{"total_tokens":' + b"7" * 40 + b"}}\n\n"))
            elif usage_asked and mode != "stream-no-usage":
                out.write(_chunk(_event({"choices": [], "usage": {"total_tokens": USAGE_TOTAL}})))
            out.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        else:
            out.write(_whole(_reply(str(USAGE_TOTAL).encode())))


class MisbehavingBackend:
    def __init__(self) -> None:
        self._thread = LoopThread("misbehaving-backend")
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self.port = self._thread.call(self._listen)

    async def _listen(self) -> int:
        self._server = await asyncio.get_running_loop().create_server(_Misbehaving, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()

    def stop(self) -> None:
        self._thread.stop(self._close)


# -- fixtures -------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def log_lines() -> Iterator[list[str]]:
    handler = _Records()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("maas")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, log_lines: list[str]) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("robust")
    simulator = SimulatorService(Settings(simulator_port=0))  # type: ignore[call-arg]
    simulator.start()
    backend = MisbehavingBackend()
    backend.start()
    store = SqliteStore(tmp / "maas.db")
    store.create_team(team=TEAM)
    key = generate_api_key()
    store.create_key(
        key=ApiKey(secret_name_for("alice", "t1"), key_sha256(key), "t1", "alice", "alice@example.com",
                   "member", "active", datetime.now(timezone.utc)),
        api_key=key,
    )
    models = tmp / "models.yaml"
    models.write_text(
        f"models:\n  - name: {SIM}\n    url: {simulator.url}/v1\n    api_key: {simulator.token.get_secret_value()}\n"
        f"  - name: {SCRIPTED}\n    url: http://127.0.0.1:{backend.port}/v1\n"
    )
    service = GatewayService(
        Settings(  # type: ignore[call-arg]
            gateway_port=0, metrics_port=0, data_dir=tmp / "data", models_file=models, upstream_timeout_s=UPSTREAM_TIMEOUT,
            gateway_max_body_bytes=MAX_BODY, gateway_client_timeout_s=CLIENT_TIMEOUT,
        ),
        store,
    )
    service.start()
    port = int(service.url.rsplit(":", 1)[1])
    try:
        yield {"gateway": service, "key": key, "port": port, "store": store, "responses": [],
               "simulator_token": simulator.token.get_secret_value()}
    finally:
        service.stop()
        store.close()
        backend.stop()
        simulator.stop()


@pytest.fixture
def gateway(world: dict[str, Any]) -> GatewayService:
    return cast(GatewayService, world["gateway"])


@pytest.fixture
def key(world: dict[str, Any]) -> str:
    return cast(str, world["key"])


@pytest.fixture
def port(world: dict[str, Any]) -> int:
    return cast(int, world["port"])


@pytest.fixture
def client(gateway: GatewayService, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10, headers={"Authorization": f"APIKEY {key}"}) as client:
        yield client


def _settled(gateway: GatewayService, deadline_s: float = 3.0) -> int:
    deadline = time.monotonic() + deadline_s
    while gateway.limiter.outstanding and time.monotonic() < deadline:
        time.sleep(0.01)
    return gateway.limiter.outstanding


@pytest.fixture(autouse=True)
def still_serving(world: dict[str, Any]) -> Iterator[None]:
    """After each test: nothing reserved, and the gateway answers."""
    yield
    gateway = cast(GatewayService, world["gateway"])
    assert _settled(gateway) == 0, "a reservation was leaked"
    with httpx.Client(base_url=gateway.url, timeout=5) as http:
        assert http.get("/health").status_code == 200


def _spent(gateway: GatewayService) -> tuple[int, int]:
    return gateway.limiter.state(team=TEAM, user_id="alice")


# -- raw sockets ----------------------------------------------------------------------------


class _Responses:
    """Parses what the gateway sends back on one connection."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self._parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


def _read(sock: socket.socket, want: int, timeout: float) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bool]:
    """Up to `want` responses, and whether the gateway closed the connection."""
    parsed = _Responses()
    sock.settimeout(timeout)
    closed = False
    deadline = time.monotonic() + timeout
    while len(parsed.done) < want and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not data:
            closed = True
            break
        parsed.feed(data)
    return parsed.done, closed


def _send(port: int, data: bytes, *, want: int = 1, timeout: float = 3.0) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        responses, closed = _read(sock, want, timeout)
        if not closed and len(responses) >= want:
            # Did the gateway close after its answer? (a short wait: it should already have)
            more, closed = _read(sock, 1, 0.3)
            responses += more
        return responses, closed


def _assert_openai_error(status: int, body: bytes, *expected: int) -> dict[str, str]:
    assert status in expected, (status, body[:300])
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) >= {"message", "type", "code"}, parsed
    return cast(dict[str, str], parsed["error"])


def _post(path: bytes, body: bytes, key: str, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: APIKEY " + key.encode()
        + b"\r\nContent-Type: application/json\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def _chat_body(model: str = SCRIPTED, **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, **extra}).encode()


# -- malformed HTTP -------------------------------------------------------------------------

MALFORMED = {
    "garbage": b"\x00\x01\x02\xff\xfe garbage \r\n\r\n",
    "bad-method": b"FR@B /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n",
    "http-0.9": b"GET /health\r\n\r\n",
    "bad-version": b"GET /health HTTP/7.3\r\nHost: gw\r\n\r\n",
    "space-in-header-name": b"GET /health HTTP/1.1\r\nHost: gw\r\nBad Header: x\r\n\r\n",
    "no-colon": b"GET /health HTTP/1.1\r\nHost: gw\r\nNoColonHere\r\n\r\n",
    "bare-lf-in-value": b"GET /health HTTP/1.1\r\nHost: gw\r\nX: a\rb\r\n\r\n",
    "invalid-content-length": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n",
    "negative-content-length": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: -5\r\n\r\n",
    "overflowing-content-length": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    "two-content-lengths": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    "content-length-and-chunked": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk-longer-than-said": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",
    "unknown-transfer-encoding": b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    "missing-host": b"GET /health HTTP/1.1\r\n\r\n",
    "connect-upgrade": b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_requests_get_a_4xx_in_openai_shape_then_close(port: int, key: str, raw: bytes) -> None:
    if raw.startswith(b"POST "):
        # With a good key: a model call without one is refused (401) before its body is read.
        raw = raw.replace(b"Host: gw\r\n", b"Host: gw\r\nAuthorization: APIKEY " + key.encode() + b"\r\n", 1)
    responses, closed = _send(port, raw)
    assert responses, f"no answer to {raw!r}"
    status, _, body = responses[0]
    # CONNECT and Upgrade are parsed as requests (404 here), then the connection is refused.
    _assert_openai_error(status, body, *((400, 404, 405) if raw.startswith(b"CONNECT") else (400,)))
    assert closed, "the connection should be closed after a malformed request"


def test_unknown_method_on_a_route_is_405_and_unknown_path_404(port: int) -> None:
    responses, _ = _send(port, b"DELETE /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\nGET /nope HTTP/1.1\r\nHost: gw\r\n\r\n", want=2)
    assert [r[0] for r in responses[:2]] == [405, 404]
    for status, _, body in responses[:2]:
        _assert_openai_error(status, body, 404, 405)


def test_oversized_header_is_refused(port: int) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
    responses, closed = _send(port, raw, timeout=5)
    assert responses and closed
    _assert_openai_error(responses[0][0], responses[0][2], 400, 431)


def test_header_count_flood_is_refused(port: int) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(50_000)) + b"\r\n"
    responses, closed = _send(port, raw, timeout=5)
    assert responses and closed
    _assert_openai_error(responses[0][0], responses[0][2], 400, 431)


def test_oversized_url_is_refused(port: int) -> None:
    raw = b"GET /" + b"a" * (1024 * 1024) + b" HTTP/1.1\r\nHost: gw\r\n\r\n"
    responses, closed = _send(port, raw, timeout=5)
    assert responses and closed
    _assert_openai_error(responses[0][0], responses[0][2], 400, 414, 431)


def test_duplicate_headers_do_not_confuse_auth(port: int, key: str) -> None:
    raw = _post(b"/v1/chat/completions", _chat_body(), "wrong-key", extra=b"Authorization: Basic xyz\r\n")
    responses, _ = _send(port, raw)
    _assert_openai_error(responses[0][0], responses[0][2], 401)
    assert key.encode() not in responses[0][2]


def test_body_over_the_limit_is_413_without_reading_it(port: int, key: str) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: APIKEY " + key.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % (1024 * 1024 * 1024)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(head + b"{" + b" " * 1024)
        # Never sends the other gigabyte: the answer must come anyway.
        responses, _ = _read(sock, 1, 3)
        _, closed = _read(sock, 1, 3)  # then a (lingering) close, not a wait for the rest
    assert responses, "413 should not wait for the whole body"
    _assert_openai_error(responses[0][0], responses[0][2], 413)
    assert closed


def test_chunked_body_over_the_limit_is_413_without_reading_it(port: int, key: str) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: APIKEY " + key.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = _chunk(b" " * 16384)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(head + piece * (MAX_BODY // 16384 + 2))
        responses, _ = _read(sock, 1, 3)
    assert responses, "413 should come once the chunks pass the limit"
    _assert_openai_error(responses[0][0], responses[0][2], 413)


def test_truncated_body_then_close_leaves_nothing_reserved(port: int, key: str, gateway: GatewayService) -> None:
    body = _chat_body()
    for cut in (1, len(body) // 2, len(body) - 1):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            raw = _post(b"/v1/chat/completions", body, key)
            sock.sendall(raw[: len(raw) - len(body) + cut])
    assert _settled(gateway) == 0


# -- slow, stalled and abrupt clients -------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(port: int, key: str) -> None:
    one = _post(b"/v1/chat/completions", _chat_body(), key)
    stream = _post(b"/v1/chat/completions", _chat_body(stream=True), key)
    health = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"
    bad_json = _post(b"/v1/completions", b"{nope", key)
    responses, _ = _send(port, one + health + stream + bad_json + one + health, want=6, timeout=5)
    statuses = [r[0] for r in responses]
    assert statuses[:6] == [200, 200, 200, 400, 200, 200], statuses
    assert b'"total_tokens":8' in responses[0][2] and responses[1][2] == b'{"status":"ok"}'
    assert responses[2][2].endswith(b"data: [DONE]\n\n")


def test_a_client_that_stalls_mid_request_does_not_block_others(port: int, key: str, client: httpx.Client) -> None:
    stalled = []
    try:
        # (A good key: with a bad one the half-sent body is refused with 401 at once.)
        for part in (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Le", _post(b"/v1/completions", b'{"model"', key)[:-2]):
            sock = socket.create_connection(("127.0.0.1", port), timeout=3)
            sock.sendall(part)
            stalled.append(sock)
        idle = socket.create_connection(("127.0.0.1", port), timeout=3)
        stalled.append(idle)
        started = time.monotonic()
        for _ in range(5):
            assert client.post("/v1/chat/completions", content=_chat_body()).status_code == 200
        assert time.monotonic() - started < CLIENT_TIMEOUT * 2
        # The stalled ones are let go after the client timeout: half-sent ones with 408.
        for sock in stalled:
            responses, closed = _read(sock, 1, CLIENT_TIMEOUT * 6)
            assert closed or responses, "a stalled client was never let go"
            if responses:
                error = _assert_openai_error(responses[0][0], responses[0][2], 408)
                assert error["code"] == "request_timeout"
                _, closed = _read(sock, 1, 1)
                assert closed
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_trickling_a_request_is_not_cut_while_it_makes_progress(port: int, key: str) -> None:
    raw = _post(b"/v1/chat/completions", _chat_body(), key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        step = len(raw) // 6 + 1
        for i in range(0, len(raw), step):
            sock.sendall(raw[i:i + step])
            time.sleep(CLIENT_TIMEOUT * 0.4)
        responses, _ = _read(sock, 1, 3)
    assert responses and responses[0][0] == 200


def test_a_long_answer_is_not_cut_by_the_client_timeout(client: httpx.Client) -> None:
    # 50 events 20 ms apart: 1 s, twice the client timeout, during which the client sends nothing.
    with client.stream("POST", "/v1/chat/completions", content=_chat_body(mode="slow", stream=True)) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    # 50 events and [DONE]: the usage event the gateway asked for is not the client's (it did not ask).
    assert lines[-1] == "data: [DONE]" and len(lines) == 51


def test_many_connections_closed_abruptly_mid_response(port: int, key: str, gateway: GatewayService, client: httpx.Client) -> None:
    slow = _post(b"/v1/chat/completions", _chat_body(mode="slow", stream=True), key)
    plain = _post(b"/v1/chat/completions", _chat_body(SIM), key)
    socks = []
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        sock.sendall(slow if i % 2 else plain + plain)
        socks.append(sock)
    for i, sock in enumerate(socks):
        if i % 3 == 0:
            sock.recv(100)  # some read a little first
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        sock.close()
    assert client.post("/v1/chat/completions", content=_chat_body()).status_code == 200
    assert _settled(gateway) == 0


def test_a_client_pipelining_without_end_is_bounded(port: int, key: str, client: httpx.Client) -> None:
    # The first request takes a second to answer; behind it, 30 KB requests as fast as they go.
    first = _post(b"/v1/chat/completions", _chat_body(mode="slow", stream=True), key)
    big = _post(b"/v1/chat/completions", json.dumps({"model": SCRIPTED, "prompt": "x" * 30_000}).encode(), key)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(first)
        sock.setblocking(False)
        sent, blocked, offset = 0, 0, 0
        deadline = time.monotonic() + 0.7  # while the first is still being answered
        while sent < 3000 and time.monotonic() < deadline:
            try:
                offset += sock.send(big[offset:])  # whole requests, one after the other
            except BlockingIOError:
                blocked += 1
                time.sleep(0.005)
                continue
            if offset == len(big):
                sent, offset = sent + 1, 0
        # The gateway stopped reading (else 90 MB would have gone in), and serves others meanwhile.
        assert blocked and sent < 1000, sent
        assert client.post("/v1/chat/completions", content=_chat_body()).status_code == 200


def test_a_client_that_half_closes_after_its_requests_gets_its_answers(port: int, key: str) -> None:
    one = _post(b"/v1/chat/completions", _chat_body(), key)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(one + one)
        sock.shutdown(socket.SHUT_WR)
        responses, closed = _read(sock, 3, 3)
    assert [r[0] for r in responses] == [200, 200] and closed


# -- hypothesis bodies ----------------------------------------------------------------------

_junk = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_models = st.sampled_from([SIM, SCRIPTED, "nope", "", " ", "qwen3-0-6b-instruct\x00", "ü" * 3]) | _junk
_messages = st.one_of(
    _junk,
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "🤖"]) | _junk, "content": st.text(max_size=40) | _junk}
        ),
        max_size=3,
    ),
)
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": _models,
        "messages": _messages,
        "prompt": st.text(max_size=40) | _junk,
        "max_tokens": st.integers(min_value=-(10**20), max_value=10**20) | _junk,
        "max_completion_tokens": st.integers(min_value=-5, max_value=10**6) | _junk,
        "stream": st.booleans() | _junk,
        "stream_options": _junk | st.fixed_dictionaries({"include_usage": _junk}),
        "temperature": _junk,
        "mode": st.sampled_from(["ok", "no-usage", "huge-usage", "negative-usage"]) | _junk,
    },
)


def _check_fuzzed(client: httpx.Client, path: str, body: object, raw: bytes | None = None) -> None:
    content = raw if raw is not None else json.dumps(body).encode()
    response = client.post(path, content=content)
    status = response.status_code
    assert status < 500, (status, response.text[:300], content[:300])
    if status >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        error = response.json()["error"]
        assert isinstance(error, (dict, str))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@seed(20240611)
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(body=_bodies)
def test_fuzzed_json_bodies_never_get_a_5xx(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    _check_fuzzed(client, path, body)


@seed(7)
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(raw=st.binary(max_size=200) | _junk.map(lambda v: json.dumps(v).encode()) | st.text(max_size=50).map(lambda s: s.encode("utf-16")))
def test_fuzzed_raw_bodies_never_get_a_5xx(client: httpx.Client, raw: bytes) -> None:
    _check_fuzzed(client, "/v1/chat/completions", None, raw)


def test_pathological_json_is_a_400(client: httpx.Client) -> None:
    for raw in (b"[" * 30_000 + b"]" * 30_000, b'{"model": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
                b'{"model": "scripted", "max_tokens": ' + b"9" * 5000 + b"}", b'{"a": "\\ud800"}', b"\xef\xbb\xbf{}"):
        response = client.post("/v1/chat/completions", content=raw)
        assert response.status_code in (400, 422), (response.status_code, response.text[:200])
        assert set(response.json()["error"]) >= {"message", "type", "code"}


def test_huge_max_tokens_is_reserved_and_released(client: httpx.Client, gateway: GatewayService) -> None:
    spent_before = _spent(gateway)[0]
    response = client.post("/v1/chat/completions", content=_chat_body(max_tokens=10**18))
    assert response.status_code == 200
    assert _spent(gateway) == (spent_before + USAGE_TOTAL, 0)


# -- backends that misbehave ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "stream", "statuses"),
    [
        ("garbage", False, {502}),
        ("close-mid-body", False, {502}),
        ("half-head", False, {504}),
        ("bad-status", False, {502}),
        ("continue", False, {502}),
        ("no-usage", False, {200}),
        ("extra-answer", False, {200}),
        ("late-extra-answer", False, {200}),
        ("invalid-json", False, {200, 502}),
        ("huge-usage", False, {200, 502}),
        ("big-usage", False, {200, 502}),
        ("negative-usage", False, {200, 502}),
        ("float-usage", False, {200, 502}),
        ("garbage", True, {502}),
        ("stream-no-usage", True, {200}),
        ("stream-huge-usage", True, {200}),
    ],
)
def test_a_misbehaving_backend_is_502_or_passed_through_with_a_sane_charge(
    client: httpx.Client, gateway: GatewayService, mode: str, stream: bool, statuses: set[int]
) -> None:
    body = _chat_body(mode=mode, stream=stream)
    # At most the request's worst cost (max_tokens + the prompt at a byte a token): what a call
    # is charged when nothing usable came back; a few events more for streams.
    ceiling = 5 + len(body) + 10
    for attempt in range(2):  # a new backend connection, then a kept-alive one (the fast path)
        spent_before = _spent(gateway)[0]
        response = client.post("/v1/chat/completions", content=body)
        assert response.status_code in statuses, (mode, attempt, response.status_code, response.text[:200])
        if response.status_code >= 500:
            assert SCRIPTED in _assert_openai_error(response.status_code, response.content, 502, 504)["message"]
        spent, reserved = _spent(gateway)
        assert reserved == 0
        assert 0 <= spent - spent_before <= ceiling, (mode, spent - spent_before)
        if mode == "late-extra-answer":
            time.sleep(0.1)  # let the unsolicited answer reach the idle connection first
        # A good call right after (on whatever connection the pool has left) gets its own answer.
        good = client.post("/v1/chat/completions", content=_chat_body())
        assert good.status_code == 200 and good.json()["usage"]["total_tokens"] == USAGE_TOTAL


def test_a_stream_cut_by_the_backend_is_cut_for_the_client_and_charged_sanely(
    client: httpx.Client, gateway: GatewayService
) -> None:
    spent_before = _spent(gateway)[0]
    body = _chat_body(mode="stream-cut", stream=True)
    with pytest.raises(httpx.HTTPError), client.stream("POST", "/v1/chat/completions", content=body) as response:
        assert response.status_code == 200
        list(response.iter_lines())
    spent = _spent(gateway)[0]
    assert 3 <= spent - spent_before <= 100


# -- after everything -----------------------------------------------------------------------


def test_zz_after_everything_the_gateway_serves_and_leaks_nothing(
    world: dict[str, Any], client: httpx.Client, gateway: GatewayService, key: str, log_lines: list[str]
) -> None:
    for model in (SIM, SCRIPTED):
        response = client.post("/v1/chat/completions", content=_chat_body(model))
        assert response.status_code == 200 and key not in response.text
    with client.stream("POST", "/v1/chat/completions", content=_chat_body(SIM, stream=True)) as response:
        assert response.status_code == 200 and "[DONE]" in response.read().decode()
    assert _settled(gateway) == 0
    assert client.get("/metrics").status_code == 404  # not on the model port
    metrics = httpx.get(gateway.metrics_url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and 'authorized_hits{limitador_namespace="local/maas-models",model="scripted",team="t1",user="alice"}' in metrics.text
    assert key not in metrics.text
    assert not any(key in line for line in log_lines)
    assert not any(world["simulator_token"] in line for line in log_lines)
    assert not any(key_sha256(key) in line for line in log_lines)
