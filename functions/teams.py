"""Team endpoints."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import audit, teams
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
    request, team_id = call.body(TeamUpdate), call.params["team_id"]
    before = teams.team_public(call.ctx, team_id)
    after = teams.update_team(call.ctx, team_id, request)
    # Only the fields it names: a key issued meanwhile moves key_count, but not by this update.
    call.changes = audit.changed(before, after, only=request.model_fields_set)
    return after


@functions_framework.http
@endpoint("delete_team")
def delete_team(call: Call) -> TeamDeleted:
    return teams.delete_team(call.ctx, call.params["team_id"])
