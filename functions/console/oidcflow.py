"""The console's side of OpenID Connect sign-in: the authorization code flow with PKCE (S256).

The console is a public client, registered at the provider with the client id the API's tokens
name (MAAS_OIDC_AUDIENCE) and the redirect URI `<console>/console/oidc/callback`; it holds no
client secret. The provider's endpoints come from its discovery document, which must name the
configured issuer (OpenID Connect Discovery 4.3). The ID token the code is exchanged for is then
checked as the API checks a token (shared.signin, shared.oidc: signature, issuer, audience,
times), and its nonce against the one this browser's session sent; the tokens themselves are
dropped once the identity is known. Signing out sends the browser on to the provider's
end_session_endpoint when its discovery document has one (RP-initiated logout).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from shared.errors import BackendUnavailable, Unauthorized
from shared.oidc import issuer_problem
from shared.settings import Settings

from functions.console.sessions import PendingSignIn

_DISCOVERY_MAX_AGE_S = 3600.0
_MAX_BYTES = 1024 * 1024
_TIMEOUT_S = 10.0


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    # RP-initiated logout, if the provider offers it; sign-out sends the browser there.
    end_session: str | None = None


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_request(redirect_uri: str) -> PendingSignIn:
    # 43-128 characters of the unreserved set (RFC 7636 4.1): token_urlsafe(48) gives 64.
    return PendingSignIn(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                         verifier=secrets.token_urlsafe(48), redirect_uri=redirect_uri)


class OidcClient:
    """One per process: the discovery document is cached for an hour."""

    def __init__(self, settings: Settings) -> None:
        if settings.oidc_issuer is None or settings.oidc_audience is None:
            raise ValueError("OIDC sign-in needs MAAS_OIDC_ISSUER and MAAS_OIDC_AUDIENCE")
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_audience
        self._context = (ssl.create_default_context(cafile=str(settings.oidc_ca_file))
                         if settings.oidc_ca_file is not None else None)
        self._lock = threading.Lock()
        self._endpoints: tuple[float, Endpoints] | None = None

    def endpoints(self) -> Endpoints:
        with self._lock:
            cached = self._endpoints
            if cached is not None and time.monotonic() - cached[0] < _DISCOVERY_MAX_AGE_S:
                return cached[1]
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = self._json(urllib.request.Request(url, headers={"Accept": "application/json"}),
                                  "its discovery document")
            if not isinstance(document, dict) or document.get("issuer") != self.issuer:
                raise self._unavailable("its discovery document does not name the configured issuer")
            found = {}
            for name in ("authorization_endpoint", "token_endpoint"):
                value = document.get(name)
                if not isinstance(value, str) or issuer_problem(value) is not None:
                    raise self._unavailable(f"its discovery document has no usable {name}")
                found[name] = value
            # Optional: a provider without one (or with one that is no https URL of a host) is
            # signed out of here only.
            end_session = document.get("end_session_endpoint")
            if not isinstance(end_session, str) or issuer_problem(end_session) is not None:
                end_session = None
            endpoints = Endpoints(found["authorization_endpoint"], found["token_endpoint"], end_session)
            self._endpoints = (time.monotonic(), endpoints)
            return endpoints

    def known_end_session(self) -> str | None:
        """The end-session endpoint discovered already, if any, without asking the provider:
        for the pages' Content-Security-Policy (a sign-out form may be sent on there)."""
        with self._lock:
            return self._endpoints[1].end_session if self._endpoints is not None else None

    def authorization_url(self, pending: PendingSignIn) -> str:
        endpoint = self.endpoints().authorization
        query = urllib.parse.urlencode({
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": pending.redirect_uri,
            "scope": "openid email profile",
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.verifier),
            "code_challenge_method": "S256",
        })
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange(self, code: str, pending: PendingSignIn) -> str:
        """The ID token the provider gives for `code` (not yet verified)."""
        body = urllib.parse.urlencode({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.verifier,
        }).encode()
        request = urllib.request.Request(self.endpoints().token, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        answer = self._json(request, "its token endpoint")
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise Unauthorized("the identity provider's answer has no ID token (is `openid` among the client's scopes?)")
        return token

    def _json(self, request: urllib.request.Request, what: str) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=self._context) as response:
                raw = response.read(_MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            # The token endpoint says why it refused (RFC 6749 5.2): a code used twice, a wrong verifier.
            detail = ""
            try:
                refused = json.loads(exc.read(_MAX_BYTES))
                if isinstance(refused, dict):
                    detail = _one_line(refused.get("error_description") or refused.get("error") or "")
            except (ValueError, OSError):
                pass
            if 400 <= exc.code < 500:
                raise Unauthorized(f"the identity provider refused the sign-in: {detail or f'HTTP {exc.code}'}") from None
            raise self._unavailable(f"{what} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise self._unavailable(f"cannot be reached ({what}): {_one_line(reason)}") from None
        if len(raw) > _MAX_BYTES:
            raise self._unavailable(f"{what} is larger than 1 MiB")
        try:
            return json.loads(raw)
        except ValueError:
            raise self._unavailable(f"{what} is not JSON") from None

    def _unavailable(self, detail: str) -> BackendUnavailable:
        return BackendUnavailable(f"OIDC provider {self.issuer}: {detail}")


def token_nonce(token: str) -> str | None:
    """The `nonce` claim of a token whose signature has been checked already."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    nonce = claims.get("nonce") if isinstance(claims, dict) else None
    return nonce if isinstance(nonce, str) else None
