"""Several limits per team (issue 16): token rates of several windows, request rates, per-model
rates, a key's own rates and its concurrency cap; every 429 names the limit that refused.

Each kind is loaded concurrently and checked against the lenient backend's own count
(tests/lenient_backend.py); shadowing (a looser limit listed first never hides a stricter one)
and atomicity (a call refused by one limit holds nothing on the others) are tried in both
counter stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.gateway.service import GatewayService
from shared.rates import Rate
from shared.settings import Settings
from shared.store.base import Team, TeamChanges
from shared.store.sqlite import SqliteStore
from tests.admin_client import AdminClient
from tests.lenient_backend import LenientBackend
from tests.records import T0, a_key
from tests.redis_harness import RedisServer, redis_binary, redis_server  # noqa: F401
from tests.test_admin_api import api, make_team, module_admin_key, runtime, unique  # noqa: F401
from tests.test_limits_hostile import _concurrently, _post, redis_url  # noqa: F401
from tests.waiting import eventually

CHAT = "/v1/chat/completions"
SMALL, BIG = "small", "big"


class Rig:
    """A lenient backend serving two model names behind one gateway, on a SQLite store."""

    def __init__(self, tmp_path: Path, backend: LenientBackend, **settings: Any) -> None:
        self.backend = backend
        self.store = SqliteStore(tmp_path / "maas.db")
        models = tmp_path / "models.yaml"
        models.write_text("models:\n" + "".join(
            f"  - name: {name}\n    url: {backend.url}\n    max_context: 4096\n" for name in (SMALL, BIG)))
        self.gateway = GatewayService(Settings(gateway_port=0, metrics_port=0, data_dir=tmp_path / "data",  # type: ignore[call-arg]
                                               models_file=models, **settings), self.store)
        self.gateway.start()

    def team(self, *rates: Rate, team_id: str = "t1") -> Team:
        base = Team(team_id, team_id, "", team_id, 1_000_000, "1h", "user", T0)
        return self.store.create_team(team=TeamChanges(rates=rates).apply(base) if rates else base)

    def key(self, user_id: str = "alice", team_id: str = "t1", **fields: Any) -> str:
        record, value = a_key(team_id, user_id)
        self.store.create_key(key=replace(record, **fields), api_key=value)
        return value

    def call(self, key: str, model: str = SMALL, max_tokens: int = 10) -> httpx.Response:
        return _post(self.gateway.url, key, CHAT, _chat(model, max_tokens))

    def settled(self) -> bool:
        return eventually(lambda: self.gateway.limiter.outstanding == 0, timeout=10)

    def close(self) -> None:
        self.gateway.stop()
        self.store.close()


def _chat(model: str = SMALL, max_tokens: int = 10) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


@pytest.fixture(params=["memory", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []
    backends: list[LenientBackend] = []
    settings: dict[str, Any] = {}
    if request.param == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")

    def make(**backend_options: Any) -> Rig:
        backend = LenientBackend(**backend_options)
        backend.start()
        backends.append(backend)
        made.append(Rig(tmp_path, backend, **settings))
        return made[-1]

    yield make
    for rig_made in made:
        rig_made.close()
    for backend in backends:
        backend.stop()


def _limit(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["limit"]["name"] in error["message"]  # the message names it too
    return error["limit"]  # type: ignore[no-any-return]


def _until_refused(rig: Rig, key: str, model: str = SMALL, most: int = 60) -> tuple[int, httpx.Response]:
    for made in range(most):
        response = rig.call(key, model)
        if response.status_code != 200:
            return made, response
        assert rig.settled()
    raise AssertionError(f"no 429 in {most} calls")


# -- several token windows: the stricter binds, whichever is listed first ------------------------


@pytest.mark.parametrize("strict", ["day", "minute"])
def test_the_stricter_of_two_token_windows_refuses_and_is_named(rig: Callable[..., Rig], strict: str) -> None:
    setup = rig()
    loose, tight = 100_000, 100
    # The looser one first: it must not hide the stricter.
    setup.team(Rate("minute", tight if strict == "minute" else loose, "1m"),
               Rate("day", tight if strict == "day" else loose, "24h"))
    key = setup.key()
    made, refused = _until_refused(setup, key)
    assert made >= 1
    limit = _limit(refused)
    assert (limit["name"], limit["unit"], limit["limit"]) == (strict, "tokens", tight)
    assert limit["window"] == ("1m" if strict == "minute" else "24h")
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["X-RateLimit-Limit"] == str(tight)
    # Within the strict limit plus one call's worst cost, by the backend's own count.
    assert setup.backend.generated <= tight + 10 + len(str(_chat()).encode())


def test_concurrent_calls_keep_every_token_window(rig: Callable[..., Rig]) -> None:
    setup = rig(token_delay_s=0.002)
    setup.team(Rate("minute", 100_000, "1m"), Rate("hour", 300, "1h"))
    responses = _concurrently(setup.gateway.url, setup.key(), CHAT, _chat(max_tokens=40), 30)
    assert {r.status_code for r in responses} <= {200, 429}
    assert {_limit(r)["name"] for r in responses if r.status_code == 429} == {"hour"}
    assert setup.settled()
    worst = 40 + len(str(_chat(max_tokens=40)).encode())
    assert setup.backend.generated <= 300 + worst


# -- requests per window -------------------------------------------------------------------------


def test_a_request_rate_admits_exactly_its_count_under_concurrency(rig: Callable[..., Rig]) -> None:
    setup = rig(delay_s=0.05)
    setup.team(Rate("tokens", 1_000_000, "1h"), Rate("rpm", 3, "1m", unit="requests"))
    responses = _concurrently(setup.gateway.url, setup.key(), CHAT, _chat(), 20)
    assert sum(r.status_code == 200 for r in responses) == 3
    assert setup.backend.requests == 3  # the backend's own count
    refusals = [_limit(r) for r in responses if r.status_code == 429]
    assert len(refusals) == 17 and {(lim["name"], lim["unit"], lim["limit"]) for lim in refusals} == {("rpm", "requests", 3)}


def test_a_request_rate_per_user_leaves_other_users_alone(rig: Callable[..., Rig]) -> None:
    setup = rig()
    setup.team(Rate("tokens", 1_000_000, "1h"), Rate("rpm", 2, "1m", unit="requests"))
    alice, bob = setup.key("alice"), setup.key("bob")
    assert [setup.call(alice).status_code for _ in range(3)] == [200, 200, 429]
    assert [setup.call(bob).status_code for _ in range(2)] == [200, 200]


def test_a_team_request_rate_is_shared_by_its_users(rig: Callable[..., Rig]) -> None:
    setup = rig()
    setup.team(Rate("tokens", 1_000_000, "1h"), Rate("team-rpm", 2, "1m", unit="requests", scope="team"))
    alice, bob = setup.key("alice"), setup.key("bob")
    assert setup.call(alice).status_code == 200 and setup.call(bob).status_code == 200
    limit = _limit(setup.call(alice))
    assert (limit["name"], limit["scope"]) == ("team-rpm", "team")


# -- a refusal holds nothing on the limits that admitted ----------------------------------------


def test_a_call_refused_by_one_limit_counts_on_none(rig: Callable[..., Rig]) -> None:
    setup = rig()
    team = setup.team(Rate("tokens", 1_000_000, "1h"), Rate("hourly", 100, "1h", unit="requests"),
                      Rate("once", 1, "1h", unit="requests"))
    key = setup.key()
    assert setup.call(key).status_code == 200
    for _ in range(5):
        assert _limit(setup.call(key))["name"] == "once"
    assert setup.settled()
    me = httpx.get(setup.gateway.url + "/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    spent = {limit["name"]: (limit["spent"], limit["reserved"]) for limit in me["limits"]}
    assert spent["hourly"] == (1, 0) and spent["once"] == (1, 0)
    assert spent["tokens"][0] == setup.backend.generated
    assert me["budget"]["token_limit"] == team.token_limit  # the short form's view stays


# -- per-model budgets ---------------------------------------------------------------------------


def test_a_per_model_budget_limits_that_model_only(rig: Callable[..., Rig]) -> None:
    setup = rig()
    setup.team(Rate("tokens", 1_000_000, "1h"), Rate("big-model", 50, "1h", model=BIG))
    key = setup.key()
    made, refused = _until_refused(setup, key, BIG)
    limit = _limit(refused)
    assert (limit["name"], limit["model"]) == ("big-model", BIG) and f"model '{BIG}'" in refused.json()["error"]["message"]
    generated_on_big = setup.backend.generated
    assert generated_on_big <= 50 + 10 + len(str(_chat(BIG)).encode())
    assert all(setup.call(key, SMALL).status_code == 200 for _ in range(3))  # the small model is not limited by it


# -- a key's own limits --------------------------------------------------------------------------


def test_a_keys_own_rate_limits_that_key_only(rig: Callable[..., Rig]) -> None:
    setup = rig()
    setup.team()
    narrow = setup.key(rates=(Rate("key-rpm", 2, "1h", unit="requests", scope="key"),))
    other = setup.key()  # the same user, another key
    assert [setup.call(narrow).status_code for _ in range(2)] == [200, 200]
    limit = _limit(setup.call(narrow))
    assert (limit["name"], limit["scope"]) == ("key-rpm", "key")
    assert setup.call(other).status_code == 200


def test_a_key_cannot_widen_its_teams_limit(rig: Callable[..., Rig]) -> None:
    setup = rig()
    setup.team(Rate("tokens", 30, "1h"))
    key = setup.key(rates=(Rate("mine", 1_000_000, "1h", scope="key"),))
    made, refused = _until_refused(setup, key)
    assert _limit(refused)["name"] == "tokens"


def test_max_concurrent_caps_calls_in_flight(rig: Callable[..., Rig]) -> None:
    setup = rig(delay_s=1.0)
    setup.team()
    key = setup.key(max_concurrent=2)
    responses = _concurrently(setup.gateway.url, key, CHAT, _chat(), 6)
    assert sum(r.status_code == 200 for r in responses) == 2 and setup.backend.requests == 2
    limit = _limit(next(r for r in responses if r.status_code == 429))
    assert (limit["name"], limit["limit"], limit["retry_after_seconds"]) == ("concurrent", 2, 1)
    assert setup.settled()
    assert setup.call(key).status_code == 200  # the cap is on calls in flight, not on a window


# -- what the key holder sees, and the metric ----------------------------------------------------


def test_v1_me_shows_every_limit_and_the_binding_one_refuses_next(rig: Callable[..., Rig]) -> None:
    setup = rig()
    setup.team(Rate("tokens", 1_000_000, "1h"), Rate("rpm", 3, "1m", unit="requests"),
               Rate("big-model", 1_000, "1h", model=BIG))
    key = setup.key()
    assert setup.call(key).status_code == 200 and setup.settled()
    me = httpx.get(setup.gateway.url + "/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    names = [limit["name"] for limit in me["limits"]]
    assert names == ["tokens", "rpm", "big-model"]  # every model's limits, the other model's too
    binding = [limit["name"] for limit in me["limits"] if limit["binding"]]
    assert binding == ["rpm"]  # 2 of 3 calls left: the smallest share
    assert setup.call(key).status_code == 200 and setup.call(key).status_code == 200
    assert _limit(setup.call(key))["name"] == binding[0]
    if not setup.gateway.limiter.remote:
        text = setup.gateway._gateway._meter.exposition().decode()  # noqa: SLF001
        assert 'maas_limited_calls_by_limit{limit_name="rpm",team="t1"} 1' in text


# -- the admin API: the list, the short form, and bad input --------------------------------------


RATES = [
    {"name": "per-minute", "limit": 20000, "window": "1m"},
    {"name": "per-day", "limit": 1000000, "window": "1d"},
    {"name": "rpm", "limit": 60, "window": "1m", "unit": "requests"},
    {"name": "big-model", "limit": 10000, "window": "1h", "model": "vllm-simulator", "scope": "team"},
]


def test_a_team_keeps_its_list_and_the_short_form_follows_its_primary(api: AdminClient) -> None:
    team_id = unique()
    reply = api.call("POST", "/teams", json={"team_id": team_id, "limits": RATES})
    assert reply.status == 201, reply.text
    body = reply.body
    assert (body["token_limit"], body["time_window"], body["limit_scope"]) == (20000, "1m", "user")
    assert [rate["name"] for rate in body["limits"]] == ["per-minute", "per-day", "rpm", "big-model"]
    assert body["limits"][1]["window"] == "24h" and body["limits"][3] == {**RATES[3], "unit": "tokens"}
    # The quickstart's PATCH edits the primary rate, under its own name; the others stay.
    patched = api.call("PATCH", f"/teams/{team_id}", json={"token_limit": 20, "time_window": "2m"}).body
    assert patched["limits"][0] == {**body["limits"][0], "limit": 20, "window": "2m"}
    assert patched["limits"][1:] == body["limits"][1:]
    assert api.call("GET", f"/teams/{team_id}").body["limits"] == patched["limits"]
    # A new list replaces the old; the short form follows its first token rate over every model.
    replaced = api.call("PATCH", f"/teams/{team_id}", json={"limits": [
        {"name": "rpm", "limit": 5, "window": "1m", "unit": "requests"},
        {"name": "hourly", "limit": 500, "window": "1h", "scope": "team"}]}).body
    assert (replaced["token_limit"], replaced["time_window"], replaced["limit_scope"]) == (500, "1h", "team")
    assert [rate["name"] for rate in replaced["limits"]] == ["rpm", "hourly"]


@pytest.mark.parametrize(("limits", "says"), [
    ([{"name": "rpm", "limit": 5, "window": "1m", "unit": "requests"}], "token rate over every model"),
    ([{"name": "big", "limit": 5, "window": "1m", "model": "big"}], "token rate over every model"),
    ([{"name": "a", "limit": 5, "window": "1m"}, {"name": "a", "limit": 9, "window": "1h"}], "named 'a'"),
    ([{"name": "a", "limit": 5, "window": "500ms"}], "window"),
    ([{"name": "A b", "limit": 5, "window": "1m"}], "name"),
    ([{"name": "a", "limit": 0, "window": "1m"}], "limit"),
    ([{"name": "a", "limit": 5, "window": "1m", "scope": "key"}], "scope"),
    ([{"name": f"r{n}", "limit": 5, "window": "1m"} for n in range(17)], "limits"),
])
def test_bad_limits_are_a_422_that_says_why(api: AdminClient, limits: list[dict[str, Any]], says: str) -> None:
    reply = api.call("POST", "/teams", json={"team_id": unique(), "limits": limits})
    assert reply.status == 422, reply.text
    assert says in reply.text


def test_limits_and_the_short_form_together_are_a_422(api: AdminClient) -> None:
    reply = api.call("POST", "/teams", json={"team_id": unique(), "token_limit": 5, "limits": RATES})
    assert reply.status == 422 and "not both" in reply.text
    team_id = make_team(api, unique())["team_id"]
    reply = api.call("PATCH", f"/teams/{team_id}", json={"time_window": "1m", "limits": RATES})
    assert reply.status == 422 and "not both" in reply.text
    assert api.call("PATCH", f"/teams/{team_id}", json={"limits": None}).status == 422


def test_a_key_keeps_its_own_limits_and_cap(api: AdminClient) -> None:
    team_id = make_team(api, unique())["team_id"]
    reply = api.call("POST", f"/teams/{team_id}/keys", json={
        "user_id": "alice", "max_concurrent": 3,
        "limits": [{"name": "key-rpm", "limit": 10, "window": "1m", "unit": "requests"}]})
    assert reply.status == 201, reply.text
    created = reply.body
    assert created["max_concurrent"] == 3 and created["limits"][0]["scope"] == "key"
    listed = api.call("GET", f"/teams/{team_id}/keys").body["keys"][0]
    assert (listed["limits"], listed["max_concurrent"]) == (created["limits"], 3)
    rotated = api.call("POST", f"/keys/{created['secret_name']}/rotate", json={})
    assert rotated.status == 201 and rotated.body["limits"] == created["limits"] and rotated.body["max_concurrent"] == 3
    for bad in ({"max_concurrent": 0}, {"limits": [{"name": "x", "limit": 1, "window": "1m", "scope": "team"}]},
                {"limits": [{"name": "x", "limit": 1, "window": "1m"}, {"name": "x", "limit": 2, "window": "1h"}]}):
        assert api.call("POST", f"/teams/{team_id}/keys", json={"user_id": "bob", **bad}).status == 422


def test_a_per_model_budget_holds_under_concurrency(rig: Callable[..., Rig]) -> None:
    setup = rig(token_delay_s=0.002)
    setup.team(Rate("tokens", 1_000_000, "1h"), Rate("big-model", 200, "1h", model=BIG))
    responses = _concurrently(setup.gateway.url, setup.key(), CHAT, _chat(BIG, max_tokens=40), 30)
    assert {_limit(r)["name"] for r in responses if r.status_code == 429} == {"big-model"}
    assert setup.settled()
    assert setup.backend.generated <= 200 + 40 + len(str(_chat(BIG, 40)).encode())


def test_a_keys_request_rate_holds_under_concurrency(rig: Callable[..., Rig]) -> None:
    setup = rig(delay_s=0.05)
    setup.team()
    key = setup.key(rates=(Rate("key-rpm", 4, "1h", unit="requests", scope="key"),))
    responses = _concurrently(setup.gateway.url, key, CHAT, _chat(), 25)
    assert sum(r.status_code == 200 for r in responses) == 4 == setup.backend.requests
    assert {_limit(r)["name"] for r in responses if r.status_code == 429} == {"key-rpm"}
