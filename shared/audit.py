"""The audit log: one entry per admin action (who, what, when, outcome); shared/auditlog.py reads it.

Entries are written by the one HTTP adapter (functions/_http.py) so no endpoint can forget
them. They name the action (the function target), the path with its parameters, the team and
key handle involved, and the status answered; never a request body, never key material.
Writing an entry must never fail the action it records: `record` logs and carries on.

An update also records what it changed: a handler sets `Call.changes` to `changed(before,
after)` of the public response models it read before and answered after, so what is stored is
what GET would have shown anyone allowed to see it, never a body as sent. A secret field
(NEVER_RECORDED: `KeyCreated.api_key`) is dropped whoever passes it, anything key-shaped in a
value is redacted, and the whole is bounded: MAX_CHANGED_FIELDS fields, each value cut to
MAX_CHANGE_VALUE characters, since a value such as a description is the client's text.

What is stored is bounded whoever asks: the path is cut to MAX_PATH characters, with anything
key-shaped redacted and control characters escaped, and a team id or key handle is kept only
when it is a valid one. A request without valid credentials is not an action of anyone's: it
is counted (`maas_admin_refused_requests_total`, at GET /metrics of the function's process) and
only sampled into the log, SAMPLE_BURST entries and then one every SAMPLE_EVERY_S seconds per
process, so no anonymous client can grow the store by more than that, however fast it asks.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from shared import identifiers
from shared.auth import authenticate
from shared.context import Context
from shared.errors import MaasError
from shared.logsafety import clean
from shared.signin import ADMIN_KEY_IDENTITY
from shared.store.base import AuditChanges, AuditEntry, AuditValue

log = logging.getLogger("maas.audit")

ANONYMOUS = "anonymous"
# A stored path is cut to this many characters (and "..." added): enough for every route's ids.
MAX_PATH = 320
MAX_ACTOR = 160
# Refused anonymous requests sampled into the log: this many at once, then one per interval.
SAMPLE_BURST = 10
SAMPLE_EVERY_S = 60.0
# An update's recorded changes: at most this many fields, each value cut to this many characters
# (and "..." added), so one entry stays a few KiB (an audit ConfigMap in a cluster).
MAX_CHANGED_FIELDS = 20
MAX_CHANGE_VALUE = 200
MAX_FIELD_NAME = 64
# Fields never recorded, whatever model they come from: the key shown once by KeyCreated, and
# the key a legacy delete is given.
NEVER_RECORDED = frozenset({"api_key", "key"})
_INT64 = 2**63

_TEAM_ID = re.compile(identifiers.DNS_LABEL)
_SECRET_NAME = re.compile(identifiers.SECRET_NAME)


@dataclass(frozen=True)
class Action:
    """What the adapter knows about one handled request."""

    action: str
    method: str
    path: str
    outcome: int
    team_id: str | None = None
    secret_name: str | None = None
    # Field -> (before, after) for an update (`changed`); bounded when recorded.
    changes: Mapping[str, tuple[object, object]] | None = None


def _fields(state: BaseModel | Mapping[str, object]) -> Mapping[str, object]:
    # JSON mode: timestamps as the API shows them, so an entry reads like the answers it compares.
    return state.model_dump(mode="json") if isinstance(state, BaseModel) else state


def changed(before: BaseModel | Mapping[str, object], after: BaseModel | Mapping[str, object],
            only: Collection[str] | None = None) -> dict[str, tuple[object, object]]:
    """The fields both states have whose values differ, as (before, after), in `after`'s order;
    `only` narrows them to the fields an update named. Never a NEVER_RECORDED field."""
    old, new = _fields(before), _fields(after)
    return {
        name: (old[name], value)
        for name, value in new.items()
        if name in old and old[name] != value and name not in NEVER_RECORDED and (only is None or name in only)
    }


def actor_of(ctx: Context, authorization: str | None) -> str:
    """Who made the request: "admin-key", the handle of the API key used, or "anonymous"."""
    try:
        principal = authenticate(ctx.settings, ctx.store, authorization, ctx.clock())
    except MaasError:
        return ANONYMOUS
    if principal.admin or principal.key is None:
        return ADMIN_KEY_IDENTITY.actor
    return principal.key.secret_name


class RefusalCounter:
    """Requests refused without an entry of their own, by function target and status."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def count(self, action: str, status: int) -> None:
        with self._lock:
            self._counts[(action, status)] = self._counts.get((action, status), 0) + 1

    def exposition(self) -> str:
        """Prometheus' text format; the labels are our target names and status codes only."""
        with self._lock:
            counts = sorted(self._counts.items())
        lines = [
            "# HELP maas_admin_refused_requests_total Admin API requests refused without valid "
            "credentials (the audit log holds only a sample) or for a path this function does not serve.",
            "# TYPE maas_admin_refused_requests_total counter",
        ]
        lines += [f'maas_admin_refused_requests_total{{action="{action}",status="{status}"}} {n}'
                  for (action, status), n in counts]
        return "\n".join(lines) + "\n"


