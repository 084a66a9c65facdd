"""Kuadrant policy generation: exact shapes on small inputs, strict CRD validity on many."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from shared.policies import (
    AUTH_POLICY,
    TELEMETRY_POLICY,
    TOKEN_RATE_LIMIT_POLICY,
    PolicyRef,
    auth_policy,
    generate_policies,
    managed_policies,
    token_rate_limit_policy,
)
from shared.settings import Settings
from shared.store.base import LimitScope, Team
from tests import crds

CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LABELS = {"app.kubernetes.io/managed-by": "maas-key-manager", "app.kubernetes.io/part-of": "maas"}
ALPHA_TIER = "1000-per-3600s-user"  # team("alpha")'s budget
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "maas-gateway"}


def team(team_id: str, limit: int = 1000, window: str = "1h", scope: LimitScope = "user") -> Team:
    return Team(
        team_id=team_id,
        team_name=team_id.title(),
        description="",
        policy=f"{team_id}-tokens",
        token_limit=limit,
        time_window=window,
        limit_scope=scope,
        created_at=CREATED,
    )


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
}


@pytest.mark.parametrize("teams", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("gateway_namespace", [None, "gateways"])
def test_every_generated_policy_is_strictly_valid(teams: list[Team], gateway_namespace: str | None) -> None:
    settings = Settings(namespace="llm", gateway_namespace=gateway_namespace)
    policies = generate_policies(teams, settings)

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
    if policy["kind"] == "TokenRateLimitPolicy":
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
