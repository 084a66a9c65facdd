"""The routing table: (method, path template) -> function target, declared once.

The local router, each function's own path check, the OpenAPI document and the cluster's
HTTPRoute are all derived from ROUTES.

A route names its models without importing them: `schemas.TeamCreate` below is a reference to
shared.schemas' TeamCreate, and `route.request` imports the model on its first read. So the
table costs a function target the import of its own models only, not every target's (issue 12:
a target's cold start), and a route is still declared as one line naming its models.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from typing import Literal, overload

from pydantic import BaseModel

from shared.access import Rule
from shared.errors import MethodNotAllowed, NotFound

# `session`: the console's pages (PAGES), which sign people in with a session cookie of their own.
Auth = Literal["admin", "none", "admin_or_key", "session"]
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class ModelRef:
    """A model by module and name, imported when first resolved."""

    module: str
    name: str

    def resolve(self) -> type[BaseModel]:
        return _model(self.module, self.name)


@functools.cache
def _model(module: str, name: str) -> type[BaseModel]:
    found = getattr(importlib.import_module(module), name)
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise TypeError(f"{module}.{name} is not a pydantic model")
    return found


class Models:
    """A module of models, named without importing it: `Models("shared.schemas").TeamCreate`
    is ModelRef("shared.schemas", "TeamCreate")."""

    __slots__ = ("_module",)

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> ModelRef:
        if name.startswith("_"):  # copy, pickle and friends probing for hooks: no model is private
            raise AttributeError(name)
        return ModelRef(self._module, name)


schemas = Models("shared.schemas")
usage_schemas = Models("shared.usage.schemas")
health = Models("shared.health")
listing = Models("shared.catalog.listing")

Model = type[BaseModel] | ModelRef


class _ModelField:
    """A route's request, response or query model: declared as a model or a ModelRef, read as
    the model, whose module is imported on the field's first read (comparing or printing a
    route reads its fields)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._declared = f"_declared_{name}"

    @overload
    def __get__(self, route: None, owner: type) -> None: ...
    @overload
    def __get__(self, route: Route, owner: type) -> type[BaseModel] | None: ...

    def __get__(self, route: Route | None, owner: type) -> type[BaseModel] | None:
        if route is None:  # the class's: dataclass reads it as the field's default
            return None
        declared: Model | None = route.__dict__[self._declared]
        return declared.resolve() if isinstance(declared, ModelRef) else declared

    def __set__(self, route: Route, value: Model | None) -> None:
        route.__dict__[self._declared] = value  # once, by __init__: the dataclass is frozen


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    target: str
    summary: str
    # Who may call it (shared.access): required, so that no route is added without a rule.
    access: Rule = field(kw_only=True)
    auth: Auth = "admin"
    success_status: int = 200
    request: _ModelField = _ModelField()
    response: _ModelField = _ModelField()
    query: _ModelField = _ModelField()
    # An absent body means the request model's defaults (rotate: "revoke at once, same expiry").
    body_optional: bool = False

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        # Compiled on first use: a function target matches its own route's only.
        regex = _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", self.path)
        return re.compile(f"^{regex}$")

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.path))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        return found.groupdict() if found else None


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", "health", "Liveness and store reachability", access="public", auth="none", response=health.Health),
    Route("GET", "/openapi.json", "openapi", "This API's OpenAPI 3.1 document", access="public", auth="none"),
    Route("POST", "/teams", "create_team", "Create a team", access="platform", success_status=201,
          request=schemas.TeamCreate, response=schemas.TeamPublic),
    Route("GET", "/teams", "list_teams", "List teams (paged)", access="platform", query=schemas.PageQuery, response=schemas.TeamList),
    Route("GET", "/teams/{team_id}", "get_team", "Get a team with its keys and users", access="team", response=schemas.TeamDetail),
    Route("PATCH", "/teams/{team_id}", "update_team", "Update a team (partial, atomic)", access="platform",
          request=schemas.TeamUpdate, response=schemas.TeamPublic),
    Route("DELETE", "/teams/{team_id}", "delete_team", "Delete a team and its keys", access="platform", response=schemas.TeamDeleted),
    Route("POST", "/teams/{team_id}/keys", "create_key", "Issue an API key", access="team", success_status=201,
          request=schemas.KeyCreate, response=schemas.KeyCreated),
    Route("GET", "/teams/{team_id}/keys", "list_team_keys", "List a team's keys (paged) and users", access="team",
          query=schemas.PageQuery, response=schemas.TeamKeys),
    Route("GET", "/teams/{team_id}/members", "list_members", "List a team's members and their roles (paged)",
          access="team", query=schemas.PageQuery, response=schemas.MemberList),
    Route("POST", "/teams/{team_id}/members", "add_member", "Add a member to a team, with a role",
          access="team", success_status=201, request=schemas.MemberCreate, response=schemas.MemberPublic),
    Route("PATCH", "/teams/{team_id}/members/{user_id}", "update_member", "Change a member's role",
          access="team", request=schemas.MemberUpdate, response=schemas.MemberPublic),
    Route("DELETE", "/teams/{team_id}/members/{user_id}", "remove_member",
          "Remove a member from a team, revoking their keys there", access="team", response=schemas.MemberRemoved),
    Route("GET", "/me", "whoami", "Who I am: how I signed in, my teams and roles", access="signed_in",
          response=schemas.Me),
    Route("GET", "/me/keys", "list_my_keys", "My keys across my teams (paged)", access="signed_in",
          query=schemas.PageQuery, response=schemas.UserKeys),
    Route("POST", "/me/keys", "create_my_key", "Issue a key to myself in a team I belong to", access="signed_in",
          success_status=201, request=schemas.MyKeyCreate, response=schemas.KeyCreated),
    Route("GET", "/me/usage", "my_usage", "My token usage across teams", access="signed_in",
          query=usage_schemas.UserUsageQuery, response=usage_schemas.UserUsage),
    Route("GET", "/users/{user_id}/keys", "list_user_keys", "List a user's keys across teams (paged)", access="user",
          query=schemas.PageQuery, response=schemas.UserKeys),
    Route("DELETE", "/keys/{secret_name}", "delete_key", "Delete a key by its handle", access="key", response=schemas.KeyDeleted),
    Route("DELETE", "/delete_key", "delete_key_legacy", "Delete a key given the key itself", access="key",
          request=schemas.KeyDeleteByValue, response=schemas.KeyDeleted),
    Route("POST", "/keys/{secret_name}/revoke", "revoke_key", "Revoke a key at once (kept, listed as revoked)", access="key",
          response=schemas.KeyRevoked),
    Route("POST", "/keys/{secret_name}/rotate", "rotate_key",
          "Issue a successor key; the old one works until its grace period ends", access="key", success_status=201,
          request=schemas.KeyRotate, response=schemas.KeyCreated, body_optional=True),
    Route("GET", "/audit", "list_audit", "Admin actions, newest first, filtered and paged", access="team_query",
          query=schemas.AuditQuery, response=schemas.AuditPage),
    Route("GET", "/users/{user_id}/usage", "user_usage", "A user's token usage across teams", access="user",
          query=usage_schemas.UserUsageQuery, response=usage_schemas.UserUsage),
    Route("GET", "/teams/{team_id}/usage", "team_usage", "A team's token usage per user (and a series)", access="team",
          query=usage_schemas.TeamUsageQuery, response=usage_schemas.TeamUsage),
    Route("GET", "/usage", "platform_usage", "The platform's token usage: totals, top teams and users, a series",
          access="platform", query=usage_schemas.PlatformUsageQuery, response=usage_schemas.PlatformUsage),
    Route("GET", "/teams/{team_id}/limits/explain", "explain_limits",
          "Every limit a user's or key's calls meet, its counter now, and which binds", access="team",
          query=schemas.ExplainQuery, response=schemas.LimitsExplained),
    Route("POST", "/teams/{team_id}/limits/simulate", "simulate_limits",
          "Replay the team's recorded usage against proposed limits: what they would have refused", access="team",
          request=schemas.SimulateRequest, response=schemas.LimitsSimulated),
    Route("GET", "/models", "list_models", "Models with readiness (admin: all; API key: its models)", access="models",
          auth="admin_or_key", response=listing.ModelList),
    Route("GET", "/v1/models", "list_openai_models", "OpenAI model list (admin: all; API key: its models)", access="models",
          auth="admin_or_key", response=listing.OpenAIModelList),
)


