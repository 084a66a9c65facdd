"""API key material: generation, hashing, the public handle, constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _secrets

KEY_PREFIX = "maas_"
ADMIN_KEY_PREFIX = "maas_admin_"
# 32 random bytes = 256 bits, url-safe so it survives shells, headers and grep.
_KEY_BYTES = 32
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def generate_api_key() -> str:
    return KEY_PREFIX + _secrets.token_urlsafe(_KEY_BYTES)


def looks_like_api_key(token: str) -> bool:
    """Shaped as `generate_api_key` makes them (an admin key is not), for error messages only."""
    return token.startswith(KEY_PREFIX) and not token.startswith(ADMIN_KEY_PREFIX)


def key_sha256(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def secret_name_for(user_id: str, team_id: str) -> str:
    """`apikey-<user>-<team>-<8 hex>`: a valid Kubernetes Secret name for any valid user id."""
    user = _NOT_DNS.sub("-", user_id.lower()).strip("-") or "user"
    return f"apikey-{user}-{team_id}-{_secrets.token_hex(4)}"


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def generate_admin_key() -> str:
    return ADMIN_KEY_PREFIX + _secrets.token_urlsafe(_KEY_BYTES)
