"""Each function target as its Knative Service runs it: alone, started by the image's command
(the Containerfile's CMD: functions-framework's app on the admin server, local/adminserver.py).

The image's command runs for real for three targets that stand for the rest; every target's
app (functions-framework's `create_app(target)`, what the image's worker loads) answers in a
process of its own, forked from one that has imported main.py once: 30 processes each importing
everything took 12 to 17 s of a 2-core machine, for the same import 30 times."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

import main
from shared.routes import CONSOLE, EVENT_TARGETS, HTTP_ROUTES, PAGES, ROUTES, Route, route_for
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


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "MAAS_DATA_DIR": str(tmp_path), "ADMIN_KEY": "k" * 40}
    return {k: v for k, v in env.items() if k != "FUNCTION_TARGET"}


def _check_answer(route: Route, status: int, body: str, headers: dict[str, str], other: int,
                  signin: tuple[int, str, str] | None) -> None:
    """What `route`'s target must answer alone: its route (401 unless public; the console's pages
    redirect to a sign-in page that sets its session cookie), and 404 to another's."""
    if route.target == CONSOLE:
        location = {name.lower(): value for name, value in headers.items()}.get("location")
        assert status == 303 and location == "/console/signin", (status, headers)
        assert signin is not None
        signin_status, signin_text, cookie = signin
        assert signin_status == 200 and "Admin key" in signin_text, signin_text
        assert "HttpOnly" in cookie
    else:
        expected = 200 if route.auth == "none" else 401
        assert status == expected, (route.target, body)
        assert "error" in json.loads(body) or expected == 200
    # A request meant for another function is refused, not answered wrongly.
    assert other == 404, route.target


# The image's command, run for real (gunicorn, the admin server, a port) for three targets that
# stand for the rest: a public route, one that needs a credential, and the console's pages. Each
# of them imports all of main.py, as every target does: what differs between targets is only the
# function functions-framework picks, which every target's own test below exercises.
IMAGE_TARGETS = ("health", "create_team", CONSOLE)


def test_the_images_command_starts_a_target_alone_and_it_answers_its_route(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    routes = {route.target: route for route in (*ROUTES, route_for(CONSOLE, PAGES))}
    started = {}
    for target in IMAGE_TARGETS:
        port = _free_port()
        process = subprocess.Popen(
            image_command(target, port),
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        started[target] = (routes[target], port, process)
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
            signin = None
            if route.target == CONSOLE:
                page = httpx.get(base + "/console/signin", timeout=5)
                signin = (page.status_code, page.text, page.headers.get("set-cookie", ""))
            other = httpx.get(base + "/not-my-route", timeout=5).status_code
            _check_answer(route, reply.status_code, reply.text, dict(reply.headers), other, signin)
    finally:
        for _, _, process in started.values():
            process.terminate()
        for _, _, process in started.values():
            process.wait(timeout=20)


def answers_of_each_target_alone(source: str) -> dict[str, Any]:
    """For every API route's target and the console's: what functions-framework's app for that
    target alone (`create_app(target)`, what the image's worker loads) answers, each in a process
    of its own forked from this one before any app or request, so no target sees another's state.
    Run in a subprocess of its own (tests/test_functions_framework.py), never under pytest."""
    from functions_framework import create_app

    children: dict[str, tuple[int, int]] = {}
    # All forked before any is read: they run side by side, each blocked on its pipe at worst.
    for route in (*ROUTES, route_for(CONSOLE, PAGES)):
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child reports through the pipe)
            os.close(read)
            try:
                client = create_app(route.target, source, "http").test_client()
                reply = client.open(route.path.format(**_SAMPLE), method=route.method)
                signin = None
                if route.target == CONSOLE:
                    page = client.get("/console/signin")
                    signin = (page.status_code, page.get_data(as_text=True), page.headers.get("Set-Cookie", ""))
                answer: dict[str, Any] = {
                    "status": reply.status_code, "body": reply.get_data(as_text=True), "headers": dict(reply.headers),
                    "other": client.get("/not-my-route").status_code, "signin": signin,
                }
            except BaseException:
                answer = {"crashed": traceback.format_exc()}
            with os.fdopen(write, "w") as out:
                json.dump(answer, out)
            os._exit(0)
        os.close(write)
        children[route.target] = (child, read)
    answers: dict[str, Any] = {}
    for target, (child, read) in children.items():
        with os.fdopen(read) as result:
            text = result.read()
        os.waitpid(child, 0)
        answers[target] = json.loads(text) if text else {"crashed": "no answer"}
    return answers


def test_every_target_alone_answers_its_route_and_no_other(tmp_path: Path) -> None:
    program = ("import json, sys; from tests.test_functions_framework import answers_of_each_target_alone; "
               "json.dump(answers_of_each_target_alone(sys.argv[1]), sys.stdout)")
    done = subprocess.run([sys.executable, "-c", program, "main.py"], cwd=ROOT, env=_environment(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout)
    routes = (*ROUTES, route_for(CONSOLE, PAGES))
    assert set(answers) == {route.target for route in routes}
    for route in routes:
        answer = answers[route.target]
        assert "crashed" not in answer, f"{route.target}: {answer.get('crashed')}"
        signin = tuple(answer["signin"]) if answer["signin"] is not None else None
        _check_answer(route, answer["status"], answer["body"], answer["headers"], answer["other"], signin)  # type: ignore[arg-type]
