"""Kubernetes RBAC rules for the Roles `make manifests` renders, from tests/cluster/SOURCES.md
section 12 (kubernetes/website `content/en/docs/reference/access-authn-authz/rbac.md`,
"Referring to resources"):

- `resourceNames` cannot restrict `create` or `deletecollection` (the name is not known when the
  request is authorized), and restricts `list`/`watch` only for requests that carry a matching
  `metadata.name` field selector; none of our lists do, so such a rule would simply refuse them
  (or, worse, look like a restriction while another rule grants the verb). So: `resourceNames`
  only with get/update/patch/delete.
- A PolicyRule has no label selector: a Secret right covers every Secret of the namespace. The
  one lever is the verbs each function's account gets (tools/manifests.FUNCTION_ACCOUNTS), and
  no wildcard anywhere.
- The accounts of the functions that need no API (openapi) have no Role and mount no token; the
  health function has no rights at all (functions/meta.health asks for /version, which needs none).
- The one cluster-wide grant is `create` on TokenReviews and SubjectAccessReviews (both
  cluster-scoped, so only a ClusterRole can grant them), for the accounts of the functions that
  check admin credentials (shared.kubeidentity); a review writes nothing. The platform-admin
  ClusterRole is rendered for a cluster admin to bind, and bound to nobody.

tests/test_kube_rbac.py proves the grants are exactly what each function uses; this file
checks the rendered shape, under default and non-default settings, and shows each check fails
on a Role broken its way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.modelroute import managed_route_objects
from shared.settings import Settings
from tools import manifests

JSON = dict[str, Any]

NAMELESS_VERBS = {"list", "watch", "create", "deletecollection"}  # resourceNames cannot restrict these
NAMED_VERBS = {"get", "update", "patch", "delete"}

RENDERINGS = {
    "default": Settings(),
    "non-default": Settings(namespace="maas-system", gateway_namespace="gateway-system", key_selector="team-keys"),
    # Teams, keys and audit entries apart from the functions and maas-admin-key (MAAS_KEYS_NAMESPACE).
    "keys-namespace": Settings(namespace="maas-system", keys_namespace="maas-keys", gateway_namespace="gateway-system"),
}


def _of(documents: list[JSON], kind: str) -> list[JSON]:
    return [d for d in documents if d["kind"] == kind]


def _rules(documents: list[JSON]) -> Iterator[tuple[str, JSON]]:
    for role in _of(documents, "Role") + _of(documents, "ClusterRole"):
        for rule in role.get("rules") or []:
            yield role["metadata"]["name"], rule


def account_grants(documents: list[JSON], account: str, namespace: str) -> dict[tuple[str | None, str, str], set[str]]:
    """(role namespace, group, resource) -> verbs, over the Roles bound to one ServiceAccount and
    the ClusterRoles bound to it cluster-wide (namespace None)."""
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    roles = {(r["metadata"].get("namespace"), r["kind"], r["metadata"]["name"]): r
             for r in _of(documents, "Role") + _of(documents, "ClusterRole")}
    grants: dict[tuple[str | None, str, str], set[str]] = {}
    for binding in _of(documents, "RoleBinding") + _of(documents, "ClusterRoleBinding"):
        if subject not in binding["subjects"]:
            continue
        kind = binding["roleRef"]["kind"]
        # A Role is its binding's namespace's; a ClusterRole has none.
        where = binding["metadata"].get("namespace") if kind == "Role" else None
        role = roles.get((where, kind, binding["roleRef"]["name"]))
        assert role is not None, binding["metadata"]["name"]
        scope = binding["metadata"].get("namespace")  # None: a ClusterRoleBinding grants everywhere
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((scope, group, resource), set()).update(rule["verbs"])
    return grants


# Creating a review asks the API server a question and stores nothing: not a write.
REVIEWS = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}


# ------------------------------------------------------------------ the checks


def resource_names(documents: list[JSON]) -> Iterator[str]:
    """rbac.md "Referring to resources": resourceNames never with list/watch/create/deletecollection."""
    for role, rule in _rules(documents):
        if rule.get("resourceNames"):
            for verb in sorted(set(rule["verbs"]) & NAMELESS_VERBS):
                yield f"{role}: resourceNames with {verb} (ineffective: it cannot name the object)"


def wildcards(documents: list[JSON], settings: Settings) -> Iterator[str]:
    """No `*` in verbs, resources, apiGroups or resourceNames; no cluster-wide grant but the
    reviews' (exactly manifests.identity_rbac, bound to the admin-checking accounts alone)."""
    for role, rule in _rules(documents):
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            if any("*" in value for value in rule.get(key) or []):
                yield f"{role}: wildcard in {key}"
    expected = {(d["kind"], d["metadata"]["name"]): d for d in manifests.identity_rbac(settings)}
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        for document in _of(documents, kind):
            if expected.get((kind, document["metadata"]["name"])) != document:
                yield f"{kind} {document['metadata']['name']}"
    for binding in _of(documents, "RoleBinding"):
        if binding["roleRef"]["kind"] == "ClusterRole":
            yield f"RoleBinding {binding['metadata']['name']} binds ClusterRole {binding['roleRef']['name']}"



