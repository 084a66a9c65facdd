"""The usage endpoints' query and response models (the admin ones live in shared/schemas.py).

Field names follow the quickstart (steps 11 and 12); `model_breakdown`, `start`/`end`, the
team's `series` and the platform's usage are additions. Timestamps render as RFC 3339 UTC with microseconds and `Z`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints

from shared.fields import Rfc3339


def _utc_text(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Instant = Annotated[datetime, PlainSerializer(_utc_text, return_type=str)]
Duration = Annotated[str, StringConstraints(min_length=1, max_length=32, strip_whitespace=True)]


class UsageQuery(BaseModel):
    """`start`/`end` (RFC 3339) or `window` (`24h`, `7d`), any two of the three; none: all time."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # compiled on first use

    start: Rfc3339 | None = Field(default=None, description="RFC 3339, e.g. 2025-08-25T00:00:00Z")
    end: Rfc3339 | None = Field(default=None, description="RFC 3339; default now")
    window: Duration | None = Field(default=None, description="Range length such as '24h' or '7d'")


class UserUsageQuery(UsageQuery):
    step: Duration | None = Field(
        default=None, description="Adds a time series per model with buckets of this length, e.g. '1h'"
    )


class TeamUsageQuery(UsageQuery):
    step: Duration | None = Field(
        default=None, description="Adds a time series per user with buckets of this length, e.g. '1h'"
    )


class PlatformUsageQuery(TeamUsageQuery):
    top: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=10, description="How many teams and users the breakdowns (and the series) list, by tokens"
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # compiled on first use


_CALLS_BY_MODEL = (
    "null when the usage source cannot count calls per model: with MAAS_USAGE=prometheus the "
    "calls come from Limitador's authorized_calls/limited_calls, counted before the request body "
    "(and its model) is read, so they carry no model"
)


class ModelUsage(_Model):
    model: str = Field(description="The model the client asked for. With MAAS_USAGE=prometheus, "
                                   "'other' also sums the models past the breakdown's first 100 "
                                   "(and those the TelemetryPolicy maps to 'other')")
    token_usage: int
    authorized_calls: int | None = Field(description=_CALLS_BY_MODEL)
    limited_calls: int | None = Field(description=_CALLS_BY_MODEL)


class TeamUsageOfUser(_Model):
    team_id: str
    team_name: str
    policy: str
    token_usage: int
    authorized_calls: int
    limited_calls: int


class UserUsage(_Model):
    user_id: str
    total_token_usage: int
    total_authorized_calls: int
    total_limited_calls: int
    team_breakdown: list[TeamUsageOfUser]
    model_breakdown: list[ModelUsage]
    start: Instant | None = None
    end: Instant | None = None
    step_seconds: int | None = None
    series: list[ModelSeries] | None = Field(
        default=None, description="With `step`: per model (\"\" where the source counts calls without one)")
    last_updated: Instant


class UserUsageInTeam(_Model):
    user_id: str
    user_email: str
    token_usage: int
    authorized_calls: int
    limited_calls: int


class SeriesPoint(_Model):
    start: Instant
    token_usage: int
    authorized_calls: int
    limited_calls: int


class ModelSeries(_Model):
    model: str
    points: list[SeriesPoint]


class UserSeries(_Model):
    user_id: str
    points: list[SeriesPoint]


class TeamUsage(_Model):
    team_id: str
    team_name: str
    policy: str
    total_token_usage: int
    total_authorized_calls: int
    total_limited_calls: int
    user_breakdown: list[UserUsageInTeam]
    model_breakdown: list[ModelUsage]
    start: Instant | None = None
    end: Instant | None = None
    step_seconds: int | None = None
    series: list[UserSeries] | None = None
    last_updated: Instant


class PlatformTeamUsage(_Model):
    team_id: str
    team_name: str = Field(description="'' for a team deleted since its traffic")
    token_usage: int
    authorized_calls: int
    limited_calls: int
    users: int = Field(description="Users with traffic in the team")


class PlatformUserUsage(_Model):
    user_id: str
    token_usage: int
    authorized_calls: int
    limited_calls: int
    teams: int = Field(description="Teams the user had traffic in")


class TeamSeries(_Model):
    team_id: str
    points: list[SeriesPoint]


class PlatformUsage(_Model):
    total_token_usage: int
    total_authorized_calls: int
    total_limited_calls: int
    teams_with_usage: int
    users_with_usage: int
    team_breakdown: list[PlatformTeamUsage] = Field(description="The `top` teams by tokens, then by id")
    user_breakdown: list[PlatformUserUsage] = Field(description="The `top` users by tokens, then by id")
    model_breakdown: list[ModelUsage]
    start: Instant | None = None
    end: Instant | None = None
    step_seconds: int | None = None
    series: list[TeamSeries] | None = Field(default=None, description="With `step`: each team of team_breakdown")
    series_total: list[SeriesPoint] | None = Field(
        default=None, description="With `step`: every team summed, those past `top` too"
    )
    last_updated: Instant
