"""Gateway API pieces shared by the rendered HTTPRoutes (tools/manifests.py) and the model route
that the functions apply at run time (shared/modelroute.py): plain dicts, no client.

Sources (tests/cluster/SOURCES.md §11): kubernetes-sigs/gateway-api `apis/v1/httproute_types.go`
(`HTTPRouteSpec.Rules` MaxItems=16) and `apis/v1beta1/referencegrant_types.go` (`from[]{group,
kind, namespace}`, `to[]{group, kind, name?}`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE_API = f"{GROUP}/v1"
REFERENCE_GRANT_API = f"{GROUP}/v1beta1"
# Gateway API caps an HTTPRoute at 16 rules.
MAX_RULES_PER_ROUTE = 16


def gateway_parent_ref(name: str, namespace: str) -> dict[str, str]:
    """A route's parentRef to one Gateway."""
    return {"group": GROUP, "kind": "Gateway", "name": name, "namespace": namespace}


def host_rewrite(hostname: str) -> dict[str, Any]:
    """A URLRewrite filter setting the Host header: what an ExternalName backend routed by Host
    (Knative's local gateway, Istio) needs to reach the right service."""
    return {"type": "URLRewrite", "urlRewrite": {"hostname": hostname}}


def reference_grant(
    name: str, namespace: str, *, from_namespace: str, services: Iterable[str] | None,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """Lets HTTPRoutes of `from_namespace` send to Services of `namespace`: the named ones, or
    every one when `services` is None."""
    to: list[dict[str, str]] = (
        [{"group": "", "kind": "Service"}] if services is None
        else [{"group": "", "kind": "Service", "name": service} for service in services]
    )
    return {
        "apiVersion": REFERENCE_GRANT_API,
        "kind": "ReferenceGrant",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": from_namespace}], "to": to},
    }
