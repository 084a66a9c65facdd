"""The console shows a team's limits where they exist (issue 16): every rate of a team, edited as
one rate a line in the form the stores keep; a key's own limits; explain (which limit binds, and
whether a call would be admitted now) for the team's admins; a member's budget over every limit
that applies to them; and what-if (simulate) for platform admins.

Page-level tests use tests/test_console_pages.py's client (in this process, a clock the test
moves, a ledger the test writes); one real-browser test drives Chromium against the real runtime
(tests/test_console_browser.py's fixtures) until the gateway refuses for a per-minute rate, then
reads the same limit marked binding in the explain panel.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

from playwright.sync_api import Browser, BrowserContext, expect

from shared.ratespec import spec_text
from tests.browser import PHONE, fresh_context
from tests.oidc_provider import oidc_provider  # noqa: F401 - the runtime's identity provider
from tests.runtime import Runtime
from tests.test_console_browser import (  # noqa: F401
    audited, browser, chat, chromium_browser, copy_new_key, runtime, sign_in_with_key)
from tests.test_console_pages import NOW, Console, console, csrf_of, table, text_of  # noqa: F401

MODEL = "vllm-simulator"  # a model of the catalog: the API refuses a rate on any other
RATES = [
    {"name": "tokens", "limit": 100000, "window": "1h"},
    {"name": "daily", "limit": 500, "window": "1d", "scope": "team"},
    {"name": "rpm", "limit": 3, "window": "1m", "unit": "requests"},
]


def _team(console: Console, limits: list[dict[str, Any]]) -> None:
    """Team alpha with these rates: tara its admin, mona a member with a key of her own limits."""
    with console.api() as api:
        assert api.post("/teams", json={"team_id": "alpha", "limits": limits}).status_code == 201
        assert api.post("/teams/alpha/members", json={"user_id": "tara", "role": "admin"}).status_code == 201
        made = api.post("/teams/alpha/keys", json={
            "user_id": "mona", "alias": "narrow", "max_concurrent": 2,
            "limits": [{"name": "key-rpm", "limit": 5, "window": "1m", "unit": "requests"}]})
        assert made.status_code == 201, made.text


def _lines(rates: list[dict[str, Any]]) -> str:
    """One SPEC a line, as maas shows rates: what the edit form shows and takes."""
    return "\n".join(spec_text(rate) for rate in rates)


def _textarea(html: str, name: str) -> str:
    found = re.search(rf'<textarea id="{name}"[^>]*>(.*?)</textarea>', html, re.S)
    assert found, text_of(html)[:1500]
    return unescape(found.group(1))


def test_a_team_page_lists_every_rate_and_a_platform_admin_edits_them_one_a_line(console: Console) -> None:
    _team(console, RATES[:2])
    with console.browser() as admin:
        page = admin.get("/console/teams/alpha")
        assert table(page.text, "2 rate(s)") == [["tokens", "tokens", "100,000", "1h", "each user", "every model"],
                                                 ["daily", "tokens", "500", "24h", "the whole team", "every model"]]
        with console.api() as api:
            stored = api.get("/teams/alpha").json()["limits"]
        assert _textarea(page.text, "edit-rates") == _lines(stored)

        assert _textarea(page.text, "edit-rates") == "tokens=100000/1h\ndaily=500/24h,scope=team"
        edited = _lines(stored) + "\n\n  rpm=requests:3/1m  \n"
        saved = admin.post("/console/teams/alpha", data={"csrf": csrf_of(page.text), "limits": edited})
        assert saved.status_code == 303
        after = admin.get("/console/teams/alpha")
        assert "Team alpha updated." in text_of(after.text)
        assert [row[0] for row in table(after.text, "3 rate(s)")] == ["tokens", "daily", "rpm"]
        with console.api() as api:
            assert [r["name"] for r in api.get("/teams/alpha").json()["limits"]] == ["tokens", "daily", "rpm"]

        # A line that is no SPEC is not sent, and the page says which and why.
        typed = "tokens=100000/1h\ntokens 100 per hour"
        shown = admin.post("/console/teams/alpha", data={"csrf": csrf_of(after.text), "limits": typed})
        assert shown.status_code == 422
        assert ("Not sent: line 2, 'tokens 100 per hour': no NAME=; write each rate as NAME=[UNIT:]LIMIT/WINDOW"
                in text_of(shown.text))
        assert _textarea(shown.text, "edit-rates") == typed
        # The API judges the values, and its words are shown as they are: a window it refuses,
        # and a list with no token rate over every model.
        for text, body in (("tokens=100/1fortnight", [{"name": "tokens", "limit": 100, "window": "1fortnight",
                                                        "unit": "tokens"}]),
                           ("rpm=requests:3/1m", [{"name": "rpm", "limit": 3, "window": "1m", "unit": "requests"}])):
            with console.api() as api:
                said = api.patch("/teams/alpha", json={"limits": body})
            assert said.status_code == 422
            shown = admin.post("/console/teams/alpha", data={"csrf": csrf_of(after.text), "limits": text})
            assert shown.status_code == 422
            assert f"The API answered 422: {said.json()['error']}" in text_of(shown.text)
            assert _textarea(shown.text, "edit-rates") == text  # what was typed, to correct
        with console.api() as api:
            assert len(api.get("/teams/alpha").json()["limits"]) == 3
        # The short form still edits the primary rate, the others kept.
        assert admin.post("/console/teams/alpha", data={"csrf": csrf_of(after.text), "token_limit": "7000",
                                                        "time_window": "1h", "limit_scope": "user"}).status_code == 303
        assert table(admin.get("/console/teams/alpha").text, "3 rate(s)")[0][:3] == ["tokens", "tokens", "7,000"]
        # Without the session's CSRF token the rates are not changed.
        assert admin.post("/console/teams/alpha", data={"limits": _lines(RATES[:1])}).status_code == 403


def test_key_rows_show_a_keys_own_limits_and_a_team_admin_reads_the_rates_only(console: Console) -> None:
    _team(console, RATES)
    with console.browser("tara") as tara:
        page = tara.get("/console/teams/alpha")
        assert page.status_code == 200
        keys = table(page.text, "1 key(s)")
        assert keys[0][0] == "mona" and keys[0][8] == "key-rpm: 5 requests per 1m at most 2 call(s) at once"
        assert len(table(page.text, "3 rate(s)")) == 3
        assert 'id="edit-rates"' not in page.text and "/limits/simulate" not in page.text
        assert "A platform admin sets a team's limits." in text_of(page.text)
        # Her own role cannot save rates either: the API's refusal, as it said it.
        refused = tara.post("/console/teams/alpha", data={"csrf": csrf_of(page.text), "limits": _lines(RATES[:1])})
        assert refused.status_code == 403 and "platform admin" in text_of(refused.text)


def _gateway_counters(spent: dict[str, tuple[int, int, int]]) -> Any:
    """The gateway's counters as explain reads them (Context.counters): by the rate's name in
    the counter's key; any other counter is untouched."""
    def read(keys: list[tuple[str, int]]) -> list[tuple[int, int, int]]:
        return [next((v for name, v in spent.items() if f"/r/{name}/" in key), (0, 0, 0)) for key, _ in keys]
    return read


