"""Explain and simulate (issue 16) against the real runtime (`python -m local serve`): explain
must agree with what the gateway then does, and simulate with a real replay of the same traffic
through the gateway under the proposed limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.admin_client import AdminClient, DirectClient, HttpClient
from tests.runtime import Runtime
from tests.test_admin_api import module_admin_key, runtime, unique  # noqa: F401

MODEL = "qwen3-0-6b-instruct"


@pytest.fixture(scope="module")
def admin(runtime: Runtime, module_admin_key: str) -> AdminClient:  # noqa: F811
    return HttpClient(module_admin_key, runtime.admin_url)


def _team(admin: AdminClient, limits: list[dict[str, Any]]) -> str:
    team_id = unique()
    reply = admin.call("POST", "/teams", json={"team_id": team_id, "limits": limits})
    assert reply.status == 201, reply.text
    return team_id


def _key(admin: AdminClient, team_id: str, user_id: str, **fields: Any) -> tuple[str, str]:
    reply = admin.call("POST", f"/teams/{team_id}/keys", json={"user_id": user_id, **fields})
    assert reply.status == 201, reply.text
    return reply.body["api_key"], reply.body["secret_name"]


def _call(runtime: Runtime, key: str, max_tokens: int = 10) -> httpx.Response:  # noqa: F811
    return httpx.post(runtime.urls["gateway"] + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens})


def _explain(admin: AdminClient, team_id: str, **query: str) -> dict[str, Any]:
    reply = admin.call("GET", f"/teams/{team_id}/limits/explain?" + "&".join(f"{k}={v}" for k, v in query.items()))
    assert reply.status == 200, reply.text
    return reply.body  # type: ignore[no-any-return]


def test_explain_shows_the_gateways_counters_and_the_limit_that_refuses_next(
    admin: AdminClient, runtime: Runtime  # noqa: F811
) -> None:
    team_id = _team(admin, [{"name": "tokens", "limit": 100000, "window": "1h"},
                            {"name": "rpm", "limit": 3, "window": "1m", "unit": "requests"}])
    key, _ = _key(admin, team_id, "alice")
    before = _explain(admin, team_id, user_id="alice")
    assert before["counters"] == "live" and before["admitted_now"] is True
    assert [(s["name"], s["spent"]) for s in before["limits"]] == [("tokens", 0), ("rpm", 0)]
    assert all(_call(runtime, key).status_code == 200 for _ in range(2))
    now = _explain(admin, team_id, user_id="alice", model=MODEL)
    me = httpx.get(runtime.urls["gateway"] + "/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert {s["name"]: s["spent"] for s in now["limits"]} == {s["name"]: s["spent"] for s in me["limits"]}
    assert now["binding"] == "rpm" and now["limits"][1]["remaining"] == 1
    assert _call(runtime, key).status_code == 200
    exhausted = _explain(admin, team_id, user_id="alice")
    assert exhausted["admitted_now"] is False and exhausted["binding"] == "rpm"
    refused = _call(runtime, key)
    assert refused.status_code == 429 and refused.json()["error"]["limit"]["name"] == exhausted["binding"]
    # Another user of the team has counters of their own.
    assert _explain(admin, team_id, user_id="bob")["admitted_now"] is True


def test_a_shortened_window_is_explained_and_refused_for_what_is_left_of_its_new_length(
    admin: AdminClient, runtime: Runtime  # noqa: F811
) -> None:
    # The quickstart's steps 3 to 5 across the real runtime: spent under an hour's limit, the
    # team PATCHed to 20 a minute; explain (before any call) and the refusal both count down
    # the minute that began with the call, not the hour.
    team_id = _team(admin, [{"name": "tokens", "limit": 100000, "window": "1h"}])
    key, _ = _key(admin, team_id, "alice")
    assert _call(runtime, key, max_tokens=50).status_code == 200
    hour = _explain(admin, team_id, user_id="alice")["limits"][0]
    assert hour["spent"] > 20 and 3500 < hour["reset_seconds"] <= 3600, hour
    patched = admin.call("PATCH", f"/teams/{team_id}", json={"token_limit": 20, "time_window": "1m"})
    assert patched.status == 200, patched.text
    minute = _explain(admin, team_id, user_id="alice")
    assert minute["admitted_now"] is False and minute["limits"][0]["spent"] == hour["spent"]
    assert 0 < minute["limits"][0]["reset_seconds"] <= 60, minute
    refused = _call(runtime, key)
    assert refused.status_code == 429, refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 60 and 0 < refused.json()["error"]["limit"]["reset_seconds"] <= 60


def test_explain_of_a_key_shows_its_own_limits_and_cap(admin: AdminClient, runtime: Runtime) -> None:  # noqa: F811
    team_id = _team(admin, [{"name": "tokens", "limit": 100000, "window": "1h"}])
    key, handle = _key(admin, team_id, "alice", max_concurrent=2,
                       limits=[{"name": "key-rpm", "limit": 1, "window": "1m", "unit": "requests"}])
    assert _call(runtime, key).status_code == 200
    shown = _explain(admin, team_id, secret_name=handle)
    assert shown["user_id"] == "alice"
    assert [(s["name"], s["scope"]) for s in shown["limits"]] == [("tokens", "user"), ("key-rpm", "key"),
                                                                  ("concurrent", "key")]
    assert shown["binding"] == "key-rpm" and shown["admitted_now"] is False
    assert _call(runtime, key).json()["error"]["limit"]["name"] == "key-rpm"


def test_explain_refuses_what_it_cannot_answer(admin: AdminClient) -> None:
    team_id = _team(admin, [{"name": "tokens", "limit": 10, "window": "1h"}])
    other = _team(admin, [{"name": "tokens", "limit": 10, "window": "1h"}])
    _, handle = _key(admin, other, "alice")
    assert admin.call("GET", f"/teams/{team_id}/limits/explain").status == 422  # whose?
    assert admin.call("GET", f"/teams/{team_id}/limits/explain?secret_name={handle}").status == 404
    assert admin.call("GET", f"/teams/{other}/limits/explain?secret_name={handle}&user_id=bob").status == 422
    assert admin.call("GET", "/teams/no-such-team/limits/explain?user_id=alice").status == 404


def test_without_the_gateways_counters_explain_shows_the_limits_only(tmp_path: Path, module_admin_key: str) -> None:  # noqa: F811
    from functions._context import install_context
    from shared.context import build_context
    from shared.settings import Settings

    install_context(build_context(Settings(admin_key=SecretStr(module_admin_key), data_dir=tmp_path)))
    api = DirectClient(module_admin_key)
    team_id = _team(api, [{"name": "tokens", "limit": 10, "window": "1h"}])
    shown = _explain(api, team_id, user_id="alice")
    assert shown["counters"] == "unavailable" and shown["admitted_now"] is None
    assert shown["limits"][0]["spent"] is None and shown["limits"][0]["limit"] == 10


# -- simulate ------------------------------------------------------------------------------------

PROPOSED = [
    {"name": "tokens", "limit": 100, "window": "1h"},
    {"name": "hourly", "limit": 4, "window": "1h", "unit": "requests"},
]
# (user, calls, max_tokens): each user's calls alike, as the replay's even spread within a minute
# assumes. alice runs out of tokens (33 a call), bob and carol out of calls.
TRAFFIC = [("alice", 6, 30), ("bob", 6, 10), ("carol", 5, 5)]
SAME_CALLS = [("alice", 4, 10), ("bob", 4, 10), ("carol", 4, 10)]


def _drive(runtime: Runtime, keys: dict[str, str], traffic: list[tuple[str, int, int]]) -> dict[str, dict[str, int]]:  # noqa: F811
    """The traffic through the gateway, user by user: each user's refusals by limit name."""
    refused: dict[str, dict[str, int]] = {}
    for user, calls, max_tokens in traffic:
        refused[user] = {}
        for _ in range(calls):
            response = _call(runtime, keys[user], max_tokens)
            if response.status_code == 429:
                name = response.json()["error"]["limit"]["name"]
                refused[user][name] = refused[user].get(name, 0) + 1
            else:
                assert response.status_code == 200, response.text
    return refused


