"""Signing in with an OpenID Connect provider in a browser: the authorization code flow with
PKCE (RFC 7636) and a redirect to a loopback port on 127.0.0.1 (RFC 8252, "OAuth for native
apps"), the way `gh` and `kubectl oidc-login` do it.

The provider is found from its issuer's discovery document. The token the admin API gets is the
access token (the API checks its `aud`, README "People"), the ID token when the provider's access
tokens are not JWTs. A refresh token, when given, renews it without a browser (`refresh`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from cli.config import Credential
from cli.exitcodes import CliError, ExitCode

_PAGE = (b"<!doctype html><meta charset=utf-8><title>maas</title>"
         b"<p>%s</p><p>You can close this tab and go back to the terminal.</p>")


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str


def discover(issuer: str) -> Provider:
    issuer = issuer.rstrip("/")
    where = f"{issuer}/.well-known/openid-configuration"
    try:
        answer = httpx.get(where, timeout=10.0)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the identity provider at {where} ({exc})", ExitCode.UNAVAILABLE,
                       hint="check --issuer") from None
    if answer.status_code != 200:
        raise CliError(f"{where} answered {answer.status_code}", ExitCode.UNAVAILABLE,
                       hint="check --issuer: it is the URL your provider names as issuer")
    try:
        document = answer.json()
        return Provider(issuer=document.get("issuer", issuer),
                        authorization_endpoint=document["authorization_endpoint"],
                        token_endpoint=document["token_endpoint"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CliError(f"{where} is not an OpenID Connect discovery document", ExitCode.UNAVAILABLE,
                       hint="check --issuer") from None


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _Callback:
    """What the browser brought back to the loopback redirect: the first /callback only."""

    def __init__(self) -> None:
        self.query: dict[str, str] | None = None
        self.arrived = threading.Event()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        callback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                if parts.path != "/callback" or callback.arrived.is_set():
                    self.send_error(404)
                    return
                callback.query = {name: values[0] for name, values in parse_qs(parts.query).items()}
                callback.arrived.set()
                ok = "code" in callback.query
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(_PAGE % (b"Signed in." if ok else b"Sign-in failed: see the terminal."))

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                return  # the query carries the code: never logged

        return Handler


def browser_login(provider: Provider, client_id: str, *, scope: str, port: int, timeout: float,
                  open_browser: bool, show: Callable[[str], None]) -> dict[str, Any]:
    """The provider's token answer after the person signed in at the URL `show` is given."""
    callback = _Callback()
    try:
        server = HTTPServer(("127.0.0.1", port), callback.handler())
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{port} for the sign-in redirect ({exc.strerror})",
                       ExitCode.USAGE, hint="pick another --port, or 0 for any") from None
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(32)
    url = provider.authorization_endpoint + ("&" if "?" in provider.authorization_endpoint else "?") + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
    })
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        show(url)
        if open_browser:
            webbrowser.open(url)
        if not callback.arrived.wait(timeout):
            raise CliError(f"nobody signed in within {timeout:.0f}s", ExitCode.NOT_SIGNED_IN,
                           hint="run maas login again and open the URL it prints")
    finally:
        server.shutdown()
        server.server_close()
    query = callback.query or {}
    if "error" in query:
        raise CliError(f"the identity provider refused the sign-in: {query['error']} "
                       f"{query.get('error_description', '')}".strip(), ExitCode.NOT_SIGNED_IN)
    # A redirect without our state was not started by this login (CSRF, RFC 6749 10.12).
    if not hmac.compare_digest(query.get("state", ""), state) or "code" not in query:
        raise CliError("the sign-in redirect did not carry this login's state", ExitCode.NOT_SIGNED_IN,
                       hint="run maas login again")
    return _token_request(provider.token_endpoint, {
        "grant_type": "authorization_code", "code": query["code"], "redirect_uri": redirect_uri,
        "client_id": client_id, "code_verifier": verifier,
    })


def _token_request(endpoint: str, form: dict[str, str]) -> dict[str, Any]:
    try:
        answer = httpx.post(endpoint, data=form, timeout=30.0, headers={"Accept": "application/json"})
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the identity provider's token endpoint ({exc})", ExitCode.UNAVAILABLE) from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200 or not isinstance(body, dict):
        reason = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
        raise CliError(f"the identity provider gave no token ({answer.status_code}: {reason or 'no reason given'})",
                       ExitCode.NOT_SIGNED_IN, hint="run maas login again")
    return body


def _is_jwt(token: object) -> bool:
    return isinstance(token, str) and token.count(".") == 2


def credential_from(answer: dict[str, Any], *, url: str, provider: Provider, client_id: str,
                    ca: str | None, insecure: bool) -> Credential:
    token = answer.get("access_token") if _is_jwt(answer.get("access_token")) else answer.get("id_token")
    if not _is_jwt(token):
        raise CliError("the identity provider's answer holds no JWT to sign in to the admin API with",
                       ExitCode.NOT_SIGNED_IN, hint="the API needs JWTs with its audience; ask your provider's admin")
    assert isinstance(token, str)
    expires_in = answer.get("expires_in")
    return Credential(
        url=url, method="oidc", secret=token, ca=ca, insecure=insecure,
        refresh_token=answer.get("refresh_token"), token_endpoint=provider.token_endpoint,
        client_id=client_id, issuer=provider.issuer,
        expires_at=time.time() + float(expires_in) if isinstance(expires_in, (int, float)) else None,
    )


def refresh(credential: Credential) -> None:
    """Renew an expired browser sign-in in place with its refresh token."""
    again = f"sign in again: maas login --url {credential.url} --issuer {credential.issuer} --client-id {credential.client_id}"
    if not credential.refresh_token or not credential.token_endpoint or not credential.client_id:
        raise CliError("your sign-in has expired", ExitCode.NOT_SIGNED_IN, hint=again)
    try:
        answer = _token_request(credential.token_endpoint, {
            "grant_type": "refresh_token", "refresh_token": credential.refresh_token,
            "client_id": credential.client_id,
        })
    except CliError as error:
        raise CliError(f"your sign-in has expired and could not be renewed ({error.message})",
                       ExitCode.NOT_SIGNED_IN, hint=again) from None
    provider = Provider(credential.issuer or "", "", credential.token_endpoint)
    renewed = credential_from(answer, url=credential.url, provider=provider, client_id=credential.client_id,
                              ca=credential.ca, insecure=credential.insecure)
    credential.secret = renewed.secret
    credential.expires_at = renewed.expires_at
    credential.refresh_token = renewed.refresh_token or credential.refresh_token
