"""`maas team create|list|show|update|delete`: teams and their limits (platform admins).

A team's limits are its short form (--token-limit, --time-window, --scope: one token rate) or a
list of rates (--limit SPEC, repeated; cli/limits.py reads a SPEC), not both in one command."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from cli import limits as rates
from cli import members, output
from cli.exitcodes import CliError, ExitCode
from cli.output import Format, JsonOption, OutputOption
from cli.paging import AllOption, CursorOption, LimitOption
from cli.prompts import YesOption, confirm
from cli.session import session

app = typer.Typer(help="Teams: token limits per time window, shared by or given to each member.",
                  no_args_is_help=True, epilog="""Examples:
  maas team create test-team --token-limit 100000 --time-window 1h
  maas team list
  maas team update test-team --token-limit 20 --time-window 1m
  maas team update team-b --limit tokens=20000/1m --limit rpm=requests:60/1m
  maas team delete test-team --yes
""")


class Scope(str, Enum):
    user = "user"
    team = "team"


TEAM_COLUMNS: output.Columns = (
    ("TEAM", "team_id"), ("NAME", "team_name"), ("POLICY", "policy"), ("LIMIT", "token_limit"),
    ("WINDOW", "time_window"), ("SCOPE", "limit_scope"), ("KEYS", "key_count"), ("USERS", "user_count"),
    ("CREATED", "created_at"),
)
TEAM_FIELDS: output.Columns = (
    ("team", "team_id"), ("name", "team_name"), ("description", "description"), ("policy", "policy"),
    ("token limit", "token_limit"), ("time window", "time_window"), ("limit scope", "limit_scope"),
    ("max keys per user", "max_keys_per_user"), ("max key lifetime", "max_key_lifetime"),
    ("keys", "key_count"), ("users", "user_count"), ("created", "created_at"),
)

# On create, with the defaults a team is made with.
Name = Annotated[str | None, typer.Option("--name", help="Display name (default: the team id).")]
Description = Annotated[str | None, typer.Option("--description", help="Free text.")]
Policy = Annotated[str | None, typer.Option("--policy", help="Policy name the keys carry (default: the team id).")]
Limit = Annotated[int | None, typer.Option("--token-limit", help="Tokens per window (default 100000).")]
Window = Annotated[str | None, typer.Option("--time-window", help="Window length: 1h, 30m, 7d (default 1h).")]
ScopeOption = Annotated[Scope | None, typer.Option("--scope", help="user: each member has the budget (default); team: one shared budget.")]
# On update, without: an option left out keeps the team's value, it does not reset it.
NewName = Annotated[str | None, typer.Option("--name", help="Display name.")]
NewPolicy = Annotated[str | None, typer.Option("--policy", help="Policy name the keys carry.")]
NewLimit = Annotated[int | None, typer.Option("--token-limit", help="Tokens per window.")]
NewWindow = Annotated[str | None, typer.Option("--time-window", help="Window length: 1h, 30m, 7d.")]
NewScope = Annotated[Scope | None, typer.Option("--scope", help="user: each member has the budget; team: one shared budget.")]
MaxKeys = Annotated[str | None, typer.Option("--max-keys-per-user", metavar="N|none", help="Active keys a user may hold in the team; none: no cap.")]
MaxLifetime = Annotated[str | None, typer.Option("--max-key-lifetime", metavar="DURATION|none", help="Longest a key may live (90d), and the expiry of keys asked for without one; none: no cap.")]


def _cap(value: str | None, flag: str, *, number: bool) -> tuple[bool, Any]:
    """(given, value) for a cap flag: `none` removes the cap (JSON null)."""
    if value is None:
        return False, None
    if value.lower() == "none":
        return True, None
    if not number:
        return True, value
    try:
        return True, int(value)
    except ValueError:
        raise CliError(f"{flag} takes a whole number or none, not {value!r}", ExitCode.USAGE) from None


def _fields(name: str | None, description: str | None, policy: str | None, limit: int | None, window: str | None,
            scope: Scope | None, max_keys: str | None, max_lifetime: str | None,
            specs: list[str] | None = None) -> dict[str, Any]:
    if specs and (limit is not None or window is not None or scope is not None):
        # The API refuses both too; said here, before anything is sent, with the flags' names.
        raise CliError("--limit or --token-limit/--time-window/--scope, not both", ExitCode.USAGE,
                       hint="the short form is the first token rate of the --limit list: give it there")
    body: dict[str, Any] = {"team_name": name, "description": description, "policy": policy, "token_limit": limit,
                            "time_window": window, "limit_scope": scope.value if scope else None,
                            "limits": rates.specs(specs)}
    body = {field: value for field, value in body.items() if value is not None}
    for field, flag, value, number in (("max_keys_per_user", "--max-keys-per-user", max_keys, True),
                                       ("max_key_lifetime", "--max-key-lifetime", max_lifetime, False)):
        given, parsed = _cap(value, flag, number=number)
        if given:
            body[field] = parsed
    return body


def show_team(data: dict[str, Any]) -> None:
    output.details(data, TEAM_FIELDS)
    if len(data.get("limits") or []) > 1:  # one is the short form, shown above
        print()
        output.table(data["limits"], rates.LIMIT_COLUMNS)


def show_team_detail(data: dict[str, Any]) -> None:
    """GET /teams/{id}: the team, then every limit, its keys' handles and its members, a table each."""
    output.details(data, TEAM_FIELDS)
    team_id = data.get("team_id")
    _section(data.get("limits") or [], rates.LIMIT_COLUMNS, empty="no limits")
    _section([{"secret_name": handle} for handle in data.get("keys") or []], [("KEY", "secret_name")],
             empty=f"no keys yet: maas key create {team_id} USER_ID")
    _section(data.get("users") or [], members.MEMBER_COLUMNS, empty=f"no members yet: maas member add {team_id} USER")


