"""The console's sessions over plain HTTP (httpx on the local admin app, in this process, with a
clock the test moves): CSRF on every post, expiry, sign-out, and a cookie that holds no credential."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from functions._context import install_context, reset_context
from local.admin import create_admin_app
from shared.context import build_context
from shared.keymaterial import generate_admin_key
from shared.settings import Settings
from tests.records import ManualClock

ADMIN_KEY = generate_admin_key()
COOKIE = "__Host-maas-console"


@pytest.fixture
def clock(tmp_path: Path) -> Iterator[ManualClock]:
    ctx = build_context(Settings(data_dir=tmp_path, admin_key=SecretStr(ADMIN_KEY)))
    ctx.clock = clock = ManualClock()
    install_context(ctx)
    try:
        yield clock
    finally:
        reset_context()


def browser() -> httpx.Client:
    return httpx.Client(transport=httpx.WSGITransport(app=create_admin_app()), base_url="https://console.test")


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def signed_in(client: httpx.Client) -> str:
    """Sign in with the admin key; the session's CSRF token."""
    form = client.get("/console/signin")
    answer = client.post("/console/signin", data={"csrf": csrf_of(form), "admin_key": ADMIN_KEY})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/keys", answer.text
    return csrf_of(client.get("/console/keys"))


def teams(client: httpx.Client) -> list[str]:
    return re.findall(r'<a href="/console/teams/([a-z0-9-]+)">', client.get("/console/teams").text)


def test_every_post_needs_the_sessions_csrf_token(clock: ManualClock) -> None:
    with browser() as client, browser() as other:
        token = signed_in(client)
        others = signed_in(other)
        for given in ({}, {"csrf": ""}, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}, {"csrf": others}):
            refused = client.post("/console/teams", data={"team_id": "t1", **given})
            assert refused.status_code == 403, given
            assert "CSRF token is missing or wrong" in refused.text
        assert teams(client) == []
        assert client.post("/console/teams", data={"team_id": "t1", "csrf": token}).status_code == 303
        assert teams(client) == ["t1"]


def test_the_sign_in_form_needs_its_token_too(clock: ManualClock) -> None:
    with browser() as client:
        assert client.post("/console/signin", data={"admin_key": ADMIN_KEY}).status_code == 403  # no session yet
        token = csrf_of(client.get("/console/signin"))
        assert client.post("/console/signin", data={"admin_key": ADMIN_KEY, "csrf": "x"}).status_code == 403
        wrong = client.post("/console/signin", data={"admin_key": ADMIN_KEY[:-2], "csrf": token})
        assert wrong.status_code == 401 and "not the admin key" in wrong.text
        assert client.get("/console/keys").headers["location"] == "/console/signin"


def test_a_session_lasts_eight_hours_then_signs_out(clock: ManualClock) -> None:
    with browser() as client:
        token = signed_in(client)
        clock.advance(hours=8, seconds=-1)
        assert client.get("/console/keys").status_code == 200
        clock.advance(seconds=1)
        assert client.get("/console/keys").headers["location"] == "/console/signin"
        late = client.post("/console/teams", data={"team_id": "t1", "csrf": token})
        assert late.status_code == 401 and "session has expired" in late.text
        assert teams(client) == []


def test_signing_out_ends_the_session_on_the_server(clock: ManualClock) -> None:
    with browser() as client:
        token = signed_in(client)
        session = client.cookies[COOKIE]
        out = client.post("/console/signout", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/console/signin?signed_out=1"
        assert re.search(rf"{COOKIE}=;.*Max-Age=0", out.headers["set-cookie"])
    with browser() as replay:  # the old cookie, kept by someone: worth nothing now
        replay.cookies.set(COOKIE, session, domain="console.test")
        assert replay.get("/console/keys").headers["location"] == "/console/signin"
        assert replay.post("/console/teams", data={"team_id": "t1", "csrf": token}).status_code == 401


def test_the_cookie_names_a_session_and_holds_no_credential(clock: ManualClock) -> None:
    with browser() as client:
        form = client.get("/console/signin")
        anonymous = client.cookies[COOKIE]
        answer = client.post("/console/signin", data={"csrf": csrf_of(form), "admin_key": ADMIN_KEY})
        cookie = answer.headers["set-cookie"]
        assert re.match(rf"{COOKIE}=[A-Za-z0-9_-]{{43}};", cookie)
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "secure", "path", "samesite"} <= attributes and "domain" not in attributes
        assert "SameSite=Lax" in cookie and "Path=/;" in cookie + ";"
        assert client.cookies[COOKIE] != anonymous, "a sign-in starts a new session"
        assert ADMIN_KEY not in cookie and ADMIN_KEY not in answer.headers["location"]
        page = client.get("/console/keys")
        assert ADMIN_KEY not in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]


def test_a_provider_answer_this_browser_did_not_ask_for_is_refused(tmp_path: Path) -> None:
    ctx = build_context(Settings(data_dir=tmp_path, admin_key=SecretStr(ADMIN_KEY),
                                 oidc_issuer="http://127.0.0.1:9", oidc_audience="maas"))
    install_context(ctx)
    try:
        with browser() as client:
            client.get("/console/signin")
            answer = client.get("/console/oidc/callback", params={"code": "c", "state": "not-ours"})
            assert answer.status_code == 400 and "not started in this browser" in answer.text
    finally:
        reset_context()
