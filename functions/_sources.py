"""Where usage numbers and the model list come from, one of each per settings in a process.

Built on first use (a Knative Service for one endpoint never opens the other) and kept, since
each holds a connection pool (Prometheus), an open ledger or a readiness cache. Keyed by the
settings so that a process that installs another Context (tests) gets sources that match it.
"""

from __future__ import annotations

import functools

from shared.catalog.base import ModelCatalog
from shared.catalog.listing import open_catalog
from shared.settings import Settings
from shared.usage import UsageSource, open_usage_source


@functools.lru_cache(maxsize=4)
def usage_source(settings: Settings) -> UsageSource:
    return open_usage_source(settings)


@functools.lru_cache(maxsize=4)
def model_catalog(settings: Settings) -> ModelCatalog:
    return open_catalog(settings)
