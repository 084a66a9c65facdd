"""Budget tiers: teams with the same rates share the cluster's rate limits.

In a cluster, every limit of a TokenRateLimitPolicy becomes a check and a report action on every
route rule it covers, each carrying its own predicate, and the whole set is one object
(tests/cluster/SOURCES.md §10): one limit per team stops fitting at a few hundred teams. So the
policies have a limit per distinct group of rates, selected by the *tiers* that have it, the
tier each key carries in its identity, with the team (and, for a per-user rate, the user) in the
counters: each team still has its own counters, while the number of limits grows with the
number of distinct lists of rates, not of teams (shared/policies.py).

A tier stands for a team's whole list of rates (shared/rates.py) as Limitador sees it: a rate's
limit, window in whole seconds, unit, scope and model. Names are left out (Limitador never
shows them to a caller), and so is the order (every rate that applies is checked). Two rates of
the same unit, scope, model and window count the same calls in the same window, so only the
lower limit can ever refuse: the tier keeps that one.

- A team with the short form only keeps the name it always had, `100000-per-3600s-user`, so the
  limit it selects (and so its Limitador counters) survives this version.
- A team with a list is `<its shortest token budget's short name>-r<10 hex digits of a digest
  of the rates>`: stable, readable for a main budget, at most 51 characters, a valid label
  value.

A key's own rates (scope "key") are a tier of their own, `maas/key-tier` on the key Secret,
selecting the limits counted per key (shared/policies.py). A key's rates are set when it is made
and never edited, which is what lets Authorino read them from the Secret at all (Authorino keeps
the copy it indexed: SOURCES.md §8).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.durations import normalize_window, window_ms
from shared.rates import Rate
from shared.store.base import ApiKey, Team

TIER_ANNOTATION = "maas/tier"
# On a key with rates of its own: the tier of those rates (`key_tier_of`); absent on other keys.
KEY_TIER_ANNOTATION = "maas/key-tier"
LABEL_VALUE_MAX = 63
_DIGEST_HEX = 10  # 40 bits: no two of a few thousand distinct lists collide in practice


@dataclass(frozen=True, order=True, slots=True)
class RateShape:
    """A rate as Limitador counts it. Ordered for a canonical tier: by unit, scope, model,
    window. `model` is "" for every model. `window` is the rate's own text, kept only for
    rendering a window too long to write in hours (shared/policies.py); it is no part of what
    the rate is."""

    unit: str
    scope: str
    model: str
    seconds: int
    limit: int
    window: str = field(default="", compare=False)


def window_s(window: str) -> int:
    """A rate's window in whole seconds, as Kuadrant hands it to Limitador (`1h` and `60m` are one)."""
    return window_ms(normalize_window(window)) // 1000


def shapes_of(rates: Iterable[Rate]) -> tuple[RateShape, ...]:
    """The rates as Limitador counts them, canonical: sorted, and of two that count the same
    calls in the same window only the lower limit (the higher one can never refuse first)."""
    lowest: dict[tuple[str, str, str, int], Rate] = {}
    for rate in rates:
        at = (rate.unit, rate.scope, rate.model or "", window_s(rate.window))
        if at not in lowest or rate.limit < lowest[at].limit:
            lowest[at] = rate
    return tuple(RateShape(*at, rate.limit, normalize_window(rate.window)) for at, rate in sorted(lowest.items()))


def _short_name(limit: int, seconds: int, scope: str) -> str:
    return f"{limit}-per-{seconds}s-{scope}"


def _digest(shapes: Sequence[RateShape]) -> str:
    text = json.dumps([[s.unit, s.scope, s.model, s.seconds, s.limit] for s in shapes], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_HEX]


def tier_of(team: Team) -> str:
    """A stable name for the team's rates, e.g. `100000-per-3600s-user` for the short form
    alone, `20000-per-60s-user-r0f3a9c2b1d` for a list whose shortest token budget over every
    model is 20,000 a minute per user (the head: readable, and a function of the rates alone,
    so a list in another order, whose primary is another rate, is the same tier)."""
    shapes = shapes_of(team.limits)
    head = _head(shapes)
    if len(shapes) == 1:
        return _short_name(head.limit, head.seconds, head.scope)  # the name the short form always had
    return f"{_short_name(head.limit, head.seconds, head.scope)}-r{_digest(shapes)}"


def _head(shapes: Sequence[RateShape]) -> RateShape:
    # Every team has a token rate over every model (its primary: shared/rates.py primary_index).
    return min((s for s in shapes if s.unit == "tokens" and not s.model), key=lambda s: (s.seconds, s.scope, s.limit))


def key_tier_of(key: ApiKey) -> str | None:
    """The tier of a key's own rates, e.g. `key-60-per-60s-requests` for one rate over every
    model, `key-r1b2c3d4e5f` for any other list; None for a key without rates."""
    shapes = shapes_of(key.rates)
    if not shapes:
        return None
    if len(shapes) == 1 and not shapes[0].model:
        (only,) = shapes
        return f"key-{only.limit}-per-{only.seconds}s-{only.unit}"
    return f"key-r{_digest(shapes)}"


def key_tier_annotations(key: ApiKey) -> dict[str, str]:
    """What a key Secret carries of its own rates for the policies: `maas/key-tier`, or nothing.
    Written when the key is made (shared/store/kubeshapes.py `key_annotations`)."""
    tier = key_tier_of(key)
    return {} if tier is None else {KEY_TIER_ANNOTATION: tier}
