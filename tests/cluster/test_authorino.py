"""What Authorino does with the keys we write and the AuthPolicy we render (tests/cluster/SOURCES.md
§1-§3, §8; the model and its upstream sources are in tests/cluster/authorino.py).

Keys are made and changed through the admin API's function targets on the Kubernetes store,
against the in-process API server double, as in a cluster; Authorino is the model, fed by the
double's Secrets as its informer would be, and never rebuilt unless a test says so: a key that
works only after a rebuild does not work in a cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes.client import CoreV1Api

from functions._context import context
from shared.keymaterial import generate_admin_key
from shared.policies import auth_policy
from shared.settings import Settings
from tests.admin_client import DirectClient
from tests.cluster.authorino import Authorino
from tests.cluster.deployment import NS, deployed, new_key
from tests.kube_double import KubeDouble

NOW = datetime.now(timezone.utc)


@pytest.fixture
def cluster() -> Iterator[tuple[KubeDouble, DirectClient, Settings]]:
    with deployed() as running:
        yield running


def test_a_new_key_works_without_an_authconfig_rebuild(cluster) -> None:
    double, api, settings = cluster
    authorino = Authorino(double, auth_policy(settings))  # built before the key exists
    key = new_key(api)
    for header in (f"APIKEY {key['api_key']}", f"Bearer {key['api_key']}"):
        decision = authorino.check(header, now=NOW)
        assert decision.status == 200, decision.reason
        # What the rate limiter and the metrics read as auth.identity (SOURCES.md §10).
        # `key` is the Secret's name (a key's own rates are counted by it); `keytier` is "" for
        # a key without rates of its own (a CEL expression, never null: SOURCES.md §18).
        assert decision.identity == {"userid": "alice", "team": "alpha", "groups": "alpha",
                                     "tier": "1000-per-3600s-user", "key": key["secret_name"], "keytier": ""}
    assert authorino.check("APIKEY maas_not-a-key", now=NOW).status == 401
    assert authorino.check(None, now=NOW).status == 401


def test_keys_are_found_although_the_authconfig_is_in_authorinos_namespace(cluster) -> None:
    """§1: Kuadrant puts the AuthConfig in kuadrant-system; without allNamespaces the keys in
    `llm` are never found, even when the AuthPolicy and the keys share a namespace."""
    double, api, settings = cluster
    key = new_key(api)
    policy = auth_policy(settings)
    assert Authorino(double, policy).check(f"APIKEY {key['api_key']}", now=NOW).status == 200
    narrow = copy.deepcopy(policy)
    for entry in narrow["spec"]["rules"]["authentication"].values():
        entry["apiKey"].pop("allNamespaces")
    assert Authorino(double, narrow).check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_a_revoked_key_is_refused_at_once(cluster) -> None:
    double, api, settings = cluster
    key = new_key(api)
    authorino = Authorino(double, auth_policy(settings))
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 200
    assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_a_revoked_key_keeps_working_where_the_watcher_cannot_see_it(cluster) -> None:
    """The control for the test above: an Authorino watching another label never hears of the
    revocation (§2). This is what every key got before they carried the watcher's label."""
    double, api, settings = cluster
    key = new_key(api)
    blind = Authorino(double, auth_policy(settings), watch_selector={"example.com/other": "x"})
    assert blind.check(f"APIKEY {key['api_key']}", now=NOW).status == 200
    assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
    assert blind.check(f"APIKEY {key['api_key']}", now=NOW).status == 200
    blind.build()  # only a rebuild (AuthPolicy change, restart) drops it
    assert blind.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_a_deleted_key_is_refused_at_once(cluster) -> None:
    double, api, settings = cluster
    by_handle, by_value = new_key(api), new_key(api)
    authorino = Authorino(double, auth_policy(settings))
    assert api.call("DELETE", f"/keys/{by_handle['secret_name']}").status == 200
    assert api.call("DELETE", "/delete_key", json={"key": by_value["api_key"]}).status == 200
    for key in (by_handle, by_value):
        assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_deleting_the_team_refuses_its_keys(cluster) -> None:
    double, api, settings = cluster
    key = new_key(api, "doomed")
    authorino = Authorino(double, auth_policy(settings))
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 200
    assert api.call("DELETE", "/teams/doomed").status == 200
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_a_key_with_an_expiry_works_until_it_and_not_after(cluster) -> None:
    """§3: request.time is {seconds, nanos}; the predicate must compare seconds, and a predicate
    that cannot be evaluated denies."""
    double, api, settings = cluster
    key = new_key(api, expires_in="1h")
    authorino = Authorino(double, auth_policy(settings))
    header = f"APIKEY {key['api_key']}"
    expires = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))
    assert authorino.check(header, now=expires - timedelta(seconds=2)).status == 200
    assert authorino.check(header, now=expires + timedelta(seconds=1)).status == 401
    assert authorino.check(header, now=expires + timedelta(days=400)).status == 401


def test_the_old_expiry_predicate_refused_every_key_with_an_expiry(cluster) -> None:
    """The control: `timestamp(...) > request.time` compares a timestamp with a map, an
    evaluation error, so Authorino denied keys whose expiry was a year away."""
    double, api, settings = cluster
    key = new_key(api, expires_in="365d")
    policy = auth_policy(settings)
    rule = policy["spec"]["rules"]["authorization"]["key-not-expired"]["patternMatching"]["patterns"][0]
    rule["predicate"] = (
        '!("maas/expires-at" in auth.identity.metadata.annotations) || '
        'timestamp(auth.identity.metadata.annotations["maas/expires-at"]) > request.time'
    )
    decision = Authorino(double, policy).check(f"APIKEY {key['api_key']}", now=NOW)
    assert decision.status == 401 and "evaluation error" in decision.reason


