"""API key operations: issue, list, revoke, rotate, delete. The key itself leaves only through
KeyCreated.

A new key's `models` must be models the catalog knows (a typo would otherwise make a key that
can call nothing): an unknown one is a 422 naming it and the known ones. When the catalog cannot
be asked (KServe unreachable in a cluster) the key is issued unchecked, with a warning in the
response and the log: issuing keys must not depend on KServe, and a model may be listed there
a moment after its key is made.

Rotation issues the successor first and only then shortens the old key (to the end of its grace
period, or revokes it when there is none), so a failure half-way never leaves the user without
a working key; if shortening fails, the successor is removed again and the error reported.
A key already rotated is not rotated again (its successor is): each rotation of one old key in
its grace would otherwise add a live key, past the team's max_keys_per_user.

The team's max_keys_per_user is counted and the key issued under a lock per (team, user), so
parallel requests in one process cannot pass it together; processes (several pods of a
function) are not serialized with each other.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from shared.auth import usable
from shared.context import Context
from shared.errors import Conflict, InvalidRequest, MaasError, NotFound
from shared.expiry import effective_status, expiry_for, grace_end, within_lifetime
from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.members import members_of
from shared.schemas import (
    PageQuery,
    RatePublic,
    KeyCreate,
    KeyCreated,
    KeyDeleted,
    KeyPublic,
    KeyRevoked,
    KeyRotate,
    TeamKeys,
    UserKeyPublic,
    UserKeys,
)
from shared.settings import ConfigurationError
from shared.store import ApiKey, Team
from shared.store.base import KeyChanges

log = logging.getLogger("maas.keys")

# Striped: one lock per (team, user) would grow without bound; a shared stripe only waits.
_CAP_LOCKS = tuple(threading.Lock() for _ in range(64))


def _cap_lock(team_id: str, user_id: str) -> threading.Lock:
    return _CAP_LOCKS[zlib.crc32(f"{team_id}/{user_id}".encode()) % len(_CAP_LOCKS)]


def _public_fields(key: ApiKey, team: Team, now: datetime) -> dict[str, object]:
    return {
        "secret_name": key.secret_name,
        "user_id": key.user_id,
        "user_email": key.user_email,
        "role": key.role,
        "policy": team.policy,
        "status": effective_status(key, now),
        "models_allowed": ",".join(key.models_allowed),
        "alias": key.alias,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "replaced_by": key.replaced_by,
        "limits": [RatePublic.of(rate) for rate in key.rates],
        "max_concurrent": key.max_concurrent,
    }


def _key_public(key: ApiKey, team: Team, now: datetime) -> KeyPublic:
    return KeyPublic(**_public_fields(key, team, now))


def check_models(ctx: Context, models: Sequence[str], field: str = "models") -> list[str]:
    """Warnings for the response: none when every model is known; a 422 naming `field` when one
    is not (a key's allowed models, or a rate's model: one on a name the catalog does not know
    would limit nothing)."""
    if not models:
        return []
    try:
        catalog = ctx.catalog()
        known = {m.name for m in catalog.list_models()} | {m.name for m in catalog.list_openai_models()}
    except (MaasError, ConfigurationError) as exc:
        log.warning("models of a new key not checked: the model catalog cannot be reached (%s)", exc)
        return [f"models not checked: the model catalog cannot be reached ({exc})"]
    unknown = [name for name in dict.fromkeys(models) if name not in known]
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        message = f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; the known models: {listed}"
        raise InvalidRequest(f"invalid request: {field}: {message}",
                             details=[{"field": field, "message": message, "type": "invalid"}])
    return []


def _issue(ctx: Context, team: Team, template: ApiKey, warnings: list[str] | None = None,
           member_only: bool = False) -> KeyCreated:
    """Store a new key made from `template` (handle and hash are filled in) and show it once."""
    api_key = generate_api_key()
    key = replace(
        template,
        secret_name=secret_name_for(template.user_id, team.team_id),
        key_sha256=key_sha256(api_key),
    )
    stored = ctx.store.create_key(key=key, api_key=api_key, member_only=member_only)
    if stored.rates:
        # In a cluster the key's own rates are limits of the policies (its key tier): sync them.
        ctx.teams_changed()
    fields = _public_fields(stored, team, template.created_at)
    return KeyCreated(
        api_key=api_key,
        team_id=team.team_id,
        team_name=team.team_name,
        warnings=warnings or [],
        **{k: v for k, v in fields.items() if k not in ("last_used_at", "replaced_by")},
    )


def create_key(ctx: Context, team_id: str, request: KeyCreate, *, member_only: bool = False) -> KeyCreated:
    """`member_only`: for a stored member only, checked where the key is written (Store.create_key)."""
    team = ctx.store.get_team(team_id=team_id)
    warnings = check_models(ctx, request.models)
    warnings += check_models(ctx, [rate.model for rate in request.rates if rate.model is not None], "limits")
    now = ctx.clock()
    template = ApiKey(
        secret_name="",
        key_sha256="",
        team_id=team_id,
        user_id=request.user_id,
        user_email=request.user_email,
        role=request.role,
        status="active",
        created_at=now,
        models_allowed=tuple(request.models),
        alias=request.alias,
        rates=request.rates,
        max_concurrent=request.max_concurrent,
        expires_at=within_lifetime(now, expiry_for(now, expires_in=request.expires_in, expires_at=request.expires_at),
                                   team.max_key_lifetime,
                                   "expires_at" if request.expires_at is not None else "expires_in"),
    )
    if team.max_keys_per_user is None:
        return _issue(ctx, team, template, warnings, member_only)
    with _cap_lock(team_id, request.user_id):  # count and issue as one step (module docstring)
        held = sum(1 for key in ctx.store.list_keys(team_id=team_id, user_id=request.user_id) if usable(key, now))
        if held >= team.max_keys_per_user:
            raise Conflict(f"'{request.user_id}' already holds {held} active key(s) in team '{team_id}', its "
                           f"max_keys_per_user: revoke one first")
        return _issue(ctx, team, template, warnings, member_only)


@dataclass(frozen=True)
class Revocation:
    """A revocation's answer, and the key's status (as listings show it) before, for the audit
    entry. The key alone is read, not its team: a key whose team is gone must still be revocable."""

    revoked: KeyRevoked
    status_before: str


def revoke_key(ctx: Context, secret_name: str) -> Revocation:
    """Refuse the key from now on; it stays listed (status revoked) for the record."""
    before = effective_status(ctx.store.get_key(secret_name=secret_name), ctx.clock())
    key = ctx.store.update_key(secret_name=secret_name, changes=KeyChanges(status="revoked"))
    revoked = KeyRevoked(
        message=f"key '{key.secret_name}' revoked",
        secret_name=key.secret_name,
        team_id=key.team_id,
        user_id=key.user_id,
        status=key.status,
    )
    return Revocation(revoked, before)


@dataclass(frozen=True)
class Rotation:
    """A rotation's answer, and the old key before and after it (for the audit entry): the
    answer is the new key's, so the old one's change is read where it is made, not again."""

    created: KeyCreated
    old_before: KeyPublic
    old_after: KeyPublic


def _exists(ctx: Context, secret_name: str) -> bool:
    try:
        ctx.store.get_key(secret_name=secret_name)
    except NotFound:
        return False
    return True


def rotate_key(ctx: Context, secret_name: str, request: KeyRotate) -> Rotation:
    old = ctx.store.get_key(secret_name=secret_name)
    now = ctx.clock()
    if not usable(old, now):
        raise Conflict(f"key '{secret_name}' is {effective_status(old, now)}: issue a new key instead")
    if old.replaced_by is not None and _exists(ctx, old.replaced_by):
        # A successor deleted since leaves the key in its grace period with none: it may be
        # rotated again (else its holder's only way on is a new key, with fresh key budgets).
        raise Conflict(f"key '{secret_name}' was rotated already: rotate its successor '{old.replaced_by}' instead")
    team = ctx.store.get_team(team_id=old.team_id)
    if request.expires_in is None and request.expires_at is None and old.expires_at is not None:
        # The new key lives as long as the old one was meant to: a rotation keeps the policy.
        expires_at: datetime | None = now + (old.expires_at - old.created_at)
    else:
        expires_at = expiry_for(now, expires_in=request.expires_in, expires_at=request.expires_at)
    expires_at = within_lifetime(now, expires_at, team.max_key_lifetime,
                                 "expires_at" if request.expires_at is not None else "expires_in")
    # The successor counts its own rates where its predecessor did (budget_handle): rotating is
    # how a leaked key is replaced, never a way to a fresh per-key budget.
    created = _issue(ctx, team, replace(old, status="active", created_at=now, expires_at=expires_at,
                                        last_used_at=None, replaced_by=None, lineage=old.budget_handle))
    end = grace_end(now, request.grace_period, old.expires_at)
    changes = KeyChanges(replaced_by=created.secret_name, expires_at=end,
                         status="revoked" if end <= now else None)
    try:
        shortened = ctx.store.update_key(secret_name=secret_name, changes=changes)
    except MaasError:
        ctx.store.delete_key(secret_name=created.secret_name)
        raise
    if changes.status is None:
        # The old key's expiry got shorter: in a cluster, Authorino sees that only once the
        # policies' identity revision changes (shared.policies).
        ctx.teams_changed()
    return Rotation(created, _key_public(old, team, now), _key_public(shortened, team, now))


def _page(keys: list[ApiKey], page: PageQuery) -> tuple[list[ApiKey], str | None]:
    """The page of `keys` (sorted by secret_name) after the cursor, and the next cursor."""
    after = [key for key in keys if page.cursor is None or key.secret_name > page.cursor]
    shown = after[: page.limit]
    return shown, (shown[-1].secret_name if len(after) > page.limit else None)


def list_team_keys(ctx: Context, team_id: str, page: PageQuery | None = None) -> TeamKeys:
    """A page of the team's keys; `users` are all its members, with their roles."""
    team = ctx.store.get_team(team_id=team_id)
    page = page or PageQuery()
    # The page from the store (one more tells whether another follows) and a count: a team may
    # have 100,000 keys, and reading each for a page of 100 was seconds.
    found = ctx.store.list_keys(team_id=team_id, after=page.cursor, limit=page.limit + 1)
    shown = found[: page.limit]
    cursor = shown[-1].secret_name if len(found) > page.limit else None
    now = ctx.clock()
    members = members_of(ctx.store, team)
    return TeamKeys(
        team_id=team.team_id,
        team_name=team.team_name,
        policy=team.policy,
        keys=[_key_public(key, team, now) for key in shown],
        users=members,
        total_keys=len(shown) if page.cursor is None and cursor is None else ctx.store.count_keys(team_id=team_id),
        total_users=len(members),
        next_cursor=cursor,
    )


