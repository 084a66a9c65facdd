"""The Store protocol: where teams and API keys live. One contract, several backends.

Records are frozen dataclasses: the store returns them, the core turns them into schemas.
The API key itself is never part of a record; a store sees it once, at `create_key`, and keeps
only what its deployment needs (a SHA-256 in SQLite; the plaintext in the Secret that Authorino
compares against in a cluster).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from shared.rates import Rate, primary_index, short_form_rate

LimitScope = Literal["user", "team"]
KeyStatus = Literal["active", "revoked", "expired"]
MemberRole = Literal["member", "admin"]


@dataclass(frozen=True, slots=True)
class Team:
    team_id: str
    team_name: str
    description: str
    policy: str
    token_limit: int
    time_window: str
    limit_scope: LimitScope
    created_at: datetime
    # Caps on the team's keys, checked by the API layer when a key is made; None: no cap. The
    # lifetime is a duration as given ("90d", "24h"), validated there, stored verbatim here.
    max_keys_per_user: int | None = None
    max_key_lifetime: str | None = None
    # The team's whole list of rates when it has more than the short form (shared/rates.py);
    # (): the short form's one rate. TeamChanges.apply keeps the two in step.
    rates: tuple[Rate, ...] = ()

    @property
    def limits(self) -> tuple[Rate, ...]:
        """Every rate of the team, the primary one included."""
        return self.rates or (short_form_rate(self.token_limit, self.time_window, self.limit_scope),)


@dataclass(frozen=True, slots=True)
class Member:
    """A user's membership of a team. `joined_at` is when the membership was first stored and
    never moves; role and email follow the latest `put_member`."""

    team_id: str
    user_id: str
    role: MemberRole
    user_email: str
    joined_at: datetime


def member_role(key_role: str) -> MemberRole:
    """The membership role a key's `role` field gives its holder: a key only ever said "admin"
    or something else (older keys say "user"), and anything but "admin" is a plain member."""
    return "admin" if key_role == "admin" else "member"


@dataclass(frozen=True, slots=True)
class ApiKey:
    secret_name: str
    key_sha256: str
    team_id: str
    user_id: str
    user_email: str
    role: str
    status: KeyStatus
    created_at: datetime
    models_allowed: tuple[str, ...] = ()
    alias: str = ""
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    # Set when the key was rotated: the handle of its successor. The old key then carries an
    # `expires_at` at the end of its grace period, and the sweep marks it revoked (not expired).
    replaced_by: str | None = None
    # The key's own rates (scope "key"), checked on top of its team's, and its cap on calls in
    # flight; neither can widen what the team allows.
    rates: tuple[Rate, ...] = ()
    max_concurrent: int | None = None
    # The handle of the first key of a rotation chain (None for that first key): the key's own
    # rates and cap are counted under it, so rotating a key never hands its holder fresh budgets.
    lineage: str | None = None

    @property
    def budget_handle(self) -> str:
        """The name the key's own limits are counted under, the same for every key of a chain."""
        return self.lineage or self.secret_name


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """A partial update of a key's lifecycle fields; None means "leave as is"."""

    status: KeyStatus | None = None
    expires_at: datetime | None = None
    replaced_by: str | None = None


