"""Explain: every limit a user's (or a key's) calls meet, its counter now, and which binds.

The limits come from the same plan the gateway reserves on (shared/limitplan.py), so the names
and counters shown are those the next call meets; the counters are the gateway's, read where it
keeps them (`Context.counters`: on its loop, in the process or in Redis). Where they cannot be
read (a cluster, whose counters are Limitador's), the limits are shown without them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from shared.context import Context
from shared.errors import InvalidRequest, NotFound
from shared.limitplan import LimitPlanner, budget_of, budgets_view, every_limit
from shared.schemas import ExplainQuery, LimitsExplained, LimitState
from shared.store.base import ApiKey

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
    if read is None:
        states = [LimitState(name=limit.rate.name, unit=limit.rate.unit, limit=limit.rate.limit,
                             window=limit.rate.window, scope=limit.rate.scope, model=limit.rate.model, spent=None,
                             reserved=None, remaining=None, reset_seconds=None, binding=False) for limit in limits]
        return LimitsExplained(team_id=team_id, user_id=key.user_id, secret_name=query.secret_name, model=query.model,
                               counters="unavailable", limits=states, binding=None, admitted_now=None)
    peeked = read([limit.key for limit in limits])
    budgets = [budget_of(limit, seen) for limit, seen in zip(limits, peeked)]
    states = [LimitState(**view) for view in budgets_view(budgets)]
    binds = next((state.name for state in states if state.binding), None)
    return LimitsExplained(team_id=team_id, user_id=key.user_id, secret_name=query.secret_name, model=query.model,
                           counters="live", limits=states, binding=binds,
                           admitted_now=all(b.spent + b.reserved < b.limit for b in budgets))
