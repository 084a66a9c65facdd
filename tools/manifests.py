"""Render the deployable Kubernetes set: the deployment, and the starting policies apart.

    python -m tools.manifests --out dist/manifests.yaml --policies-out dist/policies.yaml

What derives from the routing table is generated here, so it cannot drift from it: one Knative
Service per function target (shared/routes.ROUTES and EVENT_TARGETS), the HTTPRoute that maps
each (method, path) to its Service, and the function's RBAC. The static pieces are YAML files in
config/base/ (the admin key Secret, the Broker, the event sources and Triggers). Namespace,
Gateway and key selector come from the same Settings (MAAS_* variables) the functions use.

The Kuadrant policies are in a file of their own: the functions regenerate them from the teams
(and the models route from the models) on every change, so they are the functions' to keep.
dist/manifests.yaml can be applied again at any time without undoing them; dist/policies.yaml
holds what the functions would write for a store with no teams (or, with --example-teams, for
config/examples/teams.yaml, to review what teams produce), created once so that the models
are never reachable without the API-key check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from shared.gatewayapi import HTTP_ROUTE_API, MAX_RULES_PER_ROUTE, gateway_parent_ref, host_rewrite, reference_grant
from shared.kubeidentity import PLATFORM_ADMIN, REVIEWER_RULES
from shared.modelroute import managed_route_objects
from shared.policies import generate_policies, managed_policies
from shared.routes import CONSOLE, EVENT_TARGETS, HTTP_ROUTES, PAGES, ROUTES, Route
from shared.schemas import TeamCreate
from shared.settings import Settings
from shared.store.base import Team
from shared.teams import team_from_request

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"
FUNC_YAML = REPO_ROOT / "func.yaml"

PART_OF = {"app.kubernetes.io/part-of": "maas"}
SERVICE_ACCOUNT = "maas-key-manager"
ADMIN_KEY_SECRET = "maas-admin-key"
CONFIG_MAP = "maas-config"
HTTP_ROUTE = "maas-key-manager"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc.cluster.local:9090"
# The Limitador Kuadrant makes (kuadrant-operator internal/kuadrant/kuadrant.go LimitadorName) and its
# Service, `limitador-<name>` (limitador-operator pkg/limitador/k8s_objects.go ServiceName), on its
# HTTP port (api/v1alpha1/limitador_types.go DefaultServiceHTTPPort): what explain reads counters from.
DEFAULT_LIMITADOR_URL = "http://limitador-limitador.kuadrant-system.svc.cluster.local:8080"
# Gateway API caps an HTTPRoute at 16 rules (MAX_RULES_PER_ROUTE); more routes spill into further HTTPRoutes.
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_REGEX_META = re.compile(r"([.^$*+?()\[\]|\\])")
_PARAM = re.compile(r"\{[a-z_]+\}")


# ------------------------------------------------------------------ names and paths


def service_name(target: str) -> str:
    """The Knative Service of a function target: a DNS label, `maas-` prefixed."""
    return "maas-" + target.replace("_", "-")


def path_match(path: str) -> dict[str, str]:
    """A Gateway API path match for a route template: Exact, or an anchored RE2 expression."""
    if not _PARAM.search(path):
        return {"type": "Exact", "value": path}
    pieces = _PARAM.split(path)
    regex = "[^/]+".join(_REGEX_META.sub(r"\\\1", piece) for piece in pieces)
    return {"type": "RegularExpression", "value": f"^{regex}$"}


# ------------------------------------------------------------------ workloads


def function_targets() -> list[str]:
    """Every deployable target, HTTP ones in routing-table order, then the event ones."""
    targets: list[str] = []
    for target in [route.target for route in HTTP_ROUTES] + list(EVENT_TARGETS):
        if target not in targets:
            targets.append(target)
    return targets


def knative_service(target: str, settings: Settings, func: dict[str, Any], image: str) -> dict[str, Any]:
    deploy = func.get("deploy", {})
    scale = deploy.get("options", {}).get("scale", {})
    annotations = {"autoscaling.knative.dev/min-scale": str(scale.get("min", 0))}
    if "max" in scale:
        annotations["autoscaling.knative.dev/max-scale"] = str(scale["max"])
    if "target" in scale:
        annotations["autoscaling.knative.dev/target"] = str(scale["target"])
    if "metric" in scale:
        annotations["autoscaling.knative.dev/metric"] = scale["metric"]
    if target == CONSOLE:
        # The console keeps its sessions in its process (functions/console/sessions.py): one pod,
        # or a person would be signed out whenever a request reached another.
        annotations["autoscaling.knative.dev/max-scale"] = "1"

    env: list[dict[str, Any]] = [
        {"name": "FUNCTION_TARGET", "value": target},
        {"name": "MAAS_STORE", "value": "kubernetes"},
        # A literal, not a fieldRef: Knative rejects `valueFrom.fieldRef` unless the cluster turned on
        # `kubernetes.podspec-fieldref` (off by default); tests/cluster/test_knative.py.
        {"name": "MAAS_NAMESPACE", "value": settings.namespace},
    ]
    http_route = next((route for route in HTTP_ROUTES if route.target == target), None)
    if http_route is None:
        env.append({"name": "FUNCTION_SIGNATURE_TYPE", "value": "cloudevent"})
    if http_route is not None and http_route.auth != "none":
        # Only the functions that check admin credentials get to read the admin key.
        env.append(
            {"name": "ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": ADMIN_KEY_SECRET, "key": "ADMIN_KEY"}}}
        )
    container: dict[str, Any] = {
        "name": "function",
        "image": image,
        "ports": [{"containerPort": 8080}],
        "env": env,
        "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    resources = deploy.get("options", {}).get("resources")
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(target),
            "namespace": settings.namespace,
            "labels": {
                **PART_OF,
                "app.kubernetes.io/component": "function",
                "maas/function": target,
                # Reached only through the HTTPRoute (or the Broker), never on its own URL.
                "networking.knative.dev/visibility": "cluster-local",
            },
        },
        "spec": {
            "template": {
                "metadata": {"labels": {**PART_OF, "maas/function": target}, "annotations": annotations},
                "spec": {
                    # Per function, not func.yaml's one account (that is for `func deploy` of one target).
                    "serviceAccountName": function_account(target),
                    **({"automountServiceAccountToken": False} if not _uses_the_api(target) else {}),
                    "containers": [container],
                },
            }
        },
    }


def _uses_the_api(target: str) -> bool:
    return _account_uses_the_api(FUNCTION_ACCOUNTS[target])


def _account_uses_the_api(account: str) -> bool:
    # health has no grant, but calls the API server (/version): it needs its token to reach it.
    return bool(ACCOUNT_RULES[account]) or account in POLICY_WRITERS or account == "health"


def config_map(settings: Settings, prometheus_url: str, limitador_url: str = DEFAULT_LIMITADOR_URL) -> dict[str, Any]:
    """The settings every function shares, so that they apply the policies we render here."""
    data = {
        "MAAS_KEY_SELECTOR": settings.key_selector,
        "MAAS_AUTHORINO_SECRET_LABEL": settings.authorino_secret_label,
        "MAAS_GATEWAY_NAME": settings.gateway_name,
        "MAAS_GATEWAY_NAMESPACE": settings.policy_namespace,
        # Where the store's team and key Secrets and audit ConfigMaps are (and the policy admits keys).
        "MAAS_KEYS_NAMESPACE": settings.store_namespace,
        "MAAS_USAGE": "prometheus",
        "PROMETHEUS_URL": prometheus_url,
        # explain's counters in a cluster (shared/limitador.py)
        "MAAS_LIMITADOR_URL": limitador_url,
        # The policy sync renders the maas-models HTTPRoute with these (shared/modelroute.py).
        "MAAS_ROUTE_RULE_NAMES": "true" if settings.route_rule_names else "false",
    }
    if settings.models_hostname:
        data["MAAS_MODELS_HOSTNAME"] = settings.models_hostname
    # Sign-in with an identity provider, as set when rendering: every function that checks
    # credentials must accept the same tokens and map the same groups.
    if settings.oidc_issuer:
        data.update({
            "MAAS_OIDC_ISSUER": settings.oidc_issuer,
            "MAAS_OIDC_AUDIENCE": settings.oidc_audience or "",
            "MAAS_OIDC_USER_CLAIM": settings.oidc_user_claim,
            "MAAS_OIDC_EMAIL_CLAIM": settings.oidc_email_claim,
            "MAAS_OIDC_GROUPS_CLAIM": settings.oidc_groups_claim,
        })
    if settings.admin_groups_list:
        data["MAAS_ADMIN_GROUPS"] = settings.admin_groups_list
    if settings.team_group_pattern:
        data["MAAS_TEAM_GROUP_PATTERN"] = settings.team_group_pattern
    if settings.team_admin_group_pattern:
        data["MAAS_TEAM_ADMIN_GROUP_PATTERN"] = settings.team_admin_group_pattern
    if not settings.kubernetes_sign_in:
        data["MAAS_KUBERNETES_SIGN_IN"] = "false"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": settings.namespace, "labels": dict(PART_OF)},
        "data": data,
    }


# ------------------------------------------------------------------ routing


def http_routes(settings: Settings, routes: Sequence[Route] = ROUTES,
                pages: Sequence[Route] = PAGES) -> list[dict[str, Any]]:
    """HTTPRoutes sending each (method, path) of the routing table to its function's Service: a
    rule per API route, and one per console target with a match per page (a rule holds up to 64)."""
    rules = [_rule(route, settings=settings) for route in routes]
    for target in dict.fromkeys(page.target for page in pages):
        rules.append(_rule(*[page for page in pages if page.target == target], settings=settings))
    chunks = [rules[i : i + MAX_RULES_PER_ROUTE] for i in range(0, len(rules), MAX_RULES_PER_ROUTE)]
    documents = []
    for index, chunk in enumerate(chunks):
        spec: dict[str, Any] = {
            "parentRefs": [gateway_parent_ref(settings.gateway_name, settings.policy_namespace)],
            "rules": chunk,
        }
        if settings.api_hostname:
            spec = {"hostnames": [settings.api_hostname], **spec}
        documents.append(
            {
                "apiVersion": HTTP_ROUTE_API,
                "kind": "HTTPRoute",
                "metadata": {
                    "name": HTTP_ROUTE if index == 0 else f"{HTTP_ROUTE}-{index + 1}",
                    "namespace": settings.namespace,
                    "labels": dict(PART_OF),
                },
                "spec": spec,
            }
        )
    return documents


def _rule(route: Route, *more: Route, settings: Settings) -> dict[str, Any]:
    """One rule for `route` (and `more` routes of the same target: the console's pages)."""
    name = service_name(route.target)
    rule: dict[str, Any] = {}
    if settings.route_rule_names:
        # `rules[].name` is Standard from Gateway API v1.4.0 (Experimental from v1.2.0); older CRDs
        # prune or reject it, hence MAAS_ROUTE_RULE_NAMES=false (tests/cluster/test_gateway_api.py).
        rule["name"] = rule_name(route) if not more else route.target.replace("_", "-")
    return rule | {
        "matches": [{"path": path_match(r.path), "method": r.method} for r in (route, *more)],
        # Knative's local gateway routes by Host: to the function's cluster-local name.
        "filters": [host_rewrite(f"{name}.{settings.namespace}.svc.cluster.local")],
        "backendRefs": [backend_ref(route, settings)],
    }


def rule_name(route: Route) -> str:
    """`<method>-<target>`: a DNS label, unique because (method, path) -> target is one-to-one."""
    return f"{route.method.lower()}-{route.target.replace('_', '-')}"


def backend_ref(route: Route, settings: Settings) -> dict[str, Any]:
    """The function's Knative Service (an ExternalName to Knative's local gateway: Istio follows
    it, Envoy Gateway does not), or one configured Service such as `knative-local-gateway`."""
    if settings.route_backend_service is None:
        return {"group": "", "kind": "Service", "name": service_name(route.target), "port": 80}
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": settings.route_backend_service}
    if _backend_namespace(settings) != settings.namespace:
        ref["namespace"] = _backend_namespace(settings)
    return ref | {"port": settings.route_backend_port}


def _backend_namespace(settings: Settings) -> str:
    return settings.route_backend_namespace or settings.namespace


def reference_grants(settings: Settings) -> list[dict[str, Any]]:
    """A backend in another namespace needs that namespace's consent (Gateway API ReferenceGrant)."""
    namespace = _backend_namespace(settings)
    if settings.route_backend_service is None or namespace == settings.namespace:
        return []
    return [
        reference_grant(
            f"{HTTP_ROUTE}-{settings.namespace}", namespace, from_namespace=settings.namespace,
            services=[settings.route_backend_service], labels=PART_OF,
        )
    ]


def admin_route_auth(route: dict[str, Any]) -> dict[str, Any]:
    """Let the admin API past the Gateway's API-key AuthPolicy: the functions check ADMIN keys.

    A route-level AuthPolicy replaces the Gateway-level one (its rules are defaults). The empty
    identity keeps the token-limit predicates (`auth.identity.team == ...`) well defined.
    """
    metadata = route["metadata"]
    empty = {field: {"value": ""} for field in ("userid", "team", "groups")}
    return {
        "apiVersion": "kuadrant.io/v1",
        "kind": "AuthPolicy",
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"], "labels": dict(PART_OF)},
        "spec": {
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": metadata["name"]},
            "rules": {
                "authentication": {"admin-api": {"anonymous": {}}},
                "response": {"success": {"filters": {"identity": {"json": {"properties": empty}}}}},
            },
        },
    }


# ------------------------------------------------------------------ RBAC

# Which ServiceAccount each function runs as. RBAC cannot narrow Secrets by label, and
# `resourceNames` cannot narrow list or create (tests/cluster/SOURCES.md 12), so the one lever is
# to give each kind of function only the verbs it uses. Every deployed target must be listed.
# MAAS_KEYS_NAMESPACE puts the teams, keys and audit entries (every Secret and ConfigMap right
# below) in a namespace of their own, apart from the functions and maas-admin-key (docs/DEPLOY.md).
FUNCTION_ACCOUNTS: dict[str, str] = {
    "openapi": "none",
    "health": "health",
    "list_teams": "reader",
    "get_team": "reader",
    "list_team_keys": "reader",
    "list_user_keys": "reader",
    "list_members": "reader",
    "whoami": "reader",
    "list_my_keys": "reader",
    "my_usage": "reader",
    "list_audit": "reader",
    "user_usage": "reader",
    "team_usage": "reader",
    "platform_usage": "reader",
    "explain_limits": "reader",
    "simulate_limits": "reader",
    "list_models": "models",
    "list_openai_models": "models",
    "create_key": "writer",
    "create_my_key": "writer",
    "add_member": "writer",
    "update_member": "writer",
    "remove_member": "writer",
    "delete_key": "writer",
    "delete_key_legacy": "writer",
    "revoke_key": "writer",
    "rotate_key": "writer",
    "create_team": "writer",
    "update_team": "writer",
    "delete_team": "writer",
    "cleanup": "cleanup",
    "console": "console",
}
# What each account may do: Secrets and ConfigMaps (the store) in the keys namespace, the models
# in MAAS_NAMESPACE (rule_namespace); the policy writers also get the policies Role.
# tests/test_kube_rbac.py drives every function as its account against an API double: each
# grant is used by a function of that account, and taking any one away breaks one of them.
_WRITE_SECRETS = ["get", "list", "create", "patch", "delete"]
_AUDIT = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}  # every admin call is audited
ACCOUNT_RULES: dict[str, list[dict[str, Any]]] = {
    # The OpenAPI document is static: no API access, and no token mounted.
    "none": [],
    # /health asks the API server for /version (functions/meta.health, Store.ping), which needs
    # no grant: its unauthenticated callers reach no Secret through it.
    "health": [],
    "reader": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "create"]},
    ],
    # An API key is looked up by a label of its hash (list); models are listed, never read one by one.
    "models": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]},
        _AUDIT,
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices", "llminferenceservices"], "verbs": ["list"]},
    ],
    # Teams, keys and memberships: RBAC cannot tell a team Secret from a key or membership
    # Secret, so one account writes all three. Read-modify-write is a merge patch conditioned on
    # the resourceVersion read. deletecollection removes a deleted team's memberships in one
    # request (by label) instead of one per member; it adds no power to list plus delete.
    "writer": [{"apiGroups": [""], "resources": ["secrets"], "verbs": [*_WRITE_SECRETS, "deletecollection"]}, _AUDIT],
    # The console does what a person may do through the API's targets, in its process: the
    # writer's grants, and listing the models for the key forms.
    "console": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": [*_WRITE_SECRETS, "deletecollection"]},
        _AUDIT,
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices", "llminferenceservices"], "verbs": ["list"]},
    ],
    # Marks expired keys, deletes orphaned and long-expired ones, prunes the audit log.
    "cleanup": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "delete"]},
    ],
}
# Whose work ends in sync_policies: team changes, a rotation that shortens the old key's expiry
# (shared.keys.rotate_key), and cleanup; the console makes the first two as a person asks.
POLICY_WRITERS = ("writer", "cleanup", "console")


