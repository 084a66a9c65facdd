"""`maas login` against a real OpenID Connect provider (tests/oidc_provider.py): the device
sign-in (RFC 8628), the browser sign-in (authorization code with PKCE, redirected to a loopback
port), a token given as it is, the renewal of an expired sign-in, and what a member may and may
not do with it.

The provider and the admin API both serve certificates a private CA signed (one test CA for
the module), as a company's often are: every sign-in needs that CA (MAAS_CA_FILE, --ca-file),
and one test checks what happens without it.

The browser is an HTTP client following the provider's /authorize redirect, or opening its
device page: the provider signs in whoever `login_as` names without a form. The device grant is
provider.mjs's addition to oauth2-mock-server (which has none), off unless a test turns it on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli import oidc
from cli.exitcodes import CliError
from tests.oidc_provider import OidcProvider, running_provider
from tests.runtime import Runtime, start_runtime
from tests.test_cli import Maas, signed_in_maas

_URL = re.compile(r"^\s+(http\S+)$")


@dataclass(frozen=True)
class Pki:
    ca: Path
    key: Path
    chain: Path
    data_dir: Path
    """The runtime's data dir, whose tls/ holds the server certificate the CA signed."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    data_dir = tmp_path_factory.mktemp("runtime") / ".maas"
    # The runtime serves the certificate it finds in its data dir (local/tls.py): one the CA signed.
    return Pki(*private_ca(data_dir / "tls"), data_dir=data_dir)


@pytest.fixture(scope="module")
def oidc_provider(pki: Pki) -> Iterator[OidcProvider]:
    with running_provider(tls=(pki.key, pki.chain)) as provider:
        assert provider.issuer.startswith("https://")
        yield provider


def trusting(provider: OidcProvider) -> ssl.SSLContext:
    """What the test's browser trusts for the provider: the chain it serves, whose CA is ours."""
    assert provider.tls is not None
    return ssl.create_default_context(cafile=str(provider.tls[1]))


