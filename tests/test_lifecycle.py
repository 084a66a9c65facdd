"""Key lifecycle through the admin API: expiry, revoke, rotation and its grace period.

Most cases drive the function targets directly on a Context whose clock the test moves, so
"an hour later" takes no time; the end-to-end cases run `python -m local serve` and call its
gateway over HTTP with the keys, as a user would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from shared.auth import authenticate, usable
from shared.cleanup import sweep
from shared.context import Context
from shared.errors import Unauthorized
from shared.keymaterial import KEY_PREFIX
from tests.admin_client import DirectClient, HttpClient
from tests.records import CLOCK_START, ManualClock
from tests.runtime import Runtime, start_runtime

T0 = CLOCK_START
MODEL = "qwen3-0-6b-instruct"


@pytest.fixture
def api(clocked_ctx: Context, admin_key: str) -> DirectClient:
    return DirectClient(admin_key)


def _team(api: DirectClient | HttpClient, team_id: str = "team-a") -> None:
    reply = api.call("POST", "/teams", json={"team_id": team_id})
    assert reply.status == 201, reply.text


def _key(api: DirectClient | HttpClient, team_id: str = "team-a", **fields: object) -> dict:
    reply = api.call("POST", f"/teams/{team_id}/keys", json={"user_id": "alice", **fields})
    assert reply.status == 201, reply.text
    return reply.body


def _listed(api: DirectClient, secret_name: str, team_id: str = "team-a") -> dict:
    keys = api.call("GET", f"/teams/{team_id}/keys").body["keys"]
    (found,) = [k for k in keys if k["secret_name"] == secret_name]
    by_user = api.call("GET", f"/users/{found['user_id']}/keys").body["keys"]
    (same,) = [k for k in by_user if k["secret_name"] == secret_name]
    assert same["status"] == found["status"], "both listings must agree"
    return found


def _accepted(ctx: Context, api_key: str) -> bool:
    try:
        authenticate(ctx.settings, ctx.store, f"APIKEY {api_key}", ctx.clock())
    except Unauthorized:
        return False
    return True


# -- expiry ------------------------------------------------------------------------------


@pytest.mark.parametrize(("expires_in", "lifetime"), [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                                      ("90m", timedelta(minutes=90))])
def test_expires_in_sets_the_expiry(api: DirectClient, expires_in: str, lifetime: timedelta) -> None:
    _team(api)
    created = _key(api, expires_in=expires_in)
    assert created["expires_at"] == (T0 + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _listed(api, created["secret_name"])["expires_at"] == created["expires_at"]


def test_a_key_is_listed_expired_and_refused_the_moment_it_expires(
    api: DirectClient, clocked_ctx: Context, clock: ManualClock
) -> None:
    _team(api)
    created = _key(api, expires_in="12h")
    clock.advance(hours=11, minutes=59, seconds=59)
    assert _listed(api, created["secret_name"])["status"] == "active"
    assert _accepted(clocked_ctx, created["api_key"])
    clock.advance(seconds=1)
    # No sweep has run: the listing computes the status at read time.
    assert clocked_ctx.store.get_key(secret_name=created["secret_name"]).status == "active"
    assert _listed(api, created["secret_name"])["status"] == "expired"
    assert not _accepted(clocked_ctx, created["api_key"])
    assert not usable(clocked_ctx.store.get_key(secret_name=created["secret_name"]), clock.now)


def test_expires_at_in_the_future_is_kept_to_the_second(api: DirectClient) -> None:
    _team(api)
    created = _key(api, expires_at="2025-08-26T08:00:00+02:00")
    assert created["expires_at"] == "2025-08-26T06:00:00Z"


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"expires_at": "2025-08-25T05:59:59Z"}, "expires_at"),  # the past (the clock is T0)
        ({"expires_at": "2025-08-25T06:00:00Z"}, "expires_at"),  # now is not the future
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no offset: ambiguous
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_in": "30d", "expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_in": "0h"}, "expires_in"),
        ({"expires_in": "1 month"}, "expires_in"),
        ({"expires_in": 3600}, "expires_in"),
    ],
)
def test_bad_expiry_is_422_naming_the_field(api: DirectClient, fields: dict, field_name: str) -> None:
    _team(api)
    reply = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice", **fields})
    assert reply.status == 422, reply.text
    assert reply.body["details"][0]["field"] == field_name
    assert api.call("GET", "/teams/team-a/keys").body["total_keys"] == 0


# -- revoke ------------------------------------------------------------------------------


def test_revoke_refuses_at_once_and_keeps_the_key_listed(api: DirectClient, clocked_ctx: Context) -> None:
    _team(api)
    created = _key(api)
    other = _key(api)
    reply = api.call("POST", f"/keys/{created['secret_name']}/revoke")
    assert reply.status == 200, reply.text
    assert reply.body == {"message": f"key '{created['secret_name']}' revoked", "secret_name": created["secret_name"],
                          "team_id": "team-a", "user_id": "alice", "status": "revoked"}
    assert created["api_key"] not in reply.text
    assert not _accepted(clocked_ctx, created["api_key"])
    assert _accepted(clocked_ctx, other["api_key"])
    assert _listed(api, created["secret_name"])["status"] == "revoked"
    # Again: same answer, nothing new.
    assert api.call("POST", f"/keys/{created['secret_name']}/revoke").body == reply.body


def test_revoke_unknown_bad_or_unauthenticated(api: DirectClient) -> None:
    assert api.call("POST", "/keys/apikey-nobody-team-a-00000000/revoke").status == 404
    assert api.call("POST", "/keys/Not_A_Handle/revoke").status == 422
    assert api.call("POST", "/keys/apikey-nobody-team-a-00000000/revoke", auth=None).status == 401
    assert api.call("GET", "/keys/apikey-nobody-team-a-00000000/revoke").status == 405


# -- rotate ------------------------------------------------------------------------------


def test_rotate_without_grace_replaces_the_key_at_once(api: DirectClient, clocked_ctx: Context) -> None:
    _team(api)
    old = _key(api, user_email="alice@test.com", alias="laptop", models=[MODEL])
    reply = api.call("POST", f"/keys/{old['secret_name']}/rotate")
    assert reply.status == 201, reply.text
    new = reply.body
    assert new["api_key"].startswith(KEY_PREFIX) and new["api_key"] != old["api_key"]
    assert new["secret_name"] != old["secret_name"]
    same = ("user_id", "user_email", "team_id", "team_name", "policy", "role", "models_allowed", "alias")
    assert {k: new[k] for k in same} == {k: old[k] for k in same}
    assert new["status"] == "active"
    assert not _accepted(clocked_ctx, old["api_key"])
    assert _accepted(clocked_ctx, new["api_key"])
    listed = _listed(api, old["secret_name"])
    assert (listed["status"], listed["replaced_by"]) == ("revoked", new["secret_name"])
    assert _listed(api, new["secret_name"])["replaced_by"] is None


def test_rotation_grace_period_holds_then_ends(api: DirectClient, clocked_ctx: Context, clock: ManualClock) -> None:
    _team(api)
    old = _key(api)
    new = api.call("POST", f"/keys/{old['secret_name']}/rotate", json={"grace_period": "1h"}).body
    assert _listed(api, old["secret_name"])["expires_at"] == "2025-08-25T07:00:00Z"
    clock.advance(minutes=59, seconds=59)
    assert _accepted(clocked_ctx, old["api_key"]) and _accepted(clocked_ctx, new["api_key"])
    assert _listed(api, old["secret_name"])["status"] == "active"
    clock.advance(seconds=1)
    assert not _accepted(clocked_ctx, old["api_key"])
    assert _accepted(clocked_ctx, new["api_key"])
    assert _listed(api, old["secret_name"])["status"] == "revoked"
    # The sweep then records it: revoked (a rotation), not expired.
    summary = sweep(clocked_ctx)
    assert (summary.revoked_keys, summary.expired_keys) == ([old["secret_name"]], [])
    assert clocked_ctx.store.get_key(secret_name=old["secret_name"]).status == "revoked"


def test_grace_never_extends_a_key(api: DirectClient) -> None:
    _team(api)
    old = _key(api, expires_in="30m")
    api.call("POST", f"/keys/{old['secret_name']}/rotate", json={"grace_period": "1h"})
    assert _listed(api, old["secret_name"])["expires_at"] == old["expires_at"]


def test_rotation_keeps_the_lifetime_unless_told_otherwise(api: DirectClient, clock: ManualClock) -> None:
    _team(api)
    old = _key(api, expires_in="30d")
    clock.advance(days=10)
    kept = api.call("POST", f"/keys/{old['secret_name']}/rotate", json={"grace_period": "1h"}).body
    assert kept["expires_at"] == (clock.now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    told = api.call("POST", f"/keys/{kept['secret_name']}/rotate", json={"expires_in": "12h"}).body
    assert told["expires_at"] == (clock.now + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
    forever = _key(api)
    rotated = api.call("POST", f"/keys/{forever['secret_name']}/rotate").body
    assert rotated["expires_at"] is None


def test_only_a_working_key_can_be_rotated(api: DirectClient, clock: ManualClock) -> None:
    _team(api)
    revoked = _key(api)
    api.call("POST", f"/keys/{revoked['secret_name']}/revoke")
    reply = api.call("POST", f"/keys/{revoked['secret_name']}/rotate")
    assert reply.status == 409 and "revoked" in reply.body["error"]
    expiring = _key(api, expires_in="1h")
    clock.advance(hours=2)
    reply = api.call("POST", f"/keys/{expiring['secret_name']}/rotate")
    assert reply.status == 409 and "expired" in reply.body["error"]
    assert api.call("POST", "/keys/apikey-nobody-team-a-00000000/rotate").status == 404
    assert api.call("GET", "/teams/team-a/keys").body["total_keys"] == 2, "no successor was left behind"


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"grace_period": "31d"}', 422),
        (b'{"grace_period": "soon"}', 422),
        (b'{"grace_period": -1}', 422),
        (b'{"surprise": 1}', 422),
        (b'{"grace_period": ', 400),
        (b"[]", 400),
    ],
)
def test_bad_rotate_bodies(api: DirectClient, content: bytes, status: int) -> None:
    _team(api)
    old = _key(api)
    reply = api.call("POST", f"/keys/{old['secret_name']}/rotate", content=content,
                     headers={"Content-Type": "application/json"})
    assert reply.status == status, reply.text
    assert _listed(api, old["secret_name"])["status"] == "active"
    assert api.call("GET", "/teams/team-a/keys").body["total_keys"] == 1


@pytest.mark.parametrize("grace", ["0", "0s", "30m", "7d", "30d"])
def test_grace_periods_accepted(api: DirectClient, grace: str) -> None:
    _team(api)
    old = _key(api)
    reply = api.call("POST", f"/keys/{old['secret_name']}/rotate", json={"grace_period": grace})
    assert reply.status == 201, reply.text


# -- end to end: the running runtime's gateway refuses what the admin API decided --------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, str]]:
    from shared.keymaterial import generate_admin_key

    admin_key = generate_admin_key()
    running = start_runtime(tmp_path_factory.mktemp("lifecycle"), env={"ADMIN_KEY": admin_key})
    yield running, admin_key
    assert running.stop() == 0
    assert admin_key not in running.text
    assert not re.search(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{20,}}", running.text)


def _chat(gateway: str, api_key: str, model: str = MODEL) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5}
    return httpx.post(f"{gateway}/v1/chat/completions", json=body, headers={"Authorization": f"APIKEY {api_key}"},
                      timeout=30)


def _refused_within(gateway: str, api_key: str, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        reply = _chat(gateway, api_key)
        if reply.status_code == 401 or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


def test_gateway_refuses_revoked_expired_and_rotated_keys(runtime: tuple[Runtime, str]) -> None:
    running, admin_key = runtime
    api = HttpClient(admin_key, running.admin_url)
    gateway = running.urls["gateway"]
    _team(api, "e2e")
    revoked, expiring, rotated = (_key(api, "e2e") for _ in range(3))
    short = _key(api, "e2e", expires_in="2s")
    for created in (revoked, expiring, rotated, short):
        assert _chat(gateway, created["api_key"]).status_code == 200

    assert api.call("POST", f"/keys/{revoked['secret_name']}/revoke").status == 200
    reply = _chat(gateway, revoked["api_key"])  # the very next request
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"

    new = api.call("POST", f"/keys/{rotated['secret_name']}/rotate", json={"grace_period": "1h"}).body
    assert _chat(gateway, rotated["api_key"]).status_code == 200, "the grace period holds"
    assert _chat(gateway, new["api_key"]).status_code == 200
    newer = api.call("POST", f"/keys/{new['secret_name']}/rotate", json={"grace_period": "0"}).body
    assert _chat(gateway, new["api_key"]).status_code == 401
    assert _chat(gateway, newer["api_key"]).status_code == 200

    assert _refused_within(gateway, short["api_key"], 10).status_code == 401
    listed = {k["secret_name"]: k["status"] for k in api.call("GET", "/teams/e2e/keys").body["keys"]}
    assert listed[short["secret_name"]] == "expired"
    assert listed[revoked["secret_name"]] == "revoked"
    assert listed[new["secret_name"]] == "revoked"


def test_gateway_enforces_a_keys_models(runtime: tuple[Runtime, str]) -> None:
    running, admin_key = runtime
    api = HttpClient(admin_key, running.admin_url)
    gateway = running.urls["gateway"]
    _team(api, "models")
    limited = _key(api, "models", models=[MODEL])
    free = _key(api, "models")
    assert _chat(gateway, limited["api_key"]).status_code == 200
    refused = _chat(gateway, limited["api_key"], "vllm-simulator")
    assert refused.status_code == 403
    assert "vllm-simulator" in refused.json()["error"]["message"]
    assert _chat(gateway, free["api_key"], "vllm-simulator").status_code == 200
    listed = httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"APIKEY {limited['api_key']}"}, timeout=10)
    assert [m["id"] for m in listed.json()["data"]] == [MODEL]
    everything = httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"APIKEY {free['api_key']}"}, timeout=10)
    assert {m["id"] for m in everything.json()["data"]} >= {MODEL, "vllm-simulator"}


def test_admin_api_models_listing_follows_the_key(runtime: tuple[Runtime, str], tmp_path: Path) -> None:
    running, admin_key = runtime
    api = HttpClient(admin_key, running.admin_url)
    _team(api, "models-api")
    limited = _key(api, "models-api", models=[MODEL])
    reply = api.call("GET", "/v1/models", auth=f"APIKEY {limited['api_key']}")
    assert reply.status == 200, reply.text
    assert [m["id"] for m in reply.body["data"]] == [MODEL]
    api.call("POST", f"/keys/{limited['secret_name']}/revoke")
    assert api.call("GET", "/v1/models", auth=f"APIKEY {limited['api_key']}").status == 401
