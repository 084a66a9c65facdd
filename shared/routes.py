"""The routing table: (method, path template) -> function target, declared once.

The local router, each function's own path check, the OpenAPI document and the cluster's
HTTPRoute are all derived from ROUTES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from shared import schemas
from shared.catalog import listing
from shared.errors import MethodNotAllowed, NotFound
from shared.usage import schemas as usage_schemas

Auth = Literal["admin", "none", "admin_or_key"]
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    target: str
    summary: str
    auth: Auth = "admin"
    success_status: int = 200
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    # An absent body means the request model's defaults (rotate: "revoke at once, same expiry").
    body_optional: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.path))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        return found.groupdict() if found else None


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", "health", "Liveness and store reachability", auth="none", response=schemas.Health),
    Route("GET", "/openapi.json", "openapi", "This API's OpenAPI 3.1 document", auth="none"),
    Route("POST", "/teams", "create_team", "Create a team", success_status=201,
          request=schemas.TeamCreate, response=schemas.TeamPublic),
    Route("GET", "/teams", "list_teams", "List teams (paged)", query=schemas.PageQuery, response=schemas.TeamList),
    Route("GET", "/teams/{team_id}", "get_team", "Get a team with its keys and users", response=schemas.TeamDetail),
    Route("PATCH", "/teams/{team_id}", "update_team", "Update a team (partial, atomic)",
          request=schemas.TeamUpdate, response=schemas.TeamPublic),
    Route("DELETE", "/teams/{team_id}", "delete_team", "Delete a team and its keys", response=schemas.TeamDeleted),
    Route("POST", "/teams/{team_id}/keys", "create_key", "Issue an API key", success_status=201,
          request=schemas.KeyCreate, response=schemas.KeyCreated),
    Route("GET", "/teams/{team_id}/keys", "list_team_keys", "List a team's keys (paged) and users",
          query=schemas.PageQuery, response=schemas.TeamKeys),
    Route("GET", "/users/{user_id}/keys", "list_user_keys", "List a user's keys across teams (paged)",
          query=schemas.PageQuery, response=schemas.UserKeys),
    Route("DELETE", "/keys/{secret_name}", "delete_key", "Delete a key by its handle", response=schemas.KeyDeleted),
    Route("DELETE", "/delete_key", "delete_key_legacy", "Delete a key given the key itself",
          request=schemas.KeyDeleteByValue, response=schemas.KeyDeleted),
    Route("POST", "/keys/{secret_name}/revoke", "revoke_key", "Revoke a key at once (kept, listed as revoked)",
          response=schemas.KeyRevoked),
    Route("POST", "/keys/{secret_name}/rotate", "rotate_key",
          "Issue a successor key; the old one works until its grace period ends", success_status=201,
          request=schemas.KeyRotate, response=schemas.KeyCreated, body_optional=True),
    Route("GET", "/audit", "list_audit", "Admin actions, newest first, filtered and paged",
          query=schemas.AuditQuery, response=schemas.AuditPage),
    Route("GET", "/users/{user_id}/usage", "user_usage", "A user's token usage across teams",
          query=usage_schemas.UsageQuery, response=usage_schemas.UserUsage),
    Route("GET", "/teams/{team_id}/usage", "team_usage", "A team's token usage per user (and a series)",
          query=usage_schemas.TeamUsageQuery, response=usage_schemas.TeamUsage),
    Route("GET", "/models", "list_models", "Models with readiness (admin: all; API key: its models)",
          auth="admin_or_key", response=listing.ModelList),
    Route("GET", "/v1/models", "list_openai_models", "OpenAI model list (admin: all; API key: its models)",
          auth="admin_or_key", response=listing.OpenAIModelList),
)


# CloudEvent targets: deployed as functions like the HTTP ones, fed by Knative Eventing.
EVENT_TARGETS: tuple[str, ...] = ("cleanup",)


def resolve(method: str, path: str, routes: tuple[Route, ...] = ROUTES) -> tuple[Route, dict[str, str]]:
    """Find the route for a request; NotFound or MethodNotAllowed otherwise."""
    allowed: list[str] = []
    for route in routes:
        params = route.match(path)
        if params is None:
            continue
        if route.method == method.upper():
            return route, params
        allowed.append(route.method)
    if allowed:
        raise method_not_allowed(method, path, allowed)
    raise NotFound(f"no such endpoint: {path}")


def method_not_allowed(method: str, path: str, allowed: list[str]) -> MethodNotAllowed:
    """A 405 with the `Allow` header RFC 9110 requires, listing the path's methods."""
    return MethodNotAllowed(
        f"method {method.upper()} is not allowed on {path}", headers={"Allow": ", ".join(sorted(allowed))}
    )


def route_for(target: str, routes: tuple[Route, ...] = ROUTES) -> Route:
    for route in routes:
        if route.target == target:
            return route
    raise KeyError(target)
