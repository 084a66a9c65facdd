"""Strict validation of Kubernetes objects against the upstream CRD schemas in tests/crds/.

The API server prunes unknown fields silently, so a misspelt field in a generated policy would
be dropped without a word and the policy would do less than we think. Here it fails instead:
every object schema that declares `properties` (and neither `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields`) is closed with `additionalProperties: false`, and
apiVersion, kind and metadata are pinned. Core kinds (Secret, ServiceAccount, Role, RoleBinding,
ClusterRole, ClusterRoleBinding, Namespace, ConfigMap) have no CRD; they get small strict schemas
of the fields we use.

The API server's other two steps are done too, in its order: schema defaults are applied first,
and the `x-kubernetes-validations` CEL rules are evaluated (with cel-python) on every node present
in the object; a rule that is false, or that cannot be evaluated, is a violation. Transition
rules (those reading `oldSelf`) only apply to updates and are skipped.

The CRD folder is the repository's own `tests/crds/` (trimmed upstream copies; their sources and
licences are in its README), or `MAAS_CRDS_DIR` when set, e.g. to check against untrimmed files.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

REPO_ROOT = Path(__file__).resolve().parents[1]
CRDS_DIR_ENV = "MAAS_CRDS_DIR"
FUNC_YAML_SCHEMA = "func_yaml-schema.json"
# Read at import, before the autouse fixture that clears MAAS_* variables for each test.
_CRDS_DIR_OVERRIDE = os.environ.get(CRDS_DIR_ENV)

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class InvalidManifest(AssertionError):
    """An object does not validate; the message lists every violation with its path."""


VENDORED_CRDS = REPO_ROOT / "tests" / "crds"


def crds_dir() -> Path:
    """Where the upstream CRDs are: the env override, else the repository's own copies."""
    candidate = Path(_CRDS_DIR_OVERRIDE) if _CRDS_DIR_OVERRIDE else VENDORED_CRDS
    if not (candidate / FUNC_YAML_SCHEMA).is_file():
        raise FileNotFoundError(f"no CRD folder at {candidate} (it needs {FUNC_YAML_SCHEMA}); check {CRDS_DIR_ENV}")
    return candidate


# ---------------------------------------------------------------- schema preparation


