"""The `maas-models` HTTPRoute (shared/modelroute.py) from the KServe objects as KServe reports
them (tests/cluster/SOURCES.md §17), checked against Gateway API's rules (the vendored CRD and
its CEL validations, §11) and evaluated on concrete paths; and its life in the policy sync
(shared/kubeapply.py): applied with the policies, following the models, left alone when it
cannot be computed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi

from shared.catalog.kserve import INFERENCE_SERVICE, LLM_INFERENCE_SERVICE, ServedModel
from shared.errors import BackendUnavailable
from shared.kubeapply import sync_policies
from shared.modelroute import GRANT_NAME, ROUTE_NAME, model_route
from shared.settings import Settings
from shared.store.base import Team, TeamChanges
from shared.store.kube import KubernetesStore
from tests import crds
from tests.kube_double import KubeDouble, running_double

NS = "llm"
JSON = dict[str, Any]
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def isvc(name: str, address: str | None = None, *, ready: bool = True, **annotations: str) -> ServedModel:
    """An InferenceService in Standard (RawDeployment) mode: predictor Service, external url."""
    urls = (address or f"http://{name}-predictor.{NS}.svc.cluster.local", f"https://{name}-{NS}.apps.example.com")
    return ServedModel(kind="InferenceService", name=name, namespace=NS, ready=ready, urls=urls,
                       annotations=dict(annotations))


def llmisvc(name: str, obj_name: str | None = None) -> ServedModel:
    """An LLMInferenceService without a router: status.addresses is its workload Service."""
    return ServedModel(kind="LLMInferenceService", name=name, namespace=NS, ready=True,
                       urls=(f"http://{obj_name or name}-kserve-workload-svc.{NS}.svc.cluster.local",))


def served_by(route: JSON, path: str) -> tuple[str, int, str, str] | None:
    """(Service, port, Host, upstream path) of the rule a path matches: PathPrefix matches whole
    path elements, and ReplacePrefixMatch swaps the matched prefix (httproute_types.go)."""
    for rule in route["spec"]["rules"]:
        (match,) = rule["matches"]
        prefix = match["path"]["value"]
        assert match["path"]["type"] == "PathPrefix"
        if path == prefix or path.startswith(prefix + "/"):
            (rewrite,) = [f["urlRewrite"] for f in rule["filters"] if f["type"] == "URLRewrite"]
            assert rewrite["path"]["type"] == "ReplacePrefixMatch"
            (ref,) = rule["backendRefs"]
            return ref["name"], ref["port"], rewrite["hostname"], rewrite["path"]["replacePrefixMatch"] + path[len(prefix):]
    return None


# ------------------------------------------------------------------ the route


def test_one_rule_per_model_rewritten_to_its_service() -> None:
    result = model_route([isvc("granite"), llmisvc("qwen3-0-6b-instruct", "qwen3")], Settings())
    assert result.error is None and result.skipped == []
    (route,) = result.objects  # one namespace: no ReferenceGrant
    crds.validate(route)
    assert route["metadata"] == {"name": "maas-models", "namespace": NS, "labels": {
        "app.kubernetes.io/managed-by": "maas-key-manager", "app.kubernetes.io/part-of": "maas"}}
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "maas-gateway", "namespace": NS}]
    assert "hostnames" not in route["spec"]
    assert served_by(route, "/granite/v1/chat/completions") == (
        "granite-predictor", 80, "granite-predictor.llm.svc.cluster.local", "/v1/chat/completions")
    # KServe's workload Service of an LLMInferenceService listens on 8000 (SOURCES §17).
    assert served_by(route, "/qwen3-0-6b-instruct/v1/completions") == (
        "qwen3-kserve-workload-svc", 8000, "qwen3-kserve-workload-svc.llm.svc.cluster.local", "/v1/completions")
    assert served_by(route, "/granite/v1") == ("granite-predictor", 80, "granite-predictor.llm.svc.cluster.local", "/v1")
    for elsewhere in ("/v1/chat/completions", "/granitex/v1/chat/completions", "/granite/v2/x", "/granite"):
        assert served_by(route, elsewhere) is None, elsewhere
    assert [rule["name"] for rule in route["spec"]["rules"]] == ["granite", "qwen3-0-6b-instruct"]


def test_a_knative_predictor_goes_to_its_externalname_service_by_host() -> None:
    """Knative (Serverless) mode: status.address is `<isvc>.<ns>.svc.cluster.local`, an
    ExternalName Service to Knative's local gateway, which routes by Host (SOURCES §17)."""
    (route,) = model_route([isvc("granite", f"http://granite.{NS}.svc.cluster.local")], Settings()).objects
    assert served_by(route, "/granite/v1/chat/completions") == (
        "granite", 80, "granite.llm.svc.cluster.local", "/v1/chat/completions")


