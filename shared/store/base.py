"""The Store protocol: where teams and API keys live. One contract, several backends.

Records are frozen dataclasses: the store returns them, the core turns them into schemas.
The API key itself is never part of a record; a store sees it once, at `create_key`, and keeps
only what its deployment needs (a SHA-256 in SQLite; the plaintext in the Secret that Authorino
compares against in a cluster).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

LimitScope = Literal["user", "team"]
KeyStatus = Literal["active", "revoked", "expired"]


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


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """A partial update of a key's lifecycle fields; None means "leave as is"."""

    status: KeyStatus | None = None
    expires_at: datetime | None = None
    replaced_by: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who, what, when, outcome. Never key material, never a body."""

    at: datetime
    actor: str  # "admin", a key's handle, or "anonymous"
    action: str  # the function target, e.g. "create_key"
    method: str
    path: str
    outcome: int  # the HTTP status answered
    team_id: str | None = None
    secret_name: str | None = None
    id: int | None = None  # assigned by the store, increasing


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


@dataclass(frozen=True, slots=True)
class TeamChanges:
    """A partial update; None means "leave as is"."""

    team_name: str | None = None
    description: str | None = None
    policy: str | None = None
    token_limit: int | None = None
    time_window: str | None = None
    limit_scope: LimitScope | None = None

    def apply(self, team: Team) -> Team:
        from dataclasses import replace

        changed = {k: v for k, v in self.as_dict().items() if v is not None}
        return replace(team, **changed)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


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
    """Teams and keys. Every method is one atomic operation on the backend.

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
        """Delete the team and, in the same operation, its keys; return the keys removed."""
        ...

    def create_key(self, *, key: ApiKey, api_key: str) -> ApiKey:
        """Store a key for an existing team (NotFound otherwise)."""
        ...

    def get_key(self, *, secret_name: str) -> ApiKey: ...

    def find_key(self, *, key_sha256: str) -> ApiKey | None: ...

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None,
                  in_grace: bool = False, team_ids: Collection[str] | None = None,
                  after: str | None = None, limit: int | None = None) -> list[ApiKey]:
        """Keys by secret_name; `in_grace`: only rotated keys still active (in their grace
        period); `team_ids`: of those teams only; `after`/`limit`: a page."""
        ...

    def count_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> int: ...

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
        """A number that changes after every committed write, cheap enough for every request."""
        ...

    def ping(self) -> None:
        """Prove the backend answers, reading nothing: what /health checks, so that its
        unauthenticated caller needs no right to any team or key. BackendUnavailable if not."""
        ...

    def close(self) -> None: ...
