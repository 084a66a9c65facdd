"""User, team and platform usage bodies (quickstart steps 11 and 12) from a UsageSource and the Store.

Counts come from the UsageSource; names, emails and policies from the Store. A breakdown lists
what had traffic in the range, sorted by id: a user with no traffic gets zeros and an empty
breakdown. The platform's team and user breakdowns are its `top` by tokens instead (ties by
id): at thousands of teams a page wants the largest. Traffic of a team deleted since keeps its team_id with an empty name and policy.
A source that cannot count calls per model (Prometheus: Limitador's call counters carry no
`model`) gives the model breakdown's tokens only, its calls null.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from shared.durations import normalize_window, window_ms
from shared.errors import InvalidRequest, NotFound
from shared.store import Store, Team
from shared.usage.base import UsagePoint, UsageRow, UsageSource
from shared.usage.schemas import (
    ModelSeries,
    ModelUsage,
    PlatformTeamUsage,
    PlatformUsage,
    PlatformUsageQuery,
    PlatformUserUsage,
    SeriesPoint,
    TeamSeries,
    TeamUsage,
    TeamUsageOfUser,
    TeamUsageQuery,
    UsageQuery,
    UserSeries,
    UserUsage,
    UserUsageInTeam,
    UserUsageQuery,
)

# A dashboard needs a few hundred points; more would only load the backend (Prometheus
# refuses over 11,000 per series anyway).
MAX_POINTS = 1000
MIN_STEP_S = 60


def invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid request: {field}: {message}", details=[{"field": field, "message": message}])


@dataclass(frozen=True, slots=True)
class UsageRange:
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Counts:
    tokens: int = 0
    authorized_calls: int = 0
    limited_calls: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.tokens + other.tokens,
            self.authorized_calls + other.authorized_calls,
            self.limited_calls + other.limited_calls,
        )

    @classmethod
    def of(cls, row: UsageRow) -> _Counts:
        return cls(row.tokens, row.authorized_calls, row.limited_calls)


def _duration(field: str, value: str) -> timedelta:
    try:
        return timedelta(milliseconds=window_ms(normalize_window(value)))
    except ValueError as exc:
        raise invalid(field, str(exc)) from None


def resolve_range(query: UsageQuery, now: datetime) -> UsageRange:
    """Turn start/end/window into a range; all time (both None) when none is given."""
    start, end = query.start, query.end
    if query.window is not None:
        length = _duration("window", query.window)
        if start is not None and end is not None:
            raise invalid("window", "give at most two of start, end and window")
        if start is not None:
            end = start + length
        else:
            end = end or now
            start = end - length
    elif start is not None and end is None:
        end = now
    if start is not None and end is not None and start >= end:
        raise invalid("start", "must be before end")
    return UsageRange(start=start, end=end)


def resolve_step(step: str | None, span: UsageRange) -> int | None:
    if step is None:
        return None
    length = _duration("step", step)
    # The embedded ledger counts in one-minute buckets; both backends take the same steps.
    if length.total_seconds() < MIN_STEP_S or length.total_seconds() != int(length.total_seconds()):
        raise invalid("step", f"must be whole seconds, at least {MIN_STEP_S}s (e.g. '1m', '1h')")
    if span.start is None or span.end is None:
        raise invalid("step", "needs a range: give window (e.g. window=24h) or start")
    # Counted as the series is cut: from the minute the range starts in (_series_points).
    points = math.ceil((span.end - _origin(span.start)) / length)
    if points > MAX_POINTS:
        raise invalid("step", f"gives {points} points over the range; at most {MAX_POINTS}")
    return int(length.total_seconds())


def _origin(start: datetime) -> datetime:
    """Buckets start on a whole minute: the ledger's resolution, so both backends cut alike."""
    return datetime.fromtimestamp(start.timestamp() // MIN_STEP_S * MIN_STEP_S, timezone.utc)


def _sum(rows: Iterable[UsageRow], key: Callable[[UsageRow], str]) -> dict[str, _Counts]:
    grouped: dict[str, _Counts] = defaultdict(_Counts)
    for row in rows:
        grouped[key(row)] += _Counts.of(row)
    return dict(sorted(grouped.items()))


def _models(rows: list[UsageRow], source: UsageSource, span: UsageRange, *, team_id: str | None = None,
            user_id: str | None = None) -> list[ModelUsage]:
    """The model breakdown: from the rows, or tokens only from a source whose calls have no model.

    Prometheus (Limitador) counts calls in the request phase, before the body and its model are
    read: such a source says `calls_by_model = False` and answers `model_tokens`; its models'
    `authorized_calls` and `limited_calls` are null (unknown, not zero).
    """
    if source.calls_by_model:
        return [
            ModelUsage(model=model, token_usage=c.tokens, authorized_calls=c.authorized_calls,
                       limited_calls=c.limited_calls)
            for model, c in _sum(rows, lambda r: r.model).items()
        ]
    tokens = source.model_tokens(start=span.start, end=span.end, team_id=team_id, user_id=user_id)
    return [ModelUsage(model=model, token_usage=n, authorized_calls=None, limited_calls=None)
            for model, n in tokens]


def _team_or_none(store: Store, team_id: str) -> Team | None:
    try:
        return store.get_team(team_id=team_id)
    except NotFound:
        return None


def user_usage(*, store: Store, source: UsageSource, user_id: str, query: UserUsageQuery,
               now: datetime) -> UserUsage:
    span = resolve_range(query, now)
    step_s = resolve_step(query.step, span)
    rows = source.totals(start=span.start, end=span.end, user_id=user_id)
    total = sum((_Counts.of(r) for r in rows), _Counts())
    breakdown = []
    for team_id, counts in _sum(rows, lambda r: r.team_id).items():
        team = _team_or_none(store, team_id)
        breakdown.append(
            TeamUsageOfUser(
                team_id=team_id,
                team_name=team.team_name if team else "",
                policy=team.policy if team else "",
                token_usage=counts.tokens,
                authorized_calls=counts.authorized_calls,
                limited_calls=counts.limited_calls,
            )
        )
    return UserUsage(
        user_id=user_id,
        total_token_usage=total.tokens,
        total_authorized_calls=total.authorized_calls,
        total_limited_calls=total.limited_calls,
        team_breakdown=breakdown,
        model_breakdown=_models(rows, source, span, user_id=user_id),
        start=span.start,
        end=span.end,
        step_seconds=step_s,
        series=_model_series(source, span, step_s, user_id),
        last_updated=now,
    )


def _model_series(source: UsageSource, span: UsageRange, step_s: int | None, user_id: str) -> list[ModelSeries] | None:
    found = _series_points(source, span, step_s, user_id=user_id)
    if found is None:
        return None
    return [ModelSeries(model=model, points=_dense(found.buckets, counts))
            for model, counts in found.by(lambda r: r.model).items()]


def team_usage(*, store: Store, source: UsageSource, team_id: str, query: TeamUsageQuery,
               now: datetime) -> TeamUsage:
    team = store.get_team(team_id=team_id)  # NotFound for an unknown team, before any query
    span = resolve_range(query, now)
    step_s = resolve_step(query.step, span)
    rows = source.totals(start=span.start, end=span.end, team_id=team_id)
    emails: dict[str, str] = {}
    for key in sorted(store.list_keys(team_id=team_id), key=lambda k: k.created_at):
        emails[key.user_id] = key.user_email or emails.get(key.user_id, "")
    total = sum((_Counts.of(r) for r in rows), _Counts())
    users = [
        UserUsageInTeam(
            user_id=user_id,
            user_email=emails.get(user_id, ""),
            token_usage=counts.tokens,
            authorized_calls=counts.authorized_calls,
            limited_calls=counts.limited_calls,
        )
        for user_id, counts in _sum(rows, lambda r: r.user_id).items()
    ]
    series = None
    found = _series_points(source, span, step_s, team_id=team_id)
    if found is not None:
        per_user = found.by(lambda r: r.user_id)
        series = [UserSeries(user_id=user_id, points=_dense(found.buckets, counts))
                  for user_id, counts in per_user.items()]
    return TeamUsage(
        team_id=team.team_id,
        team_name=team.team_name,
        policy=team.policy,
        total_token_usage=total.tokens,
        total_authorized_calls=total.authorized_calls,
        total_limited_calls=total.limited_calls,
        user_breakdown=users,
        model_breakdown=_models(rows, source, span, team_id=team_id),
        start=span.start,
        end=span.end,
        step_seconds=step_s,
        series=series,
        last_updated=now,
    )


@dataclass(frozen=True, slots=True)
class _Series:
    """The buckets of a series asked for, and the source's points in them."""

    buckets: list[datetime]
    step: timedelta
    points: list[UsagePoint]

    def by(self, key: Callable[[UsageRow], str]) -> dict[str, dict[int, _Counts]]:
        """Counts per key and bucket index, models summed; sorted by key."""
        grouped: dict[str, dict[int, _Counts]] = defaultdict(lambda: defaultdict(_Counts))
        for point in self.points:
            index = int((point.start - self.buckets[0]) // self.step) if self.buckets else -1
            if 0 <= index < len(self.buckets):
                grouped[key(point.row)][index] += _Counts.of(point.row)
        return dict(sorted(grouped.items()))


def _series_points(source: UsageSource, span: UsageRange, step_s: int | None, *,
                   team_id: str | None = None, user_id: str | None = None) -> _Series | None:
    """None when no series was asked (no step, or a range with no start)."""
    if step_s is None or span.start is None or span.end is None:
        return None
    origin = _origin(span.start)
    points = source.series(start=origin, end=span.end, step_s=step_s, team_id=team_id, user_id=user_id)
    step = timedelta(seconds=step_s)
    buckets: list[datetime] = []
    at = origin
    while at < span.end and len(buckets) < MAX_POINTS:
        buckets.append(at)
        at += step
    return _Series(buckets=buckets, step=step, points=points)


def _dense(buckets: list[datetime], counts: dict[int, _Counts]) -> list[SeriesPoint]:
    """One point per bucket, zeros where it had no traffic."""
    return [
        SeriesPoint(start=bucket, token_usage=c.tokens, authorized_calls=c.authorized_calls,
                    limited_calls=c.limited_calls)
        for i, bucket in enumerate(buckets)
        for c in (counts.get(i, _Counts()),)
    ]


def _ranked(counts: dict[str, _Counts], top: int) -> list[tuple[str, _Counts]]:
    """The `top` entries with the most tokens, ties by id."""
    return sorted(counts.items(), key=lambda item: (-item[1].tokens, item[0]))[:top]


def platform_usage(*, store: Store, source: UsageSource, query: PlatformUsageQuery,
                   now: datetime) -> PlatformUsage:
    """Every team's usage from one unfiltered query: totals exact at any number of teams.

    The store is read for the names of the teams shown only, never listed: at 10,000 teams a
    listing would cost more than the counts.
    """
    span = resolve_range(query, now)
    step_s = resolve_step(query.step, span)
    rows = [r for r in source.totals(start=span.start, end=span.end) if _Counts.of(r) != _Counts()]
    total = sum((_Counts.of(r) for r in rows), _Counts())
    users_of: dict[str, set[str]] = defaultdict(set)
    teams_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        users_of[row.team_id].add(row.user_id)
        teams_of[row.user_id].add(row.team_id)
    per_team, per_user = _sum(rows, lambda r: r.team_id), _sum(rows, lambda r: r.user_id)
    shown = _ranked(per_team, query.top)
    teams = []
    for team_id, counts in shown:
        team = _team_or_none(store, team_id)
        teams.append(PlatformTeamUsage(
            team_id=team_id, team_name=team.team_name if team else "", token_usage=counts.tokens,
            authorized_calls=counts.authorized_calls, limited_calls=counts.limited_calls,
            users=len(users_of[team_id])))
    users = [
        PlatformUserUsage(user_id=user_id, token_usage=counts.tokens, authorized_calls=counts.authorized_calls,
                          limited_calls=counts.limited_calls, teams=len(teams_of[user_id]))
        for user_id, counts in _ranked(per_user, query.top)
    ]
    series = series_total = None
    found = _series_points(source, span, step_s)
    if found is not None:
        by_team = found.by(lambda r: r.team_id)
        series = [TeamSeries(team_id=team_id, points=_dense(found.buckets, by_team.get(team_id, {})))
                  for team_id, _ in shown]
        # Every team's, not only those shown: a chart's "others" is this minus the teams shown.
        series_total = _dense(found.buckets, found.by(lambda r: "").get("", {}))
    return PlatformUsage(
        total_token_usage=total.tokens,
        total_authorized_calls=total.authorized_calls,
        total_limited_calls=total.limited_calls,
        teams_with_usage=len(per_team),
        users_with_usage=len(per_user),
        team_breakdown=teams,
        user_breakdown=users,
        model_breakdown=_models(rows, source, span),
        start=span.start,
        end=span.end,
        step_seconds=step_s,
        series=series,
        series_total=series_total,
        last_updated=now,
    )
