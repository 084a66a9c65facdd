"""What reaches the gateway's listeners, and what does not (issue 11, items 7 and 8).

- `/metrics` is on a listener of its own (MAAS_METRICS_PORT), not on the model port that every
  key holder reaches, so the model port does not list teams and users.
- The built-in simulator answers only requests carrying its internal token, which only the
  models file's simulator entries send: nothing reaches it without the gateway.
- The gateway serves at most MAAS_GATEWAY_MAX_CONNECTIONS clients at once; the rest wait in the
  listen queue and are served as others leave.
- A model call with a missing or bad key is refused (401) after its head, before its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from local.gateway import GatewayService
from local.gateway.loopthread import LoopThread
from local.gateway.proxy import Gateway
from local.gateway.server import Listener, Request, Responder, serve
from local.simulator import SimulatorService
from shared.errors import MaasError
from shared.keymaterial import generate_admin_key, generate_api_key, key_sha256, secret_name_for
from shared.modelsfile import load_models_file
from shared.settings import Settings
from shared.store.base import ApiKey, Team
from shared.store.sqlite import SqliteStore
from tests.records import T0
from tests.runtime import start_runtime
from tests.waiting import eventually

MODEL = "qwen3-0-6b-instruct"
TEAM_ID = "zebra-crossing-team"  # a name that appears nowhere else in a response
USER_ID = "okapi-user"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorService]:
    service = SimulatorService(Settings(simulator_port=0))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "maas.db")
    store.create_team(team=Team(TEAM_ID, TEAM_ID, "", TEAM_ID, 100_000, "1h", "user", T0))  # type: ignore[arg-type]
    yield store
    store.close()


@pytest.fixture
def api_key(store: SqliteStore) -> str:
    key = generate_api_key()
    store.create_key(
        key=ApiKey(secret_name_for(USER_ID, TEAM_ID), key_sha256(key), TEAM_ID, USER_ID, f"{USER_ID}@example.com",
                   "member", "active", datetime.now(timezone.utc)),
        api_key=key,
    )
    return key


def _start_gateway(tmp_path: Path, store: SqliteStore, simulator: SimulatorService, **settings: Any) -> GatewayService:
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - name: {MODEL}\n    url: {simulator.url}/v1\n"
                      f"    api_key: {simulator.token.get_secret_value()}\n")
    config = Settings(**{"gateway_port": 0, "metrics_port": 0, "data_dir": tmp_path / "data", "models_file": models,
                         **settings})
    service = GatewayService(config, store)
    service.start()
    return service


@pytest.fixture
def gateway(tmp_path: Path, store: SqliteStore, simulator: SimulatorService) -> Iterator[GatewayService]:
    service = _start_gateway(tmp_path, store, simulator)
    yield service
    service.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# Per socket: what was received past the last response (pipelined answers come together).
_UNREAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def _response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """The next whole response (Content-Length bodies only) off a raw socket, within `timeout`."""
    sock.settimeout(timeout)
    data = _UNREAD.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    _UNREAD[sock] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def _silent(sock: socket.socket, seconds: float) -> bool:
    """Whether nothing arrives on `sock` for `seconds` (and it is not closed)."""
    sock.settimeout(seconds)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        return True
    return False


def _closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


# -- /metrics on its own listener -------------------------------------------------------------


def test_metrics_are_on_their_own_port_and_the_model_port_lists_no_one(gateway: GatewayService, api_key: str) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as models_port:
        called = models_port.post("/v1/chat/completions", json=HELLO, headers={"Authorization": f"APIKEY {api_key}"})
        assert called.status_code == 200, called.text
        # Any key holder reaches this port: it answers /metrics like any unknown path, naming no one.
        for headers in ({}, {"Authorization": f"APIKEY {api_key}"}):
            hidden = models_port.get("/metrics", headers=headers)
            assert hidden.status_code == 404
            assert set(hidden.json()) == {"error"} and hidden.json()["error"]["type"] == "invalid_request_error"
            assert TEAM_ID not in hidden.text and USER_ID not in hidden.text
    assert gateway.metrics_url != gateway.url
    with httpx.Client(base_url=gateway.metrics_url, timeout=10) as metrics_port:
        shown = metrics_port.get("/metrics")
        assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/plain")
        assert (f'authorized_calls{{limitador_namespace="local/maas-models",team="{TEAM_ID}",user="{USER_ID}"}} 1'
                in shown.text.splitlines())
        assert api_key not in shown.text
        assert metrics_port.get("/health").json() == {"status": "ok"}
        # Nothing else: not the model calls (they would bypass nothing, but have no place here).
        for method, path, status in (("GET", "/nope", 404), ("POST", "/v1/chat/completions", 404),
                                     ("GET", "/v1/models", 404), ("POST", "/metrics", 405), ("DELETE", "/health", 405)):
            refused = metrics_port.request(method, path, json=HELLO if method == "POST" else None)
            assert refused.status_code == status, (method, path)
            assert set(refused.json()["error"]) >= {"message", "type", "code"}


def test_a_busy_metrics_port_is_an_error_naming_it(tmp_path: Path, store: SqliteStore, simulator: SimulatorService) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        with pytest.raises(OSError) as raised:
            _start_gateway(tmp_path, store, simulator, metrics_port=port)
    assert f"metrics port {port}" in str(raised.value) and "MAAS_METRICS_PORT" in str(raised.value)
    # The model port it had bound is free again: a second try on the same settings works.
    service = _start_gateway(tmp_path, store, simulator)
    service.stop()


def test_make_run_serves_metrics_apart_and_its_simulator_only_through_the_gateway(tmp_path: Path) -> None:
    admin_key = generate_admin_key()
    runtime = start_runtime(tmp_path / ".maas", env={"ADMIN_KEY": admin_key})
    try:
        assert {"gateway", "metrics", "simulator"} <= set(runtime.urls), runtime.text
        with httpx.Client(base_url=runtime.admin_url, verify=False, timeout=30,
                          headers={"Authorization": f"ADMIN {admin_key}"}) as admin:
            assert admin.post("/teams", json={"team_id": TEAM_ID}).status_code == 201
            key = admin.post(f"/teams/{TEAM_ID}/keys", json={"user_id": USER_ID}).json()["api_key"]
            # The admin API's listing probes the simulator with its token: ready.
            assert all(m["ready"] for m in admin.get("/models").json()["models"])
        through = httpx.post(runtime.urls["gateway"] + "/v1/chat/completions", json=HELLO, timeout=30,
                             headers={"Authorization": f"APIKEY {key}"})
        assert through.status_code == 200 and through.json()["usage"]["total_tokens"] > 0
        # Straight to the simulator, even with a valid API key: refused, so no limit is bypassed.
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            direct = httpx.post(runtime.urls["simulator"] + "/v1/chat/completions", json=HELLO, headers=headers)
            assert direct.status_code == 401 and direct.json()["error"]["type"] == "authentication_error"
        assert httpx.get(runtime.urls["gateway"] + "/metrics").status_code == 404
        metrics = httpx.get(runtime.urls["metrics"] + "/metrics")
        assert metrics.status_code == 200 and f'team="{TEAM_ID}",user="{USER_ID}"' in metrics.text
    finally:
        assert runtime.stop() == 0
    assert "Traceback" not in runtime.text and key not in runtime.text


# -- the simulator's token, from the models file ------------------------------------------------


def test_the_simulators_token_goes_only_to_entries_naming_its_port(tmp_path: Path) -> None:
    token = SecretStr("internal-token")
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - {name: placeholder, url: 'http://127.0.0.1:{simulator_port}/v1'}\n"
        "  - {name: localhost, url: 'http://localhost:{simulator_port}/v1'}\n"
        "  - {name: own-key, url: 'http://127.0.0.1:{simulator_port}/v1', api_key: mine}\n"
        "  - {name: by-number, url: 'http://127.0.0.1:8123/v1'}\n"
        "  - {name: elsewhere, url: 'http://gpu-box:{simulator_port}/v1'}\n"
    )
    backends = {b.name: b for b in load_models_file(path, simulator_port=8123, simulator_token=token)}
    keys = {name: b.api_key.get_secret_value() if b.api_key else None for name, b in backends.items()}
    assert keys == {"placeholder": "internal-token", "localhost": "internal-token", "own-key": "mine",
                    "by-number": None, "elsewhere": None}
    assert all(b.url.endswith(":8123/v1") for b in backends.values())
    # Without a token (a gateway with no simulator of its own) nothing is added.
    assert all(b.api_key is None for b in load_models_file(None, simulator_port=8123))
    assert "internal-token" not in repr(backends)


def test_a_models_file_naming_the_simulators_port_by_number_is_refused_by_it(
    tmp_path: Path, store: SqliteStore, simulator: SimulatorService, api_key: str
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - name: {MODEL}\n    url: {simulator.url}/v1\n")  # no token
    service = GatewayService(Settings(gateway_port=0, metrics_port=0, data_dir=tmp_path / "data",  # type: ignore[call-arg]
                                      models_file=models), store)
    service.start()
    try:
        reply = httpx.post(service.url + "/v1/chat/completions", json=HELLO, headers={"Authorization": f"APIKEY {api_key}"})
        # The simulator's refusal, relayed; it says how to point at it.
        assert reply.status_code == 401 and "{simulator_port}" in reply.json()["error"]["message"]
    finally:
        service.stop()


# -- the connection cap -------------------------------------------------------------------------

_HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"


def _ok(request: Request, responder: Responder) -> None:
    responder.send(200, {"Content-Type": "application/json"}, b'{"status":"ok"}')


def _reject(responder: Responder, error: MaasError | int, message: str) -> None:
    status = error if isinstance(error, int) else error.status
    responder.send(status, {"Content-Type": "application/json"}, json.dumps({"error": message}).encode())


@pytest.fixture
def capped() -> Iterator[tuple[LoopThread, Listener]]:
    """The server alone, at most 3 connections, on a loop thread like the gateway's."""
    thread = LoopThread("capped")
    thread.start()

    async def listen() -> Listener:
        return await serve(_ok, _reject, host="127.0.0.1", port=0, max_body=1024, max_connections=3)

    listener = thread.call(listen)
    yield thread, listener

    async def close() -> None:
        listener.close()

    thread.stop(close)