def _recorded(admin: AdminClient, runtime: Runtime, traffic: list[tuple[str, int, int]]) -> str:  # noqa: F811
    """A team whose loose limit refused nothing of `traffic`, which it has made."""
    team_id = _team(admin, [{"name": "tokens", "limit": 1_000_000, "window": "1h"}])
    keys = {user: _key(admin, team_id, user)[0] for user, _, _ in traffic}
    assert _drive(runtime, keys, traffic) == {user: {} for user, _, _ in traffic}
    return team_id


def _replayed(admin: AdminClient, runtime: Runtime, limits: list[dict[str, Any]],  # noqa: F811
              traffic: list[tuple[str, int, int]]) -> dict[str, dict[str, int]]:
    team_id = _team(admin, limits)
    keys = {user: _key(admin, team_id, user)[0] for user, _, _ in traffic}
    return _drive(runtime, keys, traffic)


def test_simulate_agrees_with_a_real_replay_through_the_gateway(admin: AdminClient, runtime: Runtime) -> None:  # noqa: F811
    recorded = _recorded(admin, runtime, TRAFFIC)
    reply = admin.call("POST", f"/teams/{recorded}/limits/simulate", json={"limits": PROPOSED})
    assert reply.status == 200, reply.text
    simulated = reply.body
    assert simulated["requests"] == sum(calls for _, calls, _ in TRAFFIC)
    assert simulated["tokens"] == sum(calls * (3 + max_tokens) for _, calls, max_tokens in TRAFFIC)
    predicted = {user["user_id"]: user["refused_by"] for user in simulated["users"]}
    assert _replayed(admin, runtime, PROPOSED, TRAFFIC) == predicted  # the same traffic, for real
    assert predicted == {"alice": {"tokens": 2}, "bob": {"hourly": 2}, "carol": {"hourly": 1}}
    assert simulated["refused_requests"] == 5 and simulated["refused_by"] == {"tokens": 2, "hourly": 3}


