"""The console's pages over plain HTTP, in this process (httpx on the local admin app, a clock the
test moves, a usage ledger the test writes): who sees which page, the audit log's filters and
pages, usage over a chosen range, and tables paged and sorted on the server, at 100,000 keys too.

People sign in as the console's sessions hold them (a SignedIn in a server-side session): the
admin key through the form, and people of an identity provider by a session made here, since
what they may see follows from who they are and the store's memberships, not from how the
session was made (the provider round trip itself: tests/test_console_browser.py).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from functions._context import install_context, reset_context
from functions.console.sessions import COOKIE, SESSIONS
from local.admin import create_admin_app
from shared.context import Context, build_context
from shared.identity import Identity
from shared.keymaterial import generate_admin_key
from shared.ledger import UsageLedger
from shared.settings import Settings
from shared.signin import SignedIn
from shared.store.sqlite import SqliteStore
from tests.records import ManualClock

ADMIN_KEY = generate_admin_key()
NOW = datetime(2025, 8, 25, 12, 30, tzinfo=timezone.utc)


@dataclass
class Console:
    ctx: Context
    clock: ManualClock
    ledger: UsageLedger

    def api(self) -> httpx.Client:
        """The admin API itself, with the admin key: to set things up, and to compare answers."""
        return httpx.Client(transport=httpx.WSGITransport(app=create_admin_app()), base_url="https://console.test",
                            headers={"Authorization": f"ADMIN {ADMIN_KEY}"})

    @contextmanager
    def browser(self, who: str | None = None) -> Iterator[httpx.Client]:
        """A browser signed in: as the admin key (None) or as `who` of the identity provider."""
        with httpx.Client(transport=httpx.WSGITransport(app=create_admin_app()),
                          base_url="https://console.test") as client:
            self._sign_in(client, who)
            yield client

    def _sign_in(self, client: httpx.Client, who: str | None) -> None:
        if who is None:
            form = client.get("/console/signin")
            answer = client.post("/console/signin", data={"csrf": csrf_of(form.text), "admin_key": ADMIN_KEY})
            assert answer.status_code == 303, answer.text
        else:
            signed = SignedIn(Identity(subject=who, method="oidc", issuer="https://idp.test"), platform_admin=False)
            session_id, _ = SESSIONS.start(self.clock(), signed=signed, ttl=timedelta(hours=8))
            client.cookies.set(COOKIE, session_id, domain="console.test")

    def use(self, team_id: str, user_id: str, model: str, at: datetime, tokens: int, calls: int = 1,
            limited: int = 0) -> None:
        self.ledger.record(team_id=team_id, user_id=user_id, model=model, tokens=tokens, authorized_calls=calls,
                           limited_calls=limited, at=at.timestamp())


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    ledger = UsageLedger(tmp_path / "usage.db")
    ctx = build_context(Settings(data_dir=tmp_path, admin_key=SecretStr(ADMIN_KEY)), ledger=ledger)
    ctx.clock = clock = ManualClock(NOW)
    install_context(ctx)
    try:
        yield Console(ctx, clock, ledger)
    finally:
        reset_context()
        ledger.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def text_of(html: str) -> str:
    """The page's words, tags dropped, spaces squeezed: what a reader sees."""
    html = re.sub(r"<svg.*?</svg>", " ", html, flags=re.S)
    html = re.sub(r"</?(code|span|strong|em|a)\b[^>]*>", "", html)  # inline: no space in its place
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def table(html: str, caption: str) -> list[list[str]]:
    """The body rows of the table whose caption starts with `caption`, as cell texts."""
    found = re.search(r"<table>\s*<caption>" + re.escape(caption) + r".*?</caption>(.*?)</table>", html, re.S)
    assert found, f"no table {caption!r} in {text_of(html)[:1500]}"
    body = found.group(1).split("<tbody>")[1]
    return [[text_of(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def nav_links(html: str) -> list[str]:
    nav = re.search(r'<nav aria-label="Console">(.*?)</nav>', html, re.S)
    assert nav, html[:1500]
    return [text_of(label) for label in re.findall(r"<a [^>]*>(.*?)</a>", nav.group(1), re.S)]


def setup_teams(console: Console) -> None:
    """Teams alpha (tara admin, mona member) and beta (bob admin), a key each for mona and bob."""
    with console.api() as api:
        for team_id in ("alpha", "beta"):
            answer = api.post("/teams", json={"team_id": team_id, "token_limit": 100000, "time_window": "1h"})
            assert answer.status_code == 201, answer.text
        for team_id, user_id, role in (("alpha", "tara", "admin"), ("alpha", "mona", "member"), ("beta", "bob", "admin")):
            assert api.post(f"/teams/{team_id}/members", json={"user_id": user_id, "role": role}).status_code == 201
        for team_id, user_id in (("alpha", "mona"), ("beta", "bob")):
            assert api.post(f"/teams/{team_id}/keys", json={"user_id": user_id, "alias": "k"}).status_code == 201


PLATFORM_PAGES = ("/console/teams", "/console/teams?view=overview", "/console/teams?view=audit",
                  "/console/teams?view=audit&team_id=alpha")
ALPHA_PAGES = ("/console/teams/alpha", "/console/teams/alpha?view=usage", "/console/teams/alpha?view=audit")
EVERYONE = ("/console/keys", "/console/usage", "/console/models")


def test_each_role_sees_only_its_pages(console: Console) -> None:
    setup_teams(console)
    expected = {
        None: dict.fromkeys(EVERYONE + PLATFORM_PAGES + ALPHA_PAGES, 200),
        "tara": {**dict.fromkeys(EVERYONE + ALPHA_PAGES, 200), **dict.fromkeys(PLATFORM_PAGES, 403)},
        "bob": {**dict.fromkeys(EVERYONE, 200), **dict.fromkeys(PLATFORM_PAGES + ALPHA_PAGES, 403)},
        "mona": {**dict.fromkeys(EVERYONE, 200), **dict.fromkeys(PLATFORM_PAGES + ALPHA_PAGES, 403)},
    }
    links = {
        None: ["My keys", "My usage", "Models", "Overview", "Teams", "Audit log"],
        "tara": ["My keys", "My usage", "Models", "Team alpha"],
        "bob": ["My keys", "My usage", "Models", "Team beta"],
        "mona": ["My keys", "My usage", "Models"],
    }
    for who, pages in expected.items():
        with console.browser(who) as browser:
            assert nav_links(browser.get("/console/keys").text) == links[who], who
            for path, status in pages.items():
                answer = browser.get(path)
                assert answer.status_code == status, (who, path, text_of(answer.text)[:600])
                if status == 403:
                    # The API's refusal, as it said it, and none of the page's content.
                    assert "a platform admin" in text_of(answer.text), (who, path)
                    assert "<table" not in answer.text and "Filter" not in text_of(answer.text), (who, path)


def _entries(html: str) -> list[list[str]]:
    return table(html, "") if "<tbody>" in html else []


def test_a_team_admin_reads_their_teams_audit_entries_filtered_and_paged(console: Console) -> None:
    setup_teams(console)
    with console.api() as api:
        for n in range(30):  # 30 members of alpha more: 30 add_member entries, newest last
            console.clock.advance(minutes=1)
            assert api.post("/teams/alpha/members", json={"user_id": f"user{n:02d}"}).status_code == 201
        api.post("/teams/beta/members", json={"user_id": "beta-only"})
        assert api.post("/teams/alpha/members", json={"user_id": "Not Valid!"}).status_code == 422
    with console.browser("tara") as tara:
        first = tara.get("/console/teams/alpha?view=audit&action=add_member")
        rows = table(first.text, "25 entries of team alpha")
        assert len(rows) == 25
        assert all(row[2] == "add_member" and row[4] in ("201", "422") for row in rows)
        assert rows[1][3] == "POST /teams/alpha/members" and rows[1][1] == "admin-key"
        assert "beta" not in text_of(first.text).replace("Team alpha", "")
        older = re.search(r'href="([^"]+cursor=[0-9]+[^"]*)">Older entries', first.text)
        assert older, "a next page"
        second = tara.get(unescape(older.group(1)))
        more = table(second.text, "")
        # The next page goes on where the first stopped: the oldest add_member entries, none twice.
        assert len(rows) + len(more) == 2 + 30 + 1 and all(row[2] == "add_member" for row in more)
        failed = table(tara.get("/console/teams/alpha?view=audit&outcome=failure").text, "1 entry")
        assert failed[0][2:5] == ["add_member", "POST /teams/alpha/members", "422"]
        # Someone else's team is not theirs to read, even by asking the whole log for it.
        assert tara.get("/console/teams/beta?view=audit").status_code == 403
        assert tara.get("/console/teams?view=audit&team_id=beta").status_code == 403


def test_the_platform_audit_log_filters_by_team_and_time_and_shows_the_apis_own_refusal(console: Console) -> None:
    setup_teams(console)
    with console.api() as api:
        assert api.patch("/teams/alpha", json={"token_limit": 700}).status_code == 200
        console.clock.advance(hours=1)
        later = console.clock()
        assert api.patch("/teams/beta", json={"token_limit": 500}).status_code == 200
        refused = api.get("/audit", params={"since": "yesterday"})
    with console.browser() as admin:
        rows = table(admin.get("/console/teams?view=audit&team_id=beta").text, "")
        assert rows and {row[5] for row in rows} == {"beta"}
        updates = table(admin.get("/console/teams?view=audit&action=update_team").text, "")
        assert [row[5] for row in updates] == ["beta", "alpha"]  # newest first
        recent = table(admin.get(f"/console/teams?view=audit&action=update_team&since={later:%Y-%m-%dT%H:%M}").text, "")
        assert [row[5] for row in recent] == ["beta"]
        assert "token_limit: 100000 → 500" in recent[0][7]
        page = admin.get("/console/teams?view=audit&since=yesterday")
        assert page.status_code == 200 and refused.status_code == 422
        assert f"The API answered 422: {refused.json()['error']}" in text_of(page.text)


def test_team_usage_over_a_chosen_range_by_user_and_by_model(console: Console) -> None:
    setup_teams(console)
    start = datetime(2025, 8, 20, 0, 0, tzinfo=timezone.utc)
    console.use("alpha", "mona", "m-small", start + timedelta(hours=1), 100, calls=2)
    console.use("alpha", "mona", "m-large", start + timedelta(hours=30), 50, calls=1, limited=1)
    console.use("alpha", "tara", "m-small", start + timedelta(hours=47), 300, calls=3)
    console.use("alpha", "tara", "m-small", start - timedelta(minutes=5), 9000)  # before the range
    console.use("alpha", "omar", "m-small", start + timedelta(hours=48, minutes=1), 7000)  # after it
    console.use("beta", "bob", "m-small", start + timedelta(hours=2), 4000)  # another team
    with console.browser("tara") as tara:
        page = tara.get("/console/teams/alpha?view=usage&start=2025-08-20T00:00&end=2025-08-22T00:00")
        words = text_of(page.text)
        assert "In 2025-08-20 00:00 to 2025-08-22 00:00 UTC" in words
        assert re.search(r"Tokens 450 Calls 6 Refused for the limit \(429\) 1", words), words[:800]
        assert table(page.text, "By user")[:2] == [["tara", "—", "300", "3", "0"], ["mona", "—", "150", "3", "1"]]
        assert table(page.text, "By model") == [["m-small", "400", "5", "0"], ["m-large", "50", "1", "1"]]
        # 48 hourly buckets; the chart's numbers by user, summing to the range's total.
        buckets = table(page.text, "Team tokens per hour and user")
        assert len(buckets) == 48 and sum(int(cell) for row in buckets for cell in row[1:]) == 450
        by_name = tara.get("/console/teams/alpha?view=usage&start=2025-08-20T00:00&end=2025-08-22T00:00"
                           "&users_sort=user_id&users_order=asc")
        assert [row[0] for row in table(by_name.text, "By user")] == ["mona", "tara"]
        backwards = tara.get("/console/teams/alpha?view=usage&start=2025-08-22T00:00&end=2025-08-20T00:00")
        assert "From must be before To; showing the last 24h instead." in text_of(backwards.text)


def test_my_usage_shows_tokens_and_calls_by_model_over_a_chosen_range(console: Console) -> None:
    setup_teams(console)
    day = datetime(2025, 8, 10, tzinfo=timezone.utc)
    console.use("alpha", "mona", "m-small", day + timedelta(hours=3), 120, calls=4)
    console.use("alpha", "mona", "m-large", day + timedelta(hours=3, minutes=30), 80, calls=1)
    console.use("alpha", "mona", "m-large", day + timedelta(days=2), 5000, calls=9)  # outside
    console.use("alpha", "tara", "m-small", day + timedelta(hours=3), 777, calls=7)  # someone else
    with console.browser("mona") as mona:
        page = mona.get("/console/usage?start=2025-08-10T00:00&end=2025-08-11T00:00")
        words = text_of(page.text)
        assert re.search(r"Tokens 200 Calls 5 Refused", words), words[:600]
        tokens = table(page.text, "My tokens per hour and model")
        calls = table(page.text, "My calls per hour and model")
        assert len(tokens) == len(calls) == 24
        assert tokens[3] == ["03:00", "80", "120"] and calls[3] == ["03:00", "1", "4"]  # m-large, m-small
        assert sum(int(c) for row in calls for c in row[1:]) == 5
        assert table(page.text, "Tokens and calls by model") == [["m-small", "120", "4", "0"], ["m-large", "80", "1", "0"]]
        assert "My calls per hour, by model" in page.text  # the calls chart's own title, in its SVG


def test_the_overview_sums_every_team_top_teams_users_and_refused_calls(console: Console) -> None:
    setup_teams(console)
    hour = NOW.replace(minute=0) - timedelta(hours=2)
    console.use("alpha", "mona", "m-small", hour, 100, calls=2, limited=3)
    console.use("alpha", "tara", "m-small", hour + timedelta(minutes=10), 50)
    console.use("beta", "bob", "m-large", hour + timedelta(hours=1), 400, calls=4)
    console.use("beta", "mona", "m-large", hour + timedelta(hours=1), 25)
    with console.browser() as admin:
        page = admin.get("/console/teams?view=overview")
        words = text_of(page.text)
        assert re.search(r"In the last 24h Tokens 575 Calls 8 Refused for the limit \(429\) 3", words), words[:900]
        assert table(page.text, "Teams with calls") == [["beta", "beta", "425", "5", "0", "2"],
                                                        ["alpha", "alpha", "150", "3", "3", "2"]]
        users = table(page.text, "Users with calls")
        assert users[0] == ["bob", "400", "4", "0", "1"] and users[1] == ["mona", "125", "3", "3", "2"]
        per_hour = table(page.text, "Tokens per hour and team")
        assert [row for row in per_hour if row[1:] != ["0", "0"]] == [[f"{hour:%H:%M}", "150", "0"],
                                                                      [f"{hour + timedelta(hours=1):%H:%M}", "0", "425"]]
        assert "Calls refused for a limit (429) per hour" in page.text
        by_calls = admin.get("/console/teams?view=overview&teams_sort=limited_calls&teams_order=desc")
        assert [row[0] for row in table(by_calls.text, "Teams with calls")] == ["alpha", "beta"]


def test_short_lists_sort_by_any_column_either_way_a_page_at_a_time(console: Console) -> None:
    setup_teams(console)
    with console.api() as api:
        for n in range(40):
            assert api.post("/teams/beta/keys", json={"user_id": f"u{n % 7}", "alias": f"alias-{n:02d}"}).status_code == 201
    with console.browser("bob") as bob:
        first = bob.get("/console/teams/beta?keys_sort=alias&keys_order=desc")
        rows = table(first.text, "41 key(s)")
        assert [row[1] for row in rows] == ["k"] + [f"alias-{n:02d}" for n in range(39, 15, -1)]  # bob's "k" first
        assert 'aria-sort="descending"' in first.text and "Showing 1–25 of 41, page 1 of 2" in text_of(first.text)
        second = bob.get(unescape(re.search(r'href="([^"]+)">Next page', first.text).group(1)))
        assert [row[1] for row in table(second.text, "41 key(s)")] == [f"alias-{n:02d}" for n in range(15, -1, -1)]
        by_user = table(bob.get("/console/teams/beta?keys_sort=user_id&keys_order=asc").text, "41 key(s)")
        assert [row[0] for row in by_user] == sorted(row[0] for row in by_user) and by_user[0][0] == "bob"


def _load_keys(console: Console, team_id: str, count: int) -> None:
    """`count` keys in one team, written straight into the store's SQLite tables: one transaction
    (a create_key each would take minutes). Their hashes are random: no key of theirs exists."""
    with console.api() as api:
        assert api.post("/teams", json={"team_id": team_id, "token_limit": 1000, "time_window": "1h"}).status_code == 201
    path = console.ctx.settings.database_path
    SqliteStore(path).close()
    at = NOW.isoformat()
    rows = [(f"apikey-u{n:06d}-{team_id}-{n:08x}", secrets.token_hex(32), team_id, f"u{n:06d}", "", "member",
             "active", "", f"k{n:06d}", at) for n in range(count)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO api_keys (secret_name, key_sha256, team_id, user_id, user_email, role, status, "
                         "models_allowed, alias, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        # As bench/loader.py does: the change log no longer reaches back, so readers read anew.
        conn.execute("DELETE FROM changes")
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_100k_keys_reach_the_browser_a_page_at_a_time(console: Console) -> None:
    _load_keys(console, "big", 100_000)
    with console.browser() as admin:
        # Asked for a sort the API cannot give at this size: its own order, and the page says why.
        first = admin.get("/console/teams/big?keys_sort=alias&keys_order=desc")
        assert first.status_code == 200
        handles = re.findall(r"<code>(apikey-u\d{6}-big-[0-9a-f]{8})</code>", first.text)
        assert handles == [f"apikey-u{n:06d}-big-{n:08x}" for n in range(25)]
        words = text_of(first.text)
        assert "100,000 key(s)" in words and "Showing 25 of 100,000" in words
        assert "more than the 1,000 the console sorts itself, so they are in the API's order, by handle" in words
        assert len(first.content) < 150_000, "one page of keys, not the list"
        second = admin.get(unescape(re.search(r'href="([^"]+)">Next page', first.text).group(1)))
        assert re.findall(r"<code>(apikey-u\d{6}-big-[0-9a-f]{8})</code>", second.text)[:25] == \
            [f"apikey-u{n:06d}-big-{n:08x}" for n in range(25, 50)]
        assert "First page" in second.text