def _connections(thread: LoopThread, listener: Listener) -> int:
    async def read() -> int:
        return listener.connections

    return thread.call(read)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_beyond_the_cap_a_connection_waits_until_one_closes(capped: tuple[LoopThread, Listener]) -> None:
    thread, listener = capped
    port = int(listener.sockets[0].getsockname()[1])
    held = [_connect(port) for _ in range(3)]
    try:
        for sock in held:  # each accepted and served, then kept open (idle, kept alive)
            sock.sendall(_HEALTH)
            assert _response(sock, 5)[0] == 200
        assert _connections(thread, listener) == 3
        waiting = _connect(port)  # the kernel completes the handshake: it waits in the queue
        held.append(waiting)
        waiting.sendall(_HEALTH)
        assert _silent(waiting, 0.5), "a 4th connection was served while 3 were open"
        assert _connections(thread, listener) == 3
        for sock in held[:3]:  # the ones in are still served meanwhile
            sock.sendall(_HEALTH)
            assert _response(sock, 5)[0] == 200
        held.pop(0).close()
        assert _response(waiting, 5)[0] == 200  # accepted once one left
        assert _connections(thread, listener) == 3
    finally:
        for sock in held:
            sock.close()


def test_the_cap_holds_under_a_burst_of_connects(capped: tuple[LoopThread, Listener]) -> None:
    thread, listener = capped
    port = int(listener.sockets[0].getsockname()[1])
    most = [0]

    async def watch() -> None:
        while True:
            most[0] = max(most[0], listener.connections)
            await asyncio.sleep(0.001)

    watcher = asyncio.run_coroutine_threadsafe(watch(), thread.loop)
    statuses: list[int] = []

    def client() -> None:
        for _ in range(5):
            with _connect(port) as sock:
                sock.sendall(_HEALTH)
                statuses.append(_response(sock, 10)[0])
                time.sleep(0.005)  # hold it a little, so that the connections overlap

    clients = [threading.Thread(target=client) for _ in range(12)]
    try:
        for each in clients:
            each.start()
        for each in clients:
            each.join(30)
    finally:
        watcher.cancel()
    assert statuses == [200] * 60  # every one served, in its turn
    assert 1 <= most[0] <= 3, most[0]
    deadline = time.monotonic() + 3
    while _connections(thread, listener) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _connections(thread, listener) == 0


