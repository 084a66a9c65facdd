"""`maas policy render`: the Kuadrant policies (AuthPolicy, TokenRateLimitPolicy, RateLimitPolicy,
TelemetryPolicy) that the functions' policy sync writes for the server's current teams, as YAML.

The teams, models and keys come over HTTP like everything else here; the rendering is
shared/policies.py's, which is pure (no store, no Kubernetes client), so what is printed is what
a cluster's sync produces for the same teams and settings. The settings (MAAS_NAMESPACE,
MAAS_GATEWAY_NAME, ...) are read from this environment, as `make manifests` reads them.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import output
from cli.client import Api
from cli.exitcodes import CliError, ExitCode
from cli.session import session

if TYPE_CHECKING:  # imported where used: `maas` alone loads none of the server's modules
    from shared.rates import Rate
    from shared.store.base import ApiKey, Team

app = typer.Typer(help="The Kuadrant policies a cluster runs for the teams.", no_args_is_help=True,
                  epilog="""Examples:
  maas policy render > policies.yaml
""")


def _instant(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _rates(data: dict[str, Any], *, key: bool) -> tuple[Rate, ...]:
    """The `limits` of a team or key answer as the store keeps them: read back as the stores read
    their own text, so a rate the server could not have stored fails here as it would there."""
    from shared.rates import rates_from_text, short_form_rate

    try:
        rates = rates_from_text(json.dumps(data.get("limits") or []), scope="key" if key else None)
    except (ValueError, KeyError, TypeError) as exc:
        owner = data.get("secret_name") if key else data.get("team_id")
        raise CliError(f"the server listed limits for {owner} that cannot be rendered ({exc})",
                       ExitCode.UNAVAILABLE, hint="is --url the key manager's admin API, of this version?") from None
    if key:
        return rates
    # A team listed with its short form's one rate stores none (TeamChanges.apply): its tier is
    # named from the record, so the record must be the one the store holds.
    plain = short_form_rate(data["token_limit"], data["time_window"], data["limit_scope"])
    return () if rates == (plain,) else rates


def _teams_and_keys(api: Api) -> tuple[list[Team], list[ApiKey]]:
    """Every team, and every key the policies depend on: those in grace (the AuthPolicy's
    revision) and those with rates or a cap of their own (their tiers, and the warnings)."""
    from shared.store.base import ApiKey, Team

    teams, keys = [], []
    for page in api.pages("/teams", {"limit": 1000}):
        for data in page.get("teams", []):
            teams.append(Team(
                team_id=data["team_id"], team_name=data["team_name"], description=data.get("description", ""),
                policy=data["policy"], token_limit=data["token_limit"], time_window=data["time_window"],
                limit_scope=data["limit_scope"], created_at=_instant(data["created_at"]) or datetime.min,
                max_keys_per_user=data.get("max_keys_per_user"), max_key_lifetime=data.get("max_key_lifetime"),
                rates=_rates(data, key=False),
            ))
    for team in teams:
        for page in api.pages(f"/teams/{team.team_id}/keys", {"limit": 1000}):
            for key in page.get("keys", []):
                record = ApiKey(
                    secret_name=key["secret_name"], key_sha256="",  # never listed; the policies read no hash
                    team_id=team.team_id, user_id=key["user_id"], user_email=key.get("user_email", ""),
                    role=key.get("role", "member"), status=key.get("status", "active"),
                    created_at=_instant(key.get("created_at")) or datetime.min,
                    expires_at=_instant(key.get("expires_at")), replaced_by=key.get("replaced_by"),
                    rates=_rates(key, key=True), max_concurrent=key.get("max_concurrent"),
                )
                if _in_grace(record) or record.rates or record.max_concurrent is not None:
                    keys.append(record)
    return teams, keys


def _in_grace(key: ApiKey) -> bool:
    """What the store's `list_keys(in_grace=True)` selects: a rotated key still working, whose
    expiry is part of the AuthPolicy's revision."""
    return key.status == "active" and key.replaced_by is not None


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
      MAAS_NAMESPACE=llm maas policy render --out policies.yaml
      kubectl diff -f policies.yaml
    """
    from shared.policies import generate_policies, policy_warnings
    from shared.settings import ConfigurationError, load_settings

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    with session(ctx).api() as api:
        teams, keys = _teams_and_keys(api)
        models = [model["name"] for model in api.get("/models").get("models", [])]
    documents = generate_policies(teams, settings, keys_in_grace=[key for key in keys if _in_grace(key)],
                                  models=models, keys=keys)
    # stderr: the YAML on stdout is applied as it is, and a comment in it would be lost there anyway.
    for warning in policy_warnings(teams, keys):
        output.note(f"warning: {warning}")
    import yaml

    text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=120)
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        output.note(f"wrote {len(documents)} policies for {len(teams)} team(s) to {out}")
