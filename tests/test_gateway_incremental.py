"""The gateway's key cache follows the store by its change log, not by reloading everything
(issue 12: with thousands of keys, every admin write rebuilt the snapshot on the gateway's loop).
Every change is still seen by the very next request."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.gateway.auth import KeyCache
from shared.errors import Unauthorized
from shared.store.base import KeyChanges, Team, TeamChanges
from shared.store.sqlite import SqliteStore
from tests.records import T0, a_key

KEYS = 3000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "maas.db")
    store.create_team(team=Team("t1", "t1", "", "t1", 1000, "1h", "user", T0))  # type: ignore[arg-type]
    yield store
    store.close()


def _issue(store: SqliteStore, user: str, team: str = "t1") -> tuple[str, str]:
    record, value = a_key(team, user)
    store.create_key(key=record, api_key=value)
    return record.secret_name, value


def _refused(cache: KeyCache, value: str) -> bool:
    try:
        cache.authenticate(f"Bearer {value}")
    except Unauthorized:
        return True
    return False


def test_every_kind_of_change_is_seen_by_the_next_request_without_a_full_reload(store: SqliteStore) -> None:
    issued = [_issue(store, f"user{i}") for i in range(KEYS)]
    cache = KeyCache(store)
    name, value = issued[0]
    assert cache.authenticate(f"Bearer {value}").key.user_id == "user0"
    assert cache.full_reloads == 1

    store.set_key_status(secret_name=name, status="revoked")
    assert _refused(cache, value)  # revocation: immediate
    _, fresh = _issue(store, "newcomer")
    assert cache.authenticate(f"Bearer {fresh}").key.user_id == "newcomer"
    store.update_team(team_id="t1", changes=TeamChanges(token_limit=77))
    assert cache.authenticate(f"Bearer {issued[1][1]}").team.token_limit == 77
    store.update_key(secret_name=issued[2][0], changes=KeyChanges(status="revoked"))
    assert _refused(cache, issued[2][1])
    store.delete_key(secret_name=issued[3][0])
    assert _refused(cache, issued[3][1])

    store.create_team(team=Team("t2", "t2", "", "t2", 5, "1m", "team", T0))  # type: ignore[arg-type]
    _, other = _issue(store, "bob", team="t2")
    assert cache.authenticate(f"Bearer {other}").team.limit_scope == "team"
    store.delete_team(team_id="t2")
    assert _refused(cache, other)  # the team's keys went with it
    assert cache.team("t2") is None

    assert cache.full_reloads == 1, "each write was taken from the change log"
    # What the cache holds is what a full snapshot reads.
    full = store.snapshot()
    assert cache.snapshot().teams == full.teams and cache.snapshot().keys_by_sha256 == full.keys_by_sha256


def test_a_change_log_that_no_longer_reaches_back_means_one_full_reload(store: SqliteStore, tmp_path: Path) -> None:
    name, value = _issue(store, "alice")
    cache = KeyCache(store)
    cache.authenticate(f"Bearer {value}")
    store.set_key_status(secret_name=name, status="revoked")
    _issue(store, "bob")
    # As if this cache had slept through more writes than the log keeps: the revocation's
    # entry is gone, only bob's is left.
    with sqlite3.connect(tmp_path / "maas.db") as raw:
        raw.execute("DELETE FROM changes WHERE generation < (SELECT MAX(generation) FROM changes)")
    assert _refused(cache, value)
    assert cache.full_reloads == 2


def test_the_log_is_pruned_as_it_grows(store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.store.sqlite.CHANGES_KEPT", 100)
    for i in range(1001):
        store.update_team(team_id="t1", changes=TeamChanges(token_limit=1000 + i))
    with sqlite3.connect(tmp_path / "maas.db") as raw:
        kept = raw.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
    assert kept < 1000  # pruned at the 1000th generation to the last 100


def test_connections_are_pooled_not_one_per_thread(store: SqliteStore) -> None:
    import threading

    def work() -> None:
        for _ in range(5):
            store.list_teams()

    threads = [threading.Thread(target=work) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 50 threads came and went; what stays open is the idle pool, not a connection each.
    from shared.store.sqlite import POOL_IDLE

    assert store.open_connections <= POOL_IDLE


def test_a_removed_members_keys_come_through_the_change_log_and_memberships_alone_do_not(store: SqliteStore) -> None:
    from shared.store.base import Member

    name, value = _issue(store, "alice")
    _, second = _issue(store, "alice")
    _, bobs = _issue(store, "bob")
    cache = KeyCache(store)
    assert cache.authenticate(f"Bearer {value}").key.user_id == "alice"
    generation = store.generation()
    store.put_member(member=Member("t1", "carol", "admin", "carol@test.com", T0))
    assert store.generation() == generation  # nothing for the gateway to catch up on

    store.delete_member(team_id="t1", user_id="alice")
    changes = store.changes_since(generation)
    assert changes is not None and {k.user_id for k in changes.keys_by_sha256.values() if k} == {"alice"}
    assert all(k is not None and k.status == "revoked" for k in changes.keys_by_sha256.values())
    assert _refused(cache, value) and _refused(cache, second)
    assert cache.authenticate(f"Bearer {bobs}").key.user_id == "bob"
    assert cache.full_reloads == 1, "the revocations were taken from the change log"
    assert cache.snapshot().keys_by_sha256 == store.snapshot().keys_by_sha256
    assert name in {k.secret_name for k in cache.snapshot().keys_by_sha256.values() if k.status == "revoked"}
