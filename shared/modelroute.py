"""The one HTTPRoute for every model, `maas-models`, generated from the KServe catalog.

Why one route: Limitador's counters are namespaced by the HTTPRoute a request went through
(tests/cluster/SOURCES.md §5), so a team has one budget across the models only when every model
is served through the same route; KServe's own routes are one per model. The route is applied
by the policy sync (shared/kubeapply.py) with the Kuadrant policies, beside them (in the
policies' namespace), attached to the Gateway they target.

One rule per ready model, in model-name order:

- match `PathPrefix /<model>/v1`, rewrite that prefix to `/v1` (`URLRewrite` with
  `ReplacePrefixMatch`), so a client's OpenAI base URL is `https://<models host>/<model>/v1`
  and the model server sees its usual paths. An object annotated `maas/openai-prefix` is
  rewritten to that prefix instead: KServe's own Python model servers (e.g. the Hugging Face
  runtime) serve OpenAI under `/openai/v1` (SOURCES §17), vLLM under `/v1`.
- the backend is the Service named by the model's in-cluster address,
  `<scheme>://<service>.<namespace>.svc[.cluster.local][:port]` (SOURCES §17: an
  InferenceService's `status.address.url` is its predictor Service (Standard/RawDeployment) or
  an ExternalName Service to Knative's local gateway (Knative/Serverless); an
  LLMInferenceService without a router reports its `<name>-kserve-workload-svc`). The port is
  the URL's, else what KServe gives that Service: 80 for an InferenceService, 8000 for an
  LLMInferenceService's workload Service.
- the Host header is rewritten to that address's host: the ExternalName Service of a Knative
  predictor leads to Knative's local gateway, which routes by Host (the same rewrite the key
  manager's own routes carry); for a plain Service it is the name the Service answers to anyway.
  ExternalName backends need a Gateway that follows them (Istio; docs/DEPLOY.md).

A model is skipped, with its reason in `ModelRoute.skipped` (and the log), when it is not Ready,
its name is not one path segment (letters, digits, `.`, `_`, `-`: the allow-list rule of the
AuthPolicy splits the path on `/` and the key's list on `,`), another model already has that
name, or none of its URLs is a plain-HTTP in-cluster Service in MAAS_NAMESPACE.

More than 16 routable models is an error, not a second route (Gateway API allows 16 rules per
HTTPRoute, and a second route would be a second budget): `ModelRoute.error` says so and the sync
then leaves the current route as it is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.gatewayapi import (
    HTTP_ROUTE_API,
    MAX_RULES_PER_ROUTE,
    REFERENCE_GRANT_API,
    gateway_parent_ref,
    host_rewrite,
    reference_grant,
)
from shared.policies import MANAGED_BY
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.catalog.kserve import ServedModel

JSON = dict[str, Any]

ROUTE_NAME = "maas-models"
GRANT_NAME = "maas-models"
PREFIX_ANNOTATION = "maas/openai-prefix"
DEFAULT_PREFIX = "/v1"
# The port of the Service KServe puts in front of each kind (SOURCES §17).
DEFAULT_PORTS = {"InferenceService": 80, "LLMInferenceService": 8000}

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SERVICE_HOST = re.compile(rf"^(?P<service>{_DNS_LABEL})\.(?P<namespace>{_DNS_LABEL})\.svc(\.cluster\.local)?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*/v1$")


@dataclass(frozen=True, slots=True)
class Backend:
    """Where one model's rule sends."""

    model: str
    service: str
    namespace: str
    port: int
    host: str  # the Host header the backend expects
    prefix: str  # what `/<model>/v1` becomes


@dataclass(frozen=True)
class ModelRoute:
    """What the sync should hold: `objects` (empty: no routable model, delete what is there),
    unless `error` is set, in which case nothing is to be touched."""

    objects: list[JSON] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model, why)
    error: str | None = None


