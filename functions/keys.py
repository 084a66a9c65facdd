"""API key endpoints."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import keys
from shared.schemas import KeyCreate, KeyCreated, KeyDeleteByValue, KeyDeleted, PageQuery, TeamKeys, UserKeys


@functions_framework.http
@endpoint("create_key")
def create_key(call: Call) -> KeyCreated:
    return keys.create_key(call.ctx, call.params["team_id"], call.body(KeyCreate))


@functions_framework.http
@endpoint("list_team_keys")
def list_team_keys(call: Call) -> TeamKeys:
    return keys.list_team_keys(call.ctx, call.params["team_id"], call.query(PageQuery))


@functions_framework.http
@endpoint("list_user_keys")
def list_user_keys(call: Call) -> UserKeys:
    return keys.list_user_keys(call.ctx, call.params["user_id"], call.query(PageQuery))


@functions_framework.http
@endpoint("delete_key")
def delete_key(call: Call) -> KeyDeleted:
    return keys.delete_key(call.ctx, call.params["secret_name"])


@functions_framework.http
@endpoint("delete_key_legacy")
def delete_key_legacy(call: Call) -> KeyDeleted:
    return keys.delete_key_by_value(call.ctx, call.body(KeyDeleteByValue).key, may_delete=call.may_manage)