def test_simulate_a_team_wide_rate_agrees_on_what_it_refuses(admin: AdminClient, runtime: Runtime) -> None:  # noqa: F811
    # Within a minute the order of different users' calls is not recorded; with calls alike, a
    # team-wide rate refuses as many whatever the order.
    proposed = [{"name": "team-tokens", "limit": 100, "window": "1h", "scope": "team"}]
    recorded = _recorded(admin, runtime, SAME_CALLS)
    simulated = admin.call("POST", f"/teams/{recorded}/limits/simulate", json={"limits": proposed}).body
    real = _replayed(admin, runtime, proposed, SAME_CALLS)
    assert simulated["refused_requests"] == sum(by.get("team-tokens", 0) for by in real.values()) == 4
    assert simulated["refused_tokens"] == 4 * 13


def test_simulate_refuses_what_it_cannot_answer(admin: AdminClient) -> None:
    team_id = _team(admin, [{"name": "tokens", "limit": 10, "window": "1h"}])
    url = f"/teams/{team_id}/limits/simulate"
    assert admin.call("POST", url, json={"limits": []}).status == 422
    assert admin.call("POST", url, json={"limits": [{"name": "r", "limit": 1, "window": "1m", "unit": "requests"}]}).status == 422
    assert admin.call("POST", url, json={"limits": PROPOSED, "start": "2026-01-02T00:00:00Z",
                                         "end": "2026-01-01T00:00:00Z"}).status == 422
    assert admin.call("POST", "/teams/no-such-team/limits/simulate", json={"limits": PROPOSED}).status == 404
    empty = admin.call("POST", url, json={"limits": PROPOSED}).body
    assert (empty["requests"], empty["refused_requests"], empty["users"]) == (0, 0, [])
