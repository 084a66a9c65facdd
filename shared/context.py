"""What every operation needs, built once per process from the settings and passed down."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from shared.settings import Settings
from shared.signin import SignIn
from shared.store import Store, open_store

if TYPE_CHECKING:
    from shared.catalog.base import ModelCatalog
    from shared.ledger import UsageLedger
    from shared.usage.base import UsageSource


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _nothing() -> None:
    return None


@dataclass
class Context:
    settings: Settings
    store: Store
    # Called after every committed change the Kuadrant policies depend on (teams, and a rotated
    # key's grace period), so a cluster deployment can regenerate and apply them; on one machine
    # the gateway reads the store directly.
    teams_changed: Callable[[], None] = field(default=_nothing)
    clock: Callable[[], datetime] = field(default=utc_now)
    # On one machine the gateway's own ledger, so usage includes counts not yet flushed.
    ledger: UsageLedger | None = None
    # On one machine, the gateway's token counters by name and window length in seconds
    # (shared/limitplan.py): (spent, reserved, ms until the window ends) of each. None where none
    # can be read (a cluster's counters are Limitador's).
    counters: Callable[[list[tuple[str, int]]], list[tuple[int, int, int]]] | None = None
    _usage: UsageSource | None = field(default=None, init=False, repr=False)
    _catalog: ModelCatalog | None = field(default=None, init=False, repr=False)
    _signin: SignIn | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def usage(self) -> UsageSource:
        """Built on first use: a Knative Service for one endpoint never opens the others."""
        with self._lock:
            if self._usage is None:
                from shared.usage.base import open_usage_source
                from shared.usage.embedded import EmbeddedUsage

                if self.ledger is not None and self.settings.usage == "embedded":
                    self._usage = EmbeddedUsage(self.ledger)
                else:
                    self._usage = open_usage_source(self.settings)
            return self._usage

    def signin(self) -> SignIn:
        """The admin API's sign-in, with the verifiers' caches kept for the process."""
        with self._lock:
            if self._signin is None:
                self._signin = SignIn(self.settings, self.store)
            return self._signin

    def catalog(self) -> ModelCatalog:
        with self._lock:
            if self._catalog is None:
                from shared.catalog.listing import open_catalog

                self._catalog = open_catalog(self.settings)
            return self._catalog

    def close(self) -> None:
        with self._lock:
            if self._usage is not None:
                self._usage.close()
                self._usage = None
            closer = getattr(self._catalog, "close", None)
            if callable(closer):
                closer()
            self._catalog = None
        self.store.close()


def build_context(settings: Settings, *, ledger: UsageLedger | None = None,
                  catalog: ModelCatalog | None = None) -> Context:
    """`catalog`: the model listing to use instead of one opened from the settings on first use
    (the local runtime passes the one that follows the models file the gateway follows)."""
    store = open_store(settings)
    if settings.store == "kubernetes":
        from shared.kubeapply import policy_syncer

        context = Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings))
    else:
        context = Context(settings=settings, store=store, ledger=ledger)
    context._catalog = catalog
    return context
