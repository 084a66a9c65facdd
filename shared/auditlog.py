"""Reading the audit log (GET /audit): apart from shared/audit.py, which every target imports to
record its calls, so that only the audit target loads the audit's models and the others'
cold starts do not (issue 12)."""

from __future__ import annotations

from shared.context import Context
from shared.schemas import AuditChange, AuditEntryPublic, AuditPage, AuditQuery
from shared.store.base import AuditFilter


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
                changes=None if entry.changes is None else {
                    name: AuditChange(before=before, after=after) for name, (before, after) in entry.changes.items()
                },
            )
            for entry in page
        ],
        next_cursor=str(page[-1].id) if more and page else None,
    )
