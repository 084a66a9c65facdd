"""The usage ledger: buffered counts, ranges, restarts, and the loss bound on kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.ledger import UsageLedger, UsageRow

T0 = datetime(2025, 8, 25, 6, 0, tzinfo=timezone.utc)


def _at(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


def test_totals_group_sort_and_include_unflushed_counts(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "usage.db", flush_interval_s=60)
    try:
        ledger.record(team_id="t2", user_id="bob", model="m", tokens=5, authorized_calls=1)
        ledger.record(team_id="t1", user_id="alice", model="m", tokens=7, authorized_calls=1)
        ledger.flush()
        ledger.record(team_id="t1", user_id="alice", model="m", tokens=3, authorized_calls=1)
        ledger.record(team_id="t1", user_id="alice", model="m", limited_calls=1)
        assert ledger.totals() == [
            UsageRow("t1", "alice", "m", 10, 2, 1),
            UsageRow("t2", "bob", "m", 5, 1, 0),
        ]
        assert ledger.totals(team_id="t2") == [UsageRow("t2", "bob", "m", 5, 1, 0)]
        assert ledger.totals(user_id="alice", team_id="t2") == []
    finally:
        ledger.close()


def test_ranges_and_series_by_minute_buckets(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "usage.db")
    try:
        for minute, tokens in ((0, 1), (1, 10), (2, 100), (62, 1000)):
            ledger.record(team_id="t", user_id="u", model="m", tokens=tokens, authorized_calls=1, at=_at(minute + 0.5))
        ledger.flush()
        ledger.record(team_id="t", user_id="u", model="m", tokens=10_000, at=_at(3))  # pending
        assert ledger.totals(start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=3))[0].tokens == 110
        assert ledger.totals(start=T0 + timedelta(minutes=1, seconds=30))[0].tokens == 11_110
        assert ledger.totals(end=T0 + timedelta(minutes=1))[0].tokens == 1
        series = ledger.series(start=T0, end=T0 + timedelta(hours=2), step_s=3600)
        assert [(t, row.tokens) for t, row in series] == [(T0, 10_111), (T0 + timedelta(hours=1), 1000)]
        with pytest.raises(ValueError):
            ledger.series(start=T0, end=T0 + timedelta(hours=1), step_s=1)
    finally:
        ledger.close()


def test_counts_survive_a_clean_stop_and_accumulate_after_restart(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "usage.db", flush_interval_s=60)
    ledger.record(team_id="t", user_id="u", model="m", tokens=4, authorized_calls=1)
    ledger.close()  # never flushed by the timer: close must write it
    again = UsageLedger(tmp_path / "usage.db")
    try:
        again.record(team_id="t", user_id="u", model="m", tokens=6, authorized_calls=1)
        again.flush()
        assert again.totals() == [UsageRow("t", "u", "m", 10, 2, 0)]
    finally:
        again.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shared.ledger import UsageLedger
    ledger = UsageLedger(Path(sys.argv[1]))
    n = 0
    while True:
        ledger.record(team_id="t", user_id="u", model="m", tokens=1)
        n += 1
        if n % 50 == 0:
            print(n, flush=True)
        time.sleep(0.001)
    """
)


def test_kill_9_loses_at_most_one_second_of_counts(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert writer.stdout is not None
    progress: list[tuple[float, int]] = []
    deadline = time.monotonic() + 2.5
    try:
        while time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            progress.append((time.monotonic(), int(line)))
    finally:
        writer.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        writer.wait(5)
        writer.stdout.close()
    assert progress and progress[-1][1] > 500, "the writer did not get going"
    # Everything recorded more than 1 s before the kill must be on disk.
    recorded_before = max(n for t, n in progress if t <= killed_at - 1.0)
    ledger = UsageLedger(path)
    try:
        [row] = ledger.totals()
    finally:
        ledger.close()
    assert recorded_before <= row.tokens <= progress[-1][1] + 50


def test_a_count_beyond_sqlite_range_does_not_wedge_the_ledger(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "usage.db", flush_interval_s=60)
    try:
        ledger.record(team_id="t", user_id="u", model="m", tokens=10**30, authorized_calls=1)
        ledger.flush()
        ledger.record(team_id="t", user_id="u", model="m", tokens=5, authorized_calls=1)
        ledger.flush()
        [row] = ledger.totals()
        assert row.authorized_calls == 2 and row.tokens == 2**53 + 5
    finally:
        ledger.close()
