"""Explain: every limit a user's (or a key's) calls meet, its counter now, and which binds.

The limits come from the same plan the gateway reserves on (shared/limitplan.py), so the names
and counters shown are those the next call meets; the counters are the gateway's, read where it
keeps them (`Context.counters`: on its loop, in the process or in Redis). In a cluster the
counters are Limitador's: read from its HTTP API when MAAS_LIMITADOR_URL says where
(shared/limitador.py), each of our limits matched to the counter the rendered policies make of it
(shared/policies.py limitador_counter). Where they cannot be read, the limits are shown without
them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

from shared.context import Context
from shared.errors import BackendUnavailable, InvalidRequest, NotFound
from shared.limitplan import (
    CONCURRENT,
    Budget,
    Limit,
    LimitPlanner,
    budget_of,
    budgets_view,
    every_limit,
)
from shared.schemas import ExplainQuery, LimitsExplained, LimitState
from shared.store.base import ApiKey, Team

log = logging.getLogger("maas.explain")
LIMITADOR_TIMEOUT_S = 5.0

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _holder(ctx: Context, team_id: str, query: ExplainQuery) -> ApiKey:
    """The key asked about, or a key of no limits of its own standing for the user."""
    if query.secret_name is None:
        assert query.user_id is not None  # ExplainQuery requires one of the two
        return ApiKey(secret_name="", key_sha256="", team_id=team_id, user_id=query.user_id, user_email="",
                      role="member", status="active", created_at=_EPOCH)
    key = ctx.store.get_key(secret_name=query.secret_name)
    if key.team_id != team_id:
        raise NotFound(f"key '{query.secret_name}' not found in team '{team_id}'")
    if query.user_id is not None and query.user_id != key.user_id:
        raise InvalidRequest(f"key '{key.secret_name}' is not {query.user_id}'s; leave user_id out or give its user",
                             details=[{"field": "user_id", "message": "not the key's user", "type": "invalid"}])
    return key


def explain_limits(ctx: Context, team_id: str, query: ExplainQuery) -> LimitsExplained:
    team = ctx.store.get_team(team_id=team_id)
    key = _holder(ctx, team_id, query)
    planner = LimitPlanner()
    limits = every_limit(planner, team, key, query.model)
    read = ctx.counters
    budgets: list[Budget | None] | None = None
    if read is not None:
        peeked = read([(limit.key, limit.window_s) for limit in limits])
        budgets = [budget_of(limit, seen) for limit, seen in zip(limits, peeked)]
    elif ctx.settings.limitador_url:
        budgets = _limitador_budgets(ctx, team, key, limits)
    if budgets is None:
        return LimitsExplained(team_id=team_id, user_id=key.user_id, secret_name=query.secret_name, model=query.model,
                               counters="unavailable", limits=[_uncounted(limit) for limit in limits], binding=None,
                               admitted_now=None)
    counted = [budget for budget in budgets if budget is not None]
    views = iter(budgets_view(counted))
    states = [_uncounted(limit) if budget is None else LimitState(**next(views))
              for limit, budget in zip(limits, budgets)]
    binds = next((state.name for state in states if state.binding), None)
    return LimitsExplained(team_id=team_id, user_id=key.user_id, secret_name=query.secret_name, model=query.model,
                           counters="live", limits=states, binding=binds,
                           admitted_now=all(b.spent + b.reserved < b.limit for b in counted))


def _uncounted(limit: Limit) -> LimitState:
    rate = limit.rate
    return LimitState(name=rate.name, unit=rate.unit, limit=rate.limit, window=rate.window, scope=rate.scope,
                      model=rate.model, spent=None, reserved=None, remaining=None, reset_seconds=None, binding=False)


def _limitador_budgets(ctx: Context, team: Team, key: ApiKey, limits: Sequence[Limit]) -> list[Budget | None] | None:
    """Each limit's budget from Limitador's counters; None for a limit a cluster does not count
    (max_concurrent, a model the route cannot serve); None in all when Limitador cannot be read."""
    from shared import limitador
    from shared.policies import limitador_counter

    assert ctx.settings.limitador_url is not None
    wanted = [None if limit.kind == CONCURRENT else limitador_counter(team, key, limit.rate, ctx.settings)
              for limit in limits]
    try:
        seen = limitador.index(counter for namespace in sorted({want.namespace for want in wanted if want})
                               for counter in limitador.read_counters(ctx.settings.limitador_url, namespace,
                                                                      LIMITADOR_TIMEOUT_S))
    except BackendUnavailable as exc:
        log.warning("explain: %s; the limits are shown without counters", exc.message)
        return None
    budgets: list[Budget | None] = []
    for limit, want in zip(limits, wanted):
        if want is None:
            budgets.append(None)
            continue
        now = limitador.seen_by(seen, want)
        # Limitador holds nothing in flight: a token call is counted when its response reports.
        budgets.append(Budget(limit.rate, now.value, 0, now.expires_in_s))
    return budgets
