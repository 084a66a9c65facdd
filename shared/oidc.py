"""Signing in to the admin API with an OpenID Connect token (`Authorization: Bearer <JWT>`) from
any provider: Keycloak, Dex, Entra ID, Google, Okta, ...

`OidcVerifier.verify` checks a token against the provider's published keys and turns it into an
`Identity`. The provider is found by discovery (`<issuer>/.well-known/openid-configuration`) on
the first token, never at import or construction, so the admin API starts while the provider is
down. Its keys (the JWKS) are cached: a token naming a key the cache lacks fetches them again,
at most once per `min_refresh_interval_s`, so a provider's key rotation is picked up while a
flood of made-up key ids cannot make us hammer the provider; and they are fetched again once
they are older than `jwks_max_age_s`, so retired keys stop being trusted.

Signatures are PyJWT's (and so `cryptography`'s), with asymmetric algorithms only: `none` and
HS* are refused before any key is looked at, because with HS* the published public key would
serve as the HMAC secret and anyone could sign.

Every refusal is `Unauthorized` with a one-line reason that never contains the token; a provider
that cannot be reached, or is not the one configured, is `BackendUnavailable` naming the issuer.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK

from shared.errors import BackendUnavailable, Unauthorized
from shared.identity import Identity

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# The key type each algorithm family needs: a JWK of another type is never tried with it.
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# A real ID or access token is a few KiB; anything far larger is refused before parsing.
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments whose first is a JSON object with `alg`: tells a JWT from an
    admin key or an API key without the network (nothing is verified)."""
    return _header(token) is not None


