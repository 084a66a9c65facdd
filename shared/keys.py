"""API key operations: issue, list, delete. The key itself leaves only through KeyCreated."""

from __future__ import annotations

from shared.context import Context
from shared.errors import NotFound
from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.members import members_of
from shared.schemas import (
    KeyCreate,
    KeyCreated,
    KeyDeleted,
    KeyPublic,
    TeamKeys,
    UserKeyPublic,
    UserKeys,
)
from shared.store import ApiKey, Team


def _public_fields(key: ApiKey, team: Team) -> dict[str, object]:
    return {
        "secret_name": key.secret_name,
        "user_id": key.user_id,
        "user_email": key.user_email,
        "role": key.role,
        "policy": team.policy,
        "status": key.status,
        "models_allowed": ",".join(key.models_allowed),
        "alias": key.alias,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
    }


def create_key(ctx: Context, team_id: str, request: KeyCreate) -> KeyCreated:
    team = ctx.store.get_team(team_id=team_id)
    api_key = generate_api_key()
    key = ApiKey(
        secret_name=secret_name_for(request.user_id, team_id),
        key_sha256=key_sha256(api_key),
        team_id=team_id,
        user_id=request.user_id,
        user_email=request.user_email,
        role=request.role,
        status="active",
        created_at=ctx.clock(),
        models_allowed=tuple(request.models),
        alias=request.alias,
    )
    stored = ctx.store.create_key(key=key, api_key=api_key)
    return KeyCreated(
        api_key=api_key,
        team_id=team_id,
        team_name=team.team_name,
        **{k: v for k, v in _public_fields(stored, team).items() if k != "last_used_at"},
    )


def list_team_keys(ctx: Context, team_id: str) -> TeamKeys:
    team = ctx.store.get_team(team_id=team_id)
    keys = ctx.store.list_keys(team_id=team_id)
    members = members_of(team, keys)
    return TeamKeys(
        team_id=team.team_id,
        team_name=team.team_name,
        policy=team.policy,
        keys=[KeyPublic(**_public_fields(key, team)) for key in keys],
        users=members,
        total_keys=len(keys),
        total_users=len(members),
    )


def list_user_keys(ctx: Context, user_id: str) -> UserKeys:
    keys = ctx.store.list_keys(user_id=user_id)
    teams = {team.team_id: team for team in ctx.store.list_teams()} if keys else {}
    listed = [
        UserKeyPublic(
            team_id=key.team_id, team_name=teams[key.team_id].team_name, **_public_fields(key, teams[key.team_id])
        )
        for key in keys
        if key.team_id in teams
    ]
    return UserKeys(user_id=user_id, keys=listed, total_keys=len(listed))


def _deleted(key: ApiKey) -> KeyDeleted:
    return KeyDeleted(
        message=f"key '{key.secret_name}' deleted",
        secret_name=key.secret_name,
        team_id=key.team_id,
        user_id=key.user_id,
    )


def delete_key(ctx: Context, secret_name: str) -> KeyDeleted:
    return _deleted(ctx.store.delete_key(secret_name=secret_name))


def delete_key_by_value(ctx: Context, api_key: str) -> KeyDeleted:
    found = ctx.store.find_key(key_sha256=key_sha256(api_key))
    if found is None:
        # Never echo the key: name only what was looked for.
        raise NotFound("no key matches the given API key")
    return _deleted(ctx.store.delete_key(secret_name=found.secret_name))
