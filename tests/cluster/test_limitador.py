"""What Limitador does with the token limits we render (tests/cluster/SOURCES.md §5, §10, §13,
§14; the model and its sources are in tests/cluster/limitador.py), and the quickstart's limit
end to end through the Authorino and Limitador models on the Kubernetes store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from shared.policies import token_rate_limit_policy
from shared.settings import Settings
from shared.store.base import LimitScope, Team
from shared.tiers import tier_of
from tests.admin_client import DirectClient
from tests.cluster.authorino import Authorino
from tests.cluster.deployment import NS, deployed
from tests.cluster.limitador import Limitador, go_duration_seconds
from tests.kube_double import KubeDouble

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
ROUTE = "llm/maas-models"


def team(team_id: str, limit: int = 100, window: str = "1h", scope: LimitScope = "user") -> Team:
    return Team(team_id=team_id, team_name=team_id, description="", policy=team_id, token_limit=limit,
                time_window=window, limit_scope=scope, created_at=T0)


def identity(t: Team, user: str) -> dict[str, str]:
    """auth.identity as the AuthPolicy's success filter hands it to the shim."""
    return {"userid": user, "team": t.team_id, "groups": t.policy, "tier": tier_of(t)}


def spend(limitador: Limitador, who: dict[str, str], tokens: int, *, now: datetime = T0, route: str = ROUTE) -> bool:
    admitted = limitador.check(who, route=route, now=now)
    if admitted:
        limitador.report(who, tokens, route=route, now=now)
    return admitted


def test_teams_sharing_a_tier_keep_their_own_counters() -> None:
    alpha, beta = team("alpha"), team("beta")
    assert tier_of(alpha) == tier_of(beta)
    limitador = Limitador(token_rate_limit_policy([alpha, beta], Settings()))
    assert spend(limitador, identity(alpha, "alice"), 150)
    assert not spend(limitador, identity(alpha, "alice"), 1)
    assert spend(limitador, identity(beta, "alice"), 50)  # same user id, other team: its own budget


def test_user_scope_gives_each_member_the_budget_and_team_scope_shares_it() -> None:
    per_user, shared = team("alpha", scope="user"), team("beta", scope="team")
    limitador = Limitador(token_rate_limit_policy([per_user, shared], Settings()))
    assert spend(limitador, identity(per_user, "alice"), 100)
    assert not spend(limitador, identity(per_user, "alice"), 1)
    assert spend(limitador, identity(per_user, "bob"), 1)
    assert spend(limitador, identity(shared, "alice"), 100)
    assert not spend(limitador, identity(shared, "bob"), 1)


def test_a_request_is_refused_only_once_the_counter_reached_the_limit() -> None:
    """§14: checked with a delta of 1, so the request that crosses the limit is admitted and
    charged in full: one request's worth of overshoot, sequentially."""
    t = team("alpha", limit=100)
    limitador = Limitador(token_rate_limit_policy([t], Settings()))
    who = identity(t, "alice")
    assert spend(limitador, who, 99)
    assert spend(limitador, who, 4000)  # 99 + 1 <= 100: admitted, and 4000 are charged
    assert not spend(limitador, who, 1)
    (counter,) = limitador.counters.values()
    assert counter.value == 4099


def test_concurrent_requests_overshoot_by_at_most_their_own_cost() -> None:
    """The cluster's bound: limit - 1 + (concurrent requests admitted together) x (their cost)."""
    t = team("alpha", limit=1000)
    limitador = Limitador(token_rate_limit_policy([t], Settings()))
    who = identity(t, "alice")
    assert spend(limitador, who, 999)
    admitted = [limitador.check(who, route=ROUTE, now=T0) for _ in range(8)]  # all in flight at once
    for _ in admitted:
        limitador.report(who, 500, route=ROUTE, now=T0)
    (counter,) = limitador.counters.values()
    assert all(admitted) and counter.value == 999 + 8 * 500 <= 1000 - 1 + 8 * 500
    assert not limitador.check(who, route=ROUTE, now=T0)


