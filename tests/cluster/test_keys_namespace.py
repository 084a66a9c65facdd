"""Teams, keys and audit entries in a namespace of their own (MAAS_KEYS_NAMESPACE), apart from
the functions, maas-admin-key and the models in MAAS_NAMESPACE: Kubernetes RBAC cannot narrow
Secret access by label (tests/cluster/SOURCES.md §12), so the namespace is the boundary.

The keys are made through the admin API's function targets on the Kubernetes store against the
API server double, and checked by the Authorino model (SOURCES.md §1, §2), which looks in every
namespace (`allNamespaces`): the AuthPolicy's `key-in-keys-namespace` predicate is what keeps a
labelled Secret elsewhere, in MAAS_NAMESPACE too, from being a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from kubernetes.client import CoreV1Api

from shared import cleanup
from shared.keymaterial import generate_admin_key
from shared.policies import auth_policy
from shared.settings import Settings
from shared.store.kubeshapes import member_secret_name, team_secret_name
from tests.admin_client import DirectClient
from tests.cluster.authorino import Authorino
from tests.cluster.deployment import deployed, new_key
from tests.kube_double import KubeDouble
from tools.manifests import CONFIG_MAP, render

NOW = datetime.now(timezone.utc)
FUNCTIONS, KEYS = "llm", "llm-keys"
FORGED_KEY = "maas_forged-key-in-the-functions-namespace-0123"


@pytest.fixture
def cluster() -> Iterator[tuple[KubeDouble, DirectClient, Settings]]:
    with deployed(namespace=FUNCTIONS, keys_namespace=KEYS) as running:
        yield running


def forge(double: KubeDouble, namespace: str, settings: Settings) -> None:
    """A Secret with every label and annotation of an active key, written by someone else."""
    watch_key, watch_value = settings.authorino_watch_label
    forged = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "forged", "labels": {"app": settings.key_selector, "kuadrant.io/auth-secret": "true",
                                                   watch_key: watch_value},
                     "annotations": {"maas/status": "active", "maas/team-id": "alpha",
                                     "secret.kuadrant.io/user-id": "mallory"}},
        "stringData": {"api_key": FORGED_KEY},
    }
    client = double.api_client()
    try:
        CoreV1Api(client).create_namespaced_secret(namespace, forged)
    finally:
        client.close()


def test_the_store_writes_only_in_the_keys_namespace(cluster) -> None:
    double, api, settings = cluster
    key = new_key(api)
    assert settings.store_namespace == KEYS and settings.namespace == FUNCTIONS
    # The team, the key, and the membership the key made (one Secret per member).
    assert set(double.names("secrets", KEYS)) == {team_secret_name("alpha"), key["secret_name"],
                                                   member_secret_name("alpha", "alice")}
    assert any(name.startswith("maas-audit-") for name in double.names("configmaps", KEYS))
    assert double.names("secrets", FUNCTIONS) == [] and double.names("configmaps", FUNCTIONS) == []


def test_a_key_in_the_keys_namespace_authenticates(cluster) -> None:
    double, api, settings = cluster
    authorino = Authorino(double, auth_policy(settings))
    key = new_key(api)
    decision = authorino.check(f"APIKEY {key['api_key']}", now=NOW)
    assert decision.status == 200, decision.reason
    assert decision.identity["userid"] == "alice"
    # The policy the functions' sync applied beside the Gateway says the same.
    assert Authorino(double, (settings.policy_namespace, "maas-api-keys")).check(
        f"APIKEY {key['api_key']}", now=NOW).status == 200
    assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_a_labelled_secret_in_the_functions_namespace_is_no_key(cluster) -> None:
    double, api, settings = cluster
    key = new_key(api)
    forge(double, FUNCTIONS, settings)
    authorino = Authorino(double, auth_policy(settings))
    decision = authorino.check(f"APIKEY {FORGED_KEY}", now=NOW)
    assert decision.status == 401 and decision.reason.startswith("key-in-keys-namespace"), decision.reason
    assert authorino.check(f"APIKEY {key['api_key']}", now=NOW).status == 200


def test_the_control_a_policy_of_the_functions_namespace_admits_the_forgery_and_not_the_keys(cluster) -> None:
    """What the predicate would do if it still named MAAS_NAMESPACE: the forged Secret is a key,
    every real key is refused."""
    double, api, settings = cluster
    key = new_key(api)
    forge(double, FUNCTIONS, settings)
    stale = Authorino(double, auth_policy(settings.model_copy(update={"keys_namespace": None})))
    assert stale.check(f"APIKEY {FORGED_KEY}", now=NOW).status == 200
    assert stale.check(f"APIKEY {key['api_key']}", now=NOW).status == 401


def test_the_rendered_config_tells_the_functions_where_the_keys_are(cluster) -> None:
    """The functions read MAAS_KEYS_NAMESPACE from maas-config: their store and policy follow it."""
    double, api, settings = cluster
    (config,) = [d for d in render(settings) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == CONFIG_MAP]
    assert config["metadata"]["namespace"] == FUNCTIONS
    deployed_settings = Settings.model_validate(
        {**config["data"], "MAAS_NAMESPACE": FUNCTIONS, "ADMIN_KEY": generate_admin_key()})
    assert deployed_settings.store_namespace == KEYS
    assert auth_policy(deployed_settings) == auth_policy(settings)


def test_team_deletions_are_taken_from_the_keys_namespace_only(cluster) -> None:
    """The cleanup function acts on a team Secret deleted in the keys namespace, and ignores one
    of the same name reported from MAAS_NAMESPACE."""
    from functions._context import context

    double, api, settings = cluster
    labels = {"maas/resource-type": "team-config", "maas/team-id": "alpha"}
    for namespace, expected in ((KEYS, "alpha"), (FUNCTIONS, None)):
        event = {"kind": "Secret", "metadata": {"namespace": namespace, "labels": labels}}
        team_id, why = cleanup.deleted_team(context(), event)
        assert team_id == expected, why


def test_the_functions_store_is_built_on_the_keys_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubernetesStore.from_settings, as every function builds its store: writes go to the keys
    namespace."""
    from shared.store import kube
    from tests import records
    from tests.kube_double import running_double

    with running_double() as (double, client):
        monkeypatch.setattr(kube, "api_client_from_config", lambda: client)
        store = kube.KubernetesStore.from_settings(Settings(namespace=FUNCTIONS, keys_namespace=KEYS))
        store.create_team(team=records.a_team("alpha"))
        assert double.names("secrets", KEYS) == [team_secret_name("alpha")]
        assert double.names("secrets", FUNCTIONS) == []


def test_the_local_events_report_team_deletes_from_the_keys_namespace(tmp_path) -> None:
    """local/events.py's synthetic deletion events say where the store is, so that the cleanup
    function takes them (it ignores a team Secret reported from any other namespace)."""
    from local.events import EventsService
    from shared import teams
    from shared.context import build_context
    from shared.schemas import TeamCreate

    ctx = build_context(Settings(data_dir=tmp_path, namespace=FUNCTIONS, keys_namespace=KEYS))
    teams.create_team(ctx, TeamCreate(team_id="team-x"))
    service = EventsService(ctx, interval_s=0.3)
    service.start()
    try:
        teams.delete_team(ctx, "team-x")
        deleted = service.wait_for(lambda s: s.team_id == "team-x", timeout=10)
    finally:
        service.stop()
        ctx.close()
    assert deleted is not None and deleted.ignored is None, deleted
