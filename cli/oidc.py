"""Signing in with an OpenID Connect provider, two ways:

- the device authorization grant (RFC 8628), when the provider offers it: maas shows a URL and a
  short code, the person signs in there on any device (a laptop's browser for a shell on a
  server), and maas polls the token endpoint until they have; `gh auth login` and `az login
  --use-device-code` work this way;
- the authorization code flow with PKCE (RFC 7636) and a redirect to a loopback port on
  127.0.0.1 (RFC 8252, "OAuth for native apps"), the way `kubectl oidc-login` does it, for a
  browser on this machine.

The provider is found from its issuer's discovery document. The token the admin API gets is the
access token (the API checks its `aud`, README "People"), the ID token when the provider's access
tokens are not JWTs. A refresh token, when given, renews it without a browser (`refresh`).

The provider's TLS certificate is checked against the system's CAs plus the one given with
--ca-file (MAAS_CA_FILE), so that a provider signed by a private CA works, and so does a public
one (Google, Entra) beside an admin API with a private CA.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from cli.config import Credential
from cli.exitcodes import CliError, ExitCode

if TYPE_CHECKING:
    # Imported by the calls that need them, as in cli/client.py: a Tab completion needs neither.
    from http.server import BaseHTTPRequestHandler

    import httpx

_PAGE = (b"<!doctype html><meta charset=utf-8><title>maas</title>"
         b"<p>%s</p><p>You can close this tab and go back to the terminal.</p>")


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
Flow = Literal["device", "browser"]


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str | None = None
    ca: str | None = None
    """A CA certificate (PEM) trusted for the provider besides the system's."""

    def verify(self) -> ssl.SSLContext:
        return provider_trust(self.ca)

    def flow(self, asked: Flow | None) -> Flow:
        """The flow asked for, else the device grant when offered (it works wherever the person
        has a browser, this machine or not), else the browser's."""
        if asked == "device" and self.device_authorization_endpoint is None:
            raise CliError(f"the identity provider at {self.issuer} offers no device sign-in "
                           "(its discovery document names no device_authorization_endpoint)",
                           ExitCode.USAGE, hint="sign in with --browser instead")
        if asked is not None:
            return asked
        return "device" if self.device_authorization_endpoint else "browser"


def provider_trust(ca: str | Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot use {ca} as a CA certificate: {exc}", ExitCode.USAGE,
                           hint="give a PEM file with --ca-file") from None
    return context


def _unreachable(what: str, exc: httpx.TransportError) -> CliError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return CliError(f"cannot verify the TLS certificate of {what} ({cause.verify_message})",
                            ExitCode.UNAVAILABLE,
                            hint="pass --ca-file FILE (or set MAAS_CA_FILE) with the CA that signed it")
        cause = cause.__cause__ or cause.__context__
    return CliError(f"cannot reach {what} ({exc})", ExitCode.UNAVAILABLE, hint="check --issuer")


def discover(issuer: str, *, ca: str | None = None) -> Provider:
    issuer = issuer.rstrip("/")
    where = f"{issuer}/.well-known/openid-configuration"
    import httpx

    try:
        answer = httpx.get(where, timeout=10.0, verify=provider_trust(ca))
    except httpx.TransportError as exc:
        raise _unreachable(f"the identity provider at {where}", exc) from None
    if answer.status_code != 200:
        raise CliError(f"{where} answered {answer.status_code}", ExitCode.UNAVAILABLE,
                       hint="check --issuer: it is the URL your provider names as issuer")
    try:
        document = answer.json()
        device = document.get("device_authorization_endpoint")
        return Provider(issuer=document.get("issuer", issuer),
                        authorization_endpoint=document["authorization_endpoint"],
                        token_endpoint=document["token_endpoint"],
                        device_authorization_endpoint=device if isinstance(device, str) and device else None,
                        ca=ca)
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
        from http.server import BaseHTTPRequestHandler

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
    from http.server import HTTPServer

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
    return _token_request(provider, {
        "grant_type": "authorization_code", "code": query["code"], "redirect_uri": redirect_uri,
        "client_id": client_id, "code_verifier": verifier,
    })


