"""The web console in a real browser: Debian's Chromium driven by Playwright (tests/browser.py),
against the real local runtime (`python -m local serve`: the admin API and the console on one
origin, the gateway, the simulator) and a real OpenID Connect provider process. One runtime, one
provider and one Chromium for the module; each test has a fresh browser context (its own cookies).

An admin signs in with the admin key, creates a team, issues a key, copies it, calls the gateway
with it, sees the team's usage count it, revokes it and sees the gateway refuse it. A member signs
in through the provider (authorization code + PKCE), sees only the member's pages, mints a key of
their own, watches it on My usage, and signs out of the provider too. Every form control of every
page has a label, and every page fits a 1280 px screen and a phone's; the main flows work with the
keyboard alone. After a key's page is left, no page the browser is shown holds the key (every
page's HTML is kept and searched).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from shared.keymaterial import generate_admin_key
from tests.browser import DESKTOP, PHONE, ChromiumMissing, fresh_context, launched
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


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Browser]:
    try:
        with launched() as browser:
            yield browser
    except ChromiumMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture
def browser(runtime: Runtime, chromium_browser: Browser) -> Iterator[BrowserContext]:
    with fresh_context(chromium_browser, origin=runtime.admin_url) as context:
        yield context


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


def chat(runtime: Runtime, key: str) -> httpx.Response:
    return httpx.post(f"{runtime.urls['gateway']}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"APIKEY {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20})


def copy_new_key(page: Page, *, by_keyboard: bool = False) -> str:
    """The key page's copy button, then the clipboard; the one time the key is read."""
    expect(page.get_by_role("heading", name=re.compile("new key", re.I))).to_be_visible()
    expect(page.get_by_text("you will not see it again", exact=False)).to_be_visible()
    shown = page.get_by_label(re.compile("^API key for")).input_value()
    if by_keyboard:
        expect(page.get_by_role("button", name="Copy")).to_be_focused()  # autofocus: Enter copies
        page.keyboard.press("Enter")
    else:
        page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status").filter(has_text="Copied")).to_be_visible()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown and shown.startswith("maas_")
    return str(copied)


def sign_in_with_key(page: Page, runtime: Runtime) -> None:
    page.goto(runtime.admin_url + "/console/signin")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in with the admin key").click()
    expect(page).to_have_url(re.compile("/console/keys$"))


def test_an_admin_creates_a_team_issues_a_key_sees_it_used_and_revokes_it(runtime: Runtime,
                                                                           browser: BrowserContext) -> None:
    page = browser.new_page()
    visits = Visits(page)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmation before a revocation
    page.goto(runtime.admin_url + "/")
    expect(page).to_have_url(re.compile("/console/signin$"))
    sign_in_with_key(page, runtime)
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
    tabs = page.get_by_role("navigation", name=f"Team {TEAM}")
    tabs.get_by_role("link", name="Usage").click()
    usage = page.get_by_role("table", name=re.compile("By user"))
    expect(usage.get_by_role("row", name=re.compile("carl"))).to_contain_text(f"{tokens:,}")
    visits.take()

    tabs.get_by_role("link", name="Members and keys").click()
    row = page.get_by_role("table", name=re.compile("key\\(s\\)")).get_by_role("row", name=re.compile("carl"))
    row.get_by_role("button", name=re.compile("^Revoke key")).click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    visits.take()
    assert chat(runtime, key).status_code == 401

    # The overview counts the call; the audit log names the key by its handle, never the key.
    page.get_by_role("link", name="Overview").click()
    expect(page.get_by_role("table", name=re.compile("Teams with calls")).get_by_role(
        "row", name=re.compile(TEAM))).to_contain_text(f"{tokens:,}")
    visits.take()
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").select_option("revoke_key")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("table", name=re.compile("1 entry"))).to_contain_text("POST /keys/apikey-carl-")
    visits.take()
    for path in ("/console/keys", "/console/usage", "/console/teams", f"/console/teams/{TEAM}?view=audit",
                 f"/console/teams/{TEAM}/delete"):
        page.goto(runtime.admin_url + path)
        visits.take()
    expect(page.get_by_text("1 key(s)", exact=False).first).to_be_visible()
    assert len(visits.pages) == 10
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

    for path, needed in (("/console/teams", "platform admin"), ("/console/teams?view=overview", "platform admin"),
                         ("/console/teams?view=audit", "platform admin"),
                         (f"/console/teams/{TEAM}", f"admin of team '{TEAM}'"),
                         (f"/console/teams/{TEAM}?view=usage", f"admin of team '{TEAM}'"),
                         (f"/console/teams/{TEAM}?view=audit", f"admin of team '{TEAM}'")):
        answer = page.goto(runtime.admin_url + path)
        assert answer is not None and answer.status == 403, path
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
    expect(page.locator("[data-figure=calls]")).to_have_text("1")
    expect(page.locator("figure.chart svg")).to_have_count(2)  # tokens and calls over time
    expect(page.get_by_role("table", name=re.compile("by model", re.I))).to_contain_text(MODEL)
    budget = page.get_by_role("table", name=re.compile("token limit", re.I))
    expect(budget.get_by_role("row", name=re.compile(TEAM))).to_contain_text(f"{100000 - tokens:,}")
    visits.take()

    # Signing out ends the provider's session too: the browser goes by its end-session endpoint.
    ended = oidc_provider.requests("/endsession")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile("/console/signin\\?signed_out=1$"))
    expect(page.get_by_role("status")).to_contain_text("signed out")
    assert oidc_provider.requests("/endsession") == ended + 1
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
    page.get_by_role("navigation", name=f"Team {TEAM}").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("table", name=re.compile(f"of team {TEAM}"))).to_contain_text("create_my_key")
    visits.take()
    for path in ("/console/teams", "/console/teams?view=overview", "/console/teams?view=audit"):
        answer = page.goto(runtime.admin_url + path)
        assert answer is not None and answer.status == 403, path
    assert len(visits.pages) == 5 and visits.holding(key) == []