def _section(rows: list[dict[str, Any]], columns: output.Columns, *, empty: str) -> None:
    print()
    output.table(rows, columns, empty=empty)


@app.command("create")
def create(
    ctx: typer.Context,
    team_id: Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id: a DNS label (lowercase letters, digits, '-').")],
    name: Name = None, description: Description = None, policy: Policy = None, limit: Limit = None,
    window: Window = None, scope: ScopeOption = None, max_keys: MaxKeys = None, max_lifetime: MaxLifetime = None,
    specs: rates.SpecsOption = None, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Create a team with a token limit per time window, or with several rates (--limit).

    Examples:
      maas team create test-team --token-limit 100000 --time-window 1h
      maas team create research --name "Research" --time-window 7d --scope team
      maas team create interns --max-keys-per-user 1 --max-key-lifetime 90d
      maas team create team-b --limit tokens=20000/1m --limit rpm=requests:60/1m
      maas team create team-c --limit big=10000/1h,model=vllm-simulator,scope=team
    """
    body = {"team_id": team_id,
            **_fields(name, description, policy, limit, window, scope, max_keys, max_lifetime, specs)}
    with session(ctx).api() as api:
        team = api.call("POST", "/teams", json=body)
    output.emit(team, output.chosen(out, as_json), show_team)


@app.command("list")
def list_teams(
    ctx: typer.Context, limit: LimitOption = None, cursor: CursorOption = None, every: AllOption = False,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """List teams (a page of 100, or --all).

    Examples:
      maas team list
      maas team list --all -o yaml
    """
    with session(ctx).api() as api:
        page = api.listing("/teams", "teams", limit=limit, cursor=cursor, every=every)

    def show(data: dict[str, Any]) -> None:
        output.table(data["teams"], TEAM_COLUMNS, empty="no teams yet: maas team create TEAM_ID")
        output.more(data, "maas team list")

    output.emit(page, output.chosen(out, as_json), show)


@app.command("show")
def show(
    ctx: typer.Context, team_id: Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id.")],
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Show a team: its limits, its keys' handles and its members.

    Examples:
      maas team show test-team
      maas team show test-team --json
    """
    with session(ctx).api() as api:
        team = api.get(f"/teams/{team_id}")
    output.emit(team, output.chosen(out, as_json), show_team_detail)


@app.command("update")
def update(
    ctx: typer.Context, team_id: Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id.")],
    name: NewName = None, description: Description = None, policy: NewPolicy = None, limit: NewLimit = None,
    window: NewWindow = None, scope: NewScope = None, max_keys: MaxKeys = None, max_lifetime: MaxLifetime = None,
    specs: rates.SpecsOption = None, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Change a team: only the fields given, all at once. The gateway applies it from the next request.

    An option left out keeps the team's current value: nothing is reset to a default.

    --limit replaces every rate of the team with those given; --token-limit/--time-window/--scope
    change its first token rate over every model only, and keep the others.

    Examples:
      maas team update test-team --token-limit 20 --time-window 1m
      maas team update team-b --limit tokens=20000/1m --limit rpm=requests:60/1m
      maas team update test-team --max-keys-per-user none
    """
    body = _fields(name, description, policy, limit, window, scope, max_keys, max_lifetime, specs)
    if not body:
        raise CliError("nothing to change", ExitCode.USAGE, hint="give at least one of --token-limit, --limit, --name, ... "
                                                               "(maas team update --help)")
    with session(ctx).api() as api:
        team = api.call("PATCH", f"/teams/{team_id}", json=body)
    output.emit(team, output.chosen(out, as_json), show_team)


@app.command("delete")
def delete(
    ctx: typer.Context, team_id: Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id.")], yes: YesOption = False,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Delete a team and every key in it (asks first, unless --yes).

    Examples:
      maas team delete test-team
      maas team delete test-team --yes
    """
    with session(ctx).api() as api:
        if not yes:
            keys = api.get(f"/teams/{team_id}").get("key_count", 0)  # a 404 before asking about nothing
            confirm(f"Delete team {team_id} and its {keys} key(s)?", yes=yes)
        answer = api.call("DELETE", f"/teams/{team_id}")

    def render(data: dict[str, Any]) -> None:
        print(f"Deleted team {data.get('team_id')} and {data.get('keys_deleted')} key(s)")

    output.emit(answer, output.chosen(out, as_json), render)