def account_name(account: str) -> str:
    return f"{SERVICE_ACCOUNT}-{account}"


def function_account(target: str) -> str:
    """The ServiceAccount a function target runs as."""
    return account_name(FUNCTION_ACCOUNTS[target])


def policy_rules(settings: Settings) -> list[dict[str, Any]]:
    """The Kuadrant policies, by name where RBAC can: get/update/delete name their object;
    create cannot (the name is not known when it is authorized), so it is a rule of its own.

    Policies are written whole: read, then create or replace (PUT); never listed, watched or
    patched. Only a policy that zero teams do not produce is ever deleted (sync_policies).
    """
    always_present = {document["kind"] for document in generate_policies([], settings)}
    rules: list[dict[str, Any]] = []
    creatable: dict[str, list[str]] = {}
    for ref in managed_policies(settings):
        group, plural = ref.api_version.split("/")[0], _plural(ref.kind)
        verbs = ["get", "update"] if ref.kind in always_present else ["get", "update", "delete"]
        rules.append({"apiGroups": [group], "resources": [plural], "resourceNames": [ref.name], "verbs": verbs})
        creatable.setdefault(group, []).append(plural)
    rules.extend(
        {"apiGroups": [group], "resources": sorted(plurals), "verbs": ["create"]}
        for group, plurals in sorted(creatable.items())
    )
    return rules