# -- accessible and plain ----------------------------------------------------------------------

# Form controls without a name a screen reader can say, and whether the page is wider than the
# window (a table may scroll inside its own box; the page itself must not).
_AUDIT = """() => {
  const named = (el) => {
    const by = (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean)
      .map((id) => (document.getElementById(id) || {}).textContent || "").join(" ");
    const labels = [...(el.labels || [])].map((label) => label.textContent).join(" ");
    return (el.getAttribute("aria-label") || by || labels).trim() !== "";
  };
  const fields = [...document.querySelectorAll("input:not([type=hidden]), select, textarea")];
  const buttons = [...document.querySelectorAll("button, a[href], summary")];
  return {
    unlabelled: [...fields.filter((el) => !named(el)),
                 ...buttons.filter((el) => !named(el) && el.textContent.trim() === "")]
      .map((el) => el.outerHTML.slice(0, 160)),
    controls: fields.length + buttons.length,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  };
}"""


def audited(page: Page, path: str, runtime: Runtime) -> dict[str, Any]:
    answer = page.goto(runtime.admin_url + path)
    assert answer is not None and answer.ok, (path, answer and answer.status)
    found: dict[str, Any] = page.evaluate(_AUDIT)
    return found


def test_every_control_is_labelled_and_every_page_fits_a_desktop_and_a_phone(
        runtime: Runtime, chromium_browser: Browser, oidc_provider: OidcProvider) -> None:  # noqa: F811
    """Each page each role has, at 1280 px and at 390 x 844: no control without a name, and no
    page wider than the window. The new key's page too (made as the team admin, then left)."""
    platform = ("/console/teams?view=overview", "/console/teams", "/console/teams?view=audit",
                f"/console/teams/{TEAM}/delete", "/console/models")
    team = ("/console/keys", "/console/usage?range=7d", f"/console/teams/{TEAM}", f"/console/teams/{TEAM}?view=usage",
            f"/console/teams/{TEAM}?view=audit")
    problems: list[tuple[str, str, Any]] = []
    for viewport in (DESKTOP, PHONE):
        with fresh_context(chromium_browser, viewport=viewport) as context:
            page = context.new_page()
            checked = [("/console/signin", audited(page, "/console/signin", runtime))]
            sign_in_with_key(page, runtime)
            checked += [(path, audited(page, path, runtime)) for path in platform]
        with fresh_context(chromium_browser, viewport=viewport) as context:
            page = context.new_page()
            oidc_provider.login_as(sub="tara")
            page.goto(runtime.admin_url + "/console/signin/oidc")
            expect(page).to_have_url(re.compile("/console/keys$"))
            checked += [(path, audited(page, path, runtime)) for path in team]
            page.goto(runtime.admin_url + "/console/keys")
            page.get_by_label("Alias").fill(f"a11y-{viewport['width']}")
            page.get_by_role("button", name="Create key").click()
            expect(page.get_by_role("heading", name=re.compile("new key", re.I))).to_be_visible()
            checked.append(("(the new key's page)", page.evaluate(_AUDIT)))
            page.get_by_role("link", name=re.compile("^Done")).click()
        for path, found in checked:
            assert found["controls"] > 0, path
            if found["unlabelled"] or found["overflow"] > 0:
                problems.append((f"{viewport['width']}px", path, found))
    assert problems == []