def quiet_accounts(documents: list[JSON], settings: Settings) -> Iterator[str]:
    """openapi's account: no rights and no token; health's: no rights (a token, for /version)."""
    namespace = settings.namespace
    none = manifests.function_account("openapi")
    if account_grants(documents, none, namespace):
        yield f"{none} has rights"
    (service_account,) = [d for d in _of(documents, "ServiceAccount") if d["metadata"]["name"] == none]
    if service_account.get("automountServiceAccountToken") is not False:
        yield f"{none} mounts a token"
    health = manifests.function_account("health")
    grants = account_grants(documents, health, namespace)
    if grants:
        yield f"{health} has {grants}"
    for account in (none, health):
        for (_, group, resource), verbs in account_grants(documents, account, namespace).items():
            if (group, resource) == ("", "secrets") and verbs - {"list"}:
                yield f"{account} may {sorted(verbs - {'list'})} Secrets"


def read_only(documents: list[JSON], settings: Settings) -> Iterator[str]:
    """The accounts of endpoints that only read may write nothing but their audit entry."""
    for account in ("reader", "models", "health"):
        name = manifests.account_name(account)
        for (_, group, resource), verbs in account_grants(documents, name, settings.namespace).items():
            writes = verbs - {"get", "list"} - ({"create"} if (group, resource) in {("", "configmaps"), *REVIEWS} else set())
            if writes:
                yield f"{name} may {sorted(writes)} {resource}"


def placement(documents: list[JSON], settings: Settings) -> Iterator[str]:
    """Secrets and ConfigMaps (the store, and the team source's watch) in the keys namespace,
    models in MAAS_NAMESPACE; Kuadrant policies beside the Gateway; every function on its own
    account; the event source's account used by no function."""
    beside_gateway = {(obj["apiVersion"].split("/")[0], manifests._plural(obj["kind"]))
                      for obj in managed_route_objects(settings) if obj["metadata"]["namespace"] == settings.policy_namespace}
    for role in _of(documents, "Role"):
        for rule in role["rules"]:
            kuadrant = any(group.endswith("kuadrant.io") for group in rule["apiGroups"])
            # The one models route lives beside the policies (shared/modelroute.py), its grant beside the models.
            route = {(g, r) for g in rule["apiGroups"] for r in rule["resources"]} <= beside_gateway
            core = rule["apiGroups"] == [""]
            expected = (settings.policy_namespace if kuadrant or route
                        else settings.store_namespace if core else settings.namespace)
            if role["metadata"]["namespace"] != expected:
                yield f"{role['metadata']['name']}: {rule['resources']} granted in {role['metadata']['namespace']}"
    services = {
        d["metadata"]["labels"]["maas/function"]: d["spec"]["template"]["spec"]
        for d in documents if d["kind"] == "Service" and d["apiVersion"] == "serving.knative.dev/v1"
    }
    for target, spec in services.items():
        if spec["serviceAccountName"] != manifests.function_account(target):
            yield f"{target} runs as {spec['serviceAccountName']}"
    for source in _of(documents, "ApiServerSource"):
        if source["spec"]["serviceAccountName"] in {spec["serviceAccountName"] for spec in services.values()}:
            yield "the ApiServerSource shares an account with a function"


def named_objects(documents: list[JSON], settings: Settings) -> Iterator[str]:
    """resourceNames name only the policies and the models route we manage, and get/update/delete
    on policies always carry them (create cannot)."""
    managed = _managed_names(settings)
    for role, rule in _rules(documents):
        names = set(rule.get("resourceNames") or [])
        if names - managed:
            yield f"{role}: names {sorted(names - managed)}"
        kuadrant = any(group.endswith("kuadrant.io") for group in rule["apiGroups"])
        if kuadrant and not names and set(rule["verbs"]) & NAMED_VERBS:
            yield f"{role}: {sorted(set(rule['verbs']) & NAMED_VERBS)} on {rule['resources']} without resourceNames"


