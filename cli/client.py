"""The admin API over HTTP(S): one client, its TLS trust, its errors as exit codes, and paging.

Every failure becomes a CliError with the API's own message (`{"error": ...}`) and an exit code
for its status (cli/exitcodes.py), so no command handles HTTP errors itself.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.config import Credential, CredentialStore, is_loopback, local_certificate
from cli.exitcodes import CliError, ExitCode, for_status

if TYPE_CHECKING:
    # httpx is imported where a request is made: a Tab completion or --help makes none, and
    # importing it was a third of maas's start (tests/test_cli_completion.py).
    import httpx

TIMEOUT_S, CONNECT_TIMEOUT_S = 30.0, 10.0
USER_AGENT = "maas-cli/0.1"


@dataclass(frozen=True)
class Trust:
    """How to check the server's certificate: a CA file, the system's, or not at all."""

    ca: Path | None = None
    insecure: bool = False

    def verify(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        if self.ca is not None:
            try:
                return ssl.create_default_context(cafile=str(self.ca))
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"cannot use {self.ca} as a CA certificate: {exc}", ExitCode.USAGE,
                               hint="give a PEM file with --ca-file") from None
        return True


def trust_for(url: str, *, ca: Path | None, insecure: bool, saved: Credential | None = None) -> Trust:
    """--ca-file/--insecure first, then what was trusted at login, then make run's certificate for a
    server on this machine (self-signed: nothing else could vouch for it), else the system's."""
    if insecure:
        return Trust(insecure=True)
    if ca is not None:
        return Trust(ca=ca)
    if saved is not None and saved.insecure:
        return Trust(insecure=True)
    if saved is not None and saved.ca:
        return Trust(ca=Path(saved.ca))
    if url.startswith("https://") and is_loopback(url):
        local = local_certificate()
        if local is not None:
            return Trust(ca=local)
    return Trust()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # the OpenAI shape, on /v1/models
            error = error.get("message")
        if isinstance(error, str) and error:
            return error
    return response.reason_phrase or "error"


def _hint(status: int, url: str, *, admin_key: bool) -> str:
    if status == 401:
        return f"sign in again: maas login --url {url}"
    if status == 403 and not admin_key:
        # The admin key may do anything an admin may: its 403 is not about roles, and the API's
        # message says what it is about.
        return "ask a platform admin, or a team admin for team matters (maas whoami shows your roles)"
    if status >= 500:
        return "the server failed, not your request: try again later, or ask its operator (its log says why)"
    return ""


def _transport_error(url: str, exc: httpx.TransportError) -> CliError:
    import httpx

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return CliError(f"cannot verify the TLS certificate of {url} ({cause.verify_message})",
                            ExitCode.UNAVAILABLE,
                            hint="pass --ca-file FILE (make run's is .maas/tls/cert.pem, trusted by itself when you run "
                                 "maas in the project folder), or --insecure")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return CliError(f"{url} did not answer in time", ExitCode.UNAVAILABLE, hint="try again, or check the server")
    return CliError(f"cannot reach {url} ({exc})", ExitCode.UNAVAILABLE,
                    hint="is it running (maas serve, make run)? check --url or MAAS_URL")


@dataclass
class Api:
    url: str
    trust: Trust
    credential: Credential | None = None
    store: CredentialStore | None = None
    profile: str | None = None
    """The profile the credential is kept under, for a renewed token to be kept there too."""
    last_date: str | None = field(default=None, init=False)
    """The server's Date header of the latest answer: its clock, not ours (cli/keyimport.py)."""
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(base_url=self.url, verify=self.trust.verify(),
                                        timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                                        headers={"User-Agent": USER_AGENT})
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def signed_in_with_admin_key(self) -> bool:
        return self.credential is not None and self.credential.method == "admin-key"

    def _authorization(self) -> dict[str, str]:
        if self.credential is None:
            return {}
        if self.credential.method == "oidc" and self.credential.expired():
            self._refresh()
        return {"Authorization": f"Bearer {self.credential.secret}"}

    def _refresh(self) -> None:
        from cli.oidc import refresh  # only a browser sign-in ever needs it

        assert self.credential is not None
        refresh(self.credential)
        if self.store is not None:
            self.store.put(self.credential, profile=self.profile)

    def send(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> httpx.Response:
        import httpx

        headers = self._authorization()
        query = {name: value for name, value in (params or {}).items() if value is not None}
        try:
            response = self._http().request(method, path, json=json, params=query, headers=headers)
        except httpx.TransportError as exc:
            raise _transport_error(self.url, exc) from None
        self.last_date = response.headers.get("Date") or self.last_date
        if response.status_code >= 400:
            status = response.status_code
            raise CliError(f"{_message(response)} ({status})", for_status(status), hint=_hint(status, self.url, admin_key=self.signed_in_with_admin_key()))
        return response

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        response = self.send(method, path, json=json, params=params)
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{self.url}{path} did not answer JSON ({response.status_code})",
                           ExitCode.UNAVAILABLE, hint="is --url the key manager's admin API?") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Each page of a listing, following `next_cursor` until the last (null)."""
        query = dict(params)
        while True:
            page = self.call("GET", path, params=query)
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    def listing(self, path: str, items: str, *, limit: int | None, cursor: str | None, every: bool,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One page (`limit` items after `cursor`), or with `every` all pages merged into the
        first page's shape, `next_cursor` null, as if the API had answered them at once."""
        query = {**(params or {}), "limit": limit, "cursor": cursor}
        if not every:
            return dict(self.call("GET", path, params=query))
        merged: dict[str, Any] | None = None
        for page in self.pages(path, query):
            if merged is None:
                merged = dict(page)
                merged[items] = list(page.get(items) or [])
            else:
                merged[items].extend(page.get(items) or [])
        assert merged is not None
        merged["next_cursor"] = None
        return merged

