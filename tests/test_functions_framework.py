"""Each function target as its Knative Service runs it: alone, started by the image's command
(the Containerfile's CMD: functions-framework's app on the admin server, local/adminserver.py)."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import main
from shared.routes import CONSOLE, EVENT_TARGETS, HTTP_ROUTES, PAGES, ROUTES, route_for
from tests.runtime import ROOT

_SAMPLE = {"team_id": "some-team", "user_id": "some-user", "secret_name": "apikey-a-b-0011aabb", "name": "console.css"}


def test_routing_table_and_exported_targets_agree() -> None:
    route_targets = {route.target for route in ROUTES}
    assert len(route_targets) == len(ROUTES), "one target per API route"
    page_targets = {page.target for page in PAGES}
    assert page_targets == {CONSOLE} and not page_targets & route_targets, "the console's pages are its own"
    assert route_targets | page_targets <= set(main.__all__)
    assert set(main.__all__) <= route_targets | page_targets | set(EVENT_TARGETS)
    for name in main.__all__:
        assert callable(getattr(main, name))


def test_routing_table_has_no_ambiguous_routes() -> None:
    from shared.routes import resolve

    for route in HTTP_ROUTES:
        path = route.path.format(**_SAMPLE)
        assert resolve(route.method, path, HTTP_ROUTES)[0] is route


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_command(target: str, port: int) -> list[str]:
    """The Containerfile's CMD for `target` on 127.0.0.1:`port`, as its shell expands it, with
    this venv's python."""
    (cmd,) = re.findall(r"^CMD exec (.+)$", (ROOT / "Containerfile").read_text(), re.M)
    expanded = cmd.replace("$FUNCTION_TARGET", target).replace("$PORT", str(port))
    argv = shlex.split(expanded.replace("${FUNCTION_SIGNATURE_TYPE:-http}", "http"))
    assert argv[:3] == ["python", "-m", "local.adminserver"], "the image runs the admin server"
    return [sys.executable, *argv[1:]] + ["--host=127.0.0.1"]  # the last --host wins


def test_every_target_starts_alone_and_answers_its_route(tmp_path: Path) -> None:
    env = {**os.environ, "MAAS_DATA_DIR": str(tmp_path), "ADMIN_KEY": "k" * 40}
    env = {k: v for k, v in env.items() if k != "FUNCTION_TARGET"}
    started = {}
    # The console's sign-in page stands for its pages: HTML, public, setting its session cookie.
    for route in (*ROUTES, route_for(CONSOLE, PAGES)):
        port = _free_port()
        process = subprocess.Popen(
            image_command(route.target, port),
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        started[route.target] = (route, port, process)
    try:
        for route, port, process in started.values():
            path = route.path.format(**_SAMPLE)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    reply = httpx.request(route.method, base + path, timeout=5)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.stderr.read() if process.stderr else ""
                    assert time.monotonic() < deadline, f"{route.target} did not start"
                    time.sleep(0.2)
            if route.target == CONSOLE:
                assert reply.status_code == 303 and reply.headers["location"] == "/console/signin"
                signin = httpx.get(base + "/console/signin", timeout=5)
                assert signin.status_code == 200 and "Admin key" in signin.text, signin.text
                assert "HttpOnly" in signin.headers["set-cookie"]
                continue
            expected = 200 if route.auth == "none" else 401
            assert reply.status_code == expected, (route.target, reply.text)
            assert "error" in reply.json() or expected == 200
            # A request meant for another function is refused, not answered wrongly.
            assert httpx.get(base + "/not-my-route", timeout=5).status_code == 404
    finally:
        for _, _, process in started.values():
            process.terminate()
        for _, _, process in started.values():
            process.wait(timeout=20)
