"""The admin API's server under idle, slow and many clients, in the real runtime (`python -m
local serve`, as `make run` starts it): no client can hold up another, every wait is bounded,
and threads and descriptors stay flat.

The runtime's server settings are shortened here (idle 2 s, head and body 3 s, 4 threads) so
the timeouts can be watched in a test's time; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.keymaterial import generate_admin_key
from tests.runtime import Runtime, start_runtime
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(90)

IDLE_S, HEAD_S, BODY_S, THREADS = 2.0, 3.0, 3.0, 4
_SERVER_ENV = {
    "MAAS_ADMIN_IDLE_TIMEOUT": str(IDLE_S),
    "MAAS_ADMIN_HEADER_TIMEOUT": str(HEAD_S),
    "MAAS_ADMIN_BODY_TIMEOUT": str(BODY_S),
    "MAAS_ADMIN_THREADS": str(THREADS),
}
_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_admin_key()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, admin_key: str) -> Iterator[Runtime]:
    started = start_runtime(tmp_path_factory.mktemp("admin-server"), env={"ADMIN_KEY": admin_key, **_SERVER_ENV})
    try:
        yield started
    finally:
        assert started.stop() == 0, started.text


def _address(runtime: Runtime) -> tuple[str, int]:
    host, port = runtime.admin_url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def _get_teams(runtime: Runtime, admin_key: str, *, timeout: float = 2.0) -> tuple[int, float]:
    """An authenticated GET /teams on a fresh TLS connection: (status, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(_address(runtime), timeout=timeout) as raw:
        with _TLS.wrap_socket(raw) as tls:
            tls.sendall(f"GET /teams HTTP/1.1\r\nHost: localhost\r\nAuthorization: ADMIN {admin_key}\r\n"
                        "Connection: close\r\n\r\n".encode())
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
    return int(reply.split(b" ", 2)[1]), time.monotonic() - started


def _client_hello() -> bytes:
    """The first flight of a real TLS client, made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = _TLS.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the peer has closed `sock` (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ssl.SSLWantReadError:
        return False
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return True


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it (the admin server runs in a child of the runtime)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _threads(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/task")) for p in _tree(pid) if os.path.exists(f"/proc/{p}"))


def _descriptors(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in _tree(pid) if os.path.exists(f"/proc/{p}"))


def _admin_server_pids(runtime: Runtime) -> list[int]:
    return [p for p in _tree(runtime.process.pid) if p != runtime.process.pid]


# -- idle and half-open clients ---------------------------------------------------------------


def test_idle_connections_and_half_handshakes_block_no_one_and_are_closed(runtime: Runtime, admin_key: str) -> None:
    assert _get_teams(runtime, admin_key)[0] == 200
    hello = _client_hello()
    idle = [socket.create_connection(_address(runtime)) for _ in range(20)]
    half = [socket.create_connection(_address(runtime)) for _ in range(5)]
    for sock in half:
        sock.sendall(hello[: len(hello) // 2])
    opened = time.monotonic()
    try:
        for _ in range(5):
            status, took = _get_teams(runtime, admin_key)
            assert status == 200 and took < 2.0, took
            time.sleep(0.2)
        # Closed by the server once their time is up: the idle ones after the idle timeout, the
        # half handshakes after the head timeout (the clock starts at their first byte).
        assert eventually(lambda: all(_closed_by_server(s) for s in idle), timeout=IDLE_S + 3)
        assert eventually(lambda: all(_closed_by_server(s) for s in half), timeout=HEAD_S + 3)
        assert time.monotonic() - opened >= IDLE_S - 0.5  # not before their time either
        assert _get_teams(runtime, admin_key)[0] == 200
    finally:
        for sock in idle + half:
            sock.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /teams HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /teams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}",
])
def test_plain_http_on_the_tls_port_is_told_to_use_https(runtime: Runtime, admin_key: str,
                                                           request_bytes: bytes) -> None:
    # `curl http://127.0.0.1:8443/...`, a new user's first mistake: a plain-HTTP answer saying
    # what to do (as nginx's), not a reset; and the port still serves TLS to everyone else.
    with socket.create_connection(_address(runtime), timeout=5) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
            if len(answer) > 65536:
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert "https://" in json.loads(body)["error"]
    assert _get_teams(runtime, admin_key)[0] == 200


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(runtime: Runtime, admin_key: str) -> None:
    with socket.create_connection(_address(runtime), timeout=5) as raw, _TLS.wrap_socket(raw) as tls:
        tls.sendall(f"GET /health HTTP/1.1\r\nHost: localhost\r\nAuthorization: ADMIN {admin_key}\r\n\r\n".encode())
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        served = time.monotonic()
        tls.settimeout(IDLE_S + 3)
        with contextlib.suppress(ConnectionResetError, ssl.SSLEOFError):
            while tls.recv(65536):
                pass
        assert IDLE_S - 0.5 <= time.monotonic() - served <= IDLE_S + 2.5


# -- slow clients -----------------------------------------------------------------------------


def test_slowloris_clients_are_cut_after_the_head_timeout_and_stop_no_one(runtime: Runtime, admin_key: str) -> None:
    # More trickling clients than the server has threads: they must not take them.
    clients = []
    for _ in range(THREADS + 4):
        tls = _TLS.wrap_socket(socket.create_connection(_address(runtime), timeout=5))
        tls.sendall(b"GET /teams HTTP/1.1\r\n")
        clients.append(tls)
    started = time.monotonic()
    head = b"Host: localhost\r\nX-Slow: " + b"a" * 200
    cut: dict[int, float] = {}
    try:
        for index in range(int((HEAD_S + 4) / 0.1)):  # bounded: well past the head timeout
            for number, tls in enumerate(clients):
                if number in cut:
                    continue
                try:
                    tls.sendall(head[index % len(head): index % len(head) + 1])
                except OSError:
                    cut[number] = time.monotonic() - started
            if index % 10 == 0 and len(cut) < len(clients):
                status, took = _get_teams(runtime, admin_key)
                assert status == 200 and took < 2.0, took
            if len(cut) == len(clients):
                break
            time.sleep(0.1)
        # A send can still succeed just after the server closed; a read tells for sure.
        for number, tls in enumerate(clients):
            if number not in cut:
                tls.settimeout(2)
                with contextlib.suppress(OSError):
                    while tls.recv(65536):
                        pass
                cut[number] = time.monotonic() - started
        assert all(HEAD_S - 0.5 <= took <= HEAD_S + 3 for took in cut.values()), cut
    finally:
        for tls in clients:
            tls.close()


def test_bodies_that_never_come_hold_no_thread_and_get_408(runtime: Runtime, admin_key: str) -> None:
    auth = f"Authorization: ADMIN {admin_key}\r\nContent-Type: application/json\r\n"
    heads = [  # each promises a body and sends a byte of it, or none
        f"POST /teams HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 40\r\n\r\n{{",
        f"POST /teams HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n10\r\n{{",
        f"POST /teams HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 40\r\nExpect: 100-continue\r\n\r\n",
    ]
    clients = []
    for number in range(THREADS + 5):
        tls = _TLS.wrap_socket(socket.create_connection(_address(runtime), timeout=BODY_S + 4))
        tls.sendall(heads[number % len(heads)].encode())
        clients.append(tls)
    started = time.monotonic()
    try:
        status, took = _get_teams(runtime, admin_key)
        assert status == 200 and took < 2.0, took
        for tls in clients:
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := tls.recv(65536):
                    answer += chunk
            assert b"HTTP/1.1 408" in answer, answer[:200]
        assert BODY_S - 0.5 <= time.monotonic() - started <= BODY_S + 3
    finally:
        for tls in clients:
            tls.close()


def test_clients_that_never_close_their_side_stall_no_one(runtime: Runtime, admin_key: str) -> None:
    # Answered with Connection: close, they keep their side open; gunicorn's own gthread waits
    # up to 2 s for each on its one loop (util.close_graceful), which would add up to 12 s here.
    holders = []
    try:
        for _ in range(6):
            tls = _TLS.wrap_socket(socket.create_connection(_address(runtime), timeout=5))
            tls.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
            holders.append(tls)
        for _ in range(3):
            status, took = _get_teams(runtime, admin_key)
            assert status == 200 and took < 1.0, took
    finally:
        for tls in holders:
            tls.close()


# -- threads and descriptors ------------------------------------------------------------------


def test_threads_stay_bounded_while_many_clients_are_mid_request(runtime: Runtime, admin_key: str) -> None:
    for _ in range(THREADS * 2):  # every thread of the pool made once
        assert _get_teams(runtime, admin_key)[0] == 200
    before = _threads(runtime.process.pid)
    stalled = []
    try:
        for _ in range(40):
            tls = _TLS.wrap_socket(socket.create_connection(_address(runtime), timeout=5))
            tls.sendall(b"GET /teams HTTP/1.1\r\nHost: localh")
            stalled.append(tls)
        time.sleep(0.5)
        during = _threads(runtime.process.pid)
        assert during <= before + 2, (before, during)  # not one thread per connection
        status, took = _get_teams(runtime, admin_key)
        assert status == 200 and took < 2.0
    finally:
        for tls in stalled:
            tls.close()


def test_three_hundred_fresh_connections_leave_threads_and_descriptors_flat(runtime: Runtime, admin_key: str) -> None:
    for _ in range(20):  # warm: the pool's threads and the store's connections made
        assert _get_teams(runtime, admin_key)[0] == 200
    pid = runtime.process.pid
    assert eventually(lambda: _descriptors(pid) == _descriptors(pid), timeout=1)
    threads_before, fds_before = _threads(pid), _descriptors(pid)
    peak_threads = threads_before
    for number in range(300):
        assert _get_teams(runtime, admin_key, timeout=5)[0] == 200
        if number % 25 == 0:
            peak_threads = max(peak_threads, _threads(pid))
    # Connections the server has closed may take a moment to leave its descriptor table.
    assert eventually(lambda: _descriptors(pid) <= fds_before + 5, timeout=IDLE_S + 2), (fds_before, _descriptors(pid))
    threads_after = _threads(pid)
    assert peak_threads <= threads_before + 2 and threads_after <= threads_before + 2, (
        threads_before, peak_threads, threads_after)


def test_usage_sees_every_model_call_made_before_it_is_asked(runtime: Runtime, admin_key: str) -> None:
    # The gateway records in memory and flushes its ledger every 0.5 s; the admin API, in its
    # own process, has it flushed before it reads.
    admin = httpx.Client(base_url=runtime.admin_url, verify=False, timeout=10,
                         headers={"Authorization": f"ADMIN {admin_key}"})
    with admin, httpx.Client(base_url=runtime.urls["gateway"], timeout=10) as gateway:
        assert admin.post("/teams", json={"team_id": "counted"}).status_code == 201
        api_key = admin.post("/teams/counted/keys", json={"user_id": "u"}).json()["api_key"]
        spent = 0
        for _ in range(5):
            reply = gateway.post("/v1/chat/completions", headers={"Authorization": f"APIKEY {api_key}"}, json={
                "model": "qwen3-0-6b-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
            assert reply.status_code == 200, reply.text
            spent += reply.json()["usage"]["total_tokens"]
            assert admin.get("/teams/counted/usage").json()["total_token_usage"] == spent


# -- the process model: one command, stopped together ------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    return [p for p in _tree(pid) if p != pid and _ppid(p) == pid]


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_crashed_admin_server_stops_the_whole_runtime(tmp_path: Path) -> None:
    admin_key = generate_admin_key()
    runtime = start_runtime(tmp_path, env={"ADMIN_KEY": admin_key})
    try:
        servers = _admin_server_pids(runtime)
        assert servers, "the admin server runs in its own process, as in the image"
        [arbiter] = _children(runtime.process.pid)
        # A dead worker is replaced by gunicorn's arbiter, as in the image: still served.
        [worker] = _children(arbiter)
        os.kill(worker, signal.SIGKILL)
        assert eventually(lambda: _children(arbiter) not in ([], [worker]), timeout=15)

        def served() -> bool:
            try:
                return _get_teams(runtime, admin_key, timeout=5)[0] == 200
            except OSError:
                return False

        assert eventually(served, timeout=15)
        # A dead arbiter is the admin server gone: the runtime stops, all of it.
        servers = _admin_server_pids(runtime)
        os.kill(arbiter, signal.SIGKILL)
        code = runtime.process.wait(timeout=30)
        assert code != 0
        assert "admin API" in runtime.text and "Traceback" not in runtime.text
        assert eventually(lambda: not any(_alive(p) for p in servers), timeout=10)
        gateway = runtime.urls["gateway"].removeprefix("http://").rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((gateway[0], int(gateway[1])), timeout=2).close()
    finally:  # whatever failed above, nothing of this test outlives it
        for pid in [runtime.process.pid, *_admin_server_pids(runtime)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_the_admin_server_and_kill_9_of_the_runtime_takes_it_down_too(tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path / "term", env={"ADMIN_KEY": generate_admin_key()})
    servers = _admin_server_pids(runtime)
    try:
        assert runtime.stop() == 0 and "stopped." in runtime.text
        assert servers and not any(_alive(p) for p in servers)
    finally:
        if runtime.process.poll() is None:
            runtime.process.kill()

    killed = start_runtime(tmp_path / "kill", env={"ADMIN_KEY": generate_admin_key()})
    servers = _admin_server_pids(killed)
    try:
        assert servers
        killed.process.kill()
        killed.process.wait(timeout=10)
        assert eventually(lambda: not any(_alive(p) for p in servers), timeout=15)
        host, port = _address(killed)
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()
    finally:  # whatever failed above, nothing of this test outlives it
        for pid in [killed.process.pid, *servers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
