"""`maas audit`: who did what, when, with what outcome; newest first."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli import output
from cli.output import Format, JsonOption, OutputOption
from cli.paging import AllOption, CursorOption
from cli.session import session

COLUMNS: output.Columns = (("ID", "id"), ("AT", "at"), ("ACTOR", "actor"), ("ACTION", "action"),
                           ("OUTCOME", "outcome"), ("TEAM", "team_id"), ("KEY", "secret_name"))


def audit(
    ctx: typer.Context,
    action: Annotated[str | None, typer.Option("--action", help="One action, a function target: create_key, delete_team, ...")] = None,
    team_id: Annotated[str | None, typer.Option("--team", "-t", help="One team's entries (all a team admin may see).")] = None,
    outcome: Annotated[str | None, typer.Option("--outcome", help="success (2xx), failure, or one status code (403).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this instant, RFC 3339, inclusive.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this instant, RFC 3339.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=500, help="Entries per page (the API's default: 100, at most 500).")] = None,
    cursor: CursorOption = None, every: AllOption = False,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Admin actions, newest first, filtered.

    Examples:
      maas audit --team test-team
      maas audit --action delete_key --outcome failure
      maas audit --since 2026-01-01T00:00:00Z --until 2026-02-01T00:00:00Z
    """
    filters = {"action": action, "team_id": team_id, "outcome": outcome, "since": since, "until": until}
    with session(ctx).api() as api:
        page = api.listing("/audit", "entries", limit=limit, cursor=cursor, every=every, params=filters)

    def show(data: dict[str, Any]) -> None:
        output.table(data.get("entries") or [], COLUMNS, empty="no audit entries match")
        output.more(data, "maas audit")

    output.emit(page, output.chosen(out, as_json), show)
