"""The web console in a real browser: Debian's Chromium driven by Playwright (tests/browser.py),
against the real local runtime (`python -m local serve`: the admin API and the console on one
origin, the gateway, the simulator) and a real OpenID Connect provider process.

An admin signs in with the admin key, creates a team, issues a key, copies it, calls the gateway
with it, sees the team's usage count it, revokes it and sees the gateway refuse it. A member signs
in through the provider (authorization code + PKCE), sees only the member's pages, mints a key of
their own and watches it on My usage. After a key's page is left, no page the browser is shown
holds the key (every page's HTML is kept and searched).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from shared.keymaterial import generate_admin_key
from tests.browser import ChromiumMissing, chromium
from tests.oidc_provider import OidcProvider, oidc_provider  # noqa: F401
from tests.runtime import Runtime, start_runtime

ADMIN_KEY = generate_admin_key()
MODEL = "qwen3-0-6b-instruct"
TEAM = "web-team"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcProvider) -> Iterator[Runtime]:  # noqa: F811
    running = start_runtime(tmp_path_factory.mktemp("console"), env={
        "ADMIN_KEY": ADMIN_KEY, "MAAS_OIDC_ISSUER": oidc_provider.issuer, "MAAS_OIDC_AUDIENCE": "maas",
        "MAAS_ACCESS_LOG": "false",
    })
    try:
        yield running
    finally:
        running.stop()


class Visits:
    """The HTML of each page the browser was shown, as it was shown: taken once a page has loaded
    (a test takes one after each of its steps)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.pages: list[tuple[str, str]] = []

    def take(self) -> None:
        self.page.wait_for_load_state("load")
        self.pages.append((self.page.url, self.page.content()))

    def holding(self, secret: str) -> list[str]:
        return [url for url, html in self.pages if secret in html]


@pytest.fixture
def browser(runtime: Runtime) -> Iterator[BrowserContext]:
    try:
        with chromium(origin=runtime.admin_url) as context:
            yield context
    except ChromiumMissing as exc:
        pytest.fail(str(exc))


def chat(runtime: Runtime, key: str) -> httpx.Response:
    return httpx.post(f"{runtime.urls['gateway']}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"APIKEY {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20})


def copy_new_key(page: Page) -> str:
    """The key page's copy button, then the clipboard; the one time the key is read."""
    expect(page.get_by_role("heading", name=re.compile("new key", re.I))).to_be_visible()
    expect(page.get_by_text("you will not see it again", exact=False)).to_be_visible()
    shown = page.get_by_label(re.compile("^API key for")).input_value()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status").filter(has_text="Copied")).to_be_visible()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown and shown.startswith("maas_")
    return str(copied)


def test_an_admin_creates_a_team_issues_a_key_sees_it_used_and_revokes_it(runtime: Runtime,
                                                                           browser: BrowserContext) -> None:
    page = browser.new_page()
    visits = Visits(page)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmation before a revocation
    page.goto(runtime.admin_url + "/")
    expect(page).to_have_url(re.compile("/console/signin$"))
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in with the admin key").click()
    expect(page).to_have_url(re.compile("/console/keys$"))
    expect(page.get_by_text("Signed in as")).to_contain_text("admin key, platform admin")
    assert ADMIN_KEY not in str(browser.cookies())

    page.get_by_role("link", name="Teams").click()
    page.get_by_label("Team id").fill(TEAM)
    page.get_by_label("Name").fill("Web Team")
    page.get_by_label("Token limit").fill("100000")
    page.get_by_role("button", name="Create team").click()
    expect(page).to_have_url(re.compile(f"/console/teams/{TEAM}$"))
    expect(page.get_by_role("status")).to_contain_text(f"Team {TEAM} created")

    for user, role in (("mona", "member"), ("tara", "admin")):
        page.get_by_text("Add a member").click()
        page.get_by_label("User id", exact=True).first.fill(user)
        page.get_by_label("Role", exact=True).select_option(role)
        page.get_by_role("button", name="Add member").click()
        expect(page.get_by_role("status")).to_contain_text(f"{user} is now a {role} of team {TEAM}")

    page.get_by_text("Issue a key").click()
    form = page.locator(f"form[action='/console/teams/{TEAM}/keys']")
    form.get_by_label("User id").fill("carl")
    form.get_by_label("Alias").fill("browser")
    form.get_by_label(MODEL).check()
    form.get_by_role("button", name="Issue key").click()
    key = copy_new_key(page)

    page.get_by_role("link", name=re.compile("^Done")).click()
    expect(page).to_have_url(re.compile(f"/console/teams/{TEAM}$"))
    visits.take()
    answered = chat(runtime, key)
    assert answered.status_code == 200, answered.text
    tokens = answered.json()["usage"]["total_tokens"]
    page.reload()
    usage = page.get_by_role("table", name=re.compile("By user"))
    expect(usage.get_by_role("row", name=re.compile("carl"))).to_contain_text(f"{tokens:,}")
    visits.take()

    row = page.get_by_role("table", name=re.compile("key\\(s\\)")).get_by_role("row", name=re.compile("carl"))
    row.get_by_role("button", name=re.compile("^Revoke key")).click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    visits.take()
    assert chat(runtime, key).status_code == 401

    for path in ("/console/keys", "/console/usage", "/console/teams", f"/console/teams/{TEAM}/delete"):
        page.goto(runtime.admin_url + path)
        visits.take()
    expect(page.get_by_text("1 key(s)", exact=False).first).to_be_visible()
    assert len(visits.pages) == 7
    assert visits.holding(key) == []