def test_explain_marks_the_binding_limit_and_says_whether_a_call_is_admitted(console: Console) -> None:
    _team(console, [*RATES, {"name": "big-tokens", "limit": 50, "window": "1h", "model": MODEL}])
    with console.browser("tara") as tara:
        asked = "/console/teams/alpha?explain_user=mona"
        # Without the gateway's counters (a cluster's are Limitador's): the limits, said plainly so.
        words = text_of(tara.get(asked).text)
        assert "Counters unavailable:" in words and "whether a call would be admitted now is not known" in words
        rows = table(tara.get(asked).text, "4 limit(s) on calls of mona to any model")
        assert [row[0] for row in rows] == ["tokens", "daily", "rpm", "big-tokens"]
        assert all(row[6:11] == ["—", "—", "—", "—", "—"] for row in rows)

        console.ctx.counters = _gateway_counters({"rpm": (3, 0, 42_000), "daily": (120, 10, 0)})
        page = tara.get(asked)
        rows = {row[0]: row for row in table(page.text, "4 limit(s) on calls of mona to any model")}
        assert rows["rpm"][6:] == ["3", "0", "0", "in 42 s", "binding: exhausted"]
        assert rows["daily"][6:] == ["120", "10", "370", "no window open (the next call opens one)", "—"]
        assert "would not be admitted: limit rpm is exhausted" in text_of(page.text)

        console.ctx.counters = _gateway_counters({"big-tokens": (45, 0, 3_725_000)})
        page = tara.get(asked + f"&explain_model={MODEL}")
        rows = {row[0]: row for row in table(page.text, f"4 limit(s) on calls of mona to {MODEL}")}
        assert rows["big-tokens"][9:] == ["in 1 h 2 min 5 s", "binding"]  # the least left of itself
        assert "would be admitted; the binding limit is big-tokens" in text_of(page.text)
        # Another model's calls do not meet the per-model rate.
        other = table(tara.get(asked + "&explain_model=m-small").text, "3 limit(s) on calls of mona to m-small")
        assert [row[0] for row in other] == ["tokens", "daily", "rpm"]
        # The members to choose from, and the API's refusal of a user it cannot explain, as it is.
        assert re.search(r'<option value="mona">mona</option>', tara.get("/console/teams/alpha").text)
        bad = tara.get("/console/teams/alpha?explain_user=Not%20Valid")
        assert "The API answered 422" in text_of(bad.text)