@pytest.fixture(scope="module")
def runtime(oidc_provider: OidcProvider, pki: Pki) -> Iterator[Runtime]:
    running = start_runtime(pki.data_dir, env={
        "MAAS_OIDC_ISSUER": oidc_provider.issuer, "MAAS_OIDC_AUDIENCE": "maas", "MAAS_ADMIN_GROUPS": "platform-admins",
        "MAAS_OIDC_CA_FILE": str(pki.ca),
    })
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture(scope="module")
def admin(runtime: Runtime, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Maas:
    maas = signed_in_maas(runtime, tmp_path_factory.mktemp("admin"))
    maas.settings = {"MAAS_CA_FILE": str(pki.ca)}
    assert maas("team", "create", "team-a").code == 0
    assert maas("member", "add", "team-a", "alice", "--email", "alice@example.com").code == 0
    return maas


def person(admin: Maas, config: Path) -> Maas:
    return Maas(config, admin.url, admin.data_dir, settings=dict(admin.settings))


def browser_login(maas: Maas, provider: OidcProvider, *, follow: bool = True,
                  forged_state: str | None = None, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run `maas login --issuer ... --no-browser`, open the URL it prints as a browser would,
    and return the login's exit code, stdout and stderr."""
    login = maas.process("login", "--issuer", provider.issuer, "--client-id", "maas", "--no-browser", "--timeout", "20",
                         *extra)
    assert login.stderr is not None
    printed = []
    for line in login.stderr:
        printed.append(line)
        found = _URL.match(line)
        if found:
            url = found.group(1)
            break
    else:
        raise AssertionError(f"no URL printed: {''.join(printed)}")
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"] and query["state"]
    redirect = query["redirect_uri"][0]
    assert urlsplit(redirect).hostname == "127.0.0.1"
    if forged_state is not None:
        httpx.get(redirect, params={"code": "stolen", "state": forged_state}, timeout=10)
    elif follow:
        landed = httpx.get(url, follow_redirects=True, timeout=10, verify=trusting(provider))
        assert landed.status_code == 200 and "Signed in" in landed.text, landed.text
    out, err = login.communicate(timeout=30)
    maas.seen += [out, err]
    return login.returncode, out, "".join(printed) + err


def test_a_browser_sign_in_lets_a_member_work_as_themselves(admin: Maas, oidc_provider: OidcProvider,
                                                            tmp_path: Path) -> None:
    alice = person(admin, tmp_path / "alice")
    oidc_provider.login_as(sub="alice", email="alice@example.com")
    code, out, err = browser_login(alice, oidc_provider)
    assert code == 0, err
    assert "as alice (oidc)" in out
    me = alice("whoami", "--json").json()
    assert (me["user_id"], me["signed_in_with"], me["platform_admin"]) == ("alice", "oidc", False)
    assert [(t["team_id"], t["role"]) for t in me["teams"]] == [("team-a", "member")]

    mine = alice("key", "create", "team-a", "--alias", "laptop", "--json").json()
    assert (mine["user_id"], mine["team_id"], mine["alias"]) == ("alice", "team-a", "laptop")
    assert [k["secret_name"] for k in alice("key", "list", "--json").json()["keys"]] == [mine["secret_name"]]
    assert alice("key", "show", mine["secret_name"], "--json").json()["alias"] == "laptop"
    assert alice("usage", "me", "--json").json()["user_id"] == "alice"

    forbidden = alice("team", "create", "mine-now")
    assert forbidden.code == 4 and forbidden.err.startswith("maas: ") and forbidden.err.count("\n") == 1
    assert alice("team", "list").code == 4
    assert alice("key", "create", "team-a", "bob").code == 4, "a member mints only their own keys"

    credentials = tmp_path / "alice" / "maas" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    saved = json.loads(credentials.read_text())["servers"][admin.url]
    assert saved["method"] == "oidc" and saved["refresh_token"]
    assert not any(saved["secret"] in text or saved["refresh_token"] in text for text in alice.seen)
    assert sum(text.count(mine["api_key"]) for text in alice.seen) == 1, "shown once, by key create"


def test_an_expired_sign_in_renews_itself_with_its_refresh_token(admin: Maas, oidc_provider: OidcProvider,
                                                                 tmp_path: Path) -> None:
    tara = person(admin, tmp_path / "tara")
    oidc_provider.login_as(sub="tara", groups=["platform-admins"])
    code, _, err = browser_login(tara, oidc_provider)
    assert code == 0, err
    credentials = tmp_path / "tara" / "maas" / "credentials.json"
    data = json.loads(credentials.read_text())
    data["servers"][admin.url]["expires_at"] = 0  # long past
    credentials.write_text(json.dumps(data))
    asked = oidc_provider.requests("/token")
    listed = tara("team", "list", "--json")
    assert listed.code == 0, listed.err
    assert oidc_provider.requests("/token") == asked + 1
    renewed = json.loads(credentials.read_text())["servers"][admin.url]
    assert renewed["expires_at"] > 0 and stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert tara("whoami", "--json").json()["platform_admin"] is True
    assert oidc_provider.requests("/token") == asked + 1, "a fresh token is not renewed again"


def test_a_redirect_without_the_logins_state_is_refused(admin: Maas, oidc_provider: OidcProvider,
                                                        tmp_path: Path) -> None:
    mallory = person(admin, tmp_path / "mallory")
    code, _, err = browser_login(mallory, oidc_provider, forged_state="not-the-state")
    assert code == 3 and "did not carry this login's state" in err.splitlines()[-1]
    assert not (tmp_path / "mallory" / "maas" / "credentials.json").exists()


def test_a_token_from_elsewhere_signs_in_as_it_is(admin: Maas, oidc_provider: OidcProvider,
                                                  tmp_path: Path) -> None:
    bob = person(admin, tmp_path / "bob")
    token = oidc_provider.token(sub="bob", aud="maas", email="bob@example.com")
    signed = bob("login", "--token", input=token + "\n")
    assert signed.code == 0, signed.err
    assert bob("whoami", "--json").json()["user_id"] == "bob"
    assert bob("key", "create", "team-a").code == 4, "bob is no member of team-a"
    wrong_audience = person(admin, tmp_path / "eve")("login", "--token", input=oidc_provider.token(sub="eve", aud="other"))
    assert wrong_audience.code == 3
    assert not any(token in text for text in bob.seen)


# The device authorization grant (RFC 8628).

def offer_device_grant(provider: OidcProvider, **settings: Any) -> None:
    # provider.mjs's side door (/_control/device): the grant is off unless a test turns it on.
    provider._control("POST", "device", settings)


@pytest.fixture
def device_grant(oidc_provider: OidcProvider) -> Iterator[OidcProvider]:
    offer_device_grant(oidc_provider, enabled=True, interval=1)
    try:
        yield oidc_provider
    finally:
        offer_device_grant(oidc_provider, enabled=False)


def device_login(maas: Maas, provider: OidcProvider, *flags: str, answer: str | None = "approve",
                 env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `maas login --issuer ...`, open the device page it prints as the person would on
    their phone (approving, or with answer="deny" refusing, or with None never coming), and
    return the login's exit code, stdout and stderr."""
    login = maas.process("login", "--issuer", provider.issuer, "--client-id", "maas", "--no-browser",
                         "--timeout", "20", *flags, env=env)
    assert login.stdout is not None and login.stderr is not None
    with login:  # closes the pipes, and waits
        try:
            printed: list[str] = []
            for line in login.stderr:
                printed.append(line)
                if line.startswith("Waiting up to") or line.startswith("maas: "):
                    break
            links = [found.group(1) for found in map(_URL.match, printed) if found]
            if answer is not None and len(links) == 2:
                page, complete = links
                code = printed[0].rstrip().rsplit(" ", 1)[-1].rstrip(":")
                assert page == f"{provider.issuer}/device" and parse_qs(urlsplit(complete).query)["user_code"] == [code]
                opened = httpx.get(complete + ("&deny=1" if answer == "deny" else ""), timeout=10,
                                   verify=trusting(provider))
                assert opened.status_code == 200, opened.text
            # The rest through the same buffered files (communicate() would skip what they hold
            # already); maas stops by itself within its --timeout.
            printed.extend(login.stderr)
            out = login.stdout.read()
            login.wait(timeout=30)
        finally:
            if login.poll() is None:
                login.kill()
    err = "".join(printed)
    return login.returncode, out, err


def test_a_device_sign_in_is_used_when_the_provider_offers_it(admin: Maas, device_grant: OidcProvider,
                                                              tmp_path: Path) -> None:
    alice = person(admin, tmp_path / "alice")
    device_grant.login_as(sub="alice", email="alice@example.com")
    asked = device_grant.requests("/device_authorization")
    code, out, err = device_login(alice, device_grant)  # neither --device nor --browser: the provider's offer decides
    assert code == 0, err
    assert "as alice (oidc)" in out and "enter the code" in err
    assert device_grant.requests("/device_authorization") == asked + 1
    me = alice("whoami", "--json").json()
    assert (me["user_id"], me["signed_in_with"]) == ("alice", "oidc")
    assert [(t["team_id"], t["role"]) for t in me["teams"]] == [("team-a", "member")]
    assert alice("key", "create", "team-a", "bob").code == 4, "a member mints only their own keys"

    credentials = tmp_path / "alice" / "maas" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    saved = json.loads(credentials.read_text())["servers"][admin.url]
    assert saved["method"] == "oidc" and saved["refresh_token"] and saved["client_id"] == "maas"
    assert not any(saved["secret"] in text or saved["refresh_token"] in text for text in alice.seen)
    # The device sign-in's refresh token renews it, like a browser sign-in's.
    saved["expires_at"] = 0
    credentials.write_text(json.dumps({"current": admin.url, "servers": {admin.url: saved}}))
    renewals = device_grant.requests("/token")
    assert alice("whoami", "--json").json()["user_id"] == "alice"
    assert device_grant.requests("/token") == renewals + 1


def test_a_profiles_renewed_token_is_kept_in_its_profile(admin: Maas, device_grant: OidcProvider,
                                                        tmp_path: Path) -> None:
    fay = person(admin, tmp_path / "fay")
    device_grant.login_as(sub="alice")
    code, out, err = device_login(fay, device_grant, "--profile", "mine")
    assert code == 0 and "as profile mine" in out, err
    credentials = tmp_path / "fay" / "maas" / "credentials.json"
    data = json.loads(credentials.read_text())
    assert data["servers"] == {} and data["profiles"]["mine"]["method"] == "oidc"
    data["profiles"]["mine"]["expires_at"] = 0
    credentials.write_text(json.dumps(data))
    assert fay("whoami", "--json", MAAS_PROFILE="mine").json()["user_id"] == "alice"
    renewed = json.loads(credentials.read_text())
    assert renewed["profiles"]["mine"]["expires_at"] > 0 and renewed["servers"] == {}


def test_browser_chooses_the_browser_sign_in_where_a_device_one_is_offered(admin: Maas, device_grant: OidcProvider,
                                                                         tmp_path: Path) -> None:
    carol = person(admin, tmp_path / "carol")
    device_grant.login_as(sub="carol")
    asked = device_grant.requests("/device_authorization")
    code, out, err = browser_login(carol, device_grant, extra=("--browser",))
    assert code == 0, err
    assert "as carol (oidc)" in out and device_grant.requests("/device_authorization") == asked


def test_a_refused_or_expired_device_sign_in_keeps_nothing(admin: Maas, device_grant: OidcProvider,
                                                           tmp_path: Path) -> None:
    dave = person(admin, tmp_path / "dave")
    code, _, err = device_login(dave, device_grant, "--device", answer="deny")
    assert code == 3 and err.splitlines()[-1].startswith("maas: the sign-in was refused at the identity provider")
    offer_device_grant(device_grant, enabled=True, interval=1, expires_in=1)
    code, _, err = device_login(dave, device_grant, answer=None)
    assert code == 3 and "expired" in err.splitlines()[-1] and err.count("maas: ") == 1, err
    assert not (tmp_path / "dave" / "maas" / "credentials.json").exists()


def test_device_where_the_provider_offers_none_says_to_use_the_browser(admin: Maas, oidc_provider: OidcProvider,
                                                                       tmp_path: Path) -> None:
    erin = person(admin, tmp_path / "erin")
    code, _, err = device_login(erin, oidc_provider, "--device")
    assert code == 2 and "offers no device sign-in" in err and "--browser" in err.splitlines()[-1]
    both = erin("login", "--issuer", oidc_provider.issuer, "--client-id", "maas", "--device", "--browser")
    assert both.code == 2 and "not both" in both.err
    alone = erin("login", "--device")
    assert alone.code == 2 and "--issuer" in alone.err


def test_a_device_sign_in_slows_down_when_the_provider_says_so(device_grant: OidcProvider) -> None:
    """RFC 8628 3.5: after `slow_down`, 5 seconds more between polls, for this and every later poll.
    In this process, with the waits recorded rather than slept."""
    offer_device_grant(device_grant, enabled=True, interval=0, slow_down=1)
    device_grant.login_as(sub="alice")
    provider = oidc.discover(device_grant.issuer, ca=str(device_grant.tls[1]) if device_grant.tls else None)
    shown: list[str] = []
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # the person signs in after two polls: one slowed down, one pending
            assert httpx.get(shown[-1], timeout=10, verify=trusting(device_grant)).status_code == 200

    answer = oidc.device_login(provider, "maas", scope="openid", timeout=60, open_browser=False,
                               show=lambda page, code, complete: shown.append(complete or page), sleep=wait)
    assert waits == [0, 5, 5]
    assert answer["access_token"].count(".") == 2
    with pytest.raises(CliError, match="the code has expired"):
        offer_device_grant(device_grant, enabled=True, interval=1, expires_in=3)
        oidc.device_login(provider, "maas", scope="openid", timeout=60, open_browser=False,
                          show=lambda *_: None, sleep=lambda seconds: waits.append(seconds))


# A private CA (--ca-file, MAAS_CA_FILE) for both the identity provider and the admin API.

def private_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1: (ca.pem, key.pem, chain.pem),
    the chain being the server's certificate then the CA's, as servers send them."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maas test private CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_path, key_path, chain_path = directory / "ca.pem", directory / "key.pem", directory / "cert.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    chain_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return ca_path, key_path, chain_path


def test_a_provider_and_admin_api_behind_a_private_ca_need_the_ca_file(admin: Maas, device_grant: OidcProvider,
                                                                      pki: Pki, tmp_path: Path) -> None:
    device_grant.login_as(sub="pat", groups=["platform-admins"])
    # Neither the runtime's data dir nor MAAS_CA_FILE: nothing trusts either certificate but the CA file.
    pat = Maas(tmp_path / "pat", admin.url, tmp_path / "elsewhere")
    untrusted = pat("login", "--issuer", device_grant.issuer, "--client-id", "maas")
    assert untrusted.code == 7 and untrusted.err.count("\n") == 1
    assert "cannot verify the TLS certificate of the identity provider" in untrusted.err
    assert "--ca-file" in untrusted.err
    assert pat("login", "--admin-key", ADMIN_KEY="x").code == 7, "nor the admin API's"

    code, out, err = device_login(pat, device_grant, "--ca-file", str(pki.ca))
    assert code == 0, err
    assert "as pat (oidc)" in out
    # The CA is kept with the sign-in: later commands need no flag, for the API or the provider.
    assert pat("whoami", "--json").json()["platform_admin"] is True
    credentials = tmp_path / "pat" / "maas" / "credentials.json"
    data = json.loads(credentials.read_text())
    saved = data["servers"][admin.url]
    assert saved["ca"] == saved["issuer_ca"] == str(pki.ca.resolve())
    saved["expires_at"] = 0
    credentials.write_text(json.dumps(data))
    renewals = device_grant.requests("/token")
    assert pat("team", "list").code == 0
    assert device_grant.requests("/token") == renewals + 1, "renewed over TLS, trusting the kept CA"

    # MAAS_CA_FILE does what --ca-file does.
    sam = Maas(tmp_path / "sam", admin.url, tmp_path / "elsewhere")
    device_grant.login_as(sub="sam")
    code, out, err = device_login(sam, device_grant, env={"MAAS_CA_FILE": str(pki.ca)})
    assert code == 0 and "as sam (oidc)" in out, err
