"""The embedded UsageSource: the local gateway's ledger (SQLite), exact to the minute (its buckets).

In `make run` the gateway and the admin functions may share one process and one ledger (pass
it in, so counts not yet flushed are seen too); a separate process opens the same file and
sees what the gateway has flushed, at most its flush interval behind.
"""

from __future__ import annotations

from datetime import datetime

from shared.ledger import UsageLedger, UsageRow
from shared.settings import Settings
from shared.usage.base import UsagePoint


class EmbeddedUsage:
    calls_by_model = True  # the ledger counts calls per model

    def __init__(self, ledger: UsageLedger, *, owns_ledger: bool = False) -> None:
        self._ledger = ledger
        self._owns_ledger = owns_ledger

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedUsage:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(UsageLedger(settings.usage_ledger_path), owns_ledger=True)

    def totals(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsageRow]:
        return self._ledger.totals(start=start, end=end, team_id=team_id, user_id=user_id)

    def series(
        self,
        *,
        start: datetime,
        end: datetime,
        step_s: int,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsagePoint]:
        points = self._ledger.series(
            start=start, end=end, step_s=step_s, team_id=team_id, user_id=user_id
        )
        return [UsagePoint(start=at, row=row) for at, row in points]

    def model_tokens(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[tuple[str, int]]:
        tokens: dict[str, int] = {}
        for row in self.totals(start=start, end=end, team_id=team_id, user_id=user_id):
            tokens[row.model] = tokens.get(row.model, 0) + row.tokens
        return sorted((model, n) for model, n in tokens.items() if n)

    def close(self) -> None:
        if self._owns_ledger:
            self._ledger.close()
