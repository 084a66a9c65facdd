"""Team membership as a resource (`/teams/{id}/members`) and the caller's own view (`/me`).

A membership gives a user a role in a team: `member` (their own keys there) or `admin` (the
team's members and keys, its usage and audit: shared.access). Issuing a key to a user makes
them a member if they are not one; removing a member revokes their keys in that team.
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from shared import identifiers
from shared.access import Caller
from shared.context import Context
from shared.errors import Conflict, Forbidden, NotFound, not_a_member
from shared.schemas import (
    KeyCreate,
    KeyCreated,
    Me,
    MemberCreate,
    MemberList,
    MemberPublic,
    MemberRemoved,
    MemberUpdate,
    MyKeyCreate,
    MyTeam,
    PageQuery,
)
from shared.store import Member

_EMAIL = TypeAdapter(KeyCreate.model_fields["user_email"].annotation)


def _key_email(email: str | None) -> str:
    """The caller's email for their key, or "" when the provider's claim is no address a key
    may carry (the claim is the provider's text, not a 500)."""
    try:
        return _EMAIL.validate_python(email or "")
    except ValidationError:
        return ""


def _public(member: Member) -> MemberPublic:
    return MemberPublic(team_id=member.team_id, user_id=member.user_id, user_email=member.user_email,
                        role=member.role, joined_at=member.joined_at)


def list_members(ctx: Context, team_id: str, page: PageQuery | None = None) -> MemberList:
    page = page or PageQuery()
    ctx.store.get_team(team_id=team_id)  # 404 for an unknown team, not an empty list
    found = ctx.store.list_members(team_id=team_id, after=page.cursor, limit=page.limit + 1)
    shown, more = found[: page.limit], len(found) > page.limit
    return MemberList(
        members=[_public(member) for member in shown],
        total_members=len(shown) if page.cursor is None and not more else ctx.store.count_members(team_id=team_id),
        next_cursor=shown[-1].user_id if more else None,
    )


def get_member(ctx: Context, team_id: str, user_id: str) -> MemberPublic:
    return _public(ctx.store.get_member(team_id=team_id, user_id=user_id))


def add_member(ctx: Context, team_id: str, request: MemberCreate) -> MemberPublic:
    ctx.store.get_team(team_id=team_id)
    try:
        ctx.store.get_member(team_id=team_id, user_id=request.user_id)
    except NotFound:
        pass
    else:
        raise Conflict(f"'{request.user_id}' is already a member of team '{team_id}': PATCH "
                       f"/teams/{team_id}/members/{request.user_id} to change their role")
    member = Member(team_id=team_id, user_id=request.user_id, role=request.role,
                    user_email=request.user_email, joined_at=ctx.clock())
    return _public(ctx.store.put_member(member=member))


def update_member(ctx: Context, team_id: str, user_id: str, request: MemberUpdate) -> MemberPublic:
    current = ctx.store.get_member(team_id=team_id, user_id=user_id)
    updated = Member(team_id=team_id, user_id=user_id, role=request.role, user_email=current.user_email,
                     joined_at=current.joined_at)
    return _public(ctx.store.put_member(member=updated))


def remove_member(ctx: Context, team_id: str, user_id: str) -> MemberRemoved:
    member, revoked = ctx.store.delete_member(team_id=team_id, user_id=user_id)
    return MemberRemoved(member=_public(member), revoked_keys=sorted(key.secret_name for key in revoked))


def whoami(ctx: Context, caller: Caller) -> Me:
    identity = caller.identity
    roles = {member.team_id: member.role for member in ctx.store.list_members(user_id=caller.user_id)}
    for team_id, role in caller.group_roles().items():
        if roles.get(team_id) != "admin":
            roles[team_id] = role if role == "admin" else roles.get(team_id, role)
    teams = []
    for team_id in sorted(roles):
        try:
            name = ctx.store.get_team(team_id=team_id).team_name
        except NotFound:  # a group naming no team, or deleted between the reads
            continue
        teams.append(MyTeam(team_id=team_id, team_name=name, role=roles[team_id]))
    return Me(user_id=caller.user_id, user_email=identity.email, signed_in_with=identity.method,
              platform_admin=caller.platform_admin, groups=list(identity.groups), teams=teams)


def create_my_key(ctx: Context, caller: Caller, request: MyKeyCreate) -> KeyCreated:
    from shared.keys import create_key  # keys imports members; both are core

    if caller.identity.method == "admin-key":
        raise Forbidden("this needs a person signed in: the admin key is no user (issue a key to someone with "
                        "POST /teams/{team_id}/keys)")
    if not identifiers.USER_ID_RE.match(caller.user_id):
        # A key's user id is a label value in a cluster: an email or `system:serviceaccount:...`
        # cannot be one. Nothing else maps it without risking two people on one id.
        raise Forbidden(f"this needs a user id of 1-63 letters, digits, '.', '_' or '-', and you signed in as "
                        f"'{caller.user_id[:80]}': sign in with a claim that is one (MAAS_OIDC_USER_CLAIM, e.g. "
                        f"preferred_username), or ask a team admin for a key")
    # One read decides: a removal landing after it is caught where the key is written
    # (member_only). The key takes the stored role, never a group's: a role a group gives lasts
    # as long as the group does, not as long as the key.
    try:
        stored: str | None = ctx.store.get_member(team_id=request.team_id, user_id=caller.user_id).role
    except NotFound:
        stored = None
    if stored is None:
        ctx.store.get_team(team_id=request.team_id)  # 404 before 403 for a team that does not exist
        if request.team_id not in caller.group_roles():
            raise not_a_member(request.team_id)
        # A member through a group only: the key makes them a stored member, as any key does.
    return create_key(ctx, request.team_id, KeyCreate(
        user_id=caller.user_id, user_email=_key_email(caller.identity.email), role=stored or "member", alias=request.alias,
        models=request.models, expires_in=request.expires_in, expires_at=request.expires_at,
        limits=request.limits, max_concurrent=request.max_concurrent,
    ), member_only=stored is not None)