def secrets_apart(documents: list[JSON], settings: Settings) -> Iterator[str]:
    """With a keys namespace of its own, no function account has any Secret right in
    MAAS_NAMESPACE: maas-admin-key reaches the pods that need it as a secretKeyRef (through the
    kubelet), never through the API; and every Secret right a function has is in the keys
    namespace. (RBAC cannot narrow Secrets by label: SOURCES.md section 12.)"""
    if settings.store_namespace == settings.namespace:
        return
    for target in manifests.function_targets():
        account = manifests.function_account(target)
        for (namespace, group, resource), verbs in account_grants(documents, account, settings.namespace).items():
            if (group, resource) in (("", "secrets"), ("", "configmaps")) and namespace != settings.store_namespace:
                yield f"{account} may {sorted(verbs)} {resource} in {namespace}"
    events = [d for d in _of(documents, "ApiServerSource") if d["metadata"]["name"] == manifests.TEAM_SOURCE]
    for source in events:
        if source["metadata"]["namespace"] != settings.store_namespace:
            yield f"the team source watches {source['metadata']['namespace']}"


CHECKS: dict[str, Callable[[list[JSON], Settings], list[str]]] = {
    "resource_names": lambda documents, settings: list(resource_names(documents)),
    "wildcards": lambda documents, settings: list(wildcards(documents, settings)),
    "quiet_accounts": lambda documents, settings: list(quiet_accounts(documents, settings)),
    "read_only": lambda documents, settings: list(read_only(documents, settings)),
    "placement": lambda documents, settings: list(placement(documents, settings)),
    "named_objects": lambda documents, settings: list(named_objects(documents, settings)),
    "secrets_apart": lambda documents, settings: list(secrets_apart(documents, settings)),
}


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_rendered_rbac_keeps_the_rule(rendering: str, check: str) -> None:
    settings = RENDERINGS[rendering]
    documents = manifests.render(settings)
    assert _of(documents, "Role") and _of(documents, "RoleBinding")
    assert CHECKS[check](documents, settings) == []


def test_resource_names_are_used_where_they_work() -> None:
    """Not vacuous: the policy Roles do name their objects."""
    documents = manifests.render(RENDERINGS["default"])
    named = [rule for _, rule in _rules(documents) if rule.get("resourceNames")]
    assert named and all(set(rule["verbs"]) <= NAMED_VERBS for rule in named)
    assert {n for rule in named for n in rule["resourceNames"]} == _managed_names(Settings())


def _managed_names(settings: Settings) -> set[str]:
    return ({ref.name for ref in manifests.managed_policies(settings)}
            | {obj["metadata"]["name"] for obj in managed_route_objects(settings)})



# ------------------------------------------------------------------ each check can fail


def _role(documents: list[JSON], name: str, namespace: str | None = None) -> JSON:
    """The Role of that name (in the keys namespace, when an account has one per namespace)."""
    found = [d for d in _of(documents, "Role") if d["metadata"]["name"] == name]
    by_namespace = {d["metadata"]["namespace"]: d for d in found}
    assert len(by_namespace) == len(found), name
    if namespace is None:
        namespace = MUTATED[_layout(documents)].store_namespace
    return by_namespace[namespace] if len(found) > 1 else found[0]


def _layout(documents: list[JSON]) -> str:
    config = next(d for d in _of(documents, "ConfigMap") if d["metadata"]["name"] == manifests.CONFIG_MAP)
    return next(name for name, settings in MUTATED.items() if config["data"]["MAAS_KEYS_NAMESPACE"] == settings.store_namespace)


def _secrets_beside_the_functions(documents: list[JSON]) -> None:
    """The models account's Role in MAAS_NAMESPACE (its KServe list) also lists Secrets there."""
    _role(documents, manifests.account_name("models"), "llm")["rules"].append(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]})


def _team_source_beside_the_functions(documents: list[JSON]) -> None:
    source = next(d for d in _of(documents, "ApiServerSource") if d["metadata"]["name"] == manifests.TEAM_SOURCE)
    source["metadata"]["namespace"] = "llm"


