"""`maas key create|list|show|revoke|rotate|delete|import`: API keys for the models.

A key is shown once, in the answer that made it (create, rotate): the listings carry its handle
(`secret_name`), never the key. `maas key import` is in cli/keyimport.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from cli import keyimport, output
from cli import limits as rates
from cli.client import Api
from cli.exitcodes import CliError, ExitCode
from cli.members import Role
from cli.output import Format, JsonOption, OutputOption
from cli.paging import AllOption, CursorOption, LimitOption
from cli.prompts import YesOption, confirm, read_secret
from cli.session import session
from shared.keymaterial import KEY_PREFIX  # how every key begins; handles begin with apikey-

app = typer.Typer(help="API keys: issue, list, revoke, rotate, delete, and import many from a CSV file.",
                  no_args_is_help=True, epilog="""Examples:
  maas key create test-team test-user --email test-user@test.com
  maas key list --team test-team
  maas key rotate apikey-test-user-test-team-02bcac95 --grace-period 1h
  maas key import users.csv --team test-team --out keys.csv
""")

_HANDLE = re.compile(r"^apikey-(?P<middle>.+)-[0-9a-f]{8}$")

KEY_FIELDS: output.Columns = (
    ("key", "secret_name"), ("user", "user_id"), ("email", "user_email"), ("team", "team_id"),
    ("role", "role"), ("status", "status"), ("models", "models_allowed"), ("alias", "alias"),
    ("created", "created_at"), ("expires", "expires_at"), ("limits", "limits"), ("max concurrent", "max_concurrent"),
    ("last used", "last_used_at"), ("replaced by", "replaced_by"),
)

Handle = Annotated[str, typer.Argument(metavar="KEY", help="The key's handle (secret_name), e.g. apikey-alice-team-a-0119cba6.")]
Email = Annotated[str | None, typer.Option("--email", help="The user's email address.")]
Alias = Annotated[str | None, typer.Option("--alias", help="A name for the key, e.g. laptop.")]
Models = Annotated[list[str] | None, typer.Option("--model", "-m", help="A model the key may call (repeat it); default: all.")]
ExpiresIn = Annotated[str | None, typer.Option("--expires-in", help="Lifetime from now: 30d, 12h.")]
ExpiresAt = Annotated[str | None, typer.Option("--expires-at", help="Expiry instant, RFC 3339 (2026-12-31T00:00:00Z).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print the new key alone, for API_KEY=$(...).")]
KeySpecs = Annotated[list[str] | None, typer.Option(
    "--limit", "-l", metavar="SPEC",
    help="A rate of the key's own, on top of its team's (repeat it): NAME=[UNIT:]LIMIT/WINDOW, then ,model=M if "
         "need be; UNIT tokens (default) or requests. E.g. key-rpm=requests:10/1m.")]
MaxConcurrent = Annotated[int | None, typer.Option("--max-concurrent", metavar="N", help="Calls the key may have in flight at once (the local gateway enforces it; a cluster cannot).")]


def _readable(data: dict[str, Any]) -> dict[str, Any]:
    """A key's answer with its rates as SPECs, the form --limit takes them in."""
    return {**data, "limits": [rates.spec_text(rate) for rate in data.get("limits") or []]}


def show_created(data: dict[str, Any]) -> None:
    output.details(_readable(data), KEY_FIELDS[:12])
    for warning in data.get("warnings") or []:
        output.note(f"warning: {warning}")
    print(f"api key: {data['api_key']}")
    output.note("This is the only time the key is shown: keep it (no listing shows it again).")


def _emit_created(data: dict[str, Any], out: Format, as_json: bool, quiet: bool) -> None:
    if quiet:
        print(data["api_key"])
    else:
        output.emit(data, output.chosen(out, as_json), show_created)


