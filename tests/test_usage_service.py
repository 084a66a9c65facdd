"""The usage bodies from the embedded ledger: shapes, sums, names from the store, ranges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.errors import InvalidRequest, NotFound
from shared.ledger import UsageLedger, UsageRow
from shared.store.base import ApiKey, Team
from shared.store.sqlite import SqliteStore
from shared.usage.base import UsagePoint
from shared.usage.embedded import EmbeddedUsage
from shared.usage.schemas import TeamUsageQuery, UsageQuery, UserUsageQuery
from shared.usage.service import resolve_range, team_usage, user_usage

NOW = datetime(2025, 8, 25, 12, 0, tzinfo=timezone.utc)
T0 = NOW.timestamp()


def _team(team_id: str, name: str, policy: str) -> Team:
    return Team(team_id=team_id, team_name=name, description="", policy=policy, token_limit=1000,
                time_window="1h", limit_scope="user", created_at=NOW)


def _key(team_id: str, user_id: str, n: int) -> ApiKey:
    return ApiKey(secret_name=f"apikey-{user_id}-{team_id}-0000000{n}", key_sha256=f"{n:064x}",
                  team_id=team_id, user_id=user_id, user_email=f"{user_id}@test.com", role="member",
                  status="active", created_at=NOW)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "maas.db")
    s.create_team(team=_team("test-team", "Test Team", "test-tokens"))
    s.create_team(team=_team("premium", "Premium", "premium-tokens"))
    s.create_key(key=_key("test-team", "testuser", 1), api_key="k1")
    s.create_key(key=_key("test-team", "mittens", 2), api_key="k2")
    s.create_key(key=_key("premium", "testuser", 3), api_key="k3")
    yield s
    s.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[UsageLedger]:
    led = UsageLedger(tmp_path / "usage.db")
    # Two hours ago and now: the 1h window sees only the recent traffic.
    led.record(team_id="test-team", user_id="testuser", model="qwen3-0-6b-instruct", tokens=100,
               authorized_calls=4, at=T0 - 7200)
    led.record(team_id="test-team", user_id="testuser", model="vllm-simulator", tokens=50,
               authorized_calls=2, limited_calls=1, at=T0 - 60)
    led.record(team_id="test-team", user_id="mittens", model="qwen3-0-6b-instruct", tokens=7,
               authorized_calls=1, at=T0 - 60)
    led.record(team_id="premium", user_id="testuser", model="qwen3-0-6b-instruct", tokens=30,
               authorized_calls=3, limited_calls=2, at=T0 - 60)
    # Traffic of a team that no longer exists keeps its id.
    led.record(team_id="gone", user_id="testuser", model="vllm-simulator", tokens=1,
               authorized_calls=1, at=T0 - 60)
    led.flush()
    yield led
    led.close()


def test_user_usage_all_time_has_the_quickstart_shape(store: SqliteStore, ledger: UsageLedger) -> None:
    body = user_usage(store=store, source=EmbeddedUsage(ledger), user_id="testuser",
                      query=UserUsageQuery(), now=NOW).model_dump(mode="json")
    assert body["user_id"] == "testuser"
    assert (body["total_token_usage"], body["total_authorized_calls"], body["total_limited_calls"]) == (181, 10, 3)
    assert body["team_breakdown"] == [
        {"team_id": "gone", "team_name": "", "policy": "", "token_usage": 1, "authorized_calls": 1,
         "limited_calls": 0},
        {"team_id": "premium", "team_name": "Premium", "policy": "premium-tokens", "token_usage": 30,
         "authorized_calls": 3, "limited_calls": 2},
        {"team_id": "test-team", "team_name": "Test Team", "policy": "test-tokens", "token_usage": 150,
         "authorized_calls": 6, "limited_calls": 1},
    ]
    assert [m["model"] for m in body["model_breakdown"]] == ["qwen3-0-6b-instruct", "vllm-simulator"]
    assert body["model_breakdown"][0]["token_usage"] == 130
    assert body["last_updated"] == "2025-08-25T12:00:00.000000Z"
    assert body["start"] is None and body["end"] is None


def test_team_usage_has_emails_and_sorted_users(store: SqliteStore, ledger: UsageLedger) -> None:
    body = team_usage(store=store, source=EmbeddedUsage(ledger), team_id="test-team",
                      query=TeamUsageQuery(), now=NOW).model_dump(mode="json")
    assert (body["team_name"], body["policy"]) == ("Test Team", "test-tokens")
    assert (body["total_token_usage"], body["total_authorized_calls"], body["total_limited_calls"]) == (157, 7, 1)
    assert body["user_breakdown"] == [
        {"user_id": "mittens", "user_email": "mittens@test.com", "token_usage": 7, "authorized_calls": 1,
         "limited_calls": 0},
        {"user_id": "testuser", "user_email": "testuser@test.com", "token_usage": 150,
         "authorized_calls": 6, "limited_calls": 1},
    ]
    assert body["series"] is None


def test_window_limits_the_range(store: SqliteStore, ledger: UsageLedger) -> None:
    body = user_usage(store=store, source=EmbeddedUsage(ledger), user_id="testuser",
                      query=UserUsageQuery(window="1h"), now=NOW)
    assert body.total_token_usage == 81
    assert body.start == NOW - timedelta(hours=1) and body.end == NOW


def test_user_without_traffic_gets_zeros(store: SqliteStore, ledger: UsageLedger) -> None:
    body = user_usage(store=store, source=EmbeddedUsage(ledger), user_id="nobody",
                      query=UserUsageQuery(), now=NOW)
    assert (body.total_token_usage, body.total_authorized_calls, body.total_limited_calls) == (0, 0, 0)
    assert body.team_breakdown == [] and body.model_breakdown == []


def test_unknown_team_is_not_found(store: SqliteStore, ledger: UsageLedger) -> None:
    with pytest.raises(NotFound):
        team_usage(store=store, source=EmbeddedUsage(ledger), team_id="nope", query=TeamUsageQuery(), now=NOW)


def test_team_series_is_dense_per_user(store: SqliteStore, ledger: UsageLedger) -> None:
    body = team_usage(store=store, source=EmbeddedUsage(ledger), team_id="test-team",
                      query=TeamUsageQuery(window="3h", step="1h"), now=NOW)
    assert body.step_seconds == 3600 and body.series is not None
    assert [s.user_id for s in body.series] == ["mittens", "testuser"]
    testuser = body.series[1]
    assert len(testuser.points) == 3
    assert [p.token_usage for p in testuser.points] == [0, 100, 50]  # 09-10, 10-11, 11-12
    assert [p.limited_calls for p in testuser.points] == [0, 0, 1]
    assert sum(p.token_usage for p in body.series[0].points) == 7


def test_user_series_is_dense_per_model_across_teams(store: SqliteStore, ledger: UsageLedger) -> None:
    body = user_usage(store=store, source=EmbeddedUsage(ledger), user_id="testuser",
                      query=UserUsageQuery(window="3h", step="1h"), now=NOW)
    assert body.step_seconds == 3600 and body.series is not None
    assert [s.model for s in body.series] == ["qwen3-0-6b-instruct", "vllm-simulator"]
    qwen, simulator = body.series
    assert [p.token_usage for p in qwen.points] == [0, 100, 30]  # test-team's 100, premium's 30
    assert [p.token_usage for p in simulator.points] == [0, 0, 51]  # test-team's 50, a deleted team's 1
    assert [p.limited_calls for p in simulator.points] == [0, 0, 1]
    # The series sums to the totals over the same range, and without a step there is none.
    assert sum(p.token_usage for s in body.series for p in s.points) == body.total_token_usage
    assert user_usage(store=store, source=EmbeddedUsage(ledger), user_id="testuser",
                      query=UserUsageQuery(window="3h"), now=NOW).series is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"window": "soon"}, "window"),
        ({"window": "1h", "start": "2025-08-25T00:00:00Z", "end": "2025-08-25T02:00:00Z"}, "window"),
        ({"start": "2025-08-25T02:00:00Z", "end": "2025-08-25T01:00:00Z"}, "start"),
        ({"step": "1h"}, "step"),
        ({"window": "1h", "step": "10s"}, "step"),
        ({"window": "7d", "step": "1m"}, "step"),
        ({"window": "1h", "step": "x"}, "step"),
    ],
)
def test_bad_ranges_name_the_parameter(store: SqliteStore, ledger: UsageLedger, query: dict[str, str],
                                       field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        team_usage(store=store, source=EmbeddedUsage(ledger), team_id="test-team",
                   query=TeamUsageQuery.model_validate(query), now=NOW)
    assert caught.value.details[0]["field"] == field
    assert field in caught.value.message


def test_start_alone_runs_to_now_and_end_alone_from_the_beginning() -> None:
    start = NOW - timedelta(hours=2)
    assert resolve_range(UsageQuery(start=start), NOW).end == NOW
    only_end = resolve_range(UsageQuery(end=start), NOW)
    assert only_end.start is None and only_end.end == start
    assert resolve_range(UsageQuery(start=start, window="1h"), NOW).end == start + timedelta(hours=1)


class _NoCallsByModel:
    """A source shaped like Prometheus over Limitador: rows per (team, user), tokens per model."""

    calls_by_model = False

    def __init__(self) -> None:
        self.asked: list[dict[str, object]] = []

    def totals(self, **_: object) -> list[UsageRow]:
        return [UsageRow("premium", "testuser", "", 30, 3, 2), UsageRow("test-team", "testuser", "", 50, 2, 1)]

    def model_tokens(self, **query: object) -> list[tuple[str, int]]:
        self.asked.append(query)
        return [("other", 5), ("qwen3-0-6b-instruct", 75)]

    def series(self, **_: object) -> list[UsagePoint]:
        return []

    def close(self) -> None: ...


def test_a_source_without_calls_per_model_gives_tokens_per_model_and_null_calls(
    store: SqliteStore, ledger: UsageLedger
) -> None:
    source = _NoCallsByModel()
    start = NOW - timedelta(hours=1)
    body = user_usage(store=store, source=source, user_id="testuser", query=UserUsageQuery(window="1h"), now=NOW)
    assert (body.total_token_usage, body.total_authorized_calls, body.total_limited_calls) == (80, 5, 3)
    assert [(t.team_id, t.token_usage, t.authorized_calls) for t in body.team_breakdown] == [
        ("premium", 30, 3), ("test-team", 50, 2)]
    assert body.model_dump(mode="json")["model_breakdown"] == [
        {"model": "other", "token_usage": 5, "authorized_calls": None, "limited_calls": None},
        {"model": "qwen3-0-6b-instruct", "token_usage": 75, "authorized_calls": None, "limited_calls": None},
    ]
    team = team_usage(store=store, source=source, team_id="test-team", query=TeamUsageQuery(), now=NOW)
    assert all(m.authorized_calls is None and m.limited_calls is None for m in team.model_breakdown)
    # Asked for the same range and the same user / team as the rows.
    assert source.asked == [{"start": start, "end": NOW, "team_id": None, "user_id": "testuser"},
                            {"start": None, "end": None, "team_id": "test-team", "user_id": None}]
    # The ledger knows calls per model: ints there.
    assert user_usage(store=store, source=EmbeddedUsage(ledger), user_id="testuser", query=UserUsageQuery(),
                      now=NOW).model_breakdown[0].authorized_calls == 7


def test_both_sources_answer_the_one_protocol(ledger: UsageLedger) -> None:
    from shared.usage.base import UsageSource
    from shared.usage.prometheus import PrometheusUsage

    embedded = EmbeddedUsage(ledger)
    assert isinstance(embedded, UsageSource) and embedded.calls_by_model is True
    assert PrometheusUsage.calls_by_model is False and hasattr(PrometheusUsage, "model_tokens")
    # The ledger's tokens per model are its rows' tokens, summed by model.
    by_model: dict[str, int] = {}
    for row in embedded.totals():
        by_model[row.model] = by_model.get(row.model, 0) + row.tokens
    assert embedded.model_tokens() == sorted((m, n) for m, n in by_model.items() if n)
    assert embedded.model_tokens(team_id="test-team") != embedded.model_tokens(team_id="nobody") == []
