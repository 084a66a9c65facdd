"""A team's list of rates in a cluster (issue 16, item 4): the TokenRateLimitPolicy and
RateLimitPolicy the policy sync renders, evaluated by the engines' models, take the admit and
refuse decisions the local gateway takes on the same calls.

Teams and keys are made through the admin API's function targets on the Kubernetes store, against
the API double; the sync applies the policies. Authorino (tests/cluster/authorino.py) turns each
call's key into `auth.identity`; Limitador (tests/cluster/limitador.py) runs the RateLimitPolicy's
one merged action and then each token limit's check, and the report after the response. The
local gateway is its own limiter (local/gateway/limiter.py) over in-process counters on a
simulated clock, fed the team and key records the store holds. The upstream behaviour each model
relies on is in SOURCES.md §5, §6, §10, §13, §14 and §18 (the RateLimitPolicy's merged action,
the order of the policies on a request, `request.url_path`, no concurrency in Limitador).

Where the engines cannot do what the gateway does, a test here pins the difference (docs/DEPLOY.md,
"Rate limits in a cluster" lists them): the scenario of the first test keeps clear of them, and
the tests after it show each one, so a change upstream or in the gateway shows here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from functions._context import context
from local.gateway.counters import MemoryCounters
from local.gateway.limiter import TokenLimiter
from shared.errors import RateLimited
from shared.policies import (
    KEY_COUNTER,
    RATE_LIMIT_POLICY,
    TOKEN_RATE_LIMIT_POLICY,
    generate_policies,
    policy_warnings,
)
from shared.schemas import TeamCreate
from shared.settings import Settings
from shared.store.base import ApiKey, Team
from shared.teams import team_from_request
from shared.tiers import KEY_TIER_ANNOTATION, key_tier_annotations, key_tier_of, tier_of
from tests.admin_client import DirectClient
from tests.cluster.authorino import Authorino
from tests.cluster.deployment import NS, deployed
from tests.cluster.limitador import Limitador
from tests.kube_double import KubeDouble

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
ROUTE = f"{NS}/maas-models"  # every model on one route: one Limitador namespace (§5)
KUADRANT = "kuadrant.io"

# The issue's team: per-minute and per-day token budgets, an RPM, a budget on the large model,
# and (to count per team too) a request rate the members share.
ISSUE_LIMITS: list[dict[str, Any]] = [
    {"name": "per-minute", "limit": 200, "window": "1m"},
    {"name": "per-day", "limit": 1000, "window": "24h"},
    {"name": "rpm", "limit": 4, "window": "1m", "unit": "requests"},
    {"name": "team-rpm", "limit": 6, "window": "1m", "unit": "requests", "scope": "team"},
    {"name": "big-hourly", "limit": 300, "window": "1h", "model": "big"},
]


@dataclass(frozen=True)
class Call:
    at: int  # seconds after T0
    user: str
    model: str
    tokens: int  # what the response reports


class Gateway:
    """The local gateway's limiter on a clock the test moves: admit, then settle at once."""

    def __init__(self) -> None:
        self.now_ms = int(T0.timestamp() * 1000)
        self.limiter = TokenLimiter(MemoryCounters(lambda: self.now_ms))
        self.refused_by: str | None = None

    def call(self, team: Team, key: ApiKey, model: str, tokens: int, at: datetime) -> bool:
        self.now_ms = int(at.timestamp() * 1000)
        self.refused_by = None
        try:
            reservation = self.limiter.admit(team=team, key=key, model=model, estimate=tokens)
        except RateLimited as refused:
            assert refused.limit is not None
            self.refused_by = refused.limit["name"]
            return False
        self.limiter.settle(reservation, tokens=tokens)
        return True


