"""Listings come in pages (`limit`, `cursor`, `next_cursor`): 100k keys in one response is not
an answer (issue 12). Walking the pages yields every item exactly once; bad paging is a 422."""

from __future__ import annotations

import pytest

from shared.context import Context
from tests.admin_client import DirectClient


@pytest.fixture
def client(ctx: Context, admin_key: str) -> DirectClient:
    return DirectClient(admin_key)


def _walk(client: DirectClient, path: str, items: str, limit: int) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        reply = client.call("GET", path + query)
        assert reply.status == 200, reply.text
        page = reply.body[items]
        assert len(page) <= limit
        seen.extend(item["team_id"] if items == "teams" else item["secret_name"] for item in page)
        pages += 1
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 100, "bounded"


def test_teams_and_keys_are_walked_page_by_page(client: DirectClient) -> None:
    for i in range(7):
        assert client.call("POST", "/teams", json={"team_id": f"team-{i}", "token_limit": 10}).status == 201
        for user in ("alice", "bob", "carol"):
            assert client.call("POST", f"/teams/team-{i}/keys", json={"user_id": user}).status == 201
    teams, pages = _walk(client, "/teams", "teams", 3)
    assert teams == [f"team-{i}" for i in range(7)] and pages == 3
    first = client.call("GET", "/teams?limit=3").body
    assert first["total_teams"] == 7 and [t["key_count"] for t in first["teams"]] == [3, 3, 3]

    keys, pages = _walk(client, "/teams/team-2/keys", "keys", 2)
    assert len(keys) == len(set(keys)) == 3 and pages == 2
    assert client.call("GET", "/teams/team-2/keys?limit=2").body["total_keys"] == 3
    assert len(client.call("GET", "/teams/team-2/keys?limit=1").body["users"]) == 3  # members: all of them

    mine, pages = _walk(client, "/users/alice/keys", "keys", 4)
    assert len(mine) == len(set(mine)) == 7 and pages == 2
    assert client.call("GET", "/users/alice/keys?limit=4").body["total_keys"] == 7


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=1e9",
                                   "limit=99999999999999999999999", "cursor=%0A", "cursor=" + "a" * 300,
                                   "cursor=..%2F.."])
def test_bad_paging_is_a_422_naming_the_parameter(client: DirectClient, query: str) -> None:
    for path in ("/teams", "/users/alice/keys"):
        reply = client.call("GET", f"{path}?{query}")
        assert reply.status == 422, (path, query, reply.text)
        name = query.split("=")[0]
        assert name in reply.text


def test_a_cursor_past_the_end_is_an_empty_last_page(client: DirectClient) -> None:
    client.call("POST", "/teams", json={"team_id": "only", "token_limit": 10})
    reply = client.call("GET", "/teams?cursor=zzz")
    assert reply.status == 200 and reply.body["teams"] == [] and reply.body["next_cursor"] is None
