"""Teams, keys and audit entries as Kubernetes objects (docs/ARCHITECTURE.md, "Kubernetes
shapes"), as plain dicts to send and as records read back.

Pure functions, no client: `shared.store.kube` talks to the API server with them. Readers take
the kubernetes client's models (`V1Secret`, `V1ConfigMap`) by their attributes only
(`metadata.labels`, `metadata.annotations`, `data`, ...), so this module needs no import of it.

A key's annotations hold its whole record: the identity and status Authorino reads, and also
`maas/role`, `maas/last-used-at` and `maas/replaced-by`. Only an active key carries the `app`
and `kuadrant.io/auth-secret` labels the AuthPolicy selects by. Every key, active or not, carries
the label Authorino's Secret watcher selects by (tests/cluster/SOURCES.md §2): without it
Authorino reads keys only when it rebuilds an AuthConfig, so new keys fail and revoked ones go
on working until then. Authorino keeps the Secret it indexed until the key leaves the selector
(§8): a change it must see is made through the selector labels, never an annotation alone.

A membership is a Secret of its own, `team-<team_id>-member-<hash>`, the hash being the first
32 hex digits of the SHA-256 of the user id (user ids need not be label values, and a label
value is at most 63 characters): labelled with its type, its team and that hash (selected by
either), the record in annotations, owned by its team Secret. No Authorino label: the gateway
never reads memberships. One object per membership rather than a list in the team Secret: a
team of 10,000 members (about 200 bytes each) would pass the 256 KiB limit on annotations and
near the 1 MiB one on an object, and every join would race every other join and every team
update for the team Secret's resourceVersion.

A team Secret written by this version carries `maas/members: stored`: its members are exactly
its membership Secrets. A team from before memberships lacks it, and until its first
membership write its members are derived from its keys (`derived_members`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from shared.errors import BackendUnavailable
from shared.identifiers import DNS_LABEL_RE
from shared.keymaterial import key_sha256 as sha256_of
from shared.durations import normalize_rate_window
from shared.rates import rates_from_text, rates_text
from shared.store.base import (
    ApiKey,
    AuditEntry,
    AuditFilter,
    Member,
    Team,
    changes_from_text,
    changes_text,
    member_role,
)
from shared.tiers import TIER_ANNOTATION, key_tier_annotations, tier_of

RESOURCE_TYPE = "maas/resource-type"
TEAM_TYPE = "team-config"
TEAM_ID_LABEL = "maas/team-id"
KEY_TYPE = "team-key"
AUDIT_TYPE = "audit"
MEMBER_TYPE = "team-member"
USER_HASH_LABEL = "maas/user-hash"
USER_HASH_LEN = 32
# On a team Secret: its memberships are its membership Secrets (not derived from its keys).
MEMBERS_ANNOTATION = "maas/members"
MEMBERS_STORED = "stored"
# The optional team fields, by annotation; absent when None.
OPTIONAL_TEAM_ANNOTATIONS = {
    "max_keys_per_user": "maas/max-keys-per-user",
    "max_key_lifetime": "maas/max-key-lifetime",
}
# A team's or key's list of rates as JSON (shared/rates.py); absent: the short form only / none.
RATES_ANNOTATION = "maas/rates"
# On a key with rates of its own: the policy sync lists those keys by it, not every key.
RATES_LABEL = "maas/has-rates"
MAX_CONCURRENT_ANNOTATION = "maas/max-concurrent"
# On a rotated key: the first key of its chain, whose name its own rates are counted under
# (in a cluster too: the AuthPolicy's `key` identity field reads it, shared/policies.py).
LINEAGE_ANNOTATION = "maas/lineage"
SHA_LABEL = "maas/key-sha256"
SHA_PREFIX_LEN = 32
GRACE_LABEL = "maas/in-grace"
# Key annotations the AuthPolicy reads (shared/policies.py): the store writes them under these names.
STATUS_ANNOTATION = "maas/status"
EXPIRES_ANNOTATION = "maas/expires-at"
# Comma-separated model names, empty for every model; set at key creation, never edited.
MODELS_ANNOTATION = "maas/models-allowed"
# Authorino's default --secret-label-selector (authorino main.go; Kuadrant keeps the default).
AUTHORINO_WATCH_LABEL = ("authorino.kuadrant.io/managed-by", "authorino")

DNS_LABEL = DNS_LABEL_RE
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def timestamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def parse_timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def team_secret_name(team_id: str) -> str:
    return f"team-{team_id}-config"


def _decode(secret: Any, field: str) -> str:
    raw = (secret.data or {}).get(field, "")
    try:
        return base64.b64decode(raw).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""


def team_annotations(team: Team) -> dict[str, str]:
    notes = {
        "maas/team-name": team.team_name,
        "maas/description": team.description,
        "maas/policy": team.policy,
        "maas/token-limit": str(team.token_limit),
        "maas/time-window": team.time_window,
        "maas/limit-scope": team.limit_scope,
        "maas/created-at": timestamp(team.created_at),
    }
    for name, annotation in OPTIONAL_TEAM_ANNOTATIONS.items():
        value = getattr(team, name)
        if value is not None:
            notes[annotation] = str(value)
    rates = rates_text(team.rates)
    if rates is not None:
        notes[RATES_ANNOTATION] = rates
    return notes


def team_annotations_patch(team: Team) -> dict[str, str | None]:
    """A merge patch making a team Secret's annotations say `team`: a field that is None now
    removes its annotation (null in a merge patch deletes the key)."""
    notes: dict[str, str | None] = dict(team_annotations(team))
    for annotation in (*OPTIONAL_TEAM_ANNOTATIONS.values(), RATES_ANNOTATION):
        notes.setdefault(annotation, None)
    return notes


def team_body(team: Team) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": team_secret_name(team.team_id),
            "labels": {RESOURCE_TYPE: TEAM_TYPE, TEAM_ID_LABEL: team.team_id},
            # A new team has nothing to derive: its memberships are stored from the start.
            "annotations": team_annotations(team) | {MEMBERS_ANNOTATION: MEMBERS_STORED},
        },
    }


def members_stored(team_secret: Any) -> bool:
    return (team_secret.metadata.annotations or {}).get(MEMBERS_ANNOTATION) == MEMBERS_STORED


def team_from_secret(secret: Any) -> Team:
    labels = secret.metadata.labels or {}
    notes = secret.metadata.annotations or {}
    cap = notes.get(OPTIONAL_TEAM_ANNOTATIONS["max_keys_per_user"])
    try:
        return Team(
            team_id=labels[TEAM_ID_LABEL],
            team_name=notes.get("maas/team-name", ""),
            description=notes.get("maas/description", ""),
            policy=notes.get("maas/policy", ""),
            token_limit=int(notes["maas/token-limit"]),
            # As the API checks it: a hand edit such as '1d' or '24 hours' must not read as a 1 s window.
            time_window=normalize_rate_window(notes["maas/time-window"]),
            limit_scope="team" if notes.get("maas/limit-scope") == "team" else "user",
            created_at=parse_timestamp(notes.get("maas/created-at")) or secret.metadata.creation_timestamp,
            max_keys_per_user=None if cap is None else int(cap),
            max_key_lifetime=notes.get(OPTIONAL_TEAM_ANNOTATIONS["max_key_lifetime"]),
            rates=rates_from_text(notes.get(RATES_ANNOTATION)),
        )
    except (KeyError, ValueError) as exc:
        raise BackendUnavailable(
            f"team Secret '{secret.metadata.name}' is malformed (missing or bad {exc}); fix or delete it"
        ) from exc


def selected_labels(key: ApiKey, selector: str) -> dict[str, str | None]:
    """The labels Authorino selects by, present only while the key is active; and the mark of a
    rotated key in its grace period, whose shortened expiry Authorino must be made to re-read."""
    active = key.status == "active"
    return {
        "kuadrant.io/auth-secret": "true" if active else None,
        "app": selector if active else None,
        GRACE_LABEL: "true" if active and key.replaced_by else None,
    }


def team_identity(team: Team) -> dict[str, str]:
    """What a key carries of its team for Authorino's identity: follows every team change."""
    return {"kuadrant.io/groups": team.policy, TIER_ANNOTATION: tier_of(team)}


