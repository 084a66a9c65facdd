"""The `cleanup` CloudEvent function: over real HTTP under the functions-framework CLI (binary
and structured mode, built with the cloudevents SDK as Knative sends them), in-process through
functions-framework's app, and fed by local/events.py's EventsService.

Every reply is empty (202 handled, 5xx retry, 4xx never retry: tests/cluster/test_eventing.py
holds the Broker's side); what was done is read from the store and from the one log line each
event gets."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import functions_framework
import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from functions._context import install_context
from functions.cleanup import HANDLED
from local.events import EventsService, ping_event, team_deleted_event
from shared import teams
from shared.context import Context, build_context
from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.schemas import TeamCreate
from shared.settings import Settings
from shared.store.base import ApiKey, Store, Team
from shared.store.sqlite import SqliteStore
from tests.runtime import ROOT

NAMESPACE = "llm"
DELETE = "dev.knative.apiserver.resource.delete"
PING = "dev.knative.sources.ping"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _team(store: Store, team_id: str) -> None:
    store.create_team(team=Team(team_id, team_id, "", team_id, 1000, "1h", "user", _now()))


def _key(store: Store, team_id: str, user_id: str = "alice", **fields: Any) -> ApiKey:
    api_key = generate_api_key()
    key = ApiKey(
        secret_name=secret_name_for(user_id, team_id), key_sha256=key_sha256(api_key), team_id=team_id,
        user_id=user_id, user_email="", role="member", status="active", created_at=_now() - timedelta(days=30),
    )
    return store.create_key(key=replace(key, **fields), api_key=api_key)


def _orphan_team(database: Path, team_id: str) -> None:
    """Remove a team behind the store's back, leaving its keys: what a team Secret deleted with
    kubectl leaves in a cluster until its event arrives (plain sqlite3 enforces no foreign keys)."""
    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM teams WHERE team_id = ?", (team_id,))
    conn.close()


def _secret_event(team_id: str, *, namespace: str = NAMESPACE, kind: str = "team-config") -> CloudEvent:
    data = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"team-{team_id}-config", "namespace": namespace,
                     "labels": {"maas/resource-type": kind, "maas/team-id": team_id}},
        "type": "Opaque",
    }
    return CloudEvent({"type": DELETE, "source": "https://10.96.0.1:443",
                       "subject": f"/api/v1/namespaces/{namespace}/secrets/team-{team_id}-config"}, data)


def _ping() -> CloudEvent:
    return CloudEvent({"type": PING, "source": f"/apis/v1/namespaces/{NAMESPACE}/pingsources/maas-cleanup"},
                      {"message": "sweep"})


# -- over real HTTP, the function alone under the functions-framework CLI -----------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served(NamedTuple):
    base: str
    store: SqliteStore
    database: Path
    log: Path

    def summaries(self) -> list[dict[str, Any]]:
        """The summaries the target logged, one line per handled event, oldest first."""
        return summaries_in(self.log.read_text())


_SUMMARY_LINE = re.compile(r"^INFO maas\.cleanup: cleanup \S+ \S+: 202 (\{.*\})$", re.MULTILINE)


def summaries_in(log: str) -> list[dict[str, Any]]:
    return [json.loads(found) for found in _SUMMARY_LINE.findall(log)]


@contextmanager
def cleanup_target(data_dir: Path, log: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`functions-framework --target=cleanup` on a free port, its stderr in `log`; yields its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "FUNCTION_TARGET"}
    env.update({"MAAS_DATA_DIR": str(data_dir), "MAAS_NAMESPACE": NAMESPACE, **(extra_env or {})})
    cli = Path(sys.executable).parent / "functions-framework"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(cli), "--source", "main.py", "--target", "cleanup", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                httpx.get(base, timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "cleanup target did not start"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The cleanup target under the CLI, and the store it works on."""
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir / "maas.db")
    try:
        with cleanup_target(data_dir, tmp_path / "cleanup.log") as base:
            yield Served(base, store, data_dir / "maas.db", tmp_path / "cleanup.log")
    finally:
        store.close()


def assert_empty(reply: httpx.Response | Any, status: int = HANDLED) -> None:
    """The status, and no body: what the Broker takes for the end of the delivery."""
    content = reply.content if isinstance(reply, httpx.Response) else reply.data
    assert (reply.status_code, content) == (status, b""), content[:300]