def test_my_budget_shows_every_limit_that_applies_with_the_binding_one_marked(console: Console) -> None:
    _team(console, [*RATES, {"name": "big-tokens", "limit": 50, "window": "1h", "model": MODEL}])
    console.use("alpha", "mona", MODEL, NOW - timedelta(minutes=10), 40, calls=2)
    console.use("alpha", "mona", "m-small", NOW - timedelta(seconds=30), 30, calls=1)
    console.use("alpha", "tara", "m-small", NOW - timedelta(minutes=5), 300, calls=1)  # the team's, not mona's
    console.use("alpha", "mona", "m-small", NOW - timedelta(hours=2), 9000)  # outside every window but a day's
    with console.browser("mona") as mona:
        page = mona.get("/console/usage")
        rows = table(page.text, "Every token limit and request limit that applies to you")
        assert [row[:2] for row in rows] == [["alpha (alpha)", "tokens"], ["alpha (alpha)", "daily"],
                                             ["alpha (alpha)", "rpm"], ["alpha (alpha)", "big-tokens"]]
        by_name = {row[1]: row for row in rows}
        assert by_name["tokens"][7] == "70" and by_name["daily"][7] == "9,370"  # the team's day, everyone's
        assert by_name["rpm"][7] == "1" and by_name["big-tokens"][7] == "40"
        assert by_name["daily"][11] == "binding: exhausted"
        assert [row[11] for row in rows].count("—") == 3
        assert "counters unavailable here: each limit is counted from the usage ledger" in text_of(page.text)

        console.ctx.counters = _gateway_counters({"rpm": (1, 1, 20_000)})
        live = text_of(mona.get("/console/usage").text)
        assert "a call now would be admitted (the gateway's counters)" in live


def test_what_if_replays_the_recorded_calls_against_rates_typed_one_a_line(console: Console) -> None:
    _team(console, RATES[:1])
    for minute in range(4):
        console.use("alpha", "mona", MODEL, NOW - timedelta(hours=1, minutes=minute), 10)
    console.use("alpha", "tara", MODEL, NOW - timedelta(hours=1), 10)
    proposed = _lines([RATES[0], {"name": "hourly", "limit": 2, "window": "1h", "unit": "requests"}])
    with console.api() as api:
        said = api.post("/teams/alpha/limits/simulate", json={"limits": [RATES[2]]})
    with console.browser() as admin:
        page = admin.get("/console/teams/alpha")
        assert _textarea(page.text, "whatif-rates") == _lines(RATES[:1])  # the team's rates, to change
        answer = admin.post("/console/teams/alpha/limits/simulate", data={"csrf": csrf_of(page.text), "limits": proposed})
        assert answer.status_code == 200
        words = text_of(answer.text)
        assert "of 5 call(s) (50 tokens), the proposed rates would have refused 2 call(s) (20 tokens): hourly 2." in words
        assert table(answer.text, "What the proposed rates would have refused, by user") == [
            ["mona", "4", "40", "2", "20", "hourly: 2"], ["tara", "1", "10", "0", "0", "—"]]
        assert _textarea(answer.text, "whatif-rates") == proposed
        # A range: only what was recorded in it.
        later = admin.post("/console/teams/alpha/limits/simulate", data={
            "csrf": csrf_of(page.text), "limits": proposed, "start": f"{NOW - timedelta(minutes=60):%Y-%m-%dT%H:%M}",
            "end": f"{NOW:%Y-%m-%dT%H:%M}"})
        assert "of 2 call(s) (20 tokens), the proposed rates would have refused 0 call(s)" in text_of(later.text)
        # The API's refusal, as it is: no token rate over every model.
        bad = admin.post("/console/teams/alpha/limits/simulate",
                         data={"csrf": csrf_of(page.text), "limits": _lines([RATES[2]])})
        assert bad.status_code == said.status_code == 422
        assert f"The API answered 422: {said.json()['error']}" in text_of(bad.text)
        with console.api() as api:  # nothing changed
            assert [r["name"] for r in api.get("/teams/alpha").json()["limits"]] == ["tokens"]
        assert admin.post("/console/teams/alpha/limits/simulate", data={"limits": proposed}).status_code == 403


