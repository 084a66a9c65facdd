"""`make cluster-check` (tools/cluster_check.py).

Prerequisites: run against the API double (tests/kube_double.py) through a kubeconfig that points
the real client at it, loaded with the vendored CRDs (tests/crds/) and the objects a healthy
install has (Kuadrant, Authorino, Limitador, an Istio Gateway, the key manager's objects as
`make manifests` renders them, with the status their controllers would write). A healthy cluster
gives exit 0 and only `ok` lines; each broken prerequisite gives exit 1 and a FAIL line whose fix
names what to change.

End to end: the local runtime (`python -m local serve`) stands in for the cluster: its admin API
over HTTPS with its self-signed certificate, its gateway refusing over the limit (429) and
refusing revoked keys (401). A gateway double that never refuses shows the failure lines, and
that the team is deleted all the same. No output ever holds the admin key or an API key.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes.client import CoreV1Api, CustomObjectsApi

from shared.keymaterial import generate_admin_key
from shared.settings import Settings
from tests.kube_double import KubeDouble, running_double, version_info
from tests.runtime import ROOT, Runtime, start_runtime
from tools import cluster_check, manifests
from tools.cluster_prereqs import Cluster, derive_admin_url, derive_gateway_url, selector_matches

JSON = dict[str, Any]
CRDS = ROOT / "tests" / "crds"
NS = "llm"
KUADRANT_NS = "kuadrant-system"
GW = "gateway.networking.k8s.io"
ADMIN_KEY = generate_admin_key()
KEY_SHAPE = re.compile(r"maas_[A-Za-z0-9_-]{16,}")

# (group, version, plural, namespace or None) -> bodies
Objects = dict[str, tuple[tuple[str, str, str, str | None], JSON]]


def ready(kind: str = "Ready", status: str = "True", **extra: str) -> JSON:
    return {"conditions": [{"type": kind, "status": status, **extra}]}


def vendored_crds() -> list[JSON]:
    """The vendored CRDs as the API server lists them, less their schemas (the check reads only the
    metadata and which versions are served; the KServe schemas alone are megabytes to send)."""
    documents = []
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                for version in crd["spec"]["versions"]:
                    version.pop("schema", None)
                documents.append(crd)
    return documents


_CRDS = vendored_crds()


def healthy(settings: Settings) -> Objects:
    """What a working install holds, keyed by a short name the tests mutate."""
    objects: Objects = {}
    for crd in _CRDS:
        objects[f"crd/{crd['metadata']['name']}"] = (("apiextensions.k8s.io", "v1", "customresourcedefinitions", None), copy.deepcopy(crd))

    def put(key: str, api_version: str, kind: str, plural: str, namespace: str | None, name: str,
            spec: JSON | None = None, status: JSON | None = None, **extra: Any) -> None:
        group, _, version = api_version.rpartition("/")
        meta: JSON = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        body: JSON = {"apiVersion": api_version, "kind": kind, "metadata": meta, **extra}
        if spec is not None:
            body["spec"] = spec
        if status is not None:
            body["status"] = status
        objects[key] = ((group, version, plural, namespace), body)

    put("kuadrant", "kuadrant.io/v1beta1", "Kuadrant", "kuadrants", KUADRANT_NS, "kuadrant", {}, ready())
    put("authorino", "operator.authorino.kuadrant.io/v1beta1", "Authorino", "authorinos", KUADRANT_NS, "authorino",
        {"clusterWide": True, "listener": {"tls": {"enabled": False}}}, ready())
    put("limitador", "limitador.kuadrant.io/v1alpha1", "Limitador", "limitadors", KUADRANT_NS, "limitador", {}, ready())
    gateway_ns = settings.policy_namespace
    put("gateway", f"{GW}/v1", "Gateway", "gateways", gateway_ns, settings.gateway_name,
        {"gatewayClassName": "istio", "listeners": [
            {"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "*.example.com",
             "allowedRoutes": {"namespaces": {"from": "All"}}}]},
        {**ready("Programmed"), "addresses": [{"type": "IPAddress", "value": "203.0.113.7"}]})
    put("gatewayclass", f"{GW}/v1", "GatewayClass", "gatewayclasses", None, "istio",
        {"controllerName": "istio.io/gateway-controller"}, ready("Accepted"))
    put("namespace", "v1", "Namespace", "namespaces", None, NS)
    put("admin-key", "v1", "Secret", "secrets", NS, manifests.ADMIN_KEY_SECRET,
        data={"ADMIN_KEY": base64.b64encode(ADMIN_KEY.encode()).decode()})
    config = manifests.config_map(settings, "http://prometheus:9090")
    objects["configmap"] = (("", "v1", "configmaps", NS), config)
    for target in manifests.function_targets():
        name = manifests.service_name(target)
        put(f"ksvc/{name}", "serving.knative.dev/v1", "Service", "services", NS, name, {}, ready())
    for route in manifests.http_routes(settings):
        body = copy.deepcopy(route)
        body["status"] = attached(settings)
        objects[f"httproute/{route['metadata']['name']}"] = ((GW, "v1", "httproutes", NS), body)
    put("authpolicy", "kuadrant.io/v1", "AuthPolicy", "authpolicies", gateway_ns, "maas-api-keys", {},
        ready("Enforced"))
    put("maas-models", f"{GW}/v1", "HTTPRoute", "httproutes", gateway_ns, "maas-models",
        {"parentRefs": [{"name": settings.gateway_name}], "hostnames": ["models.example.com"],
         "rules": [{"name": "qwen3", "backendRefs": [{"name": "qwen3-predictor", "port": 80}]}]},
        attached(settings))
    return objects


def attached(settings: Settings) -> JSON:
    """An HTTPRoute's status once the Gateway accepted it."""
    return {"parents": [{
        "parentRef": {"group": GW, "kind": "Gateway", "name": settings.gateway_name,
                      "namespace": settings.policy_namespace},
        "controllerName": "istio.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True"}, {"type": "ResolvedRefs", "status": "True"}],
    }]}


