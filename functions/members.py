"""Team membership endpoints."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import audit, membership
from shared.schemas import MemberCreate, MemberList, MemberPublic, MemberRemoved, MemberUpdate, PageQuery


@functions_framework.http
@endpoint("list_members")
def list_members(call: Call) -> MemberList:
    return membership.list_members(call.ctx, call.params["team_id"], call.query(PageQuery))


@functions_framework.http
@endpoint("add_member")
def add_member(call: Call) -> MemberPublic:
    return membership.add_member(call.ctx, call.params["team_id"], call.body(MemberCreate))


@functions_framework.http
@endpoint("update_member")
def update_member(call: Call) -> MemberPublic:
    request, team_id, user_id = call.body(MemberUpdate), call.params["team_id"], call.params["user_id"]
    before = membership.get_member(call.ctx, team_id, user_id)
    after = membership.update_member(call.ctx, team_id, user_id, request)
    call.changes = audit.changed(before, after)
    return after


@functions_framework.http
@endpoint("remove_member")
def remove_member(call: Call) -> MemberRemoved:
    return membership.remove_member(call.ctx, call.params["team_id"], call.params["user_id"])
