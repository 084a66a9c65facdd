"""`maas member add|list|update|remove`: who belongs to a team, and as what (team admins and
platform admins)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from cli import output
from cli.output import Format, JsonOption, OutputOption
from cli.paging import AllOption, CursorOption, LimitOption
from cli.prompts import YesOption, confirm
from cli.session import session

app = typer.Typer(help="Team members and their roles: member (their own keys) or admin (the team's keys and members).",
                  no_args_is_help=True, epilog="""Examples:
  maas member add test-team alice --email alice@example.com --role admin
  maas member list test-team
  maas member remove test-team alice --yes
""")


class Role(str, Enum):
    member = "member"
    admin = "admin"


MEMBER_COLUMNS: output.Columns = (("MEMBER", "user_id"), ("EMAIL", "user_email"), ("ROLE", "role"), ("JOINED", "joined_at"))
MEMBER_FIELDS: output.Columns = (("team", "team_id"), ("member", "user_id"), ("email", "user_email"), ("role", "role"),
                                 ("joined", "joined_at"))

Team = Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id.")]
User = Annotated[str, typer.Argument(metavar="USER_ID", help="The member's user id (as their identity provider names them).")]


def _show(data: dict[str, Any]) -> None:
    output.details(data, MEMBER_FIELDS)


@app.command("add")
def add(
    ctx: typer.Context, team_id: Team, user_id: User,
    email: Annotated[str | None, typer.Option("--email", help="Their email address.")] = None,
    role: Annotated[Role, typer.Option("--role", help="member or admin.")] = Role.member,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Add a member to a team. They may then mint their own keys there (maas key create TEAM).

    Examples:
      maas member add team-a alice --email alice@example.com
      maas member add team-a tara --role admin
    """
    body: dict[str, Any] = {"user_id": user_id, "role": role.value}
    if email is not None:
        body["user_email"] = email
    with session(ctx).api() as api:
        member = api.call("POST", f"/teams/{team_id}/members", json=body)
    output.emit(member, output.chosen(out, as_json), _show)


@app.command("list")
def list_members(
    ctx: typer.Context, team_id: Team, limit: LimitOption = None, cursor: CursorOption = None,
    every: AllOption = False, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """List a team's members and their roles.

    Examples:
      maas member list team-a
      maas member list team-a --all --json
    """
    with session(ctx).api() as api:
        page = api.listing(f"/teams/{team_id}/members", "members", limit=limit, cursor=cursor, every=every)

    def show(data: dict[str, Any]) -> None:
        output.table(data["members"], MEMBER_COLUMNS, empty=f"no members in {team_id} yet: maas member add {team_id} USER")
        output.more(data, f"maas member list {team_id}")

    output.emit(page, output.chosen(out, as_json), show)


@app.command("update")
def update(
    ctx: typer.Context, team_id: Team, user_id: User,
    role: Annotated[Role, typer.Option("--role", help="The new role: member or admin.")],
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Change a member's role.

    Examples:
      maas member update team-a alice --role admin
    """
    with session(ctx).api() as api:
        member = api.call("PATCH", f"/teams/{team_id}/members/{user_id}", json={"role": role.value})
    output.emit(member, output.chosen(out, as_json), _show)


@app.command("remove")
def remove(
    ctx: typer.Context, team_id: Team, user_id: User, yes: YesOption = False,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Remove a member from a team, revoking their keys there (asks first, unless --yes).

    Examples:
      maas member remove team-a alice
      maas member remove team-a alice --yes
    """
    confirm(f"Remove {user_id} from {team_id} and revoke their keys there?", yes=yes)
    with session(ctx).api() as api:
        answer = api.call("DELETE", f"/teams/{team_id}/members/{user_id}")

    def show(data: dict[str, Any]) -> None:
        revoked = data.get("revoked_keys") or []
        print(f"Removed {user_id} from {team_id}; revoked {len(revoked)} key(s)")

    output.emit(answer, output.chosen(out, as_json), show)