def test_the_window_is_fixed_from_the_first_hit() -> None:
    t = team("alpha", limit=10, window="1m")
    limitador = Limitador(token_rate_limit_policy([t], Settings()))
    who = identity(t, "alice")
    assert spend(limitador, who, 10, now=T0)
    assert not spend(limitador, who, 1, now=T0 + timedelta(seconds=59))
    assert spend(limitador, who, 1, now=T0 + timedelta(seconds=60))


def test_a_response_without_usage_charges_nothing_and_zero_charges_one() -> None:
    """§6: why the cluster needs vLLM's --enable-force-include-usage for streams (DEPLOY.md)."""
    t = team("alpha", limit=10)
    limitador = Limitador(token_rate_limit_policy([t], Settings()))
    who = identity(t, "alice")
    for _ in range(50):
        assert limitador.check(who, route=ROUTE, now=T0)
        limitador.report(who, None, route=ROUTE, now=T0)
    limitador.report(who, 0, route=ROUTE, now=T0)
    (counter,) = limitador.counters.values()
    assert counter.value == 1


def test_budgets_are_per_http_route() -> None:
    """§5: the Limitador namespace is the route, so a team's budget is per HTTPRoute: models on
    one route share it, models on separate routes each have it (docs/DEPLOY.md)."""
    t = team("alpha", limit=100, scope="team")
    limitador = Limitador(token_rate_limit_policy([t], Settings()))
    who = identity(t, "alice")
    assert spend(limitador, who, 100, route="llm/maas-models")
    assert not spend(limitador, who, 1, route="llm/maas-models")
    assert spend(limitador, who, 100, route="llm/another-model-route")


def test_a_key_without_a_tier_is_not_limited() -> None:
    """Why every key must carry maas/tier (shared/store/kubeshapes.py): no tier, no limit."""
    t = team("alpha", limit=1)
    limitador = Limitador(token_rate_limit_policy([t], Settings()))
    untiered = {k: v for k, v in identity(t, "alice").items() if k != "tier"}
    assert all(spend(limitador, untiered, 1000) for _ in range(5))


@pytest.mark.parametrize(("window", "seconds"), [("1h", 3600), ("1m30s", 90), ("168h", 604800), ("1500ms", 1)])
def test_windows_become_whole_seconds(window: str, seconds: int) -> None:
    assert go_duration_seconds(window) == seconds


@pytest.fixture
def cluster() -> Iterator[tuple[KubeDouble, DirectClient, Settings]]:
    with deployed() as running:
        yield running


def applied_token_limits(double: KubeDouble) -> dict:
    found = double.cluster.objects.get(("kuadrant.io", "v1alpha1", "tokenratelimitpolicies", NS,
                                        "maas-team-token-limits"))
    assert found is not None, "the policy sync applied no TokenRateLimitPolicy"
    return found


def test_the_quickstarts_limit_in_a_cluster(cluster) -> None:
    """Steps 1-5 of the quickstart, as Authorino and Limitador would run them: a call within
    100,000 tokens an hour passes; after the PATCH to 20 a minute, the next call is refused."""
    double, api, _ = cluster
    assert api.call("POST", "/teams", json={"team_id": "test-team", "team_name": "Test Team", "policy": "test-tokens",
                                            "token_limit": 100000, "time_window": "1h"}).status == 201
    key = api.call("POST", "/teams/test-team/keys", json={"user_id": "test-user", "user_email": "u@test.com"}).body
    authorino = Authorino(double, (NS, "maas-api-keys"))
    header = f"APIKEY {key['api_key']}"

    decision = authorino.check(header, now=T0)
    assert decision.status == 200
    limitador = Limitador(applied_token_limits(double))
    assert spend(limitador, decision.identity, 53, now=T0)

    assert api.call("PATCH", "/teams/test-team", json={"token_limit": 20, "time_window": "1m"}).status == 200
    decision = authorino.check(header, now=T0 + timedelta(seconds=5))
    assert decision.status == 200 and decision.identity["tier"] == "20-per-60s-user"
    limitador.policy = applied_token_limits(double)
    # The new budget is a new limit, so its counter starts at 0 (DEPLOY.md): 53 > 20 is spent
    # by this call, and the one after is refused.
    assert spend(limitador, decision.identity, 53, now=T0 + timedelta(seconds=5))
    assert not limitador.check(decision.identity, route=ROUTE, now=T0 + timedelta(seconds=6))
