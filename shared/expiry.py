"""When a key stops working: its expiry at creation, its rotation grace, its status as seen now.

A key's stored status only changes by an explicit action (revoke, rotate without grace) or by
the cleanup sweep. Between a key's `expires_at` and the next sweep the stored status still says
"active", so every reader asks `effective_status` instead: listings are right the moment a key
expires, and `shared.auth.usable` stays the one rule for admitting a key.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.auth import usable
from shared.durations import window_ms
from shared.errors import InvalidRequest
from shared.store.base import ApiKey, KeyStatus

# A grace period longer than this is not a rotation but two live keys; revoke or delete instead.
MAX_GRACE = timedelta(days=30)


def duration(text: str) -> timedelta:
    """A duration already normalized by `shared.durations.normalize_window` (or "0")."""
    return timedelta(milliseconds=window_ms(text))


def effective_status(key: ApiKey, now: datetime) -> KeyStatus:
    """The status a reader should see at `now`."""
    if usable(key, now):
        return "active"
    if key.status != "active":
        return key.status
    # Active but past its expires_at: a rotated key's grace ended (revoked), or it expired.
    return "revoked" if key.replaced_by else "expired"


def expiry_for(now: datetime, *, expires_in: str | None, expires_at: datetime | None,
               field_prefix: str = "") -> datetime | None:
    """The `expires_at` of a new key from the request's `expires_in` or `expires_at` (not both)."""
    if expires_in is not None and expires_at is not None:
        raise _invalid(f"{field_prefix}expires_at", "give expires_in or expires_at, not both")
    if expires_in is not None:
        return now + duration(expires_in)
    if expires_at is not None and expires_at <= now:
        raise _invalid(f"{field_prefix}expires_at", "must be in the future")
    return expires_at


def within_lifetime(now: datetime, expires_at: datetime | None, max_lifetime: str | None,
                    field: str = "expires_in") -> datetime | None:
    """A new key's expiry under its team's `max_key_lifetime`: none given means the longest
    allowed; a later one is a 422 naming the cap."""
    if max_lifetime is None:
        return expires_at
    latest = now + duration(max_lifetime)
    if expires_at is None:
        return latest
    if expires_at > latest:
        raise _invalid(field, f"the team's max_key_lifetime is {max_lifetime}: a key here may live at most that long")
    return expires_at


def grace_end(now: datetime, grace_period: str, current_expiry: datetime | None) -> datetime:
    """When a rotated key stops working: after the grace, but never later than it would have."""
    end = now + duration(grace_period)
    return end if current_expiry is None else min(end, current_expiry)


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid request: {field}: {message}", details=[{"field": field, "message": message}])