def list_user_keys(ctx: Context, user_id: str, page: PageQuery | None = None) -> UserKeys:
    """A page of the user's keys, with their teams read by id (not every team)."""
    keys = ctx.store.list_keys(user_id=user_id)
    wanted = {key.team_id for key in keys}
    teams = {team.team_id: team for team in ctx.store.list_teams(team_ids=sorted(wanted))} if wanted else {}
    keys = [key for key in keys if key.team_id in teams]
    shown, cursor = _page(keys, page or PageQuery())
    now = ctx.clock()
    listed = [
        UserKeyPublic(
            team_id=key.team_id,
            team_name=teams[key.team_id].team_name,
            **_public_fields(key, teams[key.team_id], now),
        )
        for key in shown
    ]
    return UserKeys(user_id=user_id, keys=listed, total_keys=len(keys), next_cursor=cursor)


def _deleted(key: ApiKey) -> KeyDeleted:
    return KeyDeleted(
        message=f"key '{key.secret_name}' deleted",
        secret_name=key.secret_name,
        team_id=key.team_id,
        user_id=key.user_id,
    )


def delete_key(ctx: Context, secret_name: str) -> KeyDeleted:
    return _deleted(ctx.store.delete_key(secret_name=secret_name))


def delete_key_by_value(ctx: Context, api_key: str, *, may_delete: Callable[[ApiKey], None]) -> KeyDeleted:
    """`may_delete` raises when the caller may not (the access rule needs the key found first)."""
    found = ctx.store.find_key(key_sha256=key_sha256(api_key))
    if found is None:
        # Never echo the key: name only what was looked for.
        raise NotFound("no key matches the given API key")
    may_delete(found)
    return _deleted(ctx.store.delete_key(secret_name=found.secret_name))
