"""The cluster Store: teams and API keys as Kubernetes Secrets that Authorino reads directly.

Shapes (DESIGN.md "Kubernetes shapes"): a team is the Secret `team-<team_id>-config`, its fields
in annotations; a key is the Secret named by its `secret_name`, holding the plaintext key in
`api_key` (Authorino compares plaintext), labelled so that the AuthPolicy's selector finds it,
with an ownerReference to its team Secret so that garbage collection backs up the explicit
cascade of `delete_team`. Besides the annotations DESIGN.md lists, a key carries `maas/role` and
`maas/last-used-at`, the rest of its record.

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

import base64
import binascii
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import (
    ApiClient,
    Configuration,
    CoreV1Api,
    V1ConfigMap,
    V1DeleteOptions,
    V1Preconditions,
    V1Secret,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from shared.errors import BackendUnavailable, Conflict, InvalidRequest, MaasError, NotFound
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

__all__ = ["KubernetesStore", "api_client_from_config", "kube_errors", "retry_on_conflict"]

RESOURCE_TYPE = "maas/resource-type"
TEAM_TYPE = "team-config"
KEY_TYPE = "team-key"
AUDIT_TYPE = "audit"
SHA_LABEL = "maas/key-sha256"
SHA_PREFIX_LEN = 32
ATTEMPTS = 5  # read-modify-write attempts before giving up on a resourceVersion conflict
REQUEST_TIMEOUT = (3.0, 10.0)  # (connect, read) seconds: an unreachable API fails fast

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


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
            f"Kubernetes API refused access to {what} ({status} {exc.reason}): check the "
            "ServiceAccount's RBAC (a Role or ClusterRole granting these verbs on this resource, "
            "bound to the ServiceAccount) and its token"
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


# -- records <-> Secrets -----------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def team_secret_name(team_id: str) -> str:
    return f"team-{team_id}-config"


def _decode(secret: V1Secret, field: str) -> str:
    raw = (secret.data or {}).get(field, "")
    try:
        return base64.b64decode(raw).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _team_annotations(team: Team) -> dict[str, str]:
    return {
        "maas/team-name": team.team_name,
        "maas/description": team.description,
        "maas/policy": team.policy,
        "maas/token-limit": str(team.token_limit),
        "maas/time-window": team.time_window,
        "maas/limit-scope": team.limit_scope,
        "maas/created-at": _ts(team.created_at),
    }


def team_body(team: Team) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": team_secret_name(team.team_id),
            "labels": {RESOURCE_TYPE: TEAM_TYPE, "maas/team-id": team.team_id},
            "annotations": _team_annotations(team),
        },
    }


def _team(secret: V1Secret) -> Team:
    labels = secret.metadata.labels or {}
    notes = secret.metadata.annotations or {}
    try:
        return Team(
            team_id=labels["maas/team-id"],
            team_name=notes.get("maas/team-name", ""),
            description=notes.get("maas/description", ""),
            policy=notes.get("maas/policy", ""),
            token_limit=int(notes["maas/token-limit"]),
            time_window=notes["maas/time-window"],
            limit_scope="team" if notes.get("maas/limit-scope") == "team" else "user",
            created_at=_dt(notes.get("maas/created-at")) or secret.metadata.creation_timestamp,
        )
    except (KeyError, ValueError) as exc:
        raise BackendUnavailable(
            f"team Secret '{secret.metadata.name}' is malformed (missing or bad {exc}); fix or delete it"
        ) from exc


def _selected_labels(key: ApiKey, selector: str) -> dict[str, str | None]:
    """The labels Authorino selects by: present only while the key is active."""
    active = key.status == "active"
    return {"kuadrant.io/auth-secret": "true" if active else None, "app": selector if active else None}


def _key_annotations(key: ApiKey, team: Team) -> dict[str, str]:
    notes = {
        "secret.kuadrant.io/user-id": key.user_id,
        "kuadrant.io/groups": team.policy,
        "maas/team-id": key.team_id,
        "maas/user-email": key.user_email,
        "maas/models-allowed": ",".join(key.models_allowed),
        "maas/status": key.status,
        "maas/created-at": _ts(key.created_at),
        "maas/role": key.role,
    }
    if key.alias:
        notes["maas/alias"] = key.alias
    if key.expires_at is not None:
        notes["maas/expires-at"] = _ts(key.expires_at)
    if key.last_used_at is not None:
        notes["maas/last-used-at"] = _ts(key.last_used_at)
    if key.replaced_by:
        notes["maas/replaced-by"] = key.replaced_by
    return notes


def key_body(key: ApiKey, api_key: str, team: Team, team_uid: str, selector: str) -> dict[str, Any]:
    labels = {
        RESOURCE_TYPE: KEY_TYPE,
        "maas/team-id": key.team_id,
        "maas/user-id": key.user_id,
        SHA_LABEL: key.key_sha256[:SHA_PREFIX_LEN],
    }
    labels.update({k: v for k, v in _selected_labels(key, selector).items() if v is not None})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": key.secret_name,
            "labels": labels,
            "annotations": _key_annotations(key, team),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Secret", "name": team_secret_name(team.team_id), "uid": team_uid}
            ],
        },
        "stringData": {"api_key": api_key},
    }


def _key(secret: V1Secret) -> ApiKey:
    labels = secret.metadata.labels or {}
    notes = secret.metadata.annotations or {}
    models = notes.get("maas/models-allowed", "")
    status = notes.get("maas/status", "active")
    try:
        return ApiKey(
            secret_name=secret.metadata.name,
            key_sha256=sha256_of(_decode(secret, "api_key")),
            team_id=labels["maas/team-id"],
            user_id=labels["maas/user-id"],
            user_email=notes.get("maas/user-email", ""),
            role=notes.get("maas/role", "user"),
            status=status if status in ("active", "revoked", "expired") else "revoked",  # type: ignore[arg-type]
            created_at=_dt(notes.get("maas/created-at")) or secret.metadata.creation_timestamp,
            models_allowed=tuple(models.split(",")) if models else (),
            alias=notes.get("maas/alias", ""),
            expires_at=_dt(notes.get("maas/expires-at")),
            last_used_at=_dt(notes.get("maas/last-used-at")),
            replaced_by=notes.get("maas/replaced-by") or None,
        )
    except (KeyError, ValueError) as exc:
        raise BackendUnavailable(
            f"key Secret '{secret.metadata.name}' is malformed (missing or bad {exc}); fix or delete it"
        ) from exc


def _is(secret: V1Secret, kind: str) -> bool:
    return (secret.metadata.labels or {}).get(RESOURCE_TYPE) == kind


def audit_body(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as a ConfigMap: filterable fields as labels, the entry as data."""
    labels = {RESOURCE_TYPE: AUDIT_TYPE, "maas/outcome": str(entry.outcome)}
    for label, value in (("maas/action", entry.action), ("maas/team-id", entry.team_id)):
        if value and len(value) <= 63 and _LABEL_VALUE.match(value):
            labels[label] = value
    data = {
        "id": str(entry.id),
        "at": _ts(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "method": entry.method,
        "path": entry.path,
        "outcome": str(entry.outcome),
    }
    if entry.team_id is not None:
        data["team_id"] = entry.team_id
    if entry.secret_name is not None:
        data["secret_name"] = entry.secret_name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"maas-audit-{entry.id}", "labels": labels},
        "data": data,
    }


