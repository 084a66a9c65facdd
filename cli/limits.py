"""`maas limits show|explain|simulate|me`: a team's rates, which of them binds now, what proposed
ones would have refused, and a key holder's own view.

A rate on the command line is a SPEC, `NAME=[UNIT:]LIMIT/WINDOW[,scope=user|team][,model=M]`
(UNIT tokens, the default, or requests), as `maas team create|update --limit` and
`maas key create --limit` take it too (shared/ratespec.py, which the console's forms share). It
is only split into the API's fields here: the API checks them and its 422 says what is wrong.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from cli import output
from cli.client import Api, trust_for
from cli.config import Credential, normalize_url
from cli.exitcodes import CliError, ExitCode
from cli.output import Format, JsonOption, OutputOption
from cli.prompts import read_secret
from cli.session import session
from shared import ratespec
from shared.ratespec import KEY_SPEC_SYNTAX, SPEC_SYNTAX

app = typer.Typer(help="A team's rates: show them, explain which binds now, simulate proposed ones.",
                  no_args_is_help=True, epilog="""Examples:
  maas limits show test-team
  maas limits explain test-team --user test-user
  maas limits simulate test-team -l tokens=20000/1m -l rpm=requests:60/1m
  API_KEY=... maas limits me
""")

DEFAULT_GATEWAY = "http://127.0.0.1:8000"  # make run's gateway

LIMIT_COLUMNS: output.Columns = (("NAME", "name"), ("UNIT", "unit"), ("LIMIT", "limit"), ("WINDOW", "window"),
                                 ("SCOPE", "scope"), ("MODEL", "model"))
_STATE_COLUMNS: output.Columns = (
    ("NAME", "name"), ("UNIT", "unit"), ("LIMIT", "per"), ("SCOPE", "scope"), ("MODEL", "model"),
    ("SPENT", "spent"), ("RESERVED", "reserved"), ("REMAINING", "remaining"), ("RESETS IN", "resets"),
    ("BINDING", "binds"),
)
_USER_COLUMNS: output.Columns = (
    ("USER", "user_id"), ("REQUESTS", "requests"), ("TOKENS", "tokens"), ("REFUSED REQUESTS", "refused_requests"),
    ("REFUSED TOKENS", "refused_tokens"), ("REFUSED BY", "by"),
)


def parse_spec(text: str, *, for_key: bool = False) -> dict[str, Any]:
    """One --limit SPEC as the API's rate object; a usage error that shows the syntax if it is none."""
    try:
        return ratespec.parse_spec(text, for_key=for_key)
    except ratespec.SpecError as exc:
        raise CliError(f"--limit {text!r}: {exc}", ExitCode.USAGE,
                       hint=f"write it as {KEY_SPEC_SYNTAX if for_key else SPEC_SYNTAX}") from None


spec_text = ratespec.spec_text


TeamId = Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team's id.")]
SpecsOption = Annotated[list[str] | None, typer.Option(
    "--limit", "-l", metavar="SPEC",
    help="A rate (repeat it for several): NAME=[UNIT:]LIMIT/WINDOW, then ,scope=team or ,model=M if need be; "
         "UNIT tokens (default) or requests. E.g. tokens=20000/1m, rpm=requests:60/1m,scope=team. The first "
         "token rate over every model is the team's token limit.")]


def specs(given: list[str] | None, *, for_key: bool = False) -> list[dict[str, Any]] | None:
    """The `limits` a repeated --limit gives; None when none was given."""
    return [parse_spec(text, for_key=for_key) for text in given] if given else None


def _duration(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    if seconds <= 0:
        return "not open"  # no window yet: the next call opens one
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value) or "0s"


def show_states(states: list[dict[str, Any]]) -> None:
    """Limits with their counters (explain's and GET /v1/me's `limits`), the binding one marked."""
    rows = [{**state, "per": f"{state.get('limit')}/{state.get('window')}", "resets": _duration(state.get("reset_seconds")),
             "binds": "<- binds" if state.get("binding") else ""} for state in states]
    output.table(rows, _STATE_COLUMNS, empty="no limits")