def _b64url_json(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None


def names_issuer(token: str, issuer: str) -> bool:
    """Whether a JWT's `iss`, unverified, is `issuer`: which verifier is to judge it, no more."""
    claims = _b64url_json(token.split(".")[1]) if looks_like_jwt(token) else None
    return isinstance(claims, dict) and claims.get("iss") == issuer


def _header(token: str) -> dict[str, Any] | None:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    header = _b64url_json(parts[0])
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return header


def issuer_problem(issuer: str) -> str | None:
    """Why `issuer` cannot be an OpenID issuer, or None. Plain http only on a loopback address,
    because keys fetched over it could be swapped by anyone on the path."""
    try:
        parts = urlsplit(issuer)
        host = parts.hostname or ""
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL"
    if parts.query or parts.fragment:
        return "must have no query or fragment"
    if parts.scheme == "http" and not _loopback(host):
        return "must be https:// (plain http only on a loopback address)"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


@dataclass(frozen=True)
class _KeySet:
    """One JWKS as fetched; replaced whole on a refresh, so readers need no lock."""

    by_kid: Mapping[str, Mapping[str, Any]]
    without_kid: tuple[Mapping[str, Any], ...]
    fetched_at: float
    parsed: dict[tuple[str, str], PyJWK] = field(default_factory=dict)

    def find(self, kid: str | None) -> Mapping[str, Any] | None:
        if kid is not None:
            return self.by_kid.get(kid)
        # A token may omit `kid` only when there is one key to choose (OpenID Connect Core 10.1).
        every = [*self.by_kid.values(), *self.without_kid]
        return every[0] if len(every) == 1 else None


def _signing_keys(document: Any) -> tuple[dict[str, Mapping[str, Any]], tuple[Mapping[str, Any], ...]] | None:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return None
    by_kid: dict[str, Mapping[str, Any]] = {}
    without_kid: list[Mapping[str, Any]] = []
    for jwk in document["keys"]:
        # Symmetric ("oct") or encryption keys are never signature keys for us; skipped, not fatal.
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if isinstance(kid, str):
            by_kid[kid] = jwk
        else:
            without_kid.append(jwk)
    return by_kid, tuple(without_kid)


class _ProviderKeys:
    """Discovery and the JWKS cache; thread-safe, one fetch at a time."""

    def __init__(
        self,
        issuer: str,
        *,
        context: ssl.SSLContext | None,
        timeout_s: float,
        clock: Callable[[], float],
        max_age_s: float,
        min_refresh_interval_s: float,
        retry_after_failure_s: float,
    ) -> None:
        self._issuer = issuer
        self._context = context
        self._timeout_s = timeout_s
        self._clock = clock
        self._max_age_s = max_age_s
        self._min_refresh_interval_s = min_refresh_interval_s
        self._retry_after_failure_s = retry_after_failure_s
        self._lock = threading.Lock()
        self._jwks_uri: str | None = None
        self._keys: _KeySet | None = None
        self._last_unknown_kid_refresh: float | None = None
        self._failure: tuple[float, str] | None = None

    def key_for(self, kid: str | None) -> tuple[_KeySet, Mapping[str, Any]]:
        keys = self._keys
        if keys is not None and not self._stale(keys):
            found = keys.find(kid)
            if found is not None:
                return keys, found
        with self._lock:
            keys = self._usable_keys()
            found = keys.find(kid)
            if found is None and kid is not None and self._may_refresh_for_unknown_kid():
                self._last_unknown_kid_refresh = self._clock()
                keys = self._refresh()
                found = keys.find(kid)
        if found is None:
            if kid is None:
                raise Unauthorized("OIDC token refused: it names no key (kid) and the issuer publishes several")
            raise Unauthorized("OIDC token refused: unknown key (its kid is not one the issuer publishes)")
        return keys, found

    def _stale(self, keys: _KeySet) -> bool:
        return self._clock() - keys.fetched_at >= self._max_age_s

    def _may_refresh_for_unknown_kid(self) -> bool:
        last = self._last_unknown_kid_refresh
        return last is None or self._clock() - last >= self._min_refresh_interval_s

    def _usable_keys(self) -> _KeySet:
        keys = self._keys
        if keys is not None and not self._stale(keys):
            return keys
        if keys is None:
            return self._refresh()
        try:
            return self._refresh()
        except BackendUnavailable as exc:
            # Old keys beat no sign-in while the provider is briefly away; retried after a pause.
            age = self._clock() - keys.fetched_at
            log.warning("%s; still trusting the keys fetched %.0f s ago", exc.message, age)
            return keys

    def _refresh(self) -> _KeySet:
        now = self._clock()
        if self._failure is not None and now - self._failure[0] < self._retry_after_failure_s:
            # Fail fast: a provider that just failed would otherwise hold an admin thread per request.
            raise BackendUnavailable(self._failure[1])
        try:
            uri = self._jwks_uri or self._discover()
            document = self._fetch_json(uri, "its JWKS")
            found = _signing_keys(document)
            if found is None:
                raise self._unavailable(f"its JWKS at {uri} is not a JSON key set")
        except BackendUnavailable as exc:
            self._failure = (self._clock(), exc.message)
            raise
        self._failure = None
        self._jwks_uri = uri
        self._keys = _KeySet(by_kid=found[0], without_kid=found[1], fetched_at=self._clock())
        log.info("OIDC provider %s: fetched %d signing key(s)", self._issuer, len(found[0]) + len(found[1]))
        return self._keys

    def _discover(self) -> str:
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._fetch_json(url, "its discovery document")
        if not isinstance(document, dict):
            raise self._unavailable("its discovery document is not a JSON object")
        if document.get("issuer") != self._issuer:
            # The spec's rule (OpenID Connect Discovery 4.3): a provider naming another issuer is not ours.
            named = _one_line(document.get("issuer"))
            raise self._unavailable(f"its discovery document names issuer {named!r}, not the configured one")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or issuer_problem(uri) is not None:
            raise self._unavailable("its discovery document has no usable jwks_uri")
        return uri

    def _fetch_json(self, url: str, what: str) -> Any:
        where = f"{what} at {url}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s, context=self._context) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise self._unavailable(f"{where} answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise self._unavailable(f"cannot be reached ({where}): {_one_line(exc.reason)}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = _one_line(exc) or type(exc).__name__
            raise self._unavailable(f"cannot be reached ({where}): {reason}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise self._unavailable(f"{where} is larger than 1 MiB")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise self._unavailable(f"{where} is not JSON") from None

    def _unavailable(self, detail: str) -> BackendUnavailable:
        return BackendUnavailable(f"OIDC provider {self._issuer}: {detail}")


# PyJWT's own exceptions, most specific first, as the one-line reasons a caller may show.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "unsupported algorithm"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidKeyError, "the issuer's key is unusable (of another type, or shorter than 2048 bits)"),
    (jwt.PyJWKError, "the issuer's key is unusable (of another type, or shorter than 2048 bits)"),
    (jwt.exceptions.InvalidSubjectError, "malformed token (sub is not a string)"),
    (jwt.exceptions.InvalidJTIError, "malformed token (jti is not a string)"),
    (jwt.DecodeError, "malformed token"),
)


def _refusal(exc: jwt.PyJWTError) -> Unauthorized:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "aud":
            return Unauthorized("OIDC token refused: wrong audience (the token has no aud claim)")
        return Unauthorized(f"OIDC token refused: it has no {exc.claim} claim")
    reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "invalid token")
    # Never PyJWT's message: some quote parts of the token.
    return Unauthorized(f"OIDC token refused: {reason}")


class OidcVerifier:
    """Checks OpenID Connect tokens from one issuer for one audience; share one per process."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        user_claim: str = "sub",
        email_claim: str = "email",
        groups_claim: str = "groups",
        ca_file: str | Path | None = None,
        leeway_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
        jwks_max_age_s: float = 3600.0,
        min_refresh_interval_s: float = 30.0,
        retry_after_failure_s: float = 5.0,
    ) -> None:
        problem = issuer_problem(issuer)
        if problem is not None:
            raise ValueError(f"OIDC issuer {issuer!r} {problem}")
        if not audience:
            raise ValueError("OIDC audience must be set (the client id the provider puts in its tokens' aud)")
        if not user_claim:
            raise ValueError("OIDC user claim must be a claim name")
        context = None
        if ca_file is not None:
            try:
                context = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"OIDC CA bundle {ca_file} cannot be used: {_one_line(exc)}") from None
        self.issuer = issuer
        self.audience = audience
        self.user_claim = user_claim
        self.email_claim = email_claim
        self.groups_claim = groups_claim
        self.leeway_s = leeway_s
        self._clock = clock
        self._keys = _ProviderKeys(
            issuer,
            context=context,
            timeout_s=timeout_s,
            clock=clock,
            max_age_s=jwks_max_age_s,
            min_refresh_interval_s=min_refresh_interval_s,
            retry_after_failure_s=retry_after_failure_s,
        )

    def verify(self, token: str) -> Identity:
        """The identity the token proves. Unauthorized says why not; BackendUnavailable when the
        provider cannot be asked for its keys."""
        header = _header(token)
        if header is None:
            raise Unauthorized("OIDC token refused: malformed token")
        alg = header["alg"]
        if alg not in ALGORITHMS:
            shown = f" {alg!r}" if alg.isalnum() and len(alg) <= 10 else ""
            raise Unauthorized(f"OIDC token refused: unsupported algorithm{shown} (asymmetric signatures only)")
        unverified = _b64url_json(token.split(".")[1])
        if not isinstance(unverified, dict):
            raise Unauthorized("OIDC token refused: malformed token")
        # Before any network, so that another issuer's token says "wrong issuer", not "unknown key";
        # the signature check below repeats it on the verified claims.
        if unverified.get("iss") != self.issuer:
            raise Unauthorized("OIDC token refused: wrong issuer")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("OIDC token refused: malformed token (kid is not a string)")
        keys, jwk = self._keys.key_for(kid)
        claims = self._checked_claims(token, alg, self._pyjwk(keys, kid, jwk, alg))
        self._check_times(claims)
        return self._identity(claims)

    def _pyjwk(self, keys: _KeySet, kid: str | None, jwk: Mapping[str, Any], alg: str) -> PyJWK:
        if _KEY_TYPE[alg[:2]] != jwk.get("kty") or jwk.get("alg", alg) != alg:
            raise Unauthorized("OIDC token refused: its algorithm differs from its key's")
        cache_key = (kid or "", alg)
        parsed = keys.parsed.get(cache_key)
        if parsed is None:
            try:
                parsed = PyJWK(dict(jwk), algorithm=alg)
            except jwt.PyJWTError as exc:
                raise _refusal(exc) from None
            keys.parsed[cache_key] = parsed
        return parsed

    def _checked_claims(self, token: str, alg: str, key: PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # Times are checked against our own clock (injectable), not PyJWT's.
                options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None and name != "exp":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Unauthorized(f"OIDC token refused: malformed token ({name} is not a number)")
            times[name] = float(value)
        if times["exp"] <= now - self.leeway_s:
            raise Unauthorized("OIDC token refused: expired")
        if times.get("nbf", now) > now + self.leeway_s:
            raise Unauthorized("OIDC token refused: not yet valid (nbf is in the future)")
        if times.get("iat", now) > now + self.leeway_s:
            raise Unauthorized("OIDC token refused: not yet valid (iat is in the future)")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        subject = claims.get(self.user_claim)
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthorized(
                f"OIDC token refused: claim {self.user_claim!r} (the user id) is missing, empty or not a string"
            )
        email = claims.get(self.email_claim)
        if email is not None and not isinstance(email, str):
            raise Unauthorized(f"OIDC token refused: claim {self.email_claim!r} is not a string")
        if self.email_claim == "email" and claims.get("email_verified") is False:
            # An address the provider has not verified is anyone's to type: it must not name them.
            email = None
        groups = claims.get(self.groups_claim, [])
        if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
            raise Unauthorized(f"OIDC token refused: claim {self.groups_claim!r} is not a list of strings")
        return Identity(subject=subject, method="oidc", email=email or None, groups=tuple(groups),
                        issuer=self.issuer)


def verifier_from_settings(settings: Settings) -> OidcVerifier | None:
    """The deployment's verifier, or None when MAAS_OIDC_ISSUER is unset (OIDC sign-in off)."""
    if settings.oidc_issuer is None:
        return None
    if settings.oidc_audience is None:  # Settings refuses this; kept for Settings built by hand.
        raise ValueError("MAAS_OIDC_AUDIENCE is required when MAAS_OIDC_ISSUER is set")
    return OidcVerifier(
        settings.oidc_issuer,
        settings.oidc_audience,
        user_claim=settings.oidc_user_claim,
        email_claim=settings.oidc_email_claim,
        groups_claim=settings.oidc_groups_claim,
        ca_file=settings.oidc_ca_file,
    )