def _strict(schema: Any) -> Any:
    """Close every object schema, translate the Kubernetes OpenAPI extensions to JSON Schema."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _object_meta(namespaced: bool) -> dict[str, Any]:
    """The ObjectMeta fields a manifest may set (everything else is server-owned)."""
    properties: dict[str, Any] = {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": _QUALIFIED_NAME, "maxLength": 317},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
        },
        "annotations": {
            "type": "object",
            "propertyNames": {"pattern": _QUALIFIED_NAME, "maxLength": 317},
            "additionalProperties": {"type": "string"},
        },
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "uid": {"type": "string"},
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
                "additionalProperties": False,
            },
        },
    }
    if namespaced:
        properties["namespace"] = {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL}
    return {
        "type": "object",
        "required": ["name"],
        "properties": properties,
        "additionalProperties": False,
    }


def _pin(schema: dict[str, Any], api_version: str, kind: str, namespaced: bool) -> dict[str, Any]:
    pinned = dict(schema)
    properties = dict(pinned.get("properties", {}))
    properties["apiVersion"] = {"const": api_version}
    properties["kind"] = {"const": kind}
    properties["metadata"] = _object_meta(namespaced)
    # status belongs to the controllers; a manifest that sets it is a mistake.
    properties.pop("status", None)
    pinned["properties"] = properties
    pinned["required"] = sorted({*pinned.get("required", []), "apiVersion", "kind", "metadata"})
    pinned["additionalProperties"] = False
    return pinned


# ---------------------------------------------------------------- core kinds

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_STRING_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}}
# The API's verbs, and `admin`: RBAC takes any verb, and platform admin is that one on a resource
# no API serves (shared.kubeidentity.PLATFORM_ADMIN).
_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "admin"]


def _core_schemas() -> dict[tuple[str, str], tuple[dict[str, Any], bool]]:
    """(apiVersion, kind) -> (schema of the body besides apiVersion/kind/metadata, namespaced)."""
    subject = {
        "type": "object",
        "required": ["kind", "name"],
        "properties": {
            "kind": {"enum": ["ServiceAccount", "User", "Group"]},
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string", "pattern": _DNS_LABEL},
            "apiGroup": {"type": "string"},
        },
    }
    rule = {
        "type": "object",
        "required": ["apiGroups", "resources", "verbs"],
        "properties": {
            "apiGroups": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "resources": {**_STRING_LIST, "minItems": 1},
            "resourceNames": _STRING_LIST,
            "verbs": {"type": "array", "items": {"enum": _VERBS}, "minItems": 1},
        },
    }
    return {
        ("v1", "Secret"): (
            {
                "properties": {
                    "type": {"type": "string"},
                    "stringData": _STRING_MAP,
                    "data": {"type": "object", "additionalProperties": {"type": "string", "contentEncoding": "base64"}},
                    "immutable": {"type": "boolean"},
                }
            },
            True,
        ),
        ("v1", "ConfigMap"): ({"properties": {"data": _STRING_MAP, "immutable": {"type": "boolean"}}}, True),
        ("v1", "ServiceAccount"): (
            {"properties": {"automountServiceAccountToken": {"type": "boolean"}}},
            True,
        ),
        ("v1", "Namespace"): ({"properties": {}}, False),
        ("rbac.authorization.k8s.io/v1", "Role"): (
            {"required": ["rules"], "properties": {"rules": {"type": "array", "items": rule}}},
            True,
        ),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
            {
                "required": ["roleRef", "subjects"],
                "properties": {
                    "roleRef": {
                        "type": "object",
                        "required": ["apiGroup", "kind", "name"],
                        "properties": {
                            "apiGroup": {"const": "rbac.authorization.k8s.io"},
                            "kind": {"enum": ["Role", "ClusterRole"]},
                            "name": {"type": "string", "minLength": 1},
                        },
                    },
                    "subjects": {"type": "array", "items": subject, "minItems": 1},
                },
            },
            True,
        ),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"): (
            {"required": ["rules"], "properties": {"rules": {"type": "array", "items": rule}}},
            False,
        ),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
            {
                "required": ["roleRef", "subjects"],
                "properties": {
                    "roleRef": {
                        "type": "object",
                        "required": ["apiGroup", "kind", "name"],
                        "properties": {
                            "apiGroup": {"const": "rbac.authorization.k8s.io"},
                            "kind": {"const": "ClusterRole"},
                            "name": {"type": "string", "minLength": 1},
                        },
                    },
                    # A ServiceAccount subject of a cluster-wide binding has no binding namespace to default to.
                    "subjects": {"type": "array", "minItems": 1, "items": {
                        **subject,
                        # Open, or the strict closing would make the condition fail on every subject.
                        "if": {"properties": {"kind": {"const": "ServiceAccount"}}, "additionalProperties": True},
                        "then": {"required": ["namespace"]},
                    }},
                },
            },
            False,
        ),
    }


# ---------------------------------------------------------------- catalog


@functools.lru_cache(maxsize=1)
def _sources() -> dict[tuple[str, str], tuple[dict[str, Any], bool]]:
    """(apiVersion, kind) -> (raw schema, namespaced), for every served CRD version and core kind."""
    sources: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(crds_dir().glob("*.yaml")):
        with path.open() as stream:
            documents = list(yaml.load_all(stream, Loader=loader))
        for crd in documents:
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            namespaced = spec.get("scope", "Namespaced") == "Namespaced"
            for version in spec["versions"]:
                if version.get("served", True):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    sources[key] = (version["schema"]["openAPIV3Schema"], namespaced)
    for key, (body, namespaced) in _core_schemas().items():
        sources[key] = ({"type": "object", **body}, namespaced)
    return sources


@functools.lru_cache(maxsize=None)
def _validator_for(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    # Built on first use: closing and checking the KServe schemas takes seconds we rarely need.
    source = _sources().get((api_version, kind))
    if source is None:
        return None
    schema, namespaced = source
    return _validator(_pin(_strict(copy.deepcopy(schema)), api_version, kind, namespaced))


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    # Draft 4 is what OpenAPI v3.0 schemas are written against (boolean exclusiveMinimum etc.).
    # `const` and `propertyNames` are draft-6 keywords; Draft 7 reads draft-4 schemas as well.
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def known_kinds() -> set[tuple[str, str]]:
    return set(_sources())


def validation_errors(obj: Mapping[str, Any]) -> list[str]:
    """Every violation of `obj` against its kind's strict schema and CEL rules, as 'path: message'."""
    if not isinstance(obj, Mapping):
        return [f"<root>: expected an object, got {type(obj).__name__}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    validator = (
        _validator_for(api_version, kind) if isinstance(api_version, str) and isinstance(kind, str) else None
    )
    if validator is None:
        return [f"<root>: no schema for apiVersion={api_version!r} kind={kind!r}"]
    raw_schema = _sources()[(api_version, kind)][0]  # type: ignore[index]
    defaulted = _with_defaults(raw_schema, copy.deepcopy(dict(obj)))
    schema_errors = _format(validator.iter_errors(defaulted))
    if schema_errors:
        # CEL rules assume a structurally valid object; their errors would only add noise.
        return schema_errors
    return list(_cel_errors(raw_schema, defaulted, ""))


