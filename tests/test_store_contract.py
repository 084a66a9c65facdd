"""One contract for every Store backend (tests/store_backends.py lists them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import Conflict, NotFound
from shared.keymaterial import generate_api_key, key_sha256
from shared.store import ApiKey, Store, Team, TeamChanges
from tests.records import T0, a_key, a_team
from tests.store_backends import BACKENDS


@pytest.fixture(params=sorted(BACKENDS), ids=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def team(team_id: str = "test-team", **overrides: object) -> Team:
    return a_team(team_id, **overrides)


def new_key(team_id: str = "test-team", user_id: str = "alice", **overrides: object) -> tuple[ApiKey, str]:
    return a_key(team_id, user_id, **overrides)


def test_team_round_trip(store: Store) -> None:
    created = store.create_team(team=team(description="d", limit_scope="team", time_window="168h"))
    assert store.get_team(team_id="test-team") == created
    assert store.list_teams() == [created]


def test_duplicate_team_conflicts(store: Store) -> None:
    store.create_team(team=team())
    with pytest.raises(Conflict):
        store.create_team(team=team(team_name="other"))
    assert store.get_team(team_id="test-team").team_name == "Test Team"


def test_unknown_team_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_team(team_id="nope")
    with pytest.raises(NotFound):
        store.update_team(team_id="nope", changes=TeamChanges(token_limit=5))
    with pytest.raises(NotFound):
        store.delete_team(team_id="nope")


def test_teams_are_listed_by_id(store: Store) -> None:
    for team_id in ("b-team", "a-team", "c-team"):
        store.create_team(team=team(team_id))
    assert [t.team_id for t in store.list_teams()] == ["a-team", "b-team", "c-team"]


def test_update_changes_only_given_fields(store: Store) -> None:
    store.create_team(team=team())
    updated = store.update_team(team_id="test-team", changes=TeamChanges(token_limit=20, time_window="1m"))
    assert updated == team(token_limit=20, time_window="1m")
    assert store.get_team(team_id="test-team") == updated


def test_key_round_trip_and_lookup_by_hash(store: Store) -> None:
    store.create_team(team=team())
    key, api_key = new_key(models_allowed=("qwen3-0-6b-instruct",), alias="laptop")
    assert store.create_key(key=key, api_key=api_key) == key
    assert store.get_key(secret_name=key.secret_name) == key
    assert store.find_key(key_sha256=key_sha256(api_key)) == key
    assert store.find_key(key_sha256=key_sha256(generate_api_key())) is None


def test_key_for_unknown_team_is_not_found(store: Store) -> None:
    key, api_key = new_key(team_id="ghost")
    with pytest.raises(NotFound):
        store.create_key(key=key, api_key=api_key)
    assert store.list_keys() == []


def test_duplicate_key_name_conflicts(store: Store) -> None:
    store.create_team(team=team())
    key, api_key = new_key()
    store.create_key(key=key, api_key=api_key)
    other, other_key = new_key()
    with pytest.raises(Conflict):
        store.create_key(key=replace(other, secret_name=key.secret_name), api_key=other_key)


def test_keys_filter_by_team_and_user(store: Store) -> None:
    store.create_team(team=team("team-a"))
    store.create_team(team=team("team-b"))
    made = {}
    for team_id, user_id in (("team-a", "alice"), ("team-a", "bob"), ("team-b", "alice")):
        key, api_key = new_key(team_id, user_id)
        made[(team_id, user_id)] = store.create_key(key=key, api_key=api_key)
    assert {k.user_id for k in store.list_keys(team_id="team-a")} == {"alice", "bob"}
    assert {k.team_id for k in store.list_keys(user_id="alice")} == {"team-a", "team-b"}
    assert store.list_keys(team_id="team-b", user_id="bob") == []
    assert len(store.list_keys()) == 3
    names = [k.secret_name for k in store.list_keys()]
    assert names == sorted(names)


def test_delete_team_removes_its_keys_and_only_its_keys(store: Store) -> None:
    store.create_team(team=team("team-a"))
    store.create_team(team=team("team-b"))
    a1, k1 = new_key("team-a", "alice")
    a2, k2 = new_key("team-a", "bob")
    b1, k3 = new_key("team-b", "alice")
    for key, api_key in ((a1, k1), (a2, k2), (b1, k3)):
        store.create_key(key=key, api_key=api_key)
    removed = store.delete_team(team_id="team-a")
    assert sorted(k.secret_name for k in removed) == sorted([a1.secret_name, a2.secret_name])
    assert store.list_keys() == [b1]
    assert store.find_key(key_sha256=key_sha256(k1)) is None
    with pytest.raises(NotFound):
        store.get_team(team_id="team-a")


def test_delete_key(store: Store) -> None:
    store.create_team(team=team())
    key, api_key = new_key()
    store.create_key(key=key, api_key=api_key)
    assert store.delete_key(secret_name=key.secret_name) == key
    with pytest.raises(NotFound):
        store.delete_key(secret_name=key.secret_name)
    assert store.find_key(key_sha256=key.key_sha256) is None


def test_key_status_changes(store: Store) -> None:
    store.create_team(team=team())
    key, api_key = new_key(expires_at=T0 + timedelta(days=30))
    store.create_key(key=key, api_key=api_key)
    revoked = store.set_key_status(secret_name=key.secret_name, status="revoked")
    assert revoked == replace(key, status="revoked")
    assert store.get_key(secret_name=key.secret_name).status == "revoked"
    with pytest.raises(NotFound):
        store.set_key_status(secret_name="apikey-nobody-test-team-00000000", status="revoked")


def test_snapshot_is_consistent_with_the_store(store: Store) -> None:
    store.create_team(team=team())
    key, api_key = new_key()
    store.create_key(key=key, api_key=api_key)
    snapshot = store.snapshot()
    assert snapshot.teams == {"test-team": team()}
    assert snapshot.keys_by_sha256 == {key.key_sha256: key}


def test_generation_moves_on_every_write_and_not_on_reads(store: Store) -> None:
    seen = [store.generation()]
    store.create_team(team=team())
    seen.append(store.generation())
    store.list_teams()
    store.snapshot()
    assert store.generation() == seen[-1]
    key, api_key = new_key()
    store.create_key(key=key, api_key=api_key)
    seen.append(store.generation())
    store.delete_key(secret_name=key.secret_name)
    seen.append(store.generation())
    assert len(set(seen)) == len(seen), seen


def test_racing_creates_have_one_winner(store: Store) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def create(n: int) -> None:
        barrier.wait()
        try:
            store.create_team(team=team(team_name=f"racer {n}"))
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 9 + ["created"]


# -- key lifecycle and audit (issue 6) -------------------------------------------------------


def test_update_key_changes_only_given_fields(store: Store) -> None:
    from shared.store.base import KeyChanges

    store.create_team(team=team())
    key, api_key = new_key(models_allowed=("m1",), alias="laptop")
    store.create_key(key=key, api_key=api_key)
    until = T0 + timedelta(hours=1)
    changed = store.update_key(
        secret_name=key.secret_name, changes=KeyChanges(expires_at=until, replaced_by="apikey-alice-test-team-0000ffff")
    )
    assert changed == replace(key, expires_at=until, replaced_by="apikey-alice-test-team-0000ffff")
    assert store.get_key(secret_name=key.secret_name) == changed
    assert store.find_key(key_sha256=key.key_sha256) == changed
    revoked = store.update_key(secret_name=key.secret_name, changes=KeyChanges(status="revoked"))
    assert revoked == replace(changed, status="revoked")
    assert store.update_key(secret_name=key.secret_name, changes=KeyChanges()) == revoked
    with pytest.raises(NotFound):
        store.update_key(secret_name="apikey-nobody-test-team-00000000", changes=KeyChanges(status="revoked"))


def test_ping_reads_nothing_and_moves_nothing(store: Store) -> None:
    before = store.generation()
    store.ping()
    assert store.generation() == before and store.list_teams() == []


def test_keys_in_grace_are_the_rotated_keys_still_active(store: Store) -> None:
    from shared.store.base import KeyChanges

    store.create_team(team=team())
    plain, plain_key = new_key()
    rotated, rotated_key = new_key(user_id="bob")
    gone, gone_key = new_key(user_id="carol")
    for key, value in ((plain, plain_key), (rotated, rotated_key), (gone, gone_key)):
        store.create_key(key=key, api_key=value)
    store.update_key(secret_name=rotated.secret_name,
                     changes=KeyChanges(expires_at=T0 + timedelta(hours=1), replaced_by="apikey-bob-test-team-0000ffff"))
    store.update_key(secret_name=gone.secret_name,
                     changes=KeyChanges(replaced_by="apikey-carol-test-team-0000ffff", status="revoked"))
    assert [k.secret_name for k in store.list_keys(in_grace=True)] == [rotated.secret_name]
    store.set_key_status(secret_name=rotated.secret_name, status="revoked")  # its grace ended
    assert store.list_keys(in_grace=True) == []
    assert len(store.list_keys()) == 3


def test_key_lifecycle_changes_move_the_generation(store: Store) -> None:
    from shared.store.base import KeyChanges

    store.create_team(team=team())
    key, api_key = new_key()
    store.create_key(key=key, api_key=api_key)
    before = store.generation()
    store.update_key(secret_name=key.secret_name, changes=KeyChanges(status="revoked"))
    assert store.generation() != before, "the gateway must see a revocation at once"


def test_touch_keys_records_last_use_forward_only_in_one_batch(store: Store) -> None:
    store.create_team(team=team())
    a, ka = new_key(user_id="alice")
    b, kb = new_key(user_id="bob")
    store.create_key(key=a, api_key=ka)
    store.create_key(key=b, api_key=kb)
    later, earlier = T0 + timedelta(minutes=5), T0 + timedelta(minutes=1)
    changed = store.touch_keys(last_used={a.secret_name: later, b.secret_name: earlier,
                                          "apikey-gone-test-team-00000000": later})
    assert changed == 2
    assert store.get_key(secret_name=a.secret_name).last_used_at == later
    assert store.get_key(secret_name=b.secret_name).last_used_at == earlier
    # An older report (a batch that arrived late) never moves it back.
    assert store.touch_keys(last_used={a.secret_name: earlier}) == 0
    assert store.get_key(secret_name=a.secret_name).last_used_at == later
    assert store.touch_keys(last_used={}) == 0


def test_audit_entries_are_listed_newest_first_with_filters(store: Store) -> None:
    from shared.store.base import AuditEntry, AuditFilter

    made = [
        store.record_audit(entry=AuditEntry(at=T0 + timedelta(minutes=n), actor="admin", action=action,
                                            method="POST", path=f"/p/{n}", outcome=outcome, team_id=team_id,
                                            secret_name=None))
        for n, (action, outcome, team_id) in enumerate(
            [("create_team", 201, "a"), ("create_team", 409, "a"), ("create_key", 201, "b"), ("delete_team", 404, None)]
        )
    ]
    ids = [entry.id for entry in made]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids) and len(set(ids)) == 4
    assert store.list_audit(where=AuditFilter()) == list(reversed(made))
    assert store.list_audit(where=AuditFilter(action="create_team")) == [made[1], made[0]]
    assert store.list_audit(where=AuditFilter(team_id="a", outcome_min=300)) == [made[1]]
    assert store.list_audit(where=AuditFilter(outcome_min=200, outcome_max=299)) == [made[2], made[0]]
    window = AuditFilter(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert store.list_audit(where=window) == [made[2], made[1]]
    assert store.list_audit(where=AuditFilter(limit=2)) == [made[3], made[2]]
    assert store.list_audit(where=AuditFilter(limit=2, before_id=made[2].id)) == [made[1], made[0]]


def test_audit_entries_do_not_move_the_generation(store: Store) -> None:
    from shared.store.base import AuditEntry

    before = store.generation()
    store.record_audit(entry=AuditEntry(at=T0, actor="admin", action="list_teams", method="GET", path="/teams",
                                        outcome=200))
    assert store.generation() == before, "reads are audited too; they must not reload the gateway"


def test_old_audit_entries_are_pruned(store: Store) -> None:
    from shared.store.base import AuditEntry, AuditFilter

    made = [
        store.record_audit(entry=AuditEntry(at=T0 + timedelta(days=n), actor="admin", action="list_teams",
                                            method="GET", path="/teams", outcome=200))
        for n in range(4)
    ]
    assert store.prune_audit(before=T0 + timedelta(days=2)) == 2
    assert store.list_audit(where=AuditFilter()) == [made[3], made[2]]
    assert store.prune_audit(before=T0 + timedelta(days=2)) == 0


def test_teams_and_keys_are_listed_in_pages(store: Store) -> None:
    for team_id in ("t-a", "t-b", "t-c", "t-d", "t-e"):
        store.create_team(team=team(team_id))
    assert [t.team_id for t in store.list_teams(limit=2)] == ["t-a", "t-b"]
    assert [t.team_id for t in store.list_teams(after="t-b", limit=2)] == ["t-c", "t-d"]
    assert [t.team_id for t in store.list_teams(after="t-d", limit=2)] == ["t-e"]
    assert [t.team_id for t in store.list_teams(team_ids=["t-e", "t-a", "nope"])] == ["t-a", "t-e"]
    assert store.count_teams() == 5
    names = []
    for team_id, user in (("t-a", "alice"), ("t-a", "bob"), ("t-b", "alice"), ("t-c", "carol")):
        key, value = new_key(team_id, user)
        store.create_key(key=key, api_key=value)
        names.append(key.secret_name)
    everything = [k.secret_name for k in store.list_keys()]
    assert everything == sorted(names)
    first = [k.secret_name for k in store.list_keys(limit=3)]
    rest = [k.secret_name for k in store.list_keys(after=first[-1], limit=3)]
    assert first + rest == everything
    assert {k.team_id for k in store.list_keys(team_ids=["t-a", "t-c"])} == {"t-a", "t-c"}
    assert [k.user_id for k in store.list_keys(team_id="t-a", limit=1)] == [store.list_keys(team_id="t-a")[0].user_id]
    assert (store.count_keys(), store.count_keys(team_id="t-a"), store.count_keys(user_id="alice")) == (4, 2, 2)