def key_annotations(key: ApiKey, team: Team) -> dict[str, str]:
    notes = {
        "secret.kuadrant.io/user-id": key.user_id,
        **team_identity(team),
        TEAM_ID_LABEL: key.team_id,
        "maas/user-email": key.user_email,
        MODELS_ANNOTATION: ",".join(key.models_allowed),
        STATUS_ANNOTATION: key.status,
        "maas/created-at": timestamp(key.created_at),
        "maas/role": key.role,
    }
    if key.alias:
        notes["maas/alias"] = key.alias
    if key.expires_at is not None:
        notes[EXPIRES_ANNOTATION] = timestamp(key.expires_at)
    if key.last_used_at is not None:
        notes["maas/last-used-at"] = timestamp(key.last_used_at)
    if key.replaced_by:
        notes["maas/replaced-by"] = key.replaced_by
    rates = rates_text(key.rates)
    if rates is not None:
        notes[RATES_ANNOTATION] = rates
        notes.update(key_tier_annotations(key))  # the identity the key's own rate limits select by
    if key.max_concurrent is not None:
        notes[MAX_CONCURRENT_ANNOTATION] = str(key.max_concurrent)
    if key.lineage:
        notes[LINEAGE_ANNOTATION] = key.lineage
    return notes


def key_body(
    key: ApiKey,
    api_key: str,
    team: Team,
    team_uid: str,
    selector: str,
    watch_label: tuple[str, str] = AUTHORINO_WATCH_LABEL,
) -> dict[str, Any]:
    labels = {
        RESOURCE_TYPE: KEY_TYPE,
        TEAM_ID_LABEL: key.team_id,
        "maas/user-id": key.user_id,
        SHA_LABEL: key.key_sha256[:SHA_PREFIX_LEN],
        watch_label[0]: watch_label[1],
    }
    if key.rates:
        labels[RATES_LABEL] = "true"
    labels.update({k: v for k, v in selected_labels(key, selector).items() if v is not None})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": key.secret_name,
            "labels": labels,
            "annotations": key_annotations(key, team),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Secret", "name": team_secret_name(team.team_id), "uid": team_uid}
            ],
        },
        "stringData": {"api_key": api_key},
    }