class Cluster:
    """Authorino and Limitador over what the policy sync applied to the double."""

    def __init__(self, double: KubeDouble, *, policies: list[dict[str, Any]] | None = None) -> None:
        self.double = double
        self.authorino = Authorino(double, (NS, "maas-api-keys"))
        applied = policies if policies is not None else self.applied()
        self.limitador = Limitador(*applied)

    def applied(self) -> list[dict[str, Any]]:
        found = []
        for api_version, kind, name in (TOKEN_RATE_LIMIT_POLICY, RATE_LIMIT_POLICY):
            plural = {"TokenRateLimitPolicy": "tokenratelimitpolicies", "RateLimitPolicy": "ratelimitpolicies"}[kind]
            obj = self.double.get(plural, NS, name, KUADRANT, api_version.split("/")[1])
            if obj is not None:
                found.append(obj)
        return found

    def call(self, api_key: str, model: str, tokens: int, at: datetime) -> bool:
        path = f"/{model}/v1/chat/completions"  # what a client sends on maas-models (shared/modelroute.py)
        decision = self.authorino.check(f"APIKEY {api_key}", now=at, path=path)
        assert decision.status == 200, decision.reason
        if not self.limitador.check(decision.identity, route=ROUTE, now=at, path=path):
            return False
        self.limitador.report(decision.identity, tokens, route=ROUTE, now=at, path=path)
        return True


@pytest.fixture
def cluster() -> Iterator[tuple[KubeDouble, DirectClient, Settings]]:
    with deployed() as running:
        yield running


def make_team(api: DirectClient, team_id: str, limits: list[dict[str, Any]]) -> Team:
    reply = api.call("POST", "/teams", json={"team_id": team_id, "team_name": team_id, "limits": limits})
    assert reply.status == 201, reply.text
    return context().store.get_team(team_id=team_id)


def make_key(api: DirectClient, team_id: str, user: str, **fields: Any) -> tuple[str, ApiKey]:
    reply = api.call("POST", f"/teams/{team_id}/keys",
                     json={"user_id": user, "user_email": f"{user}@example.com", **fields})
    assert reply.status == 201, reply.text
    return reply.body["api_key"], context().store.get_key(secret_name=reply.body["secret_name"])


def replay(calls: list[Call], team: Team, keys: dict[str, tuple[str, ApiKey]], cluster: Cluster, *,
           after: Callable[[Call, Gateway], None] | None = None) -> list[tuple[Call, bool, bool, str | None]]:
    """Each call through both; (call, gateway admitted, cluster admitted, the gateway's refusal).
    `after` is handed each call, and the gateway, once both have taken it."""
    gateway = Gateway()
    outcomes = []
    for call in calls:
        at = T0 + timedelta(seconds=call.at)
        api_key, key = keys[call.user]
        local = gateway.call(team, key, call.model, call.tokens, at)
        outcomes.append((call, local, cluster.call(api_key, call.model, call.tokens, at), gateway.refused_by))
        if after is not None:
            after(call, gateway)
    return outcomes


# Each phase starts after the minute windows of the one before have ended; the day and the
# hour go on. Every rate is the only one refusing at least once.
ISSUE_CALLS = [
    # the RPM: alice's fifth call in a minute (tokens are far from their limits)
    *(Call(s, "alice", "small", 10) for s in range(4)), Call(4, "alice", "small", 10),
    # the team's RPM: bob's third call is the team's seventh in the minute
    Call(5, "bob", "small", 10), Call(6, "bob", "small", 10), Call(7, "bob", "small", 10),
    # the per-minute tokens: two calls of 150 (the second admitted at 150 < 200, charged in full)
    Call(100, "alice", "big", 150), Call(101, "alice", "big", 150), Call(102, "alice", "small", 10),
    # the large model's hour: 300 spent on big, so big is refused and small still admitted
    Call(200, "alice", "small", 10), Call(201, "alice", "big", 10), Call(202, "alice", "small", 10),
    # the per-day tokens: bob spends 190 a minute until the day's 1000 are gone
    *(Call(300 + 100 * n, "bob", "small", 190) for n in range(6)), Call(900, "bob", "small", 10),
    # the next hour and the next day
    Call(3800, "alice", "big", 10), Call(86_500, "bob", "small", 10),
]


def test_the_issues_team_gets_the_gateways_decisions_in_a_cluster(cluster) -> None:
    double, api, _ = cluster
    team = make_team(api, "alpha", ISSUE_LIMITS)
    keys = {user: make_key(api, "alpha", user) for user in ("alice", "bob")}
    outcomes = replay(ISSUE_CALLS, team, keys, Cluster(double))

    differing = [(o[0], o[1], o[2]) for o in outcomes if o[1] != o[2]]
    assert differing == []
    # Not a vacuous agreement: every rate of the team refused a call on its own...
    assert {o[3] for o in outcomes if o[3]} == {limit["name"] for limit in ISSUE_LIMITS}
    # ...and these are the calls refused.
    refused = [(o[0].at, o[3]) for o in outcomes if not o[1]]
    assert refused == [(4, "rpm"), (7, "team-rpm"), (102, "per-minute"), (201, "big-hourly"), (900, "per-day")]


