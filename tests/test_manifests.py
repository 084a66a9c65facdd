"""`make manifests`: the rendered set is strictly valid, covers every function, and its HTTPRoute
agrees with the routing table (evaluated on concrete paths, not compared as text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.modelroute import managed_route_objects
from shared.policies import generate_policies
from shared.routes import CONSOLE, EVENT_TARGETS, HTTP_ROUTES, PAGES, ROUTES, Route
from shared.settings import Settings
from tests import crds
from tools import manifests

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_VALUES = {"team_id": "team-a1", "user_id": "User.name_1-x", "secret_name": "apikey-u-team-a1-0a1b2c3d",
                 "name": "console.css"}


def run_manifests(out_dir: Path, *args: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the real command, as `make manifests` does, with no MAAS_* settings around:
    (the deployment, the starting policies)."""
    out, policies = out_dir / "manifests.yaml", out_dir / "policies.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "NAMESPACE"}
    result = subprocess.run(
        [sys.executable, "-m", "tools.manifests", "--out", str(out), "--policies-out", str(policies), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(out.read_text()))
    starting = list(yaml.safe_load_all(policies.read_text()))
    assert f"wrote {len(documents)} objects to {out}" in result.stdout
    assert f"wrote {len(starting)} objects to {policies}" in result.stdout
    return documents, starting


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return run_manifests(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def rendered(both: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return both[0]


@pytest.fixture(scope="module")
def starting_policies(both: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return both[1]


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def named(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(documents, kind)}


def sample_path(route: Route) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: SAMPLE_VALUES[m.group(1)], route.path)


def rule_matches(match: dict[str, Any], method: str, path: str) -> bool:
    if match.get("method", method) != method:
        return False
    spec = match.get("path", {"type": "PathPrefix", "value": "/"})
    if spec["type"] == "Exact":
        return path == spec["value"]
    if spec["type"] == "RegularExpression":
        return re.fullmatch(spec["value"], path) is not None
    raise AssertionError(f"unexpected path match type {spec['type']}")


def matching_backends(documents: list[dict[str, Any]], method: str, path: str) -> list[str]:
    found = []
    for route in of_kind(documents, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            if any(rule_matches(m, method, path) for m in rule["matches"]):
                found.extend(ref["name"] for ref in rule["backendRefs"])
    return found


# ------------------------------------------------------------------ validity


def test_every_document_is_strictly_valid(rendered: list[dict[str, Any]]) -> None:
    problems = {
        f"{d.get('kind')}/{d.get('metadata', {}).get('name')}": crds.validation_errors(d) for d in rendered
    }
    assert {name: errors for name, errors in problems.items() if errors} == {}


# The cluster-scoped documents: signing in with cluster identities (tools.manifests.identity_rbac).
CLUSTER_SCOPED = {("ClusterRole", "maas-key-manager-reviews-llm"), ("ClusterRoleBinding", "maas-key-manager-reviews-llm"),
                  ("ClusterRole", "maas-platform-admin")}


def test_names_are_unique_per_kind_and_namespaced(rendered: list[dict[str, Any]]) -> None:
    seen = [(d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in rendered]
    assert len(seen) == len(set(seen))
    assert {(kind, name) for _, kind, namespace, name in seen if namespace is None} == CLUSTER_SCOPED
    assert all(namespace == "llm" for _, kind, namespace, _ in seen if kind not in manifests.CLUSTER_SCOPED_KINDS)


KEYS_LAYOUT = Settings(keys_namespace="llm-keys")  # MAAS_KEYS_NAMESPACE: the store apart from the functions


def test_every_document_is_strictly_valid_with_a_keys_namespace() -> None:
    documents = manifests.render(KEYS_LAYOUT)
    problems = {f"{d['kind']}/{d['metadata']['name']}": crds.validation_errors(d) for d in documents}
    assert {name: errors for name, errors in problems.items() if errors} == {}
    seen = [(d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in documents]
    assert len(seen) == len(set(seen))
    # Only the store's side moves: the team source, its account, and the functions' store Roles.
    moved = {(kind, name) for _, kind, namespace, name in seen if namespace == "llm-keys"}
    assert moved == {("ApiServerSource", "maas-team-secrets"), ("ServiceAccount", "maas-events"),
                     ("Role", "maas-events"), ("RoleBinding", "maas-events")} | {
        (kind, manifests.account_name(account)) for account in ("reader", "models", "writer", "cleanup", "console")
        for kind in ("Role", "RoleBinding")}
    assert {namespace for _, _, namespace, _ in seen} == {"llm", "llm-keys", None}
    assert {(kind, name) for _, kind, namespace, name in seen if namespace is None} == CLUSTER_SCOPED
    (config,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert config["metadata"]["namespace"] == "llm" and config["data"]["MAAS_KEYS_NAMESPACE"] == "llm-keys"


def test_without_a_keys_namespace_the_store_is_in_maas_namespace(rendered: list[dict[str, Any]]) -> None:
    (config,) = of_kind(rendered, "ConfigMap")
    assert config["data"]["MAAS_KEYS_NAMESPACE"] == "llm"
    assert Settings.model_validate(config["data"]).store_namespace == Settings().namespace


def test_rendering_is_deterministic() -> None:
    first = manifests.dump(manifests.render(Settings()))
    second = manifests.dump(manifests.render(Settings()))
    assert first == second


# ------------------------------------------------------------------ functions


def test_every_target_has_a_scale_to_zero_knative_service(rendered: list[dict[str, Any]]) -> None:
    services = named(rendered, "Service")
    targets = {route.target for route in HTTP_ROUTES} | set(EVENT_TARGETS)
    images = set()

    assert set(services) == {manifests.service_name(t) for t in targets}
    for target in targets:
        service = services[manifests.service_name(target)]
        template = service["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        images.add(container["image"])

        assert env["FUNCTION_TARGET"]["value"] == target
        assert env["MAAS_STORE"]["value"] == "kubernetes"
        assert env["MAAS_NAMESPACE"] == {"name": "MAAS_NAMESPACE", "value": service["metadata"]["namespace"]}
        assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
        assert template["spec"]["serviceAccountName"] == manifests.function_account(target)
        assert template["spec"]["serviceAccountName"] in named(rendered, "ServiceAccount")
        assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
        assert container["envFrom"] == [{"configMapRef": {"name": manifests.CONFIG_MAP}}]
    assert images == {yaml.safe_load((REPO_ROOT / "func.yaml").read_text())["image"]}


def test_admin_key_reaches_only_the_functions_that_check_it(rendered: list[dict[str, Any]]) -> None:
    services = named(rendered, "Service")
    secret = named(rendered, "Secret")[manifests.ADMIN_KEY_SECRET]
    assert "ADMIN_KEY" in secret["stringData"]
    for route in HTTP_ROUTES:
        container = services[manifests.service_name(route.target)]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        if route.auth == "none":
            assert "ADMIN_KEY" not in env, route.target
        else:
            assert env["ADMIN_KEY"]["valueFrom"] == {
                "secretKeyRef": {"name": manifests.ADMIN_KEY_SECRET, "key": "ADMIN_KEY"}
            }


def test_event_targets_run_as_cloudevent_functions(rendered: list[dict[str, Any]]) -> None:
    services = named(rendered, "Service")
    for target in EVENT_TARGETS:
        container = services[manifests.service_name(target)]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FUNCTION_SIGNATURE_TYPE"] == "cloudevent"
        assert "ADMIN_KEY" not in env


def test_settings_config_map_matches_the_policies(rendered: list[dict[str, Any]],
                                                  starting_policies: list[dict[str, Any]]) -> None:
    data = named(rendered, "ConfigMap")[manifests.CONFIG_MAP]["data"]
    auth = named(starting_policies, "AuthPolicy")["maas-api-keys"]
    assert data["MAAS_GATEWAY_NAME"] == auth["spec"]["targetRef"]["name"]
    assert data["MAAS_GATEWAY_NAMESPACE"] == auth["metadata"]["namespace"]
    selector = auth["spec"]["rules"]["authentication"]["api-key"]["apiKey"]["selector"]["matchLabels"]
    assert selector["app"] == data["MAAS_KEY_SELECTOR"]
    assert data["MAAS_USAGE"] == "prometheus"


@pytest.mark.parametrize("settings", [
    Settings(),
    Settings(namespace="maas-system", gateway_namespace="gateways", models_hostname="models.example.com",
             route_rule_names=False),
])
def test_the_functions_render_the_model_route_with_the_deployments_settings(settings: Settings) -> None:
    """The functions build maas-models at run time from maas-config: it must carry every setting
    the route depends on."""
    from shared.catalog.kserve import ServedModel
    from shared.modelroute import model_route

    config = named(manifests.render(settings), "ConfigMap")[manifests.CONFIG_MAP]["data"]
    deployed = Settings.model_validate({**config, "MAAS_NAMESPACE": settings.namespace})
    model = ServedModel(kind="InferenceService", name="m", namespace=settings.namespace, ready=True,
                        urls=(f"http://m-predictor.{settings.namespace}.svc.cluster.local",))
    assert model_route([model], deployed).objects == model_route([model], settings).objects


# ------------------------------------------------------------------ routing


def test_every_route_is_matched_by_exactly_its_function(rendered: list[dict[str, Any]]) -> None:
    for route in HTTP_ROUTES:
        path = sample_path(route)
        assert matching_backends(rendered, route.method, path) == [manifests.service_name(route.target)], (
            route.method,
            path,
        )


def test_the_httproute_matches_nothing_else(rendered: list[dict[str, Any]]) -> None:
    matches = [
        match
        for route in of_kind(rendered, "HTTPRoute")
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
    ]
    # One match per route or page, each for one of the tables: no extra method or path is let through.
    assert len(matches) == len(HTTP_ROUTES)
    for match in matches:
        owners = [r for r in HTTP_ROUTES if rule_matches(match, r.method, sample_path(r))]
        assert len(owners) == 1, match

    known = {(r.method, sample_path(r)) for r in HTTP_ROUTES}
    strangers = [
        ("PUT", "/teams"),
        ("GET", "/teams/"),
        ("GET", "/teams/a/b"),
        ("GET", "/teams/a/keys/b"),
        ("POST", "/teams/a"),
        ("GET", "/keys/x"),
        ("POST", "/"),
        ("GET", "/index.html"),
        ("GET", "/console"),
        ("GET", "/console/"),
        ("PUT", "/console/keys"),
        ("GET", "/console/teams/a/b/c"),
        ("GET", "/console/static/a/b"),
        ("GET", "/teamsx"),
        ("GET", "/health/"),
        ("POST", "/v1/chat/completions"),
    ]
    for method, path in strangers:
        assert (method, path) not in known
        assert matching_backends(rendered, method, path) == [], (method, path)


def test_the_console_is_one_rule_on_one_single_pod_service(rendered: list[dict[str, Any]]) -> None:
    """Its pages share a rule (rule names are unique, one per target); its sessions live in its
    process, so it never scales past one pod, and it checks the admin key, so it gets it."""
    rules = [rule for route in of_kind(rendered, "HTTPRoute") for rule in route["spec"]["rules"]
             if rule["backendRefs"][0]["name"] == manifests.service_name(CONSOLE)]
    assert len(rules) == 1 and rules[0]["name"] == "console" and len(rules[0]["matches"]) == len(PAGES)
    service = named(rendered, "Service")[manifests.service_name(CONSOLE)]
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] == "1"
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert "ADMIN_KEY" in env and template["spec"]["serviceAccountName"] == manifests.function_account(CONSOLE)
    names = [rule["name"] for route in of_kind(rendered, "HTTPRoute") for rule in route["spec"]["rules"]]
    assert len(names) == len(set(names))


def test_backends_are_the_rendered_services(rendered: list[dict[str, Any]]) -> None:
    services = named(rendered, "Service")
    for route in of_kind(rendered, "HTTPRoute"):
        assert route["spec"]["parentRefs"][0]["kind"] == "Gateway"
        for rule in route["spec"]["rules"]:
            (backend,) = rule["backendRefs"]
            assert backend["name"] in services
            assert backend["kind"] == "Service" and backend["group"] == "" and "port" in backend
            (rewrite,) = rule["filters"]
            assert rewrite["urlRewrite"]["hostname"] == f"{backend['name']}.llm.svc.cluster.local"


def test_the_admin_api_is_exempt_from_the_api_key_policy(rendered: list[dict[str, Any]]) -> None:
    policies = named(rendered, "AuthPolicy")
    for route in of_kind(rendered, "HTTPRoute"):
        override = policies[route["metadata"]["name"]]
        assert override["spec"]["targetRef"] == {
            "group": "gateway.networking.k8s.io",
            "kind": "HTTPRoute",
            "name": route["metadata"]["name"],
        }
        assert override["spec"]["rules"]["authentication"] == {"admin-api": {"anonymous": {}}}


def test_many_routes_spill_into_further_valid_httproutes() -> None:
    routes = tuple(Route("GET", f"/r{i}/{{team_id}}", f"target_{i}", "synthetic", access="platform") for i in range(35))
    settings = Settings(api_hostname="keys.example.com")
    documents = manifests.http_routes(settings, routes, pages=())

    assert [len(d["spec"]["rules"]) for d in documents] == [16, 16, 3]
    assert [d["metadata"]["name"] for d in documents] == [
        "maas-key-manager",
        "maas-key-manager-2",
        "maas-key-manager-3",
    ]
    for document in documents:
        assert document["spec"]["hostnames"] == ["keys.example.com"]
        crds.validate(document)
        crds.validate(manifests.admin_route_auth(document))
    for i, route in enumerate(routes):
        assert matching_backends(documents, "GET", f"/r{i}/x") == [f"maas-target-{i}"]


@pytest.mark.parametrize(
    "template, expected",
    [
        ("/health", {"type": "Exact", "value": "/health"}),
        ("/teams/{team_id}", {"type": "RegularExpression", "value": "^/teams/[^/]+$"}),
        ("/openapi.json/{x}", {"type": "RegularExpression", "value": r"^/openapi\.json/[^/]+$"}),
    ],
)
def test_path_templates_become_matches(template: str, expected: dict[str, str]) -> None:
    assert manifests.path_match(template) == expected


# ------------------------------------------------------------------ RBAC and eventing


def _rules(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for role in of_kind(documents, "Role") + of_kind(documents, "ClusterRole"):
        for rule in role["rules"]:
            yield role["metadata"]["name"], rule


def test_rbac_has_no_wildcards_and_cluster_scope_only_for_the_reviews(rendered: list[dict[str, Any]]) -> None:
    """Cluster-wide: `create` on the two reviews (cluster-scoped, so a Role cannot grant them),
    bound to the accounts of the functions that check admin credentials and no other; and the
    platform-admin ClusterRole, bound to nobody (a cluster admin binds it, docs/DEPLOY.md)."""
    roles = named(rendered, "ClusterRole")
    assert set(roles) == {"maas-key-manager-reviews-llm", "maas-platform-admin"}
    assert roles["maas-key-manager-reviews-llm"]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    assert roles["maas-platform-admin"]["rules"] == [
        {"apiGroups": ["maas.opendatahub.io"], "resources": ["teams"], "verbs": ["admin"]}]
    (binding,) = of_kind(rendered, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "maas-key-manager-reviews-llm"}
    checking = {manifests.function_account(route.target) for route in ROUTES if route.auth != "none"}
    assert checking == {manifests.account_name(a) for a in ("reader", "models", "writer")}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "llm"} for name in
                                   [manifests.account_name(a) for a in ("reader", "models", "writer")]]
    assert not any(b["roleRef"]["name"] == "maas-platform-admin" for b in of_kind(rendered, "RoleBinding"))
    for name, rule in _rules(rendered):
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in value for value in rule.get(field, [])), (name, field, rule)
        assert rule["verbs"], name


def _account_grants(documents: list[dict[str, Any]], account: str) -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs, over the Roles bound to one ServiceAccount."""
    roles = named(documents, "Role")
    grants: dict[tuple[str, str], set[str]] = {}
    for binding in of_kind(documents, "RoleBinding"):
        if {"kind": "ServiceAccount", "name": account, "namespace": "llm"} not in binding["subjects"]:
            continue
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_rbac_grants_each_function_what_it_needs(rendered: list[dict[str, Any]]) -> None:
    assert set(manifests.FUNCTION_ACCOUNTS) == set(manifests.function_targets())
    grants = {account: _account_grants(rendered, manifests.account_name(account)) for account in manifests.ACCOUNT_RULES}
    assert grants["none"] == {}
    assert grants["health"] == {}  # /version needs no grant (Store.ping)
    assert grants["reader"] == {("", "secrets"): {"get", "list"}, ("", "configmaps"): {"list", "create"}}
    models = ("serving.kserve.io", "inferenceservices"), ("serving.kserve.io", "llminferenceservices")
    assert grants["models"] == {("", "secrets"): {"list"}, ("", "configmaps"): {"create"}} | {m: {"list"} for m in models}
    writes = {"get", "list", "create", "patch", "delete"}
    for account in ("writer", "cleanup", "console"):
        for policy in ("authpolicies", "tokenratelimitpolicies", "ratelimitpolicies"):
            assert {"get", "create", "update"} <= grants[account][("kuadrant.io", policy)]
        assert {"get", "create", "update"} <= grants[account][("extensions.kuadrant.io", "telemetrypolicies")]
        # Only the policies that teams may not produce are ever deleted: the token limits with
        # zero teams, the request limits with no request rate (shared/policies.py).
        for policy in ("tokenratelimitpolicies", "ratelimitpolicies"):
            assert "delete" in grants[account][("kuadrant.io", policy)]
        assert "delete" not in grants[account][("kuadrant.io", "authpolicies")]
    assert grants["writer"][("", "secrets")] == writes | {"deletecollection"}  # a deleted team's memberships
    assert grants["writer"][("", "configmaps")] == {"create"}
    # The console acts through the writers' and readers' targets, and lists models for its forms.
    assert grants["console"][("", "secrets")] == writes | {"deletecollection"}
    assert grants["console"][("", "configmaps")] == {"create"}
    assert grants["cleanup"][("", "secrets")] == writes - {"create"}
    assert grants["cleanup"][("", "configmaps")] == {"list", "delete"}
    # The models account lists models, and so do the policy writers (the maas-models route is
    # generated from them); nobody reads one by one or writes them.
    for account, granted in grants.items():
        kserve = {resource: verbs for (group, resource), verbs in granted.items() if group == "serving.kserve.io"}
        expected = {m[1]: {"list"} for m in models} if account in ("models", *manifests.POLICY_WRITERS) else {}
        assert kserve == expected, account
        # The model route (and, with the Gateway elsewhere, its ReferenceGrant) by name, created apart.
        route = granted.get(("gateway.networking.k8s.io", "httproutes"), set())
        assert route == ({"get", "create", "update", "delete"} if account in manifests.POLICY_WRITERS else set()), account
    for role in of_kind(rendered, "Role"):
        for rule in role["rules"]:
            if "httproutes" in rule["resources"]:
                assert rule.get("resourceNames") == ["maas-models"] or rule["verbs"] == ["create"], rule

    bindings = named(rendered, "RoleBinding")
    accounts = set(named(rendered, "ServiceAccount"))
    roles = set(named(rendered, "Role"))
    for binding in bindings.values():
        assert binding["roleRef"]["name"] in roles
        assert {s["name"] for s in binding["subjects"]} <= accounts


def test_functions_without_api_access_mount_no_token(rendered: list[dict[str, Any]]) -> None:
    services = named(rendered, "Service")
    accounts = named(rendered, "ServiceAccount")
    openapi = services[manifests.service_name("openapi")]["spec"]["template"]["spec"]
    assert openapi["automountServiceAccountToken"] is False
    assert accounts[openapi["serviceAccountName"]]["automountServiceAccountToken"] is False
    for target in manifests.function_targets():
        spec = services[manifests.service_name(target)]["spec"]["template"]["spec"]
        assert ("automountServiceAccountToken" in spec) == (target == "openapi"), target


def test_cleanup_plumbing_reaches_the_cleanup_function(rendered: list[dict[str, Any]]) -> None:
    brokers = set(named(rendered, "Broker"))
    services = named(rendered, "Service")
    triggers = named(rendered, "Trigger").values()

    routed = {tuple(sorted(t["spec"]["filter"]["attributes"].items())): t["spec"]["subscriber"]["ref"] for t in triggers}
    assert set(routed) == {(("type", "dev.knative.apiserver.resource.delete"),), (("type", "dev.knative.sources.ping"),),
                           (("maasevent", "models-changed"),)}
    for ref in routed.values():
        assert ref["kind"] == "Service" and ref["apiVersion"] == "serving.knative.dev/v1"
        assert services[ref["name"]]["metadata"]["labels"]["maas/function"] in EVENT_TARGETS
    assert {t["spec"]["broker"] for t in triggers} <= brokers

    sources = named(rendered, "ApiServerSource")
    source, models = sources["maas-team-secrets"], sources["maas-models"]
    assert source["spec"]["mode"] == "Resource"  # emits dev.knative.apiserver.resource.*
    assert source["spec"]["resources"] == [
        {"apiVersion": "v1", "kind": "Secret", "selector": {"matchLabels": {"maas/resource-type": "team-config"}}}
    ]
    # Reference mode: dev.knative.apiserver.ref.*, which the team Trigger (resource.delete) never takes.
    assert models["spec"]["mode"] == "Reference"
    assert {r["kind"] for r in models["spec"]["resources"]} == {"InferenceService", "LLMInferenceService"}
    assert models["spec"]["ceOverrides"]["extensions"] == {"maasevent": "models-changed"}
    assert source["spec"]["serviceAccountName"] in named(rendered, "ServiceAccount")
    assert models["spec"]["serviceAccountName"] in named(rendered, "ServiceAccount")
    assert source["spec"]["serviceAccountName"] != models["spec"]["serviceAccountName"]
    for sender in (source, models):
        assert sender["spec"]["sink"]["ref"]["kind"] == "Broker"
        assert sender["spec"]["sink"]["ref"]["name"] in brokers
    (ping,) = of_kind(rendered, "PingSource")
    for sender in (source, ping):
        assert sender["spec"]["sink"]["ref"]["kind"] == "Broker"
        assert sender["spec"]["sink"]["ref"]["name"] in brokers


def test_the_starting_policies_are_what_the_sync_writes_for_no_teams(starting_policies: list[dict[str, Any]]) -> None:
    # Exactly what shared.policies makes of an empty store (its own tests say what that is):
    # the API-key check is in place before any team exists; no teams, no limits.
    assert starting_policies == generate_policies([], Settings())
    assert [p["kind"] for p in starting_policies] == ["AuthPolicy", "TelemetryPolicy"]


def test_example_teams_render_their_policies_for_review(tmp_path: Path) -> None:
    examples = manifests.load_example_teams()
    assert examples, "config/examples/ should hold a few teams"
    _, policies = run_manifests(tmp_path, "--example-teams")
    assert policies == generate_policies(examples, Settings())
    assert of_kind(policies, "TokenRateLimitPolicy")


def test_the_deployment_holds_nothing_the_functions_write(rendered: list[dict[str, Any]]) -> None:
    """Applying dist/manifests.yaml again must not undo what the policy sync wrote since."""
    written = {(ref.kind, ref.name) for ref in manifests.managed_policies(Settings())}
    written |= {(obj["kind"], obj["metadata"]["name"]) for obj in managed_route_objects(Settings())}
    assert not written & {(d["kind"], d["metadata"]["name"]) for d in rendered}


# ------------------------------------------------------------------ image and func.yaml


def test_func_yaml_is_valid() -> None:
    crds.validate_func_yaml(yaml.safe_load((REPO_ROOT / "func.yaml").read_text()))


def test_containerfile_runs_the_target_from_main() -> None:
    text = (REPO_ROOT / "Containerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install -r requirements.txt" in text
    (cmd,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    assert '--target="$FUNCTION_TARGET"' in cmd and "--source=main.py" in cmd
    assert re.search(r"^USER [1-9][0-9]*$", text, re.M), "a numeric non-root user for runAsNonRoot"


def test_main_exports_every_deployed_target() -> None:
    import main

    missing = [t for t in manifests.function_targets() if not callable(getattr(main, t, None))]
    assert missing == []


def test_kustomization_lists_every_static_file() -> None:
    listed = {path.resolve() for path in manifests.static_files()}
    assert listed == {path.resolve() for path in (REPO_ROOT / "config" / "base").glob("*.yaml")}


def test_the_admin_key_placeholder_can_be_left_out() -> None:
    documents = manifests.render(Settings(), skip_admin_key=True)
    assert manifests.ADMIN_KEY_SECRET not in named(documents, "Secret")
    assert named(documents, "Broker"), "only the admin key Secret is left out"


def test_the_yaml_has_no_anchors(tmp_path: Path) -> None:
    """A dict shared between two places of an object (as the two API-key entries once shared
    their lookup) comes out as a YAML anchor and alias: valid YAML, but not what anyone reviewing
    the file, or a tool that re-serialises it, expects to see."""
    run_manifests(tmp_path, "--example-teams")
    for name in ("manifests.yaml", "policies.yaml"):
        text = (tmp_path / name).read_text()
        assert "&id" not in text and "*id" not in text, name


def test_identity_provider_settings_reach_every_function_through_the_config_map() -> None:
    settings = Settings(oidc_audience="maas", oidc_issuer="https://idp.example.com/realms/acme",
                        oidc_user_claim="preferred_username", admin_groups_list="platform-team",
                        team_group_pattern="maas-{team_id}")
    data = manifests.config_map(settings, "http://prometheus:9090")["data"]
    assert data["MAAS_OIDC_ISSUER"] == "https://idp.example.com/realms/acme"
    assert data["MAAS_OIDC_AUDIENCE"] == "maas" and data["MAAS_OIDC_USER_CLAIM"] == "preferred_username"
    assert data["MAAS_ADMIN_GROUPS"] == "platform-team" and data["MAAS_TEAM_GROUP_PATTERN"] == "maas-{team_id}"
    # Read back as the functions read it, the same sign-in.
    again = Settings(**{name: value for name, value in data.items() if name.startswith("MAAS_OIDC_")},
                     MAAS_ADMIN_GROUPS=data["MAAS_ADMIN_GROUPS"])
    assert (again.oidc_issuer, again.oidc_audience, again.admin_groups) == (
        settings.oidc_issuer, "maas", ("platform-team",))
    plain = manifests.config_map(Settings(), "http://prometheus:9090")["data"]
    assert not [name for name in plain if "OIDC" in name or "GROUP" in name]
