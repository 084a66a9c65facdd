"""The audit log: every admin action recorded by the one adapter, readable at GET /audit."""

from __future__ import annotations

import logging
import re
import sqlite3
import json
from datetime import timedelta

import pytest

from shared import audit
from shared.context import Context
from shared.keymaterial import KEY_PREFIX, generate_admin_key
from shared.routes import ROUTES
from shared.schemas import AuditEntryPublic, KeyCreated
from shared.settings import Settings
from shared.store.base import AuditFilter
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
                    "secret_name": created["secret_name"], "changes": None}
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


# -- what an update changed (issue 13, item 6) -----------------------------------------------


def _latest(api: DirectClient, action: str) -> dict:
    return _entries(api, f"&action={action}")[0]


def _stored_rows(settings: Settings) -> list[str]:
    """Every audit row as it is on disk, every column: what a reader of the database sees."""
    with sqlite3.connect(settings.database_path) as conn:
        rows = [json.dumps(list(row)) for row in conn.execute("SELECT * FROM audit")]
    conn.close()
    return rows


def test_changed_compares_the_fields_both_states_have_in_the_answers_order() -> None:
    before = {"token_limit": 100, "key_count": 1, "same": "s", "gone": "x"}
    after = {"key_count": 2, "same": "s", "token_limit": 20, "new": "y"}
    assert list(audit.changed(before, after).items()) == [("key_count", (1, 2)), ("token_limit", (100, 20))]
    assert audit.changed(before, after, only={"token_limit", "same"}) == {"token_limit": (100, 20)}


def test_a_team_update_records_before_and_after_of_exactly_what_it_changed(api: DirectClient) -> None:
    api.call("POST", "/teams", json={"team_id": "team-a", "description": "same"})
    api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"})
    # description is named but not changed: not a change.
    reply = api.call("PATCH", "/teams/team-a", json={"token_limit": 20, "max_keys_per_user": 2, "description": "same"})
    assert reply.status == 200, reply.text
    assert _latest(api, "update_team")["changes"] == {
        "token_limit": {"before": 100_000, "after": 20},
        "max_keys_per_user": {"before": None, "after": 2},
    }
    api.call("PATCH", "/teams/team-a", json={"max_keys_per_user": None, "time_window": "30m"})
    assert _latest(api, "update_team")["changes"] == {
        "time_window": {"before": "1h", "after": "30m"},
        "max_keys_per_user": {"before": 2, "after": None},
    }
    # Not an update, or an update refused: nothing changed, nothing recorded as changed.
    assert api.call("PATCH", "/teams/team-a", json={"token_limit": 0}).status == 422
    assert api.call("PATCH", "/teams/ghost", json={"token_limit": 5}).status == 404
    updates = _entries(api, "&action=update_team")
    assert [(e["outcome"], e["changes"] is None) for e in updates] == [(404, True), (422, True), (200, False),
                                                                       (200, False)]
    assert _latest(api, "create_team")["changes"] is None and _latest(api, "create_key")["changes"] is None


def test_a_role_change_records_the_role_before_and_after(api: DirectClient) -> None:
    api.call("POST", "/teams", json={"team_id": "team-a"})
    api.call("POST", "/teams/team-a/members", json={"user_id": "bob", "role": "member"})
    reply = api.call("PATCH", "/teams/team-a/members/bob", json={"role": "admin"})
    assert reply.status == 200, reply.text
    assert _latest(api, "update_member")["changes"] == {"role": {"before": "member", "after": "admin"}}
    api.call("PATCH", "/teams/team-a/members/bob", json={"role": "admin"})
    assert _latest(api, "update_member")["changes"] is None, "the same role again changes nothing"


def test_a_revocation_records_the_status_before_and_after(api: DirectClient) -> None:
    api.call("POST", "/teams", json={"team_id": "team-a"})
    key = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
    assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
    entry = _latest(api, "revoke_key")
    assert entry["secret_name"] == key["secret_name"]
    assert entry["changes"] == {"status": {"before": "active", "after": "revoked"}}
    api.call("POST", f"/keys/{key['secret_name']}/revoke")
    assert _latest(api, "revoke_key")["changes"] is None


def test_a_key_whose_team_is_gone_is_still_revocable(api: DirectClient, clocked_ctx: Context) -> None:
    """The revocation reads the key alone for its audit entry, not the key's team."""
    api.call("POST", "/teams", json={"team_id": "team-a"})
    key = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
    with sqlite3.connect(clocked_ctx.settings.database_path) as conn:
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("DELETE FROM teams WHERE team_id = 'team-a'")
    conn.close()
    assert api.call("POST", f"/keys/{key['secret_name']}/revoke").status == 200
    assert _latest(api, "revoke_key")["changes"] == {"status": {"before": "active", "after": "revoked"}}


