"""A team's limits as the console shows and edits them: its rates, explain, and a member's budget.

The rates are edited one a line, each a SPEC (shared/ratespec.py: `rpm=requests:60/1m,scope=team`),
as `maas` takes and shows them; a line is only split into the API's fields here, so the API
alone judges the values, and its 422 names the line as `limits.N` (N counting from 0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.context import Context
from shared.durations import window_ms
from shared.errors import MaasError
from shared.explain import explain_limits
from shared.limitplan import Budget, budgets_view
from shared.rates import Rate
from shared.ratespec import SPEC_SYNTAX, SpecError, parse_spec, spec_text
from shared.schemas import ExplainQuery
from shared.store import Team

log = logging.getLogger("maas.console")

SCOPES = {"user": "each user", "team": "the whole team", "key": "this key"}


def rate_lines(limits: Sequence[Mapping[str, Any]]) -> str:
    """A team's rates (its JSON's `limits`), one SPEC a line."""
    return "\n".join(spec_text(rate) for rate in limits)


def limits_of_lines(text: str) -> list[dict[str, Any]]:
    """The form's lines as the API's `limits`; SpecError naming the line (from 1) that is no SPEC.
    The values are the API's to judge: its 422 names a line as limits.N, N from 0."""
    given: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            given.append(parse_spec(line))
        except SpecError as exc:
            raise SpecError(f"line {number}, {line.strip()!r}: {exc}; write each rate as {SPEC_SYNTAX}") from None
    return given


def rate_words(rate: Mapping[str, Any]) -> str:
    """One rate in a few words, for a cell: `rpm: 60 requests per 1m on big`."""
    on = f" on {rate['model']}" if rate.get("model") else ""
    return f"{rate['name']}: {rate['limit']:,} {rate['unit']} per {rate['window']}{on}"


def reset_words(seconds: int | None) -> str:
    """Seconds until a window ends, as a reader says them."""
    if seconds is None:
        return "—"
    if seconds <= 0:
        return "no window open (the next call opens one)"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return "in " + " ".join(part for part in parts if part)


@dataclass
class MyBudget:
    """Every limit that applies to one member in one team, and what it has counted."""

    team_id: str
    team_name: str
    limits: list[dict[str, Any]]
    source: Literal["live", "ledger"]  # the gateway's counters, or the usage ledger over each window's length
    binding: str | None = None
    admitted_now: bool | None = None


def my_budget(ctx: Context, team: Team, user_id: str, now: datetime) -> MyBudget:
    """Explain's answer about the member themselves (what GET /v1/me shows a key's holder): the
    gateway's counters where this process can read them. Where it cannot, each limit is counted
    from the usage ledger over its window's length, which may differ from the gateway's window
    (it opens at a first call) by the calls in flight."""
    try:
        explained = explain_limits(ctx, team.team_id, ExplainQuery(user_id=user_id))
    except MaasError as exc:
        # The gateway did not answer for its counters: the ledger's count, said as such, instead.
        log.warning("my budget in team %s: explain failed, counted from the ledger: %s", team.team_id, exc.message)
        explained = None
    if explained is not None and explained.counters == "live":
        return MyBudget(team.team_id, team.team_name, [state.model_dump() for state in explained.limits], "live",
                        explained.binding, explained.admitted_now)
    budgets = [Budget(rate, _ledger_count(ctx, team.team_id, user_id, rate, now), 0, 0) for rate in team.limits]
    views = budgets_view(budgets)
    for view in views:
        view["reset_seconds"] = view["reserved"] = None  # the ledger knows no window's start, nor calls in flight
    # Whether a call would be admitted is the gateway's counters' to say, not an estimate's.
    return MyBudget(team.team_id, team.team_name, views, "ledger",
                    next((view["name"] for view in views if view["binding"]), None))


def _ledger_count(ctx: Context, team_id: str, user_id: str, rate: Rate, now: datetime) -> int:
    length = timedelta(milliseconds=window_ms(rate.window))
    who = {"team_id": team_id} if rate.scope == "team" else {"team_id": team_id, "user_id": user_id}
    rows = ctx.usage().totals(start=now - length, end=now, **who)
    counted = [row for row in rows if rate.model is None or row.model == rate.model]
    return sum(row.tokens if rate.unit == "tokens" else row.authorized_calls for row in counted)
