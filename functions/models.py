"""Model listings (quickstart step 6): `/models` with readiness, `/v1/models` as OpenAI lists them.

Both take an API key (the models that key may use), or any admin API sign-in: the admin key, an
OpenID Connect or Kubernetes token (every model: teams do not restrict models, keys do).
"""

from __future__ import annotations

import flask
import functions_framework

from functions._http import Call, endpoint, json_response
from shared.auth import authenticate
from shared.catalog.listing import ModelList, model_list, openai_model_list, visible
from shared.errors import MaasError, Unauthorized, openai_body
from shared.store import ApiKey


def _caller_key(call: Call) -> ApiKey | None:
    """The caller's usable API key, or None for someone signed in (401 otherwise)."""
    header = call.request.headers.get("Authorization")
    try:
        return authenticate(call.ctx.settings, call.ctx.store, header, call.ctx.clock()).key
    except Unauthorized:
        if call.ctx.settings.oidc_issuer is None and call.ctx.settings.store != "kubernetes":
            raise  # the admin key was the only other way, and authenticate tried it
        call.ctx.signin().sign_in(header)
        return None


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