def test_the_rendered_limits_of_the_issues_team(cluster) -> None:
    """What the sync applied for it: two token limits (the every-model one with both windows),
    two request limits (per user, per team), all selected by the team's tier."""
    double, api, _ = cluster
    team = make_team(api, "alpha", ISSUE_LIMITS)
    tokens, requests = Cluster(double).applied()
    tier = tier_of(team)
    assert tier.startswith("200-per-60s-user-r")
    on_tier = {"predicate": f'auth.identity.tier == "{tier}"'}
    per_user = [{"expression": "auth.identity.team"}, {"expression": "auth.identity.userid"}]
    assert tokens["spec"]["limits"] == {
        "200-per-60s-1000-per-86400s-user": {"rates": [{"limit": 200, "window": "1m"}, {"limit": 1000, "window": "24h"}],
                                             "when": [on_tier], "counters": per_user},
        "300-per-3600s-user-on-big": {"rates": [{"limit": 300, "window": "1h"}],
                                      "when": [on_tier, {"predicate": 'request.url_path.startsWith("/big/")'}],
                                      "counters": per_user},
    }
    assert requests["spec"]["limits"] == {
        "4-per-60s-requests-user": {"rates": [{"limit": 4, "window": "1m"}], "when": [on_tier], "counters": per_user},
        "6-per-60s-requests-team": {"rates": [{"limit": 6, "window": "1m"}], "when": [on_tier],
                                    "counters": [{"expression": "auth.identity.team"}]},
    }


def test_teams_with_the_same_rates_share_the_limits_and_keep_their_counters(cluster) -> None:
    double, api, _ = cluster
    renamed = [{**limit, "name": f"{limit['name']}-x"} for limit in reversed(ISSUE_LIMITS)]
    alpha, beta = make_team(api, "alpha", ISSUE_LIMITS), make_team(api, "beta", renamed)
    assert tier_of(alpha) == tier_of(beta)  # names and order are no part of a tier
    keys = {"alice": make_key(api, "alpha", "alice"), "bea": make_key(api, "beta", "alice")}
    model = Cluster(double)
    assert sum(len(p["spec"]["limits"]) for p in model.applied()) == 4
    for _ in range(4):
        assert model.call(keys["alice"][0], "small", 10, T0)
    assert not model.call(keys["alice"][0], "small", 10, T0)  # alpha's alice: her RPM is spent
    assert model.call(keys["bea"][0], "small", 10, T0)  # beta's alice: a counter of her own


def test_adding_an_rpm_keeps_what_the_token_budget_has_counted(cluster) -> None:
    """A team's list gains a rate: its tier changes, but the limit of its unchanged token budget
    is the same limit (named by what it counts), so its counter goes on, as on one machine,
    where the short form's rate `tokens` keeps its counters' names (shared/limitplan.py)."""
    double, api, _ = cluster
    team = make_team(api, "alpha", [{"name": "tokens", "limit": 1000, "window": "1h"}])
    api_key, key = make_key(api, "alpha", "alice")
    model, gateway = Cluster(double), Gateway()
    assert model.call(api_key, "small", 990, T0) and gateway.call(team, key, "small", 990, T0)

    reply = api.call("PATCH", "/teams/alpha", json={"limits": [
        {"name": "tokens", "limit": 1000, "window": "1h"}, {"name": "rpm", "limit": 60, "window": "1m", "unit": "requests"}]})
    assert reply.status == 200, reply.text
    team, key = context().store.get_team(team_id="alpha"), context().store.get_key(secret_name=key.secret_name)
    for policy in model.applied():
        model.limitador.policy = policy  # re-read, as Kuadrant would; Limitador keeps its counters
    later = T0 + timedelta(seconds=10)
    decision = model.authorino.check(f"APIKEY {api_key}", now=later)
    assert decision.identity is not None and decision.identity["tier"] == tier_of(team) != "1000-per-3600s-user"
    # 990 of 1000 spent in both: one more call is admitted (990 < 1000), the one after refused.
    assert model.call(api_key, "small", 20, later) and gateway.call(team, key, "small", 20, later)
    assert not model.call(api_key, "small", 1, later) and not gateway.call(team, key, "small", 1, later)
    assert gateway.refused_by == "tokens"


