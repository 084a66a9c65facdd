"""The cluster Store: teams and API keys as Kubernetes Secrets that Authorino reads directly.

Shapes (docs/ARCHITECTURE.md, "Kubernetes shapes"; built and read in `shared.store.kubeshapes`):
a team is the Secret `team-<team_id>-config`, its fields in annotations; a key is the Secret
named by its `secret_name`, holding the plaintext key in `api_key` (Authorino compares
plaintext), labelled so that the AuthPolicy's selector finds it, with an ownerReference to its
team Secret so that garbage collection backs up the explicit cascade of `delete_team`.

Concurrency is the API server's: a racing create loses with AlreadyExists (-> Conflict); every
read-modify-write is a patch conditioned on the resourceVersion it read, retried a bounded number
of times on 409; deletes are conditioned on the uid/resourceVersion that was read, so a delete
never removes an object re-created in between.

Audit entries are ConfigMaps `maas-audit-<id>` (label `maas/resource-type: audit`, plus
`maas/action`, `maas/team-id`, `maas/outcome` for selection), the id being microseconds since the
epoch; the entry is their data (an update's before and after as JSON under `changes`), never
key material. Retention is the cleanup sweep's business, not the store's.

Revocation: only an active key keeps the `app` and `kuadrant.io/auth-secret` labels that
Authorino selects by, so revoking or expiring a key removes it from the gateway's view at once.

Memberships are Secrets of their own (`shared.store.kubeshapes` says why not a field of the
team Secret), written with the RBAC the key Secrets already need. Multi-object operations keep
the order whose interruption leaves the safer state, and a retry of the same call finishes
the job:
- `create_key` writes the key, then the membership if there is none; if the membership cannot
  be written the key is deleted again (its plaintext was never handed out, so a key that
  survives a failed rollback is one nobody holds).
- `delete_member` revokes the user's active keys in the team, then deletes the membership,
  then revokes again whatever key was made in between: an interruption leaves a member with
  fewer keys, never a non-member with a working key.
- `delete_team` deletes the keys, then the team's memberships (one deletecollection by label:
  10,000 members need not be 10,000 requests), then the team Secret; garbage collection of
  the ownerReferences backs up both cascades.
A team from before memberships (no `maas/members: stored` on its Secret) has the members its
keys imply until its first membership write (put_member, delete_member, create_key), which
stores those members first and then marks the team, so that no user is lost on the way.
Membership writes do not bump the generation (the gateway does not read memberships); the
remote check still counts any write it sees in the namespace within `generation_check_s`.

`generation()` is a local counter bumped by this process's writes plus, at most every
`generation_check_s` seconds (default 2 s), one cheap list call (limit=1) whose resourceVersion
reveals writes by other replicas: a writer elsewhere is seen within that bound. In a cluster it is
Authorino, not this process, that authenticates model calls, so the bound only matters to the
local gateway pointed at a cluster.

This module and the policy-apply module are the only ones importing `kubernetes`; the error
translation (`kube_errors`) and the client construction (`api_client_from_config`) live here
and are reused by `shared.kubeapply` and `shared.catalog.kserve`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import (
    ApiClient,
    Configuration,
    CoreV1Api,
    V1DeleteOptions,
    V1Preconditions,
    V1Secret,
    VersionApi,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from shared.errors import (
    BackendUnavailable,
    Conflict,
    InvalidRequest,
    MaasError,
    NotFound,
    not_a_member,
)
from shared.keymaterial import key_sha256 as sha256_of
from shared.settings import Settings
from shared.store.base import (
    ApiKey,
    AuditEntry,
    AuditFilter,
    KeyChanges,
    KeyStatus,
    Member,
    Snapshot,
    Team,
    TeamChanges,
    member_role,
)
from shared.store.kubeshapes import (
    AUDIT_TYPE,
    AUTHORINO_WATCH_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    EXPIRES_ANNOTATION,
    GRACE_LABEL,
    KEY_TYPE,
    LABEL_VALUE,
    MEMBER_TYPE,
    MEMBERS_ANNOTATION,
    MEMBERS_STORED,
    RESOURCE_TYPE,
    SHA_LABEL,
    SHA_PREFIX_LEN,
    STATUS_ANNOTATION,
    TEAM_ID_LABEL,
    TEAM_TYPE,
    USER_HASH_LABEL,
    audit_body,
    audit_from_config_map,
    audit_matches,
    derived_members,
    is_kind,
    key_body,
    RATES_LABEL,
    key_from_secret,
    member_body,
    member_from_secret,
    member_secret_name,
    members_stored,
    selected_labels,
    team_annotations_patch,
    team_body,
    team_from_secret,
    team_identity,
    team_secret_name,
    timestamp,
    user_hash,
)

__all__ = ["KubernetesStore", "api_client_from_config", "kube_errors", "retry_on_conflict"]

ATTEMPTS = 5  # read-modify-write attempts before giving up on a resourceVersion conflict
REQUEST_TIMEOUT = (3.0, 10.0)  # (connect, read) seconds: an unreachable API fails fast

log = logging.getLogger("maas.store")

# -- the adapter boundary: kubernetes errors -> our errors ---------------------------------


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return str(exc.reason or "")
    return str(body.get("message") or exc.reason or "") if isinstance(body, dict) else str(exc.reason or "")


def _status_reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return ""
    return str(body.get("reason") or "") if isinstance(body, dict) else ""


def translate(exc: ApiException, what: str) -> MaasError:
    """One mapping from an API server answer to our hierarchy; `what` names the object."""
    status = exc.status or 0
    if status == 404:
        return NotFound(f"{what} not found")
    if status == 409:
        if _status_reason(exc) == "AlreadyExists":
            return Conflict(f"{what} already exists")
        return Conflict(f"{what} was modified concurrently; retry")
    if status in (400, 422):
        return InvalidRequest(f"Kubernetes rejected {what}: {_status_message(exc)}")
    if status in (401, 403):
        return BackendUnavailable(
            f"Kubernetes API refused access to {what} ({status} {exc.reason}: {_status_message(exc)}): "
            "check the ServiceAccount's RBAC (a Role or ClusterRole granting these verbs on this "
            "resource, bound to the ServiceAccount) and its token"
        )
    if status == 0:
        return BackendUnavailable(f"Kubernetes API unreachable: {exc.reason}")
    return BackendUnavailable(f"Kubernetes API error {status} on {what}: {_status_message(exc)}")


@contextmanager
def kube_errors(what: str) -> Iterator[None]:
    """Translate kubernetes client and transport errors raised inside into MaasErrors."""
    try:
        yield
    except ApiException as exc:
        raise translate(exc, what) from exc
    except urllib3.exceptions.MaxRetryError as exc:
        raise BackendUnavailable(f"Kubernetes API unreachable: {exc.reason}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise BackendUnavailable(f"Kubernetes API unreachable: {type(exc).__name__}: {exc}") from exc


def retry_on_conflict(
    attempt: Callable[[], Any], what: str, attempts: int = ATTEMPTS, *, also_already_exists: bool = False
) -> Any:
    """Run a read-modify-write `attempt` until it does not lose a resourceVersion race.

    A 409 Conflict is retried; AlreadyExists is an answer, not a race, unless the attempt is a
    create-or-replace (`also_already_exists`). After `attempts` losses the API server is too
    busy for us: BackendUnavailable.
    """
    for number in range(attempts):
        try:
            with kube_errors(what):
                return attempt()
        except Conflict as exc:
            cause = exc.__cause__
            if not isinstance(cause, ApiException):
                raise
            if _status_reason(cause) == "AlreadyExists" and not also_already_exists:
                raise
            time.sleep(min(0.01 * (2**number), 0.2))
    raise BackendUnavailable(
        f"Kubernetes API: {what} kept changing under {attempts} attempts (resourceVersion conflicts)"
    )


def api_client_from_config() -> ApiClient:
    """An ApiClient from the in-cluster ServiceAccount, else from the kubeconfig."""
    configuration = Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        try:
            kube_config.load_kube_config(client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise BackendUnavailable(
                "Kubernetes configuration not found: not in a cluster and no usable kubeconfig "
                f"({exc})"
            ) from exc
    return ApiClient(configuration)


# -- the store ---------------------------------------------------------------------------------


T = TypeVar("T")


def _page(items: list[T], name: Callable[[T], str], after: str | None, limit: int | None,
          wanted: Callable[[T], bool] | None) -> list[T]:
    """Sorted items after `after`, those `wanted`, at most `limit`."""
    chosen = [item for item in items if (after is None or name(item) > after) and (wanted is None or wanted(item))]
    return chosen if limit is None else chosen[:limit]


def _label_value(value: str) -> bool:
    return bool(value) and len(value) <= 63 and bool(LABEL_VALUE.match(value))


def _not_a_member(team_id: str, user_id: str) -> NotFound:
    return NotFound(f"user '{user_id}' is not a member of team '{team_id}'")


class KubernetesStore:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        key_selector: str,
        watch_label: tuple[str, str] = AUTHORINO_WATCH_LABEL,
        generation_check_s: float = 2.0,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        self._client = api_client
        self._core = CoreV1Api(api_client)
        self._namespace = namespace
        self._selector = key_selector
        self._watch_label = watch_label
        self._timeout = request_timeout
        self._check_every = generation_check_s
        self._lock = threading.Lock()
        self._generation = 0
        self._seen_version: str | None = None
        self._checked_at = 0.0
        self._audit_id = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesStore:
        return cls(
            api_client_from_config(),
            namespace=settings.store_namespace,
            key_selector=settings.key_selector,
            watch_label=settings.authorino_watch_label,
        )

    @property
    def api_client(self) -> ApiClient:
        """The client this store talks through, for the policy apply of the same deployment."""
        return self._client

    # -- plumbing ------------------------------------------------------------------------

    def _bump(self, written: V1Secret | None = None) -> None:
        """Count a write of ours; its resourceVersion is not news to the remote check."""
        with self._lock:
            self._generation += 1
            if written is not None and written.metadata is not None:
                self._seen_version = written.metadata.resource_version

    def _read(self, name: str, what: str) -> V1Secret:
        with kube_errors(what):
            return self._core.read_namespaced_secret(name, self._namespace, _request_timeout=self._timeout)

    def _list(self, selector: str, what: str) -> list[V1Secret]:
        with kube_errors(what):
            listed = self._core.list_namespaced_secret(
                self._namespace, label_selector=selector, _request_timeout=self._timeout
            )
        return sorted(listed.items or [], key=lambda s: s.metadata.name)

    def _patch(self, secret: V1Secret, patch: dict[str, Any]) -> V1Secret:
        """A merge patch conditioned on the resourceVersion `secret` was read at."""
        meta = dict(patch.get("metadata") or {})
        meta["resourceVersion"] = secret.metadata.resource_version
        body = patch | {"metadata": meta}
        return self._core.patch_namespaced_secret(
            secret.metadata.name, self._namespace, body, _request_timeout=self._timeout
        )

    def _delete(self, secret: V1Secret) -> None:
        """Delete exactly the object that was read (a re-created one of the same name survives)."""
        self._core.delete_namespaced_secret(
            secret.metadata.name,
            self._namespace,
            body=V1DeleteOptions(
                propagation_policy="Background",
                preconditions=V1Preconditions(
                    uid=secret.metadata.uid, resource_version=secret.metadata.resource_version
                ),
            ),
            _request_timeout=self._timeout,
        )

    def _read_team(self, team_id: str) -> V1Secret:
        what = f"team '{team_id}'"
        if not DNS_LABEL.match(team_id):
            raise NotFound(f"{what} not found")
        secret = self._read(team_secret_name(team_id), what)
        if not is_kind(secret, TEAM_TYPE):
            raise NotFound(f"{what} not found")
        return secret

    def _read_key(self, secret_name: str) -> V1Secret:
        what = f"key '{secret_name}'"
        if len(secret_name) > 253 or not DNS_SUBDOMAIN.match(secret_name):
            raise NotFound(f"{what} not found")
        secret = self._read(secret_name, what)
        if not is_kind(secret, KEY_TYPE):
            raise NotFound(f"{what} not found")
        return secret

    # -- teams ---------------------------------------------------------------------------

    def create_team(self, *, team: Team) -> Team:
        with kube_errors(f"team '{team.team_id}'"):
            written = self._core.create_namespaced_secret(
                self._namespace, team_body(team), _request_timeout=self._timeout
            )
        self._bump(written)
        return team

    def get_team(self, *, team_id: str) -> Team:
        return team_from_secret(self._read_team(team_id))

    def list_teams(self, *, after: str | None = None, limit: int | None = None,
                   team_ids: Collection[str] | None = None) -> list[Team]:
        # One list call and a page cut from it: the API server's own pages (`continue`) follow
        # its own order, not team_id's.
        teams = [team_from_secret(s) for s in self._list(f"{RESOURCE_TYPE}={TEAM_TYPE}", "teams")]
        return _page(sorted(teams, key=lambda t: t.team_id), lambda t: t.team_id, after, limit,
                     None if team_ids is None else (lambda t: t.team_id in team_ids))

    def count_teams(self) -> int:
        return len(self._list(f"{RESOURCE_TYPE}={TEAM_TYPE}", "teams"))

    def update_team(self, *, team_id: str, changes: TeamChanges) -> Team:
        def attempt() -> Team:
            # Read inside the attempt: the patch is conditioned on this read's version.
            secret = self._read_team(team_id)
            updated = changes.apply(team_from_secret(secret))
            written = self._patch(secret, {"metadata": {"annotations": team_annotations_patch(updated)}})
            return team_from_secret(written)

        updated = retry_on_conflict(attempt, f"team '{team_id}'")
        self._bump()
        if any(value is not None for value in (changes.policy, changes.token_limit, changes.time_window,
                                               changes.limit_scope, changes.rates)):
            self._regroup_keys(updated)
        return updated

    def _regroup_keys(self, team: Team) -> None:
        """Keys carry their team's policy and budget tier in Authorino's identity: follow a change.

        Authorino keeps the Secret it indexed (tests/cluster/SOURCES.md §8): the new values reach
        it when the AuthPolicy's identity revision changes, which the policy sync after every
        team change does (shared.policies.identity_revision).
        """
        wanted = team_identity(team)
        for secret in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},{TEAM_ID_LABEL}={team.team_id}", "keys"):
            name = secret.metadata.name

            def attempt(name: str = name) -> None:
                current = self._read_key(name)
                notes = current.metadata.annotations or {}
                if any(notes.get(k) != v for k, v in wanted.items()):
                    self._patch(current, {"metadata": {"annotations": wanted}})

            try:
                retry_on_conflict(attempt, f"key '{name}'")
            except NotFound:
                continue  # deleted meanwhile: nothing to follow
        self._bump()

    def delete_team(self, *, team_id: str) -> list[ApiKey]:
        team_secret = self._read_team(team_id)
        removed: list[ApiKey] = []
        for secret in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},{TEAM_ID_LABEL}={team_id}", "keys"):
            try:
                with kube_errors(f"key '{secret.metadata.name}'"):
                    self._delete(secret)
            except (NotFound, Conflict):
                continue  # deleted or changed meanwhile; the ownerReference still collects it
            removed.append(key_from_secret(secret))
        # Before the team Secret: once it is gone a team of that id may be created again, and
        # its memberships carry the same label.
        with kube_errors(f"memberships of team '{team_id}'"):
            self._core.delete_collection_namespaced_secret(
                self._namespace, label_selector=f"{RESOURCE_TYPE}={MEMBER_TYPE},{TEAM_ID_LABEL}={team_id}",
                _request_timeout=self._timeout,
            )
        with kube_errors(f"team '{team_id}'"):
            try:
                self._delete(team_secret)
            except ApiException as exc:
                if exc.status == 409:  # re-created meanwhile: not the team we were asked about
                    raise NotFound(f"team '{team_id}' not found") from exc
                raise
        self._bump()
        return removed

    # -- members -------------------------------------------------------------------------

    def _team_keys(self, team_id: str) -> list[ApiKey]:
        return [key_from_secret(s) for s in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},{TEAM_ID_LABEL}={team_id}", "keys")]

    def _read_member(self, team_id: str, user_id: str) -> V1Secret | None:
        if not DNS_LABEL.match(team_id):
            return None
        try:
            secret = self._read(member_secret_name(team_id, user_id), f"member '{user_id}' of team '{team_id}'")
        except NotFound:
            return None
        # The name is a hash of the user id: compare the id itself, and the kind.
        if not is_kind(secret, MEMBER_TYPE) or member_from_secret(secret).user_id != user_id:
            return None
        return secret

    def _create_member(self, member: Member, team_uid: str) -> V1Secret | None:
        """Create a membership Secret; None if one exists already (it is left as it is)."""
        try:
            with kube_errors(f"member '{member.user_id}' of team '{member.team_id}'"):
                return self._core.create_namespaced_secret(
                    self._namespace, member_body(member, team_uid), _request_timeout=self._timeout
                )
        except Conflict:
            return None  # AlreadyExists: a create's only 409

    def _store_derived_members(self, team_secret: V1Secret) -> None:
        """Make a team from before memberships one whose members are stored: write the members
        its keys imply, then mark it. Until marked, its readers derive members from its keys,
        so an interruption halfway loses nobody, and the next write finishes the job."""
        if members_stored(team_secret):
            return
        team_id = team_secret.metadata.labels[TEAM_ID_LABEL]
        team_uid = team_secret.metadata.uid
        for member in derived_members(self._team_keys(team_id)).values():
            self._create_member(member, team_uid)

        def attempt() -> None:
            current = self._read_team(team_id)
            if current.metadata.uid != team_uid:
                raise NotFound(f"team '{team_id}' not found")  # deleted (and made again) meanwhile
            if not members_stored(current):
                self._patch(current, {"metadata": {"annotations": {MEMBERS_ANNOTATION: MEMBERS_STORED}}})

        retry_on_conflict(attempt, f"team '{team_id}'")

    def _team_members(self, team_id: str) -> dict[str, Member]:
        """A team's members by user_id; none for an unknown team."""
        try:
            team_secret = self._read_team(team_id)
        except NotFound:
            return {}
        stored = {
            member.user_id: member
            for member in (member_from_secret(s) for s in self._list(
                f"{RESOURCE_TYPE}={MEMBER_TYPE},{TEAM_ID_LABEL}={team_id}", "members"))
        }
        if members_stored(team_secret):
            return stored
        derived = {user_id: member for (_, user_id), member in derived_members(self._team_keys(team_id)).items()}
        return derived | stored  # stored halfway through _store_derived_members: those win

    def _user_members(self, user_id: str) -> dict[str, Member]:
        """A user's memberships by team_id."""
        stored = {
            member.team_id: member
            for member in (member_from_secret(s) for s in self._list(
                f"{RESOURCE_TYPE}={MEMBER_TYPE},{USER_HASH_LABEL}={user_hash(user_id)}", "members"))
            if member.user_id == user_id
        }
        if not _label_value(user_id):
            return stored  # no key can name such a user: nothing to derive
        # Teams the user holds keys in without a stored membership: a team from before
        # memberships (derive it), or one they were removed from (the keys stay, revoked).
        unstored: dict[str, list[ApiKey]] = {}
        for key in self.list_keys(user_id=user_id):
            if key.team_id not in stored:
                unstored.setdefault(key.team_id, []).append(key)
        for team_id, keys in unstored.items():
            try:
                team_secret = self._read_team(team_id)
            except NotFound:
                continue  # orphaned keys: the sweep removes them
            if not members_stored(team_secret):
                stored[team_id] = derived_members(keys)[(team_id, user_id)]
        return stored

    def put_member(self, *, member: Member) -> Member:
        team_secret = self._read_team(member.team_id)
        self._store_derived_members(team_secret)
        what = f"member '{member.user_id}' of team '{member.team_id}'"
        for _ in range(ATTEMPTS):
            created = self._create_member(member, team_secret.metadata.uid)
            if created is not None:
                return member_from_secret(created)

            def attempt() -> Member | None:
                secret = self._read_member(member.team_id, member.user_id)
                if secret is None:
                    return None  # removed since our create found it: create it again
                current = member_from_secret(secret)
                if (current.role, current.user_email) == (member.role, member.user_email):
                    return current
                notes = {"maas/role": member.role, "maas/user-email": member.user_email}
                return member_from_secret(self._patch(secret, {"metadata": {"annotations": notes}}))

            updated = retry_on_conflict(attempt, what)
            if updated is not None:
                return updated
        raise BackendUnavailable(f"Kubernetes API: {what} kept appearing and disappearing under {ATTEMPTS} attempts")

    def get_member(self, *, team_id: str, user_id: str) -> Member:
        secret = self._read_member(team_id, user_id)
        if secret is not None:
            return member_from_secret(secret)
        try:
            team_secret = self._read_team(team_id)
        except NotFound:
            raise _not_a_member(team_id, user_id) from None
        if not members_stored(team_secret):  # a team from before memberships
            found = derived_members(self._team_keys(team_id)).get((team_id, user_id))
            if found is not None:
                return found
        raise _not_a_member(team_id, user_id)

    def list_members(self, *, team_id: str | None = None, user_id: str | None = None,
                     after: str | None = None, limit: int | None = None) -> list[Member]:
        # One list call and a page cut from it, as for teams and keys: membership Secrets are
        # named by a hash, so the API server's own order is no user's or team's order.
        if team_id is not None:
            members = sorted(self._team_members(team_id).values(), key=lambda m: m.user_id)
            return _page(members, lambda m: m.user_id, after, limit,
                         None if user_id is None else (lambda m: m.user_id == user_id))
        if user_id is not None:
            teams = sorted(self._user_members(user_id).values(), key=lambda m: m.team_id)
            return _page(teams, lambda m: m.team_id, after, limit, None)
        raise ValueError("members are listed by team_id or by user_id")

    def count_members(self, *, team_id: str | None = None, user_id: str | None = None) -> int:
        return len(self.list_members(team_id=team_id, user_id=user_id))

    def delete_member(self, *, team_id: str, user_id: str) -> tuple[Member, list[ApiKey]]:
        try:
            team_secret = self._read_team(team_id)
        except NotFound:
            raise _not_a_member(team_id, user_id) from None
        self._store_derived_members(team_secret)
        secret = self._read_member(team_id, user_id)
        if secret is None:
            raise _not_a_member(team_id, user_id)
        member = member_from_secret(secret)
        revoked = self._revoke_active_keys(team_id, user_id)
        with kube_errors(f"member '{user_id}' of team '{team_id}'"):
            try:
                # On the uid only: a role changed meanwhile does not save the membership.
                self._core.delete_namespaced_secret(
                    secret.metadata.name, self._namespace,
                    body=V1DeleteOptions(preconditions=V1Preconditions(uid=secret.metadata.uid)),
                    _request_timeout=self._timeout,
                )
            except ApiException as exc:
                if exc.status in (404, 409):  # removed (and perhaps added again) by someone else
                    raise _not_a_member(team_id, user_id) from exc
                raise
        # A key made between the first sweep and the delete found the membership still there.
        revoked += self._revoke_active_keys(team_id, user_id)
        return member, sorted(revoked, key=lambda key: key.secret_name)

    # -- keys ----------------------------------------------------------------------------

    def create_key(self, *, key: ApiKey, api_key: str, member_only: bool = False) -> ApiKey:
        if not hmac.compare_digest(sha256_of(api_key), key.key_sha256):
            raise InvalidRequest("key_sha256 does not match the API key")
        team_secret = self._read_team(key.team_id)
        if self.find_key(key_sha256=key.key_sha256) is not None:
            raise Conflict("an identical API key already exists")
        if member_only:
            return self._create_member_key(key, api_key, team_secret)
        # Before the key: a user of a team from before memberships keeps the role their
        # earlier keys gave them, not this key's.
        self._store_derived_members(team_secret)
        body = key_body(
            key, api_key, team_from_secret(team_secret), team_secret.metadata.uid, self._selector, self._watch_label
        )
        with kube_errors(f"key '{key.secret_name}'"):
            written = self._core.create_namespaced_secret(self._namespace, body, _request_timeout=self._timeout)
        self._bump(written)
        member = Member(team_id=key.team_id, user_id=key.user_id, role=member_role(key.role),
                        user_email=key.user_email, joined_at=key.created_at)
        try:
            self._create_member(member, team_secret.metadata.uid)
        except MaasError:
            try:
                with kube_errors(f"key '{key.secret_name}'"):
                    self._delete(written)
            except MaasError:
                pass  # nobody was given this key's plaintext: left behind, it opens nothing to anyone
            self._bump()
            raise
        return key

    def _create_member_key(self, key: ApiKey, api_key: str, team_secret: V1Secret) -> ApiKey:
        """A key only for a member: checked before the write and again after it, since a
        removal may land between (its own second revocation pass covers a key written before
        it; this covers one written after its first)."""
        def member() -> bool:
            try:
                self.get_member(team_id=key.team_id, user_id=key.user_id)
            except NotFound:
                return False
            return True

        if not member():
            raise not_a_member(key.team_id)
        body = key_body(
            key, api_key, team_from_secret(team_secret), team_secret.metadata.uid, self._selector, self._watch_label
        )
        with kube_errors(f"key '{key.secret_name}'"):
            written = self._core.create_namespaced_secret(self._namespace, body, _request_timeout=self._timeout)
        self._bump(written)
        if not member():
            try:
                with kube_errors(f"key '{key.secret_name}'"):
                    self._delete(written)
            except Conflict:
                # Changed since written: the removal's own pass got to it. Revoked either way.
                self.set_key_status(secret_name=key.secret_name, status="revoked")
            finally:
                self._bump()
            raise not_a_member(key.team_id)
        return key

    def get_key(self, *, secret_name: str) -> ApiKey:
        return key_from_secret(self._read_key(secret_name))

    def find_key(self, *, key_sha256: str) -> ApiKey | None:
        prefix = key_sha256[:SHA_PREFIX_LEN].lower()
        if not re.fullmatch(r"[0-9a-f]{32}", prefix):
            return None
        for secret in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},{SHA_LABEL}={prefix}", "keys"):
            record = key_from_secret(secret)
            if hmac.compare_digest(record.key_sha256, key_sha256):
                return record
        return None

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None,
                  in_grace: bool = False, team_ids: Collection[str] | None = None,
                  after: str | None = None, limit: int | None = None, with_rates: bool = False) -> list[ApiKey]:
        selector = (f"{RESOURCE_TYPE}={KEY_TYPE}" + (f",{GRACE_LABEL}=true" if in_grace else "")
                    + (f",{RATES_LABEL}=true" if with_rates else ""))
        for label, value in ((TEAM_ID_LABEL, team_id), ("maas/user-id", user_id)):
            if value is None:
                continue
            if not value or len(value) > 63 or not LABEL_VALUE.match(value):
                return []  # no Secret can carry such a label value
            selector += f",{label}={value}"
        keys = sorted((key_from_secret(s) for s in self._list(selector, "keys")), key=lambda k: k.secret_name)
        return _page(keys, lambda k: k.secret_name, after, limit,
                     None if team_ids is None else (lambda k: k.team_id in team_ids))

    def count_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> int:
        return len(self.list_keys(team_id=team_id, user_id=user_id))

    def key_counts(self, *, team_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        # The API server counts nothing: each key Secret is read, as for a listing.
        users: dict[str, set[str]] = {}
        keys: dict[str, int] = {}
        for key in self.list_keys(team_ids=team_ids) if team_ids else ():
            keys[key.team_id] = keys.get(key.team_id, 0) + 1
            users.setdefault(key.team_id, set()).add(key.user_id)
        return {team_id: (count, len(users[team_id])) for team_id, count in keys.items()}

    def key_names(self, *, team_id: str) -> list[str]:
        return [key.secret_name for key in self.list_keys(team_id=team_id)]

    def count_active_keys(self, *, team_id: str, user_id: str) -> int:
        return sum(1 for key in self.list_keys(team_id=team_id, user_id=user_id) if key.status == "active")

    def delete_key(self, *, secret_name: str) -> ApiKey:
        def attempt() -> ApiKey:
            secret = self._read_key(secret_name)
            self._delete(secret)
            return key_from_secret(secret)

        removed = retry_on_conflict(attempt, f"key '{secret_name}'")
        self._bump()
        return removed

    def set_key_status(self, *, secret_name: str, status: KeyStatus) -> ApiKey:
        return self.update_key(secret_name=secret_name, changes=KeyChanges(status=status))

    def update_key(self, *, secret_name: str, changes: KeyChanges) -> ApiKey:
        given = {
            name: value
            for name, value in (
                ("status", changes.status),
                ("expires_at", changes.expires_at),
                ("replaced_by", changes.replaced_by),
            )
            if value is not None
        }

        def attempt() -> ApiKey:
            secret = self._read_key(secret_name)
            current = key_from_secret(secret)
            changed = replace(current, **given)
            if changed == current:
                return current
            return self._write_key_lifecycle(secret, changed)

        updated = retry_on_conflict(attempt, f"key '{secret_name}'")
        self._bump()
        return updated

    def _write_key_lifecycle(self, secret: V1Secret, changed: ApiKey) -> ApiKey:
        """Patch a key Secret, conditioned on the version read, to `changed`'s lifecycle fields."""
        notes = {STATUS_ANNOTATION: changed.status}
        if changed.expires_at is not None:
            notes[EXPIRES_ANNOTATION] = timestamp(changed.expires_at)
        if changed.replaced_by:
            notes["maas/replaced-by"] = changed.replaced_by
        patch = {"metadata": {"labels": selected_labels(changed, self._selector), "annotations": notes}}
        return key_from_secret(self._patch(secret, patch))

    def _revoke_active_keys(self, team_id: str, user_id: str) -> list[ApiKey]:
        """Revoke the user's keys in the team that are active when read (one that expired or was
        revoked meanwhile is left as it is); return those revoked."""
        if not _label_value(user_id):
            return []  # no key Secret can carry such a user id
        revoked: list[ApiKey] = []
        for key in self.list_keys(team_id=team_id, user_id=user_id):
            if key.status != "active":
                continue

            def attempt(name: str = key.secret_name) -> ApiKey | None:
                secret = self._read_key(name)
                current = key_from_secret(secret)
                if current.status != "active":
                    return None
                return self._write_key_lifecycle(secret, replace(current, status="revoked"))

            try:
                done = retry_on_conflict(attempt, f"key '{key.secret_name}'")
            except NotFound:
                continue  # deleted meanwhile: nothing left to revoke
            if done is not None:
                revoked.append(done)
        if revoked:
            self._bump()
        return revoked

    def touch_keys(self, *, last_used: Mapping[str, datetime]) -> int:
        # Each key is one conditioned patch that only moves forward; the generation stays put
        # (last use changes no authentication decision).
        changed = 0
        for secret_name, when in last_used.items():

            def attempt(secret_name: str = secret_name, when: datetime = when) -> bool:
                secret = self._read_key(secret_name)
                seen = key_from_secret(secret).last_used_at
                if seen is not None and seen >= when:
                    return False
                self._patch(secret, {"metadata": {"annotations": {"maas/last-used-at": timestamp(when)}}})
                return True

            try:
                changed += bool(retry_on_conflict(attempt, f"key '{secret_name}'"))
            except NotFound:
                continue  # deleted meanwhile
        return changed

    # -- audit ---------------------------------------------------------------------------

    def record_audit(self, *, entry: AuditEntry) -> AuditEntry:
        for _ in range(ATTEMPTS):
            entry_id = self._next_audit_id()
            try:
                with kube_errors("audit entry"):
                    self._core.create_namespaced_config_map(
                        self._namespace, audit_body(replace(entry, id=entry_id)), _request_timeout=self._timeout
                    )
            except Conflict:
                continue  # another replica took this id in the same microsecond
            return replace(entry, id=entry_id)
        raise BackendUnavailable("Kubernetes API: no free audit entry id after several attempts")

    def _next_audit_id(self) -> int:
        """Microseconds since the epoch, strictly increasing in this process: ids order entries
        across replicas as far as their clocks agree, and a collision is an AlreadyExists."""
        with self._lock:
            self._audit_id = max(self._audit_id + 1, time.time_ns() // 1000)
            return self._audit_id

    def prune_audit(self, *, before: datetime) -> int:
        with kube_errors("audit entries"):
            listed = self._core.list_namespaced_config_map(
                self._namespace, label_selector=f"{RESOURCE_TYPE}={AUDIT_TYPE}", _request_timeout=self._timeout
            )
        pruned = 0
        for config_map in listed.items or []:
            entry = audit_from_config_map(config_map)
            if entry is None or entry.at >= before:
                continue
            try:
                with kube_errors("audit entry"):
                    self._core.delete_namespaced_config_map(
                        config_map.metadata.name, self._namespace, _request_timeout=self._timeout
                    )
            except NotFound:
                continue  # another replica's sweep got there first
            pruned += 1
        return pruned

    def list_audit(self, *, where: AuditFilter) -> list[AuditEntry]:
        selector = f"{RESOURCE_TYPE}={AUDIT_TYPE}"
        for label, value in (("maas/action", where.action), (TEAM_ID_LABEL, where.team_id)):
            if value is None:
                continue
            if not value or len(value) > 63 or not LABEL_VALUE.match(value):
                return []
            selector += f",{label}={value}"
        with kube_errors("audit entries"):
            listed = self._core.list_namespaced_config_map(
                self._namespace, label_selector=selector, _request_timeout=self._timeout
            )
        entries = [e for e in (audit_from_config_map(c) for c in listed.items or []) if e is not None and audit_matches(e, where)]
        entries.sort(key=lambda e: e.id or 0, reverse=True)
        return entries[: max(where.limit, 0)]

    # -- gateway support -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        teams: dict[str, Team] = {}
        for secret in self._list(f"{RESOURCE_TYPE}={TEAM_TYPE}", "teams"):
            try:
                team = team_from_secret(secret)
            except BackendUnavailable as exc:
                # One hand-edited team must not refuse every team's calls: it is left out, so
                # its own keys are refused (fail closed) and the others are served.
                log.warning("%s; its keys are refused until then", exc.message)
                continue
            teams[team.team_id] = team
        keys = {k.key_sha256: k for k in (key_from_secret(s) for s in self._list(f"{RESOURCE_TYPE}={KEY_TYPE}", "keys"))}
        return Snapshot(teams=teams, keys_by_sha256=keys)

    def ping(self) -> None:
        # /version needs no RBAC grant (system:public-info-viewer) and reads no object.
        with kube_errors("the API server"):
            # Raw: some distributions leave out fields the client's model of /version requires.
            VersionApi(self._client).get_code(_preload_content=False, _request_timeout=self._timeout).release_conn()

    def generation(self) -> int:
        now = time.monotonic()
        with self._lock:
            due = now - self._checked_at >= self._check_every
            if due:
                self._checked_at = now
        if due:
            self._observe_remote_writes()
        with self._lock:
            return self._generation

    def _observe_remote_writes(self) -> None:
        try:
            with kube_errors("secrets"):
                listed = self._core.list_namespaced_secret(
                    self._namespace,
                    label_selector=f"{RESOURCE_TYPE} in ({TEAM_TYPE},{KEY_TYPE})",
                    limit=1,
                    _request_timeout=self._timeout,
                )
        except BackendUnavailable:
            return  # the hot path keeps its cache; the next check tries again
        version = listed.metadata.resource_version if listed.metadata else None
        with self._lock:
            if version != self._seen_version:
                self._seen_version = version
                self._generation += 1

    def close(self) -> None:
        self._client.close()
