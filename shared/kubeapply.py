"""Applying generated objects (the Kuadrant policies) to a cluster, and reading custom objects.

Each object is written whole: created when absent, replaced (conditioned on the resourceVersion
just read) when its labels, annotations or spec differ, left alone when equal, so an unchanged
policy never makes Kuadrant reconcile. Nothing is ever restarted: Kuadrant's controllers watch the
objects. Losing a race (409 Conflict, or AlreadyExists when two replicas create at once) is retried
a bounded number of times, then answered 503 BackendUnavailable.

`sync_policies` regenerates the policies from the teams and applies them as one optimistic
transaction: it reads the policies' resourceVersions *before* listing the teams and writes
conditioned on them. Two replicas syncing after concurrent team changes can therefore not leave
the older view in place: whichever writes second either read the teams after the first one's
write, or conflicts and starts over with a fresh list.

The same transaction holds the `maas-models` HTTPRoute and its ReferenceGrant
(shared/modelroute.py), generated from the KServe models listed after the route was read. When
the models cannot be listed, or there are more than one route can hold, the route is left as it
is (neither written nor deleted), one line is logged, and the policies are still applied.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi, V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException

from shared.errors import BackendUnavailable, MaasError, NotFound
from shared.modelroute import ModelRoute, managed_route_objects, model_route
from shared.policies import TELEMETRY_POLICY, generate_policies, managed_policies
from shared.settings import Settings
from shared.store.base import Store
from shared.store.kube import REQUEST_TIMEOUT, KubernetesStore, api_client_from_config, kube_errors, retry_on_conflict

__all__ = ["apply_objects", "delete_objects", "list_custom_objects", "policy_syncer", "resource_of", "sync_policies"]

log = logging.getLogger("maas.kubeapply")

JSON = dict[str, Any]
Ident = tuple[str, str, str]  # kind, namespace, name

# The plural of every kind we write or read; kinds are not guessed, a new one is added here.
PLURALS = {
    "AuthPolicy": "authpolicies",
    "RateLimitPolicy": "ratelimitpolicies",
    "TokenRateLimitPolicy": "tokenratelimitpolicies",
    "TelemetryPolicy": "telemetrypolicies",
    "HTTPRoute": "httproutes",
    "ReferenceGrant": "referencegrants",
    "InferenceService": "inferenceservices",
    "LLMInferenceService": "llminferenceservices",
}


def resource_of(api_version: str, kind: str) -> tuple[str, str, str]:
    """(group, version, plural) of a custom kind."""
    group, _, version = api_version.rpartition("/")
    if not group or kind not in PLURALS:
        raise ValueError(f"cannot apply {api_version} {kind}: not a known custom resource")
    return group, version, PLURALS[kind]


def _ident(obj: JSON, namespace: str | None) -> Ident:
    meta = obj.get("metadata") or {}
    target = meta.get("namespace") or namespace
    if not target or not meta.get("name"):
        raise ValueError(f"{obj.get('kind')} needs metadata.name and a namespace")
    return obj["kind"], target, meta["name"]


def _describe(obj: JSON, ident: Ident) -> str:
    return f"{ident[0]} '{ident[1]}/{ident[2]}'"


def _same(current: JSON, desired: JSON) -> bool:
    """Whether `current` already holds what we write: our spec, and our labels and annotations
    among whatever other controllers added (they are theirs, not a difference)."""
    have, want = current.get("metadata") or {}, desired.get("metadata") or {}
    for field in ("labels", "annotations"):
        present = have.get(field) or {}
        if any(present.get(key) != value for key, value in (want.get(field) or {}).items()):
            return False
    return current.get("spec") == desired.get("spec")


def _replacement(current: JSON, desired: JSON) -> JSON:
    """`desired` as a whole-object replace of `current` that keeps what is not ours to remove:
    other controllers' finalizers (Kuadrant puts its own on policies), owner references, labels
    and annotations. Without them a replace would strip a finalizer and let an object be
    deleted before its controller cleaned up, or start a tug of war over an annotation."""
    body = copy.deepcopy(desired)
    have, meta = current.get("metadata") or {}, body.setdefault("metadata", {})
    for field in ("labels", "annotations"):
        merged = {**(have.get(field) or {}), **(meta.get(field) or {})}
        if merged:
            meta[field] = merged
    for field in ("finalizers", "ownerReferences"):
        if have.get(field):
            meta[field] = copy.deepcopy(have[field])
    meta["resourceVersion"] = have["resourceVersion"]
    return body


class _Objects:
    """The verbs on custom objects, through the real client, with our timeouts."""

    def __init__(self, api_client: ApiClient) -> None:
        self._api = CustomObjectsApi(api_client)

    def get(self, obj: JSON, ident: Ident) -> JSON | None:
        group, version, plural = resource_of(obj["apiVersion"], obj["kind"])
        try:
            return self._api.get_namespaced_custom_object(
                group, version, ident[1], plural, ident[2], _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def write(self, obj: JSON, ident: Ident, current: JSON | None) -> None:
        """Create, or replace `current` (conditioned on its resourceVersion) if it differs."""
        group, version, plural = resource_of(obj["apiVersion"], obj["kind"])
        body = copy.deepcopy(obj)
        body.setdefault("metadata", {})["namespace"] = ident[1]
        if current is None:
            self._api.create_namespaced_custom_object(
                group, version, ident[1], plural, body, _request_timeout=REQUEST_TIMEOUT
            )
        elif not _same(current, body):
            self._api.replace_namespaced_custom_object(
                group, version, ident[1], plural, ident[2], _replacement(current, body),
                _request_timeout=REQUEST_TIMEOUT,
            )

    def delete(self, obj: JSON, ident: Ident, current: JSON) -> None:
        group, version, plural = resource_of(obj["apiVersion"], obj["kind"])
        try:
            self._api.delete_namespaced_custom_object(
                group,
                version,
                ident[1],
                plural,
                ident[2],
                body=V1DeleteOptions(
                    preconditions=V1Preconditions(resource_version=current["metadata"]["resourceVersion"])
                ),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise


@contextmanager
def _resource_missing(what: str) -> Iterator[None]:
    """A create answered 404 means a missing CRD or namespace: the cluster is not ready, 503."""
    try:
        yield
    except NotFound as exc:
        raise BackendUnavailable(
            f"Kubernetes API cannot store {what}: its namespace or CRD is missing "
            "(are Kuadrant and the Gateway API installed?)"
        ) from exc


def apply_objects(api_client: ApiClient, objects: list[JSON], *, namespace: str | None = None) -> None:
    """Create or replace each object whole; `namespace` for objects that name none."""
    verbs = _Objects(api_client)
    for obj in objects:
        ident = _ident(obj, namespace)

        def attempt(obj: JSON = obj, ident: Ident = ident) -> None:
            verbs.write(obj, ident, verbs.get(obj, ident))

        with _resource_missing(_describe(obj, ident)):
            retry_on_conflict(attempt, _describe(obj, ident), also_already_exists=True)


def delete_objects(api_client: ApiClient, objects: list[JSON], *, namespace: str | None = None) -> None:
    """Delete each object (by apiVersion, kind, name, namespace); an absent one is fine."""
    verbs = _Objects(api_client)
    for obj in objects:
        ident = _ident(obj, namespace)

        def attempt(obj: JSON = obj, ident: Ident = ident) -> None:
            current = verbs.get(obj, ident)
            if current is not None:
                verbs.delete(obj, ident, current)

        retry_on_conflict(attempt, _describe(obj, ident))


def sync_policies(store: Store, api_client: ApiClient, settings: Settings, *, catalog: Any = None) -> ModelRoute:
    """Regenerate every managed policy from the teams, and the model route from the models, and
    apply them; drop the ones not produced. Answers what became of the model route.

    `catalog` lists the models (`list_served_models`); default: KServe in MAAS_NAMESPACE.
    """
    if catalog is None:
        from shared.catalog.kserve import KServeCatalog  # kserve imports this module

        catalog = KServeCatalog(api_client, namespace=settings.namespace)
    verbs = _Objects(api_client)
    managed = [
        {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": {"name": ref.name, "namespace": ref.namespace}}
        for ref in managed_policies(settings)
    ]
    route_managed = managed_route_objects(settings)
    outcome: list[ModelRoute] = []

    def attempt() -> None:
        current: dict[Ident, JSON | None] = {}
        for obj in managed + route_managed:
            ident = _ident(obj, None)
            current[ident] = verbs.get(obj, ident)
        # Teams and models are listed after the objects were read: see the module docstring.
        route = _model_route(catalog, settings)
        outcome[:] = [route]
        desired = generate_policies(store.list_teams(), settings, keys_in_grace=store.list_keys(in_grace=True),
                                    models=[backend.model for backend in route.backends],
                                    keys=store.list_keys(with_rates=True))
        deletable = list(managed)
        if route.error is None:
            desired += route.objects
            deletable += route_managed
        else:
            # The models are not known this time: the usage labels stay bounded by the last list.
            desired = [obj for obj in desired if obj["kind"] != TELEMETRY_POLICY[1]]
            deletable = [obj for obj in deletable if obj["kind"] != TELEMETRY_POLICY[1]]
        produced = set()
        for obj in desired:
            ident = _ident(obj, settings.policy_namespace)
            produced.add(ident)
            verbs.write(obj, ident, current[ident] if ident in current else verbs.get(obj, ident))
        for obj in deletable:
            ident = _ident(obj, None)
            existing = current[ident]
            if ident not in produced and existing is not None:
                verbs.delete(obj, ident, existing)

    with _resource_missing("the Kuadrant policies and the model route"):
        retry_on_conflict(attempt, "the Kuadrant policies and the model route", also_already_exists=True)
    (route,) = outcome
    if route.error is not None:
        log.error("model route not updated: %s", route.error)
    elif route.skipped:
        log.info("model route: %d models routed; skipped: %s", len(route.backends),
                 "; ".join(f"{model}: {why}" for model, why in route.skipped))
    return route


def _model_route(catalog: Any, settings: Settings) -> ModelRoute:
    try:
        models = catalog.list_served_models()
    except MaasError as exc:
        return ModelRoute(error=f"the models could not be listed ({exc.message})")
    return model_route(models, settings)


def policy_syncer(store: Store, settings: Settings) -> Callable[[], None]:
    """What the core calls after every committed team change in a cluster deployment."""
    api_client = store.api_client if isinstance(store, KubernetesStore) else api_client_from_config()
    return partial(sync_policies, store, api_client, settings)


def list_custom_objects(
    api_client: ApiClient, group: str, version: str, plural: str, namespace: str | None = None
) -> list[JSON]:
    """Every object of a custom resource, in one namespace or (None) in all, sorted by namespace/name."""
    api = CustomObjectsApi(api_client)
    with kube_errors(f"{plural}.{group}"):
        if namespace is None:
            listed = api.list_cluster_custom_object(group, version, plural, _request_timeout=REQUEST_TIMEOUT)
        else:
            listed = api.list_namespaced_custom_object(
                group, version, namespace, plural, _request_timeout=REQUEST_TIMEOUT
            )
    items = listed.get("items") or [] if isinstance(listed, dict) else []
    return sorted(items, key=lambda o: ((o.get("metadata") or {}).get("namespace", ""), (o.get("metadata") or {}).get("name", "")))