# -- in a real browser, against the real gateway ---------------------------------------------

BROWSER_TEAM = "rates-team"
BROWSER_MODEL = "qwen3-0-6b-instruct"

BROWSER_RATES = [
    {"name": "tokens", "limit": 100000, "window": "1h"},
    {"name": "daily", "limit": 1000000, "window": "1d", "scope": "team"},
    {"name": "rpm", "limit": 3, "window": "1m", "unit": "requests"},
]


def test_the_explain_panel_marks_the_rate_the_gateway_refused_for(runtime: Runtime, browser: BrowserContext,  # noqa: F811
                                                                   chromium_browser: Browser) -> None:  # noqa: F811
    page = browser.new_page()
    sign_in_with_key(page, runtime)
    page.goto(runtime.admin_url + "/console/teams")
    page.get_by_label("Team id").fill(BROWSER_TEAM)
    page.get_by_role("button", name="Create team").click()
    expect(page).to_have_url(re.compile(f"/console/teams/{BROWSER_TEAM}$"))
    page.get_by_text("Edit every rate").click()
    page.get_by_label("The team's rates, one a line").fill(_lines(BROWSER_RATES))
    page.get_by_role("button", name="Save rates").click()
    expect(page.get_by_role("status")).to_contain_text(f"Team {BROWSER_TEAM} updated")
    rates = page.get_by_role("table", name=re.compile("^3 rate\\(s\\)"))
    expect(rates.get_by_role("row", name=re.compile("^rpm"))).to_contain_text("requests")

    page.get_by_text("Issue a key").click()
    form = page.locator(f"form[action='/console/teams/{BROWSER_TEAM}/keys']")
    form.get_by_label("User id").fill("ria")
    form.get_by_role("button", name="Issue key").click()
    key = copy_new_key(page)
    page.get_by_role("link", name=re.compile("^Done")).click()

    answers = [chat(runtime, key) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429], answers[-1].text
    refused_by = answers[-1].json()["error"]["limit"]["name"]
    assert refused_by == "rpm"

    asking = page.get_by_role("form", name="Explain a member's limits")
    asking.get_by_label("Member").select_option("ria")
    asking.get_by_label("Model").select_option(BROWSER_MODEL)
    asking.get_by_role("button", name="Explain").click()
    explained = page.get_by_role("table", name=re.compile(f"limit\\(s\\) on calls of ria to {BROWSER_MODEL}"))
    expect(explained.get_by_role("row", name=re.compile(f"^{refused_by} "))).to_contain_text("binding: exhausted")
    expect(explained.get_by_text(re.compile("^binding"))).to_have_count(1)
    expect(page.locator(".verdict")).to_contain_text(f"would not be admitted: limit {refused_by} is exhausted")

    # The panel and the what-if form, labelled and within the window at 1280 px and on a phone.
    here = f"/console/teams/{BROWSER_TEAM}?explain_user=ria"
    found = [audited(page, here, runtime)]
    with fresh_context(chromium_browser, viewport=PHONE) as phone_context:
        phone = phone_context.new_page()
        sign_in_with_key(phone, runtime)
        found.append(audited(phone, here, runtime))
    assert [(f["unlabelled"], f["overflow"] > 0) for f in found] == [([], False), ([], False)]
    assert key not in page.content()
