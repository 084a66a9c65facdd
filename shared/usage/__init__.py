"""Token usage per (team, user, model): where the numbers come from and the bodies built from them.

    base.py        the UsageSource protocol and its records; `open_usage_source(settings)`
    embedded.py    the local gateway's ledger (SQLite), exact
    prometheus.py  PromQL over Limitador's (or the local gateway's) counters
    service.py     the quickstart's user and team usage bodies, names from the Store
    schemas.py     the pydantic query and response models of the usage endpoints
"""

from shared.usage.base import UsagePoint, UsageRow, UsageSource, open_usage_source

__all__ = ["UsagePoint", "UsageRow", "UsageSource", "open_usage_source"]
