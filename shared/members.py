"""A team's users are derived from its keys: one member per user_id holding a key there."""

from __future__ import annotations

from collections.abc import Iterable

from shared.schemas import TeamMember
from shared.store import ApiKey, Team


def members_of(team: Team, keys: Iterable[ApiKey]) -> list[TeamMember]:
    by_user: dict[str, list[ApiKey]] = {}
    for key in keys:
        by_user.setdefault(key.user_id, []).append(key)
    members = []
    for user_id in sorted(by_user):
        held = sorted(by_user[user_id], key=lambda k: k.created_at)
        newest = held[-1]
        members.append(
            TeamMember(
                user_id=user_id,
                user_email=newest.user_email,
                role=newest.role,
                team_id=team.team_id,
                team_name=team.team_name,
                joined_at=held[0].created_at,
                policy=team.policy,
            )
        )
    return members
