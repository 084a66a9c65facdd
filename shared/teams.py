"""Team operations: what the team endpoints do, independent of any web framework."""

from __future__ import annotations

from datetime import datetime

from shared.context import Context
from shared.keys import check_models
from shared.members import members_of
from shared.schemas import PageQuery, RatePublic, TeamCreate, TeamDeleted, TeamDetail, TeamList, TeamPublic, TeamUpdate
from shared.store import Team, TeamChanges


def _counts(ctx: Context, team_id: str) -> tuple[int, int]:
    return ctx.store.key_counts(team_ids=[team_id]).get(team_id, (0, 0))


def _public(team: Team, counts: tuple[int, int]) -> TeamPublic:
    """`counts`: the team's keys and the users with one (Store.key_counts)."""
    return TeamPublic(
        team_id=team.team_id,
        team_name=team.team_name,
        description=team.description,
        policy=team.policy,
        token_limit=team.token_limit,
        time_window=team.time_window,
        limit_scope=team.limit_scope,
        created_at=team.created_at,
        key_count=counts[0],
        user_count=counts[1],
        max_keys_per_user=team.max_keys_per_user,
        max_key_lifetime=team.max_key_lifetime,
        limits=[RatePublic.of(rate) for rate in team.limits],
    )


def team_from_request(request: TeamCreate, created_at: datetime) -> Team:
    """The team a create request describes, with its defaults filled in."""
    team = Team(
        team_id=request.team_id,
        team_name=request.team_name or request.team_id,
        description=request.description,
        policy=request.policy or request.team_id,
        token_limit=request.token_limit,
        time_window=request.time_window,
        limit_scope=request.limit_scope,
        created_at=created_at,
        max_keys_per_user=request.max_keys_per_user,
        max_key_lifetime=request.max_key_lifetime,
    )
    # A list of rates sets the short form from its primary rate (TeamChanges.apply).
    return team if not request.rates else TeamChanges(rates=request.rates).apply(team)


def create_team(ctx: Context, request: TeamCreate) -> TeamPublic:
    check_models(ctx, [rate.model for rate in request.rates if rate.model is not None], "limits")
    created = ctx.store.create_team(team=team_from_request(request, ctx.clock()))
    ctx.teams_changed()
    return _public(created, (0, 0))


def list_teams(ctx: Context, page: PageQuery | None = None) -> TeamList:
    """A page of teams by id, with the keys of those teams only (not every key in the store)."""
    page = page or PageQuery()
    found = ctx.store.list_teams(after=page.cursor, limit=page.limit + 1)
    shown, more = found[: page.limit], len(found) > page.limit
    counts = ctx.store.key_counts(team_ids=[team.team_id for team in shown])
    return TeamList(
        teams=[_public(team, counts.get(team.team_id, (0, 0))) for team in shown],
        total_teams=len(shown) if page.cursor is None and not more else ctx.store.count_teams(),
        next_cursor=shown[-1].team_id if more else None,
    )


def team_public(ctx: Context, team_id: str) -> TeamPublic:
    """The team as an update answers it: what that update's audit entry compares with."""
    return _public(ctx.store.get_team(team_id=team_id), _counts(ctx, team_id))


def get_team(ctx: Context, team_id: str) -> TeamDetail:
    team = ctx.store.get_team(team_id=team_id)
    return TeamDetail(
        **_public(team, _counts(ctx, team_id)).model_dump(),
        keys=ctx.store.key_names(team_id=team_id),
        users=members_of(ctx.store, team),
    )


def update_team(ctx: Context, team_id: str, request: TeamUpdate) -> TeamPublic:
    given = request.model_dump(exclude_unset=True, exclude={"limits"})
    cleared = frozenset(name for name, value in given.items() if value is None)  # only the caps may be null
    if request.rates:
        check_models(ctx, [rate.model for rate in request.rates if rate.model is not None], "limits")
    changes = TeamChanges(**{name: value for name, value in given.items() if value is not None}, clear=cleared,
                          rates=request.rates)
    team = ctx.store.update_team(team_id=team_id, changes=changes)
    ctx.teams_changed()
    return _public(team, _counts(ctx, team_id))


def delete_team(ctx: Context, team_id: str) -> TeamDeleted:
    removed = ctx.store.delete_team(team_id=team_id)
    ctx.teams_changed()
    return TeamDeleted(
        message=f"team '{team_id}' deleted with {len(removed)} key(s)",
        team_id=team_id,
        keys_deleted=len(removed),
        deleted_keys=[key.secret_name for key in removed],
    )