def test_the_port_and_prefix_come_from_the_model() -> None:
    headless = isvc("a", f"http://a-predictor.{NS}.svc.cluster.local:8080")  # ClusterIP None: the target port
    kserve_runtime = isvc("b", **{"maas/openai-prefix": "/openai/v1"})  # KServe's Python servers (§17)
    (route,) = model_route([headless, kserve_runtime, isvc("c", f"http://c-predictor.{NS}.svc:80")], Settings()).objects
    crds.validate(route)
    assert served_by(route, "/a/v1/models")[1] == 8080  # type: ignore[index]
    assert served_by(route, "/b/v1/chat/completions")[3] == "/openai/v1/chat/completions"  # type: ignore[index]
    assert served_by(route, "/c/v1/models")[:3] == ("c-predictor", 80, "c-predictor.llm.svc")  # type: ignore[index]


@pytest.mark.parametrize(("model", "why"), [
    (isvc("sleepy", ready=False), "not Ready"),
    (ServedModel(kind="InferenceService", name="ext", namespace=NS, ready=True,
                 urls=("https://ext-llm.apps.example.com",)), "is not an in-cluster Service"),
    (ServedModel(kind="InferenceService", name="none", namespace=NS, ready=True, urls=()), "no URL"),
    (isvc("tls", f"https://tls-predictor.{NS}.svc.cluster.local"), "not plain HTTP"),
    (isvc("far", "http://far-predictor.other.svc.cluster.local"), "outside namespace llm"),
    (isvc("gw", f"http://maas-gateway-istio.{NS}.svc.cluster.local/llm/gw"), "has a path"),
    (isvc("Qwen/Qwen3"), "not one path segment"),
    (isvc("a,b"), "not one path segment"),
    (isvc("odd", **{"maas/openai-prefix": "/v2"}), "not a path ending in /v1"),
    (isvc("port", f"http://port-predictor.{NS}.svc.cluster.local:99999"), "invalid port"),
])
def test_a_model_that_cannot_be_routed_is_skipped_with_its_reason(model: ServedModel, why: str) -> None:
    result = model_route([model, isvc("ok")], Settings())
    assert result.error is None
    assert [b.model for b in result.backends] == ["ok"]
    ((name, reason),) = result.skipped
    assert name == model.name and why in reason, reason


def test_a_name_served_twice_is_routed_once() -> None:
    result = model_route([llmisvc("granite"), isvc("granite")], Settings())
    assert [(b.model, b.service) for b in result.backends] == [("granite", "granite-predictor")]
    assert result.skipped == [("granite", "InferenceService 'granite' is already routed under that name")]


def test_sixteen_models_fit_and_seventeen_are_an_error() -> None:
    """Gateway API: 16 rules per HTTPRoute (§11); a second route would be a second budget (§5)."""
    sixteen = [isvc(f"m{i:02}") for i in range(16)]
    (route,) = model_route(sixteen, Settings()).objects
    crds.validate(route)
    too_many = model_route([*sixteen, isvc("m16")], Settings())
    assert too_many.objects == [] and too_many.error is not None
    assert "17 models" in too_many.error and "at most 16 rules" in too_many.error and "second budget" in too_many.error
    # The control: the CRD itself refuses the 17th rule.
    broken = copy.deepcopy(route)
    broken["spec"]["rules"].append(copy.deepcopy(broken["spec"]["rules"][0]) | {"name": "m16"})
    assert crds.validation_errors(broken)