def _verdict(states: list[dict[str, Any]], admitted: bool | None, model: str | None) -> str:
    spent = next((state for state in states if state.get("remaining") == 0), None)
    # Without a model every model's limits are shown: one model's spent limit refuses its calls only.
    model = model or (spent or {}).get("model")
    call = f"a call to {model}" if model else "a call"
    if admitted is None:
        return (f"whether {call} would be admitted now cannot be told: the counters are not readable here "
                "(in a cluster they are Limitador's: the server reads them with MAAS_LIMITADOR_URL set)")
    if admitted:
        return f"{call} would be admitted now"
    if spent is None:
        return f"{call} would be refused now"
    resets = _duration(spent.get("reset_seconds"))
    return (f"{call} would be refused now: limit '{spent.get('name')}' is spent"
            + (f", for {resets} more" if resets and resets != "not open" else ""))


@app.command("show")
def show(
    ctx: typer.Context, team_id: TeamId,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Show a team's rates: every limit its members' calls meet (--json: the whole team).

    Examples:
      maas limits show test-team
      maas limits show test-team -o yaml
    """
    with session(ctx).api() as api:
        team = api.get(f"/teams/{team_id}")
    output.emit(team, output.chosen(out, as_json),
                lambda data: output.table(data.get("limits") or [], LIMIT_COLUMNS, empty="no limits"))


@app.command("explain")
def explain(
    ctx: typer.Context, team_id: TeamId,
    user_id: Annotated[str | None, typer.Option("--user", "-u", help="The user whose counters to show.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only the limits a call of this model meets (default: every model's).")] = None,
    key: Annotated[str | None, typer.Option("--key", metavar="HANDLE", help="A key of the team, by its handle: its own limits and cap too (and its user, without --user).")] = None,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Why a user is (or would be) limited: each limit with what is spent, reserved and left, when
    it resets, the one that binds, and whether a call would be admitted now.

    Examples:
      maas limits explain test-team --user test-user
      maas limits explain test-team --user test-user --model qwen3-0-6b-instruct
      maas limits explain test-team --key apikey-test-user-test-team-02bcac95
    """
    if user_id is None and key is None:
        raise CliError("whose limits? give --user (or --key)", ExitCode.USAGE,
                       hint="maas limits explain TEAM_ID --user USER_ID")
    with session(ctx).api() as api:
        data = api.get(f"/teams/{team_id}/limits/explain", user_id=user_id, model=model, secret_name=key)

    def render(answer: dict[str, Any]) -> None:
        states = answer.get("limits") or []
        show_states(states)
        print(_verdict(states, answer.get("admitted_now"), answer.get("model")))

    output.emit(data, output.chosen(out, as_json), render)


def _range(api: Api, team_id: str, window: str | None, start: str | None, end: str | None) -> tuple[str | None, str | None]:
    """start and end for simulate, which takes no window: a window is resolved by the usage
    endpoint, so that `--window 7d` is the range `maas usage team --window 7d` reports, on the
    server's clock and with its duration syntax."""
    if window is None:
        return start, end
    if start is not None and end is not None:
        raise CliError("--window with --start or --end, not both", ExitCode.USAGE)
    usage = api.get(f"/teams/{team_id}/usage", window=window, start=start, end=end)
    return usage.get("start"), usage.get("end")


def _by(refused_by: dict[str, int] | None) -> str:
    return ", ".join(f"{name} {count}" for name, count in (refused_by or {}).items())


@app.command("simulate")
def simulate(
    ctx: typer.Context, team_id: TeamId,
    limits: SpecsOption = None,
    window: Annotated[str | None, typer.Option("--window", "-w", help="The last 24h, 7d (up to now or --end); default: the last 24h.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="From this instant, RFC 3339 (2026-01-01T00:00:00Z).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Up to this instant, RFC 3339 (default: now).")] = None,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """What if the team had these rates: its recorded calls replayed against them, and what they
    would have refused, in all, per limit and per user. Nothing is changed.

    Examples:
      maas limits simulate test-team -l tokens=20000/1m -l rpm=requests:60/1m
      maas limits simulate test-team -l tokens=100000/1h,scope=team --window 7d
      maas limits simulate test-team -l big=2000/1h,model=vllm-simulator --json
    """
    proposed = specs(limits)
    if proposed is None:
        raise CliError("no limits to simulate", ExitCode.USAGE, hint=f"give --limit {SPEC_SYNTAX}")
    with session(ctx).api() as api:
        first, last = _range(api, team_id, window, start, end)
        body = {"limits": proposed, **{name: value for name, value in (("start", first), ("end", last)) if value}}
        data = api.call("POST", f"/teams/{team_id}/limits/simulate", json=body)

    def render(answer: dict[str, Any]) -> None:
        output.table(answer.get("limits") or [], LIMIT_COLUMNS, title="proposed limits")
        print()
        output.details({**answer, "by": _by(answer.get("refused_by"))}, (
            ("team", "team_id"), ("from", "start"), ("to", "end"), ("requests", "requests"), ("tokens", "tokens"),
            ("refused requests", "refused_requests"), ("refused tokens", "refused_tokens"), ("refused by", "by")))
        print()
        users = [{**user, "by": _by(user.get("refused_by"))} for user in answer.get("users") or []]
        output.table(users, _USER_COLUMNS, empty="no calls recorded in this range")
        for note in answer.get("notes") or []:
            output.note(f"note: {note}")

    output.emit(data, output.chosen(out, as_json), render)


def _api_key() -> str:
    """The key from API_KEY (as the quickstart names it), a pipe or a hidden prompt: never an
    argument, which `ps` and the shell's history would keep."""
    given = os.environ.get("API_KEY", "").strip()
    key = given or read_secret("API key")
    if not key:
        raise CliError("no API key given", ExitCode.USAGE,
                       hint="set API_KEY, or pipe it in: maas limits me < key.txt")
    return key


@app.command("me")
def me(
    ctx: typer.Context,
    gateway: Annotated[str, typer.Option("--gateway", envvar="MAAS_GATEWAY_URL", show_envvar=True, metavar="URL",
                                         help="The gateway that serves your model calls (make run's by default).")] = DEFAULT_GATEWAY,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Your key's limits now, as the gateway counts them (GET /v1/me with the key): why a call got
    a 429, and when it would pass. Needs no sign-in, only the key: from API_KEY, a pipe, or a prompt.
    The local gateway serves it; a cluster's gateway does not.

    Examples:
      API_KEY=$(maas key create test-team test-user -q) maas limits me
      maas limits me --gateway http://127.0.0.1:8000 < key.txt
    """
    url = normalize_url(gateway)
    key = _api_key()
    where = session(ctx)
    credential = Credential(url=url, method="token", secret=key)
    with Api(url, trust_for(url, ca=where.ca, insecure=where.insecure), credential=credential) as api:
        try:
            data = api.get("/v1/me")
        except CliError as error:
            if error.code is ExitCode.NOT_SIGNED_IN:
                raise CliError(error.message, error.code, hint="the gateway does not know this key: check API_KEY "
                               "(revoked, expired, or of another server?)") from None
            raise

    def render(answer: dict[str, Any]) -> None:
        key_info = answer.get("key") or {}
        output.details({**answer, **{f"key_{name}": value for name, value in key_info.items()}}, (
            ("user", "user_id"), ("team", "team_id"), ("key", "key_secret_name"), ("alias", "key_alias"),
            ("expires", "key_expires_at"), ("models", "models")))
        print()
        states = answer.get("limits") or []
        show_states(states)
        admitted = all(state.get("remaining") != 0 for state in states)
        print(_verdict(states, admitted, None))

    output.emit(data, output.chosen(out, as_json), render)