def model_route_rules(settings: Settings, namespace: str) -> list[dict[str, Any]]:
    """What the policy sync needs in `namespace` for the model route (shared/modelroute.py):
    list the models (in MAAS_NAMESPACE), and read, create, replace or delete the route (beside
    the policies) and its ReferenceGrant (beside the models' Services, when elsewhere) by name.
    The route is deleted when no model can be routed, so delete is granted too."""
    rules: list[dict[str, Any]] = []
    if namespace == settings.namespace:
        rules.append({"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices", "llminferenceservices"],
                      "verbs": ["list"]})
    here = [obj for obj in managed_route_objects(settings) if obj["metadata"]["namespace"] == namespace]
    for obj in here:
        group = obj["apiVersion"].split("/")[0]
        rules.append({"apiGroups": [group], "resources": [_plural(obj["kind"])],
                      "resourceNames": [obj["metadata"]["name"]], "verbs": ["get", "update", "delete"]})
    for obj in here:
        rules.append({"apiGroups": [obj["apiVersion"].split("/")[0]], "resources": [_plural(obj["kind"])],
                      "verbs": ["create"]})
    return rules


def function_rbac(settings: Settings) -> list[dict[str, Any]]:
    """One ServiceAccount per kind of function, each with a least-privilege Role: explicit verbs,
    no wildcards, `resourceNames` only on verbs that name an object.

    tests/test_kube_rbac.py runs every function through an API double enforcing these Roles: a
    grant is either used there or listed there with the reason it stays. No watch: the functions
    read per request; the ApiServerSource has its own account.
    """
    documents: list[dict[str, Any]] = []
    for account, rules in ACCOUNT_RULES.items():
        name = account_name(account)
        service_account: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": settings.namespace, "labels": dict(PART_OF)},
        }
        if not _account_uses_the_api(account):
            service_account["automountServiceAccountToken"] = False
        documents.append(service_account)
        placed: dict[str, list[dict[str, Any]]] = {}
        for rule in rules:
            placed.setdefault(rule_namespace(rule, settings), []).append(rule)
        if account in POLICY_WRITERS:
            # The policy sync also applies the model route: its rules go where its objects are.
            placed.setdefault(settings.namespace, []).extend(model_route_rules(settings, settings.namespace))
        roles = [(name, namespace, placed_rules) for namespace, placed_rules in placed.items()]
        if account in POLICY_WRITERS:
            policies = policy_rules(settings)
            if settings.policy_namespace != settings.namespace:
                policies += model_route_rules(settings, settings.policy_namespace)
            roles.append((f"{name}-policies", settings.policy_namespace, policies))
        for role_name, namespace, role_rules in roles:
            if not role_rules:
                continue
            metadata = {"name": role_name, "namespace": namespace, "labels": dict(PART_OF)}
            documents.append(
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": metadata, "rules": role_rules}
            )
            documents.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": dict(metadata),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": settings.namespace}],
                }
            )
    return documents


