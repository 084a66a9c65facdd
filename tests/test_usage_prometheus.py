"""The Prometheus UsageSource against a real Prometheus: same traffic, same numbers as the ledger.

One Prometheus (module scope, ~6 s to start and discover its target) scrapes a tiny exporter
serving Limitador's three series; the same traffic is recorded in an embedded ledger, and the
usage bodies built from both sources must be equal per user, per team and per model.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.errors import BackendUnavailable
from shared.ledger import UsageLedger
from shared.store.base import ApiKey, Team
from shared.store.sqlite import SqliteStore
from shared.usage.base import UsageRow, UsageSource
from shared.usage.embedded import EmbeddedUsage
from shared.usage.prometheus import PrometheusUsage, label_value, selector
from shared.usage.schemas import TeamUsageQuery, UsageQuery
from shared.usage.service import team_usage, user_usage
from tests.prometheus_harness import Prometheus, UsageExporter, free_port, prometheus_binary

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(90)]

# (team, user, model, tokens, authorized_calls, limited_calls)
TRAFFIC = [
    ("test-team", "test.user-1", "qwen3-0-6b-instruct", 120, 3, 0),
    ("test-team", "test.user-1", "vllm-simulator", 40, 2, 1),
    ("test-team", "mittens", "qwen3-0-6b-instruct", 19, 1, 0),
    ("premium", "test.user-1", "qwen3-0-6b-instruct", 354, 19, 5),
    ("premium", "a_b", "vllm-simulator", 7, 1, 2),
]
USERS = ("test.user-1", "mittens", "a_b", "nobody")
TEAMS = ("test-team", "premium")


@pytest.fixture(scope="module")
def exporter() -> Iterator[UsageExporter]:
    served = UsageExporter().start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def prometheus(exporter: UsageExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; run tools/ensure_prometheus.sh)")
    server = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), [exporter.target]).start()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "maas.db")
    now = datetime.now(timezone.utc)
    for team_id in TEAMS:
        s.create_team(team=Team(team_id=team_id, team_name=team_id.title(), description="",
                                policy=f"{team_id}-tokens", token_limit=1000, time_window="1h",
                                limit_scope="user", created_at=now))
    for n, (team_id, user_id) in enumerate(sorted({(t, u) for t, u, *_ in TRAFFIC})):
        s.create_key(key=ApiKey(secret_name=f"apikey-{n}", key_sha256=f"{n:064x}", team_id=team_id,
                                user_id=user_id, user_email=f"{user_id}@test.com", role="member",
                                status="active", created_at=now), api_key=f"k{n}")
    yield s
    s.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[UsageLedger]:
    led = UsageLedger(tmp_path / "usage.db")
    yield led
    led.close()


def _send(ledger: UsageLedger, exporter: UsageExporter, traffic: list[tuple[str, str, str, int, int, int]]) -> None:
    for team, user, model, tokens, authorized, limited in traffic:
        ledger.record(team_id=team, user_id=user, model=model, tokens=tokens,
                      authorized_calls=authorized, limited_calls=limited)
        exporter.add(team=team, user=user, model=model, tokens=tokens, authorized_calls=authorized,
                     limited_calls=limited)


def _until_equal(source: UsageSource, expected: list[UsageRow], within_s: float = 10.0) -> list[UsageRow]:
    """Prometheus sees the exporter a scrape later: poll, bounded."""
    deadline = time.monotonic() + within_s
    while True:
        got = source.totals()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def _bodies(store: SqliteStore, source: UsageSource, now: datetime) -> dict[str, object]:
    bodies: dict[str, object] = {}
    for user in USERS:
        bodies[f"user {user}"] = user_usage(store=store, source=source, user_id=user, query=UsageQuery(),
                                            now=now).model_dump(mode="json")
    for team in TEAMS:
        bodies[f"team {team}"] = team_usage(store=store, source=source, team_id=team,
                                            query=TeamUsageQuery(), now=now).model_dump(mode="json")
    return bodies


def test_same_traffic_same_numbers_from_both_backends(
    prometheus: Prometheus, exporter: UsageExporter, store: SqliteStore, ledger: UsageLedger
) -> None:
    embedded = EmbeddedUsage(ledger)
    remote = PrometheusUsage(prometheus.url, timeout_s=5)
    _send(ledger, exporter, TRAFFIC)
    expected = embedded.totals()
    assert len(expected) == len(TRAFFIC)
    assert _until_equal(remote, expected) == expected
    now = datetime.now(timezone.utc)
    from_ledger, from_prometheus = _bodies(store, embedded, now), _bodies(store, remote, now)
    assert from_prometheus == from_ledger
    user = from_ledger["user test.user-1"]
    assert isinstance(user, dict) and user["total_token_usage"] == 514
    assert [m["token_usage"] for m in user["model_breakdown"]] == [474, 40]

    # A gateway restart resets its counters; all-time totals must still count what came before.
    exporter.reset()
    prometheus.wait_for_scrapes()
    more = [("test-team", "mittens", "qwen3-0-6b-instruct", 5, 1, 0), ("premium", "a_b", "vllm-simulator", 3, 1, 1)]
    _send(ledger, exporter, more)
    expected = embedded.totals()
    assert _until_equal(remote, expected) == expected
    assert remote.totals(team_id="premium", user_id="a_b") == embedded.totals(team_id="premium", user_id="a_b")
    assert _bodies(store, remote, now) == _bodies(store, embedded, now)
    remote.close()


def test_ranges_are_increase_estimates_close_to_the_ledger(
    prometheus: Prometheus, exporter: UsageExporter, ledger: UsageLedger
) -> None:
    # A series Prometheus has seen at 0 first, so `increase` has a start to count from.
    team, user, model = "range-team", "range.user", "qwen3-0-6b-instruct"
    exporter.add(team=team, user=user, model=model)
    prometheus.wait_for_scrapes()
    for _ in range(4):
        _send(ledger, exporter, [(team, user, model, 25, 1, 0)])
        time.sleep(0.5)
    prometheus.wait_for_scrapes()
    remote = PrometheusUsage(prometheus.url, timeout_s=5)
    end = datetime.now(timezone.utc)
    [row] = remote.totals(start=end - timedelta(minutes=5), end=end, team_id=team)
    assert row.user_id == user and abs(row.tokens - 100) <= 20 and abs(row.authorized_calls - 4) <= 1
    assert remote.totals(start=end - timedelta(minutes=5), end=end, team_id="no-such-team") == []
    points = remote.series(start=end - timedelta(minutes=3), end=end, step_s=60, team_id=team)
    assert points and {p.row.user_id for p in points} == {user}
    assert abs(sum(p.row.tokens for p in points) - 100) <= 25
    assert all(end - timedelta(minutes=3) <= p.start < end for p in points)
    remote.close()


def test_stopped_prometheus_is_503_naming_it_at_once() -> None:
    remote = PrometheusUsage(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        remote.totals(user_id="u")
    assert time.monotonic() - started < 2
    assert caught.value.status == 503 and "Prometheus at http://127.0.0.1:" in caught.value.message


def test_silent_prometheus_is_503_within_the_bound() -> None:
    """A Prometheus that accepts connections and never answers: 503 within timeout_s."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        remote = PrometheusUsage(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            remote.totals()
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 1.8
        assert "Prometheus" in caught.value.message and "within 1s" in caught.value.message
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        listener.close()


def test_label_values_are_exact_promql_strings() -> None:
    assert label_value('a"b\\c') == '"a\\"b\\\\c"'
    assert selector(team_id="t-1", user_id="first.last") == '{team="t-1",user="first.last"}'
    assert selector() == ""
