"""The admin endpoints on the Kubernetes store, as in a cluster: every team create, PATCH and
delete regenerates and applies the Kuadrant policies, and keys become Secrets Authorino reads."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import CoreV1Api
from pydantic import SecretStr

from functions._context import install_context
from shared.context import Context
from shared.kubeapply import policy_syncer
from shared.settings import Settings
from shared.store.kube import KubernetesStore
from tests import crds
from tests.admin_client import DirectClient
from tests.kube_double import KubeDouble, running_double
from tests.test_kube_apply import NS, policies


@pytest.fixture
def cluster(admin_key: str) -> Iterator[tuple[KubeDouble, Any, DirectClient]]:
    settings = Settings(admin_key=SecretStr(admin_key), store="kubernetes", namespace=NS)
    with running_double() as (double, client):
        store = KubernetesStore(client, namespace=NS, key_selector=settings.key_selector)
        install_context(Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings)))
        yield double, client, DirectClient(admin_key)


def test_policies_follow_every_team_change_made_through_the_api(cluster: tuple[KubeDouble, Any, DirectClient]) -> None:
    double, _, api = cluster
    assert api.call("POST", "/teams", json={"team_id": "alpha", "token_limit": 500, "time_window": "1h"}).status == 201
    assert api.call("POST", "/teams", json={"team_id": "beta", "limit_scope": "team"}).status == 201
    applied = policies(double)
    assert sorted(applied) == ["AuthPolicy", "TelemetryPolicy", "TokenRateLimitPolicy"]
    # As written by us: the server's own metadata (uid, resourceVersion, ...) is not ours to validate.
    ours = ("name", "namespace", "labels", "annotations")
    crds.validate_all(
        {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k in ours}} for obj in applied.values()
    )
    limits = applied["TokenRateLimitPolicy"]["spec"]["limits"]
    alpha, beta = "500-per-3600s-user", "100000-per-3600s-team"  # their budget tiers
    assert set(limits) == {alpha, beta}
    assert limits[alpha]["rates"] == [{"limit": 500, "window": "1h"}]
    assert len(limits[alpha]["counters"]) == 2 and len(limits[beta]["counters"]) == 1
    revision = applied["AuthPolicy"]["spec"]["rules"]["authorization"]["identity-revision"]

    assert api.call("PATCH", "/teams/alpha", json={"token_limit": 20, "time_window": "1m"}).status == 200
    applied = policies(double)
    assert applied["TokenRateLimitPolicy"]["spec"]["limits"]["20-per-60s-user"]["rates"] == [
        {"limit": 20, "window": "1m"}
    ]
    # The keys' tier changed: Authorino must re-read them (SOURCES.md §8).
    assert applied["AuthPolicy"]["spec"]["rules"]["authorization"]["identity-revision"] != revision

    assert api.call("DELETE", "/teams/alpha").status == 200
    assert set(policies(double)["TokenRateLimitPolicy"]["spec"]["limits"]) == {beta}
    assert api.call("DELETE", "/teams/beta").status == 200
    assert sorted(policies(double)) == ["AuthPolicy", "TelemetryPolicy"]


def test_an_issued_key_is_a_secret_authorino_can_match(cluster: tuple[KubeDouble, Any, DirectClient]) -> None:
    _, client, api = cluster
    assert api.call("POST", "/teams", json={"team_id": "alpha", "policy": "alpha-tokens"}).status == 201
    created = api.call("POST", "/teams/alpha/keys", json={"user_id": "alice", "user_email": "alice@test.com"}).body
    secret = CoreV1Api(client).read_namespaced_secret(created["secret_name"], NS)
    assert base64.b64decode(secret.data["api_key"]).decode() == created["api_key"]
    assert secret.metadata.labels["kuadrant.io/auth-secret"] == "true"
    assert secret.metadata.annotations["secret.kuadrant.io/user-id"] == "alice"
    assert secret.metadata.annotations["kuadrant.io/groups"] == "alpha-tokens"
    assert secret.metadata.owner_references[0].name == "team-alpha-config"

    # Revoked: Authorino's selector no longer matches it, at once.
    assert api.call("POST", f"/keys/{created['secret_name']}/revoke").status == 200
    revoked = CoreV1Api(client).read_namespaced_secret(created["secret_name"], NS)
    assert "kuadrant.io/auth-secret" not in (revoked.metadata.labels or {})