# Cluster-scoped, so named after the namespace: two installs never rebind each other's accounts.
REVIEWER_ROLE = f"{SERVICE_ACCOUNT}-reviews"
# The role a cluster admin binds to make people platform admins (docs/DEPLOY.md); the same rules
# for every install, so one name: a ClusterRoleBinding to it grants every install, a RoleBinding
# in one namespace that install alone.
PLATFORM_ADMIN_ROLE = "maas-platform-admin"


def reviewer_role_name(settings: Settings) -> str:
    return f"{REVIEWER_ROLE}-{settings.namespace}"


def reviewer_accounts() -> list[str]:
    """The accounts of the functions that check admin credentials: they may be handed a
    Kubernetes user token (shared.kubeidentity) and must review it."""
    checking = {FUNCTION_ACCOUNTS[route.target] for route in ROUTES if route.auth != "none"}
    # The console signs in with the admin key or the identity provider only: no Kubernetes token.
    return [account for account in ACCOUNT_RULES if account in checking]


def identity_rbac(settings: Settings) -> list[dict[str, Any]]:
    """What signing in with cluster identities needs: `create` on TokenReviews and
    SubjectAccessReviews for the admin-checking accounts (both reviews are cluster-scoped, so a
    ClusterRole and ClusterRoleBinding: a Role cannot grant them), and the platform-admin
    ClusterRole, bound to nobody: granting it is the cluster admin's decision."""
    name = reviewer_role_name(settings)
    labels = dict(PART_OF)
    reviewer = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": [dict(rule) for rule in REVIEWER_RULES],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": account_name(account), "namespace": settings.namespace}
            for account in reviewer_accounts()
        ],
    }
    platform_admin = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": PLATFORM_ADMIN_ROLE, "labels": dict(labels)},
        "rules": [{"apiGroups": [PLATFORM_ADMIN.group], "resources": [PLATFORM_ADMIN.resource],
                   "verbs": [PLATFORM_ADMIN.verb]}],
    }
    return [reviewer, binding, platform_admin]