def test_a_per_model_rate_applies_to_its_models_path_only(cluster) -> None:
    """The model is the first path segment on `maas-models`; the body is no part of a predicate
    (§7). Calls through any other route (no model in the path) are not counted by it: why
    KServe's own routes must stay off the Gateway (docs/DEPLOY.md)."""
    double, api, _ = cluster
    make_team(api, "alpha", [{"name": "tokens", "limit": 10_000, "window": "1h"},
                             {"name": "big", "limit": 100, "window": "1h", "model": "big"}])
    api_key, _ = make_key(api, "alpha", "alice")
    model = Cluster(double)
    assert model.call(api_key, "big", 100, T0)
    assert not model.call(api_key, "big", 1, T0)
    assert model.call(api_key, "bigger", 100, T0)  # `/bigger/` does not start with `/big/`
    decision = model.authorino.check(f"APIKEY {api_key}", now=T0, path="/v1/chat/completions")
    assert model.limitador.check(decision.identity, route=f"{NS}/kserve-big", now=T0,
                                 path="/v1/chat/completions")


def test_a_call_refused_for_tokens_still_counts_for_the_request_rates_in_a_cluster(cluster) -> None:
    """Difference 1. Kuadrant runs the RateLimitPolicy's action before the TokenRateLimitPolicy's
    (KO istio_extension_reconciler.go; §18), and Limitador adds its hit when it admits: a call the
    token limit then refuses has been counted for the RPM. The gateway checks every limit in one
    step and counts nothing for a refused call. Here alice's refused calls to `big` use up her RPM
    in the cluster only."""
    double, api, _ = cluster
    team = make_team(api, "alpha", [{"name": "tokens", "limit": 10_000, "window": "1h"},
                                    {"name": "rpm", "limit": 4, "window": "1m", "unit": "requests"},
                                    {"name": "big", "limit": 50, "window": "1h", "model": "big"}])
    keys = {"alice": make_key(api, "alpha", "alice")}
    calls = [Call(0, "alice", "big", 50), Call(1, "alice", "big", 1), Call(2, "alice", "big", 1),
             Call(3, "alice", "big", 1), Call(4, "alice", "small", 1)]
    outcomes = replay(calls, team, keys, Cluster(double))
    assert [(o[1], o[2]) for o in outcomes] == [(True, True), (False, False), (False, False), (False, False),
                                                (True, False)]


def test_a_refused_call_starts_windows_in_the_gateway_but_not_in_limitador(cluster) -> None:
    """Difference 2. The gateway opens the window of every limit it checks, a refused call's
    too (local/gateway/counters.py, reserve_all); Limitador's token check reads without writing
    (LI in_memory.rs is_within_limits), so a token counter's window starts at the first call it
    admits. Here the per-minute budget refuses alice's first call to `big` at 30 s: the gateway's
    hour on `big` runs from 30 s, Limitador's from 70 s, and a call at 3640 s falls between."""
    double, api, _ = cluster
    team = make_team(api, "alpha", [{"name": "per-minute", "limit": 100, "window": "1m"},
                                    {"name": "big", "limit": 100, "window": "1h", "model": "big"}])
    keys = {"alice": make_key(api, "alpha", "alice")}
    calls = [Call(0, "alice", "small", 100), Call(30, "alice", "big", 1), Call(70, "alice", "big", 100),
             Call(3640, "alice", "big", 1)]
    outcomes = replay(calls, team, keys, Cluster(double))
    assert [(o[1], o[2]) for o in outcomes] == [(True, True), (False, False), (True, True), (True, False)]


# ------------------------------------------------------------------ a key's own rates


def wired_key(double: KubeDouble, key: ApiKey) -> None:
    """The key Secret as kubeshapes.key_annotations is to write it once wired: with
    `maas/key-tier` (shared/tiers.py key_tier_annotations). Until then the test adds it, before
    Authorino first reads the Secret (it would not see a later edit: §8)."""
    with double.cluster.lock:
        for (group, _, plural, _, name), obj in double.cluster.objects.items():
            if (group, plural, name) == ("", "secrets", key.secret_name):
                obj["metadata"].setdefault("annotations", {}).update(key_tier_annotations(key))


