"""A real OpenID Connect provider for tests: oauth2-mock-server (npm), run by
tests/oidc_provider/provider.mjs on a free 127.0.0.1 port, with real signed tokens, discovery, a
JWKS, and the authorization-code flow with PKCE.

`make test` installs it (tools/ensure_oidc_provider.sh: `npm ci` in tests/oidc_provider/). Tests
fail, saying so, when node or the package is missing. Tokens with chosen claims come from
`OidcProvider.token(...)` (no browser); `rotate()` makes a new signing key; `requests()` counts
what the provider was asked, per path.

    with running_provider() as provider:
        token = provider.token(sub="alice", aud="maas", groups=["admins"])
"""

from __future__ import annotations

import json
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.local_servers import free_port, installed

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
SCRIPT = PROVIDER_DIR / "provider.mjs"
PACKAGE = PROVIDER_DIR / "node_modules" / "oauth2-mock-server" / "package.json"


def node_binary() -> str:
    """Node, with the package installed, or a test failure that says how to get them (not a skip:
    `make test` installs what it needs, and a skipped sign-in test proves nothing)."""
    node = installed("node")
    if node is None:
        pytest.fail("node is not installed: the OIDC tests run a real provider on Node.js 20.19+")
    if not PACKAGE.is_file():
        pytest.fail("the test OIDC provider is not installed: run `make test` or `bash tools/ensure_oidc_provider.sh`")
    return node


@dataclass
class OidcProvider:
    node: str
    workdir: Path
    port: int = 0
    advertised_issuer: str | None = None
    """What discovery and tokens name as the issuer, when it should differ from the address."""
    tls: tuple[Path, Path] | None = None
    """(key, certificate) PEM files: serve https."""
    alg: str = "RS256"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.advertised_issuer or self.url

    def start(self, ready_within_s: float = 15.0) -> OidcProvider:
        self.port = self.port or free_port()
        command = [self.node, str(SCRIPT), "--port", str(self.port), "--alg", self.alg]
        if self.advertised_issuer:
            command += ["--issuer", self.advertised_issuer]
        if self.tls:
            command += ["--tls-key", str(self.tls[0]), "--tls-cert", str(self.tls[1])]
        log_path = self.workdir / f"provider-{self.port}.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=PROVIDER_DIR, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"OIDC provider exited: {log_path.read_text()[-2000:]}")
            if self._serves_discovery():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"OIDC provider not serving discovery within {ready_within_s}s: {log_path.read_text()[-2000:]}")

    @property
    def _context(self) -> ssl.SSLContext | None:
        # The certificate is self-signed: it is its own CA.
        return ssl.create_default_context(cafile=str(self.tls[1])) if self.tls else None

    def _serves_discovery(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/.well-known/openid-configuration", timeout=1,
                                        context=self._context) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    # The test-only control endpoints of provider.mjs.

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/_control/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._context) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"OIDC provider control {path}: {exc.code} {exc.read()[:500]!r}") from None

    def token(
        self,
        *,
        sub: str | None = "alice",
        aud: str | Sequence[str] | None = "maas",
        email: str | None = None,
        groups: Sequence[str] | None = None,
        expires_in: int = 3600,
        claims: dict[str, Any] | None = None,
        remove: Sequence[str] = (),
        header: dict[str, Any] | None = None,
        unpublished_key: bool = False,
    ) -> str:
        """A token signed by the provider: its current key, or one its JWKS never shows. `claims`
        override anything (iss, exp, nbf, ...); a claim given as None is left out."""
        chosen: dict[str, Any] = {"sub": sub, "aud": aud if isinstance(aud, str) or aud is None else list(aud),
                                  "email": email, "groups": None if groups is None else list(groups)}
        chosen.update(claims or {})
        body = {
            "claims": {name: value for name, value in chosen.items() if value is not None},
            "remove": [*remove, *(name for name, value in chosen.items() if value is None)],
            "header": header or {},
            "expires_in": expires_in,
            "unpublished": unpublished_key,
        }
        return str(self._control("POST", "token", body)["token"])

    def rotate(self, alg: str | None = None, *, jwk: dict[str, Any] | None = None) -> str:
        """A new signing key, made by the provider or the given private JWK (with `alg`); the old
        one stays published, as in a real rotation. The new key's kid."""
        body: dict[str, Any] = {"jwk": jwk} if jwk else {"alg": alg} if alg else {}
        return str(self._control("POST", "rotate", body)["kid"])

    def login_as(self, **claims: Any) -> None:
        """Who the next /authorize signs in (claims of both tokens the code is exchanged for)."""
        self._control("POST", "login", {"claims": claims})

    def requests(self, path: str) -> int:
        """How many requests the provider has had for this path, e.g. `/jwks`."""
        return int(self._control("GET", "stats")["requests"].get(path, 0))


@contextmanager
def running_provider(
    *, port: int = 0, advertised_issuer: str | None = None, tls: tuple[Path, Path] | None = None,
    alg: str = "RS256",
) -> Iterator[OidcProvider]:
    """A started provider, stopped (killed if it will not stop) when the block ends or fails."""
    node = node_binary()
    with tempfile.TemporaryDirectory(prefix="maas-oidc-") as workdir:
        provider = OidcProvider(node, Path(workdir), port=port, advertised_issuer=advertised_issuer, tls=tls,
                                alg=alg)
        try:
            yield provider.start()
        finally:
            provider.stop()


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[OidcProvider]:
    with running_provider() as provider:
        yield provider