def _audit(config_map: V1ConfigMap) -> AuditEntry | None:
    data = config_map.data or {}
    try:
        return AuditEntry(
            id=int(data["id"]),
            at=datetime.fromisoformat(data["at"]),
            actor=data["actor"],
            action=data["action"],
            method=data["method"],
            path=data["path"],
            outcome=int(data["outcome"]),
            team_id=data.get("team_id"),
            secret_name=data.get("secret_name"),
        )
    except (KeyError, ValueError):
        return None  # not one of ours, or hand-edited: an audit listing skips it


def _matches(entry: AuditEntry, where: AuditFilter) -> bool:
    return not (
        (where.outcome_min is not None and entry.outcome < where.outcome_min)
        or (where.outcome_max is not None and entry.outcome > where.outcome_max)
        or (where.since is not None and entry.at < where.since)
        or (where.until is not None and entry.at >= where.until)
        or (where.before_id is not None and (entry.id or 0) >= where.before_id)
    )


# -- the store ---------------------------------------------------------------------------------


class KubernetesStore:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        key_selector: str,
        generation_check_s: float = 2.0,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        self._client = api_client
        self._core = CoreV1Api(api_client)
        self._namespace = namespace
        self._selector = key_selector
        self._timeout = request_timeout
        self._check_every = generation_check_s
        self._lock = threading.Lock()
        self._generation = 0
        self._seen_version: str | None = None
        self._checked_at = 0.0
        self._audit_id = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesStore:
        return cls(api_client_from_config(), namespace=settings.namespace, key_selector=settings.key_selector)

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
        if not _DNS_LABEL.match(team_id):
            raise NotFound(f"{what} not found")
        secret = self._read(team_secret_name(team_id), what)
        if not _is(secret, TEAM_TYPE):
            raise NotFound(f"{what} not found")
        return secret

    def _read_key(self, secret_name: str) -> V1Secret:
        what = f"key '{secret_name}'"
        if len(secret_name) > 253 or not _DNS_SUBDOMAIN.match(secret_name):
            raise NotFound(f"{what} not found")
        secret = self._read(secret_name, what)
        if not _is(secret, KEY_TYPE):
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
        return _team(self._read_team(team_id))

    def list_teams(self) -> list[Team]:
        teams = [_team(s) for s in self._list(f"{RESOURCE_TYPE}={TEAM_TYPE}", "teams")]
        return sorted(teams, key=lambda t: t.team_id)

    def update_team(self, *, team_id: str, changes: TeamChanges) -> Team:
        def attempt() -> Team:
            # Read inside the attempt: the patch is conditioned on this read's version.
            secret = self._read_team(team_id)
            updated = changes.apply(_team(secret))
            written = self._patch(secret, {"metadata": {"annotations": _team_annotations(updated)}})
            return _team(written)

        updated = retry_on_conflict(attempt, f"team '{team_id}'")
        self._bump()
        if changes.policy is not None:
            self._regroup_keys(updated)
        return updated

    def _regroup_keys(self, team: Team) -> None:
        """Keys carry their team's policy as Authorino's `kuadrant.io/groups`: follow a change."""
        for secret in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},maas/team-id={team.team_id}", "keys"):
            name = secret.metadata.name

            def attempt(name: str = name) -> None:
                current = self._read_key(name)
                if (current.metadata.annotations or {}).get("kuadrant.io/groups") != team.policy:
                    self._patch(current, {"metadata": {"annotations": {"kuadrant.io/groups": team.policy}}})

            try:
                retry_on_conflict(attempt, f"key '{name}'")
            except NotFound:
                continue  # deleted meanwhile: nothing to follow
        self._bump()

    def delete_team(self, *, team_id: str) -> list[ApiKey]:
        team_secret = self._read_team(team_id)
        removed: list[ApiKey] = []
        for secret in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},maas/team-id={team_id}", "keys"):
            try:
                with kube_errors(f"key '{secret.metadata.name}'"):
                    self._delete(secret)
            except (NotFound, Conflict):
                continue  # deleted or changed meanwhile; the ownerReference still collects it
            removed.append(_key(secret))
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
        body = key_body(key, api_key, _team(team_secret), team_secret.metadata.uid, self._selector)
        with kube_errors(f"key '{key.secret_name}'"):
            written = self._core.create_namespaced_secret(self._namespace, body, _request_timeout=self._timeout)
        self._bump(written)
        return key

    def get_key(self, *, secret_name: str) -> ApiKey:
        return _key(self._read_key(secret_name))

    def find_key(self, *, key_sha256: str) -> ApiKey | None:
        prefix = key_sha256[:SHA_PREFIX_LEN].lower()
        if not re.fullmatch(r"[0-9a-f]{32}", prefix):
            return None
        for secret in self._list(f"{RESOURCE_TYPE}={KEY_TYPE},{SHA_LABEL}={prefix}", "keys"):
            record = _key(secret)
            if hmac.compare_digest(record.key_sha256, key_sha256):
                return record
        return None

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> list[ApiKey]:
        selector = f"{RESOURCE_TYPE}={KEY_TYPE}"
        for label, value in (("maas/team-id", team_id), ("maas/user-id", user_id)):
            if value is None:
                continue
            if not value or len(value) > 63 or not _LABEL_VALUE.match(value):
                return []  # no Secret can carry such a label value
            selector += f",{label}={value}"
        return [_key(s) for s in self._list(selector, "keys")]

    def delete_key(self, *, secret_name: str) -> ApiKey:
        def attempt() -> ApiKey:
            secret = self._read_key(secret_name)
            self._delete(secret)
            return _key(secret)

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
            current = _key(secret)
            changed = replace(current, **given)
            if changed == current:
                return current
            notes = {"maas/status": changed.status}
            if changed.expires_at is not None:
                notes["maas/expires-at"] = _ts(changed.expires_at)
            if changed.replaced_by:
                notes["maas/replaced-by"] = changed.replaced_by
            patch = {"metadata": {"labels": _selected_labels(changed, self._selector), "annotations": notes}}
            return _key(self._patch(secret, patch))

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
                seen = _key(secret).last_used_at
                if seen is not None and seen >= when:
                    return False
                self._patch(secret, {"metadata": {"annotations": {"maas/last-used-at": _ts(when)}}})
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

    def list_audit(self, *, where: AuditFilter) -> list[AuditEntry]:
        selector = f"{RESOURCE_TYPE}={AUDIT_TYPE}"
        for label, value in (("maas/action", where.action), ("maas/team-id", where.team_id)):
            if value is None:
                continue
            if not value or len(value) > 63 or not _LABEL_VALUE.match(value):
                return []
            selector += f",{label}={value}"
        with kube_errors("audit entries"):
            listed = self._core.list_namespaced_config_map(
                self._namespace, label_selector=selector, _request_timeout=self._timeout
            )
        entries = [e for e in (_audit(c) for c in listed.items or []) if e is not None and _matches(e, where)]
        entries.sort(key=lambda e: e.id or 0, reverse=True)
        return entries[: max(where.limit, 0)]

    # -- gateway support -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        teams = {t.team_id: t for t in self.list_teams()}
        keys = {k.key_sha256: k for k in (_key(s) for s in self._list(f"{RESOURCE_TYPE}={KEY_TYPE}", "keys"))}
        return Snapshot(teams=teams, keys_by_sha256=keys)

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
