"""Usage numbers shaped for the console's charts and tables: series cut into a Range's buckets,
the few largest named and the rest summed as "others", and the platform's overview from its
GET /usage answer.

Pure functions over what the API (or the usage source) answered: nothing here reads or decides
anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from functions.console.ranges import Range, bucket_index
from shared.usage.base import UsagePoint

# Colours a chart can tell apart (charts._STYLE has eight): the rest are one "others" series.
TOP = 7
OTHERS = "others"
NO_MODEL = "(all models)"  # a source whose calls carry no model (Prometheus over Limitador)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def top_series(by_name: Mapping[str, Sequence[int]], top: int = TOP) -> dict[str, list[int]]:
    """The `top` series with the largest sums, by name, and the others summed as one."""
    ranked = sorted(by_name, key=lambda name: (-sum(by_name[name]), name))
    kept = {name: list(by_name[name]) for name in sorted(ranked[:top])}
    rest = ranked[top:]
    if rest:
        length = len(next(iter(by_name.values())))
        kept[OTHERS] = [sum(by_name[name][i] for name in rest) for i in range(length)]
    return kept


def my_series(points: Iterable[UsagePoint], rng: Range) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Tokens and calls per bucket, by model, from the usage source's series of one user."""
    tokens: dict[str, list[int]] = {}
    calls: dict[str, list[int]] = {}
    for point in points:
        index = bucket_index(rng, point.start)
        if index is None:
            continue
        model = point.row.model or NO_MODEL
        tokens.setdefault(model, [0] * rng.count)[index] += point.row.tokens
        calls.setdefault(model, [0] * rng.count)[index] += point.row.authorized_calls
    return dict(sorted(tokens.items())), dict(sorted(calls.items()))


def _points(points: Iterable[Mapping[str, Any]], rng: Range, counted: str) -> list[int]:
    values = [0] * rng.count
    for point in points:
        index = bucket_index(rng, _instant(point["start"]))
        if index is not None:
            values[index] += int(point[counted])
    return values


def team_series(series: Sequence[Mapping[str, Any]] | None, rng: Range, counted: str = "token_usage",
                by: str = "user_id") -> dict[str, list[int]]:
    """One count per bucket, by user (or `by` another id), from a usage answer's `series`."""
    named: dict[str, list[int]] = {}
    for entry in series or []:
        values = _points(entry["points"], rng, counted)
        named[str(entry[by])] = [a + b for a, b in zip(named.get(str(entry[by]), [0] * rng.count), values)]
    return named


@dataclass
class Overview:
    """The platform in a range: its GET /usage answer, shaped for the page."""

    tokens: int = 0
    calls: int = 0
    limited: int = 0
    teams_with_usage: int = 0
    users_with_usage: int = 0
    tokens_by_team: dict[str, list[int]] = field(default_factory=dict)
    limited_by_bucket: list[int] = field(default_factory=list)
    teams: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)


def overview_of(answer: Mapping[str, Any] | None, rng: Range) -> Overview:
    """The TOP teams' series and "others": every team's (`series_total`) less those named, so
    that "others" counts the teams past the answer's breakdown too."""
    if answer is None:
        return Overview(limited_by_bucket=[0] * rng.count)
    total = answer.get("series_total") or []
    by_team = top_series(team_series(answer.get("series"), rng, by="team_id"))
    by_team.pop(OTHERS, None)
    rest = [t - sum(values[i] for values in by_team.values())
            for i, t in enumerate(_points(total, rng, "token_usage"))]
    if any(rest):
        by_team[OTHERS] = rest
    return Overview(
        tokens=int(answer["total_token_usage"]), calls=int(answer["total_authorized_calls"]),
        limited=int(answer["total_limited_calls"]), teams_with_usage=int(answer["teams_with_usage"]),
        users_with_usage=int(answer["users_with_usage"]), tokens_by_team=by_team,
        limited_by_bucket=_points(total, rng, "limited_calls"), teams=list(answer["team_breakdown"]),
        users=list(answer["user_breakdown"]), models=list(answer["model_breakdown"]))
