"""The Prometheus UsageSource against a real Prometheus: same traffic, same numbers as the ledger.

One Prometheus (module scope, ~6 s to start and discover its target) scrapes a tiny exporter
serving Limitador's three series in Limitador's shapes (`model` on tokens only, one series set
per route); the same traffic is recorded in an embedded ledger, and the usage bodies built from
both sources must be equal per user, per team and in tokens per model. Calls per model are the
one thing Prometheus cannot know: null there.
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
from shared.usage.schemas import TeamUsageQuery, UserUsageQuery
from shared.usage.service import team_usage, user_usage
from tests.prometheus_harness import Prometheus, UsageExporter, free_port, prometheus_binary

ROUTES = ("llm/qwen3-0-6b-instruct", "llm/vllm-simulator", "llm/maas-models")

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
    """Each entry through another HTTPRoute (limitador_namespace) in turn: a team's traffic spans
    several series sets, as with one KServe route per model."""
    for n, (team, user, model, tokens, authorized, limited) in enumerate(traffic):
        ledger.record(team_id=team, user_id=user, model=model, tokens=tokens,
                      authorized_calls=authorized, limited_calls=limited)
        exporter.add(team=team, user=user, model=model, tokens=tokens, authorized_calls=authorized,
                     limited_calls=limited, route=ROUTES[n % len(ROUTES)])


def _pairs(rows: list[UsageRow]) -> list[UsageRow]:
    """The ledger's rows summed per (team, user): the rows Prometheus answers (calls have no model)."""
    summed: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        counts = summed.setdefault((r.team_id, r.user_id), [0, 0, 0])
        for i, n in enumerate((r.tokens, r.authorized_calls, r.limited_calls)):
            counts[i] += n
    return [UsageRow(team, user, "", *counts) for (team, user), counts in sorted(summed.items())]


def _until_equal(source: UsageSource, expected: list[UsageRow], within_s: float = 10.0) -> list[UsageRow]:
    """Prometheus sees the exporter a scrape later: poll, bounded."""
    deadline = time.monotonic() + within_s
    while True:
        got = source.totals()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def _without_model_calls(bodies: dict[str, object], *, calls: type) -> dict[str, object]:
    """Drop each model's calls after checking their type: int from the ledger, None from Prometheus."""
    for name, body in bodies.items():
        assert isinstance(body, dict)
        for entry in body["model_breakdown"]:
            assert isinstance(entry.pop("authorized_calls"), calls), name
            assert isinstance(entry.pop("limited_calls"), calls), name
    return bodies


def _bodies(store: SqliteStore, source: UsageSource, now: datetime) -> dict[str, object]:
    bodies: dict[str, object] = {}
    for user in USERS:
        bodies[f"user {user}"] = user_usage(store=store, source=source, user_id=user, query=UserUsageQuery(),
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
    assert len(embedded.totals()) == len(TRAFFIC)
    expected = _pairs(embedded.totals())
    # One row per (team, user), its tokens and its calls together, summed over routes and models.
    assert len(expected) == 4 and expected[3] == UsageRow("test-team", "test.user-1", "", 160, 5, 1)
    assert _until_equal(remote, expected) == expected
    now = datetime.now(timezone.utc)
    from_ledger = _without_model_calls(_bodies(store, embedded, now), calls=int)
    from_prometheus = _without_model_calls(_bodies(store, remote, now), calls=type(None))
    assert from_prometheus == from_ledger
    user = from_ledger["user test.user-1"]
    assert isinstance(user, dict) and user["total_token_usage"] == 514
    assert [m["token_usage"] for m in user["model_breakdown"]] == [474, 40]

    # A gateway restart resets its counters; all-time totals must still count what came before.
    exporter.reset()
    prometheus.wait_for_scrapes()
    more = [("test-team", "mittens", "qwen3-0-6b-instruct", 5, 1, 0), ("premium", "a_b", "vllm-simulator", 3, 1, 1)]
    _send(ledger, exporter, more)
    expected = _pairs(embedded.totals())
    assert _until_equal(remote, expected) == expected
    assert remote.totals(team_id="premium", user_id="a_b") == _pairs(embedded.totals(team_id="premium", user_id="a_b"))
    assert (_without_model_calls(_bodies(store, remote, now), calls=type(None))
            == _without_model_calls(_bodies(store, embedded, now), calls=int))
    remote.close()


def test_ranges_are_increase_estimates_close_to_the_ledger(
    prometheus: Prometheus, exporter: UsageExporter, ledger: UsageLedger
) -> None:
    # Series Prometheus has seen at 0 first, so `increase` has a start to count from (on the
    # route _send puts a one-entry traffic on).
    team, user, model = "range-team", "range.user", "qwen3-0-6b-instruct"
    exporter.add(team=team, user=user, model=model, route=ROUTES[0])
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


def test_any_model_label_value_bounded_breakdown_exact_totals(
    prometheus: Prometheus, exporter: UsageExporter
) -> None:
    """`model` is whatever the client sent: odd strings and many of them. The breakdown names the
    `max_models` with most tokens, sums the rest under "other", and adds up to the total."""
    team, user = "wild-team", "wild.user"
    odd = ['a"b', "back\\slash", "new\nline", "ünï €", "{x=\"y\"}", "", "other", " "]
    models = odd + [f"random-{n:03d}" for n in range(40)]
    for n, model in enumerate(models):
        exporter.add(team=team, user=user, model=model, tokens=n + 1, authorized_calls=1,
                     route=ROUTES[n % len(ROUTES)])
    total = sum(range(1, len(models) + 1))
    remote = PrometheusUsage(prometheus.url, timeout_s=5, max_models=5)
    expected = [UsageRow(team, user, "", total, len(models), 0)]
    deadline = time.monotonic() + 10
    while remote.totals(team_id=team) != expected and time.monotonic() < deadline:
        time.sleep(0.25)
    assert remote.totals(team_id=team) == expected
    breakdown = dict(remote.model_tokens(team_id=team))
    # The five largest (random-035..039), and everything else, the "other" label's 7 included.
    assert breakdown == {**{f"random-{n:03d}": len(odd) + n + 1 for n in range(35, 40)},
                         "other": total - sum(len(odd) + n + 1 for n in range(35, 40))}
    everything = dict(PrometheusUsage(prometheus.url, timeout_s=5).model_tokens(team_id=team))
    assert everything == {model: n + 1 for n, model in enumerate(models)}
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
