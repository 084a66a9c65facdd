"""The gateway's callback-driven path: model calls on kept-alive backend connections.

The first call to a backend opens a connection (the coroutine path); later calls reuse it and
are driven by the connection's parser callbacks. These tests warm the connection first, then
check that the reused path keeps the same outcomes: timeouts, retries on a connection the
backend closed, streams cut mid-way, client disconnects, refusals, split reads, pipelining.
The backend is a scripted HTTP responder on 127.0.0.1 (the body's "mode" says what to do).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import httptools
import httpx
import pytest

from local.gateway import GatewayService
from local.gateway.loopthread import LoopThread
from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.settings import Settings
from shared.store.base import ApiKey, Team
from shared.store.sqlite import SqliteStore

MODEL = "scripted"
USAGE_TOTAL = 8
_REPLY = json.dumps({
    "id": "x", "object": "chat.completion", "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "a b c d e"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": USAGE_TOTAL},
}).encode()


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Scripted(asyncio.Protocol):
    """One backend connection; `seen` is shared so that "close-once" closes only once."""

    def __init__(self, seen: set[str], connections: list[int]) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._body = b""
        self._seen = seen
        connections.append(1)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._body = b""

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().create_task(self._answer(json.loads(self._body)))

    async def _answer(self, request: dict[str, object]) -> None:
        transport = self._transport
        assert transport is not None
        mode = str(request.get("mode", "ok"))
        if mode == "stall":
            return
        if mode == "close-once" and mode not in self._seen:
            self._seen.add(mode)
            transport.close()
            return
        if mode == "error":
            body = b'{"error":{"message":"bad","type":"invalid_request_error"}}'
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            return
        if mode == "split":
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_REPLY))
            for i in range(0, len(_REPLY), 40):
                await asyncio.sleep(0.01)
                transport.write(_REPLY[i:i + 40])
            return
        if mode.startswith("stream"):
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            count = 40 if mode == "stream-slow" else 3
            for i in range(count):
                transport.write(_chunk(_event({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]})))
                await asyncio.sleep(0.02 if mode == "stream-slow" else 0.005)
            if mode == "stream-stall":
                return
            usage = request.get("stream_options") == {"include_usage": True}
            if usage:
                transport.write(_chunk(_event({"choices": [], "usage": {"total_tokens": USAGE_TOTAL}})))
            transport.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            return
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(_REPLY), _REPLY))


class ScriptedBackend:
    def __init__(self) -> None:
        self._thread = LoopThread("scripted-backend")
        self._server: asyncio.AbstractServer | None = None
        self.connections: list[int] = []
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self.port = self._thread.call(self._listen)

    async def _listen(self) -> int:
        seen: set[str] = set()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Scripted(seen, self.connections), "127.0.0.1", 0
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()

    def stop(self) -> None:
        self._thread.stop(self._close)


@pytest.fixture
def backend() -> Iterator[ScriptedBackend]:
    server = ScriptedBackend()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "maas.db")
    yield store
    store.close()


TEAM = Team("t1", "t1", "", "t1", 10_000, "1h", "user", datetime.now(timezone.utc))


@pytest.fixture
def api_key(store: SqliteStore) -> str:
    store.create_team(team=TEAM)
    key = generate_api_key()
    store.create_key(
        key=ApiKey(secret_name_for("alice", "t1"), key_sha256(key), "t1", "alice", "alice@example.com",
                   "member", "active", datetime.now(timezone.utc)),
        api_key=key,
    )
    return key


@pytest.fixture
def gateway(tmp_path: Path, store: SqliteStore, backend: ScriptedBackend) -> Iterator[GatewayService]:
    models = tmp_path / "models.yaml"
    # The context declared: the gateway does not ask this backend for it (GET /v1/models, one
    # more connection than the tests count).
    models.write_text(f"models:\n  - name: {MODEL}\n    url: http://127.0.0.1:{backend.port}/v1\n    max_context: 4096\n")
    service = GatewayService(
        Settings(gateway_port=0, data_dir=tmp_path / "data", models_file=models, upstream_timeout_s=0.3),  # type: ignore[call-arg]
        store,
    )
    service.start()
    yield service
    service.stop()


def _body(mode: str = "ok", **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "mode": mode, **extra}


def _warm(client: httpx.Client, api_key: str) -> None:
    """One plain call, so that the next one finds a kept-alive backend connection."""
    response = client.post("/v1/chat/completions", json=_body(), headers={"Authorization": f"APIKEY {api_key}"})
    assert response.status_code == 200


def _state(gateway: GatewayService) -> tuple[int, int]:
    return gateway.limiter.state(team=TEAM, user_id="alice")


@pytest.fixture
def client(gateway: GatewayService, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10, headers={"Authorization": f"APIKEY {api_key}"}) as client:
        _warm(client, api_key)
        yield client


def test_reused_connection_serves_plain_calls_and_counts_usage(
    client: httpx.Client, gateway: GatewayService, backend: ScriptedBackend
) -> None:
    for _ in range(5):
        response = client.post("/v1/chat/completions", json=_body())
        assert response.status_code == 200 and response.json()["usage"]["total_tokens"] == USAGE_TOTAL
        assert response.headers["X-RateLimit-Limit"] == "10000"
    assert len(backend.connections) == 1  # all on the warmed connection
    assert _state(gateway) == (6 * USAGE_TOTAL, 0)


def test_reused_connection_timeout_is_504_and_charges_the_worst_cost(
    client: httpx.Client, gateway: GatewayService
) -> None:
    spent_before = _state(gateway)[0]
    started = time.monotonic()
    response = client.post("/v1/chat/completions", json=_body("stall"))
    assert response.status_code == 504 and MODEL in response.json()["error"]["message"]
    assert 0.25 <= time.monotonic() - started < 2
    # Sent, and nothing back: charged its reservation (max_tokens 5 + the body's bytes), not 0.
    assert _state(gateway) == (spent_before + 5 + len(response.request.content), 0)
    assert client.post("/v1/chat/completions", json=_body()).status_code == 200  # still serving


def test_a_kept_alive_connection_the_backend_closed_is_retried(
    client: httpx.Client, backend: ScriptedBackend
) -> None:
    response = client.post("/v1/chat/completions", json=_body("close-once"))
    assert response.status_code == 200 and response.json()["usage"]["total_tokens"] == USAGE_TOTAL
    assert len(backend.connections) == 2


def test_backend_refusal_is_passed_through_and_charges_nothing(
    client: httpx.Client, gateway: GatewayService
) -> None:
    spent_before = _state(gateway)[0]
    response = client.post("/v1/chat/completions", json=_body("error"))
    assert response.status_code == 400 and response.json()["error"]["message"] == "bad"
    assert _state(gateway) == (spent_before, 0)


def test_a_response_split_over_reads_arrives_whole(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=_body("split"))
    assert response.status_code == 200 and response.content == _REPLY


def test_reused_connection_stream_gets_usage_injected_and_counted(
    client: httpx.Client, gateway: GatewayService
) -> None:
    spent_before = _state(gateway)[0]
    with client.stream("POST", "/v1/chat/completions", json=_body("stream", stream=True)) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    # Counted from the usage event the gateway asked for, which the client (not asking) is not sent.
    assert lines[-1] == "data: [DONE]" and not any('"total_tokens"' in line for line in lines)
    assert _state(gateway) == (spent_before + USAGE_TOTAL, 0)
    spent_before = _state(gateway)[0]
    asking = _body("stream", stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=asking) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"total_tokens": 8' in lines[-2]
    assert _state(gateway) == (spent_before + USAGE_TOTAL, 0)


def test_reused_connection_stream_stall_cuts_the_response_and_settles(
    client: httpx.Client, gateway: GatewayService
) -> None:
    spent_before = _state(gateway)[0]
    with pytest.raises(httpx.HTTPError):
        with client.stream("POST", "/v1/chat/completions", json=_body("stream-stall", stream=True)) as response:
            assert response.status_code == 200
            list(response.iter_lines())
    spent, reserved = _state(gateway)
    assert reserved == 0 and spent - spent_before >= 3  # the prompt estimate and the 3 events


def test_reused_connection_client_disconnect_settles(
    client: httpx.Client, gateway: GatewayService
) -> None:
    spent_before = _state(gateway)[0]
    with client.stream("POST", "/v1/chat/completions", json=_body("stream-slow", stream=True)) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    # httpx gave the connection up unread, closing it; the gateway aborts the backend call.
    client.close()
    deadline = time.monotonic() + 3
    while _state(gateway)[1] and time.monotonic() < deadline:
        time.sleep(0.02)
    spent, reserved = _state(gateway)
    assert reserved == 0 and 1 <= spent - spent_before < 100


def test_pipelined_requests_are_answered_in_order(gateway: GatewayService, api_key: str) -> None:
    body = json.dumps(_body()).encode()
    one = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: APIKEY " + api_key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(one + health + one + health)
        received = b""
        while received.count(b"HTTP/1.1 ") < 4 or not received.endswith(b'{"status":"ok"}'):
            data = sock.recv(65536)
            assert data, received
            received += data
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 4
    assert received.index(b'"total_tokens"') < received.index(b'{"status":"ok"}')
    assert received.rindex(b'"total_tokens"') < received.rindex(b'{"status":"ok"}')
