"""Usage endpoints: a user's usage across teams, a team's usage per user (quickstart 11, 12),
the platform's across teams."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared.usage import service
from shared.usage.schemas import (
    PlatformUsage,
    PlatformUsageQuery,
    TeamUsage,
    TeamUsageQuery,
    UserUsage,
    UserUsageQuery,
)


@functions_framework.http
@endpoint("user_usage")
def user_usage(call: Call) -> UserUsage:
    return service.user_usage(
        store=call.ctx.store,
        source=call.ctx.usage(),
        user_id=call.params["user_id"],
        query=call.query(UserUsageQuery),
        now=call.ctx.clock(),
    )


@functions_framework.http
@endpoint("team_usage")
def team_usage(call: Call) -> TeamUsage:
    return service.team_usage(
        store=call.ctx.store,
        source=call.ctx.usage(),
        team_id=call.params["team_id"],
        query=call.query(TeamUsageQuery),
        now=call.ctx.clock(),
    )


@functions_framework.http
@endpoint("platform_usage")
def platform_usage(call: Call) -> PlatformUsage:
    return service.platform_usage(store=call.ctx.store, source=call.ctx.usage(),
                                  query=call.query(PlatformUsageQuery), now=call.ctx.clock())
