"""An in-process Kubernetes API server double that the real `kubernetes` client talks to.

It is a real HTTP server on 127.0.0.1 (a thread, port 0) keeping the API server's semantics
that our adapters rely on:

- namespaced core/v1 Secrets and ConfigMaps: create, get, list, replace, patch (JSON merge,
  strategic merge treated as JSON merge, RFC 6902 JSON patch), delete, deletecollection;
- generic custom objects under /apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/status]],
  with a status subresource (writes to the main resource keep the stored status, as for every
  CRD we use) and metadata.generation bumped on spec changes;
- cluster-scoped objects (CLUSTER_SCOPED: CustomResourceDefinitions under
  /apis/apiextensions.k8s.io/v1/customresourcedefinitions, Gateway API GatewayClasses, and
  core Namespaces under /api/v1/namespaces[/{name}]), which have no namespace; a namespaced path
  to one of them is 404, as a cluster-scoped-only path to a namespaced kind is;
- core v1 Services (stored as given: no ClusterIP allocation, no endpoints), and GET /version
  (`KubeDouble.version`, the API server's version.Info);
- label selectors (=, ==, !=, in, notin, exists, !exists) and simple field selectors,
  limit/continue paging;
- a monotonic resourceVersion; replace/patch/delete with a stale resourceVersion or uid
  precondition -> 409 Conflict; replace of a custom object without resourceVersion -> 422;
- Status bodies like the API server's (kind Status, apiVersion v1, status Failure, reason, code);
- generateName, uid, creationTimestamp, stringData folded into base64 data, validation of names,
  labels, annotations and Secret data (-> 422 Invalid);
- ownerReferences with garbage collection of dependents when their last owner is deleted
  (background propagation done synchronously; Orphan strips the references), including
  dependents created with an owner that no longer exists.

Fault hooks: `inject_conflicts(n)` (before each of the next n replace/patch/delete requests on an
existing object, a simulated concurrent writer moves its resourceVersion on, so a request
conditioned on the version read gets 409 Conflict; an unconditional one still lands),
`unreachable()` (connections are dropped without an answer), `forbid()` (403 like missing RBAC).

RBAC mode (optional, `KubeDouble(rbac=Rbac(...))`): the double authorizes every request as the
API server's RBAC authorizer would against the `rules` of namespaced Roles bound to one user
and of ClusterRoles bound to it cluster-wide (`cluster_rules`, the only grants that reach
cluster-scoped resources): the request's verb (get, list, watch, create, update, patch, delete,
deletecollection), API group, resource (`plural/subresource` for a subresource) and name are
matched against apiGroups, resources, verbs and resourceNames; a request no rule allows is
answered 403 Forbidden with the API server's message. Every (namespace, group, resource, verb)
asked for is recorded in `rbac.used`, the refused ones in `rbac.denied`. Without `rbac` nothing
is checked.

Identities (what a key manager that signs people in with cluster tokens asks):
- RBAC objects (rbac.authorization.k8s.io/v1 Roles, RoleBindings, ClusterRoles,
  ClusterRoleBindings; the last two cluster-scoped) are stored like any other object, kind and
  apiVersion filled in from the URL when the body names none, as for every built-in kind;
- POST /apis/authentication.k8s.io/v1/tokenreviews authenticates a token registered with
  `add_token(token, username, uid=, groups=, extra=, audiences=)` (until `revoke_token`), as
  pkg/registry/authentication/tokenreview/storage.go does: for spec.audiences, or else the API
  server's own (`api_audiences`); status.audiences is the token's audiences among those asked
  for, and `system:authenticated` is added to the groups. An unknown token is answered
  authenticated: false with the bearer token authenticator's "invalid bearer token", a token
  for other audiences with the service account authenticator's `token audiences [...] is
  invalid for the target audiences [...]`; no token is 400;
- POST /apis/authorization.k8s.io/v1/subjectaccessreviews is validated as
  ValidateSubjectAccessReviewSpec does (422) and decided by `authorize_as`: system:masters is
  allowed everything, else the stored RBAC objects are walked as VisitRulesFor does
  (pkg/registry/rbac/validation/rule.go: ClusterRoleBindings, then the RoleBindings of the
  namespace asked about, bound to the user, a group of it or its ServiceAccount) and matched by
  the same rule matching as RBAC mode, which also answers for the RBAC mode's own user. An
  allowed review has the RBAC authorizer's reason (`RBAC: allowed by ClusterRoleBinding "x" of
  ClusterRole "y" to Group "z"`); a refused one none, or the bindings to missing roles. RBAC
  allows any verb and any resource, served or not, so a verb such as `admin` on a resource no
  API serves is granted and reviewed like any other;
- creating either review is the verb `create` on a cluster-scoped resource: in RBAC mode only
  a ClusterRole grants it. `review_count(resource)` counts the reviews asked for.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from kubernetes.client import ApiClient, Configuration

JSON = dict[str, Any]

# The core resources the product stores: Secrets (teams, keys) and ConfigMaps (audit entries).
CORE_KINDS = {"secrets": "Secret", "configmaps": "ConfigMap", "services": "Service", "namespaces": "Namespace"}
SECRETS = ("", "v1", "secrets")
# (group, plural) of the kinds that live outside namespaces; stored under the namespace "".
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("gateway.networking.k8s.io", "gatewayclasses"),
    ("", "namespaces"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("authentication.k8s.io", "tokenreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
}
RBAC_GROUP = "rbac.authorization.k8s.io"
# Built-in kinds outside the core group: the API server's typed decoder fills in a missing kind
# and apiVersion from the URL for them (only custom objects must name their kind).
BUILTIN_KINDS = {
    (RBAC_GROUP, "v1", "roles"): "Role",
    (RBAC_GROUP, "v1", "rolebindings"): "RoleBinding",
    (RBAC_GROUP, "v1", "clusterroles"): "ClusterRole",
    (RBAC_GROUP, "v1", "clusterrolebindings"): "ClusterRoleBinding",
}
# The review APIs: create-only, answered at once, never stored.
TOKEN_REVIEWS = ("authentication.k8s.io", "v1", "tokenreviews")
ACCESS_REVIEWS = ("authorization.k8s.io", "v1", "subjectaccessreviews")
# The audience of the API server's own tokens when a review names none (kube-apiserver's
# --api-audiences, which defaults to the service account issuer).
API_AUDIENCES = ("https://kubernetes.default.svc",)


def _cluster_scoped(res: tuple[str, str, str]) -> bool:
    return (res[0], res[2]) in CLUSTER_SCOPED


def _is_core(res: tuple[str, str, str]) -> bool:
    return res[0] == "" and res[1] == "v1"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_SECRET_BYTES = 1024 * 1024
_MAX_ANNOTATION_BYTES = 256 * 1024


class ApiError(Exception):
    """An API server failure answer, rendered as a Status body."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def body(self) -> JSON:
        status: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def _details(res: tuple[str, str, str], name: str) -> JSON:
    group, _, plural = res
    details: JSON = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def _qualified(res: tuple[str, str, str]) -> str:
    group, _, plural = res
    return f"{plural}.{group}" if group else plural