def test_a_member_signs_in_with_the_provider_sees_member_pages_only_and_watches_their_usage(
        runtime: Runtime, browser: BrowserContext, oidc_provider: OidcProvider) -> None:  # noqa: F811
    oidc_provider.login_as(sub="mona", email="mona@example.com")
    page = browser.new_page()
    visits = Visits(page)
    page.goto(runtime.admin_url + "/console/signin")
    page.get_by_role("link", name="Sign in with your identity provider").click()
    expect(page).to_have_url(re.compile("/console/keys$"))
    expect(page.get_by_text("Signed in as")).to_contain_text("mona")
    nav = page.get_by_role("navigation", name="Console")
    expect(nav.get_by_role("link")).to_have_text(["My keys", "My usage", "Models"])
    cookies = {cookie["name"]: cookie for cookie in browser.cookies()}
    session = cookies["__Host-maas-console"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
    assert page.evaluate("Object.keys(localStorage).length + Object.keys(sessionStorage).length") == 0

    for path, needed in (("/console/teams", "platform admin"), (f"/console/teams/{TEAM}", f"admin of team '{TEAM}'")):
        answer = page.goto(runtime.admin_url + path)
        assert answer is not None and answer.status == 403
        expect(page.get_by_role("alert")).to_contain_text(needed)

    page.goto(runtime.admin_url + "/console/keys")
    page.get_by_label("Team").select_option(TEAM)
    page.get_by_label("Alias").fill("laptop")
    page.get_by_label("Expires after").select_option("30d")
    page.get_by_role("button", name="Create key").click()
    key = copy_new_key(page)
    page.get_by_role("link", name=re.compile("^Done")).click()
    expect(page.get_by_role("row", name=re.compile("laptop"))).to_contain_text("active")
    visits.take()

    answered = chat(runtime, key)
    assert answered.status_code == 200, answered.text
    tokens = answered.json()["usage"]["total_tokens"]
    page.get_by_role("link", name="My usage").click()
    expect(page.locator("[data-figure=tokens]")).to_have_text(f"{tokens:,}")
    expect(page.locator("figure.chart svg").first).to_be_visible()
    expect(page.get_by_role("table", name=re.compile("by model", re.I))).to_contain_text(MODEL)
    budget = page.get_by_role("table", name=re.compile("token limit", re.I))
    expect(budget.get_by_role("row", name=re.compile(TEAM))).to_contain_text(f"{100000 - tokens:,}")
    visits.take()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    page.goto(runtime.admin_url + "/console/keys")
    expect(page).to_have_url(re.compile("/console/signin$"))
    visits.take()

    # A team admin: their team's page (members, keys, usage; its limits only to read), no other.
    oidc_provider.login_as(sub="tara")
    page.get_by_role("link", name="Sign in with your identity provider").click()
    nav.get_by_role("link", name=f"Team {TEAM}").click()
    expect(page.get_by_role("heading", name="Members")).to_be_visible()
    expect(page.get_by_role("table", name=re.compile("key\\(s\\)"))).to_contain_text("laptop")
    expect(page.get_by_text("A platform admin sets a team's limits.")).to_be_visible()
    assert page.get_by_role("button", name="Save limits").count() == 0
    assert page.get_by_role("link", name=re.compile("delete", re.I)).count() == 0
    visits.take()
    answer = page.goto(runtime.admin_url + "/console/teams")
    assert answer is not None and answer.status == 403
    assert len(visits.pages) == 4 and visits.holding(key) == []