def _policy_role(documents: list[JSON]) -> JSON:
    return _role(documents, manifests.account_name("writer") + "-policies")


def _add_rule(name: str, rule: JSON) -> Callable[[list[JSON]], None]:
    return lambda documents: _role(documents, manifests.account_name(name))["rules"].append(rule)


def _bind_to_reader(target: str) -> Callable[[list[JSON]], None]:
    def bind(documents: list[JSON]) -> None:
        binding = next(d for d in _of(documents, "RoleBinding") if d["metadata"]["name"] == manifests.account_name("reader"))
        binding["subjects"].append({"kind": "ServiceAccount", "name": manifests.function_account(target), "namespace": "llm"})
    return bind


MUTATIONS: dict[str, tuple[str, Callable[[list[JSON]], None]]] = {
    "named create": ("resource_names", lambda d: _policy_role(d)["rules"][-1].update({"resourceNames": ["maas-api-keys"]})),
    "named list": ("resource_names", _add_rule("reader", {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"], "resourceNames": ["team-a-config"]})),
    "wildcard verb": ("wildcards", _add_rule("reader", {"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]})),
    "wildcard resource": ("wildcards", _add_rule("reader", {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]})),
    "a ClusterRole": ("wildcards", lambda d: d.append({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []})),
    "reviews for the cleanup account": ("wildcards", lambda d: _of(d, "ClusterRoleBinding")[0]["subjects"].append(
        {"kind": "ServiceAccount", "name": manifests.account_name("cleanup"), "namespace": "llm"})),
    "a platform admin bound": ("wildcards", lambda d: d.append({
        "kind": "RoleBinding", "metadata": {"name": "admins", "namespace": "llm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": manifests.PLATFORM_ADMIN_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": manifests.account_name("writer"), "namespace": "llm"}]})),
    "openapi bound to a Role": ("quiet_accounts", _bind_to_reader("openapi")),
    "openapi mounts a token": ("quiet_accounts", lambda d: next(
        s for s in _of(d, "ServiceAccount") if s["metadata"]["name"] == manifests.function_account("openapi")
    ).pop("automountServiceAccountToken")),
    "health reads Secrets": ("quiet_accounts", _bind_to_reader("health")),
    "reader patches Secrets": ("read_only", _add_rule("reader", {"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch"]})),
    "models deletes audit entries": ("read_only", _add_rule("models", {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"]})),
    "Secrets beside the Gateway": ("placement", lambda d: _policy_role(d)["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})),
    "a function on another's account": ("placement", lambda d: next(
        s for s in d if s["kind"] == "Service" and s["metadata"]["name"] == "maas-openapi"
    )["spec"]["template"]["spec"].update({"serviceAccountName": manifests.account_name("writer")})),
    "the event source on a function's account": ("placement", lambda d: _of(d, "ApiServerSource")[0]["spec"].update(
        {"serviceAccountName": manifests.account_name("writer")})),
    "a policy grant without names": ("named_objects", lambda d: _policy_role(d)["rules"][0].pop("resourceNames")),
    "naming someone else's object": ("named_objects", lambda d: _policy_role(d)["rules"][0]["resourceNames"].append("other")),
    "Secrets beside the functions": ("secrets_apart", _secrets_beside_the_functions),
    "the team source beside the functions": ("secrets_apart", _team_source_beside_the_functions),
}
# Every mutation in both layouts, but those of the check that only a keys namespace of its own has.
MUTATED = {
    "gateway-namespace": Settings(gateway_namespace="gateway-system"),
    "keys-namespace": Settings(gateway_namespace="gateway-system", keys_namespace="llm-keys"),
}


def test_every_check_has_a_mutation() -> None:
    assert {check for check, _ in MUTATIONS.values()} == set(CHECKS)


@pytest.mark.parametrize(("mutation", "layout"), [
    (mutation, layout) for mutation in sorted(MUTATIONS) for layout in sorted(MUTATED)
    if MUTATIONS[mutation][0] != "secrets_apart" or layout == "keys-namespace"
])
def test_each_check_catches_its_mutation(mutation: str, layout: str) -> None:
    check, mutate = MUTATIONS[mutation]
    settings = MUTATED[layout]
    documents = manifests.render(settings)
    assert CHECKS[check](documents, settings) == []
    broken = copy.deepcopy(documents)
    mutate(broken)
    assert CHECKS[check](broken, settings), f"{check} let '{mutation}' through"