def test_settings_shape_the_route_and_a_grant_admits_it_elsewhere() -> None:
    settings = Settings(namespace=NS, gateway_namespace="gateway-system", gateway_name="edge",
                        models_hostname="models.example.com", route_rule_names=False)
    route, grant = model_route([isvc("b"), isvc("a")], settings).objects
    crds.validate(route)
    assert route["metadata"]["namespace"] == "gateway-system"
    assert route["spec"]["hostnames"] == ["models.example.com"]
    assert route["spec"]["parentRefs"][0] | {} == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                   "name": "edge", "namespace": "gateway-system"}
    assert all("name" not in rule for rule in route["spec"]["rules"])
    assert [rule["backendRefs"][0]["namespace"] for rule in route["spec"]["rules"]] == [NS, NS]
    assert grant == {
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": GRANT_NAME, "namespace": NS, "labels": route["metadata"]["labels"]},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "gateway-system"}],
                 "to": [{"group": "", "kind": "Service", "name": "a-predictor"},
                        {"group": "", "kind": "Service", "name": "b-predictor"}]},
    }


def test_rule_names_are_unique_dns_labels() -> None:
    # LLMInferenceServices are served under spec.model.name, which need not be a DNS label.
    served = [llmisvc("Granite_8B", "g1"), llmisvc("granite-8b", "g2"), llmisvc("granite.8b", "g3")]
    (route,) = model_route(served, Settings()).objects
    names = [rule["name"] for rule in route["spec"]["rules"]]
    assert len(set(names)) == 3 and all(len(n) <= 63 for n in names)
    crds.validate(route)


# ------------------------------------------------------------------ in the policy sync


def kserve_object(kind: str, name: str, served: str | None = None, *, ready: bool = True) -> tuple[tuple[str, str, str], JSON, JSON]:
    if kind == "InferenceService":
        body = {"apiVersion": "serving.kserve.io/v1beta1", "kind": kind, "metadata": {"name": name},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "vLLM"}, "storageUri": "hf://x/y"}}}}
        status = {"url": f"https://{name}-{NS}.apps.example.com",
                  "address": {"url": f"http://{name}-predictor.{NS}.svc.cluster.local"}}
        resource = INFERENCE_SERVICE
    else:
        body = {"apiVersion": "serving.kserve.io/v1alpha2", "kind": kind, "metadata": {"name": name},
                "spec": {"model": {"uri": "hf://x/y", "name": served or name}}}
        status = {"addresses": [{"url": f"http://{name}-kserve-workload-svc.{NS}.svc.cluster.local"}]}
        resource = LLM_INFERENCE_SERVICE
    status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return resource, body, status


def put_model(client: Any, kind: str, name: str, served: str | None = None, *, ready: bool = True) -> None:
    (group, version, plural), body, status = kserve_object(kind, name, served, ready=ready)
    api = CustomObjectsApi(client)
    api.create_namespaced_custom_object(group, version, NS, plural, body)
    api.patch_namespaced_custom_object_status(group, version, NS, plural, name, {"status": status})


def drop_model(client: Any, resource: tuple[str, str, str], name: str) -> None:
    group, version, plural = resource
    CustomObjectsApi(client).delete_namespaced_custom_object(group, version, NS, plural, name)


@pytest.fixture
def kube() -> Iterator[tuple[KubeDouble, Any, KubernetesStore]]:
    with running_double() as (double, client):
        store = KubernetesStore(client, namespace=NS, key_selector="maas-api-key")
        store.create_team(team=Team(team_id="alpha", team_name="alpha", description="", policy="alpha",
                                    token_limit=100, time_window="1h", limit_scope="team", created_at=T0))
        yield double, client, store


def stored(double: KubeDouble, settings: Settings) -> tuple[JSON | None, JSON | None]:
    route = double.get("httproutes", settings.policy_namespace, ROUTE_NAME, "gateway.networking.k8s.io", "v1")
    grant = double.get("referencegrants", settings.namespace, GRANT_NAME, "gateway.networking.k8s.io", "v1beta1")
    return route, grant


def paths(route: JSON | None) -> list[str]:
    return [] if route is None else [rule["matches"][0]["path"]["value"] for rule in route["spec"]["rules"]]


