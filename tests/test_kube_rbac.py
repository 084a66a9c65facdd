"""The rendered RBAC is exactly enough, proven by use: the API double authorizes every request
against the Roles `tools.manifests.function_rbac` renders, as the functions' ServiceAccount, while
the real client drives every KubernetesStore method, the policy sync and both KServe listings.

- enough: nothing is refused;
- least: every granted (namespace, group, resource, verb) is used, or listed in NOT_EXERCISED with
  the reason it is granted anyway, so a new over-grant fails here until it is justified;
- necessary: taking away any used grant makes the run fail with our 503 naming RBAC.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1DeleteOptions
from kubernetes.client.exceptions import ApiException

from shared.catalog.kserve import (
    INFERENCE_SERVICE,
    LLM_INFERENCE_SERVICE,
    KServeCatalog,
)
from shared.errors import BackendUnavailable, MaasError
from shared.kubeapply import sync_policies
from shared.settings import Settings
from shared.store.base import AuditEntry, AuditFilter, KeyChanges, TeamChanges
from shared.store.kube import KubernetesStore
from tests import records
from tests.kube_double import Access, KubeDouble, Rbac, request_verb, running_double
from tools.manifests import function_rbac

T0 = datetime(2025, 8, 25, 6, 17, 35, tzinfo=timezone.utc)
KUADRANT_GROUPS = ("kuadrant.io", "extensions.kuadrant.io")

# The policies beside a Gateway in its own namespace (two Roles), and everything in one (two
# Roles in the same namespace): both layouts the Settings allow.
LAYOUTS = {
    "gateway-namespace": Settings(namespace="llm", gateway_namespace="gateway-system", key_selector="maas-api-key", gateway_name="maas-gateway"),
    "one-namespace": Settings(namespace="llm", gateway_namespace=None, key_selector="maas-api-key", gateway_name="maas-gateway"),
}

# Granted but not exercised by any code path, and why each is granted anyway. tests/test_manifests.py
# pins these grants; drop one there and in function_rbac together, and remove it here.
NOT_EXERCISED: dict[tuple[str, str, str], str] = {}

ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "granite-8b"},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "vLLM"}, "storageUri": "hf://ibm-granite/granite-3.1-8b-instruct"}}},
}
LLMISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1alpha2",
    "kind": "LLMInferenceService",
    "metadata": {"name": "qwen3"},
    "spec": {"model": {"uri": "hf://Qwen/Qwen3-0.6B", "name": "qwen3-0-6b-instruct"}},
}


# -- the functions' identity, from the rendered documents ------------------------------------------


def functions_rbac(settings: Settings, drop: tuple[str, str, str] | None = None) -> Rbac:
    """The rules of the Roles bound to the functions' ServiceAccount; `drop` one (group,
    resource, verb) from them to take that grant away."""
    documents = function_rbac(settings)
    [account] = [d for d in documents if d["kind"] == "ServiceAccount"]
    name, namespace = account["metadata"]["name"], account["metadata"]["namespace"]
    bound = {
        (b["metadata"]["namespace"], b["roleRef"]["name"])
        for b in documents
        if b["kind"] == "RoleBinding"
        and b["roleRef"]["kind"] == "Role"
        and {"kind": "ServiceAccount", "name": name, "namespace": namespace} in b["subjects"]
    }
    roles = [d for d in documents if d["kind"] == "Role" and (d["metadata"]["namespace"], d["metadata"]["name"]) in bound]
    assert len(roles) == len([d for d in documents if d["kind"] == "Role"]), "every Role is bound to the account"
    if drop is not None:
        roles = copy.deepcopy(roles)
        for role in roles:
            role["rules"] = [r for rule in role["rules"] for r in _without(rule, drop)]
    return Rbac.from_documents(roles, user=f"system:serviceaccount:{namespace}:{name}")


def _without(rule: dict[str, Any], drop: tuple[str, str, str]) -> list[dict[str, Any]]:
    """`rule` with one (group, resource, verb) taken out, split as an admin would edit it."""
    group, resource, verb = drop
    if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
        return [rule]
    rest = [r for r in rule["resources"] if r != resource]
    kept = [rule | {"resources": rest}] if rest else []
    verbs = [v for v in rule["verbs"] if v != verb]
    if verbs:
        kept.append(rule | {"resources": [resource], "verbs": verbs})
    return kept


def expected_namespace(settings: Settings, group: str) -> str:
    return settings.policy_namespace if group in KUADRANT_GROUPS else settings.namespace


@pytest.fixture
def seeded_double() -> Iterator[tuple[KubeDouble, ApiClient]]:
    """A double holding the models KServe would have made (written as a cluster admin, before the
    functions' RBAC is switched on)."""
    with running_double() as (double, client):
        api = CustomObjectsApi(client)
        for obj, resource in ((ISVC, INFERENCE_SERVICE), (LLMISVC, LLM_INFERENCE_SERVICE)):
            group, version, plural = resource
            body = copy.deepcopy(obj)
            api.create_namespaced_custom_object(group, version, "llm", plural, body)
            api.patch_namespaced_custom_object_status(
                group, version, "llm", plural, body["metadata"]["name"],
                {"status": {"url": f"http://{body['metadata']['name']}.llm", "conditions": [{"type": "Ready", "status": "True"}]}},
            )
        yield double, client


# -- what the functions do ---------------------------------------------------------------------------


@contextmanager
def as_cluster_admin(double: KubeDouble) -> Iterator[ApiClient]:
    """Someone else's unchecked writes (an admin's kubectl edit), not the functions'."""
    rbac, double.rbac = double.rbac, None
    client = double.api_client()
    try:
        yield client
    finally:
        client.close()
        double.rbac = rbac


def drift(double: KubeDouble, settings: Settings) -> None:
    """Hand edits to the policies that do not depend on the teams: the next sync repairs them."""
    with as_cluster_admin(double) as admin:
        api = CustomObjectsApi(admin)
        for group, version, plural, name in (
            ("kuadrant.io", "v1", "authpolicies", "maas-api-keys"),
            ("extensions.kuadrant.io", "v1alpha1", "telemetrypolicies", "maas-usage-labels"),
        ):
            api.patch_namespaced_custom_object(group, version, settings.policy_namespace, plural, name, {"metadata": {"labels": {"edited": "by-hand"}}})


def run_everything(double: KubeDouble, client: ApiClient, settings: Settings) -> None:
    """Every Store method, the policy sync over teams of both scopes then none, both listings."""
    store = KubernetesStore(client, namespace=settings.namespace, key_selector=settings.key_selector, generation_check_s=0)
    store.generation()
    alpha = store.create_team(team=records.a_team("alpha", policy="alpha-tokens"))
    store.create_team(team=records.a_team("beta", policy="beta-tokens", limit_scope="team"))
    assert store.get_team(team_id="alpha") == alpha
    assert [t.team_id for t in store.list_teams()] == ["alpha", "beta"]
    sync_policies(store, client, settings)

    key, api_key = records.a_key("alpha", "alice")
    other, other_key = records.a_key("alpha", "bob")
    third, third_key = records.a_key("beta", "carol")
    for record, plaintext in ((key, api_key), (other, other_key), (third, third_key)):
        store.create_key(key=record, api_key=plaintext)
    assert store.get_key(secret_name=key.secret_name) == key
    assert store.find_key(key_sha256=key.key_sha256) == key
    assert len(store.list_keys()) == 3
    assert [k.user_id for k in store.list_keys(team_id="alpha", user_id="bob")] == ["bob"]

    store.update_team(team_id="alpha", changes=TeamChanges(token_limit=7, policy="alpha-gold"))  # regroups keys
    drift(double, settings)
    sync_policies(store, client, settings)  # replaces all three policies
    policies = settings.policy_namespace
    assert "edited" not in (double.get("authpolicies", policies, "maas-api-keys", "kuadrant.io", "v1") or {})["metadata"]["labels"]
    store.update_key(secret_name=key.secret_name, changes=KeyChanges(expires_at=T0 + timedelta(days=1)))
    assert store.set_key_status(secret_name=other.secret_name, status="revoked").status == "revoked"
    assert store.touch_keys(last_used={key.secret_name: T0 + timedelta(hours=1)}) == 1
    store.delete_key(secret_name=other.secret_name)

    recorded = store.record_audit(entry=AuditEntry(at=T0, actor="admin", action="create_team", method="POST", path="/teams", outcome=201, team_id="alpha"))
    assert store.list_audit(where=AuditFilter(action="create_team", team_id="alpha")) == [recorded]
    assert store.prune_audit(before=T0 + timedelta(seconds=1)) == 1

    snapshot = store.snapshot()
    assert set(snapshot.teams) == {"alpha", "beta"} and len(snapshot.keys_by_sha256) == 2
    store.generation()

    assert [k.user_id for k in store.delete_team(team_id="alpha")] == ["alice"]
    store.delete_team(team_id="beta")
    sync_policies(store, client, settings)  # no team: the TokenRateLimitPolicy is deleted

    catalog = KServeCatalog(client, namespace=settings.namespace)
    assert [m.name for m in catalog.list_models()] == ["granite-8b"]
    assert [m.name for m in catalog.list_openai_models()] == ["qwen3-0-6b-instruct"]


# -- enough, and least -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_grants_are_enough_and_each_is_used_or_justified(
    seeded_double: tuple[KubeDouble, ApiClient], layout: str
) -> None:
    double, client = seeded_double
    settings = LAYOUTS[layout]
    double.rbac = rbac = functions_rbac(settings)

    run_everything(double, client, settings)

    assert rbac.denied == []
    policies = settings.policy_namespace
    assert double.names("tokenratelimitpolicies", policies, "kuadrant.io", "v1alpha1") == []  # deleted at the end
    assert double.names("authpolicies", policies, "kuadrant.io", "v1") == ["maas-api-keys"]
    granted = rbac.granted()
    for namespace, group, _, _ in granted:
        assert namespace == expected_namespace(settings, group), (namespace, group)
    unused = {(group, resource, verb) for _, group, resource, verb in granted - rbac.used}
    assert unused == set(NOT_EXERCISED), (
        "granted but never used (over-granted unless justified in NOT_EXERCISED): "
        f"{sorted(unused - set(NOT_EXERCISED))}; justified but now used or no longer granted: "
        f"{sorted(set(NOT_EXERCISED) - unused)}"
    )


