"""KServeCatalog through the real kubernetes client: objects shaped per the KServe CRDs, their
status written through the status subresource as KServe's controller does."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient, CustomObjectsApi

from shared.catalog.base import ModelCatalog
from shared.catalog.kserve import INFERENCE_SERVICE, LLM_INFERENCE_SERVICE, KServeCatalog
from shared.errors import BackendUnavailable
from tests import crds
from tests.kube_double import KubeDouble, running_double

ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "granite-8b", "namespace": "llm"},
    "spec": {
        "predictor": {
            "model": {"modelFormat": {"name": "vLLM"}, "storageUri": "hf://ibm-granite/granite-3.1-8b-instruct"}
        }
    },
}
LLMISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1alpha2",
    "kind": "LLMInferenceService",
    "metadata": {"name": "qwen3", "namespace": "llm"},
    "spec": {"model": {"uri": "hf://Qwen/Qwen3-0.6B", "name": "qwen3-0-6b-instruct"}},
}


@pytest.fixture
def kube() -> Iterator[tuple[KubeDouble, ApiClient]]:
    with running_double() as pair:
        yield pair


def put(client: ApiClient, obj: dict[str, Any], status: dict[str, Any] | None = None, **meta: str) -> None:
    body = copy.deepcopy(obj)
    body["metadata"].update(meta)
    group, version = body["apiVersion"].split("/")
    plural = INFERENCE_SERVICE[2] if body["kind"] == "InferenceService" else LLM_INFERENCE_SERVICE[2]
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    api = CustomObjectsApi(client)
    api.create_namespaced_custom_object(group, version, namespace, plural, body)
    if status is not None:
        api.patch_namespaced_custom_object_status(group, version, namespace, plural, name, {"status": status})


def ready(value: str, url: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": value}]}
    if url:
        status["url"] = url
    return status


def test_the_test_objects_follow_the_crds() -> None:
    crds.validate(ISVC)
    crds.validate(LLMISVC)


def test_models_come_from_inference_services(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    put(client, ISVC, ready("True", "http://granite-8b.llm.example.com"))
    put(client, ISVC, ready("False"), name="bert")
    put(client, ISVC, ready("True", "http://elsewhere"), namespace="other")
    put(client, LLMISVC, ready("True", "http://qwen3.llm.example.com"))
    catalog = KServeCatalog(client, namespace="llm")
    assert isinstance(catalog, ModelCatalog)
    models = catalog.list_models()
    assert [(m.name, m.namespace, m.url, m.ready, m.owned_by) for m in models] == [
        ("bert", "llm", "", False, "llm"),
        ("granite-8b", "llm", "http://granite-8b.llm.example.com", True, "llm"),
    ]
    assert all(m.created > 1_600_000_000 for m in models)
    everywhere = KServeCatalog(client, namespace=None).list_models()
    assert [(m.name, m.namespace) for m in everywhere] == [("bert", "llm"), ("granite-8b", "llm"), ("granite-8b", "other")]


def test_openai_models_come_from_llm_inference_services(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    put(client, LLMISVC, ready("True", "http://qwen3.llm.example.com"))
    unnamed = copy.deepcopy(LLMISVC)
    unnamed["spec"]["model"].pop("name")
    put(
        client,
        unnamed,
        {"addresses": [{"url": "http://sim.llm.svc.cluster.local"}], "conditions": [{"type": "Ready", "status": "Unknown"}]},
        name="vllm-simulator",
    )
    put(client, ISVC, ready("True", "http://granite"))
    models = KServeCatalog(client, namespace="llm").list_openai_models()
    assert [(m.name, m.url, m.ready) for m in models] == [
        ("qwen3-0-6b-instruct", "http://qwen3.llm.example.com", True),
        ("vllm-simulator", "http://sim.llm.svc.cluster.local", False),
    ]


def test_a_service_without_status_is_not_ready(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    put(client, ISVC, status=None)
    [model] = KServeCatalog(client, namespace="llm").list_models()
    assert (model.name, model.url, model.ready) == ("granite-8b", "", False)


def test_kubernetes_trouble_is_backend_unavailable(kube: tuple[KubeDouble, ApiClient]) -> None:
    double, client = kube
    catalog = KServeCatalog(client, namespace="llm")
    with double.unreachable(), pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
        catalog.list_models()
    with double.forbid(), pytest.raises(BackendUnavailable, match="RBAC"):
        catalog.list_openai_models()
