"""The OpenAPI 3.1 document, generated from the routing table and the pydantic schemas."""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.access import WHO
from shared.routes import ROUTES, Route
from shared.fields import PATH_PARAMETERS
from shared.version import VERSION

_REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
# Under /v1 the clients are OpenAI SDKs, so errors there take OpenAI's shape (shared.errors.openai_body).
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}},
        },
    },
}
_ERROR_STATUSES = {
    "400": "Malformed JSON",
    "401": "Missing or invalid credentials",
    "403": "Signed in, without the role this needs (the message names it)",
    "404": "Unknown team, key or endpoint",
    "409": "Duplicate",
    "413": "Body too large",
    "422": "A field failed validation; details name it",
    "503": "A backend (Kubernetes, Prometheus) cannot be reached",
}


def _models() -> list[tuple[type[BaseModel], Literal["validation", "serialization"]]]:
    """Requests are documented as accepted (validation), responses as sent (serialization)."""
    seen: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"]]] = {}
    for route in ROUTES:
        for model in (route.request, route.query):
            if model is not None:
                seen[model.__name__] = (model, "validation")
        if route.response is not None:
            seen[route.response.__name__] = (route.response, "serialization")
    return list(seen.values())


def _path_schema(name: str) -> dict[str, Any]:
    adapter = PATH_PARAMETERS.get(name)
    return {"type": "string"} if adapter is None else adapter.json_schema()


def _query_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A query field's own schema; a parameter is absent rather than null, so drop `null`."""
    field = model.model_json_schema()["properties"][name]
    branches = [b for b in field.get("anyOf", [field]) if b.get("type") != "null"]
    schema = dict(branches[0]) if len(branches) == 1 else {"anyOf": branches}
    for key in ("title", "default", "description"):
        schema.pop(key, None)
    return schema or {"type": "string"}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.target, "summary": route.summary,
                                 "description": f"Who may call it: {WHO[route.access]}."}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
        for name in route.params
    ]
    if route.query is not None:
        for name, field in route.query.model_fields.items():
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": field.is_required(),
                    "schema": _query_schema(route.query, name),
                    "description": field.description or "",
                }
            )
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=route.request.__name__)}}},
        }
    success: dict[str, Any] = {"description": "Success"}
    if route.response is not None:
        success["content"] = {
            "application/json": {"schema": {"$ref": _REF.format(model=route.response.__name__)}}
        }
    responses: dict[str, Any] = {str(route.success_status): success}
    error_model = "OpenAIError" if route.path.startswith("/v1/") else "Error"
    for status, text in _ERROR_STATUSES.items():
        responses[status] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=error_model)}}},
        }
    operation["responses"] = responses
    if route.auth == "admin":
        operation["security"] = [{"AdminKey": []}]
    elif route.auth == "admin_or_key":
        operation["security"] = [{"AdminKey": []}, {"ApiKey": []}]
    return operation


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        _models(),
        ref_template=_REF,
    )
    schemas = dict(definitions.get("$defs", {}))
    schemas["Error"] = _ERROR
    schemas["OpenAIError"] = _OPENAI_ERROR
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MaaS key manager",
            "version": VERSION,
            "description": "Teams with token limits, API keys, usage and models for an LLM platform.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "AdminKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`ADMIN <admin key>`, or `Bearer <admin key | OpenID Connect token | "
                    "Kubernetes token>`",
                },
                "ApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`APIKEY <api key>` or `Bearer <api key>`",
                },
            },
        },
    }
