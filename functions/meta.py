"""Endpoints about the service itself: health and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import functions_framework

from functions._http import Call, endpoint
from shared.errors import BackendUnavailable
from shared.openapi import openapi_document
from shared.health import Health
from shared.version import VERSION


@functions_framework.http
@endpoint("health")
def health(call: Call) -> Health:
    try:
        call.ctx.store.ping()
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"store unreachable: {exc.message}") from exc
    return Health(status="healthy", store=call.ctx.settings.store, version=VERSION)


@functions_framework.http
@endpoint("openapi")
def openapi(call: Call) -> dict[str, Any]:
    return openapi_document()
