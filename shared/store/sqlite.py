"""The embedded Store: one SQLite file in WAL mode, one transaction per operation.

API keys are kept as SHA-256 only. Unique constraints (team_id, secret_name, key_sha256) decide
racing creates, so two concurrent creates of one team cannot both win. Writes take the write
lock up front (BEGIN IMMEDIATE) so a read never has to be upgraded mid-transaction.

Connections come from a bounded pool: an operation borrows one and gives it back, at most
POOL_IDLE are kept, and one made beyond that is closed when returned. (A connection per thread,
kept for the thread's life, leaked a descriptor per server thread: a server that makes threads
as clients come ran out of descriptors after about 10,000 requests.)

Every write records what it changed in the `changes` table, under the generation it commits,
so a reader holding an older view (the gateway's key cache) can catch up with `changes_since`
by reading the few rows that changed instead of the whole store. A write that changes no team
or key (a membership alone) records nothing and leaves the generation where it was: the
gateway's view does not depend on memberships.

Memberships are the `members` table, one row per (team_id, user_id), removed with their team
by the foreign key. A database from before it gets the table on open, filled once from its keys
(one member per user holding a key in a team: role and email of the newest key, joined when
the oldest was made), so that its teams keep their users; the `meta` row `members_backfilled`
says that happened, so a member removed later is not brought back by a reopen. Columns added
since the first release (`_ADDED_COLUMNS`: a team's caps, an audit entry's `changes`) are added
on open too, NULL in the rows that were there.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from shared.errors import BackendUnavailable, Conflict, NotFound, not_a_member
from shared.rates import rates_from_text, rates_text
from shared.store.base import (
    ApiKey,
    AuditEntry,
    AuditFilter,
    KeyChanges,
    KeyStatus,
    Member,
    Snapshot,
    StoreChanges,
    Team,
    TeamChanges,
    changes_from_text,
    changes_text,
    member_role,
)
from shared.store.generation import GenerationFile

log = logging.getLogger("maas.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (
    team_id      TEXT PRIMARY KEY,
    team_name    TEXT NOT NULL,
    description  TEXT NOT NULL,
    policy       TEXT NOT NULL,
    token_limit  INTEGER NOT NULL CHECK (token_limit >= 1),
    time_window  TEXT NOT NULL,
    limit_scope  TEXT NOT NULL CHECK (limit_scope IN ('user', 'team')),
    created_at   TEXT NOT NULL,
    max_keys_per_user INTEGER,
    max_key_lifetime  TEXT,
    rates        TEXT
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
    replaced_by    TEXT,
    rates          TEXT,
    max_concurrent INTEGER,
    lineage        TEXT
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
    secret_name  TEXT,
    changes      TEXT
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
CREATE TABLE IF NOT EXISTS members (
    team_id      TEXT NOT NULL REFERENCES teams(team_id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('member', 'admin')),
    user_email   TEXT NOT NULL,
    joined_at    TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX IF NOT EXISTS members_user ON members(user_id, team_id);
"""

# Once per database, in the transaction that creates the table: the key holders of a database
# from before memberships become its members. Newest key by (created_at, secret_name), so that
# two keys made in the same instant still pick one deterministically.
_BACKFILL_MEMBERS = """
INSERT OR IGNORE INTO members (team_id, user_id, role, user_email, joined_at)
SELECT team_id, user_id, CASE WHEN role = 'admin' THEN 'admin' ELSE 'member' END, user_email, first_at
FROM (
    SELECT team_id, user_id, role, user_email,
           MIN(created_at) OVER (PARTITION BY team_id, user_id) AS first_at,
           ROW_NUMBER() OVER (PARTITION BY team_id, user_id ORDER BY created_at DESC, secret_name DESC) AS rank
    FROM api_keys
)
WHERE rank = 1
"""

# Idle connections kept for reuse; more may be open at once, and are closed when given back.
POOL_IDLE = 8
# Generations of changes kept: a reader further behind reads everything again.
CHANGES_KEPT = 10_000

# Columns added after the first release, for databases created before them.
_ADDED_COLUMNS = {
    "api_keys": (("replaced_by", "TEXT"), ("rates", "TEXT"), ("max_concurrent", "INTEGER"), ("lineage", "TEXT")),
    # rates: the team's list of rates as JSON (shared/rates.py), NULL for the short form alone.
    "teams": (("max_keys_per_user", "INTEGER"), ("max_key_lifetime", "TEXT"), ("rates", "TEXT")),
    # An update's before and after (base.changes_text); NULL for older entries, as for reads.
    "audit": (("changes", "TEXT"),),
}

