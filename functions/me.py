"""Self-service under /me: the signed-in caller's identity, keys and usage."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import keys, membership
from shared.schemas import KeyCreated, Me, MyKeyCreate, PageQuery, UserKeys
from shared.usage import service
from shared.usage.schemas import UserUsage, UserUsageQuery


@functions_framework.http
@endpoint("whoami")
def whoami(call: Call) -> Me:
    return membership.whoami(call.ctx, call.signed_in())


@functions_framework.http
@endpoint("list_my_keys")
def list_my_keys(call: Call) -> UserKeys:
    return keys.list_user_keys(call.ctx, call.signed_in().user_id, call.query(PageQuery))


@functions_framework.http
@endpoint("create_my_key")
def create_my_key(call: Call) -> KeyCreated:
    return membership.create_my_key(call.ctx, call.signed_in(), call.body(MyKeyCreate))


@functions_framework.http
@endpoint("my_usage")
def my_usage(call: Call) -> UserUsage:
    return service.user_usage(store=call.ctx.store, source=call.ctx.usage(), user_id=call.signed_in().user_id,
                              query=call.query(UserUsageQuery), now=call.ctx.clock())