@app.command("create")
def create(
    ctx: typer.Context,
    team_id: Annotated[str, typer.Argument(metavar="TEAM_ID", help="The team the key draws its budget from.")],
    user_id: Annotated[str | None, typer.Argument(metavar="USER_ID", help="Whose key it is; left out: your own (you must be a member; the admin key must name one).")] = None,
    email: Email = None, alias: Alias = None, models: Models = None, expires_in: ExpiresIn = None,
    expires_at: ExpiresAt = None,
    role: Annotated[Role | None, typer.Option("--role", help="member or admin: the user's role in the team, if this makes them a member.")] = None,
    specs: KeySpecs = None, max_concurrent: MaxConcurrent = None,
    quiet: Quiet = False, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Issue an API key to a user in a team (or to yourself). The key is shown in this answer only.

    Examples:
      maas key create test-team test-user --email test-user@test.com
      API_KEY=$(maas key create test-team test-user -q)
      maas key create team-a --alias laptop --expires-in 30d  # mine, as a member
      maas key create test-team ci-bot --limit key-rpm=requests:10/1m
      maas key create test-team ci-bot --max-concurrent 2
    """
    body: dict[str, Any] = {"alias": alias, "models": models or None, "expires_in": expires_in, "expires_at": expires_at,
                            "limits": rates.specs(specs, for_key=True), "max_concurrent": max_concurrent}
    if user_id is None:
        if email is not None or role is not None:
            raise CliError("--email and --role are for another user's key", ExitCode.USAGE,
                           hint="give USER_ID, or leave them out for your own key")
        path, body["team_id"] = "/me/keys", team_id
    else:
        path = f"/teams/{team_id}/keys"
        body.update(user_id=user_id, user_email=email, role=role.value if role else None)
    with session(ctx).api() as api:
        if user_id is None and api.signed_in_with_admin_key():
            # /me/keys would refuse it (403), in the API's words: a CLI user gives USER_ID.
            raise CliError("signed in with the admin key, which is no user", ExitCode.USAGE,
                           hint=f"name who the key is for: maas key create {team_id} USER_ID")
        created = api.call("POST", path, json={name: value for name, value in body.items() if value is not None})
    _emit_created(created, out, as_json, quiet)


@app.command("list")
def list_keys(
    ctx: typer.Context,
    team_id: Annotated[str | None, typer.Option("--team", "-t", help="A team's keys.")] = None,
    user_id: Annotated[str | None, typer.Option("--user", "-u", help="A user's keys, across teams.")] = None,
    limit: LimitOption = None, cursor: CursorOption = None, every: AllOption = False,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """List keys: a team's, a user's, or (with neither) your own. Never the keys themselves.

    Examples:
      maas key list --team test-team
      maas key list --user test-user --all
      maas key list
    """
    if team_id and user_id:
        raise CliError("--team or --user, not both", ExitCode.USAGE)
    path = f"/teams/{team_id}/keys" if team_id else f"/users/{user_id}/keys" if user_id else "/me/keys"
    with session(ctx).api() as api:
        if path == "/me/keys" and api.signed_in_with_admin_key():
            # /me/keys would answer none: the admin key is no user, with no keys of its own.
            raise CliError("signed in with the admin key, which has no keys of its own", ExitCode.USAGE,
                           hint="list a team's or a user's: maas key list --team TEAM, or --user USER")
        page = api.listing(path, "keys", limit=limit, cursor=cursor, every=every)
    columns = [("KEY", "secret_name"), ("USER", "user_id"), ("TEAM", "team_id"), ("STATUS", "status"),
               ("ALIAS", "alias"), ("MODELS", "models_allowed"), ("EXPIRES", "expires_at"), ("LAST USED", "last_used_at")]
    if team_id:
        columns.remove(("TEAM", "team_id"))

    def show(data: dict[str, Any]) -> None:
        output.table(data["keys"], columns, empty="no keys")
        output.more(data, "maas key list")

    output.emit(page, output.chosen(out, as_json), show)


def _teams_named_in(handle: str) -> list[str]:
    """The team ids a handle can end with (`apikey-<user>-<team>-<hex>`; both may hold '-')."""
    found = _HANDLE.match(handle)
    if found is None:
        return []
    middle = found.group("middle")
    return [middle[i + 1:] for i, char in enumerate(middle) if char == "-" and middle[i + 1:]]


def _in_listing(api: Api, path: str, handle: str) -> Iterator[dict[str, Any]]:
    for page in api.pages(path, {"limit": 1000}):
        for key in page.get("keys", []):
            if key.get("secret_name") == handle:
                yield {"team_id": page.get("team_id"), "team_name": page.get("team_name"), **key}
                return


def find_key(api: Api, handle: str, team_id: str | None) -> dict[str, Any]:
    """A key by its handle. There is no GET for one key: it is looked up in its team's listing
    (the team is in the handle), else, for a member, among their own keys."""
    for candidate in [team_id] if team_id else _teams_named_in(handle):
        try:
            for key in _in_listing(api, f"/teams/{candidate}/keys", handle):
                return key
        except CliError as error:
            if team_id or error.code not in (ExitCode.NOT_FOUND, ExitCode.FORBIDDEN):
                raise
    if team_id is None:
        for key in _in_listing(api, "/me/keys", handle):
            return key
    raise CliError(f"no key {handle}" + (f" in team {team_id}" if team_id else ""), ExitCode.NOT_FOUND,
                   hint="maas key list --team TEAM shows the handles")


@app.command("show")
def show(
    ctx: typer.Context, handle: Handle,
    team_id: Annotated[str | None, typer.Option("--team", "-t", help="The key's team, if its handle does not tell.")] = None,
    out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Show one key: whose, its status, models, expiry and last use (never the key itself).

    Examples:
      maas key show apikey-test-user-test-team-02bcac95
    """
    with session(ctx).api() as api:
        key = find_key(api, handle, team_id)
    output.emit(key, output.chosen(out, as_json), lambda data: output.details(_readable(data), KEY_FIELDS))


@app.command("revoke")
def revoke(
    ctx: typer.Context, handle: Handle, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Revoke a key: refused from the next request on, and still listed (as revoked) for audit.

    Examples:
      maas key revoke apikey-test-user-test-team-02bcac95
    """
    with session(ctx).api() as api:
        answer = api.call("POST", f"/keys/{handle}/revoke")
    output.emit(answer, output.chosen(out, as_json), lambda data: print(f"Revoked {data.get('secret_name')}"))


@app.command("rotate")
def rotate(
    ctx: typer.Context, handle: Handle,
    grace_period: Annotated[str | None, typer.Option("--grace-period", help="How long the old key keeps working: 1h (default: revoked at once).")] = None,
    expires_in: ExpiresIn = None, expires_at: ExpiresAt = None,
    quiet: Quiet = False, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Issue a successor key for the same user and team; the new key is shown in this answer only.

    Examples:
      maas key rotate apikey-test-user-test-team-02bcac95 --grace-period 1h
    """
    body = {name: value for name, value in (("grace_period", grace_period), ("expires_in", expires_in),
                                            ("expires_at", expires_at)) if value is not None}
    with session(ctx).api() as api:
        created = api.call("POST", f"/keys/{handle}/rotate", json=body)
    _emit_created(created, out, as_json, quiet)


@app.command("delete")
def delete(
    ctx: typer.Context,
    handle: Annotated[str | None, typer.Argument(metavar="KEY", help="The key's handle (secret_name), e.g. apikey-alice-team-a-0119cba6.", show_default=False)] = None,
    value_stdin: Annotated[bool, typer.Option("--value-stdin", help="Delete the key whose value (maas_...) is read from stdin (piped, or typed hidden), for when you hold a key but not its handle.")] = False,
    yes: YesOption = False, out: OutputOption = Format.table, as_json: JsonOption = False,
) -> None:
    """Delete a key for good (asks first, unless --yes). Revoke keeps it listed; delete does not.

    By its handle, or with --value-stdin by the key itself: a leaked key found in a log, or your
    own from a password manager. The key is read from stdin, never from the command line (where
    `ps` and the shell's history would keep it), and never printed.

    Examples:
      maas key delete apikey-test-user-test-team-02bcac95 --yes
      maas key delete --value-stdin --yes < leaked-key.txt
      pass show maas/laptop | maas key delete --value-stdin --yes
    """
    if (handle is None) == (not value_stdin):
        raise CliError("give the key's handle, or --value-stdin to read the key itself, not both" if handle
                       else "say which key: its handle, or --value-stdin to read the key itself", ExitCode.USAGE,
                       hint="maas key delete --help")
    if value_stdin:
        value = read_secret("API key")
        if not value:
            raise CliError("no key read from stdin", ExitCode.USAGE, hint="pipe it in: maas key delete --value-stdin --yes < key.txt")
        # A terminal was asked for the key just now; a pipe has been read to its end and cannot answer.
        confirm("Delete the key you typed?", yes=yes)
        with session(ctx).api() as api:
            answer = api.call("DELETE", "/delete_key", json={"key": value})
    else:
        assert handle is not None
        if handle.startswith(KEY_PREFIX):
            # A key, not a handle: sending it would put it in the API's access log as a path too.
            raise CliError("that is an API key, not its handle, and it is now in your shell's history",
                           ExitCode.USAGE, hint="pipe it in instead: maas key delete --value-stdin --yes < key.txt")
        confirm(f"Delete key {handle}?", yes=yes)
        with session(ctx).api() as api:
            answer = api.call("DELETE", f"/keys/{handle}")
    output.emit(answer, output.chosen(out, as_json), lambda data: print(
        f"Deleted {data.get('secret_name')} (user {data.get('user_id')}, team {data.get('team_id')})"))


app.command("import")(keyimport.import_keys)
