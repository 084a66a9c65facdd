"""`maas policy render`: the Kuadrant policies (AuthPolicy, TokenRateLimitPolicy,
TelemetryPolicy) that the functions' policy sync writes for the server's current teams, as YAML.

The teams, models and keys come over HTTP like everything else here; the rendering is
shared/policies.py's, which is pure (no store, no Kubernetes client), so what is printed is what
a cluster's sync produces for the same teams and settings. The settings (MAAS_NAMESPACE,
MAAS_GATEWAY_NAME, ...) are read from this environment, as `make manifests` reads them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from cli import output
from cli.client import Api
from cli.exitcodes import CliError, ExitCode
from cli.session import session

app = typer.Typer(help="The Kuadrant policies a cluster runs for the teams.", no_args_is_help=True,
                  epilog="""Examples:
  maas policy render > policies.yaml
""")


def _instant(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _teams_and_keys(api: Api) -> tuple[list[Any], list[Any]]:
    from shared.store.base import ApiKey, Team

    teams, keys_in_grace = [], []
    for page in api.pages("/teams", {"limit": 1000}):
        for data in page.get("teams", []):
            teams.append(Team(
                team_id=data["team_id"], team_name=data["team_name"], description=data.get("description", ""),
                policy=data["policy"], token_limit=data["token_limit"], time_window=data["time_window"],
                limit_scope=data["limit_scope"], created_at=_instant(data["created_at"]) or datetime.min,
                max_keys_per_user=data.get("max_keys_per_user"), max_key_lifetime=data.get("max_key_lifetime"),
            ))
    for team in teams:
        for page in api.pages(f"/teams/{team.team_id}/keys", {"limit": 1000}):
            for key in page.get("keys", []):
                # A rotated key still working: its expiry is part of the AuthPolicy's revision.
                if key.get("status") == "active" and key.get("replaced_by"):
                    keys_in_grace.append(ApiKey(
                        secret_name=key["secret_name"], key_sha256="",  # never listed; the revision reads no hash
                        team_id=team.team_id, user_id=key["user_id"], user_email=key.get("user_email", ""),
                        role=key.get("role", "member"), status="active",
                        created_at=_instant(key.get("created_at")) or datetime.min,
                        expires_at=_instant(key.get("expires_at")), replaced_by=key["replaced_by"],
                    ))
    return teams, keys_in_grace


@app.command("render")
def render(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", dir_okay=False, help="Write the YAML here instead of stdout.")] = None,
) -> None:
    """Print the Kuadrant policies for the server's current teams, as YAML (platform admins).

    The cluster settings come from the environment, as for `make manifests` (MAAS_NAMESPACE,
    MAAS_GATEWAY_NAME, ...: `python -m local --help` lists them).

    Examples:
      maas policy render
      MAAS_NAMESPACE=llm maas policy render --out policies.yaml && kubectl diff -f policies.yaml
    """
    from shared.policies import generate_policies
    from shared.settings import ConfigurationError, load_settings

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    with session(ctx).api() as api:
        teams, keys_in_grace = _teams_and_keys(api)
        models = [model["name"] for model in api.get("/models").get("models", [])]
    documents = generate_policies(teams, settings, keys_in_grace=keys_in_grace, models=models)
    text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=120)
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        output.note(f"wrote {len(documents)} policies for {len(teams)} team(s) to {out}")
