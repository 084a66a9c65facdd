"""Kuadrant policy generation: exact shapes on small inputs, strict CRD validity on many."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.policies import (
    AUTH_POLICY,
    MANY_LIMITS,
    RATE_LIMIT_POLICY,
    TELEMETRY_POLICY,
    TOKEN_RATE_LIMIT_POLICY,
    PolicyRef,
    auth_policy,
    generate_policies,
    kuadrant_window,
    managed_policies,
    policy_warnings,
    rate_limit_policy,
    token_rate_limit_policy,
)
from shared.rates import Rate
from shared.settings import Settings
from shared.store.base import ApiKey, LimitScope, Team
from shared.store.kubeshapes import LABEL_VALUE
from shared.tiers import RateShape, key_tier_of, tier_of
from tests import crds

CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LABELS = {"app.kubernetes.io/managed-by": "maas-key-manager", "app.kubernetes.io/part-of": "maas"}
ALPHA_TIER = "1000-per-3600s-user"  # team("alpha")'s budget
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "maas-gateway"}


def team(team_id: str, limit: int = 1000, window: str = "1h", scope: LimitScope = "user",
         rates: tuple[Rate, ...] = ()) -> Team:
    return Team(
        team_id=team_id,
        team_name=team_id.title(),
        description="",
        policy=f"{team_id}-tokens",
        token_limit=limit,
        time_window=window,
        limit_scope=scope,
        created_at=CREATED,
        rates=rates,
    )


# The issue's example: per-minute and per-day tokens, an RPM, a budget on one model.
ISSUE_RATES = (
    Rate("per-minute", 20000, "1m"),
    Rate("per-day", 1000000, "24h"),
    Rate("rpm", 60, "1m", "requests"),
    Rate("big-hourly", 10000, "1h", "tokens", "user", "big"),
)


def key(name: str, *rates: Rate, max_concurrent: int | None = None) -> ApiKey:
    return ApiKey(secret_name=name, key_sha256="", team_id="alpha", user_id="alice", user_email="",
                  role="member", status="active", created_at=CREATED, rates=rates, max_concurrent=max_concurrent)


@pytest.fixture
def cluster_settings() -> Settings:
    return Settings(namespace="llm", key_selector="maas-api-key")


def by_kind(policies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {policy["kind"]: policy for policy in policies}


# ------------------------------------------------------------------ exact shapes


def test_token_limits_one_per_budget_tier_with_the_team_in_the_counters(cluster_settings: Settings) -> None:
    policy = token_rate_limit_policy(
        [team("zeta", 20, "1m", "team"), team("alpha", 100000, "1h", "user"), team("beta", 100000, "60m", "user"),
         team("gamma", 20, "60s", "team")],
        cluster_settings,
    )

    assert policy == {
        "apiVersion": "kuadrant.io/v1alpha1",
        "kind": "TokenRateLimitPolicy",
        "metadata": {"name": "maas-team-token-limits", "namespace": "llm", "labels": LABELS},
        "spec": {
            "targetRef": GATEWAY_REF,
            "limits": {
                "100000-per-3600s-user": {
                    "rates": [{"limit": 100000, "window": "1h"}],
                    "when": [{"predicate": 'auth.identity.tier == "100000-per-3600s-user"'}],
                    "counters": [{"expression": "auth.identity.team"}, {"expression": "auth.identity.userid"}],
                },
                "20-per-60s-team": {
                    "rates": [{"limit": 20, "window": "1m"}],
                    "when": [{"predicate": 'auth.identity.tier == "20-per-60s-team"'}],
                    "counters": [{"expression": "auth.identity.team"}],
                },
            },
        },
    }


def test_token_limit_window_in_days_becomes_hours(cluster_settings: Settings) -> None:
    policy = token_rate_limit_policy([team("weekly", 5, "7d")], cluster_settings)
    assert policy["spec"]["limits"]["5-per-604800s-user"]["rates"] == [{"limit": 5, "window": "168h"}]


def test_ten_thousand_teams_make_as_many_limits_as_budgets(cluster_settings: Settings) -> None:
    teams = [team(f"t{i}", limit=(1000, 5000, 20000)[i % 3], scope=("user", "team")[i % 2]) for i in range(10_000)]
    policy = token_rate_limit_policy(teams, cluster_settings)
    assert len(policy["spec"]["limits"]) == 6
    assert len(json.dumps(policy)) < 4096  # no team ids: its size does not grow with the teams


def test_a_team_with_several_rates_renders_token_and_request_limits(cluster_settings: Settings) -> None:
    """Token rates of one scope and model are one limit with a rate per window, named by what it
    counts; a model's rate adds a path predicate; request rates are the RateLimitPolicy's. What
    they do: tests/cluster/test_rate_limits.py."""
    alpha = team("alpha", 20000, "1m", rates=ISSUE_RATES)
    tier = tier_of(alpha)
    assert tier == "20000-per-60s-user-rb91b121dec"  # stable across versions: keys carry it
    policies = generate_policies([alpha], cluster_settings)
    assert [p["kind"] for p in policies] == ["AuthPolicy", "TokenRateLimitPolicy", "RateLimitPolicy", "TelemetryPolicy"]
    on_tier = {"predicate": f'auth.identity.tier == "{tier}"'}
    per_user = [{"expression": "auth.identity.team"}, {"expression": "auth.identity.userid"}]
    assert by_kind(policies)["TokenRateLimitPolicy"]["spec"]["limits"] == {
        "10000-per-3600s-user-on-big": {"rates": [{"limit": 10000, "window": "1h"}],
                                        "when": [on_tier, {"predicate": 'request.url_path.startsWith("/big/")'}],
                                        "counters": per_user},
        "20000-per-60s-1000000-per-86400s-user": {
            "rates": [{"limit": 20000, "window": "1m"}, {"limit": 1000000, "window": "24h"}],
            "when": [on_tier], "counters": per_user},
    }
    assert by_kind(policies)["RateLimitPolicy"] == {
        "apiVersion": "kuadrant.io/v1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "maas-team-request-limits", "namespace": "llm", "labels": LABELS},
        "spec": {
            "targetRef": GATEWAY_REF,
            "limits": {"60-per-60s-requests-user": {"rates": [{"limit": 60, "window": "1m"}], "when": [on_tier],
                                                    "counters": per_user}},
        },
    }


def test_a_limit_serves_every_tier_with_its_rates(cluster_settings: Settings) -> None:
    """A limit is named by what it counts and selected by every tier that has it: a team whose
    list gains an RPM keeps the limit of its token budget, hence its counters (the identifier
    Kuadrant gives Limitador is a hash of the limit's name: SOURCES.md §5)."""
    plain = team("plain")  # 1000 tokens an hour per user
    with_rpm = team("with-rpm", rates=(Rate("tokens", 1000, "1h"), Rate("rpm", 60, "1m", "requests")))
    tokens = token_rate_limit_policy([plain, with_rpm], cluster_settings)["spec"]["limits"]
    assert tokens == {ALPHA_TIER: {
        "rates": [{"limit": 1000, "window": "1h"}],
        "when": [{"predicate": f'auth.identity.tier in ["{ALPHA_TIER}", "{tier_of(with_rpm)}"]'}],
        "counters": [{"expression": "auth.identity.team"}, {"expression": "auth.identity.userid"}],
    }}
    assert token_rate_limit_policy([plain], cluster_settings)["spec"]["limits"][ALPHA_TIER]["when"] == [
        {"predicate": f'auth.identity.tier == "{ALPHA_TIER}"'}]


def test_a_limit_of_many_rates_is_named_by_a_digest(cluster_settings: Settings) -> None:
    rates = (Rate("tokens", 123456789, "1m"), Rate("h", 234567890, "1h"), Rate("d", 345678901, "24h"))
    (name,) = token_rate_limit_policy([team("a", rates=rates)], cluster_settings)["spec"]["limits"]
    assert re.fullmatch(r"r[0-9a-f]{12}-user", name), name


def test_the_deploy_guides_example_is_what_renders(cluster_settings: Settings) -> None:
    """docs/DEPLOY.md, "Rate limits in a cluster", shows the limits of this team: they must be
    these, to the character of every name and predicate."""
    text = (Path(__file__).parent.parent / "docs" / "DEPLOY.md").read_text()
    section = text[text.index("## Rate limits in a cluster"):text.index("## Token limits in a cluster")]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    shown = {doc["kind"]: doc["spec"]["limits"] for doc in yaml.safe_load_all(block)}
    policies = by_kind(generate_policies([team("alpha", 20000, "1m", rates=ISSUE_RATES)], cluster_settings))
    assert shown == {kind: policies[kind]["spec"]["limits"] for kind in ("TokenRateLimitPolicy", "RateLimitPolicy")}


def test_the_short_form_keeps_its_limit_and_renders_no_request_limits(cluster_settings: Settings) -> None:
    """A team given no list keeps the tier and limit name it had, hence its Limitador counters."""
    policies = generate_policies([team("alpha")], cluster_settings)
    assert tier_of(team("alpha")) == ALPHA_TIER
    assert list(by_kind(policies)["TokenRateLimitPolicy"]["spec"]["limits"]) == [ALPHA_TIER]
    assert "RateLimitPolicy" not in by_kind(policies)
    assert rate_limit_policy([team("alpha")], cluster_settings)["spec"]["limits"] == {}


def test_a_tier_is_the_rates_not_their_names_order_or_spelling() -> None:
    listed = team("a", 20000, "1m", rates=ISSUE_RATES)
    renamed = tuple(Rate(f"x{n}", r.limit, r.window, r.unit, r.scope, r.model) for n, r in enumerate(ISSUE_RATES))
    respelled = tuple(Rate(r.name, r.limit, {"1m": "60s", "24h": "1d", "1h": "60m"}[r.window], r.unit, r.scope,
                           r.model) for r in ISSUE_RATES)
    looser = (*ISSUE_RATES, Rate("loose", 50000, "60s"))  # never refuses before per-minute does
    for rates in (renamed, tuple(reversed(ISSUE_RATES)), respelled, looser):
        assert tier_of(team("b", 20000, "1m", rates=rates)) == tier_of(listed)
    # One rate plus a looser twin is the short form's tier.
    twin = (Rate("tokens", 1000, "1h"), Rate("twin", 2000, "60m"))
    assert tier_of(team("c", rates=twin)) == ALPHA_TIER


@pytest.mark.parametrize("changed", [
    Rate("per-day", 1000001, "24h"),
    Rate("per-day", 1000000, "25h"),
    Rate("per-day", 1000000, "24h", "requests"),
    Rate("per-day", 1000000, "24h", "tokens", "team"),
    Rate("per-day", 1000000, "24h", "tokens", "user", "big"),
], ids=["limit", "window", "unit", "scope", "model"])
def test_any_change_to_a_rate_is_another_tier(changed: Rate) -> None:
    before = team("a", 20000, "1m", rates=ISSUE_RATES)
    after = team("a", 20000, "1m", rates=(ISSUE_RATES[0], changed, *ISSUE_RATES[2:]))
    assert tier_of(after) != tier_of(before)


def test_tiers_fit_a_label_value_at_their_longest() -> None:
    huge = 2**53  # the largest limit the API takes
    rates = tuple(Rate(f"r{n}", huge - n, f"{99999 - n}h59m59s", "tokens" if n % 2 else "requests",
                       "team" if n % 3 else "user", f"model-{n}" if n else None) for n in range(16))
    rates = (Rate("tokens", huge, "99999h59m59s", "tokens", "team"), *rates[1:])
    names = [tier_of(team("a", rates=rates)), tier_of(team("a", huge, "99999h59m59s", "team")),
             key_tier_of(key("k", *rates)), key_tier_of(key("k", Rate("r", huge, "99999h59m59s", "requests")))]
    for name in names:
        assert name is not None and len(name) <= 63 and LABEL_VALUE.match(name), name


def test_key_tiers() -> None:
    assert key_tier_of(key("k")) is None
    assert key_tier_of(key("k", Rate("rpm", 60, "1m", "requests", "key"))) == "key-60-per-60s-requests"
    several = key_tier_of(key("k", Rate("rpm", 60, "1m", "requests", "key"), Rate("t", 5, "1h", "tokens", "key")))
    on_model = key_tier_of(key("k", Rate("t", 5, "1h", "tokens", "key", "big")))
    assert several is not None and several.startswith("key-r") and len(several) == len("key-r") + 10
    assert on_model is not None and on_model.startswith("key-r") and on_model != several


def test_keys_with_the_same_rates_share_limits_counted_per_key(cluster_settings: Settings) -> None:
    own = (Rate("rpm", 10, "1m", "requests", "key"), Rate("big", 500, "1h", "tokens", "key", "big"))
    keys = [key("k1", *own), key("k2", *reversed(own)), key("k3"), key("k4", Rate("rpm", 11, "1m", "requests", "key"))]
    tokens = token_rate_limit_policy([team("alpha")], cluster_settings, keys=keys)["spec"]["limits"]
    requests = rate_limit_policy([team("alpha")], cluster_settings, keys=keys)["spec"]["limits"]
    shared_tier = key_tier_of(keys[0])
    assert shared_tier is not None and shared_tier == key_tier_of(keys[1])
    on_key = {"predicate": f'auth.identity.keytier == "{shared_tier}"'}
    assert tokens == {
        ALPHA_TIER: tokens[ALPHA_TIER],
        "key-500-per-3600s-on-big": {"rates": [{"limit": 500, "window": "1h"}],
                                     "when": [on_key, {"predicate": 'request.url_path.startsWith("/big/")'}],
                                     "counters": [{"expression": "auth.identity.key"}]},
    }
    assert requests == {
        "key-10-per-60s-requests": {"rates": [{"limit": 10, "window": "1m"}], "when": [on_key],
                                    "counters": [{"expression": "auth.identity.key"}]},
        "key-11-per-60s-requests": {
            "rates": [{"limit": 11, "window": "1m"}],
            "when": [{"predicate": 'auth.identity.keytier == "key-11-per-60s-requests"'}],
            "counters": [{"expression": "auth.identity.key"}]},
    }


def test_ten_thousand_teams_with_a_handful_of_rate_lists_are_a_bounded_number_of_limits(
        cluster_settings: Settings) -> None:
    """The size of the rate limits is bounded by the distinct lists of rates: 10,000 teams over
    five lists (spelled and named differently by each team) make the limits of five teams."""
    lists = [
        (),  # the short form
        ISSUE_RATES,
        (Rate("tokens", 1000, "1h"), Rate("rpm", 30, "1m", "requests", "team")),
        (Rate("tokens", 1000, "1h"), Rate("day", 5000, "24h", "tokens", "team"), Rate("m", 100, "1h", "tokens", "user", "m")),
        (Rate("tokens", 500, "1m"), Rate("rpm", 10, "1m", "requests"), Rate("rph", 100, "1h", "requests")),
    ]

    def teams(count: int) -> list[Team]:
        made = []
        for n in range(count):
            rates = tuple(Rate(f"{r.name}-{n}", r.limit, r.window if n % 2 else r.window.replace("1h", "60m"),
                               r.unit, r.scope, r.model) for r in lists[n % 5])
            made.append(team(f"t{n:05d}", 20000 if n % 5 == 1 else 1000, "1h", rates=rates))
        return made

    many, five = generate_policies(teams(10_000), cluster_settings), generate_policies(teams(5), cluster_settings)
    limits = {p["kind"]: p["spec"]["limits"] for p in many if "limits" in p["spec"]}
    # One limit per distinct group (unit, scope, model, rates): 1000 tokens an hour per user is
    # in three lists and one limit; the issue's list has two more, the others one each.
    assert [len(limits["TokenRateLimitPolicy"]), len(limits["RateLimitPolicy"])] == [6, 3]
    # One Limitador limit per rate (per route): 11 in all, once each whatever the teams.
    assert sum(len(limit["rates"]) for kind in limits.values() for limit in kind.values()) == 11
    rate_limits = [p for p in many if p["kind"].endswith("RateLimitPolicy")]
    assert rate_limits == [p for p in five if p["kind"].endswith("RateLimitPolicy")]
    assert len(json.dumps(rate_limits)) < 8192  # no team ids anywhere in them
    assert policy_warnings(teams(10_000)) == []


def test_many_distinct_lists_are_warned_of() -> None:
    teams = [team(f"t{n}", 1000 + n) for n in range(MANY_LIMITS + 1)]
    (warning,) = policy_warnings(teams)
    assert warning.startswith(f"the rate limits have {MANY_LIMITS + 1} limits")
    assert policy_warnings(teams[:MANY_LIMITS]) == []


def test_a_rate_on_a_model_the_route_cannot_serve_is_warned_of() -> None:
    odd = team("alpha", rates=(Rate("tokens", 1000, "1h"), Rate("org", 10, "1h", "tokens", "user", "org/model")))
    (warning,) = policy_warnings([odd])
    assert warning == ("team 'alpha': limit 'org' is on model 'org/model', which the maas-models route cannot serve "
                       "(not one path segment): it never applies in a cluster")
    # Its limit is still rendered (named by a digest), valid for the CRD.
    policy = token_rate_limit_policy([odd], Settings())
    assert any(name.endswith("-on-~" + name[-10:]) for name in policy["spec"]["limits"])
    crds.validate(policy)


@pytest.mark.parametrize(("seconds", "window"), [
    (1, "1s"), (60, "1m"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (86400, "24h"), (604800, "168h"),
    (359999999, "99999h59m59s"),
])
def test_windows_render_in_one_spelling(seconds: int, window: str) -> None:
    assert kuadrant_window(RateShape("tokens", "user", "", seconds, 1, "ignored")) == window


def test_a_window_past_five_digits_of_hours_keeps_its_own_spelling() -> None:
    """`99999h99999m` is 101665 hours: six digits, which the CRD refuses; the rate's own text
    fits it (shared/durations.py accepted it) and means the same to Go's ParseDuration."""
    shape = RateShape("tokens", "user", "", 99999 * 3600 + 99999 * 60, 1, "99999h99999m")
    assert kuadrant_window(shape) == "99999h99999m"
    policy = token_rate_limit_policy([team("a", 5, "99999h99999m")], Settings())
    assert [rate["window"] for limit in policy["spec"]["limits"].values() for rate in limit["rates"]] == ["99999h99999m"]
    crds.validate(policy)


def test_auth_policy_shape(cluster_settings: Settings) -> None:
    policy = auth_policy(cluster_settings)
    selector = {"matchLabels": {"kuadrant.io/auth-secret": "true", "app": "maas-api-key"}}
    denial_headers = {"content-type": {"value": "application/json"}}

    assert policy["metadata"] == {"name": "maas-api-keys", "namespace": "llm", "labels": LABELS}
    rules = policy["spec"]["rules"]
    assert policy["spec"]["targetRef"] == GATEWAY_REF
    lookup = {"selector": selector, "allNamespaces": True}
    assert rules["authentication"] == {
        "api-key": {"apiKey": lookup, "credentials": {"authorizationHeader": {"prefix": "APIKEY"}}},
        "bearer": {"apiKey": lookup, "credentials": {"authorizationHeader": {"prefix": "Bearer"}}},
    }
    assert rules["response"]["success"] == {
        "filters": {
            "identity": {
                "json": {
                    "properties": {
                        "userid": {"selector": r"auth.identity.metadata.annotations.secret\.kuadrant\.io/user-id"},
                        "team": {"selector": "auth.identity.metadata.annotations.maas/team-id"},
                        "groups": {"selector": r"auth.identity.metadata.annotations.kuadrant\.io/groups"},
                        "tier": {"selector": "auth.identity.metadata.annotations.maas/tier"},
                        # What they give: tests/cluster/test_rate_limits.py.
                        "key": {"expression": '"maas/lineage" in auth.identity.metadata.annotations ? '
                                              'auth.identity.metadata.annotations["maas/lineage"] : '
                                              'auth.identity.metadata.name'},
                        "keytier": {"expression": '"maas/key-tier" in auth.identity.metadata.annotations ? '
                                                  'auth.identity.metadata.annotations["maas/key-tier"] : ""'},
                    }
                }
            }
        }
    }
    predicates = [
        pattern["predicate"]
        for rule in rules["authorization"].values()
        for pattern in rule["patternMatching"]["patterns"]
    ]
    # What these predicates mean to Authorino is tested in tests/cluster/test_authorino.py.
    assert predicates == [
        'auth.identity.metadata.namespace == "llm"',
        '"none" != ""',
        'auth.identity.metadata.annotations["maas/status"] == "active"',
        '!("maas/expires-at" in auth.identity.metadata.annotations) || '
        'int(timestamp(auth.identity.metadata.annotations["maas/expires-at"])) > int(request.time.seconds)',
        # The model is the path's first segment (the maas-models route); tests/cluster/test_model_access.py.
        '!("maas/models-allowed" in auth.identity.metadata.annotations) || '
        'auth.identity.metadata.annotations["maas/models-allowed"] == "" || '
        'request.url_path.split("/")[1] in auth.identity.metadata.annotations["maas/models-allowed"].split(",")',
    ]
    # Authorino never sees the body (tests/cluster/SOURCES.md §7): no rule may read it.
    assert not any("body" in predicate.lower() for predicate in predicates)
    for denial in ("unauthenticated", "unauthorized"):
        response = rules["response"][denial]
        assert response["code"] == 401
        assert response["headers"] == denial_headers
        body = json.loads(response["body"]["value"])
        assert set(body["error"]) == {"message", "type", "code"}
        assert body["error"]["type"] == "authentication_error"


def test_policies_follow_the_gateway_namespace() -> None:
    settings = Settings(namespace="llm", gateway_namespace="gateways", gateway_name="edge")
    policies = generate_policies([team("alpha")], settings)

    assert {p["metadata"]["namespace"] for p in policies} == {"gateways"}
    assert {p["spec"]["targetRef"]["name"] for p in policies} == {"edge"}
    for entry in by_kind(policies)["AuthPolicy"]["spec"]["rules"]["authentication"].values():
        assert entry["apiKey"]["allNamespaces"] is True


def test_telemetry_labels(cluster_settings: Settings) -> None:
    telemetry = by_kind(generate_policies([], cluster_settings, models=["m2", "m1", "m1"]))["TelemetryPolicy"]
    assert telemetry["spec"] == {
        "targetRef": GATEWAY_REF,
        "metrics": {
            "default": {
                "labels": {
                    "user": "auth.identity.userid",
                    "team": "auth.identity.team",
                    # What it means: tests/cluster/test_telemetry.py.
                    "model": 'string(requestBodyJSON("/model")) in ["m1", "m2"] ? string(requestBodyJSON("/model")) : "other"',
                }
            }
        },
    }


# ------------------------------------------------------------------ the whole set


def test_zero_teams_omit_the_token_limits_but_manage_them(cluster_settings: Settings) -> None:
    policies = generate_policies([], cluster_settings)

    assert [p["kind"] for p in policies] == ["AuthPolicy", "TelemetryPolicy"]
    managed = managed_policies(cluster_settings)
    assert PolicyRef(*TOKEN_RATE_LIMIT_POLICY, namespace="llm") in managed
    assert PolicyRef(*RATE_LIMIT_POLICY, namespace="llm") in managed
    produced = {(p["apiVersion"], p["kind"], p["metadata"]["name"]) for p in policies}
    assert produced < {(m.api_version, m.kind, m.name) for m in managed}


def test_generation_is_deterministic(cluster_settings: Settings) -> None:
    teams = [team(f"t{i:02d}", limit=i + 1, scope="team" if i % 2 else "user") for i in range(12)]
    forward = generate_policies(teams, cluster_settings)
    backward = generate_policies(list(reversed(teams)), cluster_settings)

    assert forward == backward
    assert json.dumps(forward) == json.dumps(backward)  # key order too: the apply diff is stable
    assert [p["metadata"]["name"] for p in forward] == [
        AUTH_POLICY[2],
        TOKEN_RATE_LIMIT_POLICY[2],
        TELEMETRY_POLICY[2],
    ]


SHAPES: dict[str, list[Team]] = {
    "zero-teams": [],
    "one-user-scope": [team("alpha")],
    "one-team-scope": [team("beta", 20, "1m", "team")],
    "mixed-windows": [
        team("a", 1, "500ms"),
        team("b", 10**9, "99999h", "team"),
        team("c-long-name-0123456789-0123456789-0123456789-0123456789-012345", 7, "1h30m"),
        team("d", 3, "2d", "team"),
    ],
    "many": [team(f"team-{i}", 100 * i + 1, f"{i + 1}m", "user" if i % 3 else "team") for i in range(40)],
    "several-rates": [team("issue", 20000, "1m", rates=ISSUE_RATES),
                      team("requests-only-extra", rates=(Rate("tokens", 1000, "1h"),
                                                         Rate("rpd", 10**9, "1d", "requests", "team", "m.1")))],
}


@pytest.mark.parametrize("teams", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("gateway_namespace", [None, "gateways"])
def test_every_generated_policy_is_strictly_valid(teams: list[Team], gateway_namespace: str | None) -> None:
    settings = Settings(namespace="llm", gateway_namespace=gateway_namespace)
    own = (Rate("rpm", 5, "1m", "requests", "key"), Rate("t", 50, "1h", "tokens", "key", "big"))
    policies = generate_policies(teams, settings, keys=[key("k1", *own), key("k2", own[0])])

    crds.validate_all(policies)
    for policy in policies:
        assert_policy_cel_rules(policy)


def assert_policy_cel_rules(policy: dict[str, Any]) -> None:
    """The CRDs' CEL rules (x-kubernetes-validations) that jsonschema cannot evaluate."""
    spec = policy["spec"]
    target = spec["targetRef"]
    assert target["group"] == "gateway.networking.k8s.io"
    allowed = {"TelemetryPolicy": {"Gateway"}}.get(policy["kind"], {"Gateway", "HTTPRoute"})
    assert target["kind"] in allowed
    assert not ({"defaults", "overrides"} & set(spec)), "we only use implicit defaults"
    if policy["kind"] in ("TokenRateLimitPolicy", "RateLimitPolicy"):
        assert spec["limits"], "the CRD requires at least one limit"
    if policy["kind"] == "AuthPolicy":
        assert spec["rules"]["authentication"], "the CRD requires an authentication rule"


# ------------------------------------------------------------------ the validator can fail


def test_validator_rejects_an_unknown_field(cluster_settings: Settings) -> None:
    policy = token_rate_limit_policy([team("alpha")], cluster_settings)
    policy["spec"]["limits"][ALPHA_TIER]["counter"] = [{"expression": "auth.identity.userid"}]

    with pytest.raises(crds.InvalidManifest, match=r"spec\.limits\.1000-per-3600s-user.*'counter' was unexpected"):
        crds.validate(policy)


def test_validator_rejects_a_wrong_type(cluster_settings: Settings) -> None:
    policy = token_rate_limit_policy([team("alpha")], cluster_settings)
    policy["spec"]["limits"][ALPHA_TIER]["rates"][0]["limit"] = "1000"

    assert crds.validation_errors(policy) == [
        ".spec.limits.1000-per-3600s-user.rates[0].limit: '1000' is not of type 'integer'"
    ]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: p["spec"]["limits"][ALPHA_TIER]["rates"][0].update(window="1d"), "does not match"),
        (lambda p: p["metadata"].update(uid="x"), "'uid' was unexpected"),
        (lambda p: p.update(apiVersion="kuadrant.io/v1"), "no schema"),
        (lambda p: p.update(status={}), "'status' was unexpected"),
        (lambda p: p["metadata"]["labels"].update({"bad label": "x"}), "does not match"),
        (lambda p: p["spec"].pop("targetRef"), "'targetRef' is a required property"),
    ],
    ids=["window-syntax", "metadata-field", "api-version", "status", "label-key", "required"],
)
def test_validator_rejects_other_mistakes(cluster_settings: Settings, mutate: Any, expected: str) -> None:
    policy = copy.deepcopy(token_rate_limit_policy([team("alpha")], cluster_settings))
    mutate(policy)
    assert any(expected in line for line in crds.validation_errors(policy)), crds.validation_errors(policy)


