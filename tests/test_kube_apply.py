"""Applying policy objects through the real kubernetes client on the API double: whole-object
create or replace, no write when nothing changed, conflict retries, and `sync_policies` over the
KubernetesStore with the output of shared/policies.py."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi

from shared.errors import BackendUnavailable
from shared.kubeapply import apply_objects, delete_objects, policy_syncer, sync_policies
from shared.policies import generate_policies
from shared.settings import Settings
from shared.store.base import Team, TeamChanges
from shared.store.kube import KubernetesStore
from tests import crds
from tests.kube_double import KubeDouble, running_double

NS = "llm"
GATEWAY = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "maas-gateway"}
T0 = datetime(2025, 8, 25, 6, 17, 35, tzinfo=timezone.utc)

AUTH: dict[str, Any] = {
    "apiVersion": "kuadrant.io/v1",
    "kind": "AuthPolicy",
    "metadata": {"name": "keys", "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "maas-key-manager"}},
    "spec": {"targetRef": GATEWAY, "rules": {"authentication": {"api-key": {"apiKey": {"selector": {"matchLabels": {"app": "maas-api-key"}}}}}}},
}
TRLP: dict[str, Any] = {
    "apiVersion": "kuadrant.io/v1alpha1",
    "kind": "TokenRateLimitPolicy",
    "metadata": {"name": "limits", "namespace": NS},
    "spec": {
        "targetRef": GATEWAY,
        "limits": {"t1": {"rates": [{"limit": 100, "window": "1h"}], "when": [{"predicate": 'auth.identity.team == "t1"'}]}},
    },
}
TELEMETRY: dict[str, Any] = {
    "apiVersion": "extensions.kuadrant.io/v1alpha1",
    "kind": "TelemetryPolicy",
    "metadata": {"name": "labels", "namespace": NS},
    "spec": {"targetRef": GATEWAY, "metrics": {"default": {"labels": {"user": "auth.identity.userid"}}}},
}
ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "key-manager", "namespace": NS},
    "spec": {"parentRefs": [{"name": "maas-gateway"}], "rules": [{"matches": [{"path": {"type": "Exact", "value": "/health"}}]}]},
}
LITERALS = [AUTH, TRLP, TELEMETRY, ROUTE]
PLURALS = {"AuthPolicy": "authpolicies", "TokenRateLimitPolicy": "tokenratelimitpolicies",
           "TelemetryPolicy": "telemetrypolicies", "HTTPRoute": "httproutes"}


@pytest.fixture
def kube() -> Iterator[tuple[KubeDouble, Any]]:
    with running_double() as pair:
        yield pair


def stored(double: KubeDouble, obj: dict[str, Any]) -> dict[str, Any] | None:
    group, version = obj["apiVersion"].split("/")
    return double.get(PLURALS[obj["kind"]], obj["metadata"]["namespace"], obj["metadata"]["name"], group, version)


def writes(double: KubeDouble) -> list[str]:
    return [method for method, _ in double.requests if method != "GET"]


def test_the_literal_objects_follow_the_crds() -> None:
    crds.validate_all(LITERALS)


def test_apply_creates_then_replaces_whole_objects_and_skips_unchanged(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    apply_objects(client, LITERALS)
    for obj in LITERALS:
        got = stored(double, obj)
        assert got is not None and got["spec"] == obj["spec"]
    assert writes(double) == ["POST"] * 4

    double.requests.clear()
    apply_objects(client, LITERALS)
    assert writes(double) == []  # nothing changed: nothing written, nothing for Kuadrant to redo

    changed = copy.deepcopy(TRLP)
    changed["spec"]["limits"]["t1"]["rates"][0]["limit"] = 5
    del changed["spec"]["limits"]["t1"]["when"]
    before = stored(double, TRLP)
    apply_objects(client, [changed])
    after = stored(double, TRLP)
    assert after is not None and before is not None
    assert after["spec"] == changed["spec"]  # whole replace: the removed field is gone
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # replaced, not re-created
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1


def test_apply_keeps_the_status_written_by_kuadrant(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    apply_objects(client, [AUTH])
    CustomObjectsApi(client).patch_namespaced_custom_object_status(
        "kuadrant.io", "v1", NS, "authpolicies", "keys", {"status": {"conditions": [{"type": "Accepted", "status": "True"}]}}
    )
    changed = copy.deepcopy(AUTH)
    changed["metadata"]["labels"]["extra"] = "1"
    apply_objects(client, [changed])
    got = stored(double, AUTH)
    assert got is not None and got["metadata"]["labels"]["extra"] == "1"
    assert got["status"] == {"conditions": [{"type": "Accepted", "status": "True"}]}


def test_apply_keeps_what_other_controllers_put_in_the_metadata(kube: tuple[KubeDouble, Any]) -> None:
    """A replace carries the whole object: sent without Kuadrant's finalizer, it would remove it
    (and the policy could be deleted before Kuadrant cleaned up); sent without another
    controller's annotation, it would remove that, and every sync would fight over it."""
    double, client = kube
    apply_objects(client, [AUTH])
    theirs = {"finalizers": ["kuadrant.io/authpolicies"],
              "annotations": {"kuadrant.io/observed": "1"}, "labels": {"team.example.com/owner": "platform"}}
    CustomObjectsApi(client).patch_namespaced_custom_object("kuadrant.io", "v1", NS, "authpolicies", "keys",
                                                           {"metadata": theirs})
    double.requests.clear()
    apply_objects(client, [AUTH])
    assert writes(double) == []  # their additions are no difference of ours

    changed = copy.deepcopy(AUTH)
    changed["spec"]["rules"]["authentication"]["api-key"]["apiKey"]["selector"]["matchLabels"]["app"] = "other"
    apply_objects(client, [changed])
    got = stored(double, AUTH)
    assert got is not None and got["spec"] == changed["spec"]
    assert got["metadata"]["finalizers"] == ["kuadrant.io/authpolicies"]
    assert got["metadata"]["annotations"] == {"kuadrant.io/observed": "1"}
    assert got["metadata"]["labels"] == {**AUTH["metadata"]["labels"], "team.example.com/owner": "platform"}