def test_a_labelled_secret_outside_the_keys_namespace_is_no_key(cluster) -> None:
    """allNamespaces makes every Secret with the selector's labels a candidate (§1); the policy
    admits only those in the keys' namespace."""
    double, api, settings = cluster
    stolen = new_key(api)
    client = double.api_client()

    forged = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "forged", "labels": {"app": settings.key_selector, "kuadrant.io/auth-secret": "true",
                                                   "authorino.kuadrant.io/managed-by": "authorino"},
                     "annotations": {"maas/status": "active", "maas/team-id": "alpha",
                                     "secret.kuadrant.io/user-id": "mallory"}},
        "stringData": {"api_key": "maas_forged-key-of-mallory-0123456789"},
    }
    try:
        CoreV1Api(client).create_namespaced_secret("elsewhere", forged)
    finally:
        client.close()
    authorino = Authorino(double, auth_policy(settings))
    decision = authorino.check("APIKEY maas_forged-key-of-mallory-0123456789", now=NOW)
    assert decision.status == 401 and decision.reason.startswith("key-in-keys-namespace")
    assert authorino.check(f"APIKEY {stolen['api_key']}", now=NOW).status == 200


def test_a_reactivated_key_is_indexed_again(cluster) -> None:
    double, api, settings = cluster
    key = new_key(api)
    authorino = Authorino(double, auth_policy(settings))
    assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 401
    context().store.set_key_status(secret_name=key["secret_name"], status="active")
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 200


def test_team_secrets_are_never_keys(cluster) -> None:
    """Anything with the selector labels and an api_key is a key to Authorino (§2)."""
    double, api, settings = cluster
    new_key(api)
    authorino = Authorino(double, auth_policy(settings))
    indexed = {secret["metadata"]["name"] for entry in authorino.entries for secret in entry.secrets.values()}
    assert indexed and all(name.startswith("apikey-") for name in indexed)


def test_keys_carry_whatever_label_the_operator_told_authorino_to_watch() -> None:
    """An Authorino CR may set its own secretLabelSelectors (§2); the deployment's
    MAAS_AUTHORINO_SECRET_LABEL (rendered into maas-config) must then label every key with it."""
    from tools.manifests import render

    with deployed(authorino_secret_label="example.com/authorino-watch=maas") as (double, api, settings):
        config = next(o for o in render(settings) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "maas-config")
        deployed_settings = Settings.model_validate({**config["data"], "ADMIN_KEY": generate_admin_key()})
        assert deployed_settings.authorino_watch_label == ("example.com/authorino-watch", "maas")
        key = new_key(api)
        authorino = Authorino(double, auth_policy(settings), watch_selector={"example.com/authorino-watch": "maas"})
        assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 200
        assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
        assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


FOLLOWED = (NS, "maas-api-keys")  # the AuthPolicy as the policy sync applied it to the cluster


def test_a_budget_change_reaches_the_identity_of_existing_keys(cluster) -> None:
    """§8: Authorino keeps the Secret it indexed; the tier a key carries changes with its team's
    budget, and the policy's identity revision makes Authorino re-read it."""
    double, api, settings = cluster
    key = new_key(api)
    authorino = Authorino(double, FOLLOWED)
    header = f"APIKEY {key['api_key']}"
    assert authorino.check(header, now=NOW).identity["tier"] == "1000-per-3600s-user"
    frozen = Authorino(double, auth_policy(settings))  # the control: a policy that never changes
    assert api.call("PATCH", "/teams/alpha", json={"token_limit": 20, "time_window": "1m"}).status == 200
    assert authorino.check(header, now=NOW).identity["tier"] == "20-per-60s-user"
    assert authorino.rebuilds == 2
    assert frozen.check(header, now=NOW).identity["tier"] == "1000-per-3600s-user"


def test_a_rotated_keys_grace_ends_when_it_says(cluster) -> None:
    """Rotation shortens the old key's expiry, an annotation Authorino would not re-read (§8):
    it must stop working at the end of its grace period, not at the next sweep."""
    double, api, settings = cluster
    old = new_key(api)
    authorino = Authorino(double, FOLLOWED)
    frozen = Authorino(double, auth_policy(settings))
    rotated = api.call("POST", f"/keys/{old['secret_name']}/rotate", json={"grace_period": "1h"})
    assert rotated.status == 201, rotated.text
    ends = datetime.now(timezone.utc) + timedelta(hours=1)
    for moment, old_status in ((ends - timedelta(minutes=1), 200), (ends + timedelta(seconds=5), 401)):
        assert authorino.check(f"APIKEY {old['api_key']}", now=moment).status == old_status
        assert authorino.check(f"APIKEY {rotated.body['api_key']}", now=moment).status == 200
    # Without the revision, Authorino still holds the old key as it was: no expiry at all.
    assert frozen.check(f"APIKEY {old['api_key']}", now=ends + timedelta(days=30)).status == 200


def test_the_identity_revision_is_stable_while_nothing_it_covers_changes(cluster) -> None:
    """A rebuild re-reads every key: it must not happen on every unrelated write."""
    double, api, settings = cluster
    new_key(api)
    authorino = Authorino(double, FOLLOWED)
    new_key(api)
    assert api.call("PATCH", "/teams/alpha", json={"team_name": "Alpha", "description": "x"}).status == 200
    first = new_key(api)
    assert api.call("POST", f"/keys/{first['secret_name']}/revoke").status == 200
    authorino.check(None, now=NOW)
    assert authorino.rebuilds == 1