def test_the_gateway_applies_its_connection_cap(tmp_path: Path, store: SqliteStore, simulator: SimulatorService) -> None:
    service = _start_gateway(tmp_path, store, simulator, gateway_max_connections=2)
    port = _port(service.url)
    held = [_connect(port) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(_HEALTH)
            assert _response(sock, 5)[0] == 200
        third = _connect(port)
        held.append(third)
        third.sendall(_HEALTH)
        assert _silent(third, 0.5)
        # The metrics listener has its own connections: not held up by the model port's.
        assert httpx.get(service.metrics_url + "/health", timeout=5).status_code == 200
        held.pop(0).close()
        assert _response(third, 5)[0] == 200
    finally:
        for sock in held:
            sock.close()
        service.stop()


# -- a stop ------------------------------------------------------------------------------------


def test_a_stop_cuts_off_what_is_left_and_lets_each_handler_clean_up_first() -> None:
    """Once the grace period ends (here: hurried), the connections left are aborted: a coroutine
    handler is cancelled (its `finally` runs), a callback-driven one gets `on_cancel`, and both
    before `shutdown` returns, which leaves the loop nothing open to close."""
    ended: list[str] = []

    async def stream_forever(responder: Responder) -> None:
        responder.start(200, {"Content-Type": "text/event-stream"})
        try:
            while True:
                await responder.write(b"data: x\n\n")
                await asyncio.sleep(0.01)
        finally:
            ended.append("task")

    def handler(request: Request, responder: Responder) -> Any:
        if request.path == b"/stream":
            return stream_forever(responder)
        responder.on_cancel = lambda: ended.append("callback")  # never answers
        return None

    thread = LoopThread("stopping")
    thread.start()
    listener = thread.call(lambda: serve(handler, _reject, host="127.0.0.1", port=0, max_body=1024))
    port = int(listener.sockets[0].getsockname()[1])
    clients = [_connect(port), _connect(port)]
    try:
        clients[0].sendall(b"GET /stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        clients[1].sendall(b"GET /waits HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert clients[0].recv(65536).startswith(b"HTTP/1.1 200")
        assert eventually(lambda: _connections(thread, listener) == 2)

        async def stop() -> int:
            asyncio.get_running_loop().call_later(0.3, listener.hurry)  # as a second Ctrl-C does
            return await listener.shutdown(60)

        started = time.monotonic()
        assert thread.call(stop) == 2  # both cut off
        assert time.monotonic() - started < 5
        assert sorted(ended) == ["callback", "task"]
        assert _connections(thread, listener) == 0
        for sock in clients:  # cut off: reset (or closed), not left hanging
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
    finally:
        for sock in clients:
            sock.close()
        thread.stop()


# -- 401 before the body ------------------------------------------------------------------------


def _head(key: str | None, length: int, path: bytes = b"/v1/chat/completions") -> bytes:
    auth = b"" if key is None else b"Authorization: APIKEY " + key.encode() + b"\r\n"
    return (b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length)


@pytest.fixture
def head_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The paths Gateway.check_head was called for, by gateways started after this fixture."""
    calls: list[bytes] = []
    original = Gateway.check_head

    def counting(self: Gateway, method: bytes, path: bytes, headers: dict[bytes, bytes]) -> Any:
        calls.append(path)
        return original(self, method, path, headers)

    monkeypatch.setattr(Gateway, "check_head", counting)
    return calls


@pytest.fixture
def checked_gateway(head_checks: list[bytes], tmp_path: Path, store: SqliteStore,
                    simulator: SimulatorService) -> Iterator[GatewayService]:
    service = _start_gateway(tmp_path, store, simulator)
    yield service
    service.stop()


@pytest.mark.parametrize("key", [None, "maas_not-a-key", "wrong"])
def test_a_bad_key_is_refused_before_a_10mb_body_is_sent(checked_gateway: GatewayService, key: str | None) -> None:
    with _connect(_port(checked_gateway.url)) as sock:
        sock.sendall(_head(key, 10_000_000) + b'{"model": "')  # and never the rest
        status, headers, body = _response(sock, 3)
        assert status == 401 and headers.get("connection") == "close"
        error = json.loads(body)["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        # What the client still sends is discarded, not read as a request, then the connection ends.
        try:
            sock.sendall(b" " * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _closed(sock, 3)


def test_with_a_good_key_the_body_is_read_and_the_call_served(
    checked_gateway: GatewayService, api_key: str, head_checks: list[bytes]
) -> None:
    port = _port(checked_gateway.url)
    with _connect(port) as sock:
        sock.sendall(_head(api_key, 10_000_000))
        assert _silent(sock, 0.5), "a good key's request was answered before its body came"
    head_checks.clear()
    body = json.dumps(HELLO).encode()
    with _connect(port) as sock:
        # Three pipelined requests: a call, a refused call, never reached: answered in order.
        sock.sendall(_head(api_key, len(body)) + body + _HEALTH + _head("wrong", 10_000_000))
        status, _, reply = _response(sock, 10)
        assert status == 200 and json.loads(reply)["usage"]["total_tokens"] > 0
        assert _response(sock, 5)[0] == 200
        assert _response(sock, 5)[0] == 401
    # One check per request, no more: it is on the hot path.
    assert head_checks == [b"/v1/chat/completions", b"/health", b"/v1/chat/completions"]
    with httpx.Client(base_url=checked_gateway.url, timeout=10) as client:
        served = client.post(f"/{MODEL}/v1/chat/completions", json=HELLO, headers={"Authorization": f"Bearer {api_key}"})
        assert served.status_code == 200
        assert client.post(f"/{MODEL}/v1/chat/completions", json=HELLO).status_code == 401
