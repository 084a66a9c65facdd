"""Credentials: the admin key (fail closed, constant-time) and API keys presented to the API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.errors import Unauthorized
from shared.keymaterial import key_sha256, same_secret
from shared.settings import Settings
from shared.store import ApiKey, Store

ADMIN_SCHEMES = ("admin", "bearer")
KEY_SCHEMES = ("apikey", "bearer")


def credential(header: str | None, schemes: tuple[str, ...], what: str = "key",
               elsewhere: Mapping[str, str] | None = None) -> str:
    """The token of an `Authorization: <scheme> <token>` header, for one of `schemes`.
    `elsewhere`: what a scheme meant for another server is told (the admin key on the gateway,
    an API key on the admin API), by scheme; the token that follows is never read."""
    how = "use " + " or ".join(
        f"'Authorization: {'Bearer' if s == 'bearer' else s.upper()} <{what}>'" for s in schemes
    )
    if not header:
        raise Unauthorized(f"missing Authorization header: {how}")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in schemes:
        if elsewhere and scheme.lower() in elsewhere:
            raise Unauthorized(elsewhere[scheme.lower()])
        raise Unauthorized(f"unsupported authorization scheme: {how}")
    if not token:
        raise Unauthorized(f"missing {what}: {how}")
    return token


def is_admin(settings: Settings, token: str) -> bool:
    if settings.admin_key is None:
        return False
    return same_secret(token, settings.admin_key.get_secret_value())


def require_admin(settings: Settings, header: str | None) -> None:
    if settings.admin_key is None:
        raise Unauthorized("admin access is disabled: no admin key is configured (set ADMIN_KEY)")
    if not is_admin(settings, credential(header, ADMIN_SCHEMES, "admin key")):
        raise Unauthorized("invalid admin credentials")


def usable(key: ApiKey, now: datetime) -> bool:
    return key.status == "active" and (key.expires_at is None or key.expires_at > now)


def may_use_model(key: ApiKey, model: str) -> bool:
    """A key limited to some models may call only those; no list means every model."""
    return not key.models_allowed or model in key.models_allowed


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, or the holder of one API key."""

    admin: bool
    key: ApiKey | None = None


def authenticate(settings: Settings, store: Store, header: str | None, now: datetime) -> Principal:
    """Accept the admin key (ADMIN/Bearer) or a usable API key (APIKEY/Bearer)."""
    token = credential(header, ("admin", "apikey", "bearer"))
    if is_admin(settings, token):
        return Principal(admin=True)
    key = store.find_key(key_sha256=key_sha256(token))
    if key is None or not usable(key, now):
        raise Unauthorized("invalid, revoked or expired credentials")
    return Principal(admin=False, key=key)