def test_every_used_grant_is_needed(seeded_double: tuple[KubeDouble, ApiClient]) -> None:
    """Taking away any one grant the run uses makes it fail as a 503 that points at RBAC."""
    double, client = seeded_double
    settings = LAYOUTS["gateway-namespace"]
    pristine = copy.deepcopy(double.cluster.objects)
    double.rbac = full = functions_rbac(settings)
    run_everything(double, client, settings)
    used = sorted({(group, resource, verb) for _, group, resource, verb in full.used})
    assert len(used) <= 30  # the loop below is bounded by what the run used

    for grant in used:
        with double.cluster.lock:
            double.cluster.objects = copy.deepcopy(pristine)
        double.rbac = functions_rbac(settings, drop=grant)
        with pytest.raises(BackendUnavailable, match="RBAC") as caught:
            run_everything(double, client, settings)
        assert caught.value.status == 503
        assert {(a.group, a.resource, a.verb) for a in double.rbac.denied} == {grant}, grant


def test_without_secrets_create_the_store_answers_503_about_rbac(seeded_double: tuple[KubeDouble, ApiClient]) -> None:
    double, client = seeded_double
    settings = LAYOUTS["one-namespace"]
    double.rbac = functions_rbac(settings, drop=("", "secrets", "create"))
    store = KubernetesStore(client, namespace="llm", key_selector="maas-api-key")

    with pytest.raises(BackendUnavailable, match="RBAC") as caught:
        store.create_team(team=records.a_team("alpha"))
    assert isinstance(caught.value, MaasError) and caught.value.status == 503
    cause = caught.value.__cause__
    assert isinstance(cause, ApiException) and cause.status == 403
    body = json.loads(cause.body)
    assert body["reason"] == "Forbidden" and body["kind"] == "Status" and body["code"] == 403
    assert body["message"] == (
        'secrets is forbidden: User "system:serviceaccount:llm:maas-key-manager" cannot create '
        'resource "secrets" in API group "" in the namespace "llm"'
    )
    assert store.list_teams() == []  # reading is still granted
    assert double.names("secrets", "llm") == []


