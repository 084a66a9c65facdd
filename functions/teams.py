"""Team endpoints."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import teams
from shared.schemas import PageQuery, TeamCreate, TeamDeleted, TeamDetail, TeamList, TeamPublic, TeamUpdate


@functions_framework.http
@endpoint("create_team")
def create_team(call: Call) -> TeamPublic:
    return teams.create_team(call.ctx, call.body(TeamCreate))


@functions_framework.http
@endpoint("list_teams")
def list_teams(call: Call) -> TeamList:
    return teams.list_teams(call.ctx, call.query(PageQuery))


@functions_framework.http
@endpoint("get_team")
def get_team(call: Call) -> TeamDetail:
    return teams.get_team(call.ctx, call.params["team_id"])


@functions_framework.http
@endpoint("update_team")
def update_team(call: Call) -> TeamPublic:
    return teams.update_team(call.ctx, call.params["team_id"], call.body(TeamUpdate))


@functions_framework.http
@endpoint("delete_team")
def delete_team(call: Call) -> TeamDeleted:
    return teams.delete_team(call.ctx, call.params["team_id"])