def rule_namespace(rule: dict[str, Any], settings: Settings) -> str:
    """Where an ACCOUNT_RULES rule is granted: the store's core objects (Secrets, ConfigMaps) in
    the keys namespace, anything else (the models) in MAAS_NAMESPACE."""
    return settings.store_namespace if rule["apiGroups"] == [""] else settings.namespace


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


# ------------------------------------------------------------------ inputs


def load_yaml_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    documents = []
    for path in paths:
        with path.open() as stream:
            documents.extend(doc for doc in yaml.safe_load_all(stream) if doc)
    return documents


def static_files(config_dir: Path = CONFIG_DIR) -> list[Path]:
    """The hand-written objects, in the order config/kustomization.yaml lists them."""
    kustomization = yaml.safe_load((config_dir / "kustomization.yaml").read_text())
    return [config_dir / name for name in kustomization.get("resources", [])]


def load_example_teams(examples_dir: Path = CONFIG_DIR / "examples") -> list[Team]:
    """Example teams, written as the admin API's create-team bodies (and validated as such)."""
    teams = []
    for document in load_yaml_documents(sorted(examples_dir.glob("*.yaml"))):
        for body in document.get("teams", []):
            request = TeamCreate.model_validate(body)
            teams.append(team_from_request(request, datetime.fromtimestamp(0, tz=timezone.utc)))
    return teams