def test_listing_models_in_every_namespace_needs_more_than_these_roles(seeded_double: tuple[KubeDouble, ApiClient]) -> None:
    """KServeCatalog(namespace=None) is a cluster-scope list: Roles cannot grant it, so the
    functions list their own namespace (KServeCatalog.from_settings)."""
    double, client = seeded_double
    double.rbac = functions_rbac(LAYOUTS["one-namespace"])
    with pytest.raises(BackendUnavailable, match="RBAC"):
        KServeCatalog(client, namespace=None).list_models()
    assert [(a.namespace, a.resource, a.verb) for a in double.rbac.denied] == [(None, "inferenceservices", "list")]


# -- the double's authorizer itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "name", "query", "verb"),
    [
        ("GET", "x", {}, "get"),
        ("GET", None, {}, "list"),
        ("GET", None, {"watch": "true"}, "watch"),
        ("GET", None, {"watch": "1"}, "watch"),
        ("POST", None, {}, "create"),
        ("PUT", "x", {}, "update"),
        ("PATCH", "x", {}, "patch"),
        ("DELETE", "x", {}, "delete"),
        ("DELETE", None, {}, "deletecollection"),
    ],
)
def test_requests_map_to_verbs_as_on_the_api_server(method: str, name: str | None, query: dict[str, str], verb: str) -> None:
    assert request_verb(method, name, query) == verb


