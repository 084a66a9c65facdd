"""A team's users as its listings show them (`users` of GET /teams/{id} and its keys): its
stored memberships (shared.membership), each with its role."""

from __future__ import annotations

from shared.schemas import TeamMember
from shared.store import Store, Team


def members_of(store: Store, team: Team) -> list[TeamMember]:
    return [
        TeamMember(
            user_id=member.user_id,
            user_email=member.user_email,
            role=member.role,
            team_id=team.team_id,
            team_name=team.team_name,
            joined_at=member.joined_at,
            policy=team.policy,
        )
        for member in store.list_members(team_id=team.team_id)
    ]
