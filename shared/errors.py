"""One error hierarchy for the whole product; each error carries its HTTP meaning.

    MaasError (500)
    ├── MalformedRequest      400  body is not JSON / not an object
    ├── InvalidRequest        422  a field fails validation (details name the field)
    ├── Unauthorized          401  bad or missing credentials
    ├── Forbidden             403  credential valid, action not allowed (e.g. model not allowed)
    ├── NotFound              404  unknown team, key, route or model
    ├── MethodNotAllowed      405
    ├── RequestTimeout        408  a client did not finish sending its request in time
    ├── Conflict              409  duplicate
    ├── PayloadTooLarge       413
    ├── RateLimited           429  over the token limit (carries rate-limit headers)
    ├── UpstreamError         502  a model backend failed
    ├── BackendUnavailable    503  Kubernetes / Prometheus / Redis / a store cannot be reached (says which)
    └── UpstreamTimeout       504  a model backend timed out

Adapters translate library errors (sqlite3, ApiException, aiohttp, Prometheus) into these with
`raise ... from exc`; `admin_body` and `openai_body` are the only two renderings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class MaasError(Exception):
    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])
        self.headers = dict(headers or {})


class MalformedRequest(MaasError):
    status = 400
    openai_type = "invalid_request_error"
    code = "malformed_request"


class InvalidRequest(MaasError):
    status = 422
    openai_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(MaasError):
    status = 401
    openai_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str = "missing or invalid credentials", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class Forbidden(MaasError):
    status = 403
    openai_type = "permission_error"
    code = "forbidden"


class NotFound(MaasError):
    status = 404
    openai_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(MaasError):
    status = 405
    openai_type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(MaasError):
    status = 408
    openai_type = "invalid_request_error"
    code = "request_timeout"


class Conflict(MaasError):
    status = 409
    openai_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(MaasError):
    status = 413
    openai_type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(MaasError):
    status = 429
    openai_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # Which limit refused (name, unit, window, reset): in the body, so a client can tell.
        self.limit = dict(limit) if limit is not None else None


class UpstreamError(MaasError):
    status = 502
    openai_type = "server_error"
    code = "upstream_error"


class BackendUnavailable(MaasError):
    status = 503
    openai_type = "server_error"
    code = "backend_unavailable"


class UpstreamTimeout(MaasError):
    status = 504
    openai_type = "server_error"
    code = "upstream_timeout"


def admin_body(error: MaasError) -> dict[str, Any]:
    """The admin endpoints' error shape: {"error": message[, "details": [...]]}."""
    body: dict[str, Any] = {"error": error.message}
    if error.details:
        body["details"] = error.details
    return body


def openai_body(error: MaasError) -> dict[str, Any]:
    """The OpenAI error shape used on /v1/* and by the gateway."""
    body: dict[str, Any] = {"message": error.message, "type": error.openai_type, "code": error.code}
    if isinstance(error, RateLimited) and error.limit is not None:
        body["limit"] = error.limit
    return {"error": body}


def not_a_member(team_id: str) -> Forbidden:
    """A self-service key for someone who is (no longer) a member of the team."""
    return Forbidden(f"this needs a member of team '{team_id}' (a team admin adds you: POST /teams/{team_id}/members)")
