"""The cluster ModelCatalog: KServe's InferenceServices for `/models`, its LLMInferenceServices
for `/v1/models`.

Read on every call (no cache): a listing is one API call, and readiness should be current.
`ready` is the `Ready` condition's status; `url` is `status.url`, else the first address KServe
reports. An LLMInferenceService is listed under the model name it serves (`spec.model.name`),
falling back to its object name, as vLLM answers under that name.

`list_served_models` is what the `maas-models` HTTPRoute is generated from (shared/modelroute.py):
the same objects, with every URL KServe reports (in-cluster addresses first) and the annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.catalog.base import ModelInfo
from shared.kubeapply import list_custom_objects
from shared.settings import Settings
from shared.store.kube import api_client_from_config

GROUP = "serving.kserve.io"
INFERENCE_SERVICE = (GROUP, "v1beta1", "inferenceservices")
# v1alpha2 is the storage version of the LLMInferenceService CRD (v1alpha1 is still served).
LLM_INFERENCE_SERVICE = (GROUP, "v1alpha2", "llminferenceservices")

JSON = dict[str, Any]


def _ready(obj: JSON) -> bool:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _url(obj: JSON) -> str:
    status = obj.get("status") or {}
    if status.get("url"):
        return str(status["url"])
    for address in [status.get("address") or {}, *(status.get("addresses") or [])]:
        if address.get("url"):
            return str(address["url"])
    return ""


def _urls(obj: JSON) -> tuple[str, ...]:
    """Every URL the status reports: `address`, then `addresses[]`, then `url` (in-cluster
    addresses first: `url` is usually the external one)."""
    status = obj.get("status") or {}
    found = [str(a["url"]) for a in [status.get("address") or {}, *(status.get("addresses") or [])]
             if isinstance(a, dict) and a.get("url")]
    if status.get("url"):
        found.append(str(status["url"]))
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A KServe object as the model route needs it."""

    kind: str  # "InferenceService" or "LLMInferenceService"
    name: str  # the model name clients ask for (as listed at /models and /v1/models)
    namespace: str
    ready: bool
    urls: tuple[str, ...]
    annotations: dict[str, str] = field(default_factory=dict)


def _created(meta: JSON) -> int:
    stamp = meta.get("creationTimestamp")
    if not stamp:
        return 0
    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _model(obj: JSON, name: str) -> ModelInfo:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    return ModelInfo(
        name=name,
        namespace=namespace,
        url=_url(obj),
        ready=_ready(obj),
        created=_created(meta),
        owned_by=namespace,
    )


class KServeCatalog:
    def __init__(self, api_client: Any, *, namespace: str | None) -> None:
        """`namespace` None lists every namespace (needs a ClusterRole to list them)."""
        self._client = api_client
        self._namespace = namespace

    @classmethod
    def from_settings(cls, settings: Settings) -> KServeCatalog:
        return cls(api_client_from_config(), namespace=settings.namespace)

    def _list(self, resource: tuple[str, str, str]) -> list[JSON]:
        return list_custom_objects(self._client, *resource, namespace=self._namespace)

    def list_models(self) -> list[ModelInfo]:
        models = [_model(obj, str(obj["metadata"]["name"])) for obj in self._list(INFERENCE_SERVICE)]
        return sorted(models, key=lambda m: (m.name, m.namespace))

    def list_served_models(self) -> list[ServedModel]:
        """InferenceServices (by object name) and LLMInferenceServices (by served name)."""
        served = []
        for kind, resource in (("InferenceService", INFERENCE_SERVICE), ("LLMInferenceService", LLM_INFERENCE_SERVICE)):
            for obj in self._list(resource):
                meta = obj.get("metadata") or {}
                name = str(meta["name"])
                if kind == "LLMInferenceService":
                    name = str(((obj.get("spec") or {}).get("model") or {}).get("name") or name)
                annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
                served.append(ServedModel(kind=kind, name=name, namespace=str(meta.get("namespace", "")),
                                          ready=_ready(obj), urls=_urls(obj), annotations=dict(annotations)))
        return sorted(served, key=lambda m: (m.name, m.namespace, m.kind))

    def list_openai_models(self) -> list[ModelInfo]:
        models = []
        for obj in self._list(LLM_INFERENCE_SERVICE):
            served = ((obj.get("spec") or {}).get("model") or {}).get("name")
            models.append(_model(obj, str(served or obj["metadata"]["name"])))
        return sorted(models, key=lambda m: (m.name, m.namespace))
