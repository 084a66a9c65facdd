"""Budget tiers: teams with the same token limit, window and scope share one rate limit.

In a cluster, every limit of the TokenRateLimitPolicy becomes a check and a report action on
every route rule it covers, each carrying its own predicate, and the whole set is one object
(tests/cluster/SOURCES.md §10): one limit per team stops fitting at a few hundred teams. So the
policy has one limit per tier, selected by the tier each key carries in its identity, with the
team (and, for a per-user budget, the user) in the counters: each team still has its own
counters, while the number of limits is the number of distinct budgets.
"""

from __future__ import annotations

from shared.durations import normalize_window, window_ms
from shared.store.base import Team

TIER_ANNOTATION = "maas/tier"


def tier_of(team: Team) -> str:
    """A stable name for the team's budget, e.g. `100000-per-3600s-user`: `1h` and `60m` are one."""
    seconds = window_ms(normalize_window(team.time_window)) // 1000
    return f"{team.token_limit}-per-{seconds}s-{team.limit_scope}"