def test_apply_lands_through_conflicts(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    apply_objects(client, [TRLP])
    changed = copy.deepcopy(TRLP)
    changed["spec"]["limits"]["t1"]["rates"][0]["limit"] = 42
    double.inject_conflicts(3)
    apply_objects(client, [changed])
    assert double.pending_conflicts == 0
    assert stored(double, TRLP)["spec"]["limits"]["t1"]["rates"][0]["limit"] == 42  # type: ignore[index]


def test_apply_gives_up_after_bounded_conflicts(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    apply_objects(client, [TRLP])
    changed = copy.deepcopy(TRLP)
    changed["spec"]["limits"]["t1"]["rates"][0]["limit"] = 42
    double.inject_conflicts(50)
    with pytest.raises(BackendUnavailable, match="TokenRateLimitPolicy 'llm/limits' kept changing"):
        apply_objects(client, [changed])


def test_apply_uses_the_default_namespace_and_rejects_unknown_kinds(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    bare = copy.deepcopy(TELEMETRY)
    del bare["metadata"]["namespace"]
    apply_objects(client, [bare], namespace="gateways")
    assert double.names("telemetrypolicies", "gateways", "extensions.kuadrant.io", "v1alpha1") == ["labels"]
    with pytest.raises(ValueError, match="not a known custom resource"):
        apply_objects(client, [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": NS}}])
    delete_objects(client, [bare], namespace="gateways")
    delete_objects(client, [bare], namespace="gateways")  # absent is fine
    assert double.names("telemetrypolicies", "gateways", "extensions.kuadrant.io", "v1alpha1") == []


def test_apply_unreachable_is_backend_unavailable(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    with double.unreachable(), pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
        apply_objects(client, [AUTH])


# -- sync_policies over the store ------------------------------------------------------------


def team(team_id: str, limit: int = 1000, scope: str = "user") -> Team:
    return Team(team_id=team_id, team_name=team_id, description="", policy=f"{team_id}-tokens",
                token_limit=limit, time_window="1h", limit_scope=scope, created_at=T0)  # type: ignore[arg-type]


def policies(double: KubeDouble) -> dict[str, dict[str, Any]]:
    found = {}
    for (group, version, plural, namespace, _), obj in double.cluster.objects.items():
        if group in ("kuadrant.io", "extensions.kuadrant.io") and namespace == NS:
            found[obj["kind"]] = obj
    return found


def test_sync_applies_what_policies_generates_and_follows_team_changes(kube: tuple[KubeDouble, Any]) -> None:
    double, client = kube
    settings = Settings(namespace=NS, key_selector="maas-api-key")
    store = KubernetesStore(client, namespace=NS, key_selector="maas-api-key")
    sync = policy_syncer(store, settings)

    sync()  # no team yet: no TokenRateLimitPolicy (the CRD needs a limit)
    assert sorted(policies(double)) == ["AuthPolicy", "TelemetryPolicy"]

    store.create_team(team=team("alpha"))
    store.create_team(team=team("beta", scope="team"))
    sync()
    applied = policies(double)
    expected = {obj["kind"]: obj for obj in generate_policies(store.list_teams(), settings)}
    assert sorted(applied) == sorted(expected) == ["AuthPolicy", "TelemetryPolicy", "TokenRateLimitPolicy"]
    for kind, obj in expected.items():
        assert applied[kind]["spec"] == obj["spec"]
        assert applied[kind]["metadata"]["labels"] == obj["metadata"]["labels"]
    crds.validate_all(expected.values())

    store.update_team(team_id="alpha", changes=TeamChanges(token_limit=7))
    double.inject_conflicts(2)
    sync()
    limits = policies(double)["TokenRateLimitPolicy"]["spec"]["limits"]
    assert limits["7-per-3600s-user"]["rates"][0]["limit"] == 7

    store.delete_team(team_id="alpha")
    store.delete_team(team_id="beta")
    sync()
    assert sorted(policies(double)) == ["AuthPolicy", "TelemetryPolicy"]


def test_sync_rereads_the_teams_when_it_loses_a_race(kube: tuple[KubeDouble, Any]) -> None:
    """A sync whose conditioned write conflicts starts over from a fresh team list, so a stale
    view of the teams cannot overwrite a newer one."""
    double, client = kube
    settings = Settings(namespace=NS, key_selector="maas-api-key")
    store = KubernetesStore(client, namespace=NS, key_selector="maas-api-key")
    store.create_team(team=team("alpha"))
    sync_policies(store, client, settings)
    store.update_team(team_id="alpha", changes=TeamChanges(token_limit=3))
    lists_before = sum(1 for m, p in double.requests if m == "GET" and p.endswith("/secrets"))
    double.inject_conflicts(1)
    sync_policies(store, client, settings)
    lists = sum(1 for m, p in double.requests if m == "GET" and p.endswith("/secrets")) - lists_before
    assert lists == 6  # the teams (and the keys in grace, and with rates) were listed again for the second attempt
    assert policies(double)["TokenRateLimitPolicy"]["spec"]["limits"]["3-per-3600s-user"]["rates"][0]["limit"] == 3


def test_a_keys_own_rates_reach_the_rate_limit_policies_through_a_real_sync(kube: tuple[KubeDouble, Any]) -> None:
    """A key with rates of its own is written with its key tier (label and annotation), and the
    sync lists such keys by that label, so their limits are rendered, selected by the tier."""
    from dataclasses import replace

    from kubernetes.client import CoreV1Api

    from shared.rates import Rate
    from shared.tiers import KEY_TIER_ANNOTATION
    from tests.records import a_key

    double, client = kube
    settings = Settings(namespace=NS, key_selector="maas-api-key")
    store = KubernetesStore(client, namespace=NS, key_selector="maas-api-key")
    store.create_team(team=team("alpha"))
    record, value = a_key("alpha", "alice")
    narrow = replace(record, rates=(Rate("key-rpm", 5, "1m", unit="requests", scope="key"),))
    store.create_key(key=narrow, api_key=value)
    plain, plain_value = a_key("alpha", "bob")
    store.create_key(key=plain, api_key=plain_value)
    secret = CoreV1Api(client).read_namespaced_secret(narrow.secret_name, NS)
    tier = secret.metadata.annotations[KEY_TIER_ANNOTATION]
    assert secret.metadata.labels["maas/has-rates"] == "true"
    assert KEY_TIER_ANNOTATION not in (CoreV1Api(client).read_namespaced_secret(plain.secret_name, NS).metadata.annotations or {})
    sync_policies(store, client, settings)
    requests = policies(double)["RateLimitPolicy"]["spec"]["limits"]
    selecting = [name for name, limit in requests.items() if any(tier in str(w) for w in limit.get("when", []))]
    assert selecting and all(requests[name]["rates"] == [{"limit": 5, "window": "1m"}] for name in selecting)