def load_func_yaml(path: Path = FUNC_YAML) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------ the whole set


def render(
    settings: Settings,
    *,
    image: str | None = None,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    limitador_url: str = DEFAULT_LIMITADOR_URL,
    config_dir: Path = CONFIG_DIR,
    skip_admin_key: bool = False,
) -> list[dict[str, Any]]:
    func = load_func_yaml()
    image = image or func["image"]
    static = [_placed(doc, settings) for doc in load_yaml_documents(static_files(config_dir))]
    if skip_admin_key:
        static = [doc for doc in static if not _is_admin_key_secret(doc)]
    routes = http_routes(settings)
    return [
        *function_rbac(settings),
        *identity_rbac(settings),
        config_map(settings, prometheus_url, limitador_url),
        *static,
        *(knative_service(target, settings, func, image) for target in function_targets()),
        *routes,
        *reference_grants(settings),
        *(admin_route_auth(route) for route in routes),
    ]


def render_policies(settings: Settings, *, teams: Sequence[Team] = ()) -> list[dict[str, Any]]:
    """The starting policies: what the functions' policy sync writes for these teams."""
    return generate_policies(teams, settings)


def _is_admin_key_secret(document: dict[str, Any]) -> bool:
    return document.get("kind") == "Secret" and document["metadata"]["name"] == ADMIN_KEY_SECRET