@pytest.mark.parametrize("gateway_namespace", [None, "gateway-system"])
def test_the_sync_applies_the_route_and_follows_the_models(kube, gateway_namespace: str | None) -> None:
    double, client, store = kube
    settings = Settings(namespace=NS, gateway_namespace=gateway_namespace)
    sync_policies(store, client, settings)
    assert stored(double, settings) == (None, None)  # no model yet: no route (an empty one would match everything)

    put_model(client, "InferenceService", "granite")
    put_model(client, "LLMInferenceService", "qwen3", "qwen3-0-6b-instruct")
    put_model(client, "InferenceService", "warming", ready=False)
    result = sync_policies(store, client, settings)
    route, grant = stored(double, settings)
    assert paths(route) == ["/granite/v1", "/qwen3-0-6b-instruct/v1"]
    assert result.skipped == [("warming", "not Ready")]
    assert (grant is not None) == (gateway_namespace is not None)
    assert double.get("authpolicies", settings.policy_namespace, "maas-api-keys", "kuadrant.io", "v1") is not None

    count = len(double.requests)
    sync_policies(store, client, settings)
    assert [m for m, _ in double.requests[count:] if m != "GET"] == []  # unchanged: nothing written

    drop_model(client, INFERENCE_SERVICE, "granite")
    sync_policies(store, client, settings)
    route, grant = stored(double, settings)
    assert paths(route) == ["/qwen3-0-6b-instruct/v1"]
    if grant is not None:
        assert [t["name"] for t in grant["spec"]["to"]] == ["qwen3-kserve-workload-svc"]

    drop_model(client, LLM_INFERENCE_SERVICE, "qwen3")
    sync_policies(store, client, settings)
    assert stored(double, settings) == (None, None)


def test_too_many_models_keep_the_previous_route_and_say_so(kube, caplog: pytest.LogCaptureFixture) -> None:
    double, client, store = kube
    settings = Settings(namespace=NS)
    for i in range(16):
        put_model(client, "InferenceService", f"m{i:02}")
    sync_policies(store, client, settings)
    before, _ = stored(double, settings)
    assert len(paths(before)) == 16

    put_model(client, "InferenceService", "m16")
    store.update_team(team_id="alpha", changes=TeamChanges(token_limit=7))
    with caplog.at_level(logging.ERROR, logger="maas.kubeapply"):
        result = sync_policies(store, client, settings)
    after, _ = stored(double, settings)
    assert after == before  # not half-applied: the same object, same resourceVersion
    assert result.error is not None and "17 models" in result.error
    (line,) = [r.getMessage() for r in caplog.records if r.name == "maas.kubeapply"]
    assert line.startswith("model route not updated: 17 models to route")
    # The policies were still applied: the team's new budget is there.
    limits = double.get("tokenratelimitpolicies", NS, "maas-team-token-limits", "kuadrant.io", "v1alpha1")
    assert limits is not None and "7-per-3600s-team" in limits["spec"]["limits"]


def test_models_that_cannot_be_listed_leave_the_route_alone(kube) -> None:
    double, client, store = kube
    settings = Settings(namespace=NS)
    put_model(client, "InferenceService", "granite")
    sync_policies(store, client, settings)
    before, _ = stored(double, settings)

    class Unreachable:
        def list_served_models(self) -> list[ServedModel]:
            raise BackendUnavailable("Kubernetes API: inferenceservices.serving.kserve.io is forbidden")

    result = sync_policies(store, client, settings, catalog=Unreachable())
    assert stored(double, settings)[0] == before
    assert result.error is not None and "could not be listed" in result.error


def test_a_hand_edit_of_the_route_is_repaired_and_conflicts_are_retried(kube) -> None:
    double, client, store = kube
    settings = Settings(namespace=NS)
    put_model(client, "InferenceService", "granite")
    sync_policies(store, client, settings)
    api = CustomObjectsApi(client)
    api.patch_namespaced_custom_object("gateway.networking.k8s.io", "v1", NS, "httproutes", ROUTE_NAME,
                                       {"spec": {"hostnames": ["evil.example.com"]}})
    put_model(client, "InferenceService", "other")
    double.inject_conflicts(2)
    sync_policies(store, client, settings)
    route, _ = stored(double, settings)
    assert route is not None and "hostnames" not in route["spec"]
    assert paths(route) == ["/granite/v1", "/other/v1"]