def test_a_keys_own_rates_are_counted_for_that_key(cluster) -> None:
    double, api, settings = cluster
    team = make_team(api, "alpha", [{"name": "tokens", "limit": 10_000, "window": "1h"},
                                    {"name": "rpm", "limit": 5, "window": "1m", "unit": "requests"}])
    key_limits = [{"name": "key-rpm", "limit": 2, "window": "1m", "unit": "requests"},
                  {"name": "key-big", "limit": 30, "window": "1h", "model": "big"}]
    first, second = make_key(api, "alpha", "alice", limits=key_limits), make_key(api, "alpha", "alice", limits=key_limits)
    plain = make_key(api, "alpha", "alice")
    for _, key in (first, second):
        wired_key(double, key)
    assert key_tier_of(first[1]) == key_tier_of(second[1]) is not None
    policies = generate_policies([team], settings, keys=[first[1], second[1], plain[1]])
    limits = {p["kind"]: p["spec"]["limits"] for p in policies if p["kind"].endswith("RateLimitPolicy")}
    key_tier = key_tier_of(first[1])
    on_key = {"predicate": f'auth.identity.keytier == "{key_tier}"'}
    assert limits["RateLimitPolicy"]["key-2-per-60s-requests"] == {
        "rates": [{"limit": 2, "window": "1m"}], "when": [on_key], "counters": [{"expression": KEY_COUNTER}]}
    assert limits["TokenRateLimitPolicy"]["key-30-per-3600s-on-big"]["when"] == [
        on_key, {"predicate": 'request.url_path.startsWith("/big/")'}]

    model = Cluster(double, policies=[p for p in policies if p["kind"].endswith("RateLimitPolicy")])
    keys = {"first": first, "second": second, "plain": plain}
    calls = [
        Call(0, "first", "small", 1), Call(1, "first", "small", 1), Call(2, "first", "small", 1),  # the key's RPM
        Call(3, "second", "small", 1),  # the other key: a counter of its own
        Call(4, "plain", "small", 1), Call(5, "plain", "small", 1), Call(6, "plain", "small", 1),  # alice's RPM: 5
        Call(100, "second", "big", 30), Call(101, "second", "big", 1),  # the key's 30 tokens an hour on big
        Call(200, "second", "small", 1), Call(201, "plain", "big", 1),  # other models, other keys: unaffected
    ]
    outcomes = replay(calls, team, keys, model)
    assert [o[0].at for o in outcomes if o[1] != o[2]] == []
    assert [(o[0].at, o[3]) for o in outcomes if not o[1]] == [(2, "key-rpm"), (6, "rpm"), (101, "key-big")]


def test_a_rotated_key_counts_its_own_rates_where_its_predecessor_did(cluster) -> None:
    """The successor carries `maas/lineage` (the chain's first handle) from its creation, which
    is when Authorino reads a Secret (§8), and the identity's `key` field reads it: both keys of
    a grace period count on one counter in Limitador, as in the local gateway (ApiKey.budget_handle),
    so a rotation is never a fresh key budget."""
    double, api, settings = cluster
    team = make_team(api, "alpha", [{"name": "tokens", "limit": 10_000, "window": "1h"}])
    key_limits = [{"name": "key-rpm", "limit": 3, "window": "1m", "unit": "requests"}]
    old = make_key(api, "alpha", "alice", limits=key_limits)
    wired_key(double, old[1])
    rotated = api.call("POST", f"/keys/{old[1].secret_name}/rotate", json={"grace_period": "1h"})
    assert rotated.status == 201, rotated.text
    new = rotated.body["api_key"], context().store.get_key(secret_name=rotated.body["secret_name"])
    wired_key(double, new[1])
    assert new[1].lineage == old[1].secret_name
    model = Cluster(double)
    identity = model.authorino.check(f"APIKEY {new[0]}", now=T0).identity
    assert identity is not None and identity["key"] == old[1].secret_name
    assert model.authorino.check(f"APIKEY {old[0]}", now=T0).identity["key"] == old[1].secret_name
    calls = [Call(0, "old", "small", 1), Call(1, "new", "small", 1), Call(2, "new", "small", 1),
             Call(3, "new", "small", 1), Call(4, "old", "small", 1)]
    outcomes = replay(calls, team, {"old": old, "new": new}, model)
    assert [o[0].at for o in outcomes if o[1] != o[2]] == []
    assert [(o[0].at, o[3]) for o in outcomes if not o[1]] == [(3, "key-rpm"), (4, "key-rpm")]