def key_from_secret(secret: Any) -> ApiKey:
    labels = secret.metadata.labels or {}
    notes = secret.metadata.annotations or {}
    models = notes.get(MODELS_ANNOTATION, "")
    status = notes.get(STATUS_ANNOTATION, "active")
    concurrent = notes.get(MAX_CONCURRENT_ANNOTATION)
    try:
        return ApiKey(
            secret_name=secret.metadata.name,
            key_sha256=sha256_of(_decode(secret, "api_key")),
            team_id=labels[TEAM_ID_LABEL],
            user_id=labels["maas/user-id"],
            user_email=notes.get("maas/user-email", ""),
            role=notes.get("maas/role", "user"),
            status=status if status in ("active", "revoked", "expired") else "revoked",  # type: ignore[arg-type]
            created_at=parse_timestamp(notes.get("maas/created-at")) or secret.metadata.creation_timestamp,
            models_allowed=tuple(models.split(",")) if models else (),
            alias=notes.get("maas/alias", ""),
            expires_at=parse_timestamp(notes.get(EXPIRES_ANNOTATION)),
            last_used_at=parse_timestamp(notes.get("maas/last-used-at")),
            replaced_by=notes.get("maas/replaced-by") or None,
            rates=rates_from_text(notes.get(RATES_ANNOTATION), scope="key"),
            max_concurrent=None if concurrent is None else int(concurrent),
            lineage=notes.get(LINEAGE_ANNOTATION) or None,
        )
    except (KeyError, ValueError) as exc:
        raise BackendUnavailable(
            f"key Secret '{secret.metadata.name}' is malformed (missing or bad {exc}); fix or delete it"
        ) from exc


def user_hash(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:USER_HASH_LEN]


