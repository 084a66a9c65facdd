"""Cleanup: what the `cleanup` function does with each CloudEvent, free of any web framework.

Three events drive it (in a cluster from Knative Eventing, on one machine from local/events.py):

- a team Secret was deleted (ApiServerSource, `dev.knative.apiserver.resource.delete`, or the
  `ref` variant in Reference mode): remove that team's keys and regenerate the policies;
- a KServe model added, changed or removed (ApiServerSource in Reference mode, an
  InferenceService or LLMInferenceService): regenerate the policies and the models route;
- a tick (PingSource, `dev.knative.sources.ping`): reconcile everything. Keys whose team is
  gone are deleted; keys past `expires_at` are marked `expired` (a rotated key past its grace is
  marked `revoked`); expired keys are deleted once they have been expired for longer than
  MAAS_EXPIRED_KEY_RETENTION; the policies are regenerated from the teams (drift repair).

Why mark expired keys first and delete them later: listings keep showing an expired key with
its status for a while, so an admin can see why a user's key stopped working, while the
Secret store does not grow without bound. The key is refused from the instant it expires
either way (`shared.auth.usable`), so the sweep's cadence never decides security.

Everything is idempotent: the same event handled twice changes nothing the second time (the
policy regeneration writes the same objects again).

An event nothing can be done with, now or on a redelivery (a delete event whose `data` is not an
object), raises InvalidRequest; an event that is well formed but not ours (another type, a
Secret that is not a team's) is answered with a summary saying why it was ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from shared.context import Context
from shared.errors import InvalidRequest, NotFound
from shared.expiry import duration, effective_status
from shared.identifiers import DNS_LABEL_RE
from shared.schemas import CleanupSummary
from shared.store.base import ApiKey, KeyChanges
from shared.store.kubeshapes import RESOURCE_TYPE, TEAM_ID_LABEL, TEAM_TYPE

log = logging.getLogger("maas.cleanup")

PING = "dev.knative.sources.ping"
SECRET_DELETED = ("dev.knative.apiserver.resource.delete", "dev.knative.apiserver.ref.delete")
APISERVER_EVENT = "dev.knative.apiserver."
MODEL_KINDS = ("InferenceService", "LLMInferenceService")  # the maas-models ApiServerSource
_TEAM_SECRET = re.compile(r"^team-(.+)-config$")


def on_event(ctx: Context, *, event_type: str, data: Any) -> CleanupSummary:
    """Handle one event by its CloudEvent `type` and `data`."""
    if event_type == PING:
        return sweep(ctx, event_type=event_type)
    if event_type.startswith(APISERVER_EVENT) and isinstance(data, Mapping) and data.get("kind") in MODEL_KINDS:
        # A model was added, changed or removed: the models route and the usage labels follow.
        ctx.teams_changed()
        return _summary(event_type, synced=True)
    if event_type in SECRET_DELETED:
        if not isinstance(data, Mapping):
            # An ApiServerSource always sends the object (or its reference): this event is broken.
            raise InvalidRequest(f"'{event_type}' event data is not an object")
        team_id, why_not = deleted_team(ctx, data)
        if team_id is None:
            return _summary(event_type, ignored=why_not)
        return team_deleted(ctx, team_id, event_type=event_type)
    return _summary(event_type, ignored=f"event type '{event_type}' is not handled")


def deleted_team(ctx: Context, data: Any) -> tuple[str | None, str]:
    """The team whose Secret an ApiServerSource event reports deleted, or why there is none.

    Resource mode sends the whole object (read the labels); Reference mode sends only
    kind/namespace/name (read the name). Never log `data`: a key Secret carries its key.
    """
    if not isinstance(data, Mapping):
        return None, "event data is not an object"
    metadata = data.get("metadata")
    if isinstance(metadata, Mapping):
        kind, namespace = data.get("kind"), metadata.get("namespace")
        labels = metadata.get("labels") if isinstance(metadata.get("labels"), Mapping) else {}
        team_id = labels.get(TEAM_ID_LABEL) if labels.get(RESOURCE_TYPE) == TEAM_TYPE else None
    else:
        kind, name, namespace = data.get("kind"), data.get("name"), data.get("namespace")
        found = _TEAM_SECRET.match(name) if isinstance(name, str) else None
        team_id = found.group(1) if found else None
    if kind not in (None, "Secret"):
        return None, f"object is a {kind}, not a Secret"
    if namespace not in (None, ctx.settings.store_namespace):
        return None, f"Secret is in namespace '{namespace}', not '{ctx.settings.store_namespace}'"
    if not isinstance(team_id, str) or not DNS_LABEL_RE.match(team_id):
        return None, "Secret is not a team Secret"
    return team_id, ""


def team_deleted(ctx: Context, team_id: str, *, event_type: str) -> CleanupSummary:
    """Remove the keys a deleted team left behind, then regenerate the policies."""
    try:
        ctx.store.get_team(team_id=team_id)
    except NotFound:
        pass
    else:
        # A team by that id exists again: the keys we see are the new team's, not orphans.
        return _summary(event_type, team_id=team_id, ignored=f"team '{team_id}' exists (re-created)")
    deleted = [name for key in ctx.store.list_keys(team_id=team_id) if (name := _delete(ctx, key))]
    ctx.teams_changed()
    return _summary(event_type, team_id=team_id, deleted=deleted, synced=True)


def sweep(ctx: Context, *, event_type: str = PING) -> CleanupSummary:
    now = ctx.clock()
    retention = duration(ctx.settings.expired_key_retention)
    # Keys before teams: a team created between the two reads cannot make its keys look orphaned.
    keys = ctx.store.list_keys()
    teams = {team.team_id for team in ctx.store.list_teams()}
    deleted: list[str] = []
    expired: list[str] = []
    revoked: list[str] = []
    for key in keys:
        if key.team_id not in teams:
            if name := _delete(ctx, key):
                deleted.append(name)
            continue
        status = effective_status(key, now)
        if status != key.status:
            try:
                ctx.store.update_key(secret_name=key.secret_name, changes=KeyChanges(status=status))
            except NotFound:
                continue  # deleted meanwhile: nothing left to mark
            (revoked if status == "revoked" else expired).append(key.secret_name)
        if _past_retention(key, status, now, retention) and (name := _delete(ctx, key)):
            deleted.append(name)
    ctx.teams_changed()
    pruned = ctx.store.prune_audit(before=now - duration(ctx.settings.audit_retention))
    summary = _summary(event_type, deleted=deleted, expired=expired, revoked=revoked, synced=True,
                       audit_pruned=pruned)
    if deleted or expired or revoked or pruned:
        log.info("cleanup sweep: %d deleted, %d expired, %d revoked, %d audit entries pruned",
                 len(deleted), len(expired), len(revoked), pruned)
    return summary


def _past_retention(key: ApiKey, status: str, now: datetime, retention: timedelta) -> bool:
    return status == "expired" and key.expires_at is not None and key.expires_at + retention <= now


def _delete(ctx: Context, key: ApiKey) -> str | None:
    try:
        ctx.store.delete_key(secret_name=key.secret_name)
    except NotFound:
        return None  # already gone: another sweep, an admin, or Kubernetes GC got there first
    return key.secret_name


def _summary(
    event_type: str,
    *,
    team_id: str | None = None,
    deleted: list[str] | None = None,
    expired: list[str] | None = None,
    revoked: list[str] | None = None,
    synced: bool = False,
    ignored: str | None = None,
    audit_pruned: int = 0,
) -> CleanupSummary:
    return CleanupSummary(
        event_type=event_type,
        team_id=team_id,
        deleted_keys=deleted or [],
        expired_keys=expired or [],
        revoked_keys=revoked or [],
        policies_synced=synced,
        audit_pruned=audit_pruned,
        ignored=ignored,
    )
