"""`maas profile list`: the sign-ins kept under a name (`maas login --profile NAME`), and their
servers. Never their secrets: only how each signed in."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from cli import output
from cli.output import Format, JsonOption, OutputOption
from cli.session import session

app = typer.Typer(help="Profiles: sign-ins kept under a name, each with its server (maas --profile NAME).",
                  no_args_is_help=True, epilog="""Examples:
  maas login --profile staging --url https://keys.staging.corp --admin-key
  maas --profile staging team list
  maas profile list
""")


@app.command("list")
def list_profiles(ctx: typer.Context, out: OutputOption = Format.table, as_json: JsonOption = False) -> None:
    """List the profiles kept, with their servers and how each signed in (the one in use marked).

    Examples:
      maas login --profile staging --url https://keys.staging.corp --admin-key
      maas profile list
      maas --profile staging team list
      MAAS_PROFILE=staging maas key list --team team-a
    """
    state = session(ctx)
    store = state.store()
    rows: list[dict[str, Any]] = [
        {"name": name, "url": credential.url, "method": credential.method, "in_use": name == state.profile,
         "expires_at": (dt.datetime.fromtimestamp(credential.expires_at, dt.timezone.utc).isoformat(timespec="seconds")
                        if credential.expires_at is not None else None)}
        for name, credential in sorted(store.profiles.items())
    ]

    def show(data: dict[str, Any]) -> None:
        table = [{**row, "name": f"{row['name']} *" if row["in_use"] else row["name"]} for row in data["profiles"]]
        output.table(table, [("PROFILE", "name"), ("SERVER", "url"), ("SIGNED IN WITH", "method"),
                             ("TOKEN EXPIRES", "expires_at")],
                     empty="no profiles: maas login --profile NAME --url URL ... keeps one")

    output.emit({"profiles": rows}, output.chosen(out, as_json), show)
