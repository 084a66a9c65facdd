"""The audit log: one entry per admin action (who, what, when, outcome), and its reading.

Entries are written by the one HTTP adapter (functions/_http.py) so no endpoint can forget
them. They name the action (the function target), the path with its parameters, the team and
key handle involved, and the status answered; never a request body, never key material.
Writing an entry must never fail the action it records: `record` logs and carries on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.auth import authenticate
from shared.context import Context
from shared.errors import MaasError
from shared.schemas import AuditEntryPublic, AuditPage, AuditQuery
from shared.store.base import AuditEntry, AuditFilter

log = logging.getLogger("maas.audit")

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Action:
    """What the adapter knows about one handled request."""

    action: str
    method: str
    path: str
    outcome: int
    team_id: str | None = None
    secret_name: str | None = None


def actor_of(ctx: Context, authorization: str | None) -> str:
    """Who made the request: "admin", the handle of the API key used, or "anonymous"."""
    try:
        principal = authenticate(ctx.settings, ctx.store, authorization, ctx.clock())
    except MaasError:
        return ANONYMOUS
    if principal.admin or principal.key is None:
        return "admin"
    return principal.key.secret_name


def record(ctx: Context, actor: str, action: Action) -> None:
    entry = AuditEntry(
        at=ctx.clock(),
        actor=actor,
        action=action.action,
        method=action.method,
        path=action.path,
        outcome=action.outcome,
        team_id=action.team_id,
        secret_name=action.secret_name,
    )
    try:
        ctx.store.record_audit(entry=entry)
    except Exception:  # noqa: BLE001 - the action is done; losing its record must not undo it
        log.exception("could not record audit entry for %s %s (%s)", action.method, action.path, action.outcome)


def _outcome_range(outcome: str | None) -> tuple[int | None, int | None]:
    if outcome is None:
        return None, None
    if outcome == "success":
        return 200, 299
    if outcome == "failure":
        # Everything but 2xx; 1xx/3xx are never answered by the admin API.
        return 300, None
    return int(outcome), int(outcome)


def list_audit(ctx: Context, query: AuditQuery) -> AuditPage:
    low, high = _outcome_range(query.outcome)
    where = AuditFilter(
        action=query.action,
        team_id=query.team_id,
        outcome_min=low,
        outcome_max=high,
        since=query.since,
        until=query.until,
        before_id=int(query.cursor) if query.cursor is not None else None,
        # One more than asked tells whether another page follows.
        limit=query.limit + 1,
    )
    found = ctx.store.list_audit(where=where)
    page = found[: query.limit]
    more = len(found) > query.limit
    return AuditPage(
        entries=[
            AuditEntryPublic(
                id=entry.id or 0,
                at=entry.at,
                actor=entry.actor,
                action=entry.action,
                method=entry.method,
                path=entry.path,
                outcome=entry.outcome,
                team_id=entry.team_id,
                secret_name=entry.secret_name,
            )
            for entry in page
        ],
        next_cursor=str(page[-1].id) if more and page else None,
    )