# The web console (functions/console): server-rendered pages, one function target beside the API
# on the same origin. Not API routes (no OpenAPI entry, no JSON answers), so a table of their own;
# the local router and the cluster's HTTPRoute serve both (HTTP_ROUTES). The pages are public
# (the sign-in page is one): a page signs its visitor in with a session of its own and does what
# it does by calling the API's targets above in-process as that person, so every action is
# authorized by its API route's rule and audited as that route, never by a rule of the console's.
CONSOLE = "console"
PAGES: tuple[Route, ...] = tuple(
    Route(method, path, CONSOLE, summary, access="public", auth="session")
    for method, path, summary in (
        ("GET", "/", "The console: my keys once signed in, else the sign-in page"),
        ("GET", "/console/signin", "Sign in: the admin key, or the identity provider"),
        ("POST", "/console/signin", "Sign in with the admin key"),
        ("GET", "/console/signin/oidc", "Sign in with the identity provider (authorization code + PKCE)"),
        ("GET", "/console/oidc/callback", "The identity provider's redirect back"),
        ("POST", "/console/signout", "Sign out"),
        ("GET", "/console/keys", "My keys"),
        ("POST", "/console/keys", "Issue a key to myself"),
        ("POST", "/console/keys/{secret_name}/revoke", "Revoke a key"),
        ("POST", "/console/keys/{secret_name}/rotate", "Rotate a key"),
        ("POST", "/console/keys/{secret_name}/delete", "Delete a key"),
        ("GET", "/console/usage", "My usage and budget"),
        ("GET", "/console/models", "The models and their readiness"),
        ("GET", "/console/teams", "Teams (paged)"),
        ("POST", "/console/teams", "Create a team"),
        ("GET", "/console/teams/{team_id}", "A team: limits, members, keys, usage"),
        ("POST", "/console/teams/{team_id}", "Edit a team's limits"),
        ("GET", "/console/teams/{team_id}/delete", "What deleting a team takes with it"),
        ("POST", "/console/teams/{team_id}/delete", "Delete a team"),
        ("POST", "/console/teams/{team_id}/keys", "Issue a key in a team"),
        ("POST", "/console/teams/{team_id}/limits/simulate", "What-if: proposed rates against the team's recorded calls"),
        ("POST", "/console/teams/{team_id}/members", "Add a member"),
        ("POST", "/console/teams/{team_id}/members/{user_id}", "Change a member's role"),
        ("POST", "/console/teams/{team_id}/members/{user_id}/remove", "Remove a member"),
        ("GET", "/console/static/{name}", "The console's stylesheet and script"),
    )
)
# What the local router and the cluster's HTTPRoute send to a function.
HTTP_ROUTES: tuple[Route, ...] = ROUTES + PAGES


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