def load(double: KubeDouble, objects: Objects) -> None:
    client = double.api_client()
    custom, core = CustomObjectsApi(client), CoreV1Api(client)
    try:
        for (group, version, plural, namespace), body in objects.values():
            if group == "" and plural == "namespaces":
                core.create_namespace(body)
            elif group == "" and plural == "secrets":
                core.create_namespaced_secret(namespace, body)
            elif group == "" and plural == "configmaps":
                core.create_namespaced_config_map(namespace, body)
            elif group == "" and plural == "services":
                core.create_namespaced_service(namespace, body)
            elif namespace is None:
                custom.create_cluster_custom_object(group, version, plural, body)
            else:
                custom.create_namespaced_custom_object(group, version, namespace, plural, body)
    finally:
        client.close()


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester"}}],
    }))
    return path


@pytest.fixture
def double() -> Iterator[KubeDouble]:
    with running_double() as (kube, _client):
        yield kube


def check(tmp_path: Path, double: KubeDouble, objects: Objects, *extra: str) -> tuple[int, str]:
    load(double, objects)
    out = io.StringIO()
    code = cluster_check.main(["--no-e2e", "--kubeconfig", str(kubeconfig(tmp_path, double.url)), *extra], out=out)
    return code, out.getvalue()


def lines(text: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, the rest of its line plus its fix line), from the printed report."""
    found: dict[str, tuple[str, str]] = {}
    last: str | None = None
    for line in text.splitlines():
        match = re.match(r"^  (ok|FAIL|warn|skip)\s+([^:]+): (.*)$", line)
        if match:
            status, name, rest = match.groups()
            last = name
            if name in found and found[name][0] == "FAIL":
                found[name] = (found[name][0], found[name][1] + " | " + rest)
            else:
                found[name] = (status, rest)
        elif line.startswith("        fix: ") and last is not None:
            status, rest = found[last]
            found[last] = (status, f"{rest} fix: {line.removeprefix('        fix: ')}")
    return found


# ------------------------------------------------------------------ prerequisites


def test_a_healthy_cluster_passes_every_check(tmp_path: Path, double: KubeDouble) -> None:
    code, text = check(tmp_path, double, healthy(Settings()))
    found = lines(text)
    assert code == 0, text
    assert {status for status, _ in found.values()} == {"ok"}, text
    for crd in ("authpolicies.kuadrant.io", "tokenratelimitpolicies.kuadrant.io", "ratelimitpolicies.kuadrant.io",
                "telemetrypolicies.extensions.kuadrant.io", "httproutes.gateway.networking.k8s.io",
                "services.serving.knative.dev", "brokers.eventing.knative.dev", "triggers.eventing.knative.dev",
                "apiserversources.sources.knative.dev", "pingsources.sources.knative.dev",
                "inferenceservices.serving.kserve.io", "llminferenceservices.serving.kserve.io"):
        assert f"crd {crd}" in found
    for name in ("kubernetes API", "gateway api version", "kuadrant", "authorino", "authorino secret selector",
                 "limitador", f"gateway {NS}/maas-gateway", "gatewayclass istio", "route backends",
                 f"namespace {NS}", f"secret {NS}/maas-admin-key", f"configmap {NS}/maas-config",
                 "knative services", f"httproute {NS}/maas-key-manager", f"httproute {NS}/maas-models",
                 "other routes on the gateway", f"authpolicy {NS}/maas-api-keys"):
        assert name in found, f"{name} missing from:\n{text}"
    assert "v1.6.1" in found["gateway api version"][1]
    assert ADMIN_KEY not in text and not KEY_SHAPE.search(text)


def _drop(key: str) -> Callable[[Objects], None]:
    return lambda objects: objects.pop(key) and None


def _edit(key: str, change: Callable[[JSON], None]) -> Callable[[Objects], None]:
    return lambda objects: change(objects[key][1])


def _served_only(version: str) -> Callable[[JSON], None]:
    def change(crd: JSON) -> None:
        for entry in crd["spec"]["versions"]:
            entry["served"] = entry["name"] == version
    return change


def _bundle(version: str, channel: str = "standard") -> Callable[[JSON], None]:
    def change(crd: JSON) -> None:
        crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] = version
        crd["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] = channel
    return change


def _set(path: str, value: Any) -> Callable[[JSON], None]:
    def change(body: JSON) -> None:
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return change


_NOT_READY = ready("Ready", "False", reason="RevisionMissing", message="Revision failed")
_PLACEHOLDER = "REPLACE-ME-with-a-random-admin-key"

BROKEN: list[tuple[str, Callable[[Objects], None], str, str]] = [
    ("missing CRD", _drop("crd/tokenratelimitpolicies.kuadrant.io"),
     "crd tokenratelimitpolicies.kuadrant.io", "install the Kuadrant operator"),
    ("missing KServe CRD", _drop("crd/llminferenceservices.serving.kserve.io"),
     "crd llminferenceservices.serving.kserve.io", "install KServe"),
    ("CRD without the served version", _edit("crd/llminferenceservices.serving.kserve.io", _served_only("v1alpha1")),
     "crd llminferenceservices.serving.kserve.io", "serves v1alpha2"),
    ("old Gateway API bundle", _edit("crd/httproutes.gateway.networking.k8s.io", _bundle("v1.3.0")),
     "gateway api version", "MAAS_ROUTE_RULE_NAMES=false"),
    ("old experimental Gateway API", _edit("crd/httproutes.gateway.networking.k8s.io", _bundle("v1.1.0", "experimental")),
     "gateway api version", "v1.4.0 or later"),
    ("no Kuadrant", _drop("kuadrant"), "kuadrant", "create its Kuadrant object"),
    ("Kuadrant not ready", _edit("kuadrant", _set("status", ready("Ready", "False", message="MissingDependency"))),
     "kuadrant", "describe kuadrant kuadrant"),
    ("Authorino not cluster-wide", _edit("authorino", _set("spec.clusterWide", False)),
     "authorino", '"clusterWide":true'),
    ("wrong Authorino secret selector",
     _edit("authorino", _set("spec.secretLabelSelectors", "authorino.kuadrant.io/managed-by=someone-else")),
     "authorino secret selector", "MAAS_AUTHORINO_SECRET_LABEL=authorino.kuadrant.io/managed-by=someone-else"),
    ("no Authorino", _drop("authorino"), "authorino", "Kuadrant object creates Authorino"),
    ("no Limitador", _drop("limitador"), "limitador", "Kuadrant object creates Limitador"),
    ("missing Gateway", _drop("gateway"), f"gateway {NS}/maas-gateway", "MAAS_GATEWAY_NAME and MAAS_GATEWAY_NAMESPACE"),
    ("Gateway not programmed", _edit("gateway", _set("status", ready("Programmed", "False", reason="Pending"))),
     f"gateway {NS}/maas-gateway", "describe gateway maas-gateway"),
    ("missing GatewayClass", _drop("gatewayclass"), "gatewayclass istio", "Gateway API implementation"),
    ("Envoy Gateway with ExternalName backends",
     _edit("gatewayclass", _set("spec.controllerName", "gateway.envoyproxy.io/gatewayclass-controller")),
     "route backends", "MAAS_ROUTE_BACKEND_SERVICE"),
    ("missing namespace", _drop("namespace"), f"namespace {NS}", f"kubectl create namespace {NS}"),
    ("missing admin key Secret", _drop("admin-key"), f"secret {NS}/maas-admin-key", "create secret generic maas-admin-key"),
    ("placeholder admin key", _edit("admin-key", _set("data", {"ADMIN_KEY": base64.b64encode(_PLACEHOLDER.encode()).decode()})),
     f"secret {NS}/maas-admin-key", "--skip-admin-key"),
    ("missing maas-config", _drop("configmap"), f"configmap {NS}/maas-config", "apply dist/manifests.yaml"),
    ("a Knative Service not ready", _edit("ksvc/maas-create-team", _set("status", _NOT_READY)),
     "knative services", "describe ksvc maas-create-team"),
    ("a Knative Service missing", _drop("ksvc/maas-cleanup"), "knative services", "apply dist/manifests.yaml"),
    ("HTTPRoute not accepted", _edit("httproute/maas-key-manager", _set("status.parents", [{
        "parentRef": {"name": "maas-gateway", "namespace": NS},
        "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners"},
                       {"type": "ResolvedRefs", "status": "True"}]}])),
     f"httproute {NS}/maas-key-manager", "describe httproute maas-key-manager"),
    ("models route not accepted", _edit("maas-models", _set("status.parents", [{
        "parentRef": {"name": "maas-gateway", "namespace": NS},
        "conditions": [{"type": "Accepted", "status": "True"},
                       {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"}]}])),
     f"httproute {NS}/maas-models", "describe httproute maas-models"),
    ("AuthPolicy not enforced", _edit("authpolicy", _set("status", ready("Enforced", "False", reason="Unknown"))),
     f"authpolicy {NS}/maas-api-keys", "status.conditions"),
]


@pytest.mark.parametrize(("broken", "name", "fix"), [(b[1], b[2], b[3]) for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_prerequisite_fails_with_its_fix(
    tmp_path: Path, double: KubeDouble, broken: Callable[[Objects], None], name: str, fix: str
) -> None:
    objects = healthy(Settings())
    broken(objects)
    code, text = check(tmp_path, double, objects)
    found = lines(text)
    assert code == 1, text
    assert found[name][0] == "FAIL", text
    assert fix in found[name][1], text
    assert ADMIN_KEY not in text and _PLACEHOLDER not in text


def test_an_old_kubernetes_fails(tmp_path: Path, double: KubeDouble) -> None:
    double.version = version_info("v1.27.4")
    code, text = check(tmp_path, double, healthy(Settings()))
    assert code == 1 and lines(text)["kubernetes API"][0] == "FAIL" and "1.28 or later" in text


@pytest.mark.parametrize(
    ("env", "broken", "name"),
    [
        ({"MAAS_ROUTE_RULE_NAMES": "false"}, _edit("crd/httproutes.gateway.networking.k8s.io", _bundle("v1.1.0")),
         "gateway api version"),
        ({"MAAS_AUTHORINO_SECRET_LABEL": "example.com/keys=maas"},
         _edit("authorino", _set("spec.secretLabelSelectors", "example.com/keys=maas")), "authorino secret selector"),
        ({"MAAS_ROUTE_BACKEND_SERVICE": "knative-local-gateway"},
         lambda objects: (
             _edit("gatewayclass", _set("spec.controllerName", "gateway.envoyproxy.io/gatewayclass-controller"))(objects),
             objects.update({"svc": (("", "v1", "services", NS), {
                 "metadata": {"name": "knative-local-gateway"}, "spec": {"ports": [{"port": 80}]}})}),
         ),
         "route backends"),
    ],
    ids=["old Gateway API without rule names", "our own watcher label", "Envoy Gateway with a real backend Service"],
)
def test_the_settings_that_fit_such_a_cluster_pass(
    tmp_path: Path, double: KubeDouble, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
    broken: Callable[[Objects], None], name: str,
) -> None:
    objects = healthy(Settings())
    broken(objects)
    _, text = check(tmp_path, double, objects)
    assert lines(text)[name][0] == "FAIL"  # the same cluster fails with the default settings
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with running_double() as (fresh, _client):
        objects = healthy(Settings())
        broken(objects)
        code, text = check(tmp_path, fresh, objects)
    assert code == 0, text
    assert lines(text)[name][0] == "ok", text


def test_a_backend_service_that_does_not_exist_fails(tmp_path: Path, double: KubeDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_ROUTE_BACKEND_SERVICE", "knative-local-gateway")
    code, text = check(tmp_path, double, healthy(Settings()))
    assert code == 1 and lines(text)["route backends"][0] == "FAIL" and "does not exist" in text


def test_a_gateway_elsewhere_must_accept_routes_from_our_namespace(
    tmp_path: Path, double: KubeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_GATEWAY_NAMESPACE", "gateways")
    objects = healthy(Settings(gateway_namespace="gateways"))
    objects["gateway"][1]["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": "Same"}}
    code, text = check(tmp_path, double, objects)
    found = lines(text)
    assert code == 1 and found[f"gateway listeners allow routes from {NS}"][0] == "FAIL", text
    assert "allowedRoutes.namespaces.from: All" in found[f"gateway listeners allow routes from {NS}"][1]
    with running_double() as (fresh, _client):
        objects["gateway"][1]["spec"]["listeners"][0]["allowedRoutes"] = {
            "namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}}}
        code, text = check(tmp_path, fresh, objects)
    assert code == 0, text


def test_a_missing_models_route_and_kserves_own_routes_are_warnings(tmp_path: Path, double: KubeDouble) -> None:
    objects = healthy(Settings())
    objects.pop("maas-models")
    own = {"apiVersion": f"{GW}/v1", "kind": "HTTPRoute", "metadata": {"name": "qwen3-kserve-route", "namespace": "models"},
           "spec": {"parentRefs": [{"name": "maas-gateway", "namespace": NS}]}, "status": attached(Settings())}
    objects["own-route"] = ((GW, "v1", "httproutes", "models"), own)
    code, text = check(tmp_path, double, objects)
    found = lines(text)
    assert code == 0, text
    assert found[f"httproute {NS}/maas-models"][0] == "warn" and "next policy sync" in found[f"httproute {NS}/maas-models"][1]
    assert found["other routes on the gateway"][0] == "warn"
    assert "models/qwen3-kserve-route" in found["other routes on the gateway"][1]
    assert "Keep KServe's own routes off" in found["other routes on the gateway"][1]


def test_settings_that_differ_from_the_deployment_are_a_warning(
    tmp_path: Path, double: KubeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = healthy(Settings())
    objects["configmap"][1]["data"]["MAAS_KEY_SELECTOR"] = "other-keys"
    code, text = check(tmp_path, double, objects)
    assert code == 0 and lines(text)[f"configmap {NS}/maas-config"][0] == "warn"
    assert "MAAS_KEY_SELECTOR=other-keys" in text


def test_a_keys_namespace_of_its_own_must_exist_and_match_the_deployment(
    tmp_path: Path, double: KubeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_KEYS_NAMESPACE", "llm-keys")
    objects = healthy(Settings(keys_namespace="llm-keys"))
    code, text = check(tmp_path, double, objects)
    found = lines(text)
    assert code == 1 and found["namespace llm-keys"][0] == "FAIL", text
    assert "kubectl create namespace llm-keys" in found["namespace llm-keys"][1]
    assert found[f"configmap {NS}/maas-config"][0] == "ok", text
    with running_double() as (fresh, _client):
        objects["keys-namespace"] = (("", "v1", "namespaces", None),
                                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "llm-keys"}})
        code, text = check(tmp_path, fresh, objects)
        assert code == 0 and lines(text)["namespace llm-keys"][0] == "ok", text
    # Deployed with the keys in MAAS_NAMESPACE, checked with them apart: the check says so.
    monkeypatch.delenv("MAAS_KEYS_NAMESPACE")
    with running_double() as (fresh, _client):
        code, text = check(tmp_path, fresh, objects)
    assert "namespace llm-keys" not in lines(text)
    assert lines(text)[f"configmap {NS}/maas-config"][0] == "warn" and "MAAS_KEYS_NAMESPACE=llm-keys" in text


def test_a_version_answer_without_every_field_is_read(tmp_path: Path, double: KubeDouble) -> None:
    double.version = {"major": "1", "minor": "30+", "gitVersion": "v1.30.4-eks-a737599"}
    code, text = check(tmp_path, double, healthy(Settings()))
    assert code == 0 and "v1.30.4-eks-a737599" in lines(text)["kubernetes API"][1], text


def test_credentials_that_may_not_read_say_so(tmp_path: Path, double: KubeDouble) -> None:
    load(double, healthy(Settings()))
    out = io.StringIO()
    with double.forbid():
        code = cluster_check.main(["--no-e2e", "--kubeconfig", str(kubeconfig(tmp_path, double.url))], out=out)
    found = lines(out.getvalue())
    assert code == 1 and found["kubernetes API"][0] == "FAIL"
    assert "refused (403" in found["kubernetes API"][1] and "credentials" in found["kubernetes API"][1]


def test_an_unreachable_cluster_fails_once_and_stops(tmp_path: Path) -> None:
    with running_double() as (gone, _client):
        url = gone.url
    out = io.StringIO()
    code = cluster_check.main(["--no-e2e", "--kubeconfig", str(kubeconfig(tmp_path, url))], out=out)
    found = lines(out.getvalue())
    assert code == 1 and list(found) == ["kubernetes API"] and found["kubernetes API"][0] == "FAIL"
    assert "kubeconfig" in found["kubernetes API"][1]


def test_a_json_report(tmp_path: Path, double: KubeDouble) -> None:
    objects = healthy(Settings())
    objects.pop("limitador")
    code, text = check(tmp_path, double, objects, "--json")
    report = json.loads(text)
    assert code == report["exit_code"] == 1 and report["ok"] is False
    assert report["summary"]["FAIL"] == 1 and report["context"]["namespace"] == NS
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert [(c["section"], c["name"]) for c in failed] == [("prerequisites", "limitador")]
    assert failed[0]["fix"]
    assert all(set(c) == {"section", "name", "status", "detail", "fix", "seconds"} for c in report["checks"])


def test_the_urls_are_derived_from_the_routes_and_the_gateway(double: KubeDouble) -> None:
    settings = Settings(api_hostname="keys.example.com")
    wanted = ("gateway", "httproute/maas-key-manager", "maas-models")
    load(double, {k: v for k, v in healthy(settings).items() if k in wanted})
    cluster = Cluster(double.api_client())
    assert derive_admin_url(cluster, settings)[0] == "https://keys.example.com"
    assert derive_gateway_url(cluster, settings)[0] == "https://models.example.com"
    # Without a hostname, the Gateway's address; without an HTTPS listener, plain HTTP on its port.
    with running_double() as (fresh, client):
        objects = healthy(Settings())
        objects["gateway"][1]["spec"]["listeners"] = [{"name": "http", "protocol": "HTTP", "port": 8080}]
        load(fresh, {k: v for k, v in objects.items() if k in ("gateway", "httproute/maas-key-manager")})
        assert derive_admin_url(Cluster(client), Settings())[0] == "http://203.0.113.7:8080"
        assert derive_admin_url(Cluster(client), Settings(namespace="elsewhere"))[0] is None
        assert derive_gateway_url(Cluster(client), Settings())[0] is None  # no maas-models yet


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("authorino.kuadrant.io/managed-by=authorino", True),
        ("authorino.kuadrant.io/managed-by==authorino,app=maas-api-key", True),
        ("authorino.kuadrant.io/managed-by in (authorino, other)", True),
        ("authorino.kuadrant.io/managed-by", True),
        ("!authorino.kuadrant.io/managed-by", False),
        ("authorino.kuadrant.io/managed-by!=authorino", False),
        ("authorino.kuadrant.io/managed-by notin (authorino)", False),
        ("tier=gold", False),
    ],
)
def test_the_selector_is_read_as_kubernetes_reads_it(selector: str, expected: bool) -> None:
    labels = {"authorino.kuadrant.io/managed-by": "authorino", "app": "maas-api-key"}
    assert selector_matches(selector, labels) is expected


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster_check.main(["--no-e2e", "--no-prereqs"]) == 2
    assert cluster_check.main(["--no-prereqs", "--admin-url", "https://x"]) == 2  # no admin key
    assert "ADMIN_KEY" in capsys.readouterr().err
    assert cluster_check.main(["--no-e2e", "--kubeconfig", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").write_text("\n")
    assert cluster_check.main(["--no-prereqs", "--admin-url", "https://x", "--admin-key-file", str(tmp_path / "empty")]) == 2
    for argv in (["--ca-file", "a.pem", "--insecure"], ["--limit-tries", "0"], ["--revoke-wait", "soon"]):
        with pytest.raises(SystemExit) as exited:
            cluster_check.main(argv)
        assert exited.value.code == 2


def test_help_explains_every_option_with_an_example() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.cluster_check", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    options = set(re.findall(r"--[a-z][a-z0-9-]+", done.stdout))
    assert {"--no-e2e", "--no-prereqs", "--json", "--kubeconfig", "--context", "--admin-url", "--gateway-url",
            "--admin-key-file", "--ca-file", "--insecure", "--model", "--auth-wait", "--revoke-wait",
            "--limit-tries", "--interval", "--timeout"} <= options
    assert "examples:" in done.stdout and "make cluster-check" in done.stdout and "exit status" in done.stdout
    for action in cluster_check.parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_the_make_target_runs_the_module_with_args() -> None:
    done = subprocess.run(["make", "-n", "cluster-check", "ARGS=--no-e2e --json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert ".venv/bin/python -m tools.cluster_check --no-e2e --json" in done.stdout


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    data = tmp_path_factory.mktemp("runtime")
    started = start_runtime(data)
    started.data_dir = data  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        started.stop()


def _e2e_args(runtime: Runtime, gateway_url: str | None = None, *extra: str) -> list[str]:
    data: Path = runtime.data_dir  # type: ignore[attr-defined]
    return [
        "--no-prereqs", "--admin-url", runtime.admin_url, "--gateway-url", gateway_url or runtime.urls["gateway"],
        "--admin-key-file", str(data / "admin-key"), "--ca-file", str(data / "tls" / "cert.pem"), *extra,
    ]


def _teams(runtime: Runtime) -> list[str]:
    data: Path = runtime.data_dir  # type: ignore[attr-defined]
    key = (data / "admin-key").read_text().strip()
    answer = httpx.get(f"{runtime.admin_url}/teams", headers={"Authorization": f"ADMIN {key}"},
                       verify=str(data / "tls" / "cert.pem"), timeout=30)
    return [t["team_id"] for t in answer.json()["teams"]]


E2E_STEPS = ("admin API", "admin key", "model", "create team", "issue key", "model call", "token limit",
             "revoke key", "revoked key refused", "delete team")


def test_the_quickstart_passes_end_to_end_against_the_local_runtime(runtime: Runtime) -> None:
    data: Path = runtime.data_dir  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "ADMIN_KEY"}
    done = subprocess.run([sys.executable, "-m", "tools.cluster_check", *_e2e_args(runtime, None, "--interval", "0.2")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    found = lines(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tuple(found) == E2E_STEPS, done.stdout
    assert {status for status, _ in found.values()} == {"ok"}, done.stdout
    assert f"{runtime.urls['gateway']}/qwen3-0-6b-instruct/v1/chat/completions" in found["model"][1]
    assert found["model call"][1].startswith("200, ") and "tokens" in found["model call"][1]
    assert found["token limit"][1].startswith("429")
    assert found["revoked key refused"][1].startswith("401")
    assert re.search(r"\(\d+\.\d\d s\)", done.stdout)  # each step is timed
    assert not [t for t in _teams(runtime) if t.startswith("cluster-check-")]
    admin_key = (data / "admin-key").read_text().strip()
    output = done.stdout + done.stderr
    assert admin_key not in output and not KEY_SHAPE.search(output)


class _NeverRefuses(BaseHTTPRequestHandler):
    """A model gateway that answers every call 200 with usage and echoes the credential it got."""

    seen: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        del format, args

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        credential = self.headers.get("Authorization", "")
        type(self).seen.append(credential)
        body = json.dumps({"echo": credential, "usage": {"total_tokens": 12}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def lenient_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NeverRefuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _NeverRefuses.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gateway_that_never_refuses_fails_and_the_team_is_still_deleted(runtime: Runtime, lenient_gateway: str) -> None:
    out = io.StringIO()
    code = cluster_check.main(
        _e2e_args(runtime, lenient_gateway, "--limit-tries", "3", "--interval", "0.05", "--revoke-wait", "0.5"), out=out
    )
    text = out.getvalue()
    found = lines(text)
    assert code == 1, text
    assert found["model call"][0] == "ok"
    assert found["token limit"][0] == "FAIL" and "no 429 in 3 calls" in found["token limit"][1], text
    assert "tokenratelimitpolicy" in found["token limit"][1]
    assert found["revoked key refused"][0] == "FAIL" and "expected 401" in found["revoked key refused"][1]
    assert found["delete team"][0] == "ok"
    assert not [t for t in _teams(runtime) if t.startswith("cluster-check-")]
    keys = {c.split(" ", 1)[1] for c in _NeverRefuses.seen}
    assert len(keys) == 1 and next(iter(keys)).startswith("maas_")
    assert next(iter(keys)) not in text and not KEY_SHAPE.search(text)


def test_a_wrong_admin_key_fails_before_any_team_is_made(runtime: Runtime, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text(generate_admin_key())
    args = _e2e_args(runtime)
    args[args.index("--admin-key-file") + 1] = str(wrong)
    out = io.StringIO()
    code = cluster_check.main(args, out=out)
    found = lines(out.getvalue())
    assert code == 1 and found["admin key"][0] == "FAIL" and "401" in found["admin key"][1]
    assert "create team" not in found and wrong.read_text() not in out.getvalue()


def test_an_untrusted_certificate_names_the_ca_option(runtime: Runtime) -> None:
    args = _e2e_args(runtime)
    at = args.index("--ca-file")
    del args[at : at + 2]
    out = io.StringIO()
    code = cluster_check.main(args, out=out)
    found = lines(out.getvalue())
    assert code == 1 and found["admin API"][0] == "FAIL" and "--ca-file" in found["admin API"][1]
