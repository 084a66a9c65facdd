"""One contract for every Store backend (tests/store_backends.py lists them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import Conflict, Forbidden, NotFound
from shared.keymaterial import generate_api_key, key_sha256
from shared.store import ApiKey, Member, Store, Team, TeamChanges
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


def test_audit_entries_keep_what_an_update_changed(store: Store) -> None:
    from shared.store.base import AuditEntry, AuditFilter

    # Every kind of value an entry may hold, in an order that is not alphabetical.
    changes = {"token_limit": (100_000, 20), "max_keys_per_user": (None, 2), "description": ("", "ünï \\x1b \"q\""),
               "flag": (False, True), "ratio": (0.5, 1.5)}
    updated = store.record_audit(entry=AuditEntry(at=T0, actor="oidc:alice@example.com", action="update_team",
                                                  method="PATCH", path="/teams/a", outcome=200, team_id="a",
                                                  changes=changes))
    read = store.record_audit(entry=AuditEntry(at=T0, actor="admin-key", action="get_team", method="GET",
                                               path="/teams/a", outcome=200, team_id="a"))
    listed = store.list_audit(where=AuditFilter())
    assert listed == [read, updated]
    assert listed[1].changes == changes and list(listed[1].changes) == list(changes)
    assert [type(v) for pair in listed[1].changes.values() for v in pair] == [
        int, int, type(None), int, str, str, bool, bool, float, float]
    assert listed[0].changes is None
    assert store.list_audit(where=AuditFilter(action="update_team")) == [updated]


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
    # What a team's answer counts, without reading each key: a second key of alice's in t-a is
    # a key more and no user more; teams without keys are left out.
    key, value = new_key("t-a", "alice")
    store.create_key(key=key, api_key=value)
    assert store.key_counts(team_ids=["t-a", "t-b", "t-d", "nope"]) == {"t-a": (3, 2), "t-b": (1, 1)}
    assert store.key_counts(team_ids=[]) == {}
    assert store.key_names(team_id="t-a") == [k.secret_name for k in store.list_keys(team_id="t-a")]
    assert store.key_names(team_id="t-d") == []


# -- memberships and team caps (issue 13) ----------------------------------------------------


def member(team_id: str = "test-team", user_id: str = "alice", **overrides: object) -> Member:
    fields: dict[str, object] = {"team_id": team_id, "user_id": user_id, "role": "member",
                                 "user_email": f"{user_id}@test.com", "joined_at": T0}
    fields.update(overrides)
    return Member(**fields)  # type: ignore[arg-type]


def test_members_are_stored_listed_in_pages_and_counted(store: Store) -> None:
    for team_id in ("team-a", "team-b", "team-c"):
        store.create_team(team=team(team_id))
    made = [store.put_member(member=member("team-a", user, role="admin" if user == "bob" else "member",
                                           joined_at=T0 + timedelta(minutes=n)))
            for n, user in enumerate(("carol", "alice", "bob", "dave"))]
    assert made[2] == member("team-a", "bob", role="admin", joined_at=T0 + timedelta(minutes=2))
    assert store.get_member(team_id="team-a", user_id="bob") == made[2]
    assert [m.user_id for m in store.list_members(team_id="team-a")] == ["alice", "bob", "carol", "dave"]
    first = store.list_members(team_id="team-a", limit=3)
    assert [m.user_id for m in first] == ["alice", "bob", "carol"]
    assert [m.user_id for m in store.list_members(team_id="team-a", after=first[-1].user_id, limit=3)] == ["dave"]
    assert store.list_members(team_id="team-a", after="dave") == []
    assert store.count_members(team_id="team-a") == 4
    # A user's side: the teams they belong to, by team_id, paged the same way.
    store.put_member(member=member("team-c", "alice"))
    store.put_member(member=member("team-b", "alice", role="admin"))
    assert [(m.team_id, m.role) for m in store.list_members(user_id="alice")] == [
        ("team-a", "member"), ("team-b", "admin"), ("team-c", "member")]
    assert [m.team_id for m in store.list_members(user_id="alice", after="team-a", limit=1)] == ["team-b"]
    assert store.count_members(user_id="alice") == 3 and store.count_members(user_id="nobody") == 0
    assert store.list_members(team_id="team-b", user_id="alice") == [member("team-b", "alice", role="admin")]
    with pytest.raises(ValueError):
        store.list_members()


def test_put_member_changes_role_and_email_and_keeps_when_they_joined(store: Store) -> None:
    store.create_team(team=team())
    store.put_member(member=member())
    changed = store.put_member(member=member(role="admin", user_email="a@new.example", joined_at=T0 + timedelta(days=9)))
    assert changed == member(role="admin", user_email="a@new.example")  # joined_at: the first put's
    assert store.get_member(team_id="test-team", user_id="alice") == changed
    assert store.count_members(team_id="test-team") == 1


def test_members_of_unknown_teams_and_unknown_members_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.put_member(member=member("ghost"))
    store.create_team(team=team())
    with pytest.raises(NotFound):
        store.get_member(team_id="test-team", user_id="alice")
    with pytest.raises(NotFound):
        store.get_member(team_id="ghost", user_id="alice")
    with pytest.raises(NotFound):
        store.delete_member(team_id="test-team", user_id="alice")
    with pytest.raises(NotFound):
        store.delete_member(team_id="ghost", user_id="alice")
    assert store.list_members(team_id="ghost") == [] and store.count_members(team_id="ghost") == 0


def test_a_key_makes_its_user_a_member_and_never_demotes_one(store: Store) -> None:
    store.create_team(team=team())
    key, api_key = new_key(user_id="alice", created_at=T0 + timedelta(hours=1))
    store.create_key(key=key, api_key=api_key)
    assert store.get_member(team_id="test-team", user_id="alice") == member(joined_at=T0 + timedelta(hours=1))
    admin_key, admin_api_key = new_key(user_id="carol", role="admin")
    store.create_key(key=admin_key, api_key=admin_api_key)
    assert store.get_member(team_id="test-team", user_id="carol").role == "admin"
    store.put_member(member=member(user_id="bob", role="admin", user_email="bob@corp.example"))
    for _ in range(2):
        plain, plain_api_key = new_key(user_id="bob", role="member", created_at=T0 + timedelta(days=1))
        store.create_key(key=plain, api_key=plain_api_key)
    assert store.get_member(team_id="test-team", user_id="bob") == member(
        user_id="bob", role="admin", user_email="bob@corp.example")
    assert [m.user_id for m in store.list_members(team_id="test-team")] == ["alice", "bob", "carol"]


def test_a_member_only_key_is_written_for_a_member_alone_and_makes_none(store: Store) -> None:
    """Self-service keys (shared.membership.create_my_key): a removal racing one is not undone."""
    store.create_team(team=team())
    stranger, stranger_api_key = new_key(user_id="dan")
    with pytest.raises(Forbidden, match="needs a member of team 'test-team'"):
        store.create_key(key=stranger, api_key=stranger_api_key, member_only=True)
    assert store.list_keys(team_id="test-team") == []
    with pytest.raises(NotFound):
        store.get_member(team_id="test-team", user_id="dan")
    store.put_member(member=member(user_id="bob", role="admin", user_email="bob@corp.example"))
    own, own_api_key = new_key(user_id="bob", role="member")
    store.create_key(key=own, api_key=own_api_key, member_only=True)
    assert [key.secret_name for key in store.list_keys(team_id="test-team")] == [own.secret_name]
    assert store.get_member(team_id="test-team", user_id="bob").role == "admin"


def test_removing_a_member_revokes_their_keys_in_that_team_only(store: Store) -> None:
    from shared.store.base import KeyChanges

    store.create_team(team=team("team-a"))
    store.create_team(team=team("team-b"))
    mine = [new_key("team-a", "alice") for _ in range(2)]
    gone, gone_api_key = new_key("team-a", "alice")
    elsewhere, elsewhere_api_key = new_key("team-b", "alice")
    bobs, bobs_api_key = new_key("team-a", "bob")
    for key, value in (*mine, (gone, gone_api_key), (elsewhere, elsewhere_api_key), (bobs, bobs_api_key)):
        store.create_key(key=key, api_key=value)
    store.update_key(secret_name=gone.secret_name, changes=KeyChanges(status="expired"))
    before = store.generation()

    removed, revoked = store.delete_member(team_id="team-a", user_id="alice")

    assert removed == member("team-a", "alice")
    assert revoked == sorted((replace(key, status="revoked") for key, _ in mine), key=lambda k: k.secret_name)
    for key, _ in mine:
        assert store.get_key(secret_name=key.secret_name).status == "revoked"
    assert store.get_key(secret_name=gone.secret_name).status == "expired"  # not active: left as it was
    assert store.get_key(secret_name=elsewhere.secret_name).status == "active"
    assert store.get_key(secret_name=bobs.secret_name).status == "active"
    assert store.generation() != before, "the gateway must see the revocations at once"
    with pytest.raises(NotFound):
        store.get_member(team_id="team-a", user_id="alice")
    assert [m.team_id for m in store.list_members(user_id="alice")] == ["team-b"]
    assert [m.user_id for m in store.list_members(team_id="team-a")] == ["bob"]
    with pytest.raises(NotFound):
        store.delete_member(team_id="team-a", user_id="alice")


def test_the_gateway_refuses_a_removed_members_keys_on_the_next_request(store: Store) -> None:
    from local.gateway.auth import KeyCache
    from shared.errors import Unauthorized

    store.create_team(team=team())
    key, api_key = new_key()
    kept, kept_api_key = new_key(user_id="bob")
    store.create_key(key=key, api_key=api_key)
    store.create_key(key=kept, api_key=kept_api_key)
    cache = KeyCache(store)
    assert cache.authenticate(f"Bearer {api_key}").key.user_id == "alice"
    store.delete_member(team_id="test-team", user_id="alice")
    with pytest.raises(Unauthorized):
        cache.authenticate(f"Bearer {api_key}")
    assert cache.authenticate(f"Bearer {kept_api_key}").key.user_id == "bob"


def test_membership_changes_alone_do_not_move_the_generation(store: Store) -> None:
    store.create_team(team=team())
    before = store.generation()
    store.put_member(member=member())
    store.put_member(member=member(role="admin"))
    store.list_members(team_id="test-team")
    removed, revoked = store.delete_member(team_id="test-team", user_id="alice")  # no keys to revoke
    assert revoked == [] and removed.role == "admin"
    assert store.generation() == before, "memberships are not the gateway's business"
    changes_since = getattr(store, "changes_since", None)
    if changes_since is not None:  # a store with a change log logs nothing for them either
        assert changes_since(before).keys_by_sha256 == {} and changes_since(before).teams == {}


def test_delete_team_removes_its_memberships_and_only_its(store: Store) -> None:
    store.create_team(team=team("team-a"))
    store.create_team(team=team("team-b"))
    key, api_key = new_key("team-a", "alice")
    store.create_key(key=key, api_key=api_key)
    store.put_member(member=member("team-a", "bob"))
    store.put_member(member=member("team-b", "alice"))
    store.delete_team(team_id="team-a")
    assert store.list_members(team_id="team-a") == []
    assert store.list_members(user_id="alice") == [member("team-b", "alice")]
    assert store.list_members(user_id="bob") == []
    store.create_team(team=team("team-a"))  # the same id again: a team of nobody
    assert store.list_members(team_id="team-a") == []
    with pytest.raises(NotFound):
        store.get_member(team_id="team-a", user_id="bob")


def test_team_key_caps_round_trip_and_clear(store: Store) -> None:
    assert team().max_keys_per_user is None and team().max_key_lifetime is None
    capped = store.create_team(team=team(max_keys_per_user=3, max_key_lifetime="90d"))
    assert store.get_team(team_id="test-team") == capped
    assert store.list_teams() == [capped] and store.snapshot().teams == {"test-team": capped}
    assert store.update_team(team_id="test-team", changes=TeamChanges(token_limit=5)) == replace(capped, token_limit=5)
    changed = store.update_team(team_id="test-team", changes=TeamChanges(max_keys_per_user=10))
    assert (changed.max_keys_per_user, changed.max_key_lifetime) == (10, "90d")
    cleared = store.update_team(team_id="test-team", changes=TeamChanges(clear=frozenset({"max_keys_per_user"})))
    assert cleared == replace(capped, token_limit=5, max_keys_per_user=None)
    assert store.get_team(team_id="test-team") == cleared
    # A value for one field and a clear of another, in one update.
    both = store.update_team(team_id="test-team", changes=TeamChanges(
        max_keys_per_user=1, max_key_lifetime="24h", clear=frozenset()))
    assert (both.max_keys_per_user, both.max_key_lifetime) == (1, "24h")
    mixed = store.update_team(team_id="test-team", changes=TeamChanges(
        max_key_lifetime="30d", clear=frozenset({"max_keys_per_user"})))
    assert (mixed.max_keys_per_user, mixed.max_key_lifetime) == (None, "30d")
    assert store.get_team(team_id="test-team") == mixed
    store.update_team(team_id="test-team", changes=TeamChanges(clear=frozenset({"max_key_lifetime", "max_keys_per_user"})))
    assert store.get_team(team_id="test-team") == replace(capped, token_limit=5, max_keys_per_user=None, max_key_lifetime=None)
    other = store.create_team(team=team("other"))
    assert store.get_team(team_id="other") == other and other.max_keys_per_user is None


def test_team_changes_refuse_clearing_what_cannot_be_none() -> None:
    with pytest.raises(ValueError, match="token_limit"):
        TeamChanges(clear=frozenset({"token_limit"}))
    with pytest.raises(ValueError, match="both"):
        TeamChanges(max_keys_per_user=2, clear=frozenset({"max_keys_per_user"}))
    assert TeamChanges(clear={"max_key_lifetime"}).clear == frozenset({"max_key_lifetime"})  # type: ignore[arg-type]


def test_active_keys_are_counted_per_user_and_team(store: Store) -> None:
    from shared.store.base import KeyChanges

    store.create_team(team=team("team-a"))
    store.create_team(team=team("team-b"))
    made = [new_key("team-a", "alice") for _ in range(4)] + [new_key("team-b", "alice"), new_key("team-a", "bob")]
    for key, value in made:
        store.create_key(key=key, api_key=value)
    store.set_key_status(secret_name=made[0][0].secret_name, status="revoked")
    store.update_key(secret_name=made[1][0].secret_name, changes=KeyChanges(status="expired"))
    assert store.count_active_keys(team_id="team-a", user_id="alice") == 2
    assert store.count_active_keys(team_id="team-b", user_id="alice") == 1
    assert store.count_active_keys(team_id="team-a", user_id="carol") == 0
    assert store.count_active_keys(team_id="ghost", user_id="alice") == 0
