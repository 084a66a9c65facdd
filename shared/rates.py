"""A team's limits as a list of rates, and a key's own narrower ones.

A rate counts tokens or requests in a fixed window (Limitador's semantics, local/gateway/counters.py),
for each user of the team or for the team as a whole, over every model or one model. The team's
`token_limit`/`time_window`/`limit_scope` are the short form of one of them, its *primary* rate: the
first token rate over every model. A team created with the short form only has that one rate,
named `tokens`; a team given a list keeps the short form in step with the list's primary, so the
quickstart's PATCH of `token_limit` keeps working on a team with several rates.

Every rate that applies to a call is checked; the first exhausted one refuses it and is named in
the 429 (local/gateway/limiter.py). A key's rates (`scope` "key") and its cap on concurrent calls
apply on top of its team's, never instead of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from shared.durations import normalize_rate_window
from shared.identifiers import DNS_LABEL_RE

RateUnit = Literal["tokens", "requests"]
RateScope = Literal["user", "team", "key"]

PRIMARY_NAME = "tokens"  # the short form's rate, when the team has no list
CONCURRENCY_NAME = "concurrent"  # a key's cap on calls in flight, as 429s and explain name it
MAX_RATES = 16  # per team and per key: every one is a counter on each call


@dataclass(frozen=True, slots=True)
class Rate:
    name: str
    limit: int
    window: str  # normalized, whole seconds (shared.durations.normalize_rate_window)
    unit: RateUnit = "tokens"
    scope: RateScope = "user"
    model: str | None = None  # only calls of this model count and are checked; None: every model

    @property
    def is_primary_shape(self) -> bool:
        """Whether the short form can stand for this rate: tokens, every model, a team's scope."""
        return self.unit == "tokens" and self.model is None and self.scope != "key"

    def describe(self) -> str:
        """`token limit 'per-minute' of 20000 per 1m per user on model 'big'`: what a 429 says."""
        kind = "token" if self.unit == "tokens" else "request"
        who = {"user": " per user", "team": " for the team", "key": " for this key"}[self.scope]
        on = "" if self.model is None else f" on model '{self.model}'"
        return f"{kind} limit '{self.name}' of {self.limit} per {self.window}{who}{on}"


def primary_index(rates: Sequence[Rate]) -> int:
    """Where the primary rate is in a team's list; ValueError when it has none."""
    for at, rate in enumerate(rates):
        if rate.is_primary_shape:
            return at
    raise ValueError("a team's limits need a token rate over every model (no 'model'): "
                     "its token_limit and time_window")


def short_form_rate(token_limit: int, time_window: str, limit_scope: str) -> Rate:
    return Rate(PRIMARY_NAME, token_limit, time_window, "tokens", "team" if limit_scope == "team" else "user")


def check_names(rates: Iterable[Rate]) -> None:
    """ValueError when two rates share a name: 429s and explain tell limits apart by name."""
    seen: set[str] = set()
    for rate in rates:
        if rate.name in seen:
            raise ValueError(f"two limits are named '{rate.name}'; give each its own name")
        seen.add(rate.name)


def rates_text(rates: Sequence[Rate]) -> str | None:
    """The rates as the stores keep them (JSON text), None for none."""
    if not rates:
        return None
    return json.dumps([{"name": r.name, "limit": r.limit, "window": r.window, "unit": r.unit,
                        "scope": r.scope, "model": r.model} for r in rates], separators=(",", ":"))


def rates_from_text(text: str | None, *, scope: RateScope | None = None) -> tuple[Rate, ...]:
    """What `rates_text` wrote; () for nothing. A value that is not what it wrote (a hand edit)
    raises ValueError, checked as the API checks what it is given: a limit silently dropped,
    a window read as 0 s or two rates of one name would admit more than the admin set.
    `scope="key"`: a key's rates; else a team's, which need their primary rate."""
    if not text:
        return ()
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("stored limits are not a list")
    rates = []
    for item in data:
        if not isinstance(item, dict):
            raise ValueError("a stored limit is not an object")
        unit, stored_scope = item.get("unit", "tokens"), item.get("scope", "user")
        if unit not in ("tokens", "requests") or stored_scope not in ("user", "team", "key"):
            raise ValueError(f"a stored limit has an unknown unit or scope: {unit!r}, {stored_scope!r}")
        limit = item["limit"]
        if type(limit) is not int or limit < 1:
            raise ValueError(f"a stored limit is not a positive integer: {limit!r}")
        model = item.get("model")
        name = item["name"]
        if not isinstance(name, str) or not DNS_LABEL_RE.match(name):
            raise ValueError(f"a stored limit's name is not a DNS label: {name!r}")
        rates.append(Rate(name, limit, normalize_rate_window(str(item["window"])), unit, scope or stored_scope,
                          None if model is None else str(model)))
    check_names(rates)
    if scope != "key":
        primary_index(rates)
    return tuple(rates)
