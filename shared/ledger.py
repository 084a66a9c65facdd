"""The embedded usage ledger: tokens, authorized and limited calls per (team, user, model).

The gateway calls `record` on its hot path: it only adds to an in-memory dict under a lock.
A background thread writes the buffered counts every `flush_interval_s` in one SQLite
transaction (WAL), into one-minute buckets so that time ranges can be answered.

Durability: `close()` flushes, so a clean stop loses nothing. On kill -9 what is lost is what
was recorded since the last flush: at most `flush_interval_s` plus one write (the default 0.5 s
keeps that under 1 s; tests/test_ledger.py kills a writer process to check the bound).
Ranges have the bucket's resolution: a bucket counts when its minute starts in [start, end),
with `start` rounded down to its minute.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from shared.errors import BackendUnavailable
from shared.privatefiles import private_file

BUCKET_S = 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    bucket           INTEGER NOT NULL,
    team_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    model            TEXT NOT NULL,
    tokens           INTEGER NOT NULL DEFAULT 0,
    authorized_calls INTEGER NOT NULL DEFAULT 0,
    limited_calls    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, team_id, user_id, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_team ON usage(team_id, bucket);
CREATE INDEX IF NOT EXISTS usage_user ON usage(user_id, bucket);
"""

# Per bucket and counter: far above any real count, and summable in SQLite's 64-bit integers.
_LARGEST = 2**53
_UPSERT = """
INSERT INTO usage (bucket, team_id, user_id, model, tokens, authorized_calls, limited_calls)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bucket, team_id, user_id, model) DO UPDATE SET
    tokens = tokens + excluded.tokens,
    authorized_calls = authorized_calls + excluded.authorized_calls,
    limited_calls = limited_calls + excluded.limited_calls
"""

# (bucket, team_id, user_id, model)
_Key = tuple[int, str, str, str]


@dataclass(frozen=True)
class UsageRow:
    team_id: str
    user_id: str
    model: str
    tokens: int
    authorized_calls: int
    limited_calls: int


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class UsageLedger:
    def __init__(self, path: Path, *, flush_interval_s: float = 0.5) -> None:
        # 0600 before SQLite first opens it: its -wal and -shm files take the database's mode.
        private_file(path)
        self._path = path
        self._pending: dict[_Key, list[int]] = {}
        self._pending_lock = threading.Lock()
        # Held from taking the pending counts until they are committed, so that a reader
        # never sees counts that are neither pending nor in the table.
        self._flush_lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"usage ledger at {path} cannot be opened: {exc}") from exc
        self._interval = flush_interval_s
        self._stop = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_loop, name="usage-ledger-flush", daemon=True)
        self._flusher.start()

    # -- writing -------------------------------------------------------------------------

    def record(
        self,
        *,
        team_id: str,
        user_id: str,
        model: str,
        tokens: int = 0,
        authorized_calls: int = 0,
        limited_calls: int = 0,
        at: float | None = None,
    ) -> None:
        bucket = int((time.time() if at is None else at) // BUCKET_S) * BUCKET_S
        key = (bucket, team_id, user_id, model)
        with self._pending_lock:
            counts = self._pending.get(key)
            if counts is None:
                self._pending[key] = [tokens, authorized_calls, limited_calls]
            else:
                counts[0] += tokens
                counts[1] += authorized_calls
                counts[2] += limited_calls

    def flush(self) -> None:
        with self._flush_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return
            # A count SQLite cannot hold (a caller's bug) must not wedge every later flush:
            # clamp it to the column's range rather than fail the whole batch forever.
            rows = [(*key, *(min(max(c, 0), _LARGEST) for c in counts)) for key, counts in batch.items()]
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(_UPSERT, rows)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._merge_back(batch)
                raise BackendUnavailable(f"usage ledger at {self._path} cannot be written: {exc}") from exc

    def _merge_back(self, batch: dict[_Key, list[int]]) -> None:
        """Keep counts that could not be written for the next flush instead of dropping them."""
        with self._pending_lock:
            for key, counts in batch.items():
                current = self._pending.setdefault(key, [0, 0, 0])
                for i in range(3):
                    current[i] += counts[i]

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except BackendUnavailable:
                continue  # kept pending; retried on the next tick

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._flusher.join()
        try:
            self.flush()
        finally:
            self._conn.close()

    # -- reading -------------------------------------------------------------------------

    def _select(
        self,
        start: datetime | None,
        end: datetime | None,
        team_id: str | None,
        user_id: str | None,
    ) -> Iterable[tuple[int, str, str, str, int, int, int]]:
        """Every matching bucket row, committed and pending (pending rows may repeat keys)."""
        low = None if start is None else int(_epoch(start) // BUCKET_S) * BUCKET_S
        high = None if end is None else _epoch(end)
        clauses: list[str] = []
        args: list[object] = []
        for column, value in (("team_id", team_id), ("user_id", user_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if low is not None:
            clauses.append("bucket >= ?")
            args.append(low)
        if high is not None:
            clauses.append("bucket < ?")
            args.append(high)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def wanted(key: _Key) -> bool:
            bucket, team, user, _ = key
            return (
                (team_id is None or team == team_id)
                and (user_id is None or user == user_id)
                and (low is None or bucket >= low)
                and (high is None or bucket < high)
            )

        with self._flush_lock:
            try:
                rows = self._conn.execute(
                    "SELECT bucket, team_id, user_id, model, tokens, authorized_calls, limited_calls "
                    f"FROM usage {where}",
                    args,
                ).fetchall()
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"usage ledger at {self._path} cannot be read: {exc}") from exc
            with self._pending_lock:
                pending = [(*key, *counts) for key, counts in self._pending.items() if wanted(key)]
        return [*rows, *pending]

    def totals(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsageRow]:
        """Counts grouped by (team_id, user_id, model), sorted by them; includes unflushed counts."""
        grouped: dict[tuple[str, str, str], list[int]] = {}
        for _, team, user, model, tokens, authorized, limited in self._select(start, end, team_id, user_id):
            counts = grouped.setdefault((team, user, model), [0, 0, 0])
            counts[0] += tokens
            counts[1] += authorized
            counts[2] += limited
        return [UsageRow(*key, *counts) for key, counts in sorted(grouped.items())]

    def series(
        self,
        *,
        start: datetime,
        end: datetime,
        step_s: int,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[tuple[datetime, UsageRow]]:
        """Counts per step from `start`, grouped by (team, user, model), sorted by time then ids.

        Steps shorter than a bucket (60 s) cannot be told apart and are refused (ValueError).
        Steps with no counts are left out.
        """
        if step_s < BUCKET_S:
            raise ValueError(f"step_s must be at least {BUCKET_S} seconds (the ledger's resolution)")
        origin = int(_epoch(start) // BUCKET_S) * BUCKET_S
        grouped: dict[tuple[int, str, str, str], list[int]] = {}
        for bucket, team, user, model, tokens, authorized, limited in self._select(start, end, team_id, user_id):
            step_start = origin + (bucket - origin) // step_s * step_s
            counts = grouped.setdefault((step_start, team, user, model), [0, 0, 0])
            counts[0] += tokens
            counts[1] += authorized
            counts[2] += limited
        return [
            (datetime.fromtimestamp(key[0], tz=timezone.utc), UsageRow(*key[1:], *counts))
            for key, counts in sorted(grouped.items())
        ]