def _send(base: str, event: CloudEvent, mode: str) -> httpx.Response:
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return httpx.post(base, headers=headers, content=body, timeout=30)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_team_secret_delete_removes_the_teams_keys_once(served: Served, mode: str) -> None:
    base, store, database, _ = served
    _team(store, "team-a")
    _team(store, "team-b")
    left = sorted(_key(store, "team-a", user).secret_name for user in ("alice", "bob"))
    kept = _key(store, "team-b")
    _orphan_team(database, "team-a")

    assert_empty(_send(base, _secret_event("team-a"), mode))
    assert store.list_keys() == [kept]
    assert served.summaries() == [{"event_type": DELETE, "team_id": "team-a", "deleted_keys": left,
                                   "expired_keys": [], "revoked_keys": [], "policies_synced": True,
                                   "audit_pruned": 0, "ignored": None}]
    # The same event again (Knative delivers at least once): nothing left to change.
    assert_empty(_send(base, _secret_event("team-a"), "structured" if mode == "binary" else "binary"))
    assert served.summaries()[-1]["deleted_keys"] == []
    assert store.list_keys() == [kept]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_ping_reconciles_everything_once(served: Served, mode: str) -> None:
    base, store, database, _ = served
    now = _now()
    _team(store, "live")
    _team(store, "gone")
    orphan = _key(store, "gone")
    _orphan_team(database, "gone")
    fine = _key(store, "live", "fine", expires_at=now + timedelta(days=1))
    expired = _key(store, "live", "late", expires_at=now - timedelta(minutes=1))
    long_expired = _key(store, "live", "ancient", expires_at=now - timedelta(days=8))
    successor = _key(store, "live", "rotated")
    rotated = _key(store, "live", "rotated", expires_at=now - timedelta(seconds=1), replaced_by=successor.secret_name)
    revoked = _key(store, "live", "revoked", status="revoked")

    assert_empty(_send(base, _ping(), mode))
    (body,) = served.summaries()
    assert body["event_type"] == PING and body["policies_synced"] is True
    # The long-expired key is marked expired and, past the 7-day retention, deleted in the same sweep.
    assert sorted(body["deleted_keys"]) == sorted([orphan.secret_name, long_expired.secret_name])
    assert sorted(body["expired_keys"]) == sorted([expired.secret_name, long_expired.secret_name])
    assert body["revoked_keys"] == [rotated.secret_name]
    statuses = {key.secret_name: key.status for key in store.list_keys()}
    assert statuses == {fine.secret_name: "active", expired.secret_name: "expired", successor.secret_name: "active",
                        rotated.secret_name: "revoked", revoked.secret_name: "revoked"}

    assert_empty(_send(base, _ping(), mode))
    again = served.summaries()[-1]
    assert (again["deleted_keys"], again["expired_keys"], again["revoked_keys"]) == ([], [], [])
    assert {key.secret_name: key.status for key in store.list_keys()} == statuses


def test_events_that_are_not_for_cleanup_change_nothing(served: Served) -> None:
    base, store, database, _ = served
    _team(store, "team-a")
    key = _key(store, "team-a")
    _orphan_team(database, "team-a")
    cases = {
        "Secret is not a team Secret": _secret_event("team-a", kind="team-key"),
        "not 'llm'": _secret_event("team-a", namespace="elsewhere"),
        "not handled": CloudEvent({"type": "dev.knative.apiserver.resource.add", "source": "x"}, {}),
    }
    for reason, event in cases.items():
        assert_empty(_send(base, event, "binary"))
        summary = served.summaries()[-1]
        assert reason in summary["ignored"]
        assert summary["deleted_keys"] == []
    # A delete event without an object can never be acted on: 422, and no summary.
    assert_empty(_send(base, CloudEvent({"type": DELETE, "source": "x"}, None), "binary"), 422)
    assert "event data is not an object" in served.log.read_text()
    # Not a CloudEvent at all: refused by functions-framework, with its page emptied.
    assert_empty(httpx.post(base, content=b"{}", headers={"Content-Type": "application/json"}, timeout=10), 400)
    assert len(served.summaries()) == len(cases)
    assert store.list_keys() == [key]


def test_reference_mode_event_names_the_team_by_its_secret(served: Served) -> None:
    base, store, database, _ = served
    _team(store, "team-r")
    key = _key(store, "team-r")
    _orphan_team(database, "team-r")
    event = CloudEvent({"type": "dev.knative.apiserver.ref.delete", "source": "x"},
                       {"kind": "Secret", "namespace": NAMESPACE, "name": "team-team-r-config", "apiVersion": "v1"})
    assert_empty(_send(base, event, "structured"))
    assert served.summaries()[-1]["deleted_keys"] == [key.secret_name]
    assert store.list_keys() == []


