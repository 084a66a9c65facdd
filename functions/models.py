"""Model listings (quickstart step 6): `/models` with readiness, `/v1/models` as OpenAI lists them.

Both take the admin key (every model) or an API key (the models that key may use).
"""

from __future__ import annotations

import flask
import functions_framework

from functions._http import Call, endpoint, json_response
from shared.auth import authenticate
from shared.catalog.listing import ModelList, model_list, openai_model_list, visible
from shared.errors import MaasError, openai_body
from shared.store import ApiKey


def _caller_key(call: Call) -> ApiKey | None:
    """None for the admin, else the caller's usable API key (401 otherwise)."""
    principal = authenticate(call.ctx.settings, call.ctx.store, call.request.headers.get("Authorization"),
                             call.ctx.clock())
    return principal.key


@functions_framework.http
@endpoint("list_models")
def list_models(call: Call) -> ModelList:
    key = _caller_key(call)
    return model_list(visible(call.ctx.catalog().list_models(), key))


@functions_framework.http
@endpoint("list_openai_models")
def list_openai_models(call: Call) -> flask.Response:
    # Under /v1 clients are OpenAI SDKs: errors take the OpenAI shape here.
    try:
        key = _caller_key(call)
        models = visible(call.ctx.catalog().list_openai_models(), key)
        return json_response(openai_model_list(models))
    except MaasError as error:
        return json_response(openai_body(error), error.status, error.headers)
