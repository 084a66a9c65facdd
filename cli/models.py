"""`maas models`: the models the gateway serves, and whether each is ready."""

from __future__ import annotations

from typing import Any

import typer

from cli import output
from cli.output import Format, JsonOption, OutputOption
from cli.session import session


def list_models(ctx: typer.Context, out: OutputOption = Format.table, as_json: JsonOption = False) -> None:
    """List the models with their readiness (admins see all; see `maas key create --model`).

    Examples:
      maas models
      maas models --json
    """
    with session(ctx).api() as api:
        data = api.get("/models")

    def show(answer: dict[str, Any]) -> None:
        output.table(answer.get("models") or [], [("MODEL", "name"), ("READY", "ready"), ("NAMESPACE", "namespace"),
                                                  ("URL", "url")], empty="no models")

    output.emit(data, output.chosen(out, as_json), show)
