"""Who may do what on the admin API: one rule per route (shared.routes), decided here.

Roles:
- platform admin: everything (the admin key, an admin group, or a SubjectAccessReview: shared.signin);
- team admin of a team (a membership with role `admin`): the team's members and their keys, its
  usage and audit; not its limits, name or existence;
- member: their own keys (in teams they belong to), their own usage, the models.

Rules:
- `public`: anyone, no credentials.
- `platform`: platform admins.
- `team`: platform admins, and admins of the path's `team_id`.
- `team_query`: platform admins, and admins of the team the query names (`?team_id=`).
- `user`: platform admins, and the user the path's `user_id` names.
- `key`: platform admins, admins of the key's team, and the key's holder (`user_id`).
- `signed_in`: anyone signed in (the `/me` routes answer about the caller only).
- `models`: anyone signed in, or holding an API key (the listing is cut to what they may use).
Anything else is 403 naming the role needed; 401 is for no or bad credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from shared import identifiers
from shared.errors import Forbidden, NotFound
from shared.identity import Identity
from shared.settings import Settings
from shared.store import ApiKey, Store

if TYPE_CHECKING:
    from shared.signin import SignedIn

Rule = Literal["public", "platform", "team", "team_query", "user", "key", "signed_in", "models"]
RULES: tuple[Rule, ...] = ("public", "platform", "team", "team_query", "user", "key", "signed_in", "models")
# Each rule in words, for the OpenAPI document.
WHO: dict[Rule, str] = {
    "public": "anyone",
    "platform": "platform admins",
    "team": "platform admins and the team's admins",
    "team_query": "platform admins, and the admins of the team named by `team_id`",
    "user": "platform admins and the user themselves",
    "key": "platform admins, the admins of the key's team, and the key's holder",
    "signed_in": "anyone signed in (about themselves)",
    "models": "anyone signed in or holding an API key (an API key sees the models it may use)",
}


def team_in_group(group: str, pattern: str) -> str | None:
    """The team id a group names by `pattern` (`maas-{team_id}`), if it is a valid one."""
    prefix, _, suffix = pattern.partition("{team_id}")
    if len(group) <= len(prefix) + len(suffix) or not (group.startswith(prefix) and group.endswith(suffix)):
        return None
    team_id = group[len(prefix): len(group) - len(suffix)]
    return team_id if identifiers.DNS_LABEL_RE.match(team_id) else None


@dataclass(frozen=True)
class Caller:
    """A signed-in caller and what they are to the platform."""

    identity: Identity
    platform_admin: bool
    # MAAS_TEAM_GROUP_PATTERN / MAAS_TEAM_ADMIN_GROUP_PATTERN: groups named for a team give a
    # membership of it, as a member or as an admin (shared.settings keeps the two apart).
    team_group_pattern: str | None = None
    team_admin_group_pattern: str | None = None

    @classmethod
    def of(cls, signed: SignedIn, settings: Settings) -> Caller:
        return cls(signed.identity, signed.platform_admin, settings.team_group_pattern,
                   settings.team_admin_group_pattern)

    @property
    def user_id(self) -> str:
        return self.identity.subject

    def group_roles(self) -> dict[str, str]:
        """The teams the caller's groups name, with the role they give."""
        roles: dict[str, str] = {}
        for group in self.identity.groups:
            if self.team_admin_group_pattern is not None:
                team_id = team_in_group(group, self.team_admin_group_pattern)
                if team_id is not None:
                    roles[team_id] = "admin"
                    continue
            if self.team_group_pattern is not None:
                team_id = team_in_group(group, self.team_group_pattern)
                if team_id is not None:
                    roles.setdefault(team_id, "member")
        return roles

    def role_in(self, store: Store, team_id: str) -> str | None:
        """`admin`, `member`, or None when not a member (a platform admin need not be one): the
        stored membership or the one a group gives, whichever is higher."""
        roles = []
        try:
            roles.append(store.get_member(team_id=team_id, user_id=self.user_id).role)
        except NotFound:
            pass
        granted = self.group_roles().get(team_id)
        if granted is not None:
            try:
                store.get_team(team_id=team_id)  # a group for a team that does not exist gives nothing
                roles.append(granted)
            except NotFound:
                pass
        return "admin" if "admin" in roles else "member" if roles else None

    def is_team_admin(self, store: Store, team_id: str) -> bool:
        return self.platform_admin or self.role_in(store, team_id) == "admin"


def _needs(what: str) -> Forbidden:
    return Forbidden(f"this needs {what}")


def authorize(rule: Rule, caller: Caller, store: Store, *, params: dict[str, str],
              query: dict[str, str]) -> None:
    """Raise Forbidden unless `caller` may call a route with `rule`. Rules that name a key are
    decided by `authorize_key` once the key is read (by handle here, by value in the handler)."""
    if rule in ("public", "signed_in", "models") or caller.platform_admin:
        return
    if rule == "platform":
        raise _needs("a platform admin")
    if rule == "team":
        team_id = params["team_id"]
        if not caller.is_team_admin(store, team_id):
            raise _needs(f"a platform admin or an admin of team '{team_id}'")
        return
    if rule == "team_query":
        team_id = query.get("team_id")
        if not team_id:
            raise _needs("a platform admin (a team admin may list their team's entries: give team_id)")
        if not caller.is_team_admin(store, team_id):
            raise _needs(f"a platform admin or an admin of team '{team_id}'")
        return
    if rule == "user":
        if params["user_id"] != caller.user_id:
            raise _needs(f"a platform admin or the user '{params['user_id']}' themselves")
        return
    if rule == "key":
        if "secret_name" in params:  # else the handler finds the key by value and asks authorize_key
            authorize_key(caller, store, store.get_key(secret_name=params["secret_name"]))
        return
    raise AssertionError(f"no such access rule: {rule}")


def authorize_key(caller: Caller, store: Store, key: ApiKey) -> None:
    if caller.platform_admin or key.user_id == caller.user_id or caller.is_team_admin(store, key.team_id):
        return
    raise _needs(f"a platform admin, an admin of team '{key.team_id}' or the key's holder")