_KEY_COLUMNS = (
    "secret_name, key_sha256, team_id, user_id, user_email, role, status, models_allowed, "
    "alias, created_at, expires_at, last_used_at, replaced_by, rates, max_concurrent, lineage"
)
_AUDIT_COLUMNS = "id, at, actor, action, method, path, outcome, team_id, secret_name, changes"
_TEAM_COLUMNS = (
    "team_id, team_name, description, policy, token_limit, time_window, limit_scope, created_at, "
    "max_keys_per_user, max_key_lifetime, rates"
)
_MEMBER_COLUMNS = "team_id, user_id, role, user_email, joined_at"


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _team(row: sqlite3.Row) -> Team:
    try:
        return _team_fields(row)
    except ValueError as exc:  # a hand-edited row: refused as the API would refuse it
        raise BackendUnavailable(f"team '{row['team_id']}' in the store is malformed ({exc}); fix or delete it") from exc


def _team_or_none(row: sqlite3.Row) -> Team | None:
    """For the gateway's view: one malformed team is left out (its keys refused), not every
    team's calls."""
    try:
        return _team(row)
    except BackendUnavailable as exc:
        log.warning("%s; its keys are refused until then", exc.message)
        return None


def _team_fields(row: sqlite3.Row) -> Team:
    return Team(
        team_id=row["team_id"],
        team_name=row["team_name"],
        description=row["description"],
        policy=row["policy"],
        token_limit=row["token_limit"],
        time_window=row["time_window"],
        limit_scope=row["limit_scope"],
        created_at=datetime.fromisoformat(row["created_at"]),
        max_keys_per_user=row["max_keys_per_user"],
        max_key_lifetime=row["max_key_lifetime"],
        rates=rates_from_text(row["rates"]),
    )


def _member(row: sqlite3.Row) -> Member:
    return Member(
        team_id=row["team_id"],
        user_id=row["user_id"],
        role=row["role"],
        user_email=row["user_email"],
        joined_at=datetime.fromisoformat(row["joined_at"]),
    )


def _key(row: sqlite3.Row) -> ApiKey:
    models = row["models_allowed"]
    return ApiKey(
        secret_name=row["secret_name"],
        key_sha256=row["key_sha256"],
        team_id=row["team_id"],
        user_id=row["user_id"],
        user_email=row["user_email"],
        role=row["role"],
        status=row["status"],
        models_allowed=tuple(models.split(",")) if models else (),
        alias=row["alias"],
        created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=_dt(row["expires_at"]),
        last_used_at=_dt(row["last_used_at"]),
        replaced_by=row["replaced_by"],
        rates=rates_from_text(row["rates"], scope="key"),
        max_concurrent=row["max_concurrent"],
        lineage=row["lineage"],
    )


def _audit(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=datetime.fromisoformat(row["at"]),
        actor=row["actor"],
        action=row["action"],
        method=row["method"],
        path=row["path"],
        outcome=row["outcome"],
        team_id=row["team_id"],
        secret_name=row["secret_name"],
        changes=changes_from_text(row["changes"]),
    )