def not_found(res: tuple[str, str, str], name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(res)} "{name}" not found', _details(res, name))


def already_exists(res: tuple[str, str, str], name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(res)} "{name}" already exists', _details(res, name))


def conflict(res: tuple[str, str, str], name: str, why: str | None = None) -> ApiError:
    message = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(res)} "{name}": {message}',
        _details(res, name),
    )


def invalid(kind: str, res: tuple[str, str, str], name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = ", ".join(f"{path}: {why}" for path, why in causes)
    details = _details(res, name) | {"kind": kind}
    details["causes"] = [{"reason": "FieldValueInvalid", "message": why, "field": path} for path, why in causes]
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# -- selectors -------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"""\s*(?:
        (?P<not>!)\s*(?P<nkey>[^\s,!=()]+)                                  # !key
      | (?P<skey>[^\s,!=()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)  # key in (a,b)
      | (?P<ekey>[^\s,!=()<>]+)\s*(?P<op>==|=|!=|<|>)\s*(?P<value>[^\s,()]*) # key=value
      | (?P<key>[^\s,!=()]+)                                                 # key
    )\s*(?:,|$)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !exists, =, !=, in, notin, <, >
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present or value is None:
            return False
        try:
            number, bound = int(value), int(self.values[0])
        except ValueError:
            return False
        return number < bound if self.op == "<" else number > bound


def parse_label_selector(text: str) -> list[Requirement]:
    requirements: list[Requirement] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise bad_request(f"unable to parse requirement: found '{text[position:]}', expected: identifier")
        position = match.end()
        if match["nkey"]:
            requirements.append(Requirement(match["nkey"], "!exists"))
        elif match["skey"]:
            values = tuple(v.strip() for v in match["values"].split(",") if v.strip())
            if not values:
                raise bad_request(f"unable to parse requirement: for '{match['setop']}' operator, values set can't be empty")
            requirements.append(Requirement(match["skey"], match["setop"], values))
        elif match["ekey"]:
            op = "=" if match["op"] == "==" else match["op"]
            requirements.append(Requirement(match["ekey"], op, (match["value"],)))
        else:
            requirements.append(Requirement(match["key"], "exists"))
    for requirement in requirements:
        if not _valid_label_key(requirement.key):
            raise bad_request(f"unable to parse requirement: invalid label key \"{requirement.key}\"")
    return requirements


def _field_value(obj: JSON, path: str) -> str | None:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return None if current is None else str(current)


def field_selector_matches(obj: JSON, text: str) -> bool:
    for term in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", term)
        if match is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        path, op, wanted = match.groups()
        if path not in ("metadata.name", "metadata.namespace", "type"):
            raise bad_request(f'"{path}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        equal = (_field_value(obj, path) or "") == wanted
        if equal != (op != "!="):
            return False
    return True


# -- validation ------------------------------------------------------------------------------


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


def _validate_meta(meta: JSON) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    name = meta.get("name", "")
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        causes.append(("metadata.name", f"Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"))
    for key, value in (meta.get("labels") or {}).items():
        if not _valid_label_key(key):
            causes.append(("metadata.labels", f"Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(("metadata.labels", f"Invalid value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        if not _valid_label_key(key.lower()):
            causes.append(("metadata.annotations", f"Invalid value: \"{key}\": name part must consist of alphanumeric characters"))
        if not isinstance(value, str):
            causes.append(("metadata.annotations", f"Invalid value: annotation \"{key}\" must be a string"))
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > _MAX_ANNOTATION_BYTES:
        causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        for required in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(required):
                causes.append((f"metadata.ownerReferences[{index}].{required}", "Required value"))
    return causes


def _fold_secret(obj: JSON) -> list[tuple[str, str]]:
    """Fold stringData into base64 data as the API server does; validate data."""
    causes: list[tuple[str, str]] = []
    data = dict(obj.get("data") or {})
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode("utf-8")).decode("ascii")
    total = 0
    for key, value in data.items():
        if not _SECRET_KEY.match(key):
            causes.append((f"data[{key}]", "Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"))
        try:
            total += len(base64.b64decode(value, validate=True))
        except (binascii.Error, TypeError, ValueError):
            causes.append((f"data[{key}]", "Invalid value: illegal base64 data"))
    if total > _MAX_SECRET_BYTES:
        causes.append(("data", "Too long: must have at most 1048576 bytes"))
    if data:
        obj["data"] = data
    else:
        obj.pop("data", None)
    obj.setdefault("type", "Opaque")
    return causes


def _check_config_map(obj: JSON) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    for key, value in (obj.get("data") or {}).items():
        if not _SECRET_KEY.match(key):
            causes.append((f"data[{key}]", "Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str):
            causes.append((f"data[{key}]", "Invalid value: must be a string"))
    if sum(len(k) + len(str(v)) for k, v in (obj.get("data") or {}).items()) > _MAX_SECRET_BYTES:
        causes.append(("data", "Too long: must have at most 1048576 bytes"))
    return causes


# -- patches ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, operations: list[JSON]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, copy, move)."""
    doc = copy.deepcopy(doc)

    def parent(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        if not parts:
            raise bad_request("the root cannot be patched")
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node = doc
        for part in _pointer(path):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    try:
        for op in operations:
            kind, path = op["op"], op["path"]
            if kind == "test":
                if get(path) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: testing value {path} failed")
                continue
            if kind in ("copy", "move"):
                value = copy.deepcopy(get(op["from"]))
                if kind == "move":
                    holder, last = parent(op["from"])
                    del holder[int(last) if isinstance(holder, list) else last]
                kind, op = "add", {"value": value}
            holder, last = parent(path)
            if kind == "remove":
                del holder[int(last) if isinstance(holder, list) else last]
            elif kind in ("add", "replace"):
                if isinstance(holder, list):
                    index = len(holder) if last == "-" else int(last)
                    if kind == "add":
                        holder.insert(index, op["value"])
                    else:
                        holder[index] = op["value"]
                else:
                    if kind == "replace" and last not in holder:
                        raise KeyError(last)
                    holder[last] = op["value"]
            else:
                raise bad_request(f"unknown patch operation {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from exc
    return doc


# -- the state -------------------------------------------------------------------------------

Key = tuple[str, str, str, str, str]  # group, version, plural, namespace, name


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Cluster:
    """The API server's storage: objects by (group, version, plural, namespace, name)."""

    objects: dict[Key, JSON] = field(default_factory=dict)
    kinds: dict[tuple[str, str, str], str] = field(default_factory=dict)
    revision: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    def next_version(self) -> str:
        self.revision += 1
        return str(self.revision)

    def uids(self) -> set[str]:
        return {obj["metadata"]["uid"] for obj in self.objects.values()}

    def delete(self, key: Key, propagation: str = "Background") -> JSON:
        obj = self.objects.pop(key)
        self.revision += 1
        self.collect(obj["metadata"]["uid"], key[3], propagation)
        return obj

    def collect(self, owner_uid: str, namespace: str, propagation: str = "Background") -> None:
        """The garbage collector, run synchronously: dependents whose owners are all gone go."""
        alive = self.uids()
        for key, obj in list(self.objects.items()):
            if key not in self.objects or key[3] != namespace:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != owner_uid]
            if propagation == "Orphan" or any(ref.get("uid") in alive for ref in remaining):
                obj["metadata"]["ownerReferences"] = remaining
                if not remaining:
                    del obj["metadata"]["ownerReferences"]
                obj["metadata"]["resourceVersion"] = self.next_version()
            else:
                self.delete(key, propagation)

    def collect_orphan(self, key: Key) -> None:
        """A dependent written with owners that no longer exist is collected at once."""
        refs = self.objects[key]["metadata"].get("ownerReferences") or []
        if refs and not any(ref.get("uid") in self.uids() for ref in refs):
            self.delete(key)


# -- RBAC ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """What the authorizer decides on: one request's attributes."""

    namespace: str | None  # None: a cluster-scope request (e.g. a list across all namespaces)
    group: str
    resource: str  # `plural` or `plural/subresource`
    verb: str
    name: str | None = None


def request_verb(method: str, name: str | None, query: dict[str, str]) -> str:
    """The API server's mapping of an HTTP request to an RBAC verb."""
    if method in ("GET", "HEAD"):
        if query.get("watch") in ("true", "1"):
            return "watch"
        return "list" if name is None else "get"
    if method == "DELETE":
        return "deletecollection" if name is None else "delete"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _rule_allows(rule: JSON, access: Access) -> bool:
    """RBAC's rule matching (rbac/v1 helpers): `*`, exact values, `*/subresource`."""

    def listed(field_name: str, value: str) -> bool:
        values = rule.get(field_name) or []
        return "*" in values or value in values

    if not (listed("verbs", access.verb) and listed("apiGroups", access.group)):
        return False
    _, _, subresource = access.resource.partition("/")
    resources = rule.get("resources") or []
    if not (listed("resources", access.resource) or (subresource and f"*/{subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or []
    # A rule naming objects never allows a request without a name (create, list, deletecollection).
    return not names or (access.name is not None and access.name in names)


@dataclass
class Rbac:
    """The rules bound to the one user every request is made as: per namespace of their Role,
    and those of ClusterRoles bound to them by a ClusterRoleBinding (valid everywhere, and the
    only ones that reach cluster-scoped resources such as tokenreviews)."""

    roles: list[tuple[str, list[JSON]]]  # (namespace of the Role, its rules)
    user: str = "system:serviceaccount:default:default"
    used: set[tuple[str | None, str, str, str]] = field(default_factory=set)
    denied: list[Access] = field(default_factory=list)
    cluster_rules: list[JSON] = field(default_factory=list)

    @classmethod
    def from_documents(cls, documents: list[JSON], *, user: str) -> Rbac:
        """The Roles and ClusterRoles among rendered manifests, as bound to `user` (the caller
        picks the ones bound to it; a ClusterRole counts as bound cluster-wide); any other
        document is ignored."""
        rbac = [doc for doc in documents if doc.get("apiVersion") == f"{RBAC_GROUP}/v1"]
        roles = [
            (doc["metadata"]["namespace"], copy.deepcopy(doc.get("rules") or []))
            for doc in rbac
            if doc.get("kind") == "Role"
        ]
        cluster_rules = [copy.deepcopy(rule) for doc in rbac if doc.get("kind") == "ClusterRole" for rule in doc.get("rules") or []]
        return cls(roles=roles, user=user, cluster_rules=cluster_rules)

    def granted(self) -> set[tuple[str | None, str, str, str]]:
        """Every (namespace, group, resource, verb) the rules name explicitly; None for the
        namespace of a ClusterRole's grant."""
        placed: list[tuple[str | None, list[JSON]]] = [*self.roles, (None, self.cluster_rules)]
        return {
            (namespace, group, resource, verb)
            for namespace, rules in placed
            for rule in rules
            for group in rule.get("apiGroups") or []
            for resource in rule.get("resources") or []
            for verb in rule.get("verbs") or []
        }

    def allows(self, access: Access) -> bool:
        if any(_rule_allows(rule, access) for rule in self.cluster_rules):
            return True
        if access.namespace is None:
            return False  # Roles grant within their namespace only; cluster scope needs a ClusterRole
        return any(
            _rule_allows(rule, access)
            for namespace, rules in self.roles
            if namespace == access.namespace
            for rule in rules
        )

    def authorize(self, access: Access) -> None:
        self.used.add((access.namespace, access.group, access.resource, access.verb))
        if self.allows(access):
            return
        self.denied.append(access)
        raise self.forbidden(access)

    def forbidden(self, access: Access) -> ApiError:
        plural = access.resource.split("/")[0]
        subject = f"{plural}.{access.group}" if access.group else plural
        if access.name is not None:
            subject += f' "{access.name}"'
        where = f'in the namespace "{access.namespace}"' if access.namespace is not None else "at the cluster scope"
        message = (
            f'{subject} is forbidden: User "{self.user}" cannot {access.verb} resource "{access.resource}" '
            f'in API group "{access.group}" {where}'
        )
        details: JSON = {"kind": plural}
        if access.group:
            details["group"] = access.group
        if access.name is not None:
            details["name"] = access.name
        return ApiError(403, "Forbidden", message, details)


def _applies_to(subject: JSON, user: str, groups: list[str], binding_namespace: str) -> bool:
    """RBAC's appliesToUser (pkg/registry/rbac/validation/rule.go): a ServiceAccount subject
    without a namespace means the binding's own."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user == name
    if kind == "Group":
        return name in groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user == f"system:serviceaccount:{namespace}:{name}"
    return False


def _describe_subject(subject: JSON, binding_namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


def stored_rules(cluster: Cluster, user: str, groups: list[str], namespace: str | None) -> tuple[list[tuple[str, JSON]], list[str]]:
    """RBAC's VisitRulesFor over the RBAC objects the double stores: the rules of the
    ClusterRoles bound by ClusterRoleBindings, then, for a namespace, those of the Roles and
    ClusterRoles bound by its RoleBindings, each with the API server's description of where it
    comes from; and the errors met (a binding to a role that does not exist)."""
    found: list[tuple[str, JSON]] = []
    errors: list[str] = []

    def role_rules(ref: JSON, binding_namespace: str) -> list[JSON] | None:
        kind, name = ref.get("kind"), ref.get("name", "")
        plural, where = ("clusterroles", "") if kind == "ClusterRole" else ("roles", binding_namespace)
        role = cluster.objects.get((RBAC_GROUP, "v1", plural, where, name))
        if role is None:
            errors.append(f'{kind.lower() if kind else "role"}.{RBAC_GROUP} "{name}" not found')
            return None
        return list(role.get("rules") or [])

    def visit(bindings: list[JSON], binding_namespace: str) -> None:
        for binding in bindings:
            subjects = binding.get("subjects") or []
            subject = next((s for s in subjects if _applies_to(s, user, groups, binding_namespace)), None)
            if subject is None:
                continue
            rules = role_rules(binding.get("roleRef") or {}, binding_namespace)
            if rules is None:
                continue
            ref, meta = binding["roleRef"], binding["metadata"]
            if binding_namespace:
                source = f'RoleBinding "{meta["name"]}/{binding_namespace}"'
            else:
                source = f'ClusterRoleBinding "{meta["name"]}"'
            source += f' of {ref["kind"]} "{ref["name"]}" to {_describe_subject(subject, binding_namespace)}'
            found.extend((source, rule) for rule in rules)

    def listed(plural: str, where: str) -> list[JSON]:
        return [obj for key, obj in sorted(cluster.objects.items()) if key[:4] == (RBAC_GROUP, "v1", plural, where)]

    visit(listed("clusterrolebindings", ""), "")
    if namespace:
        visit(listed("rolebindings", namespace), namespace)
    return found, errors


# -- the HTTP server -------------------------------------------------------------------------


def version_info(git_version: str) -> JSON:
    """GET /version's body for a release such as "v1.31.2" (every field the client requires)."""
    major, minor = git_version.removeprefix("v").split(".")[:2]
    return {
        "major": major, "minor": minor, "gitVersion": git_version, "gitCommit": "0" * 40,
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0",
        "compiler": "gc", "platform": "linux/amd64",
    }


@dataclass(frozen=True)
class TokenUser:
    """Who a bearer token registered in the double authenticates as (TokenReview's UserInfo)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    audiences: tuple[str, ...] = ()  # the token's `aud`; () is the API server's own (API_AUDIENCES)


def _go_strings(values: list[str] | tuple[str, ...]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join(json.dumps(value) for value in values) + "]"


class KubeDouble:
    """The running double: `url`, the state, and the fault hooks."""

    def __init__(self, rbac: Rbac | None = None) -> None:
        self.cluster = Cluster()
        self.rbac = rbac
        # What GET /version answers (the API server's version.Info).
        self.version: JSON = version_info("v1.31.2")
        self._conflicts = 0
        self._dropping = False
        self._forbidden = False
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.tokens: dict[str, TokenUser] = {}  # what TokenReview authenticates (add_token)
        self.api_audiences: tuple[str, ...] = API_AUDIENCES
        handler = type("Handler", (_Handler,), {"double": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="kube-double", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubeDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def api_client(self) -> ApiClient:
        return ApiClient(Configuration(host=self.url))

    # -- fault hooks -------------------------------------------------------------------------

    def inject_conflicts(self, count: int) -> None:
        """A concurrent writer gets in before each of the next `count` replace/patch/delete requests."""
        with self.cluster.lock:
            self._conflicts = count

    @property
    def pending_conflicts(self) -> int:
        return self._conflicts

    @contextmanager
    def unreachable(self) -> Iterator[None]:
        """While inside, every connection is dropped without an answer."""
        self._dropping = True
        try:
            yield
        finally:
            self._dropping = False

    @contextmanager
    def forbid(self) -> Iterator[None]:
        """While inside, every request is answered 403 Forbidden (a ServiceAccount without RBAC)."""
        self._forbidden = True
        try:
            yield
        finally:
            self._forbidden = False

    # -- identities ---------------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        username: str,
        *,
        uid: str = "",
        groups: tuple[str, ...] = (),
        extra: dict[str, list[str]] | None = None,
        audiences: tuple[str, ...] = (),
    ) -> TokenUser:
        """Make TokenReview authenticate `token` as this user (until `revoke_token`)."""
        user = TokenUser(username, uid, tuple(groups), tuple((k, tuple(v)) for k, v in sorted((extra or {}).items())),
                         tuple(audiences))
        with self.cluster.lock:
            self.tokens[token] = user
        return user

    def revoke_token(self, token: str) -> None:
        with self.cluster.lock:
            self.tokens.pop(token, None)

    def review_count(self, resource: str = "tokenreviews") -> int:
        """How many reviews of a kind (tokenreviews, subjectaccessreviews) were asked for."""
        return sum(1 for method, path in self.requests if method == "POST" and path.rstrip("/").endswith(f"/{resource}"))

    def authorize_as(self, user: str, groups: list[str], access: Access) -> tuple[bool, str]:
        """How the API server's authorizers (system:masters, then RBAC) decide `access` for this
        user: (allowed, reason). The RBAC objects stored in the double count, and so do the RBAC
        mode's rules for the user every request is made as."""
        if "system:masters" in groups:
            return True, ""  # the privileged-group authorizer, ahead of RBAC, gives no reason
        if self.rbac is not None and user == self.rbac.user and self.rbac.allows(access):
            return True, f'RBAC: allowed by the double\'s rules for User "{user}"'
        found, errors = stored_rules(self.cluster, user, groups, access.namespace)
        for source, rule in found:
            if _rule_allows(rule, access):
                return True, f"RBAC: allowed by {source}"
        if not errors:
            return False, ""
        return False, "RBAC: " + (errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")

    # -- direct access for tests -------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str, group: str = "", version: str = "v1") -> JSON | None:
        with self.cluster.lock:
            obj = self.cluster.objects.get((group, version, plural, namespace, name))
            return copy.deepcopy(obj)

    def names(self, plural: str, namespace: str, group: str = "", version: str = "v1") -> list[str]:
        with self.cluster.lock:
            return sorted(
                k[4] for k in self.cluster.objects if k[:4] == (group, version, plural, namespace)
            )

    # -- request handling (called by the handler with the cluster lock held) -----------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, content_type: str) -> tuple[int, JSON]:
        if self._forbidden:
            res = _route(path)[0] if _route(path) else ("", "v1", "resources")
            raise ApiError(
                403,
                "Forbidden",
                f'{_qualified(res)} is forbidden: User "system:serviceaccount:default:maas" cannot '
                f'{method.lower()} resource "{res[2]}" in API group "{res[0]}"',
                {"kind": res[2]},
            )
        if path.rstrip("/") == "/version" and method == "GET":
            return 200, copy.deepcopy(self.version)
        routed = _route(path)
        if routed is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res, namespace, name, subresource = routed
        if self.rbac is not None:
            resource = f"{res[2]}/{subresource}" if subresource else res[2]
            self.rbac.authorize(Access(namespace, res[0], resource, request_verb(method, name, query), name))
        if res in (TOKEN_REVIEWS, ACCESS_REVIEWS):
            if namespace is not None or name is not None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return 201, self._token_review(body) if res == TOKEN_REVIEWS else self._access_review(body)
        if _cluster_scoped(res):
            if namespace is not None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            namespace = ""  # the key of cluster-scoped objects
            if name is None and method == "DELETE":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if name is None:
            if method == "GET":
                return 200, self._list(res, namespace or None, query)
            if method == "POST" and namespace is not None:
                return 201, self._create(res, namespace, body, query)
            if method == "DELETE" and namespace is not None:
                return 200, self._delete_collection(res, namespace, query, body)
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        key: Key = (*res, namespace, name)
        if method == "GET":
            return 200, self._get(res, key)
        if method in ("PUT", "PATCH", "DELETE"):
            self._lose_to_concurrent_writer(key)
        if method in ("PUT", "PATCH"):
            if method == "PUT":
                return 200, self._replace(res, key, body, subresource)
            return 200, self._patch(res, key, body, content_type, subresource)
        if method == "DELETE" and subresource is None:
            return 200, self._delete(res, key, body, query)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _token_review(self, body: Any) -> JSON:
        """pkg/registry/authentication/tokenreview/storage.go: the token alone is authenticated,
        for the review's audiences or else the API server's own; a token for other audiences is
        not authenticated (the service account authenticator's error, behind the bearer token
        authenticator's), and an unknown one gets the bearer token authenticator's default error."""
        spec = (body.get("spec") if isinstance(body, dict) else None) or {}
        token = spec.get("token") or ""
        if not token:
            raise bad_request("token is required for TokenReview in authentication")
        wanted = list(spec.get("audiences") or []) or list(self.api_audiences)
        user = self.tokens.get(token)
        status: JSON = {"user": {}}
        if user is None:
            status["error"] = "invalid bearer token"
        else:
            own = list(user.audiences) or list(self.api_audiences)
            common = [audience for audience in own if audience in wanted]
            if not common:
                status["error"] = (
                    f"[invalid bearer token, token audiences {_go_strings(own)} is invalid for the "
                    f"target audiences {_go_strings(wanted)}]"
                )
            else:
                # The authenticated group is added to every authenticated user (AuthenticatedGroupAdder).
                groups = [*user.groups, *(() if "system:authenticated" in user.groups else ("system:authenticated",))]
                info: JSON = {"username": user.username, "groups": groups}
                if user.uid:
                    info["uid"] = user.uid
                if user.extra:
                    info["extra"] = {key: list(values) for key, values in user.extra}
                status = {"authenticated": True, "user": info, "audiences": common}
        return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {}, "spec": spec,
                "status": status}

    def _access_review(self, body: Any) -> JSON:
        """pkg/registry/authorization/subjectaccessreview/rest.go: validated as
        ValidateSubjectAccessReviewSpec does, then decided by `authorize_as`. A user without
        groups is asked about as a member of none; non-resource requests (nonResourceURLs rules
        are not modelled) are allowed to system:masters only."""
        spec = (body.get("spec") if isinstance(body, dict) else None) or {}
        attributes, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        causes: list[tuple[str, str]] = []
        if attributes is not None and non_resource is not None:
            causes.append(("spec.nonResourceAttributes", "Invalid value: cannot be specified in combination with resourceAttributes"))
        if attributes is None and non_resource is None:
            causes.append(("spec.resourceAttributes", "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"))
        if not spec.get("user") and not spec.get("groups"):
            causes.append(("spec.user", 'Invalid value: "": at least one of user or group must be specified'))
        if causes:
            raise invalid("SubjectAccessReview.authorization.k8s.io", ACCESS_REVIEWS, "", causes)
        user, groups = spec.get("user") or "", list(spec.get("groups") or [])
        if attributes is None:
            allowed, reason = "system:masters" in groups, ""
        else:
            resource = attributes.get("resource") or ""
            if attributes.get("subresource"):
                resource += "/" + attributes["subresource"]
            access = Access(attributes.get("namespace") or None, attributes.get("group") or "", resource,
                            attributes.get("verb") or "", attributes.get("name") or None)
            allowed, reason = self.authorize_as(user, groups, access)
        status: JSON = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
                "spec": spec, "status": status}

    def _lose_to_concurrent_writer(self, key: Key) -> None:
        """Another client wrote `key` just before this request: its resourceVersion moved on,
        so a write conditioned on the version this client read fails as on a real server."""
        current = self.cluster.objects.get(key)
        if self._conflicts <= 0 or current is None:
            return
        self._conflicts -= 1
        current["metadata"]["resourceVersion"] = self.cluster.next_version()

    def _kind(self, res: tuple[str, str, str]) -> str:
        if _is_core(res):
            return CORE_KINDS[res[2]]
        return BUILTIN_KINDS.get(res) or self.cluster.kinds.get(res, "")

    def _get(self, res: tuple[str, str, str], key: Key) -> JSON:
        obj = self.cluster.objects.get(key)
        if obj is None:
            raise not_found(res, key[4])
        return obj

    def _list(self, res: tuple[str, str, str], namespace: str | None, query: dict[str, str]) -> JSON:
        requirements = parse_label_selector(query.get("labelSelector", ""))
        field_selector = query.get("fieldSelector", "")
        items = []
        for key in sorted(self.cluster.objects, key=lambda k: (k[3], k[4])):
            if key[:3] != res or (namespace is not None and key[3] != namespace):
                continue
            obj = self.cluster.objects[key]
            labels = obj["metadata"].get("labels") or {}
            if all(r.matches(labels) for r in requirements) and field_selector_matches(obj, field_selector):
                items.append(obj)
        meta: JSON = {"resourceVersion": str(self.cluster.revision)}
        start = 0
        if query.get("continue"):
            try:
                start = int(json.loads(base64.b64decode(query["continue"]))["offset"])
            except (ValueError, KeyError, binascii.Error) as exc:
                raise bad_request("continue key is not valid") from exc
        limit = int(query.get("limit") or 0)
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps({"offset": start + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        kind = self._kind(res) or "List"
        return {
            "kind": f"{kind}List" if kind != "List" else "List",
            "apiVersion": f"{res[0]}/{res[1]}" if res[0] else res[1],
            "metadata": meta,
            "items": items,
        }

    def _prepare(self, res: tuple[str, str, str], obj: Any, namespace: str) -> JSON:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request was in an unknown format")
        obj = copy.deepcopy(obj)
        api_version = f"{res[0]}/{res[1]}" if res[0] else res[1]
        if _is_core(res):
            obj["kind"], obj["apiVersion"] = CORE_KINDS[res[2]], api_version
        elif res in BUILTIN_KINDS:
            obj.setdefault("kind", BUILTIN_KINDS[res])
            obj.setdefault("apiVersion", api_version)
            if (obj["kind"], obj["apiVersion"]) != (BUILTIN_KINDS[res], api_version):
                raise bad_request(f"the body names {obj['apiVersion']} {obj['kind']}, not {api_version} {BUILTIN_KINDS[res]}")
        else:
            if not obj.get("kind"):
                raise bad_request("Object 'Kind' is missing in the request body")
            if obj.get("apiVersion") != api_version:
                raise bad_request(f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version ({api_version})")
            self.cluster.kinds[res] = obj["kind"]
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        if _cluster_scoped(res):
            meta.pop("namespace", None)  # the API server clears it on cluster-scoped kinds
        else:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
        for empty in ("labels", "annotations", "ownerReferences"):
            if empty in meta and not meta[empty]:
                del meta[empty]
        return obj

    def _check(self, res: tuple[str, str, str], obj: JSON) -> None:
        causes = _validate_meta(obj["metadata"])
        if res == SECRETS:
            causes += _fold_secret(obj)
        elif res == ("", "v1", "configmaps"):
            causes += _check_config_map(obj)
        if causes:
            raise invalid(obj["kind"], res, obj["metadata"].get("name", ""), causes)

    def _create(self, res: tuple[str, str, str], namespace: str, body: Any, query: dict[str, str]) -> JSON:
        obj = self._prepare(res, body, namespace)
        meta = obj["metadata"]
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise invalid(obj["kind"], res, "", [("metadata.name", "Required value: name or generateName is required")])
            meta["name"] = prefix + "".join(random.choice(_GENERATE_ALPHABET) for _ in range(5))
        self._check(res, obj)
        key: Key = (*res, namespace, meta["name"])
        if key in self.cluster.objects:
            raise already_exists(res, meta["name"])
        if query.get("dryRun"):
            return obj
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = self.cluster.next_version()
        for server_owned in ("deletionTimestamp", "managedFields", "selfLink"):
            meta.pop(server_owned, None)
        if not _is_core(res):
            meta["generation"] = 1
        self.cluster.objects[key] = obj
        stored = copy.deepcopy(obj)
        self.cluster.collect_orphan(key)
        return stored

    def _store_update(
        self,
        res: tuple[str, str, str],
        key: Key,
        current: JSON,
        updated: JSON,
        subresource: str | None,
        *,
        replacing: bool,
    ) -> JSON:
        meta = updated["metadata"]
        if meta.get("name") != key[4]:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL ({key[4]})")
        wanted_version = meta.get("resourceVersion")
        if wanted_version and wanted_version != current["metadata"]["resourceVersion"]:
            raise conflict(res, key[4])
        if not _is_core(res) and not wanted_version and replacing:
            raise invalid(
                current["kind"], res, key[4],
                [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")],
            )
        if not _is_core(res):
            # A status subresource: the main resource keeps the stored status, /status only status.
            if subresource == "status":
                kept = copy.deepcopy(current)
                kept["status"] = updated.get("status")
                if kept["status"] is None:
                    del kept["status"]
                updated = kept
            elif "status" in current:
                updated["status"] = copy.deepcopy(current["status"])
            else:
                updated.pop("status", None)
        self._check(res, updated)
        for server_owned in ("uid", "creationTimestamp", "generation"):
            if server_owned in current["metadata"]:
                updated["metadata"][server_owned] = current["metadata"][server_owned]
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if updated == current:
            return current  # a no-op write does not move the resourceVersion
        if not _is_core(res) and _spec(updated) != _spec(current):
            updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        updated["metadata"]["resourceVersion"] = self.cluster.next_version()
        self.cluster.objects[key] = updated
        stored = copy.deepcopy(updated)
        self.cluster.collect_orphan(key)
        return stored

    def _replace(self, res: tuple[str, str, str], key: Key, body: Any, subresource: str | None) -> JSON:
        current = self._get(res, key)
        updated = self._prepare(res, body, key[3])
        return self._store_update(res, key, current, updated, subresource, replacing=True)

    def _patch(self, res: tuple[str, str, str], key: Key, body: Any, content_type: str, subresource: str | None) -> JSON:
        current = self._get(res, key)
        kind = content_type.split(";")[0].strip()
        if kind == "application/json-patch+json":
            if not isinstance(body, list):
                raise bad_request("json patch must be a list of operations")
            patched = json_patch(current, body)
        elif kind in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise bad_request("merge patch must be a JSON object")
            patched = merge_patch(current, body)
            if isinstance(body.get("metadata"), dict) and "resourceVersion" not in body["metadata"]:
                patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        else:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json")
        updated = self._prepare(res, patched, key[3])
        return self._store_update(res, key, current, updated, subresource, replacing=False)

    def _delete(self, res: tuple[str, str, str], key: Key, body: Any, query: dict[str, str]) -> JSON:
        current = self._get(res, key)
        options = body if isinstance(body, dict) else {}
        preconditions = options.get("preconditions") or {}
        meta = current["metadata"]
        if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
            raise conflict(res, key[4], f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta["resourceVersion"]:
            raise conflict(
                res, key[4],
                f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy") or "Background"
        if options.get("orphanDependents") is True:
            propagation = "Orphan"
        deleted = self.cluster.delete(key, propagation)
        if _is_core(res):
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": _details(res, key[4]) | {"uid": meta["uid"]},
            }
        return deleted

    def _delete_collection(self, res: tuple[str, str, str], namespace: str, query: dict[str, str], body: Any) -> JSON:
        listed = self._list(res, namespace, {k: v for k, v in query.items() if k in ("labelSelector", "fieldSelector")})
        options = body if isinstance(body, dict) else {}
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy") or "Background"
        deleted = []
        for obj in listed["items"]:
            key: Key = (*res, namespace, obj["metadata"]["name"])
            if key in self.cluster.objects:
                deleted.append(self.cluster.delete(key, propagation))
        return listed | {"items": deleted, "metadata": {"resourceVersion": str(self.cluster.revision)}}


def _spec(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


_CORE_PATH = re.compile(
    r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>secrets|configmaps|services)(?:/(?P<name>[^/]+))?/?$"
)
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")
_GROUP_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>status))?)?/?$"
)


def _route(path: str) -> tuple[tuple[str, str, str], str | None, str | None, str | None] | None:
    match = _CORE_PATH.match(path)
    if match:
        return ("", "v1", match["plural"]), match["ns"], match["name"], None
    match = _NAMESPACE_PATH.match(path)
    if match:
        return ("", "v1", "namespaces"), None, match["name"], None
    match = _GROUP_PATH.match(path)
    if match and match["plural"] != "namespaces":
        return (match["group"], match["version"], match["plural"]), match["ns"], match["name"], match["sub"]
    return None


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # racing clients connect at once; a short backlog costs 1 s SYN retries
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    double: KubeDouble
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        del format, args  # quiet: bodies hold Secret data

    def _serve(self) -> None:
        double = self.double
        if double._dropping:
            self.close_connection = True
            self.connection.close()
            return
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        double.requests.append((self.command, path))
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise bad_request(f"the body of the request could not be decoded: {exc}") from exc
            with double.cluster.lock:
                status, answer = double.handle(
                    self.command, path, query, body, self.headers.get("Content-Type", "application/json")
                )
                payload = json.dumps(answer).encode("utf-8")
        except ApiError as error:
            status, payload = error.code, json.dumps(error.body()).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


@contextmanager
def running_double(rbac: Rbac | None = None) -> Iterator[tuple[KubeDouble, ApiClient]]:
    """A started double (authorizing with `rbac` if given) and a real ApiClient pointed at it."""
    double = KubeDouble(rbac).start()
    client = double.api_client()
    try:
        yield double, client
    finally:
        client.close()
        double.stop()


@pytest.fixture
def kube() -> Iterator[tuple[KubeDouble, ApiClient]]:
    """Fixture: (double, api_client). Import it into a test module to use it."""
    with running_double() as pair:
        yield pair
