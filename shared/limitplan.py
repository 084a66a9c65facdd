"""Which limits a model call is checked against, and the counters they count in.

The gateway (local/gateway/limiter.py) reserves on these counters; the admin API's explain
(shared/explain.py) reads the same counters by the same names, so what it shows is what the
next call meets. A team's rates are counted per user or per team, each under its name, unit and
model, so reordering or extending a list never moves a count from one rate to another (the rate
`tokens` of the short form keeps the names it always had, so a team given a list that keeps it
keeps what it counted); a key's own rates and its concurrency cap per key handle. A counter belongs to one team incarnation: a team
deleted and created again under the same id (its `created_at` differs) starts afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from shared.durations import window_ms
from shared.rates import CONCURRENCY_NAME, PRIMARY_NAME, Rate
from shared.store.base import ApiKey, Team

# What a limit counts: a call's tokens, the call itself, or the call while it runs.
TOKENS, REQUESTS, CONCURRENT = 0, 1, 2
_CONCURRENCY_WINDOW_S = 1  # a concurrency counter is never spent in: its window only has to exist


class Limit(NamedTuple):
    """One counter a call is checked against, and the rate it counts for."""

    key: str
    also: str | None  # the other scope's counter, counted but not checked
    limit: int
    window_s: int
    rate: Rate
    kind: int

    def amount(self, estimate: int) -> int:
        return estimate if self.kind == TOKENS else 1

    def used(self, tokens: int) -> int:
        return tokens if self.kind == TOKENS else (1 if self.kind == REQUESTS else 0)


class LimitPlanner:
    """Counter names (one per team incarnation, rate and user, one per team incarnation and
    rate, one per key and rate), and the limits each call is checked against."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, datetime], str] = {}
        self._seconds: dict[str, int] = {}
        # (id(team), id(key), model) -> (team, key, limits): records are replaced, never changed,
        # on a store change, so identity says the entry is current; the records are kept so their
        # ids cannot be reused while the entry lives.
        self._plans: dict[tuple[int, int, str], tuple[Team, ApiKey, tuple[Limit, ...]]] = {}

    def window_s(self, time_window: str) -> int:
        seconds = self._seconds.get(time_window)
        if seconds is None:
            # Windows are whole seconds (normalize_rate_window); never 0.
            seconds = self._seconds[time_window] = max(1, window_ms(time_window) // 1000)
        return seconds

    def _prefix(self, team: Team) -> str:
        incarnation = (team.team_id, team.created_at)
        prefix = self._prefixes.get(incarnation)
        if prefix is None:
            prefix = self._prefixes[incarnation] = f"{team.team_id}@{team.created_at.timestamp():.6f}/"
        return prefix

    def pair(self, team: Team, user_id: str) -> tuple[str, str]:
        """(the counter the short form's rate `tokens` enforces, the other scope's counter), as
        a team without a list of rates counts."""
        prefix = self._prefix(team)
        user_key, team_key = prefix + "u/" + user_id, prefix + "team"
        return (team_key, user_key) if team.limit_scope == "team" else (user_key, team_key)

    @staticmethod
    def _rate_part(rate: Rate) -> str:
        """A rate's counter is named by what it counts, not where it stands in the list: its
        name, unit and model (quoted: a model name may hold '/'), so reordering a list, adding a
        rate before another or changing a rate's unit never hands one rate another's count."""
        model = "*" if rate.model is None else rate.model.replace("%", "%25").replace("/", "%2F")
        return f"r/{rate.name}/{rate.unit}/{model}/"

    def plan(self, team: Team, key: ApiKey, model: str) -> tuple[Limit, ...]:
        """Every limit a call of `key` to `model` is checked against, in the order they are
        named when several are exhausted: the team's rates as listed, the key's, its cap."""
        entry = self._plans.get((id(team), id(key), model))
        if entry is not None and entry[0] is team and entry[1] is key:
            return entry[2]
        limits = self._limits(team, key, model)
        if len(self._plans) >= 16_384:
            # Bounded (an entry holds its records, ~1 kB): a plan costs a microsecond or two to make again.
            self._plans.clear()
        self._plans[(id(team), id(key), model)] = (team, key, limits)
        return limits

    def _limits(self, team: Team, key: ApiKey, model: str) -> tuple[Limit, ...]:
        prefix = self._prefix(team)
        limits: list[Limit] = []
        for rate in team.limits:
            if rate.model is not None and rate.model != model:
                continue
            if rate.name == PRIMARY_NAME and rate.unit == "tokens" and rate.model is None:
                # The short form's rate, as a team without a list has it: its counters keep
                # their names from before lists, so a team given one keeps what it counted.
                user_key, team_key = prefix + "u/" + key.user_id, prefix + "team"
            else:
                part = prefix + self._rate_part(rate)
                user_key, team_key = part + "u/" + key.user_id, part + "team"
            enforced, other = (team_key, user_key) if rate.scope == "team" else (user_key, team_key)
            limits.append(Limit(enforced, other, rate.limit, self.window_s(rate.window), rate,
                                TOKENS if rate.unit == "tokens" else REQUESTS))
        for rate in key.rates:
            if rate.model is None or rate.model == model:
                limits.append(Limit(f"k/{key.budget_handle}/{self._rate_part(rate)}", None, rate.limit,
                                    self.window_s(rate.window),
                                    rate, TOKENS if rate.unit == "tokens" else REQUESTS))
        if key.max_concurrent is not None:
            rate = Rate(CONCURRENCY_NAME, key.max_concurrent, f"{_CONCURRENCY_WINDOW_S}s", "requests", "key")
            limits.append(Limit(f"k/{key.budget_handle}/~concurrent", None, key.max_concurrent, _CONCURRENCY_WINDOW_S,
                                rate, CONCURRENT))
        return tuple(limits)


class Budget(NamedTuple):
    """One limit as a key holder or an admin may see it (GET /v1/me, explain): why a request
    would be refused."""

    rate: Rate
    spent: int
    reserved: int
    reset_s: int  # 0: no window open (the next request opens one)

    @property
    def limit(self) -> int:
        return self.rate.limit

    @property
    def window(self) -> str:
        return self.rate.window

    @property
    def scope(self) -> str:
        return self.rate.scope

    @property
    def remaining(self) -> int:
        return max(0, self.rate.limit - self.spent - self.reserved)


def budget_of(limit: Limit, peeked: tuple[int, int, int]) -> Budget:
    spent, reserved, reset_ms = peeked
    return Budget(limit.rate, spent, reserved, -(-reset_ms // 1000))


def binding(budgets: Sequence[Budget]) -> int:
    """Which limit binds: the first exhausted one, else the one with the least left of itself
    (a share, so tokens and requests compare); -1 for none."""
    best, share = -1, 2.0
    for at, budget in enumerate(budgets):
        if budget.remaining <= 0:
            return at
        left = budget.remaining / budget.limit
        if left < share:
            best, share = at, left
    return best


def every_limit(keys: LimitPlanner, team: Team, key: ApiKey, model: str | None = None) -> tuple[Limit, ...]:
    """The limits of calls to `model`, or (None) to any model: those over every model, and each
    model's own."""
    if model is not None:
        return keys.plan(team, key, model)
    seen: dict[str, Limit] = {}
    models = {rate.model for rate in (*team.limits, *key.rates) if rate.model is not None}
    for model in ("", *sorted(models)):
        for limit in keys.plan(team, key, model):
            seen.setdefault(limit.key, limit)
    return tuple(seen.values())


def budgets_view(budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """Every limit with its counter now, and which binds: GET /v1/me's and explain's `limits`."""
    binds = binding(budgets)
    return [{
        "name": b.rate.name, "unit": b.rate.unit, "limit": b.rate.limit, "window": b.rate.window,
        "scope": b.rate.scope, "model": b.rate.model, "spent": b.spent, "reserved": b.reserved,
        "remaining": b.remaining, "reset_seconds": b.reset_s, "binding": at == binds,
    } for at, b in enumerate(budgets)]
