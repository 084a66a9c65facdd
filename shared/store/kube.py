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
epoch; they are never key material. Retention is the cleanup sweep's business, not the store's.

Revocation: only an active key keeps the `app` and `kuadrant.io/auth-secret` labels that
Authorino selects by, so revoking or expiring a key removes it from the gateway's view at once.

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
)
from shared.keymaterial import key_sha256 as sha256_of
from shared.settings import Settings
from shared.store.base import (
    ApiKey,
    AuditEntry,
    AuditFilter,
    KeyChanges,
    KeyStatus,
    Snapshot,
    Team,
    TeamChanges,
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
    RESOURCE_TYPE,
    SHA_LABEL,
    SHA_PREFIX_LEN,
    STATUS_ANNOTATION,
    TEAM_ID_LABEL,
    TEAM_TYPE,
    audit_body,
    audit_from_config_map,
    audit_matches,
    is_kind,
    key_body,
    key_from_secret,
    selected_labels,
    team_annotations,
    team_body,
    team_from_secret,
    team_identity,
    team_secret_name,
    timestamp,
)

__all__ = ["KubernetesStore", "api_client_from_config", "kube_errors", "retry_on_conflict"]

ATTEMPTS = 5  # read-modify-write attempts before giving up on a resourceVersion conflict
REQUEST_TIMEOUT = (3.0, 10.0)  # (connect, read) seconds: an unreachable API fails fast

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
            written = self._patch(secret, {"metadata": {"annotations": team_annotations(updated)}})
            return team_from_secret(written)

        updated = retry_on_conflict(attempt, f"team '{team_id}'")
        self._bump()
        if any(value is not None for value in (changes.policy, changes.token_limit, changes.time_window,
                                               changes.limit_scope)):
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
        with kube_errors(f"team '{team_id}'"):
            try:
                self._delete(team_secret)
            except ApiException as exc:
                if exc.status == 409:  # re-created meanwhile: not the team we were asked about
                    raise NotFound(f"team '{team_id}' not found") from exc
                raise
        self._bump()
        return removed

    # -- keys ----------------------------------------------------------------------------

    def create_key(self, *, key: ApiKey, api_key: str) -> ApiKey:
        if not hmac.compare_digest(sha256_of(api_key), key.key_sha256):
            raise InvalidRequest("key_sha256 does not match the API key")
        team_secret = self._read_team(key.team_id)
        if self.find_key(key_sha256=key.key_sha256) is not None:
            raise Conflict("an identical API key already exists")
        body = key_body(
            key, api_key, team_from_secret(team_secret), team_secret.metadata.uid, self._selector, self._watch_label
        )
        with kube_errors(f"key '{key.secret_name}'"):
            written = self._core.create_namespaced_secret(self._namespace, body, _request_timeout=self._timeout)
        self._bump(written)
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
                  after: str | None = None, limit: int | None = None) -> list[ApiKey]:
        selector = f"{RESOURCE_TYPE}={KEY_TYPE}" + (f",{GRACE_LABEL}=true" if in_grace else "")
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
            notes = {STATUS_ANNOTATION: changed.status}
            if changed.expires_at is not None:
                notes[EXPIRES_ANNOTATION] = timestamp(changed.expires_at)
            if changed.replaced_by:
                notes["maas/replaced-by"] = changed.replaced_by
            patch = {"metadata": {"labels": selected_labels(changed, self._selector), "annotations": notes}}
            return key_from_secret(self._patch(secret, patch))

        updated = retry_on_conflict(attempt, f"key '{secret_name}'")
        self._bump()
        return updated

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
        teams = {t.team_id: t for t in self.list_teams()}
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
