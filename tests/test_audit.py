"""The audit log: every admin action recorded by the one adapter, readable at GET /audit."""

from __future__ import annotations

import logging
import re
import sqlite3
from datetime import timedelta

import pytest

from shared import audit
from shared.context import Context
from shared.keymaterial import KEY_PREFIX, generate_admin_key
from shared.routes import ROUTES
from shared.settings import Settings
from tests.admin_client import DirectClient, HttpClient
from tests.records import CLOCK_START, ManualClock
from tests.runtime import start_runtime

T0 = CLOCK_START
_SAMPLE = {"team_id": "team-a", "user_id": "alice", "secret_name": "apikey-alice-team-a-00000000"}


@pytest.fixture
def api(clocked_ctx: Context, admin_key: str) -> DirectClient:
    return DirectClient(admin_key)


def _entries(api: DirectClient | HttpClient, query: str = "") -> list[dict]:
    reply = api.call("GET", f"/audit?limit=500{query}")
    assert reply.status == 200, reply.text
    return reply.body["entries"]


def test_every_route_with_credentials_is_audited(api: DirectClient) -> None:
    """Driven by the routing table, so a route added later is covered without touching this test."""
    audited_routes = [route for route in ROUTES if route.auth != "none"]
    for route in audited_routes:
        api.call(route.method, route.path.format(**_SAMPLE))
    entries = _entries(api)
    seen = {entry["action"] for entry in entries}
    assert seen >= {route.target for route in audited_routes}
    unaudited = {route.target for route in ROUTES if route.auth == "none"}
    assert not seen & unaudited, "health and the OpenAPI document are not admin actions"
    for entry in entries:
        assert entry["actor"] == "admin-key"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", entry["at"])


def test_an_entry_says_who_what_when_and_outcome_and_nothing_secret(api: DirectClient, clock: ManualClock) -> None:
    api.call("POST", "/teams", json={"team_id": "team-a"})
    clock.now = T0 + timedelta(minutes=5)
    created = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
    clock.now = T0 + timedelta(minutes=6)
    api.call("DELETE", "/delete_key", json={"key": created["api_key"]})
    entries = _entries(api)
    assert [e["action"] for e in entries] == ["delete_key_legacy", "create_key", "create_team"]
    legacy, made, team = entries
    assert made == {"id": made["id"], "at": "2025-08-25T06:05:00Z", "actor": "admin-key", "action": "create_key",
                    "method": "POST", "path": "/teams/team-a/keys", "outcome": 201, "team_id": "team-a",
                    "secret_name": created["secret_name"]}
    # The legacy delete names no key in its path: the entry takes the handle from the result.
    assert (legacy["secret_name"], legacy["team_id"], legacy["outcome"]) == (created["secret_name"], "team-a", 200)
    assert team["team_id"] == "team-a" and team["outcome"] == 201
    text = api.call("GET", "/audit").text
    assert created["api_key"] not in text and api.admin_key not in text
    assert not re.search(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{20,}}", text)


def test_refusals_are_audited_with_who_tried(api: DirectClient) -> None:
    """Anonymous ones as a sample (the first audit.SAMPLE_BURST of them are all there)."""
    api.call("POST", "/teams", json={"team_id": "team-a"})
    key = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
    api.call("GET", "/teams", auth=None)
    api.call("DELETE", "/teams/team-a", auth="ADMIN wrong")
    api.call("GET", "/teams", auth=f"APIKEY {key['api_key']}")
    api.call("GET", "/teams/ghost")
    api.call("POST", "/teams", json={"team_id": "Bad_Id"})
    failures = _entries(api, "&outcome=failure")
    assert [(e["actor"], e["action"], e["outcome"]) for e in failures] == [
        ("admin-key", "create_team", 422),
        ("admin-key", "get_team", 404),
        (key["secret_name"], "list_teams", 401),  # a key holder tried an admin action
        ("anonymous", "delete_team", 401),
        ("anonymous", "list_teams", 401),
    ]


def test_anonymous_refusals_past_the_sample_are_only_counted(api: DirectClient) -> None:
    """Without credentials a request is nobody's action: past the sample it leaves no entry, while
    every refusal of a key holder (who has credentials, just not these rights) is recorded."""
    api.call("POST", "/teams", json={"team_id": "team-a"})
    key = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
    counted = audit.REFUSED.exposition()
    for _ in range(audit.SAMPLE_BURST * 3):
        api.call("DELETE", "/teams/team-a", auth=None)
        api.call("DELETE", "/teams/team-a", auth=f"APIKEY {key['api_key']}")
    failures = _entries(api, "&outcome=failure")
    actors = [e["actor"] for e in failures]
    assert actors.count("anonymous") == audit.SAMPLE_BURST
    assert actors.count(key["secret_name"]) == audit.SAMPLE_BURST * 3
    assert audit.REFUSED.exposition() != counted