REFUSED = RefusalCounter()


class _Sampler:
    """A token bucket: SAMPLE_BURST entries, then one more every SAMPLE_EVERY_S."""

    def __init__(self) -> None:
        self._tokens = float(SAMPLE_BURST)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(SAMPLE_BURST), self._tokens + (now - self._at) / SAMPLE_EVERY_S)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


# One bucket per store: the bound is on what reaches one store from this process.
_samplers: weakref.WeakKeyDictionary[object, _Sampler] = weakref.WeakKeyDictionary()
_samplers_lock = threading.Lock()


def _sampler(store: object) -> _Sampler:
    with _samplers_lock:
        sampler = _samplers.get(store)
        if sampler is None:
            sampler = _samplers[store] = _Sampler()
        return sampler


def reset_sampling() -> None:
    """Forget what was sampled (tests)."""
    with _samplers_lock:
        _samplers.clear()


def record_request(ctx: Context, actor: str, action: Action) -> None:
    """The adapter's one call per handled request: an entry for whoever had valid credentials,
    a count (and sometimes a sampled entry) for everyone else."""
    if actor == ANONYMOUS:
        REFUSED.count(action.action, action.outcome)
        if not _sampler(ctx.store).take():
            return
    record(ctx, actor, action)


def _stored_path(path: str) -> str:
    shown = clean(path[: MAX_PATH * 4])
    return shown if len(shown) <= MAX_PATH else shown[:MAX_PATH] + "..."


def _valid(pattern: re.Pattern[str], value: str | None) -> str | None:
    return value if value is not None and len(value) <= 253 and pattern.match(value) else None


def _cut(text: str, limit: int) -> str:
    # Cleaned before cut, like the path: a redaction must see the whole key to recognise it.
    shown = clean(text[: limit * 4])
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _stored_value(value: object) -> AuditValue:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Beyond int64 only by a handler's mistake (requests are bounded): not worth its digits.
        return value if -_INT64 <= value < _INT64 else "an integer beyond int64"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _cut(value, MAX_CHANGE_VALUE)
    # A list or a nested value: kept as its JSON text, bounded like any other.
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return _cut(text, MAX_CHANGE_VALUE)


def _stored_changes(changes: Mapping[str, tuple[object, object]] | None) -> AuditChanges | None:
    if not changes:
        return None
    stored: dict[str, tuple[AuditValue, AuditValue]] = {}
    for name, pair in changes.items():
        if len(stored) >= MAX_CHANGED_FIELDS:
            break
        # A malformed pair is skipped, not raised: the entry itself must still be written.
        if not isinstance(name, str) or name in NEVER_RECORDED or not (isinstance(pair, tuple) and len(pair) == 2):
            continue
        stored[_cut(name, MAX_FIELD_NAME)] = (_stored_value(pair[0]), _stored_value(pair[1]))
    return stored or None


def record(ctx: Context, actor: str, action: Action) -> None:
    entry = AuditEntry(
        at=ctx.clock(),
        actor=_cut(actor, MAX_ACTOR),  # a provider's subject: any text, any length
        action=action.action,
        method=action.method[:16],
        path=_stored_path(action.path),
        outcome=action.outcome,
        team_id=_valid(_TEAM_ID, action.team_id),
        secret_name=_valid(_SECRET_NAME, action.secret_name),
        changes=_stored_changes(action.changes),
    )
    try:
        ctx.store.record_audit(entry=entry)
    except Exception:  # noqa: BLE001 - the action is done; losing its record must not undo it
        log.exception("could not record audit entry for %s %s (%s)", entry.method, entry.path, entry.outcome)
