"""Store backends behind one protocol; `open_store` picks one from the settings."""

from __future__ import annotations

from shared.settings import Settings
from shared.store.base import (
    ApiKey,
    KeyStatus,
    LimitScope,
    Member,
    MemberRole,
    Snapshot,
    Store,
    Team,
    TeamChanges,
)

__all__ = [
    "ApiKey", "KeyStatus", "LimitScope", "Member", "MemberRole", "Snapshot", "Store", "Team", "TeamChanges",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    if settings.store == "kubernetes":
        # Imported here so that only a cluster deployment loads the kubernetes client.
        from shared.store.kube import KubernetesStore

        return KubernetesStore.from_settings(settings)
    from shared.store.sqlite import SqliteStore

    return SqliteStore(settings.database_path)