def validate(obj: Mapping[str, Any]) -> None:
    """Raise InvalidManifest listing every violation, naming the object."""
    problems = validation_errors(obj)
    if problems:
        name = obj.get("metadata", {}).get("name") if isinstance(obj, Mapping) else None
        label = f"{obj.get('kind') if isinstance(obj, Mapping) else '?'}/{name}"
        raise InvalidManifest(f"{label} is invalid:\n  " + "\n  ".join(problems))


def validate_all(objects: Iterable[Mapping[str, Any]]) -> None:
    for obj in objects:
        validate(obj)


# ---------------------------------------------------------------- defaults and CEL


def _with_defaults(schema: Any, value: Any) -> Any:
    """Apply the schema's `default`s to absent fields, as the API server does before validating."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            if name not in value and isinstance(sub, dict) and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _with_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                if name not in properties:
                    value[name] = _with_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_with_defaults(schema["items"], item) for item in value]
    return value


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    # Kubernetes escapes CEL reserved words used as field names (`namespace`) as `__name__`.
    return environment.program(environment.compile(rule.replace("__namespace__", "namespace")))


def _cel_errors(schema: Any, value: Any, path: str) -> Iterable[str]:
    if not isinstance(schema, dict):
        return
    for validation in schema.get("x-kubernetes-validations") or []:
        rule = validation["rule"]
        if "oldSelf" in rule:
            continue
        try:
            result = _cel_program(rule).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as error:  # noqa: BLE001 - any failure to evaluate is a rejection
            yield f"{path or '<root>'}: CEL rule could not be evaluated ({error}): {rule}"
            continue
        if not (isinstance(result, celtypes.BoolType) and bool(result)):
            yield f"{path or '<root>'}: {validation.get('message') or 'CEL rule failed'} (rule: {rule})"
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _cel_errors(sub, item, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _cel_errors(schema["items"], item, f"{path}[{index}]")


# ---------------------------------------------------------------- func.yaml


@functools.lru_cache(maxsize=1)
def _func_yaml_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((crds_dir() / FUNC_YAML_SCHEMA).read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


def func_yaml_errors(document: Any) -> list[str]:
    return _format(_func_yaml_validator().iter_errors(document))


def validate_func_yaml(document: Any) -> None:
    problems = func_yaml_errors(document)
    if problems:
        raise InvalidManifest("func.yaml is invalid:\n  " + "\n  ".join(problems))


def _format(errors: Iterable[jsonschema.ValidationError]) -> list[str]:
    lines = []
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        lines.append(f"{path or '<root>'}: {error.message}")
    return lines