RULES = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "delete"], "resourceNames": ["only-this"]},
    {"apiGroups": ["kuadrant.io"], "resources": ["authpolicies"], "verbs": ["get", "update"]},
    {"apiGroups": ["kuadrant.io"], "resources": ["*/status"], "verbs": ["patch"]},
]


@pytest.fixture
def guarded() -> Iterator[tuple[KubeDouble, ApiClient]]:
    with running_double() as (double, client):
        CoreV1Api(client).create_namespaced_config_map("llm", {"metadata": {"name": "only-this"}})
        CoreV1Api(client).create_namespaced_config_map("llm", {"metadata": {"name": "another"}})
        CustomObjectsApi(client).create_namespaced_custom_object(
            "kuadrant.io", "v1", "llm", "authpolicies", {"apiVersion": "kuadrant.io/v1", "kind": "AuthPolicy", "metadata": {"name": "p"}, "spec": {}}
        )
        double.rbac = Rbac(roles=[("llm", RULES)], user="system:serviceaccount:llm:maas")
        yield double, client


def forbidden_message(call: Any) -> str:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403
    body = json.loads(caught.value.body)
    assert (body["kind"], body["status"], body["reason"], body["code"]) == ("Status", "Failure", "Forbidden", 403)
    return str(body["message"])


def test_the_double_authorizes_verbs_groups_resources_names_and_namespaces(guarded: tuple[KubeDouble, ApiClient]) -> None:
    double, client = guarded
    core, custom = CoreV1Api(client), CustomObjectsApi(client)
    user = 'User "system:serviceaccount:llm:maas"'
    assert core.list_namespaced_secret("llm").items == []
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret("x", "llm")
    assert missing.value.status == 404  # authorized first, then not found
    assert forbidden_message(lambda: core.list_namespaced_secret("other")) == (
        f'secrets is forbidden: {user} cannot list resource "secrets" in API group "" in the namespace "other"'
    )
    assert forbidden_message(lambda: core.list_secret_for_all_namespaces()) == (
        f'secrets is forbidden: {user} cannot list resource "secrets" in API group "" at the cluster scope'
    )
    assert forbidden_message(lambda: core.list_namespaced_secret("llm", watch=True, _preload_content=False)).endswith(
        'cannot watch resource "secrets" in API group "" in the namespace "llm"'
    )
    assert forbidden_message(lambda: core.delete_collection_namespaced_secret("llm")).endswith(
        'cannot deletecollection resource "secrets" in API group "" in the namespace "llm"'
    )
    # resourceNames: that object only, and never a request without a name.
    assert core.read_namespaced_config_map("only-this", "llm").metadata.name == "only-this"
    assert forbidden_message(lambda: core.read_namespaced_config_map("another", "llm")) == (
        f'configmaps "another" is forbidden: {user} cannot get resource "configmaps" in API group "" in the namespace "llm"'
    )
    assert forbidden_message(lambda: core.list_namespaced_config_map("llm")).startswith("configmaps is forbidden")
    core.delete_namespaced_config_map("only-this", "llm", body=V1DeleteOptions())
    # Groups and subresources: update on the object does not give patch; */status does.
    current = custom.get_namespaced_custom_object("kuadrant.io", "v1", "llm", "authpolicies", "p")
    custom.replace_namespaced_custom_object("kuadrant.io", "v1", "llm", "authpolicies", "p", current)
    assert forbidden_message(
        lambda: custom.patch_namespaced_custom_object("kuadrant.io", "v1", "llm", "authpolicies", "p", {"spec": {}})
    ) == f'authpolicies.kuadrant.io "p" is forbidden: {user} cannot patch resource "authpolicies" in API group "kuadrant.io" in the namespace "llm"'
    custom.patch_namespaced_custom_object_status("kuadrant.io", "v1", "llm", "authpolicies", "p", {"status": {"x": 1}})
    assert forbidden_message(
        lambda: custom.get_namespaced_custom_object("extensions.kuadrant.io", "v1alpha1", "llm", "authpolicies", "p")
    ).endswith('cannot get resource "authpolicies" in API group "extensions.kuadrant.io" in the namespace "llm"')

    assert ("llm", "kuadrant.io", "authpolicies/status", "patch") in double.rbac.used  # type: ignore[union-attr]
    assert Access("llm", "", "configmaps", "get", "another") in double.rbac.denied  # type: ignore[union-attr]