def tab_to(page: Page, name: str, *, role: str | None = None, limit: int = 80) -> None:
    """Press Tab until the focus is on the control named `name` (its label, its text or its
    aria-label): that it can be reached by the keyboard at all, in the page's order."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => { const el = document.activeElement;
            const label = el.labels && el.labels.length ? el.labels[0].textContent : "";
            const shown = el.cloneNode(true);  // its words as read out: without what is aria-hidden
            shown.querySelectorAll("[aria-hidden=true]").forEach((hidden) => hidden.remove());
            return [el.tagName.toLowerCase(), (el.getAttribute("aria-label") || label || shown.textContent).trim()]; }""")
        if focused[1] == name and (role is None or focused[0] == role):
            return
    raise AssertionError(f"{name!r} is not reached with Tab on {page.url}")


def enter(page: Page) -> None:
    """Enter on the focused link or field, and the page it leads to loaded."""
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_the_main_flows_work_with_the_keyboard_alone_and_show_the_apis_errors_as_they_are(
        runtime: Runtime, browser: BrowserContext) -> None:
    page = browser.new_page()
    visits = Visits(page)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(runtime.admin_url + "/console/signin")
    tab_to(page, "Admin key")
    page.keyboard.type(ADMIN_KEY)
    enter(page)
    expect(page).to_have_url(re.compile("/console/keys$"))

    tab_to(page, "Teams", role="a")
    enter(page)
    expect(page).to_have_url(re.compile("/console/teams$"))
    # A window the API refuses: its message on the page, word for word as the API says it.
    body = {"team_id": "kb-team", "token_limit": 1000, "time_window": "soon", "limit_scope": "user"}
    with httpx.Client(base_url=runtime.admin_url, verify=False, headers={"Authorization": f"ADMIN {ADMIN_KEY}"}) as api:
        said = api.post("/teams", json=body)
    assert said.status_code == 422
    tab_to(page, "Team id")
    page.keyboard.type("kb-team")
    tab_to(page, "Token limit")
    page.keyboard.press("Control+A")
    page.keyboard.type("1000")
    tab_to(page, "Per")
    page.keyboard.press("Control+A")
    page.keyboard.type("soon")
    enter(page)
    expect(page.get_by_role("alert")).to_have_text(re.compile(re.escape(f"The API answered 422: {said.json()['error']}")))
    tab_to(page, "Per")
    page.keyboard.press("Control+A")
    page.keyboard.type("1h")
    enter(page)
    expect(page).to_have_url(re.compile("/console/teams/kb-team$"))

    tab_to(page, "Issue a key", role="summary")
    page.keyboard.press("Enter")  # opens it
    tab_to(page, "User id", role="input")
    page.keyboard.type("kim")
    enter(page)
    key = copy_new_key(page, by_keyboard=True)
    tab_to(page, "Done: I have copied it")
    enter(page)
    expect(page).to_have_url(re.compile("/console/teams/kb-team$"))
    visits.take()
    handle = page.get_by_role("row", name=re.compile("kim")).locator("code").first.inner_text()
    tab_to(page, f"Revoke key {handle}")
    enter(page)
    expect(page.get_by_role("status")).to_contain_text("revoked")
    visits.take()

    # A table sorted by keyboard: the keys by status, then the other way round.
    tab_to(page, "Status (sort ascending)")
    enter(page)
    expect(page.get_by_role("columnheader", name=re.compile("^Status"))).to_have_attribute("aria-sort", "ascending")
    tab_to(page, "Status (sorted ascending; sort descending)")
    enter(page)
    expect(page.get_by_role("columnheader", name=re.compile("^Status"))).to_have_attribute("aria-sort", "descending")

    # The team's audit log, filtered with the keyboard (a select takes the letters typed).
    tab_to(page, "Audit log", role="a")
    tab_to(page, "Audit log", role="a")  # the second: the team's own tab, after the console's
    enter(page)
    tab_to(page, "Action")
    page.keyboard.type("revoke_key")
    tab_to(page, "Filter")
    enter(page)
    expect(page.get_by_role("table", name=re.compile("1 entry of team kb-team"))).to_contain_text("revoke_key")
    visits.take()

    tab_to(page, "Sign out")
    enter(page)
    expect(page).to_have_url(re.compile("/console/signin\\?signed_out=1$"))
    assert visits.holding(key) == []