def test_a_rotation_records_the_old_keys_change_and_no_key_material(
    api: DirectClient, settings: Settings, clock: ManualClock
) -> None:
    api.call("POST", "/teams", json={"team_id": "team-a"})
    old = api.call("POST", "/teams/team-a/keys", json={"user_id": "alice"}).body
    clock.now = T0 + timedelta(minutes=10)
    new = api.call("POST", f"/keys/{old['secret_name']}/rotate", json={"grace_period": "1h"}).body
    assert new["api_key"].startswith(KEY_PREFIX)
    assert _latest(api, "rotate_key")["changes"] == {
        "expires_at": {"before": None, "after": "2025-08-25T07:10:00Z"},
        "replaced_by": {"before": None, "after": new["secret_name"]},
    }
    # Without a grace period the old key is revoked at once.
    newer = api.call("POST", f"/keys/{new['secret_name']}/rotate").body
    assert _latest(api, "rotate_key")["changes"] == {
        "status": {"before": "active", "after": "revoked"},
        "expires_at": {"before": None, "after": "2025-08-25T06:10:00Z"},
        "replaced_by": {"before": None, "after": newer["secret_name"]},
    }
    stored = _stored_rows(settings)
    assert sum('"rotate_key"' in row and "replaced_by" in row for row in stored) == 2
    for row in stored:
        assert KEY_PREFIX not in row and "api_key" not in row, row
    assert KEY_PREFIX not in api.call("GET", "/audit").text


def test_a_secret_field_is_never_recorded_whoever_passes_it(clocked_ctx: Context) -> None:
    """Even a handler that diffed KeyCreated answers, or set changes by hand, stores no key."""
    first = KeyCreated(api_key=f"{KEY_PREFIX}{'a' * 43}", secret_name="apikey-alice-team-a-00000000",
                       user_id="alice", user_email="", team_id="team-a", team_name="team-a", policy="team-a",
                       role="member", status="active", models_allowed="", alias="", created_at=T0)
    second = first.model_copy(update={"api_key": f"{KEY_PREFIX}{'b' * 43}", "alias": "renamed"})
    assert audit.changed(first, second) == {"alias": ("", "renamed")}
    hand_made = {"api_key": (first.api_key, second.api_key), "key": ("x", "y"),
                 "note": (f"was {first.api_key}", "plain")}
    audit.record(clocked_ctx, "admin-key", audit.Action(action="update_team", method="PATCH", path="/teams/team-a",
                                                        outcome=200, team_id="team-a", changes=hand_made))
    [entry] = clocked_ctx.store.list_audit(where=AuditFilter())
    assert entry.changes == {"note": ("was maas_[redacted]", "plain")}
    assert first.api_key not in repr(entry) and second.api_key not in repr(entry)


def test_oversize_changes_are_cut(api: DirectClient, clocked_ctx: Context) -> None:
    """A description is the client's text, up to 1024 characters: what is stored is bounded."""
    api.call("POST", "/teams", json={"team_id": "team-a"})
    long = "x" * 1000
    assert api.call("PATCH", "/teams/team-a", json={"description": long}).status == 200
    change = _latest(api, "update_team")["changes"]["description"]
    assert f"{audit.MAX_CHANGE_VALUE} characters" in (AuditEntryPublic.model_fields["changes"].description or "")
    assert change == {"before": "", "after": "x" * audit.MAX_CHANGE_VALUE + "..."}
    # However many fields a handler passes, and however long their names and values.
    many = {f"field_{n:02}": ("a" * 5000, n) for n in range(audit.MAX_CHANGED_FIELDS + 10)}
    many["n" * 500] = (1, 2)
    audit.record(clocked_ctx, "admin-key", audit.Action(action="update_team", method="PATCH", path="/teams/team-a",
                                                        outcome=200, team_id="team-a", changes=many))
    entry = clocked_ctx.store.list_audit(where=AuditFilter(limit=1))[0]
    assert entry.changes is not None and len(entry.changes) == audit.MAX_CHANGED_FIELDS
    assert list(entry.changes)[:2] == ["field_00", "field_01"]
    assert all(len(before) == audit.MAX_CHANGE_VALUE + 3 for before, _ in entry.changes.values())  # type: ignore[arg-type]
    assert len("".join(_stored_rows(clocked_ctx.settings))) < 20_000
