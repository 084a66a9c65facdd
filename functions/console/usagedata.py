"""Usage numbers shaped for the console's charts and tables: series cut into a Range's buckets,
the few largest named and the rest summed as "others", and the platform's overview summed from
each team's GET /teams/{team_id}/usage answer (the API has no platform-wide usage route).

Pure functions over what the API (or the usage source) answered: nothing here reads or decides
anything else.
"""

from __future__ import annotations

from collections import defaultdict
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


def team_series(series: Sequence[Mapping[str, Any]] | None, rng: Range,
                counted: str = "token_usage") -> dict[str, list[int]]:
    """One count per bucket, by user, from a team usage answer's `series`."""
    by_user: dict[str, list[int]] = {}
    for user in series or []:
        values = by_user.setdefault(str(user["user_id"]), [0] * rng.count)
        for point in user["points"]:
            index = bucket_index(rng, _instant(point["start"]))
            if index is not None:
                values[index] += int(point[counted])
    return by_user


@dataclass
class Overview:
    """The platform in a range, summed over teams."""

    tokens: int = 0
    calls: int = 0
    limited: int = 0
    tokens_by_team: dict[str, list[int]] = field(default_factory=dict)
    limited_by_bucket: list[int] = field(default_factory=list)
    teams: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)


def overview_of(answers: Sequence[Mapping[str, Any]], rng: Range) -> Overview:
    """Sum each team's usage answer (with its series) into the platform's."""
    result = Overview(limited_by_bucket=[0] * rng.count)
    users: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"token_usage": 0, "authorized_calls": 0, "limited_calls": 0, "teams": 0})
    models: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"token_usage": 0, "authorized_calls": 0, "limited_calls": 0})
    for answer in answers:
        team_id = str(answer["team_id"])
        result.tokens += int(answer["total_token_usage"])
        result.calls += int(answer["total_authorized_calls"])
        result.limited += int(answer["total_limited_calls"])
        per_user = team_series(answer.get("series"), rng)
        if per_user:
            result.tokens_by_team[team_id] = [sum(values) for values in zip(*per_user.values())]
        for values in team_series(answer.get("series"), rng, "limited_calls").values():
            result.limited_by_bucket = [a + b for a, b in zip(result.limited_by_bucket, values)]
        if answer["total_token_usage"] or answer["total_authorized_calls"] or answer["total_limited_calls"]:
            result.teams.append({
                "team_id": team_id, "team_name": answer["team_name"], "token_usage": answer["total_token_usage"],
                "authorized_calls": answer["total_authorized_calls"], "limited_calls": answer["total_limited_calls"],
                "users": len(answer["user_breakdown"])})
        for user in answer["user_breakdown"]:
            entry = users[str(user["user_id"])]
            for name in ("token_usage", "authorized_calls", "limited_calls"):
                entry[name] += int(user[name])
            entry["teams"] += 1
        for model in answer["model_breakdown"]:
            entry = models[str(model["model"])]
            for name in ("token_usage", "authorized_calls", "limited_calls"):
                # None: a source that cannot count calls by model (shown as "—").
                entry[name] = None if model[name] is None or entry[name] is None else entry[name] + int(model[name])
    result.users = [{"user_id": user_id, **counts} for user_id, counts in users.items()]
    result.models = [{"model": model, **counts} for model, counts in models.items()]
    return result
