"""What every operation needs, built once per process from the settings and passed down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shared.settings import Settings
from shared.store import Store, open_store


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _nothing() -> None:
    return None


@dataclass
class Context:
    settings: Settings
    store: Store
    # Called after every committed change to teams, so a cluster deployment can regenerate
    # and apply its Kuadrant policies; on one machine the gateway reads the store directly.
    teams_changed: Callable[[], None] = field(default=_nothing)
    clock: Callable[[], datetime] = field(default=utc_now)

    def close(self) -> None:
        self.store.close()


def build_context(settings: Settings) -> Context:
    store = open_store(settings)
    if settings.store == "kubernetes":
        from shared.kubeapply import policy_syncer

        return Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings))
    return Context(settings=settings, store=store)
