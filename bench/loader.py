"""Bulk rows for the admin bench: teams, keys and a usage ledger written straight into the
embedded store's and the ledger's SQLite schemas.

Why not SqliteStore.create_team/create_key in a loop: that is one write transaction (and one
generation) per row, ~110,000 of them for the full load, minutes on this machine; loading is
not what the bench measures. The schemas themselves are made by SqliteStore and UsageLedger,
so the rows land in exactly what the runtime opens.

A bulk load bypasses the store's change log, so it empties `changes` and moves the generation
on: a reader that kept an older view (a gateway's key cache) finds the log no longer reaches
back to it and reads a whole snapshot instead of missing these rows.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.ledger import BUCKET_S, UsageLedger
from shared.store.base import ApiKey, Team
from shared.store.generation import GenerationFile
from shared.store.sqlite import SqliteStore

KEYS_PER_TEAM = 10
# Ledger rows per key: 100k keys make the 1 million bucket rows.
ROWS_PER_KEY = 10
# Requests each bucket row stands for: 1 million rows hold 10 million requests' counts.
REQUESTS_PER_ROW = 10
LEDGER_DAYS = 30
# Big enough that no bench run is ever refused for tokens.
TOKEN_LIMIT = 2**50
MODELS = ("qwen3-0-6b-instruct", "vllm-simulator")


def team_id(index: int) -> str:
    return f"team-{index:05d}"


def user_id(index: int) -> str:
    return f"user-{index:06d}"


def team_of_key(index: int) -> int:
    return index // KEYS_PER_TEAM


@dataclass(frozen=True)
class Loaded:
    keys: int  # keys in the store after this step
    teams: int
    ledger_rows: int


def _team(index: int, now: datetime) -> Team:
    tid = team_id(index)
    return Team(tid, f"Team {index}", "bench", tid, TOKEN_LIMIT, "1h", "user", now)


def _key(index: int, now: datetime) -> ApiKey:
    uid, tid = user_id(index), team_id(team_of_key(index))
    # A real key's hash, whose plaintext is dropped at once: nothing here can call with it.
    sha = key_sha256(generate_api_key())
    return ApiKey(secret_name_for(uid, tid), sha, tid, uid, f"{uid}@example.com", "member", "active", now)


def _team_row(team: Team) -> tuple[object, ...]:
    return (team.team_id, team.team_name, team.description, team.policy, team.token_limit,
            team.time_window, team.limit_scope, team.created_at.isoformat())


def _key_row(key: ApiKey) -> tuple[object, ...]:
    return (key.secret_name, key.key_sha256, key.team_id, key.user_id, key.user_email, key.role,
            key.status, ",".join(key.models_allowed), key.alias, key.created_at.isoformat())


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    # Index pages of a million rows stay in memory while they are written (the default 2 MB
    # cache made the ledger load twice as slow).
    conn.execute("PRAGMA cache_size=-262144")
    return conn


def load_store(db: Path, first_key: int, end_key: int) -> None:
    """Keys [first_key, end_key) and the teams they need, KEYS_PER_TEAM keys per team."""
    SqliteStore(db).close()  # the schema, exactly as the runtime makes it
    now = datetime.now(timezone.utc)
    # Whole teams per step, so that a step never adds keys to a team loaded before.
    assert first_key % KEYS_PER_TEAM == 0 and end_key % KEYS_PER_TEAM == 0
    first_team, end_team = team_of_key(first_key), team_of_key(end_key)
    teams = [_team_row(_team(i, now)) for i in range(first_team, end_team)]
    keys = [_key_row(_key(i, now)) for i in range(first_key, end_key)]
    conn = _connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO teams (team_id, team_name, description, policy, token_limit, "
                         "time_window, limit_scope, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", teams)
        conn.executemany("INSERT INTO api_keys (secret_name, key_sha256, team_id, user_id, user_email, role, "
                         "status, models_allowed, alias, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", keys)
        conn.execute("DELETE FROM changes")
        generation = conn.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'generation' RETURNING value").fetchone()[0]
        conn.execute("COMMIT")
    finally:
        conn.close()
    published = GenerationFile(db.with_suffix(".generation"))
    try:
        published.publish(generation)
    finally:
        published.close()


def add_key(db: Path, *, team_index: int, user: str, api_key: str) -> str:
    """One key the bench can call the gateway with, through the store's own API; its handle."""
    store = SqliteStore(db)
    try:
        tid = team_id(team_index)
        key = ApiKey(secret_name_for(user, tid), key_sha256(api_key), tid, user, f"{user}@example.com",
                     "member", "active", datetime.now(timezone.utc))
        store.create_key(key=key, api_key=api_key)
        return key.secret_name
    finally:
        store.close()


def load_ledger(path: Path, first_key: int, end_key: int, rng: random.Random) -> int:
    """ROWS_PER_KEY one-minute bucket rows for each of the keys' users, over the last
    LEDGER_DAYS days; returns the rows written."""
    UsageLedger(path).close()  # the schema, exactly as the gateway makes it
    newest = int(datetime.now(timezone.utc).timestamp()) // BUCKET_S
    minutes = LEDGER_DAYS * 24 * 60
    rows: list[tuple[object, ...]] = []
    for index in range(first_key, end_key):
        tid, uid = team_id(team_of_key(index)), user_id(index)
        for n, ago in enumerate(rng.sample(range(minutes), ROWS_PER_KEY)):
            calls = REQUESTS_PER_ROW
            rows.append(((newest - ago) * BUCKET_S, tid, uid, MODELS[n % 2],
                         calls * rng.randint(20, 60), calls, 0))
    rows.sort()  # primary-key order: SQLite appends instead of splitting pages
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO usage (bucket, team_id, user_id, model, tokens, authorized_calls, "
                         "limited_calls) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return len(rows)