def test_filters(api: DirectClient, clock: ManualClock) -> None:
    for n, team_id in enumerate(("team-a", "team-b", "team-a")):
        clock.now = T0 + timedelta(hours=n)
        api.call("POST", "/teams", json={"team_id": team_id})
    clock.now = T0 + timedelta(hours=3)
    api.call("GET", "/teams/team-b")

    def actions(query: str) -> list[tuple[str, str, int]]:
        return [(e["action"], e["team_id"], e["outcome"]) for e in _entries(api, query)]

    assert actions("&action=create_team") == [("create_team", "team-a", 409), ("create_team", "team-b", 201),
                                              ("create_team", "team-a", 201)]
    assert actions("&team_id=team-b") == [("get_team", "team-b", 200), ("create_team", "team-b", 201)]
    assert actions("&outcome=409") == [("create_team", "team-a", 409)]
    assert actions("&outcome=success&team_id=team-a") == [("create_team", "team-a", 201)]
    assert actions("&since=2025-08-25T07:00:00Z&until=2025-08-25T09:00:00Z") == [
        ("create_team", "team-a", 409), ("create_team", "team-b", 201)]
    # An offset is honoured: 09:00+02:00 is 07:00Z.
    assert actions("&action=create_team&since=2025-08-25T09:00:00%2B02:00") == [
        ("create_team", "team-a", 409), ("create_team", "team-b", 201)]


def test_paging_visits_every_entry_once(api: DirectClient) -> None:
    for n in range(7):
        api.call("POST", "/teams", json={"team_id": f"team-{n}"})
    seen: list[int] = []
    cursor = ""
    for _ in range(10):  # bounded: 7 entries in pages of 3 need 3
        reply = api.call("GET", f"/audit?action=create_team&limit=3{cursor}")
        assert reply.status == 200, reply.text
        seen.extend(e["id"] for e in reply.body["entries"])
        if reply.body["next_cursor"] is None:
            break
        cursor = f"&cursor={reply.body['next_cursor']}"
    assert len(seen) == 7 and seen == sorted(seen, reverse=True) and len(set(seen)) == 7


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=501", "limit"), ("cursor=abc", "cursor"), ("outcome=meh", "outcome"),
     ("since=yesterday", "since"), ("since=2025-08-25T06:00:00", "since"), ("team_id=Bad_Id", "team_id"),
     ("surprise=1", "surprise")],
)
def test_bad_audit_queries_are_422(api: DirectClient, query: str, field: str) -> None:
    reply = api.call("GET", f"/audit?{query}")
    assert reply.status == 422, reply.text
    assert reply.body["details"][0]["field"] == field


def test_audit_needs_the_admin(api: DirectClient) -> None:
    assert api.call("GET", "/audit", auth=None).status == 401


def test_a_failing_audit_log_does_not_fail_the_action(
    api: DirectClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(settings.database_path) as conn:
        conn.execute("DROP TABLE audit")
    conn.close()
    with caplog.at_level(logging.ERROR):
        reply = api.call("POST", "/teams", json={"team_id": "team-a"})
    assert reply.status == 201, reply.text
    assert api.call("GET", "/teams/team-a").status == 200
    assert any("audit" in record.getMessage() for record in caplog.records)


def test_audit_over_https_against_the_runtime(tmp_path_factory: pytest.TempPathFactory) -> None:
    admin_key = generate_admin_key()
    running = start_runtime(tmp_path_factory.mktemp("audit"), env={"ADMIN_KEY": admin_key})
    try:
        api = HttpClient(admin_key, running.admin_url)
        api.call("POST", "/teams", json={"team_id": "team-a"})
        key = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
        api.call("POST", f"/keys/{key['secret_name']}/rotate", json={"grace_period": "1h"})
        api.call("POST", f"/keys/{key['secret_name']}/revoke")
        entries = _entries(api)
        assert [(e["action"], e["outcome"], e["secret_name"]) for e in entries[:3]] == [
            ("revoke_key", 200, key["secret_name"]), ("rotate_key", 201, key["secret_name"]),
            ("create_key", 201, key["secret_name"])]
    finally:
        assert running.stop() == 0
    assert key["api_key"] not in running.text and admin_key not in running.text
