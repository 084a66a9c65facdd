"""The UsageSource protocol: counters per (team, user, model) over a time range.

Two backends, chosen by `MAAS_USAGE`: `embedded` reads the local gateway's ledger (exact at
any range), `prometheus` asks Prometheus for Limitador's (or the local gateway's) counters
(exact all-time totals; ranges are Prometheus' `increase` estimates). Both answer with the
same records, so the service and its tests don't know which one they talk to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

# The ledger's record is the one record of counts per (team, user, model), for both backends.
from shared.ledger import UsageRow
from shared.settings import Settings

__all__ = ["UsagePoint", "UsageRow", "UsageSource", "open_usage_source"]


@dataclass(frozen=True, slots=True)
class UsagePoint:
    """One bucket of a time series: the counts in [start, start + step)."""

    start: datetime
    row: UsageRow


@runtime_checkable
class UsageSource(Protocol):
    """Errors: BackendUnavailable (naming the backend) when the numbers cannot be read."""

    # False for Prometheus over Limitador, whose call counters carry no model (they count in
    # the request phase, before the body is read): its `totals` rows are per (team, user) with
    # model "", and tokens per model come from `model_tokens`.
    calls_by_model: bool

    def totals(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsageRow]:
        """Counts per (team, user, model) in [start, end); all time when both are None.

        Rows with no traffic at all may be left out; rows are sorted by (team, user, model).
        """
        ...

    def series(
        self,
        *,
        start: datetime,
        end: datetime,
        step_s: int,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsagePoint]:
        """Counts per (team, user, model) in consecutive buckets of `step_s` from `start`."""
        ...

    def model_tokens(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[tuple[str, int]]:
        """Tokens per model in [start, end), sorted by model; models with none left out."""
        ...

    def close(self) -> None: ...


def open_usage_source(settings: Settings) -> UsageSource:
    if settings.usage == "prometheus":
        # Imported here so that only a Prometheus deployment loads prometheus_api_client.
        from shared.usage.prometheus import PrometheusUsage

        return PrometheusUsage.from_settings(settings)
    from shared.usage.embedded import EmbeddedUsage

    return EmbeddedUsage.from_settings(settings)
