"""`maas login` against a real OpenID Connect provider (tests/oidc_provider.py): the browser
sign-in (authorization code with PKCE, redirected to a loopback port), a token given as it is,
the renewal of an expired sign-in, and what a member may and may not do with it.

The browser is an HTTP client following the provider's /authorize redirect: the provider signs
in whoever `login_as` names without a page, and redirects to maas's loopback listener.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.oidc_provider import OidcProvider, oidc_provider  # noqa: F401
from tests.runtime import Runtime, start_runtime
from tests.test_cli import Maas, signed_in_maas

_URL = re.compile(r"^\s+(http\S+)$")


@pytest.fixture(scope="module")
def runtime(oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:  # noqa: F811
    running = start_runtime(tmp_path_factory.mktemp("runtime") / ".maas", env={
        "MAAS_OIDC_ISSUER": oidc_provider.issuer, "MAAS_OIDC_AUDIENCE": "maas", "MAAS_ADMIN_GROUPS": "platform-admins",
    })
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture(scope="module")
def admin(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Maas:
    maas = signed_in_maas(runtime, tmp_path_factory.mktemp("admin"))
    assert maas("team", "create", "team-a").code == 0
    assert maas("member", "add", "team-a", "alice", "--email", "alice@example.com").code == 0
    return maas


def person(admin: Maas, config: Path) -> Maas:
    return Maas(config, admin.url, admin.data_dir)


def browser_login(maas: Maas, provider: OidcProvider, *, follow: bool = True,
                  forged_state: str | None = None) -> tuple[int, str, str]:
    """Run `maas login --issuer ... --no-browser`, open the URL it prints as a browser would,
    and return the login's exit code, stdout and stderr."""
    login = maas.process("login", "--issuer", provider.issuer, "--client-id", "maas", "--no-browser", "--timeout", "20")
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
        landed = httpx.get(url, follow_redirects=True, timeout=10)
        assert landed.status_code == 200 and "Signed in" in landed.text, landed.text
    out, err = login.communicate(timeout=30)
    maas.seen += [out, err]
    return login.returncode, out, "".join(printed) + err


def test_a_browser_sign_in_lets_a_member_work_as_themselves(admin: Maas, oidc_provider: OidcProvider,  # noqa: F811
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


def test_an_expired_sign_in_renews_itself_with_its_refresh_token(admin: Maas, oidc_provider: OidcProvider,  # noqa: F811
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


def test_a_redirect_without_the_logins_state_is_refused(admin: Maas, oidc_provider: OidcProvider,  # noqa: F811
                                                        tmp_path: Path) -> None:
    mallory = person(admin, tmp_path / "mallory")
    code, _, err = browser_login(mallory, oidc_provider, forged_state="not-the-state")
    assert code == 3 and "did not carry this login's state" in err.splitlines()[-1]
    assert not (tmp_path / "mallory" / "maas" / "credentials.json").exists()


def test_a_token_from_elsewhere_signs_in_as_it_is(admin: Maas, oidc_provider: OidcProvider,  # noqa: F811
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