def device_login(provider: Provider, client_id: str, *, scope: str, timeout: float, open_browser: bool,
                 show: Callable[[str, str, str | None], None],
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The provider's token answer after the person entered the code `show` is given (the URL,
    the code, and the URL with the code in it if the provider gives one) and signed in.

    Polls the token endpoint every `interval` seconds the provider asked for, 5 seconds more after
    each `slow_down` (RFC 8628 3.5: a provider may refuse a client that polls faster).
    """
    assert provider.device_authorization_endpoint is not None
    status, started = _post_form(provider, provider.device_authorization_endpoint,
                                 {"client_id": client_id, "scope": scope})
    if status != 200 or not isinstance(started.get("device_code"), str) or not isinstance(started.get("user_code"), str):
        raise CliError(f"the identity provider would not start a device sign-in ({status}: {_reason(started)})",
                       ExitCode.NOT_SIGNED_IN, hint="check --client-id, or sign in with --browser")
    verification = started.get("verification_uri") or started.get("verification_url")  # Google's older name
    if not isinstance(verification, str):
        raise CliError("the identity provider's device sign-in names no page to open", ExitCode.NOT_SIGNED_IN,
                       hint="sign in with --browser instead")
    complete = started.get("verification_uri_complete")
    complete = complete if isinstance(complete, str) else None
    interval = _seconds(started.get("interval"), default=5.0)
    expires_in = _seconds(started.get("expires_in"), default=timeout)
    waiting = min(timeout, expires_in)
    show(verification, started["user_code"], complete)
    if open_browser:
        webbrowser.open(complete or verification)
    deadline = time.monotonic() + waiting
    form = {"grant_type": DEVICE_GRANT, "device_code": started["device_code"], "client_id": client_id}
    while True:
        if time.monotonic() + interval > deadline:
            raise CliError(f"nobody signed in within {waiting:.0f}s: the code has expired", ExitCode.NOT_SIGNED_IN,
                           hint="run maas login again and enter the new code")
        sleep(interval)
        status, answer = _post_form(provider, provider.token_endpoint, form)
        if status == 200:
            return answer
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise CliError("the sign-in was refused at the identity provider", ExitCode.NOT_SIGNED_IN,
                           hint="run maas login again and approve it")
        if error == "expired_token":
            raise CliError("the code expired before anyone signed in", ExitCode.NOT_SIGNED_IN,
                           hint="run maas login again and enter the new code")
        raise CliError(f"the identity provider gave no token ({status}: {_reason(answer)})", ExitCode.NOT_SIGNED_IN,
                       hint="run maas login again")


def _seconds(value: object, *, default: float) -> float:
    # bool is an int to Python, and no interval a provider means.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


def _reason(body: dict[str, Any]) -> str:
    return str(body.get("error_description") or body.get("error") or "no reason given")


def _post_form(provider: Provider, endpoint: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The status and JSON object the provider answered (empty when it was not one)."""
    import httpx

    try:
        answer = httpx.post(endpoint, data=form, timeout=30.0, headers={"Accept": "application/json"},
                            verify=provider.verify())
    except httpx.TransportError as exc:
        raise _unreachable("the identity provider", exc) from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    return answer.status_code, body if isinstance(body, dict) else {}


def _token_request(provider: Provider, form: dict[str, str]) -> dict[str, Any]:
    status, body = _post_form(provider, provider.token_endpoint, form)
    if status != 200:
        raise CliError(f"the identity provider gave no token ({status}: {_reason(body)})",
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
        client_id=client_id, issuer=provider.issuer, issuer_ca=provider.ca,
        expires_at=time.time() + float(expires_in) if isinstance(expires_in, (int, float)) else None,
    )


def refresh(credential: Credential) -> None:
    """Renew an expired OIDC sign-in (device or browser) in place with its refresh token."""
    again = f"sign in again: maas login --url {credential.url} --issuer {credential.issuer} --client-id {credential.client_id}"
    if not credential.refresh_token or not credential.token_endpoint or not credential.client_id:
        raise CliError("your sign-in has expired", ExitCode.NOT_SIGNED_IN, hint=again)
    provider = Provider(credential.issuer or "", "", credential.token_endpoint, ca=credential.issuer_ca)
    try:
        answer = _token_request(provider, {
            "grant_type": "refresh_token", "refresh_token": credential.refresh_token,
            "client_id": credential.client_id,
        })
    except CliError as error:
        raise CliError(f"your sign-in has expired and could not be renewed ({error.message})",
                       ExitCode.NOT_SIGNED_IN, hint=again) from None
    renewed = credential_from(answer, url=credential.url, provider=provider, client_id=credential.client_id,
                              ca=credential.ca, insecure=credential.insecure)
    credential.secret = renewed.secret
    credential.expires_at = renewed.expires_at
    credential.refresh_token = renewed.refresh_token or credential.refresh_token
