"""GET /usage, the platform's usage: one unfiltered query, so its totals are exact at any number
of teams, and they must equal the sum of every team's GET /teams/{team_id}/usage.

The function targets run in-process (DirectClient, as functions-framework would call them) on
a fresh store with sign-in through a real OpenID Connect provider process; the traffic is
written into the embedded ledger, so ties and ranges are chosen exactly. One test compares both
backends on the same traffic against a real Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from functions._context import install_context, reset_context
from functions.console.ranges import Range
from functions.console.usagedata import OTHERS, overview_of
from shared.context import build_context
from shared.ledger import UsageLedger
from shared.settings import Settings
from shared.store.sqlite import SqliteStore
from shared.usage.embedded import EmbeddedUsage
from shared.usage.prometheus import PrometheusUsage
from shared.usage.schemas import PlatformUsageQuery
from shared.usage.service import platform_usage
from tests.admin_client import DirectClient, Reply
from tests.oidc_provider import OidcProvider, oidc_provider  # noqa: F401
from tests.prometheus_harness import Prometheus, UsageExporter
from tests.test_usage_prometheus import (  # noqa: F401  (fixtures, used by name)
    TRAFFIC,
    _pairs,
    _send,
    _until_equal,
    _without_model_calls,
    exporter,
    ledger,
    prometheus,
    store,
)

pytestmark = pytest.mark.timeout(90)

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
TEAMS = ("alpha", "beta", "gamma")
# (team, user, model, tokens, authorized, limited, minutes before NOW). alpha and beta tie on
# tokens, as do ann, bob and cid: the order between them is their ids'. "gone" is deleted
# after its traffic; gamma's traffic three days ago is outside a 24h window.
ROWS = (
    ("alpha", "ann", "m1", 100, 2, 0, 30),
    ("alpha", "bob", "m2", 200, 3, 1, 90),
    ("beta", "ann", "m1", 100, 1, 0, 150),
    ("beta", "cid", "m2", 200, 5, 2, 10),
    ("gamma", "dee", "m1", 100, 1, 4, 20),
    ("gamma", "dee", "m1", 1000, 9, 9, 3 * 24 * 60),
    ("gone", "eve", "m1", 10, 1, 0, 5),
)
DAY = "window=24h&step=1h"


@dataclass
class World:
    api: DirectClient
    tokens: dict[str, str]


@pytest.fixture
def world(tmp_path: Path, admin_key: str, oidc_provider: OidcProvider) -> Iterator[World]:  # noqa: F811
    settings = Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / "data", oidc_audience="maas",
                        oidc_issuer=oidc_provider.issuer, admin_groups_list="platform-admins")
    usage = UsageLedger(tmp_path / "usage.db")
    ctx = build_context(settings, ledger=usage)
    ctx.clock = lambda: NOW
    install_context(ctx)
    api = DirectClient(admin_key)
    for team_id in (*TEAMS, "gone"):
        body = {"team_id": team_id, "team_name": team_id.title(), "token_limit": 1000, "time_window": "1h"}
        assert api.call("POST", "/teams", json=body).status == 201
    assert api.call("POST", "/teams/alpha/keys", json={"user_id": "alice"}).status == 201
    assert api.call("POST", "/teams/alpha/members", json={"user_id": "tara", "role": "admin"}).status == 201
    for team, user, model, tokens, authorized, limited, minutes in ROWS:
        usage.record(team_id=team, user_id=user, model=model, tokens=tokens, authorized_calls=authorized,
                     limited_calls=limited, at=(NOW - timedelta(minutes=minutes)).timestamp())
    usage.flush()
    assert api.call("DELETE", "/teams/gone").status == 200
    tokens = {
        "member": oidc_provider.token(sub="alice", email="alice@example.com"),
        "team_admin": oidc_provider.token(sub="tara", email="tara@example.com", groups=["staff"]),
        "platform": oidc_provider.token(sub="pat", email="pat@example.com", groups=["platform-admins"]),
    }
    yield World(api, tokens)
    reset_context()
    usage.close()


def _get(world: World, path: str) -> dict[str, Any]:
    reply = world.api.call("GET", path)
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.body
    return body


def _counts(entry: dict[str, Any], prefix: str = "") -> tuple[int, int, int]:
    return (entry[f"{prefix}token_usage"], entry[f"{prefix}authorized_calls"], entry[f"{prefix}limited_calls"])


def _summed(points: list[list[dict[str, Any]]]) -> list[tuple[str, int, int, int]]:
    """Series summed bucket by bucket (all the same buckets)."""
    return [(bucket[0]["start"], *(sum(p[name] for p in bucket) for name in
                                   ("token_usage", "authorized_calls", "limited_calls")))
            for bucket in zip(*points)]


def test_totals_are_the_sum_of_every_team_and_the_breakdowns_rank_by_tokens_then_id(world: World) -> None:
    for query in ("", DAY):
        body = _get(world, f"/usage?{query}")
        teams = {team: _get(world, f"/teams/{team}/usage?{query}") for team in TEAMS}
        gone = (10, 1, 0)  # its team's usage is a 404 now; its traffic still counts
        expected = tuple(sum(_counts(t, "total_")[i] for t in teams.values()) + gone[i] for i in range(3))
        assert _counts(body, "total_") == expected
        assert body["teams_with_usage"] == 4 and body["users_with_usage"] == 5
        assert [t["team_id"] for t in body["team_breakdown"]] == (
            ["gamma", "alpha", "beta", "gone"] if not query else ["alpha", "beta", "gamma", "gone"])
        for team in body["team_breakdown"]:
            if team["team_id"] == "gone":
                assert team["team_name"] == "" and _counts(team) == gone and team["users"] == 1
            else:
                assert team["team_name"] == team["team_id"].title()
                assert _counts(team) == _counts(teams[team["team_id"]], "total_")
                assert team["users"] == len(teams[team["team_id"]]["user_breakdown"])
        assert [u["user_id"] for u in body["user_breakdown"]] == (
            ["dee", "ann", "bob", "cid", "eve"] if not query else ["ann", "bob", "cid", "dee", "eve"])
        ann = body["user_breakdown"][0 if query else 1]
        assert (ann["user_id"], _counts(ann), ann["teams"]) == ("ann", (200, 3, 0), 2)
        models = {m["model"]: _counts(m) for m in body["model_breakdown"]}
        per_model = {model: tuple(sum(_counts(m)[i] for t in teams.values() for m in t["model_breakdown"]
                                      if m["model"] == model) + (gone[i] if model == "m1" else 0)
                                  for i in range(3))
                     for model in ("m1", "m2")}
        assert models == per_model


def test_top_cuts_the_breakdowns_and_the_series_but_never_the_totals(world: World) -> None:
    whole = _get(world, f"/usage?{DAY}")
    one = _get(world, f"/usage?{DAY}&top=1")
    assert [t["team_id"] for t in one["team_breakdown"]] == ["alpha"]
    assert [u["user_id"] for u in one["user_breakdown"]] == ["ann"]
    assert [s["team_id"] for s in one["series"]] == ["alpha"]
    for name in ("total_token_usage", "total_authorized_calls", "total_limited_calls", "teams_with_usage",
                 "users_with_usage", "model_breakdown", "series_total"):
        assert one[name] == whole[name], name
    assert one["series"][0] == whole["series"][0]


def test_series_total_is_every_team_summed_bucket_by_bucket(world: World) -> None:
    body = _get(world, f"/usage?{DAY}")
    assert body["step_seconds"] == 3600 and len(body["series_total"]) == 24
    by_team = {s["team_id"]: s["points"] for s in body["series"]}
    assert list(by_team) == ["alpha", "beta", "gamma", "gone"]
    for team in TEAMS:
        users = [s["points"] for s in _get(world, f"/teams/{team}/usage?{DAY}")["series"]]
        assert [tuple(p[k] for k in ("start", "token_usage", "authorized_calls", "limited_calls"))
                for p in by_team[team]] == _summed(users), team
    total = [tuple(p[k] for k in ("start", "token_usage", "authorized_calls", "limited_calls"))
             for p in body["series_total"]]
    assert total == _summed(list(by_team.values()))
    assert sum(p[3] for p in total) == body["total_limited_calls"] == 7
    without_step = _get(world, "/usage?window=24h")
    assert without_step["series"] is None and without_step["series_total"] is None


def test_the_consoles_others_counts_the_teams_past_the_breakdown_too(world: World) -> None:
    rng = Range(start=NOW - timedelta(hours=24), end=NOW, step_s=3600, quick="24h")
    answer = _get(world, f"/usage?start={rng.query()['start']}&end={rng.query()['end']}&step=1h&top=2")
    summed = overview_of(answer, rng)
    assert list(summed.tokens_by_team) == ["alpha", "beta", OTHERS]
    assert sum(summed.tokens_by_team[OTHERS]) == 100 + 10  # gamma's and gone's, in no breakdown
    assert [sum(column) for column in zip(*summed.tokens_by_team.values())] == [
        p["token_usage"] for p in answer["series_total"]]
    assert sum(summed.limited_by_bucket) == summed.limited == 7


@pytest.mark.parametrize(("role", "status"), [("member", 403), ("team_admin", 403), ("platform", 200)])
def test_only_a_platform_admin_may_see_it(world: World, role: str, status: int) -> None:
    reply: Reply = world.api.call("GET", "/usage", auth=f"Bearer {world.tokens[role]}")
    assert reply.status == status, reply.text
    if status == 403:
        assert reply.body["error"].startswith("this needs "), reply.body


@pytest.mark.parametrize("top", ["0", "1001", "x", "1.5", ""])
def test_a_bad_top_is_a_422_naming_it(world: World, top: str) -> None:
    reply = world.api.call("GET", f"/usage?top={top}")
    assert reply.status == 422, reply.text
    assert [d["field"] for d in reply.body["details"]] == ["top"], reply.body


@pytest.mark.prometheus
def test_both_backends_give_the_same_platform_totals(
    prometheus: Prometheus, exporter: UsageExporter, store: SqliteStore, ledger: UsageLedger,  # noqa: F811
) -> None:
    embedded = EmbeddedUsage(ledger)
    remote = PrometheusUsage(prometheus.url, timeout_s=5)
    _send(ledger, exporter, TRAFFIC)
    expected = _pairs(embedded.totals())
    assert _until_equal(remote, expected) == expected
    now = datetime.now(timezone.utc)
    bodies = {
        name: platform_usage(store=store, source=source, query=PlatformUsageQuery(), now=now).model_dump(mode="json")
        for name, source in (("ledger", embedded), ("prometheus", remote))
    }
    from_ledger = _without_model_calls({"platform": bodies["ledger"]}, calls=int)
    from_prometheus = _without_model_calls({"platform": bodies["prometheus"]}, calls=type(None))
    assert from_prometheus == from_ledger
    assert bodies["ledger"]["total_token_usage"] == sum(t[3] for t in TRAFFIC)
    assert [t["team_id"] for t in bodies["ledger"]["team_breakdown"]] == ["premium", "test-team"]
    remote.close()
