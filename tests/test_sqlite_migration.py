"""A SQLite database made by the version before memberships, team caps and audited changes
opens with the new store: its key holders become its teams' members, once, its teams have no
caps, and its audit entries no changes."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from shared.store.base import AuditEntry, AuditFilter, Member, TeamChanges
from shared.store.sqlite import SqliteStore
from tests.records import T0, a_key

# The schema as the previous version created it (shared/store/sqlite.py before memberships),
# kept verbatim: the migration is tested against what is really on disk out there.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (
    team_id      TEXT PRIMARY KEY,
    team_name    TEXT NOT NULL,
    description  TEXT NOT NULL,
    policy       TEXT NOT NULL,
    token_limit  INTEGER NOT NULL CHECK (token_limit >= 1),
    time_window  TEXT NOT NULL,
    limit_scope  TEXT NOT NULL CHECK (limit_scope IN ('user', 'team')),
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    secret_name    TEXT PRIMARY KEY,
    key_sha256     TEXT NOT NULL UNIQUE,
    team_id        TEXT NOT NULL REFERENCES teams(team_id) ON DELETE CASCADE,
    user_id        TEXT NOT NULL,
    user_email     TEXT NOT NULL,
    role           TEXT NOT NULL,
    status         TEXT NOT NULL,
    models_allowed TEXT NOT NULL,
    alias          TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    expires_at     TEXT,
    last_used_at   TEXT,
    replaced_by    TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_team ON api_keys(team_id);
CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys(user_id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    outcome      INTEGER NOT NULL,
    team_id      TEXT,
    secret_name  TEXT
);
CREATE INDEX IF NOT EXISTS audit_action ON audit(action, id);
CREATE INDEX IF NOT EXISTS audit_team ON audit(team_id, id);
CREATE TABLE IF NOT EXISTS changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    generation  INTEGER NOT NULL,
    team_id     TEXT,
    key_sha256  TEXT
);
CREATE INDEX IF NOT EXISTS changes_generation ON changes(generation);
"""

# (team, user, role, email, status, minutes after T0) of each key the old version stored.
OLD_KEYS = [
    ("team-a", "alice", "admin", "alice@old.example", "active", 0),
    ("team-a", "alice", "member", "alice@new.example", "active", 30),  # her newest: role and email
    ("team-a", "alice", "admin", "alice@mid.example", "revoked", 10),
    ("team-a", "bob", "member", "bob@test.com", "active", 5),
    ("team-a", "carol", "user", "carol@test.com", "expired", 7),  # an old role name, a dead key
    ("team-b", "alice", "admin", "alice@b.example", "active", 60),
]


def _ts(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def old_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    for team_id in ("team-a", "team-b", "team-c"):
        conn.execute("INSERT INTO teams VALUES (?, ?, '', ?, 1000, '1h', 'user', ?)", (team_id, team_id, team_id, _ts(0)))
    for team_id, user_id, role, email, status, minutes in OLD_KEYS:
        key, _ = a_key(team_id, user_id)
        conn.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, '', '', ?, NULL, NULL, NULL)",
            (key.secret_name, key.key_sha256, team_id, user_id, email, role, status, _ts(minutes)),
        )
    conn.execute("INSERT INTO audit (at, actor, action, method, path, outcome, team_id, secret_name) "
                 "VALUES (?, 'admin', 'update_team', 'PATCH', '/teams/team-a', 200, 'team-a', NULL)", (_ts(90),))
    conn.execute("UPDATE meta SET value = 41 WHERE name = 'generation'")
    conn.commit()
    conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "maas.db"
    old_database(path)
    return path


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_key_holders_become_members_with_their_newest_keys_role_and_oldest_date(path: Path) -> None:
    store = SqliteStore(path)
    try:
        assert store.list_members(team_id="team-a") == [
            Member("team-a", "alice", "member", "alice@new.example", at(0)),
            Member("team-a", "bob", "member", "bob@test.com", at(5)),
            Member("team-a", "carol", "member", "carol@test.com", at(7)),
        ]
        assert store.list_members(user_id="alice") == [
            store.get_member(team_id="team-a", user_id="alice"),
            Member("team-b", "alice", "admin", "alice@b.example", at(60)),
        ]
        assert store.list_members(team_id="team-c") == []
        # The old data is otherwise as it was: keys, teams (no caps), and the gateway's generation.
        assert len(store.list_keys()) == len(OLD_KEYS)
        assert [(t.max_keys_per_user, t.max_key_lifetime) for t in store.list_teams()] == [(None, None)] * 3
        assert store.changes_since(41) is not None and store.changes_since(41).keys_by_sha256 == {}  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_new_columns_and_table_work_on_a_migrated_database(path: Path) -> None:
    store = SqliteStore(path)
    try:
        capped = store.update_team(team_id="team-a", changes=TeamChanges(max_keys_per_user=2, max_key_lifetime="90d"))
        assert store.get_team(team_id="team-a") == capped and capped.max_keys_per_user == 2
        key, api_key = a_key("team-c", "dave")
        store.create_key(key=key, api_key=api_key)
        assert store.get_member(team_id="team-c", user_id="dave").joined_at == key.created_at
        _, revoked = store.delete_member(team_id="team-a", user_id="alice")
        assert len(revoked) == 2  # her two active keys there; the revoked one stays as it was
    finally:
        store.close()


def test_the_audit_table_gains_its_changes_column_and_old_entries_have_none(path: Path) -> None:
    store = SqliteStore(path)
    try:
        [old] = store.list_audit(where=AuditFilter())
        assert (old.action, old.at, old.changes) == ("update_team", at(90), None)
        made = store.record_audit(entry=AuditEntry(at=at(91), actor="admin-key", action="update_team", method="PATCH",
                                                   path="/teams/team-a", outcome=200, team_id="team-a",
                                                   changes={"token_limit": (1000, 20)}))
        assert store.list_audit(where=AuditFilter()) == [made, old]
        assert made.changes == {"token_limit": (1000, 20)}
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(audit)")]
    conn.close()
    assert columns[-1] == "changes" and columns.count("changes") == 1


def test_the_backfill_happens_once_so_a_removed_member_stays_removed(path: Path) -> None:
    store = SqliteStore(path)
    store.delete_member(team_id="team-a", user_id="bob")  # his key stays, revoked
    store.close()
    again = SqliteStore(path)
    try:
        assert [m.user_id for m in again.list_members(team_id="team-a")] == ["alice", "carol"]
    finally:
        again.close()


def test_two_processes_opening_an_old_database_at_once_migrate_it_once(path: Path) -> None:
    errors: list[BaseException] = []
    stores: list[SqliteStore] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        barrier.wait()
        try:
            stores.append(SqliteStore(path))
        except BaseException as exc:  # noqa: BLE001 - the test reports any failure to open
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert stores[0].count_members(team_id="team-a") == 3
    finally:
        for store in stores:
            store.close()