def backend_of(model: ServedModel, settings: Settings) -> Backend | str:
    """The model's backend, or why it has none."""
    if not model.ready:
        return "not Ready"
    if not _MODEL_NAME.match(model.name):
        return "its name is not one path segment of letters, digits, '.', '_' or '-'"
    prefix = model.annotations.get(PREFIX_ANNOTATION, DEFAULT_PREFIX)
    if not _PREFIX.match(prefix):
        return f"annotation {PREFIX_ANNOTATION} {prefix!r} is not a path ending in /v1"
    reasons = []
    for url in model.urls:
        parts = urlsplit(url)
        found = _SERVICE_HOST.match(parts.hostname or "")
        if found is None:
            reasons.append(f"{url} is not an in-cluster Service")
            continue
        if parts.scheme != "http":
            reasons.append(f"{url} is not plain HTTP (TLS to a backend needs a BackendTLSPolicy)")
            continue
        if parts.path not in ("", "/") or parts.query:
            reasons.append(f"{url} has a path (a gateway's address, not the model's Service)")
            continue
        if found["namespace"] != settings.namespace:
            reasons.append(f"{url} is outside namespace {settings.namespace}")
            continue
        try:
            port = parts.port or DEFAULT_PORTS[model.kind]
        except ValueError:
            reasons.append(f"{url} has an invalid port")
            continue
        return Backend(model=model.name, service=found["service"], namespace=found["namespace"], port=port,
                       host=str(parts.hostname), prefix=prefix)
    return "; ".join(reasons) or "KServe reports no URL for it"


def model_route(models: Iterable[ServedModel], settings: Settings) -> ModelRoute:
    """The route (and its ReferenceGrant, when the Services live in another namespace) for these
    models; see the module docstring."""
    backends: list[Backend] = []
    skipped: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for model in sorted(models, key=lambda m: (m.name, m.kind, m.namespace)):
        if model.name in taken:
            skipped.append((model.name, f"{taken[model.name]} '{model.name}' is already routed under that name"))
            continue
        found = backend_of(model, settings)
        if isinstance(found, str):
            skipped.append((model.name, found))
            continue
        taken[model.name] = model.kind
        backends.append(found)
    if len(backends) > MAX_RULES_PER_ROUTE:
        return ModelRoute(
            backends=backends, skipped=skipped,
            error=(f"{len(backends)} models to route, but an HTTPRoute holds at most {MAX_RULES_PER_ROUTE} rules "
                   f"and a second route would give every team a second budget; HTTPRoute {ROUTE_NAME} is left "
                   "as it is until there are 16 or fewer"),
        )
    if not backends:
        return ModelRoute(skipped=skipped)
    objects = [_route(backends, settings)]
    if settings.namespace != settings.policy_namespace:
        services = sorted({b.service for b in backends})
        objects.append(reference_grant(GRANT_NAME, settings.namespace, from_namespace=settings.policy_namespace,
                                       services=services, labels=MANAGED_BY))
    return ModelRoute(objects=objects, backends=backends, skipped=skipped)


def managed_route_objects(settings: Settings) -> list[JSON]:
    """Every object `model_route` can produce (name and namespace), present or not."""
    objects = [_meta(HTTP_ROUTE_API, "HTTPRoute", ROUTE_NAME, settings.policy_namespace)]
    if settings.namespace != settings.policy_namespace:
        objects.append(_meta(REFERENCE_GRANT_API, "ReferenceGrant", GRANT_NAME, settings.namespace))
    return objects


def _meta(api_version: str, kind: str, name: str, namespace: str) -> JSON:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}}


def _route(backends: list[Backend], settings: Settings) -> JSON:
    spec: JSON = {"parentRefs": [gateway_parent_ref(settings.gateway_name, settings.policy_namespace)]}
    if settings.models_hostname:
        spec["hostnames"] = [settings.models_hostname]
    names: set[str] = set()
    spec["rules"] = [_rule(backend, settings, names) for backend in backends]
    return {
        "apiVersion": HTTP_ROUTE_API,
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE_NAME, "namespace": settings.policy_namespace, "labels": dict(MANAGED_BY)},
        "spec": spec,
    }


def _rule(backend: Backend, settings: Settings, names: set[str]) -> JSON:
    rewrite = host_rewrite(backend.host)
    # One URLRewrite filter per rule (Gateway API refuses two): the Host and the path together.
    rewrite["urlRewrite"]["path"] = {"type": "ReplacePrefixMatch", "replacePrefixMatch": backend.prefix}
    ref: JSON = {"group": "", "kind": "Service", "name": backend.service}
    if backend.namespace != settings.policy_namespace:
        ref["namespace"] = backend.namespace
    rule: JSON = {}
    if settings.route_rule_names:
        rule["name"] = _rule_name(backend.model, names)
    return rule | {
        "matches": [{"path": {"type": "PathPrefix", "value": f"/{backend.model}/v1"}}],
        "filters": [rewrite],
        "backendRefs": [ref | {"port": backend.port}],
    }


def _rule_name(model: str, taken: set[str]) -> str:
    """A DNS label from the model name, unique in the route (a digest settles collisions)."""
    label = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:63].strip("-")
    if not label or label in taken:
        label = f"{label[:56].strip('-')}-{hashlib.sha256(model.encode()).hexdigest()[:6]}".strip("-")
    taken.add(label)
    return label