def test_validator_rejects_unknown_fields_in_deep_auth_rules(cluster_settings: Settings) -> None:
    policy = auth_policy(cluster_settings)
    policy["spec"]["rules"]["authentication"]["bearer"]["credentials"]["authorizationHeader"]["prefixes"] = ["x"]
    with pytest.raises(crds.InvalidManifest, match="'prefixes' was unexpected"):
        crds.validate(policy)


def test_core_kinds_are_strict() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "admin-key", "namespace": "llm"},
        "stringData": {"ADMIN_KEY": "x"},
    }
    crds.validate(secret)
    assert crds.validation_errors({**secret, "stringdata": {}}) == [
        "<root>: Additional properties are not allowed ('stringdata' was unexpected)"
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "*"]}],
    }
    assert crds.validation_errors(role) == [".rules[0].verbs[1]: '*' is not one of " + repr(crds._VERBS)]


def test_func_yaml_validator_is_strict() -> None:
    document = {"specVersion": "0.36.0", "name": "maas", "runtime": "python", "created": "2025-01-01T00:00:00Z"}
    crds.validate_func_yaml(document)
    assert crds.func_yaml_errors({**document, "runtim": "python"}) == [
        "<root>: Additional properties are not allowed ('runtim' was unexpected)"
    ]
    assert crds.func_yaml_errors({**document, "name": "Not_A_Name"}) == [
        ".name: 'Not_A_Name' does not match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
    ]


def test_validator_evaluates_the_crds_cel_rules(cluster_settings: Settings) -> None:
    limits = token_rate_limit_policy([team("alpha")], cluster_settings)
    limits["spec"]["limits"] = {}
    assert crds.validation_errors(limits) == [
        ".spec: At least one spec.limits must be defined (rule: !(has(self.overrides) || has(self.defaults))"
        " ? has(self.limits) && size(self.limits) > 0 : true)"
    ]

    telemetry = by_kind(generate_policies([], cluster_settings))["TelemetryPolicy"]
    telemetry["spec"]["targetRef"]["kind"] = "HTTPRoute"
    (problem,) = crds.validation_errors(telemetry)
    assert problem.startswith(".spec.targetRef: Invalid targetRef.kind. The only supported value is 'Gateway'")