def test_a_keys_concurrency_cap_renders_nothing_and_is_warned_of(cluster) -> None:
    """Limitador counts hits in windows, never calls in flight, and a hit is never given back
    (§18): `max_concurrent` has no form in a cluster. The policies are those of the same key
    without it, and the warning says what is not enforced."""
    double, api, settings = cluster
    team = make_team(api, "alpha", [{"name": "tokens", "limit": 1000, "window": "1h"}])
    _, capped = make_key(api, "alpha", "alice", max_concurrent=2)
    _, uncapped = make_key(api, "alpha", "alice")
    assert generate_policies([team], settings, keys=[capped]) == generate_policies([team], settings, keys=[uncapped])
    (warning,) = policy_warnings([team], [capped, uncapped])
    assert warning.startswith(f"1 key(s) have max_concurrent (e.g. '{capped.secret_name}' of team 'alpha', 2)")
    assert "not enforced in a cluster" in warning
    assert policy_warnings([team], [uncapped]) == []


def test_a_key_without_rates_of_its_own_has_an_empty_key_tier(cluster) -> None:
    """The identity's `keytier` is "" rather than absent or null, so the predicates compare two
    strings whatever a CEL engine makes of null: an error in one of the RateLimitPolicy's
    predicates would fail its one action, and every request limit with it (§18)."""
    double, api, _ = cluster
    make_team(api, "alpha", [{"name": "tokens", "limit": 1000, "window": "1h"},
                             {"name": "rpm", "limit": 1, "window": "1m", "unit": "requests"}])
    api_key, key = make_key(api, "alpha", "alice")
    model = Cluster(double)
    decision = model.authorino.check(f"APIKEY {api_key}", now=T0)
    assert decision.identity is not None and decision.identity["keytier"] == ""
    assert KEY_TIER_ANNOTATION not in (double.get("secrets", NS, key.secret_name) or {})["metadata"]["annotations"]
    assert model.call(api_key, "small", 1, T0)
    assert not model.call(api_key, "small", 1, T0)  # the team's RPM applies
    # The control: an identity whose tier is missing makes the merged action fail, and then no
    # request limit applies at all, which is what the expression keeps from happening.
    broken = {k: v for k, v in decision.identity.items() if k != "tier"}
    assert model.limitador.check(broken, route=ROUTE, now=T0, path="/small/v1/chat/completions")


# ------------------------------------------------------------------ many teams


def test_ten_thousand_teams_with_four_lists_of_rates_still_limit_each_team(cluster) -> None:
    """The limits are per tier, the counters per team: with 10,000 teams the policies have the
    limits of the four distinct lists, and each team's calls still count apart."""
    _, _, settings = cluster
    lists = [ISSUE_LIMITS, ISSUE_LIMITS[:1], ISSUE_LIMITS[:3], [{**ISSUE_LIMITS[0], "limit": 500}]]
    teams = [team_from_request(TeamCreate(team_id=f"t{n}", limits=lists[n % 4]), T0) for n in range(10_000)]
    policies = [p for p in generate_policies(teams, settings) if p["kind"].endswith("RateLimitPolicy")]
    # A limit per distinct group of rates (the third list's are all the issue's): 4 token limits,
    # 2 request limits; one Limitador limit per rate.
    assert [len(p["spec"]["limits"]) for p in policies] == [4, 2]
    assert sum(len(limit["rates"]) for p in policies for limit in p["spec"]["limits"].values()) == 7
    limitador = Limitador(*policies)
    for team in (teams[0], teams[4], teams[9_996]):  # one tier
        who = {"userid": "alice", "team": team.team_id, "tier": tier_of(team), "key": "k", "keytier": ""}
        assert all(limitador.check(who, route=ROUTE, now=T0, path="/small/v1/x") for _ in range(4))
        assert not limitador.check(who, route=ROUTE, now=T0, path="/small/v1/x")  # each team's own RPM
