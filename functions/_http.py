"""The one adapter between Flask requests and the core: parse, authorize, call, answer.

Every HTTP target is `endpoint("<target>")(handler)`: the decorator checks the route of
shared/routes.py (method and path, so a misrouted request gets 404/405, not a wrong answer),
enforces the route's auth, hands the handler a `Call`, and renders the result or the error.

No input is a 500: a body nested past what the JSON reader can hold, a number JSON does not
have (NaN, Infinity, 1e400, thousands of digits) is a 400; an integer beyond int64 (SQLite's
INTEGER) anywhere in a validated request, or a date or duration whose arithmetic leaves
Python's dates, is a 422. Every target also answers `GET /metrics` (its process's refusal
counter, shared.audit) for Prometheus to scrape from the pod; it is no admin route, so the
cluster's HTTPRoute, made from the routing table, never exposes it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import flask
from pydantic import BaseModel, ValidationError

from functions._context import context
from functions._fielderrors import FieldError, field_errors, invalid_field
from shared import audit
from shared.access import Caller, authorize, authorize_key
from shared.context import Context
from shared.store import ApiKey
from shared.errors import (
    InvalidRequest,
    MaasError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    admin_body,
)
from shared.routes import Route, method_not_allowed, route_for
from shared.fields import PATH_PARAMETERS
from shared.settings import ConfigurationError
from shared.signin import SignedIn

log = logging.getLogger("maas.functions")
Model = TypeVar("Model", bound=BaseModel)

METRICS_PATH = "/metrics"
# The console (functions/console) signs people in with a session of its own and calls these targets
# in-process as the person signed in, handed over under this WSGI environ key: no client can set
# one (its headers arrive as HTTP_* keys), so a request from outside signs in with its header.
SIGNED_IN_ENVIRON = "maas.console.signed_in"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# A 422 names this many fields at most: a request of thousands of bad fields (or unknown query
# parameters) gets a short answer that says how many more there were, not one as long as it.
MAX_DETAILS = 20


def _invalid(details: list[FieldError]) -> InvalidRequest:
    shown = details[:MAX_DETAILS]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in shown)
    if len(details) > len(shown):
        summary += f"; and {len(details) - len(shown)} more"
    return InvalidRequest(f"invalid request: {summary}", details=shown)


class _NotAJsonNumber(ValueError):
    pass


def _constant(name: str) -> float:
    raise _NotAJsonNumber(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotAJsonNumber(f"the number {text[:40]} is beyond what a 64-bit float holds")
    return value


# Our bodies are two levels deep; the reader's own limit (RecursionError) depends on the
# interpreter's recursion limit and the stack in use, so the bound is ours and fixed.
MAX_NESTING = 32
_TOO_DEEP = f"request body nests too deeply: at most {MAX_NESTING} levels"


def _nests_deeper(value: object, limit: int) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _parsed_json(raw: bytes) -> object:
    try:
        data = json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise MalformedRequest(_TOO_DEEP) from None
    except _NotAJsonNumber as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MalformedRequest(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise MalformedRequest("request body is not valid JSON: it is not UTF-8 text") from None
    except ValueError:
        # int() refuses more than sys.get_int_max_str_digits() digits (4300).
        raise MalformedRequest("request body is not valid JSON: a number in it has thousands of digits") from None
    if _nests_deeper(data, MAX_NESTING):
        raise MalformedRequest(_TOO_DEEP)
    return data


def _out_of_range(value: object, field: str) -> FieldError | None:
    """The first integer beyond int64 or date beyond UTC's range in a validated value: our
    models bound theirs, this keeps a field added without bounds from reaching SQLite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return invalid_field(field, f"must be between {INT64_MIN} and {INT64_MAX}", "out_of_range")
        return None
    if isinstance(value, datetime):
        try:
            value.astimezone(timezone.utc)
        except OverflowError:
            return invalid_field(field, "is a date beyond what can be stored", "out_of_range")
        return None
    items: list[tuple[str, object]] = []
    if isinstance(value, BaseModel):
        items = [(f"{field}.{name}" if field else name, getattr(value, name)) for name in type(value).model_fields]
    elif isinstance(value, list | tuple | set | frozenset):
        items = [(f"{field}.{n}", item) for n, item in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{field}.{key}", item) for key, item in value.items()]
    for name, item in items:
        found = _out_of_range(item, name)
        if found is not None:
            return found
    return None


def _validated(model: type[Model], data: object) -> Model:
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(field_errors(exc)) from None
    problem = _out_of_range(parsed, "")
    if problem is not None:
        raise _invalid([problem])
    return parsed


@dataclass
class Call:
    request: flask.Request
    ctx: Context
    params: dict[str, str]
    # From the route: an empty body means all defaults (the OpenAPI document says the same).
    body_optional: bool = False
    # The validated body, once parsed: the audit entry of a refused create still names its team.
    parsed: BaseModel | None = None
    # Who signed in (routes with admin credentials); None on public routes and the model listings.
    caller: Caller | None = None
    # What an update changed, field -> (before, after): set by its handler with audit.changed
    # once the change is made, and recorded in the action's audit entry (bounded there).
    changes: Mapping[str, tuple[object, object]] | None = None

    def signed_in(self) -> Caller:
        assert self.caller is not None, "a route that signs in"
        return self.caller

    def may_manage(self, key: ApiKey) -> None:
        """The `key` rule, for a handler that finds its key itself (by value, not by handle)."""
        authorize_key(self.signed_in(), self.ctx.store, key)

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
        data = _parsed_json(raw) if raw.strip() else None
        if not isinstance(data, dict):
            raise MalformedRequest("request body must be a JSON object")
        parsed = _validated(model, data)
        self.parsed = parsed
        return parsed

    def query(self, model: type[Model]) -> Model:
        args = {name: self.request.args.get(name) for name in self.request.args}
        return _validated(model, args)


def _validated_params(params: dict[str, str]) -> dict[str, str]:
    """Path parameters are validated like body fields, so a bad id is a 422 naming it."""
    details: list[FieldError] = []
    for name, value in params.items():
        adapter = PATH_PARAMETERS.get(name)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            details.extend(field_errors(exc, fallback=name)[:1])
    if details:
        raise _invalid(details)
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
           sources: tuple[object, object], status: int,
           changes: Mapping[str, tuple[object, object]] | None = None) -> None:
    """Record the action. The path names the team or key; when it does not, the result does
    (the legacy delete by value), or else the validated body (a refused team create). Without
    valid credentials it is only counted and sampled (shared.audit)."""
    try:
        who = actor or audit.actor_of(ctx, request.headers.get("Authorization"))
        audit.record_request(ctx, who, audit.Action(
            action=route.target,
            method=request.method,
            path=request.path,
            outcome=status,
            team_id=params.get("team_id") or _first_text(sources, "team_id"),
            secret_name=params.get("secret_name") or _first_text(sources, "secret_name"),
            changes=changes,
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


def _signed_in(ctx: Context, request: flask.Request) -> SignedIn:
    handed = request.environ.get(SIGNED_IN_ENVIRON)
    if isinstance(handed, SignedIn):
        return handed
    return ctx.signin().sign_in(request.headers.get("Authorization"))


def _metrics() -> flask.Response:
    return flask.Response(audit.REFUSED.exposition(), status=200,
                          mimetype="text/plain; version=0.0.4; charset=utf-8")


def endpoint(target: str) -> Callable[[Handler], Callable[[flask.Request], flask.Response]]:
    route = route_for(target)

    def decorate(handler: Handler) -> Callable[[flask.Request], flask.Response]:
        def function(request: flask.Request) -> flask.Response:
            if request.path == METRICS_PATH and request.method in ("GET", "HEAD"):
                return _metrics()
            params: dict[str, str] | None = None
            ctx: Context | None = None
            actor: str | None = None
            result: BaseModel | dict[str, Any] | flask.Response | None = None
            call: Call | None = None
            try:
                params = _check_route(route, request)
                ctx = context()
                caller: Caller | None = None
                if route.auth == "admin":
                    signed = _signed_in(ctx, request)
                    caller = Caller.of(signed, ctx.settings)
                    actor = signed.identity.actor
                    authorize(route.access, caller, ctx.store, params=_validated_params(params),
                              query={name: request.args.get(name, "") for name in request.args})
                call = Call(request=request, ctx=ctx, params=_validated_params(params),
                            body_optional=route.body_optional, caller=caller)
                result = handler(call)
                response = (
                    result if isinstance(result, flask.Response) else json_response(result, route.success_status)
                )
            except MaasError as error:
                response = error_response(error)
            except ConfigurationError as error:
                log.error("%s cannot serve: %s", target, error)
                response = error_response(MaasError(f"server misconfigured: {error}"))
            except OverflowError:
                # A date or duration that passed validation but not the arithmetic done on it:
                # still the input's fault. Logged, so the validation can be made to catch it.
                log.warning("%s: input out of range past validation", target, exc_info=True)
                response = error_response(InvalidRequest(
                    "invalid request: a date, duration or number is outside the range this API handles"))
            except RecursionError:
                response = error_response(MalformedRequest("request nests too deeply"))
            except Exception:  # noqa: BLE001 - the one place an unexpected error becomes a 500
                log.exception("unhandled error in %s", target)
                response = error_response(MaasError("internal error"))
            if route.auth != "none" and params is not None and ctx is not None:
                _audit(ctx, route, request, params, actor, (result, call.parsed if call else None),
                       response.status_code, call.changes if call else None)
            elif params is None:
                # Not this function's path: nobody's action, but a refusal all the same.
                audit.REFUSED.count(target, response.status_code)
            return response

        function.__name__ = target
        function.__qualname__ = target
        function.__doc__ = handler.__doc__ or route.summary
        return function

    return decorate