# A value in an audit entry's `changes`: what JSON holds without nesting, so both stores keep
# it as text and read back exactly what was written.
AuditValue = str | int | float | bool | None
AuditChanges = Mapping[str, tuple[AuditValue, AuditValue]]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who, what, when, outcome, and for an update what changed. Never key
    material, never a body: `changes` comes from response models, bounded (shared.audit)."""

    at: datetime
    actor: str  # shared.identity.Identity.actor: "oidc:<email>", "admin-key", a key's handle, "anonymous"...
    action: str  # the function target, e.g. "create_key"
    method: str
    path: str
    outcome: int  # the HTTP status answered
    team_id: str | None = None
    secret_name: str | None = None
    id: int | None = None  # assigned by the store, increasing
    # Field -> (before, after), in the order the response model lists them; None: not an update.
    changes: AuditChanges | None = None


def changes_text(changes: AuditChanges | None) -> str | None:
    """`changes` as the JSON text both stores keep: {"field": [before, after], ...}."""
    if not changes:
        return None
    return json.dumps({name: [before, after] for name, (before, after) in changes.items()},
                      ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _is_value(value: object) -> bool:
    return value is None or isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value))


def changes_from_text(text: str | None) -> dict[str, tuple[AuditValue, AuditValue]] | None:
    """What `changes_text` wrote. Anything else (a hand-edited entry) reads as no changes: the
    entry's who, what and when still count, so it is not dropped for this one field."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    changes: dict[str, tuple[AuditValue, AuditValue]] = {}
    for name, pair in data.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_value(v) for v in pair)):
            return None
        changes[name] = (pair[0], pair[1])
    return changes or None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit entries to list, newest first; `before_id` pages (the cursor)."""

    action: str | None = None
    team_id: str | None = None
    outcome_min: int | None = None
    outcome_max: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


# The team fields that may be None, and so may be cleared through `TeamChanges.clear`.
CLEARABLE_TEAM_FIELDS = frozenset({"max_keys_per_user", "max_key_lifetime"})


@dataclass(frozen=True, slots=True)
class TeamChanges:
    """A partial update; None means "leave as is".

    None cannot also mean "remove the cap", so a field to set back to None is named in `clear`
    (only fields of CLEARABLE_TEAM_FIELDS; naming a field both in `clear` and with a value is a
    contradiction and refused).
    """

    team_name: str | None = None
    description: str | None = None
    policy: str | None = None
    token_limit: int | None = None
    time_window: str | None = None
    limit_scope: LimitScope | None = None
    max_keys_per_user: int | None = None
    max_key_lifetime: str | None = None
    # The whole list of rates; excludes the short form's three fields in one change.
    rates: tuple[Rate, ...] | None = None
    clear: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.clear) - CLEARABLE_TEAM_FIELDS
        if unknown:
            raise ValueError(f"cannot clear {sorted(unknown)}: only {sorted(CLEARABLE_TEAM_FIELDS)} may be cleared")
        both = {name for name in self.clear if getattr(self, name) is not None}
        if both:
            raise ValueError(f"{sorted(both)} both given a value and cleared")
        # A plain set or list would make the record unhashable and mutable behind its back.
        object.__setattr__(self, "clear", frozenset(self.clear))

    def apply(self, team: Team) -> Team:
        from dataclasses import replace

        changed: dict[str, object] = {k: v for k, v in self.as_dict().items() if v is not None}
        changed.update(dict.fromkeys(self.clear))
        if self.rates is not None:
            primary = self.rates[primary_index(self.rates)]
            changed.update(token_limit=primary.limit, time_window=primary.window, limit_scope=primary.scope)
            plain = short_form_rate(primary.limit, primary.window, primary.scope)
            changed["rates"] = () if self.rates == (plain,) else self.rates
        elif team.rates and any(name in changed for name in ("token_limit", "time_window", "limit_scope")):
            # The short form edits the list's primary rate, in place and under its own name.
            at = primary_index(team.rates)
            old = team.rates[at]
            primary = replace(old, limit=changed.get("token_limit", old.limit),
                              window=changed.get("time_window", old.window),
                              scope=changed.get("limit_scope", old.scope))
            changed["rates"] = team.rates[:at] + (primary,) + team.rates[at + 1:]
        return replace(team, **changed)

    def as_dict(self) -> dict[str, object]:
        """The value fields (not `clear`), by name."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "clear"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the gateway needs to authenticate and limit, read in one consistent view."""

    teams: dict[str, Team] = field(default_factory=dict)
    keys_by_sha256: dict[str, ApiKey] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreChanges:
    """What changed in a store after a generation: the teams and keys touched (None: deleted),
    as they are at `generation`. For readers that keep a Snapshot and catch up incrementally."""

    generation: int
    teams: dict[str, Team | None] = field(default_factory=dict)
    keys_by_sha256: dict[str, ApiKey | None] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """Teams, their members, and keys. Every method is one atomic operation on the backend
    (the cluster backend's multi-object operations say how close they come).

    Errors: NotFound for an unknown team or key, Conflict for a duplicate,
    BackendUnavailable when the backend cannot be reached.
    """

    def create_team(self, *, team: Team) -> Team: ...

    def get_team(self, *, team_id: str) -> Team: ...

    def list_teams(self, *, after: str | None = None, limit: int | None = None,
                   team_ids: Collection[str] | None = None) -> list[Team]:
        """Teams by team_id: those after `after`, at most `limit`, only `team_ids` if given."""
        ...

    def count_teams(self) -> int: ...

    def update_team(self, *, team_id: str, changes: TeamChanges) -> Team: ...

    def delete_team(self, *, team_id: str) -> list[ApiKey]:
        """Delete the team and, in the same operation, its keys and memberships; return the
        keys removed."""
        ...

    # Memberships change no authentication decision: on their own they do not move
    # `generation()`; delete_member does when it revokes keys.

    def put_member(self, *, member: Member) -> Member:
        """Add a member to an existing team (NotFound otherwise), or change an existing
        member's role and email; `joined_at` stays that of the first put. Returns it as stored."""
        ...

    def get_member(self, *, team_id: str, user_id: str) -> Member:
        """NotFound unless the user is a member of the team."""
        ...

    def list_members(self, *, team_id: str | None = None, user_id: str | None = None,
                     after: str | None = None, limit: int | None = None) -> list[Member]:
        """A team's members by user_id (`after` a user_id), or, given only `user_id`, the user's
        memberships by team_id (`after` a team_id); at most `limit`. One of the two is
        required (ValueError). An unknown team or user has no members: []."""
        ...

    def count_members(self, *, team_id: str | None = None, user_id: str | None = None) -> int:
        """How many `list_members` would list without a page."""
        ...

    def delete_member(self, *, team_id: str, user_id: str) -> tuple[Member, list[ApiKey]]:
        """Remove the membership and revoke (status "revoked") every active key the user holds
        in that team, in one operation; return the membership removed and the keys revoked,
        as they are now. NotFound if the user is not a member."""
        ...

    def create_key(self, *, key: ApiKey, api_key: str, member_only: bool = False) -> ApiKey:
        """Store a key for an existing team (NotFound otherwise), and make its user a member
        of the team if not yet one (role from the key's `role`, `joined_at` its `created_at`);
        an existing member's role and email are left as they are. `member_only`: only for a
        user who is a member when the key is written (Forbidden otherwise), making no
        membership: a removal racing a self-service key is not undone by it."""
        ...

    def get_key(self, *, secret_name: str) -> ApiKey: ...

    def find_key(self, *, key_sha256: str) -> ApiKey | None: ...

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None,
                  in_grace: bool = False, team_ids: Collection[str] | None = None,
                  after: str | None = None, limit: int | None = None, with_rates: bool = False) -> list[ApiKey]:
        """Keys by secret_name; `in_grace`: only rotated keys still active (in their grace
        period); `team_ids`: of those teams only; `after`/`limit`: a page; `with_rates`: only
        keys with rates of their own (what the cluster's rate limits must name)."""
        ...

    def count_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> int: ...

    def key_counts(self, *, team_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        """(keys, distinct users with a key) per team of `team_ids` that has any key: what a
        team's answer counts, without reading each key (a team may have 100,000)."""
        ...

    def key_names(self, *, team_id: str) -> list[str]:
        """The team's key handles, sorted: the detail's `keys`, without reading each key."""
        ...

    def count_active_keys(self, *, team_id: str, user_id: str) -> int:
        """The user's keys in the team whose stored status is "active" (what a per-user cap
        counts). An active key past its `expires_at` still counts until the sweep marks it:
        expiry against the clock is the caller's to check (shared.expiry)."""
        ...

    def delete_key(self, *, secret_name: str) -> ApiKey: ...

    def set_key_status(self, *, secret_name: str, status: KeyStatus) -> ApiKey: ...

    def update_key(self, *, secret_name: str, changes: KeyChanges) -> ApiKey:
        """Change a key's lifecycle fields in one operation (NotFound for an unknown key)."""
        ...

    def touch_keys(self, *, last_used: Mapping[str, datetime]) -> int:
        """Record when keys were last used, in one batch: {secret_name: when}.

        Only moves `last_used_at` forward; unknown handles are skipped (deleted meanwhile).
        Returns how many keys changed. Meant for the gateway, off the request path; it does
        not change what authentication decides, so it need not move `generation()`.
        """
        ...

    def record_audit(self, *, entry: AuditEntry) -> AuditEntry:
        """Append an audit entry; returns it with its id."""
        ...

    def prune_audit(self, *, before: datetime) -> int:
        """Delete the audit entries older than `before`; return how many went."""
        ...

    def list_audit(self, *, where: AuditFilter) -> list[AuditEntry]:
        """Audit entries matching `where`, newest (highest id) first, at most `where.limit`."""
        ...

    def snapshot(self) -> Snapshot: ...

    def generation(self) -> int:
        """A number that changes after every committed write of a team or key (what the
        gateway's view depends on), cheap enough for every request."""
        ...

    def ping(self) -> None:
        """Prove the backend answers, reading nothing: what /health checks, so that its
        unauthenticated caller needs no right to any team or key. BackendUnavailable if not."""
        ...

    def close(self) -> None: ...