def test_the_log_line_never_carries_key_material(served: Served) -> None:
    base, store, database, _ = served
    _team(store, "team-a")
    api_key = generate_api_key()
    key = ApiKey(secret_name=secret_name_for("alice", "team-a"), key_sha256=key_sha256(api_key), team_id="team-a",
                 user_id="alice", user_email="", role="member", status="active", created_at=_now())
    store.create_key(key=key, api_key=api_key)
    _orphan_team(database, "team-a")
    # Resource mode: the event carries the deleted object; a Secret's data must never reach the log.
    event = _secret_event("team-a")
    event.data["data"] = {"api_key": api_key}  # type: ignore[index]
    assert_empty(_send(base, event, "binary"))
    assert served.summaries()[-1]["deleted_keys"] == [key.secret_name]
    log = served.log.read_text()
    assert api_key not in log and key_sha256(api_key) not in log


# -- in-process: functions-framework's own app, with a counted policy callback ---------


@pytest.fixture
def counted(settings: Settings) -> Iterator[tuple[Context, list[int]]]:
    calls: list[int] = []
    ctx = build_context(settings)
    ctx.teams_changed = lambda: calls.append(1)
    install_context(ctx)
    yield ctx, calls


def test_in_process_delete_leaves_no_key_and_regenerates_policies(
    counted: tuple[Context, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    ctx, calls = counted
    client = functions_framework.create_app(target="cleanup", source=str(ROOT / "main.py")).test_client()
    teams.create_team(ctx, TeamCreate(team_id="doomed"))
    _key(ctx.store, "doomed")
    teams.delete_team(ctx, "doomed")
    before = len(calls)
    headers, body = to_binary(_secret_event("doomed"))
    with caplog.at_level("INFO", logger="maas.cleanup"):
        assert_empty(client.post("/", headers=headers, data=body))
    (summary,) = summaries_in("\n".join(f"INFO {r.name}: {r.getMessage()}" for r in caplog.records))
    assert summary["team_id"] == "doomed" and summary["policies_synced"] is True
    assert len(calls) == before + 1, "the policies are regenerated from the remaining teams"
    assert ctx.store.list_keys(team_id="doomed") == []


def test_a_recreated_team_keeps_its_keys(counted: tuple[Context, list[int]], caplog: pytest.LogCaptureFixture) -> None:
    ctx, calls = counted
    client = functions_framework.create_app(target="cleanup", source=str(ROOT / "main.py")).test_client()
    teams.create_team(ctx, TeamCreate(team_id="phoenix"))
    key = _key(ctx.store, "phoenix")
    headers, body = to_structured(_secret_event("phoenix"))
    with caplog.at_level("INFO", logger="maas.cleanup"):
        assert_empty(client.post("/", headers=headers, data=body))
    assert "team 'phoenix' exists (re-created)" in caplog.text
    assert ctx.store.list_keys(team_id="phoenix") == [key]


def test_a_busy_store_answers_503_so_knative_redelivers(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    ctx = build_context(settings)
    install_context(ctx)
    client = functions_framework.create_app(target="cleanup", source=str(ROOT / "main.py")).test_client()
    _team(ctx.store, "team-a")
    _key(ctx.store, "team-a")
    _orphan_team(settings.database_path, "team-a")
    # Another writer holds the write lock longer than this connection is willing to wait.
    store = ctx.store
    store.busy_timeout_ms = 50  # type: ignore[attr-defined]
    for conn in store._idle:  # type: ignore[attr-defined]  # noqa: SLF001 - pooled already
        conn.execute("PRAGMA busy_timeout=50")
    blocker = sqlite3.connect(settings.database_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        headers, body = to_binary(_ping())
        assert_empty(client.post("/", headers=headers, data=body), 503)
        assert "SQLite store unavailable" in caplog.text
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert len(ctx.store.list_keys()) == 1
    headers, body = to_binary(_ping())
    assert_empty(client.post("/", headers=headers, data=body))
    assert ctx.store.list_keys() == [], "the redelivery does the work"


# -- local/events.py: the same events in-process, on delete and on a timer --------------


def test_events_service_follows_team_deletes_and_ticks(settings: Settings) -> None:
    ctx = build_context(settings)
    calls: list[int] = []
    ctx.teams_changed = lambda: calls.append(1)
    teams.create_team(ctx, TeamCreate(team_id="team-x"))
    service = EventsService(ctx, interval_s=0.3)
    service.start()
    try:
        _key(ctx.store, "team-x")
        teams.delete_team(ctx, "team-x")
        deleted = service.wait_for(lambda s: s.team_id == "team-x", timeout=10)
        assert deleted is not None and deleted.event_type == DELETE and deleted.ignored is None
        assert ctx.store.list_keys() == []
        # Orphans made behind the API's back go on the next tick.
        teams.create_team(ctx, TeamCreate(team_id="team-y"))
        key = _key(ctx.store, "team-y")
        _orphan_team(settings.database_path, "team-y")
        swept = service.wait_for(lambda s: key.secret_name in s.deleted_keys, timeout=10)
        assert swept is not None
        assert ctx.store.list_keys() == []
    finally:
        service.stop()
    assert calls, "the wrapped callback still reaches the original"
    count = len(calls)
    teams.create_team(ctx, TeamCreate(team_id="team-z"))
    assert len(calls) == count + 1, "stop() puts the original callback back"
    ctx.close()


def test_a_burst_of_team_changes_is_followed_once_not_once_each(settings: Settings) -> None:
    """Each following reads every team: 200 changes in a burst must not mean 200 readings
    (at 10,000 teams that kept the gateway's process busy for seconds after the writes)."""
    ctx = build_context(settings)
    ctx.teams_changed = lambda: None
    for i in range(20):
        teams.create_team(ctx, TeamCreate(team_id=f"team-{i}"))
    readings: list[int] = []
    store = ctx.store
    original = store.list_teams

    def counted(**kwargs: object) -> object:
        readings.append(1)
        time.sleep(0.01)  # a reading takes a while at scale
        return original(**kwargs)  # type: ignore[arg-type]

    store.list_teams = counted  # type: ignore[method-assign]
    service = EventsService(ctx, interval_s=30)
    service.start()
    try:
        before = len(readings)
        for _ in range(200):
            ctx.teams_changed()
        teams.delete_team(ctx, "team-3")
        assert service.wait_for(lambda s: s.team_id == "team-3", timeout=10) is not None
    finally:
        service.stop()  # queued behind every change message: they have all been handled
        ctx.close()
    assert len(readings) - before < 20


def test_events_are_the_ones_knative_sends() -> None:
    ping = ping_event(NAMESPACE)
    assert (ping["type"], ping["source"]) == (PING, f"/apis/v1/namespaces/{NAMESPACE}/pingsources/maas-cleanup")
    deleted = team_deleted_event(NAMESPACE, "team-a")
    assert deleted["type"] == DELETE
    assert deleted.get_data()["metadata"]["labels"] == {"maas/resource-type": "team-config", "maas/team-id": "team-a"}
    # Both survive the wire in both modes.
    for convert in (to_binary, to_structured):
        headers, body = convert(deleted)
        from cloudevents.http import from_http

        assert from_http(headers, body).get_data() == deleted.get_data()


def test_expired_keys_are_kept_for_the_retention_then_deleted(tmp_path: Path, admin_key: str) -> None:
    from pydantic import SecretStr

    from shared.cleanup import sweep

    settings = Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / "data",
                        MAAS_EXPIRED_KEY_RETENTION="1h")  # type: ignore[call-arg]
    ctx = build_context(settings)
    try:
        _team(ctx.store, "team-a")
        now = _now()
        recent = _key(ctx.store, "team-a", "recent", expires_at=now - timedelta(minutes=59))
        old = _key(ctx.store, "team-a", "old", expires_at=now - timedelta(minutes=61))
        summary = sweep(ctx)
        assert summary.deleted_keys == [old.secret_name]
        assert [(k.secret_name, k.status) for k in ctx.store.list_keys()] == [(recent.secret_name, "expired")]
    finally:
        ctx.close()


def test_the_sweep_prunes_audit_entries_past_their_retention(tmp_path: Path, admin_key: str) -> None:
    from pydantic import SecretStr

    from shared.cleanup import sweep
    from shared.store.base import AuditEntry, AuditFilter

    settings = Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / "data",
                        MAAS_AUDIT_RETENTION="30d")  # type: ignore[call-arg]
    ctx = build_context(settings)
    try:
        now = _now()
        for age in (timedelta(days=31), timedelta(days=29)):
            ctx.store.record_audit(entry=AuditEntry(at=now - age, actor="admin", action="list_teams",
                                                    method="GET", path="/teams", outcome=200))
        assert sweep(ctx).audit_pruned == 1
        assert [e.at for e in ctx.store.list_audit(where=AuditFilter())] == [now - timedelta(days=29)]
        assert sweep(ctx).audit_pruned == 0
    finally:
        ctx.close()


def test_retention_must_be_a_duration() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="MAAS_EXPIRED_KEY_RETENTION"):
        Settings(MAAS_EXPIRED_KEY_RETENTION="a week")  # type: ignore[call-arg]
