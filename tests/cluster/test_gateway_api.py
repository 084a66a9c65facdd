"""Gateway API rules for the key manager's HTTPRoutes, from tests/cluster/SOURCES.md section 11
(kubernetes-sigs/gateway-api, read at tags v1.1.0, v1.2.0, v1.3.0 and v1.4.0):

- `apis/v1/httproute_types.go` at v1.4.0, `HTTPRouteSpec.Rules`: `MaxItems=16`, and the CEL rule
  "the total number of matches across all rules in a route must be less than 128" (written as
  `<= 128`); `HTTPRouteSpec.Hostnames` `MaxItems=16`; `CommonRouteSpec.ParentRefs` `MaxItems=32`;
  `HTTPRouteRule.Matches` `MaxItems=64`.
- `HTTPRouteRule.Name` (`*SectionName`, `apis/v1/shared_types.go`: lowercase DNS-subdomain pattern,
  1-253 characters) does not exist at v1.1.0, is `<gateway:experimental>` at v1.2.0 and v1.3.0,
  and is Standard from v1.4.0 (`CHANGELOG/1.4-CHANGELOG.md`: "In the Standard channel, we've now
  added a Name field to HTTPRouteRule"). "Rule name must be unique within the route" is still an
  experimental-only CEL rule at v1.4.0; we hold ourselves to it on every channel.
- So with `MAAS_ROUTE_RULE_NAMES=false` a rule may use only what the v1.1.0 Standard channel
  knows: `matches`, `filters`, `backendRefs` (`timeouts` was experimental there).
- `apis/v1/object_reference_types.go` (`BackendObjectReference`): ExternalName backends are
  implementation-specific (Istio follows them, Envoy Gateway does not), hence the configurable
  backend; a backend in another namespace needs a ReferenceGrant there
  (`apis/v1beta1/referencegrant_types.go`: `spec.from[]{group, kind, namespace}`,
  `spec.to[]{group, kind, name?}`).

Every HTTPRoute `make manifests` renders is checked under each setting that changes them, and
each check is shown to fail on a route broken its way.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.routes import HTTP_ROUTES, PAGES, ROUTES, Route
from shared.settings import Settings
from tests import crds
from tools import manifests

JSON = dict[str, Any]

MAX_RULES = 16
MAX_MATCHES_PER_RULE = 64
MAX_MATCHES_PER_ROUTE = 128
MAX_HOSTNAMES = 16
MAX_PARENT_REFS = 32
# Standard-channel HTTPRouteRule fields: at v1.1.0, and what v1.4.0 adds (`name`).
RULE_FIELDS_V1_1 = {"matches", "filters", "backendRefs"}
RULE_FIELDS_V1_4 = RULE_FIELDS_V1_1 | {"name", "timeouts"}
# Our own names are DNS labels (a SectionName may be a subdomain; a label also fits a policy's
# `sectionName` and any label value).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

RENDERINGS = {
    "default": Settings(),
    "no rule names (Gateway API < v1.4)": Settings(route_rule_names=False),
    "Knative local gateway backend (Envoy Gateway)": Settings(
        route_backend_service="knative-local-gateway", route_backend_namespace="knative-serving"
    ),
    "backend in the same namespace, non-default everything": Settings(
        namespace="maas-system",
        gateway_namespace="gateway-system",
        api_hostname="keys.example.com",
        route_backend_service="local-gateway",
        route_backend_port=8081,
        route_rule_names=False,
    ),
}


# ------------------------------------------------------------------ the checks


def route_limits(route: JSON) -> Iterator[str]:
    """httproute_types.go v1.4.0: MaxItems on rules (16), hostnames (16), parentRefs (32),
    matches per rule (64), and the CEL rule on total matches (<= 128)."""
    spec = route["spec"]
    rules = spec.get("rules") or []
    if len(rules) > MAX_RULES:
        yield f"{len(rules)} rules > {MAX_RULES}"
    if len(spec.get("hostnames") or []) > MAX_HOSTNAMES:
        yield "too many hostnames"
    if len(spec.get("parentRefs") or []) > MAX_PARENT_REFS:
        yield "too many parentRefs"
    for rule in rules:
        if len(rule.get("matches") or []) > MAX_MATCHES_PER_RULE:
            yield f"rule {rule.get('name')}: more than {MAX_MATCHES_PER_RULE} matches"
    total = sum(len(rule.get("matches") or []) for rule in rules)
    if total > MAX_MATCHES_PER_ROUTE:
        yield f"{total} matches in the route > {MAX_MATCHES_PER_ROUTE}"


def rule_names(route: JSON, *, named: bool) -> Iterator[str]:
    """HTTPRouteRule.Name: a SectionName (DNS-subdomain-like, 1-253; ours DNS labels <= 63),
    unique within the route; absent, and nothing newer than v1.1.0 Standard, when rule names are
    off; nothing outside v1.4.0 Standard when they are on."""
    allowed = RULE_FIELDS_V1_4 if named else RULE_FIELDS_V1_1
    names = []
    for index, rule in enumerate(route["spec"].get("rules") or []):
        for key in set(rule) - allowed:
            yield f"rules[{index}].{key} is not in the Standard channel this setting targets"
        if "name" not in rule:
            if named:
                yield f"rules[{index}] has no name"
            continue
        name = rule["name"]
        names.append(name)
        if not isinstance(name, str) or not 1 <= len(name) <= 63 or not DNS_LABEL.match(name):
            yield f"rules[{index}].name {name!r} is not a DNS label"
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"rule name {name!r} is not unique within the route"


def backends(route: JSON, documents: list[JSON], settings: Settings) -> Iterator[str]:
    """Each rule sends to exactly one Service, with a Host rewrite to its function: the rendered
    Knative Service (ExternalName, Istio only), or the configured one, which a ReferenceGrant in
    its namespace admits when it lives elsewhere."""
    namespace = route["metadata"]["namespace"]
    knative = {d["metadata"]["name"] for d in documents if d["kind"] == "Service" and d["apiVersion"] == "serving.knative.dev/v1"}
    grants = [d for d in documents if d["kind"] == "ReferenceGrant"]
    for index, rule in enumerate(route["spec"]["rules"]):
        refs = rule.get("backendRefs") or []
        if len(refs) != 1:
            yield f"rules[{index}]: {len(refs)} backendRefs"
            continue
        (ref,) = refs
        if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service" or "port" not in ref:
            yield f"rules[{index}]: backend is not a Service with a port"
        rewrites = [f["urlRewrite"]["hostname"] for f in rule.get("filters") or [] if f["type"] == "URLRewrite"]
        function = _function_of(rule)
        if rewrites != [f"{function}.{settings.namespace}.svc.cluster.local"]:
            yield f"rules[{index}]: Host rewrite {rewrites} is not to {function}"
        if settings.route_backend_service is None:
            if ref["name"] != function or ref["name"] not in knative or "namespace" in ref:
                yield f"rules[{index}]: backend {ref} is not the function's Knative Service"
            continue
        target_ns = ref.get("namespace", namespace)
        expected_ns = settings.route_backend_namespace or settings.namespace
        if (ref["name"], target_ns, ref["port"]) != (settings.route_backend_service, expected_ns, settings.route_backend_port):
            yield f"rules[{index}]: backend {ref} is not the configured Service"
        if target_ns != namespace and not any(_grants(g, namespace, ref["name"], target_ns) for g in grants):
            yield f"rules[{index}]: no ReferenceGrant in {target_ns} admits HTTPRoutes from {namespace}"


def _function_of(rule: JSON) -> str:
    """The one function a rule's matches (one per API route; the console's pages, one each) go to."""
    targets = set()
    for match in rule["matches"]:
        owners = [r for r in HTTP_ROUTES if r.method == match["method"] and manifests.path_match(r.path) == match["path"]]
        assert len(owners) == 1, match
        targets.add(owners[0].target)
    assert len(targets) == 1, rule["matches"]
    return manifests.service_name(targets.pop())


def _grants(grant: JSON, from_namespace: str, service: str, namespace: str) -> bool:
    spec = grant["spec"]
    return (
        grant["metadata"]["namespace"] == namespace
        and {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_namespace} in spec["from"]
        and any(t["group"] == "" and t["kind"] == "Service" and t.get("name", service) == service for t in spec["to"])
    )


def route_errors(route: JSON, documents: list[JSON], settings: Settings) -> list[str]:
    return [
        *route_limits(route),
        *rule_names(route, named=settings.route_rule_names),
        *backends(route, documents, settings),
    ]


# ------------------------------------------------------------------ what we render


def _routes(documents: list[JSON]) -> list[JSON]:
    return [d for d in documents if d["kind"] == "HTTPRoute"]


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_rendered_httproute_keeps_the_gateway_api_rules(rendering: str) -> None:
    settings = RENDERINGS[rendering]
    documents = manifests.render(settings)
    routes = _routes(documents)
    assert routes
    assert sum(len(r["spec"]["rules"]) for r in routes) == len(ROUTES) + len({page.target for page in PAGES})
    assert {r["metadata"]["name"]: route_errors(r, documents, settings) for r in routes} == {
        r["metadata"]["name"]: [] for r in routes
    }
    for route in routes:
        crds.validate(route)  # the vendored CRD (and its CEL rules) agree


@pytest.mark.parametrize("named", [True, False])
def test_spilled_routes_keep_the_rules_too(named: bool) -> None:
    """Past 16 routes the renderer opens another HTTPRoute: every one of them stays in bounds."""
    table = tuple(Route("GET", f"/r{i}/{{team_id}}", f"target_{i}", "synthetic", access="platform") for i in range(40))
    settings = Settings(route_rule_names=named)
    routes = manifests.http_routes(settings, table, pages=())
    assert len(routes) == 3
    for route in routes:
        assert list(route_limits(route)) == [] and list(rule_names(route, named=named)) == []
        crds.validate(route)


def test_a_cross_namespace_backend_comes_with_its_reference_grant() -> None:
    settings = RENDERINGS["Knative local gateway backend (Envoy Gateway)"]
    (grant,) = [d for d in manifests.render(settings) if d["kind"] == "ReferenceGrant"]
    assert grant["metadata"]["namespace"] == "knative-serving"
    assert _grants(grant, settings.namespace, "knative-local-gateway", "knative-serving")
    assert not [d for d in manifests.render(Settings()) if d["kind"] == "ReferenceGrant"]


# ------------------------------------------------------------------ each check can fail


def _rules(route: JSON) -> list[JSON]:
    return route["spec"]["rules"]


MUTATIONS: dict[str, tuple[str, Callable[[JSON], None]]] = {
    "17 rules": ("limits", lambda r: _rules(r).extend(copy.deepcopy(_rules(r)[0]) for _ in range(17 - len(_rules(r))))),
    "129 matches": ("limits", lambda r: _rules(r)[0].update({"matches": _rules(r)[0]["matches"] * 65})),
    "129 matches over several rules": ("limits", lambda r: [rule.update({"matches": rule["matches"] * 43}) for rule in _rules(r)[:3]]),
    "17 hostnames": ("limits", lambda r: r["spec"].update({"hostnames": [f"h{i}.example.com" for i in range(17)]})),
    "duplicate rule name": ("names", lambda r: _rules(r)[1].update({"name": _rules(r)[0]["name"]})),
    "rule name with capitals": ("names", lambda r: _rules(r)[0].update({"name": "Get-Health"})),
    "rule name with a dot": ("names", lambda r: _rules(r)[0].update({"name": "get.health"})),
    "rule name of 64 characters": ("names", lambda r: _rules(r)[0].update({"name": "a" * 64})),
    "rule without a name": ("names", lambda r: _rules(r)[0].pop("name")),
    "experimental field": ("names", lambda r: _rules(r)[0].update({"sessionPersistence": {"type": "Cookie"}})),
    "backend not the function": ("backends", lambda r: _rules(r)[0]["backendRefs"][0].update({"name": "maas-openapi"})),
    "two backends": ("backends", lambda r: _rules(r)[0]["backendRefs"].append(dict(_rules(r)[0]["backendRefs"][0]))),
    "no Host rewrite": ("backends", lambda r: _rules(r)[0].update({"filters": []})),
    "backend in another namespace without a grant": ("backends", lambda r: _rules(r)[0]["backendRefs"][0].update({"namespace": "elsewhere"})),
}
CHECKS = {
    "limits": lambda route, documents, settings: list(route_limits(route)),
    "names": lambda route, documents, settings: list(rule_names(route, named=settings.route_rule_names)),
    "backends": lambda route, documents, settings: list(backends(route, documents, settings)),
}


def test_every_check_has_a_mutation() -> None:
    assert {check for check, _ in MUTATIONS.values()} == set(CHECKS)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_check_catches_its_mutation(mutation: str) -> None:
    check, mutate = MUTATIONS[mutation]
    settings = RENDERINGS["default"]
    documents = manifests.render(settings)
    route = _routes(documents)[0]
    assert CHECKS[check](route, documents, settings) == []
    broken = copy.deepcopy(route)
    mutate(broken)
    assert CHECKS[check](broken, documents, settings), f"{check} let '{mutation}' through"


def test_names_are_refused_when_rule_names_are_off() -> None:
    """The other half of the names check: a named rule fails when the setting says the cluster's
    CRDs predate `rules[].name`."""
    named = _routes(manifests.render(RENDERINGS["default"]))[0]
    assert list(rule_names(named, named=False))
    assert not any("name" in rule for route in _routes(manifests.render(RENDERINGS["no rule names (Gateway API < v1.4)"])) for rule in _rules(route))


def test_the_configured_backend_is_checked_against_the_setting() -> None:
    settings = RENDERINGS["Knative local gateway backend (Envoy Gateway)"]
    documents = manifests.render(settings)
    route = _routes(documents)[0]
    assert list(backends(route, documents, settings)) == []
    without_grant = [d for d in documents if d["kind"] != "ReferenceGrant"]
    assert list(backends(route, without_grant, settings))
    wrong_port = copy.deepcopy(route)
    _rules(wrong_port)[0]["backendRefs"][0]["port"] = 8080
    assert list(backends(wrong_port, documents, settings))