# The team-Secret ApiServerSource and its account watch the store's Secrets: they live in the keys
# namespace (a Role grants only its own namespace), and send to the Broker in MAAS_NAMESPACE.
TEAM_SOURCE = "maas-team-secrets"
TEAM_SOURCE_ACCOUNT = "maas-events"


def _placed(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A static document in its namespace: the team source and its RBAC beside the keys, the rest
    in MAAS_NAMESPACE. A sink in another namespace names it (a KReference defaults to its own)."""
    name = document.get("metadata", {}).get("name")
    kind = document.get("kind")
    beside_the_keys = (kind, name) == ("ApiServerSource", TEAM_SOURCE) or (
        kind in ("ServiceAccount", "Role", "RoleBinding") and name == TEAM_SOURCE_ACCOUNT
    )
    namespace = settings.store_namespace if beside_the_keys else settings.namespace
    placed = _in_namespace(document, namespace)
    ref = (placed.get("spec", {}).get("sink") or {}).get("ref")
    if ref is not None and namespace != settings.namespace:
        ref.setdefault("namespace", settings.namespace)
    return placed


def _in_namespace(document: dict[str, Any], namespace: str) -> dict[str, Any]:
    """What kustomize's `namespace:` does for our static files."""
    if document.get("kind") in CLUSTER_SCOPED_KINDS:
        return document
    document.setdefault("metadata", {}).setdefault("namespace", namespace)
    for subject in document.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject.setdefault("namespace", namespace)
    return document


def dump(documents: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False, width=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.manifests", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dist/manifests.yaml"),
                        help="the deployment; apply it (again) with kubectl apply --server-side")
    parser.add_argument("--policies-out", type=Path, default=Path("dist/policies.yaml"),
                        help="the starting policies; create them once (kubectl create), the functions keep them")
    parser.add_argument("--example-teams", action="store_true",
                        help="starting policies for config/examples/teams.yaml instead of no teams, for review")
    parser.add_argument("--image", help="image of every function (default: func.yaml's image)")
    parser.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS_URL, help="in-cluster Prometheus")
    parser.add_argument("--limitador-url", default=DEFAULT_LIMITADOR_URL,
                        help="Limitador's HTTP API, where explain reads a cluster's counters")
    parser.add_argument(
        "--skip-admin-key",
        action="store_true",
        help="leave out the placeholder admin key Secret, so that applying keeps the real one",
    )
    args = parser.parse_args(argv)

    settings = Settings()
    documents = render(
        settings, image=args.image, prometheus_url=args.prometheus_url, limitador_url=args.limitador_url,
        skip_admin_key=args.skip_admin_key
    )
    policies = render_policies(settings, teams=load_example_teams() if args.example_teams else ())
    for path, written in ((args.out, documents), (args.policies_out, policies)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(written))
        counts: dict[str, int] = {}
        for document in written:
            counts[document["kind"]] = counts.get(document["kind"], 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        print(f"wrote {len(written)} objects to {path} (namespace {settings.namespace}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
