"""KubernetesStore through the real kubernetes client against the API double: the exact Secret
shapes (docs/ARCHITECTURE.md, "Kubernetes shapes"), conditional writes under injected conflicts,
ownerReferences and garbage collection, selector lookups, and the translation of API failures
into our errors."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api
from kubernetes.client.exceptions import ApiException

from shared.errors import BackendUnavailable, Conflict, Forbidden, InvalidRequest, NotFound
from shared.keymaterial import generate_api_key, key_sha256
from shared.store.base import ApiKey, AuditEntry, AuditFilter, KeyChanges, Member, Store, Team, TeamChanges
from shared.store.kube import KubernetesStore
from shared.store.kubeshapes import key_body, team_body
from tests import crds, records
from tests.kube_double import KubeDouble, running_double

NS = "llm"
SELECTOR = "maas-api-key"
T0 = datetime(2025, 8, 25, 6, 17, 35, 123456, tzinfo=timezone.utc)


@pytest.fixture
def cluster() -> Iterator[tuple[KubeDouble, KubernetesStore]]:
    with running_double() as (double, client):
        yield double, KubernetesStore(client, namespace=NS, key_selector=SELECTOR)


def a_team(team_id: str = "data-science", **overrides: object) -> Team:
    ds = {"team_name": "Data Science", "description": "ML people", "policy": "ds-tokens",
          "token_limit": 50_000, "time_window": "24h", "created_at": T0}
    return records.a_team(team_id, **{**ds, **overrides})


def a_key(team_id: str = "data-science", user_id: str = "alice", **overrides: object) -> tuple[ApiKey, str]:
    return records.a_key(team_id, user_id, **{"user_email": f"{user_id}@example.com", "created_at": T0, **overrides})


def seeded(store: Store, **key_overrides: object) -> tuple[Team, ApiKey, str]:
    team = store.create_team(team=a_team())
    key, api_key = a_key(**key_overrides)
    store.create_key(key=key, api_key=api_key)
    return team, key, api_key


# -- the shapes ----------------------------------------------------------------------------------


def test_team_secret_has_exactly_the_design_shape(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    store.create_team(team=a_team(limit_scope="team"))
    secret = double.get("secrets", NS, "team-data-science-config")
    assert secret is not None
    assert secret["metadata"]["labels"] == {"maas/resource-type": "team-config", "maas/team-id": "data-science"}
    assert secret["metadata"]["annotations"] == {
        "maas/team-name": "Data Science",
        "maas/description": "ML people",
        "maas/policy": "ds-tokens",
        "maas/token-limit": "50000",
        "maas/time-window": "24h",
        "maas/limit-scope": "team",
        "maas/created-at": "2025-08-25T06:17:35.123456+00:00",
        "maas/members": "stored",  # a new team's members are its membership Secrets, none derived
    }
    crds.validate(team_body(a_team()))


def test_key_secret_has_exactly_the_design_shape(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    expires = T0 + timedelta(days=30)
    _, key, api_key = seeded(store, models_allowed=("qwen3-0-6b-instruct", "vllm-simulator"), alias="laptop", expires_at=expires)
    secret = double.get("secrets", NS, key.secret_name)
    team_secret = double.get("secrets", NS, "team-data-science-config")
    assert secret is not None and team_secret is not None
    meta = secret["metadata"]
    assert meta["labels"] == {
        "kuadrant.io/auth-secret": "true",
        "app": SELECTOR,
        "authorino.kuadrant.io/managed-by": "authorino",  # Authorino's watcher (SOURCES.md §2)
        "maas/resource-type": "team-key",
        "maas/team-id": "data-science",
        "maas/user-id": "alice",
        "maas/key-sha256": key_sha256(api_key)[:32],
    }
    assert meta["annotations"] == {
        "secret.kuadrant.io/user-id": "alice",
        "kuadrant.io/groups": "ds-tokens",
        "maas/tier": "50000-per-86400s-user",  # the team's budget, read by the token limits
        "maas/team-id": "data-science",
        "maas/user-email": "alice@example.com",
        "maas/models-allowed": "qwen3-0-6b-instruct,vllm-simulator",
        "maas/status": "active",
        "maas/created-at": "2025-08-25T06:17:35.123456+00:00",
        "maas/role": "member",
        "maas/alias": "laptop",
        "maas/expires-at": expires.isoformat(),
    }
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Secret", "name": "team-data-science-config", "uid": team_secret["metadata"]["uid"]}
    ]
    # stringData was folded by the server: the plaintext key, as Authorino compares it.
    assert base64.b64decode(secret["data"]["api_key"]).decode() == api_key
    assert "stringData" not in secret


def test_every_record_field_round_trips(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    team = store.create_team(team=a_team())
    key, api_key = a_key(
        models_allowed=("m1",), alias="ci", expires_at=T0 + timedelta(hours=1), last_used_at=T0 + timedelta(minutes=5), role="admin"
    )
    assert store.create_key(key=key, api_key=api_key) == key
    assert store.get_key(secret_name=key.secret_name) == key
    assert store.get_team(team_id=team.team_id) == team
    assert store.snapshot().keys_by_sha256 == {key.key_sha256: key}


# -- lookups ---------------------------------------------------------------------------------


def test_find_key_uses_the_label_prefix_then_the_full_hash(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, api_key = seeded(store)
    double.requests.clear()
    assert store.find_key(key_sha256=key_sha256(api_key)) == key
    assert [m for m, _ in double.requests] == ["GET"]  # one list call, by selector
    # Same 32-hex prefix, different full hash: the label matches, the exact compare does not.
    forged = key_sha256(api_key)[:32] + "0" * 32
    assert store.find_key(key_sha256=forged) is None
    assert store.find_key(key_sha256="not-a-hash") is None


def test_list_keys_filters_by_label(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    store.create_team(team=a_team("team-a"))
    store.create_team(team=a_team("team-b"))
    for team_id, user_id in (("team-a", "alice"), ("team-a", "bob"), ("team-b", "alice")):
        key, api_key = a_key(team_id, user_id)
        store.create_key(key=key, api_key=api_key)
    assert {(k.team_id, k.user_id) for k in store.list_keys(user_id="alice")} == {("team-a", "alice"), ("team-b", "alice")}
    assert [k.user_id for k in store.list_keys(team_id="team-a", user_id="bob")] == ["bob"]
    assert store.list_keys(team_id="not a label value!") == []


def test_other_secrets_are_not_teams_or_keys(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    api = CoreV1Api(store.api_client)
    api.create_namespaced_secret(NS, {"metadata": {"name": "team-x-config"}, "stringData": {"a": "b"}})
    api.create_namespaced_secret(NS, {"metadata": {"name": "db-password"}, "stringData": {"api_key": "s"}})
    with pytest.raises(NotFound):
        store.get_team(team_id="x")
    with pytest.raises(NotFound):
        store.get_key(secret_name="db-password")
    with pytest.raises(NotFound):
        store.delete_key(secret_name="db-password")
    assert store.list_teams() == [] and store.list_keys() == []
    with pytest.raises(NotFound):
        store.get_key(secret_name="../../namespaces")


# -- conflicts and retries --------------------------------------------------------------------


def test_update_lands_through_injected_conflicts(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    store.create_team(team=a_team())
    double.inject_conflicts(3)
    updated = store.update_team(team_id="data-science", changes=TeamChanges(token_limit=7, time_window="1m"))
    assert double.pending_conflicts == 0
    assert updated == a_team(token_limit=7, time_window="1m")
    assert store.get_team(team_id="data-science") == updated


def test_update_gives_up_after_bounded_conflicts(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    store.create_team(team=a_team())
    double.inject_conflicts(100)
    with pytest.raises(BackendUnavailable, match="kept changing"):
        store.update_team(team_id="data-science", changes=TeamChanges(token_limit=7))
    assert double.pending_conflicts == 100 - 5
    double.inject_conflicts(0)
    assert store.get_team(team_id="data-science").token_limit == 50_000


def test_update_writes_are_conditioned_on_the_version_read(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    """A write conditioned on a stale resourceVersion is refused by the server, not merged."""
    double, store = cluster
    store.create_team(team=a_team())
    api = CoreV1Api(store.api_client)
    stale = api.read_namespaced_secret("team-data-science-config", NS)
    store.update_team(team_id="data-science", changes=TeamChanges(token_limit=9))
    with pytest.raises(ApiException) as caught:
        api.patch_namespaced_secret(
            "team-data-science-config", NS,
            {"metadata": {"resourceVersion": stale.metadata.resource_version, "annotations": {"maas/token-limit": "1"}}},
        )
    assert caught.value.status == 409
    assert store.get_team(team_id="data-science").token_limit == 9


def test_policy_change_follows_into_key_groups(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    double.inject_conflicts(2)
    store.update_team(team_id="data-science", changes=TeamChanges(policy="premium"))
    secret = double.get("secrets", NS, key.secret_name)
    assert secret is not None and secret["metadata"]["annotations"]["kuadrant.io/groups"] == "premium"


def test_budget_change_follows_into_key_tiers(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    for changes, tier in ((TeamChanges(token_limit=7), "7-per-86400s-user"),
                          (TeamChanges(time_window="1h"), "7-per-3600s-user"),
                          (TeamChanges(limit_scope="team"), "7-per-3600s-team")):
        store.update_team(team_id="data-science", changes=changes)
        secret = double.get("secrets", NS, key.secret_name)
        assert secret is not None and secret["metadata"]["annotations"]["maas/tier"] == tier


def test_status_changes_survive_conflicts_and_drop_the_selector_labels(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    double.inject_conflicts(2)
    assert store.set_key_status(secret_name=key.secret_name, status="revoked") == replace(key, status="revoked")
    labels = double.get("secrets", NS, key.secret_name)["metadata"]["labels"]  # type: ignore[index]
    assert "app" not in labels and "kuadrant.io/auth-secret" not in labels
    # Authorino must still watch it, or it never hears that the key left the selector.
    assert labels["authorino.kuadrant.io/managed-by"] == "authorino"
    assert store.set_key_status(secret_name=key.secret_name, status="active") == key
    labels = double.get("secrets", NS, key.secret_name)["metadata"]["labels"]  # type: ignore[index]
    assert labels["app"] == SELECTOR and labels["kuadrant.io/auth-secret"] == "true"


def test_delete_key_retries_a_conflicting_delete(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    double.inject_conflicts(2)  # the key changes between our read and our conditioned delete, twice
    assert store.delete_key(secret_name=key.secret_name) == key
    assert double.pending_conflicts == 0
    assert double.get("secrets", NS, key.secret_name) is None


def test_racing_team_creates_are_decided_by_the_server(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    store.create_team(team=a_team())
    with pytest.raises(Conflict, match="already exists"):
        store.create_team(team=a_team(team_name="Other"))
    key, api_key = a_key()
    store.create_key(key=key, api_key=api_key)
    other, other_key = a_key()
    with pytest.raises(Conflict):
        store.create_key(key=replace(other, secret_name=key.secret_name), api_key=other_key)


def test_key_hash_must_match_the_key(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    store.create_team(team=a_team())
    key, _ = a_key()
    with pytest.raises(InvalidRequest, match="key_sha256"):
        store.create_key(key=key, api_key=generate_api_key())


# -- cascade and garbage collection -----------------------------------------------------------


def test_delete_team_deletes_keys_explicitly(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    double.requests.clear()
    assert store.delete_team(team_id="data-science") == [key]
    deletes = [path for method, path in double.requests if method == "DELETE"]
    assert deletes == [
        f"/api/v1/namespaces/{NS}/secrets/{key.secret_name}",
        f"/api/v1/namespaces/{NS}/secrets",  # the memberships in one request, whatever their number
        f"/api/v1/namespaces/{NS}/secrets/team-data-science-config",
    ]
    assert double.names("secrets", NS) == []


def test_owner_references_collect_keys_the_cascade_missed(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    """Deleting only the team Secret (kubectl, or a cascade that raced a key create) still
    removes its keys: the ownerReference makes them garbage."""
    double, store = cluster
    _, key, api_key = seeded(store)
    CoreV1Api(store.api_client).delete_namespaced_secret("team-data-science-config", NS)
    assert double.names("secrets", NS) == []
    assert store.find_key(key_sha256=key_sha256(api_key)) is None


def test_a_key_created_for_a_team_deleted_meanwhile_is_collected(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    team = store.create_team(team=a_team())
    team_secret = CoreV1Api(store.api_client).read_namespaced_secret("team-data-science-config", NS)
    store.delete_team(team_id=team.team_id)
    key, api_key = a_key()
    # The create that lost the race: it read the team (uid) before the delete.
    CoreV1Api(store.api_client).create_namespaced_secret(NS, key_body(key, api_key, team, team_secret.metadata.uid, SELECTOR))
    assert double.names("secrets", NS) == []


# -- generation -------------------------------------------------------------------------------


def test_generation_sees_other_writers_within_the_check_interval() -> None:
    with running_double() as (_, client):
        mine = KubernetesStore(client, namespace=NS, key_selector=SELECTOR, generation_check_s=0.0)
        other = KubernetesStore(client, namespace=NS, key_selector=SELECTOR)
        before = mine.generation()
        assert mine.generation() == before  # nothing happened: a read does not move it
        other.create_team(team=a_team())
        assert mine.generation() != before
        slow = KubernetesStore(client, namespace=NS, key_selector=SELECTOR, generation_check_s=3600)
        seen = slow.generation()
        other.create_team(team=a_team("other"))
        assert slow.generation() == seen  # within its interval it does not ask the server


# -- failures ---------------------------------------------------------------------------------


def test_unreachable_api_is_backend_unavailable_naming_kubernetes(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    store.create_team(team=a_team())
    with double.unreachable():
        with pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
            store.get_team(team_id="data-science")
        with pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
            store.create_team(team=a_team("other"))
        store.generation()  # the hot path does not raise; it keeps its view
        with pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
            store.ping()  # /health says so
    assert store.get_team(team_id="data-science") == a_team()
    store.ping()


def test_refused_connection_is_backend_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ApiClient(Configuration(host=f"http://127.0.0.1:{port}"))
    store = KubernetesStore(client, namespace=NS, key_selector=SELECTOR)
    with pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
        store.list_teams()
    store.close()


def test_forbidden_is_backend_unavailable_about_rbac(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    with double.forbid():
        with pytest.raises(BackendUnavailable, match="RBAC") as caught:
            store.list_keys()
    assert caught.value.status == 503


def test_server_side_validation_is_invalid_request(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    with pytest.raises(InvalidRequest, match="Kubernetes rejected"):
        store.create_team(team=a_team("Not_A_Label"))


def test_errors_never_carry_the_api_key(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, api_key = seeded(store)
    other, other_key = a_key()
    with pytest.raises(Conflict) as caught:
        store.create_key(key=replace(other, secret_name=key.secret_name), api_key=other_key)
    assert other_key not in str(caught.value) and api_key not in str(caught.value)
    with double.unreachable(), pytest.raises(BackendUnavailable) as down:
        store.create_key(key=other, api_key=other_key)
    assert other_key not in str(down.value)


# -- key lifecycle and audit (ConfigMaps) ------------------------------------------------------


def test_update_key_changes_lifecycle_fields_under_conflicts(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    ends = T0 + timedelta(hours=2)
    double.inject_conflicts(2)
    updated = store.update_key(secret_name=key.secret_name, changes=KeyChanges(expires_at=ends, replaced_by="apikey-alice-x-1"))
    assert updated == replace(key, expires_at=ends, replaced_by="apikey-alice-x-1")
    assert double.pending_conflicts == 0
    assert store.get_key(secret_name=key.secret_name) == updated
    notes = double.get("secrets", NS, key.secret_name)["metadata"]["annotations"]  # type: ignore[index]
    assert notes["maas/expires-at"] == ends.isoformat() and notes["maas/replaced-by"] == "apikey-alice-x-1"
    revoked = store.update_key(secret_name=key.secret_name, changes=KeyChanges(status="revoked"))
    assert revoked.status == "revoked" and revoked.replaced_by == "apikey-alice-x-1"
    with pytest.raises(NotFound):
        store.update_key(secret_name="apikey-nobody-x-00000000", changes=KeyChanges(status="revoked"))


def test_touch_keys_only_moves_forward_and_skips_unknown(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    _, store = cluster
    _, key, _ = seeded(store)
    generation = store.generation()
    later = T0 + timedelta(minutes=10)
    assert store.touch_keys(last_used={key.secret_name: later, "apikey-gone-x-00000000": later}) == 1
    assert store.touch_keys(last_used={key.secret_name: T0}) == 0  # older: ignored
    assert store.get_key(secret_name=key.secret_name).last_used_at == later
    assert store.generation() == generation  # last use decides nothing about authentication


def audit_entry(n: int, **overrides: object) -> AuditEntry:
    fields: dict[str, object] = {
        "at": T0 + timedelta(seconds=n),
        "actor": "admin",
        "action": "create_key" if n % 2 else "create_team",
        "method": "POST",
        "path": f"/teams/team-{n % 3}/keys",
        "outcome": 201 if n % 4 else 409,
        "team_id": f"team-{n % 3}",
        "secret_name": None,
    }
    fields.update(overrides)
    return AuditEntry(**fields)  # type: ignore[arg-type]


def test_audit_entries_are_config_maps_listed_newest_first(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    recorded = [store.record_audit(entry=audit_entry(n)) for n in range(8)]
    ids = [e.id for e in recorded]
    assert all(i is not None for i in ids) and ids == sorted(ids) and len(set(ids)) == 8
    assert len(double.names("configmaps", NS)) == 8
    everything = store.list_audit(where=AuditFilter())
    assert everything == list(reversed(recorded))
    assert store.list_audit(where=AuditFilter(action="create_team", team_id="team-0")) == [
        e for e in reversed(recorded) if e.action == "create_team" and e.team_id == "team-0"
    ]
    assert [e.outcome for e in store.list_audit(where=AuditFilter(outcome_min=400))] == [409, 409]
    page = store.list_audit(where=AuditFilter(limit=3))
    assert page == everything[:3]
    assert store.list_audit(where=AuditFilter(before_id=page[-1].id, limit=3)) == everything[3:6]
    window = store.list_audit(where=AuditFilter(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4)))
    assert [e.at for e in window] == [T0 + timedelta(seconds=3), T0 + timedelta(seconds=2)]
    assert store.list_audit(where=AuditFilter(action="not a label!")) == []
    # Audit ConfigMaps are neither teams nor keys.
    assert store.list_teams() == [] and store.list_keys() == []


def test_an_audit_entrys_changes_are_json_in_its_config_map(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    changed = store.record_audit(entry=audit_entry(1, changes={"role": ("member", "admin")}))
    plain = store.record_audit(entry=audit_entry(2))
    data = double.get("configmaps", NS, f"maas-audit-{changed.id}")["data"]  # type: ignore[index]
    assert data["changes"] == '{"role":["member","admin"]}'
    assert "changes" not in double.get("configmaps", NS, f"maas-audit-{plain.id}")["data"]  # type: ignore[index]
    # Hand-edited into something else: the entry is still listed, without its changes.
    with double.cluster.lock:
        double.cluster.objects[("", "v1", "configmaps", NS, f"maas-audit-{changed.id}")]["data"]["changes"] = '{"role": 1}'
    assert store.list_audit(where=AuditFilter()) == [plain, replace(changed, changes=None)]


# -- memberships (issue 13) ------------------------------------------------------------------


def test_membership_secret_has_exactly_the_design_shape(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    store.create_team(team=a_team())
    user_id = "alice@example.com|oidc"  # no label value: the labels carry a hash of it
    made = store.put_member(member=Member("data-science", user_id, "admin", "alice@example.com", T0))
    hashed = hashlib.sha256(user_id.encode()).hexdigest()[:32]
    secret = double.get("secrets", NS, f"team-data-science-member-{hashed}")
    team_secret = double.get("secrets", NS, "team-data-science-config")
    assert secret is not None and team_secret is not None
    assert secret["metadata"]["labels"] == {  # nothing Authorino selects or watches by
        "maas/resource-type": "team-member", "maas/team-id": "data-science", "maas/user-hash": hashed,
    }
    assert secret["metadata"]["annotations"] == {
        "maas/user-id": user_id,
        "maas/user-email": "alice@example.com",
        "maas/role": "admin",
        "maas/joined-at": "2025-08-25T06:17:35.123456+00:00",
    }
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Secret", "name": "team-data-science-config", "uid": team_secret["metadata"]["uid"]}
    ]
    assert "data" not in secret
    assert store.get_member(team_id="data-science", user_id=user_id) == made
    assert store.list_members(user_id=user_id) == [made]
    # Memberships are neither teams nor keys, and deleting the team Secret alone collects them.
    assert store.list_teams() == [a_team()] and store.list_keys() == []
    CoreV1Api(store.api_client).delete_namespaced_secret("team-data-science-config", NS)
    assert double.names("secrets", NS) == []


def test_team_caps_are_annotations_removed_when_cleared(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    store.create_team(team=a_team(max_keys_per_user=3, max_key_lifetime="90d"))
    notes = double.get("secrets", NS, "team-data-science-config")["metadata"]["annotations"]  # type: ignore[index]
    assert (notes["maas/max-keys-per-user"], notes["maas/max-key-lifetime"]) == ("3", "90d")
    store.update_team(team_id="data-science", changes=TeamChanges(clear=frozenset({"max_keys_per_user"})))
    notes = double.get("secrets", NS, "team-data-science-config")["metadata"]["annotations"]  # type: ignore[index]
    assert "maas/max-keys-per-user" not in notes and notes["maas/max-key-lifetime"] == "90d"
    assert notes["maas/members"] == "stored"  # a team update leaves the membership mark alone


def old_team(store: KubernetesStore, keys: list[tuple[str, str, int]]) -> dict[str, ApiKey]:
    """A team and its keys as the version before memberships wrote them: no mark on the team
    Secret, no membership Secrets. `keys`: (user, role, minutes after T0)."""
    api = CoreV1Api(store.api_client)
    body = team_body(a_team())
    del body["metadata"]["annotations"]["maas/members"]
    team_secret = api.create_namespaced_secret(NS, body)
    made = {}
    for n, (user_id, role, minutes) in enumerate(keys):
        key, api_key = a_key(user_id=user_id, role=role, created_at=T0 + timedelta(minutes=minutes),
                             user_email=f"{user_id}-{n}@example.com")
        api.create_namespaced_secret(NS, key_body(key, api_key, a_team(), team_secret.metadata.uid, SELECTOR))
        made[f"{user_id}-{n}"] = key
    return made


def _member_secrets(double: KubeDouble) -> list[str]:
    return [name for name in double.names("secrets", NS) if "-member-" in name]


def test_a_team_from_before_memberships_has_its_key_holders_as_members(cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    double, store = cluster
    old_team(store, [("alice", "admin", 0), ("alice", "member", 30), ("bob", "member", 5)])
    derived = [
        Member("data-science", "alice", "member", "alice-1@example.com", T0),  # newest key's role and email
        Member("data-science", "bob", "member", "bob-2@example.com", T0 + timedelta(minutes=5)),
    ]
    assert store.list_members(team_id="data-science") == derived
    assert store.count_members(team_id="data-science") == 2
    assert store.get_member(team_id="data-science", user_id="bob") == derived[1]
    assert store.list_members(user_id="alice") == [derived[0]]
    with pytest.raises(NotFound):
        store.get_member(team_id="data-science", user_id="carol")
    assert _member_secrets(double) == []  # reading writes nothing (readers may not write)

    # The first membership write stores the derived members, then marks the team.
    store.put_member(member=Member("data-science", "carol", "admin", "carol@example.com", T0 + timedelta(days=1)))
    assert len(_member_secrets(double)) == 3
    assert double.get("secrets", NS, "team-data-science-config")["metadata"]["annotations"]["maas/members"] == "stored"  # type: ignore[index]
    assert [m.user_id for m in store.list_members(team_id="data-science")] == ["alice", "bob", "carol"]
    assert store.get_member(team_id="data-science", user_id="alice") == derived[0]
    # From now on the stored memberships are all there is: a removed member's keys do not bring them back.
    _, revoked = store.delete_member(team_id="data-science", user_id="bob")
    assert [k.user_id for k in revoked] == ["bob"]
    assert [m.user_id for m in store.list_members(team_id="data-science")] == ["alice", "carol"]
    assert store.list_members(user_id="bob") == []


def test_a_key_for_a_team_from_before_memberships_keeps_its_old_members_roles(
    cluster: tuple[KubeDouble, KubernetesStore],
) -> None:
    double, store = cluster
    old_team(store, [("alice", "admin", 0), ("bob", "member", 5)])
    key, api_key = a_key(user_id="alice", role="member", created_at=T0 + timedelta(hours=1))
    store.create_key(key=key, api_key=api_key)
    assert store.get_member(team_id="data-science", user_id="alice").role == "admin"
    assert {m.user_id for m in store.list_members(team_id="data-science")} == {"alice", "bob"}
    assert len(_member_secrets(double)) == 2


def test_removing_a_member_revokes_through_conflicts_and_catches_a_key_made_meanwhile(
    cluster: tuple[KubeDouble, KubernetesStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    double, store = cluster
    _, key, _ = seeded(store)
    late, late_api_key = a_key(alias="late")
    sweep = store._revoke_active_keys
    sweeps: list[list[ApiKey]] = []

    def racing_sweep(team_id: str, user_id: str) -> list[ApiKey]:
        done = sweep(team_id, user_id)
        if not sweeps:  # another admin issues a key between the first sweep and the delete
            store.create_key(key=late, api_key=late_api_key)
        sweeps.append(done)
        return done

    monkeypatch.setattr(store, "_revoke_active_keys", racing_sweep)
    double.inject_conflicts(2)
    _, revoked = store.delete_member(team_id="data-science", user_id="alice")
    assert sorted(k.secret_name for k in revoked) == sorted([key.secret_name, late.secret_name])
    assert {store.get_key(secret_name=name).status for name in (key.secret_name, late.secret_name)} == {"revoked"}
    labels = double.get("secrets", NS, late.secret_name)["metadata"]["labels"]  # type: ignore[index]
    assert "app" not in labels  # out of Authorino's selector
    assert _member_secrets(double) == []


def test_a_key_whose_membership_cannot_be_written_is_taken_back(
    cluster: tuple[KubeDouble, KubernetesStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    double, store = cluster
    store.create_team(team=a_team())

    def failing(member: Member, team_uid: str) -> None:
        raise BackendUnavailable("Kubernetes API unreachable: test")

    monkeypatch.setattr(store, "_create_member", failing)
    key, api_key = a_key()
    with pytest.raises(BackendUnavailable):
        store.create_key(key=key, api_key=api_key)
    assert double.get("secrets", NS, key.secret_name) is None
    assert store.list_keys() == []


def test_a_member_only_key_written_as_the_member_is_removed_is_taken_back(
        cluster: tuple[KubeDouble, KubernetesStore]) -> None:
    """No transaction spans two Secrets: the membership is read again after the key is written,
    and a key written after a removal's revocation pass is deleted (shared.membership's race)."""
    _, store = cluster
    store.create_team(team=records.a_team())
    store.put_member(member=Member(team_id="test-team", user_id="alice", role="member", user_email="",
                                   joined_at=records.T0))
    write = store._core.create_namespaced_secret  # noqa: SLF001

    def removed_meanwhile(*args: object, **kwargs: object) -> object:
        written = write(*args, **kwargs)
        store.delete_member(team_id="test-team", user_id="alice")  # the team admin's DELETE lands now
        return written

    store._core.create_namespaced_secret = removed_meanwhile  # type: ignore[method-assign]  # noqa: SLF001
    key, api_key = records.a_key(user_id="alice")
    with pytest.raises(Forbidden):
        store.create_key(key=key, api_key=api_key, member_only=True)
    store._core.create_namespaced_secret = write  # type: ignore[method-assign]  # noqa: SLF001
    assert [k for k in store.list_keys(team_id="test-team") if k.status == "active"] == []
    with pytest.raises(NotFound):
        store.get_member(team_id="test-team", user_id="alice")
