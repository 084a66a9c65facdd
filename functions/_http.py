"""The one adapter between Flask requests and the core: parse, authorize, call, answer.

Every HTTP target is `endpoint("<target>")(handler)`: the decorator checks the route of
shared/routes.py (method and path, so a misrouted request gets 404/405, not a wrong answer),
enforces the route's auth, hands the handler a `Call`, and renders the result or the error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import flask
from pydantic import BaseModel, ValidationError

from functions._context import context
from shared import audit
from shared.auth import require_admin
from shared.context import Context
from shared.errors import (
    InvalidRequest,
    MaasError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    admin_body,
)
from shared.routes import Route, method_not_allowed, route_for
from shared.schemas import PATH_PARAMETERS
from shared.settings import ConfigurationError

log = logging.getLogger("maas.functions")
Model = TypeVar("Model", bound=BaseModel)

# Path parameters are validated like body fields, so a bad id is a 422 naming it.


def _field_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, str]]:
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in (*prefix, *error["loc"])) or "body"
        details.append({"field": location, "message": error["msg"]})
    return details


def _invalid(details: list[dict[str, str]]) -> InvalidRequest:
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return InvalidRequest(f"invalid request: {summary}", details=details)


@dataclass
class Call:
    request: flask.Request
    ctx: Context
    params: dict[str, str]
    # From the route: an empty body means all defaults (the OpenAPI document says the same).
    body_optional: bool = False
    # The validated body, once parsed: the audit entry of a refused create still names its team.
    parsed: BaseModel | None = None

    def body(self, model: type[Model]) -> Model:
        """The JSON body as `model`; when the route's body is optional, none means all defaults."""
        limit = self.ctx.settings.max_body_bytes
        if self.request.content_length is not None and self.request.content_length > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        raw = self.request.stream.read(limit + 1)
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        if self.body_optional and not raw.strip():
            raw = b"{}"
        try:
            data = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MalformedRequest("request body must be a JSON object")
        try:
            self.parsed = model.model_validate(data)
        except ValidationError as exc:
            raise _invalid(_field_errors(exc)) from None
        return self.parsed  # type: ignore[return-value]

    def query(self, model: type[Model]) -> Model:
        args = {name: self.request.args.get(name) for name in self.request.args}
        try:
            return model.model_validate(args)
        except ValidationError as exc:
            raise _invalid(_field_errors(exc)) from None


def _validated_params(params: dict[str, str]) -> dict[str, str]:
    details = []
    for name, value in params.items():
        adapter = PATH_PARAMETERS.get(name)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            details.extend(_field_errors(exc, (name,)))
    if details:
        raise _invalid([{**d, "field": d["field"].split(".")[0]} for d in details])
    return params


def json_response(payload: BaseModel | dict[str, Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> flask.Response:
    text = (
        payload.model_dump_json()
        if isinstance(payload, BaseModel)
        else json.dumps(payload, separators=(",", ":"))
    )
    # The final newline keeps a terminal's prompt (and the next curl's output) off the JSON's line.
    return flask.Response(text + "\n", status=status, mimetype="application/json", headers=headers)


def error_response(error: MaasError) -> flask.Response:
    return json_response(admin_body(error), error.status, error.headers)


def _check_route(route: Route, request: flask.Request) -> dict[str, str]:
    params = route.match(request.path)
    if params is None:
        raise NotFound(f"no such endpoint: {request.path}")
    if request.method != route.method:
        raise method_not_allowed(request.method, request.path, [route.method])
    return params


def _audit(ctx: Context, route: Route, request: flask.Request, params: dict[str, str], actor: str | None,
           sources: tuple[object, object], status: int) -> None:
    """Record the action. The path names the team or key; when it does not, the result does
    (the legacy delete by value), or else the validated body (a refused team create)."""
    try:
        who = actor or audit.actor_of(ctx, request.headers.get("Authorization"))
        audit.record(ctx, who, audit.Action(
            action=route.target,
            method=request.method,
            path=request.path,
            outcome=status,
            team_id=params.get("team_id") or _first_text(sources, "team_id"),
            secret_name=params.get("secret_name") or _first_text(sources, "secret_name"),
        ))
    except Exception:  # noqa: BLE001 - auditing must never fail the action it records
        log.exception("audit failed for %s", route.target)


def _first_text(sources: tuple[object, ...], name: str) -> str | None:
    for source in sources:
        value = getattr(source, name, None) if isinstance(source, BaseModel) else None
        if isinstance(value, str):
            return value
    return None


Handler = Callable[[Call], BaseModel | dict[str, Any] | flask.Response]


def endpoint(target: str) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    route = route_for(target)

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        def function(request: flask.Request) -> flask.Response:
            params: dict[str, str] | None = None
            ctx: Context | None = None
            actor: str | None = None
            result: BaseModel | dict[str, Any] | flask.Response | None = None
            call: Call | None = None
            try:
                params = _check_route(route, request)
                ctx = context()
                if route.auth == "admin":
                    require_admin(ctx.settings, request.headers.get("Authorization"))
                    actor = "admin"
                call = Call(request=request, ctx=ctx, params=_validated_params(params),
                            body_optional=route.body_optional)
                result = handler(call)
                response = (
                    result if isinstance(result, flask.Response) else json_response(result, route.success_status)
                )
            except MaasError as error:
                response = error_response(error)
            except ConfigurationError as error:
                log.error("%s cannot serve: %s", target, error)
                response = error_response(MaasError(f"server misconfigured: {error}"))
            except Exception:  # noqa: BLE001 - the one place an unexpected error becomes a 500
                log.exception("unhandled error in %s", target)
                response = error_response(MaasError("internal error"))
            if route.auth != "none" and params is not None and ctx is not None:
                _audit(ctx, route, request, params, actor, (result, call.parsed if call else None),
                       response.status_code)
            return response

        function.__name__ = target
        function.__qualname__ = target
        function.__doc__ = handler.__doc__ or route.summary
        return function

    return decorate