def member_secret_name(team_id: str, user_id: str) -> str:
    # The hash is hex without dashes, so no (team, user) pair's name is another's.
    return f"team-{team_id}-member-{user_hash(user_id)}"


def member_annotations(member: Member) -> dict[str, str]:
    return {
        "maas/user-id": member.user_id,
        "maas/user-email": member.user_email,
        "maas/role": member.role,
        "maas/joined-at": timestamp(member.joined_at),
    }


def member_body(member: Member, team_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": member_secret_name(member.team_id, member.user_id),
            "labels": {
                RESOURCE_TYPE: MEMBER_TYPE,
                TEAM_ID_LABEL: member.team_id,
                USER_HASH_LABEL: user_hash(member.user_id),
            },
            "annotations": member_annotations(member),
            # Garbage collection backs up delete_team's explicit removal, as for keys.
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Secret", "name": team_secret_name(member.team_id), "uid": team_uid}
            ],
        },
    }


def member_from_secret(secret: Any) -> Member:
    labels = secret.metadata.labels or {}
    notes = secret.metadata.annotations or {}
    try:
        joined = parse_timestamp(notes.get("maas/joined-at")) or secret.metadata.creation_timestamp
        return Member(
            team_id=labels[TEAM_ID_LABEL],
            user_id=notes["maas/user-id"],
            role=member_role(notes.get("maas/role", "member")),
            user_email=notes.get("maas/user-email", ""),
            joined_at=joined,
        )
    except (KeyError, ValueError) as exc:
        raise BackendUnavailable(
            f"membership Secret '{secret.metadata.name}' is malformed (missing or bad {exc}); fix or delete it"
        ) from exc


def derived_members(keys: Iterable[ApiKey]) -> dict[tuple[str, str], Member]:
    """The members keys imply, by (team_id, user_id): one per user holding a key in a team, with
    the role and email of their newest key, joined when their oldest was made (what the SQLite
    store's backfill does for a database from before memberships)."""
    held: dict[tuple[str, str], list[ApiKey]] = {}
    for key in keys:
        held.setdefault((key.team_id, key.user_id), []).append(key)
    members: dict[tuple[str, str], Member] = {}
    for (team_id, user_id), its_keys in held.items():
        newest = max(its_keys, key=lambda k: (k.created_at, k.secret_name))
        members[(team_id, user_id)] = Member(
            team_id=team_id,
            user_id=user_id,
            role=member_role(newest.role),
            user_email=newest.user_email,
            joined_at=min(k.created_at for k in its_keys),
        )
    return members


def is_kind(secret: Any, kind: str) -> bool:
    return (secret.metadata.labels or {}).get(RESOURCE_TYPE) == kind


def audit_body(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as a ConfigMap: filterable fields as labels, the entry as data."""
    labels = {RESOURCE_TYPE: AUDIT_TYPE, "maas/outcome": str(entry.outcome)}
    for label, value in (("maas/action", entry.action), (TEAM_ID_LABEL, entry.team_id)):
        if value and len(value) <= 63 and LABEL_VALUE.match(value):
            labels[label] = value
    data = {
        "id": str(entry.id),
        "at": timestamp(entry.at),
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
    changes = changes_text(entry.changes)
    if changes is not None:
        # Bounded by shared.audit (20 fields of 200 characters): a few KiB at most per ConfigMap.
        data["changes"] = changes
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"maas-audit-{entry.id}", "labels": labels},
        "data": data,
    }


def audit_from_config_map(config_map: Any) -> AuditEntry | None:
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
            changes=changes_from_text(data.get("changes")),
        )
    except (KeyError, ValueError):
        return None  # not one of ours, or hand-edited: an audit listing skips it


def audit_matches(entry: AuditEntry, where: AuditFilter) -> bool:
    return not (
        (where.outcome_min is not None and entry.outcome < where.outcome_min)
        or (where.outcome_max is not None and entry.outcome > where.outcome_max)
        or (where.since is not None and entry.at < where.since)
        or (where.until is not None and entry.at >= where.until)
        or (where.before_id is not None and (entry.id or 0) >= where.before_id)
    )