def _page_clauses(column: str, after: str | None, within: Collection[str] | None,
                  within_column: str) -> tuple[str, list[object]]:
    """A WHERE clause for a page: `column > after`, and `within_column IN within`."""
    clauses: list[str] = []
    args: list[object] = []
    if after is not None:
        clauses.append(f"{column} > ?")
        args.append(after)
    if within is not None:
        clauses.append(f"{within_column} IN ({','.join('?' * len(within))})")
        args.extend(within)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _member_clauses(team_id: str | None, user_id: str | None) -> tuple[str, list[object]]:
    if team_id is None and user_id is None:
        raise ValueError("members are listed by team_id or by user_id")
    clauses: list[str] = []
    args: list[object] = []
    for clause, value in (("team_id = ?", team_id), ("user_id = ?", user_id)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return " AND ".join(clauses), args


def _migrate(conn: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    if conn.execute("SELECT 1 FROM meta WHERE name = 'members_backfilled'").fetchone() is None:
        conn.execute(_BACKFILL_MEMBERS)
        conn.execute("INSERT INTO meta (name, value) VALUES ('members_backfilled', 1)")


class SqliteStore:
    def __init__(self, path: Path) -> None:
        from shared.privatefiles import private_file

        # 0600 before SQLite first opens it: its -wal and -shm files take the database's mode.
        private_file(path)
        self._path = path
        self._idle: list[sqlite3.Connection] = []
        self.busy_timeout_ms = 10_000  # how long a write waits for another writer's lock
        self._open = 0  # connections made and not closed, idle or borrowed
        self._lock = threading.Lock()
        self._closed = False
        self._generation = GenerationFile(path.with_suffix(".generation"))
        try:
            with self._borrowed() as conn:
                # One write transaction for schema, columns and backfill: two processes opening
                # an old database at once cannot both add a column or both backfill.
                try:
                    conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
                    _migrate(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite store at {path} cannot be initialised: {exc}") from exc

    # -- connection and transaction plumbing --------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite store at {self._path} cannot be opened: {exc}") from exc
        return conn

    @contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise BackendUnavailable(f"SQLite store at {self._path} is closed")
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                self._open += 1
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._lock:
                    self._open -= 1
                raise
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < POOL_IDLE and not conn.in_transaction
                if keep:
                    self._idle.append(conn)
                else:
                    self._open -= 1
            if not keep:
                conn.close()

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or borrowed (for tests that count descriptors)."""
        return self._open

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._borrowed() as conn:
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"SQLite store unavailable: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, list[tuple[str | None, str | None]]]]:
        """A write transaction: (connection, changed). The caller appends what it changed,
        (team_id, key_sha256), to `changed`, recorded under the generation the write commits.
        Nothing appended (a membership change alone): the generation stays, so the gateway
        keeps its view."""
        generation: int | None = None
        with self._borrowed() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"SQLite store unavailable: {exc}") from exc
            changed: list[tuple[str | None, str | None]] = []
            try:
                yield conn, changed
                if not changed:
                    conn.execute("COMMIT")
                    return
                generation = conn.execute(
                    "UPDATE meta SET value = value + 1 WHERE name = 'generation' RETURNING value"
                ).fetchone()[0]
                conn.executemany(
                    "INSERT INTO changes (generation, team_id, key_sha256) VALUES (?, ?, ?)",
                    [(generation, team_id, sha) for team_id, sha in changed],
                )
                if generation % 1000 == 0:
                    conn.execute("DELETE FROM changes WHERE generation <= ?", (generation - CHANGES_KEPT,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if generation is not None:
            self._generation.publish(generation)

    # -- teams ---------------------------------------------------------------------------

    def create_team(self, *, team: Team) -> Team:
        try:
            with self._write() as (conn, changed):
                conn.execute(
                    f"INSERT INTO teams ({_TEAM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        team.team_id,
                        team.team_name,
                        team.description,
                        team.policy,
                        team.token_limit,
                        team.time_window,
                        team.limit_scope,
                        _ts(team.created_at),
                        team.max_keys_per_user,
                        team.max_key_lifetime,
                        rates_text(team.rates),
                    ),
                )
                changed.append((team.team_id, None))
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"team '{team.team_id}' already exists") from exc
        return team

    def get_team(self, *, team_id: str) -> Team:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM teams WHERE team_id = ?", (team_id,)).fetchone()
        if row is None:
            raise NotFound(f"team '{team_id}' not found")
        return _team(row)

    def list_teams(self, *, after: str | None = None, limit: int | None = None,
                   team_ids: Collection[str] | None = None) -> list[Team]:
        clauses, args = _page_clauses("team_id", after, team_ids, "team_id")
        sql = f"SELECT * FROM teams {clauses} ORDER BY team_id"
        with self._read() as conn:
            rows = conn.execute(sql + (" LIMIT ?" if limit is not None else ""),
                                (*args, limit) if limit is not None else args).fetchall()
        return [_team(row) for row in rows]

    def count_teams(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM teams").fetchone()[0])

    def update_team(self, *, team_id: str, changes: TeamChanges) -> Team:
        with self._write() as (conn, changed):
            row = conn.execute("SELECT * FROM teams WHERE team_id = ?", (team_id,)).fetchone()
            if row is None:
                raise NotFound(f"team '{team_id}' not found")
            updated = changes.apply(_team(row))
            conn.execute(
                "UPDATE teams SET team_name = ?, description = ?, policy = ?, token_limit = ?, "
                "time_window = ?, limit_scope = ?, max_keys_per_user = ?, max_key_lifetime = ?, rates = ? "
                "WHERE team_id = ?",
                (
                    updated.team_name,
                    updated.description,
                    updated.policy,
                    updated.token_limit,
                    updated.time_window,
                    updated.limit_scope,
                    updated.max_keys_per_user,
                    updated.max_key_lifetime,
                    rates_text(updated.rates),
                    team_id,
                ),
            )
            changed.append((team_id, None))
        return updated

    def delete_team(self, *, team_id: str) -> list[ApiKey]:
        with self._write() as (conn, changed):
            keys = [
                _key(row)
                for row in conn.execute(
                    f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE team_id = ? ORDER BY secret_name",
                    (team_id,),
                )
            ]
            conn.execute("DELETE FROM api_keys WHERE team_id = ?", (team_id,))
            conn.execute("DELETE FROM members WHERE team_id = ?", (team_id,))
            if conn.execute("DELETE FROM teams WHERE team_id = ?", (team_id,)).rowcount == 0:
                raise NotFound(f"team '{team_id}' not found")
            changed.append((team_id, None))
            changed.extend((None, key.key_sha256) for key in keys)
        return keys

    # -- members -------------------------------------------------------------------------

    def put_member(self, *, member: Member) -> Member:
        with self._write() as (conn, _):
            if conn.execute("SELECT 1 FROM teams WHERE team_id = ?", (member.team_id,)).fetchone() is None:
                raise NotFound(f"team '{member.team_id}' not found")
            row = conn.execute(
                f"INSERT INTO members ({_MEMBER_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role, user_email = excluded.user_email "
                f"RETURNING {_MEMBER_COLUMNS}",
                (member.team_id, member.user_id, member.role, member.user_email, _ts(member.joined_at)),
            ).fetchone()
        return _member(row)

    def get_member(self, *, team_id: str, user_id: str) -> Member:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_MEMBER_COLUMNS} FROM members WHERE team_id = ? AND user_id = ?", (team_id, user_id)
            ).fetchone()
        if row is None:
            raise NotFound(f"user '{user_id}' is not a member of team '{team_id}'")
        return _member(row)

    def list_members(self, *, team_id: str | None = None, user_id: str | None = None,
                     after: str | None = None, limit: int | None = None) -> list[Member]:
        where, args = _member_clauses(team_id, user_id)
        # A team's members page by user_id; a user's memberships (no team given) by team_id.
        order = "user_id" if team_id is not None else "team_id"
        if after is not None:
            where += f" AND {order} > ?"
            args.append(after)
        sql = f"SELECT {_MEMBER_COLUMNS} FROM members WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_member(row) for row in rows]

    def count_members(self, *, team_id: str | None = None, user_id: str | None = None) -> int:
        where, args = _member_clauses(team_id, user_id)
        with self._read() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM members WHERE {where}", args).fetchone()[0])

    def delete_member(self, *, team_id: str, user_id: str) -> tuple[Member, list[ApiKey]]:
        with self._write() as (conn, changed):
            row = conn.execute(
                f"DELETE FROM members WHERE team_id = ? AND user_id = ? RETURNING {_MEMBER_COLUMNS}",
                (team_id, user_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"user '{user_id}' is not a member of team '{team_id}'")
            revoked = [
                _key(key_row)
                for key_row in conn.execute(
                    f"UPDATE api_keys SET status = 'revoked' WHERE team_id = ? AND user_id = ? "
                    f"AND status = 'active' RETURNING {_KEY_COLUMNS}",
                    (team_id, user_id),
                ).fetchall()
            ]
            # The revocations are the gateway's business (as set_key_status's are); the
            # membership alone is not.
            changed.extend((None, key.key_sha256) for key in revoked)
        return _member(row), sorted(revoked, key=lambda key: key.secret_name)

    # -- keys ----------------------------------------------------------------------------

    def create_key(self, *, key: ApiKey, api_key: str, member_only: bool = False) -> ApiKey:
        del api_key  # the embedded store keeps only the SHA-256
        try:
            with self._write() as (conn, changed):
                if conn.execute("SELECT 1 FROM teams WHERE team_id = ?", (key.team_id,)).fetchone() is None:
                    raise NotFound(f"team '{key.team_id}' not found")
                if member_only and conn.execute("SELECT 1 FROM members WHERE team_id = ? AND user_id = ?",
                                                (key.team_id, key.user_id)).fetchone() is None:
                    raise not_a_member(key.team_id)
                conn.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.secret_name,
                        key.key_sha256,
                        key.team_id,
                        key.user_id,
                        key.user_email,
                        key.role,
                        key.status,
                        ",".join(key.models_allowed),
                        key.alias,
                        _ts(key.created_at),
                        _ts(key.expires_at),
                        _ts(key.last_used_at),
                        key.replaced_by,
                        rates_text(key.rates),
                        key.max_concurrent,
                        key.lineage,
                    ),
                )
                # An existing member keeps their role (an admin's new key does not demote them)
                # and the day they joined.
                conn.execute(
                    f"INSERT INTO members ({_MEMBER_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (team_id, user_id) DO NOTHING",
                    (key.team_id, key.user_id, member_role(key.role), key.user_email, _ts(key.created_at)),
                )
                changed.append((None, key.key_sha256))
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"key '{key.secret_name}' already exists") from exc
        return key

    def get_key(self, *, secret_name: str) -> ApiKey:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_name = ?", (secret_name,)
            ).fetchone()
        if row is None:
            raise NotFound(f"key '{secret_name}' not found")
        return _key(row)

    def find_key(self, *, key_sha256: str) -> ApiKey | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_sha256 = ?", (key_sha256,)
            ).fetchone()
        return None if row is None else _key(row)

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None,
                  in_grace: bool = False, team_ids: Collection[str] | None = None,
                  after: str | None = None, limit: int | None = None, with_rates: bool = False) -> list[ApiKey]:
        clauses: list[str] = ["status = 'active' AND replaced_by IS NOT NULL"] if in_grace else []
        if with_rates:
            clauses.append("rates IS NOT NULL")
        args: list[object] = []
        for clause, value in (("team_id = ?", team_id), ("user_id = ?", user_id), ("secret_name > ?", after)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        if team_ids is not None:
            clauses.append(f"team_id IN ({','.join('?' * len(team_ids))})")
            args.extend(team_ids)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys {where} ORDER BY secret_name"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_key(row) for row in rows]

    def count_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> int:
        clauses, args = [], []
        for clause, value in (("team_id = ?", team_id), ("user_id = ?", user_id)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM api_keys {where}", args).fetchone()[0])

    def key_counts(self, *, team_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        if not team_ids:
            return {}
        marks = ",".join("?" * len(team_ids))
        with self._read() as conn:
            rows = conn.execute(f"SELECT team_id, COUNT(*), COUNT(DISTINCT user_id) FROM api_keys "
                                f"WHERE team_id IN ({marks}) GROUP BY team_id", list(team_ids)).fetchall()
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def key_names(self, *, team_id: str) -> list[str]:
        with self._read() as conn:
            rows = conn.execute("SELECT secret_name FROM api_keys WHERE team_id = ? ORDER BY secret_name",
                                (team_id,)).fetchall()
        return [row[0] for row in rows]

    def count_active_keys(self, *, team_id: str, user_id: str) -> int:
        with self._read() as conn:
            return int(conn.execute(
                "SELECT COUNT(*) FROM api_keys WHERE team_id = ? AND user_id = ? AND status = 'active'",
                (team_id, user_id),
            ).fetchone()[0])

    def delete_key(self, *, secret_name: str) -> ApiKey:
        with self._write() as (conn, changed):
            row = conn.execute(
                f"DELETE FROM api_keys WHERE secret_name = ? RETURNING {_KEY_COLUMNS}", (secret_name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"key '{secret_name}' not found")
            changed.append((None, row["key_sha256"]))
        return _key(row)

    def set_key_status(self, *, secret_name: str, status: KeyStatus) -> ApiKey:
        with self._write() as (conn, changed):
            row = conn.execute(
                f"UPDATE api_keys SET status = ? WHERE secret_name = ? RETURNING {_KEY_COLUMNS}",
                (status, secret_name),
            ).fetchone()
            if row is None:
                raise NotFound(f"key '{secret_name}' not found")
            changed.append((None, row["key_sha256"]))
        return _key(row)

    def update_key(self, *, secret_name: str, changes: KeyChanges) -> ApiKey:
        sets = {name: value for name, value in (
            ("status", changes.status),
            ("expires_at", _ts(changes.expires_at)),
            ("replaced_by", changes.replaced_by),
        ) if value is not None}
        with self._write() as (conn, changed):
            if sets:
                assignments = ", ".join(f"{name} = ?" for name in sets)
                row = conn.execute(
                    f"UPDATE api_keys SET {assignments} WHERE secret_name = ? RETURNING {_KEY_COLUMNS}",
                    (*sets.values(), secret_name),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_name = ?", (secret_name,)
                ).fetchone()
            if row is None:
                raise NotFound(f"key '{secret_name}' not found")
            changed.append((None, row["key_sha256"]))
        return _key(row)

    def touch_keys(self, *, last_used: Mapping[str, datetime]) -> int:
        if not last_used:
            return 0
        # Not through _write: last use changes no authentication decision, so the generation
        # stays put and the gateway keeps its snapshot.
        with self._borrowed() as conn:
            return self._touch(conn, last_used)

    def _touch(self, conn: sqlite3.Connection, last_used: Mapping[str, datetime]) -> int:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                for secret_name, when in last_used.items():
                    changed += conn.execute(
                        "UPDATE api_keys SET last_used_at = ? WHERE secret_name = ? "
                        "AND (last_used_at IS NULL OR last_used_at < ?)",
                        (_ts(when), secret_name, _ts(when)),
                    ).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"SQLite store unavailable: {exc}") from exc
        return changed

    # -- audit ---------------------------------------------------------------------------

    def record_audit(self, *, entry: AuditEntry) -> AuditEntry:
        with self._borrowed() as conn:
            return self._record_audit(conn, entry)

    def _record_audit(self, conn: sqlite3.Connection, entry: AuditEntry) -> AuditEntry:
        try:
            # One autocommit INSERT: the audit log is not part of the store's generation.
            row = conn.execute(
                "INSERT INTO audit (at, actor, action, method, path, outcome, team_id, secret_name, changes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (_ts(entry.at), entry.actor, entry.action, entry.method, entry.path, entry.outcome,
                 entry.team_id, entry.secret_name, changes_text(entry.changes)),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"SQLite store unavailable: {exc}") from exc
        return replace(entry, id=row[0])

    def prune_audit(self, *, before: datetime) -> int:
        with self._borrowed() as conn:
            return self._prune_audit(conn, before)

    def _prune_audit(self, conn: sqlite3.Connection, before: datetime) -> int:
        try:
            # Autocommit, like record_audit: the audit log is not part of the store's generation.
            return conn.execute("DELETE FROM audit WHERE at < ?", (_ts(before),)).rowcount
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"SQLite store unavailable: {exc}") from exc

    def list_audit(self, *, where: AuditFilter) -> list[AuditEntry]:
        clauses: list[str] = []
        args: list[object] = []
        for clause, value in (
            ("action = ?", where.action),
            ("team_id = ?", where.team_id),
            ("outcome >= ?", where.outcome_min),
            ("outcome <= ?", where.outcome_max),
            ("at >= ?", _ts(where.since)),
            ("at < ?", _ts(where.until)),
            ("id < ?", where.before_id),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit"
        if clauses:
            sql += f" WHERE {' AND '.join(clauses)}"
        with self._read() as conn:
            rows = conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*args, where.limit)).fetchall()
        return [_audit(row) for row in rows]

    # -- gateway support -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._read() as conn:
            read = ((row["team_id"], _team_or_none(row)) for row in conn.execute("SELECT * FROM teams"))
            teams = {team_id: team for team_id, team in read if team is not None}
            keys = {
                row["key_sha256"]: _key(row)
                for row in conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys")
            }
        return Snapshot(teams=teams, keys_by_sha256=keys)

    def changes_since(self, generation: int) -> StoreChanges | None:
        """What changed after `generation`: the teams and keys touched, as they are now (None:
        deleted), and the generation they bring a reader to. None when the change log no
        longer reaches back that far (the reader takes a snapshot instead)."""
        with self._read() as conn:
            current = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0]
            if current == generation:
                return StoreChanges(generation=current)
            oldest = conn.execute("SELECT MIN(generation) FROM changes").fetchone()[0]
            if oldest is None or oldest > generation + 1:
                return None  # pruned past it (or a store from before the log)
            team_ids, shas = set(), set()
            for team_id, sha in conn.execute(
                "SELECT team_id, key_sha256 FROM changes WHERE generation > ?", (generation,)
            ):
                if team_id is not None:
                    team_ids.add(team_id)
                if sha is not None:
                    shas.add(sha)
            teams: dict[str, Team | None] = dict.fromkeys(team_ids)
            for team_id in team_ids:
                row = conn.execute("SELECT * FROM teams WHERE team_id = ?", (team_id,)).fetchone()
                teams[team_id] = None if row is None else _team_or_none(row)
            keys: dict[str, ApiKey | None] = dict.fromkeys(shas)
            for sha in shas:
                row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_sha256 = ?", (sha,)).fetchone()
                keys[sha] = None if row is None else _key(row)
        return StoreChanges(generation=current, teams=teams, keys_by_sha256=keys)

    def generation(self) -> int:
        return self._generation.read()

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Close the idle connections; borrowed ones close when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()
        self._generation.close()
