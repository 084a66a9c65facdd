"""`maas usage user|team|me|platform`: tokens spent and calls allowed or refused, over a range.

The range is the API's: --window (the last 24h, 7d) or --start/--end (RFC 3339); all time when
none is given. --by picks the breakdown shown in the table; --json shows every breakdown.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

from cli import output
from cli.output import Format, JsonOption, OutputOption
from cli.session import session

app = typer.Typer(help="Token usage per user, per team and per model.", no_args_is_help=True,
                  epilog="""Examples:
  maas usage team test-team --by model
  maas usage user test-user --window 24h
  maas usage me --start 2026-01-01T00:00:00Z
  maas usage platform --window 24h --by user --top 20
""")


# Each usage has its own breakdowns: --by offers (in --help and on Tab) only its own.
class By(str, Enum):
    """The platform's breakdowns."""

    team = "team"
    user = "user"
    model = "model"


class ByTeamOrModel(str, Enum):
    """A user's breakdowns (their own too): across their teams, or their models."""

    team = "team"
    model = "model"


class ByUserOrModel(str, Enum):
    """A team's breakdowns: its members, or its models."""

    user = "user"
    model = "model"


Window = Annotated[str | None, typer.Option("--window", "-w", help="The last 24h, 7d, 30m (up to now or --end).")]
Start = Annotated[str | None, typer.Option("--start", help="From this instant, RFC 3339 (2026-01-01T00:00:00Z).")]
End = Annotated[str | None, typer.Option("--end", help="Up to this instant, RFC 3339 (default: now).")]
ByOption = Annotated[By | None, typer.Option("--by", help="The breakdown to show: team (default), user or model.")]
UserByOption = Annotated[ByTeamOrModel | None, typer.Option("--by", help="The breakdown to show: team (default) or model.")]
TeamByOption = Annotated[ByUserOrModel | None, typer.Option("--by", help="The breakdown to show: user (default) or model.")]
ModelStep = Annotated[str | None, typer.Option(
    "--step", help="Add a series per model in steps of this (1h) to the JSON/YAML answer (needs --window or --start).")]

Breakdowns = dict[str, tuple[str, output.Columns]]
"""The answer's field and the table's columns, by the --by value that shows them."""

_BREAKDOWNS: Breakdowns = {
    "team": ("team_breakdown", [("TEAM", "team_id"), ("NAME", "team_name"), ("TOKENS", "token_usage"),
                                 ("CALLS", "authorized_calls"), ("LIMITED", "limited_calls")]),
    "user": ("user_breakdown", [("USER", "user_id"), ("EMAIL", "user_email"), ("TOKENS", "token_usage"),
                                 ("CALLS", "authorized_calls"), ("LIMITED", "limited_calls")]),
    "model": ("model_breakdown", [("MODEL", "model"), ("TOKENS", "token_usage"), ("CALLS", "authorized_calls"),
                                   ("LIMITED", "limited_calls")]),
}
_TOTALS: output.Columns = (("tokens", "total_token_usage"), ("calls", "total_authorized_calls"),
                           ("limited calls", "total_limited_calls"), ("from", "start"), ("to", "end"),
                           ("as of", "last_updated"))


# The platform's breakdowns count where each team's and user's calls were, not who they are.
_PLATFORM: Breakdowns = {
    "team": ("team_breakdown", [("TEAM", "team_id"), ("NAME", "team_name"), ("TOKENS", "token_usage"),
                                 ("CALLS", "authorized_calls"), ("LIMITED", "limited_calls"), ("USERS", "users")]),
    "user": ("user_breakdown", [("USER", "user_id"), ("TOKENS", "token_usage"), ("CALLS", "authorized_calls"),
                                 ("LIMITED", "limited_calls"), ("TEAMS", "teams")]),
    "model": _BREAKDOWNS["model"],
}


def _show(subject: output.Columns, by: str,
          breakdowns: Breakdowns = _BREAKDOWNS) -> Callable[[dict[str, Any]], None]:
    """`by` is one of the command's own --by choices, which the option has checked."""
    field, columns = breakdowns[by]

    def render(data: dict[str, Any]) -> None:
        output.details(data, [*subject, *_TOTALS])
        print()
        output.table(data.get(field) or [], columns, empty=f"no usage by {by} in this range")

    return render


def _query(window: str | None, start: str | None, end: str | None) -> dict[str, Any]:
    return {"window": window, "start": start, "end": end}


@app.command("user")
def user(
    ctx: typer.Context, user_id: Annotated[str, typer.Argument(metavar="USER_ID", help="The user's id.")],
    window: Window = None, start: Start = None, end: End = None, by: UserByOption = None, step: ModelStep = None,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """A user's usage across their teams (--by team, the default, or model).

    Examples:
      maas usage user test-user
      maas usage user test-user --window 24h --by model
      maas usage user test-user --window 24h --step 1h --json
    """
    render = _show([("user", "user_id")], (by or ByTeamOrModel.team).value)
    with session(ctx).api() as api:
        data = api.get(f"/users/{user_id}/usage", **_query(window, start, end), step=step)
    output.emit(data, output.chosen(out, as_json), render)


@app.command("team")
def team(
    ctx: typer.Context, team_id: Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id.")],
    window: Window = None, start: Start = None, end: End = None, by: TeamByOption = None,
    step: Annotated[str | None, typer.Option("--step", help="Add a series per user in steps of this (1h) to the JSON/YAML answer.")] = None,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """A team's usage per user (--by user, the default, or model).

    Examples:
      maas usage team test-team
      maas usage team test-team --window 7d --by model
      maas usage team test-team --window 24h --step 1h -o yaml
    """
    render = _show([("team", "team_id"), ("name", "team_name")], (by or ByUserOrModel.user).value)
    with session(ctx).api() as api:
        data = api.get(f"/teams/{team_id}/usage", **_query(window, start, end), step=step)
    output.emit(data, output.chosen(out, as_json), render)


@app.command("me")
def me(
    ctx: typer.Context, window: Window = None, start: Start = None, end: End = None, by: UserByOption = None,
    step: ModelStep = None, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Your own usage across your teams (--by team, the default, or model).

    Examples:
      maas usage me --window 24h
      maas usage me --window 7d --step 1d -o yaml
    """
    render = _show([("user", "user_id")], (by or ByTeamOrModel.team).value)
    with session(ctx).api() as api:
        data = api.get("/me/usage", **_query(window, start, end), step=step)
    output.emit(data, output.chosen(out, as_json), render)


@app.command("platform")
def platform(
    ctx: typer.Context, window: Window = None, start: Start = None, end: End = None, by: ByOption = None,
    top: Annotated[int | None, typer.Option("--top", min=1, max=1000, help="How many teams and users to list, by tokens (default 10).")] = None,
    step: Annotated[str | None, typer.Option("--step", help="Add a series per listed team, and one of all, in steps of this (1h) to the JSON/YAML answer.")] = None,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Every team's usage at once, with the top teams and users (--by team, the default, user or model; platform admins).

    Examples:
      maas usage platform --window 24h
      maas usage platform --window 7d --by user --top 50
      maas usage platform --window 24h --step 1h -o yaml
    """
    render = _show([("teams with calls", "teams_with_usage"), ("users with calls", "users_with_usage")],
                   (by or By.team).value, _PLATFORM)
    with session(ctx).api() as api:
        data = api.get("/usage", **_query(window, start, end), step=step, top=top)
    output.emit(data, output.chosen(out, as_json), render)
