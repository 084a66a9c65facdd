"""Hostile review of this session's work: GET /usage and `step` on a user's usage, the rate SPEC
text (maas --limit and the console's rate forms), explain reading Limitador's HTTP API, a key's
own budgets across rotations, and a team's key counts and pages from the store.

A hostile or careless client, a Limitador answering garbage, a long-running deployment. Each
test asserts what a user would expect. The review found eight bugs, fixed with these tests:
Limitador counters of the wrong type were a 500 in explain and the console's budget; a
Limitador trickling its answer held explain past its timeout; a deeply nested answer was
blamed on the client (400); a key whose successor was deleted could not be rotated again; a
series allowed 1001 points; a query of thousands of unknown parameters got a 238 kB 422; a
SPEC limit took "1_000", "+5" and other scripts' digits; a negative expiry read as a negative
reset. The rest are attacks that held.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from functions._context import context
from shared.ratespec import SpecError, parse_spec, spec_text
from tests.admin_client import DirectClient
from tests.oidc_provider import OidcProvider, oidc_provider  # noqa: F401
from tests.test_console_pages import Console, console, csrf_of, text_of  # noqa: F401
from tests.test_platform_usage import DAY, World, world  # noqa: F401

pytestmark = pytest.mark.timeout(60)


# -- GET /usage and step: a hostile client's query strings ---------------------------------------


@pytest.mark.parametrize("query", [
    "top=1000&window=24h&step=1h",
    "top=1000&window=1000m&step=1m",  # exactly 1000 points
    "window=99999h&step=99999h",
    "start=1970-01-01T00:00:00Z&window=1h&step=1m",
    "start=8999-12-31T00:00:00Z&step=1h",  # a start after now: an empty range or a 422
    "end=1970-01-01T00:00:01Z&window=99999h",
    "start=8999-12-31T23:00:00Z&window=99999h",
    "end=8999-12-31T23:59:59Z&start=1970-01-01T00:00:00Z",
    "end=1970-01-01T00:00:00Z&window=1h",  # a start before 1970 once the window is taken off
    "end=1970-01-01T00:00:00Z&window=99999h&step=99999h",
    "end=1970-01-01T00:00:00Z&window=1000m&step=1m",
    "top=%201&window=24h",
    "top=1&top=1001",
    "window=24h&window=1fortnight",
])
def test_usage_odd_but_typed_ranges_never_500(world: World, query: str) -> None:
    reply = world.api.call("GET", f"/usage?{query}")
    assert reply.status in (200, 422), reply.text
    if reply.status == 422:
        assert reply.body["details"], reply.body


@pytest.mark.parametrize(("query", "field"), [
    ("top=99999999999999999999999999", "top"),
    ("top=-1", "top"),
    ("top=1e3", "top"),
    ("window=24h&step=1m", "step"),  # 1440 points
    ("start=1970-01-01T00:00:00Z&step=1m", "step"),  # 56 years of minutes
    ("step=1h", "step"),  # no range
    ("window=24h&step=30s", "step"),
    ("window=24h&step=1500ms", "step"),
    ("window=0s", "window"),
    ("window=100000h", "window"),
    ("window=4167d", "window"),
    ("start=0001-01-01T00:00:00Z", "start"),
    ("start=9999-12-31T23:59:59-01:00", "start"),
    ("start=1969-12-31T23:59:59Z", "start"),
    ("start=1700000000", "start"),
    ("start=2026-01-05T00:00:00Z&end=2026-01-04T00:00:00Z", "start"),
    ("start=2026-01-05T00:00:00Z&end=2026-01-06T00:00:00Z&window=1h", "window"),
    ("bogus=1", "bogus"),
])
def test_usage_bad_queries_are_a_422_naming_the_field(world: World, query: str, field: str) -> None:
    reply = world.api.call("GET", f"/usage?{query}")
    assert reply.status == 422, reply.text
    assert field in [d["field"] for d in reply.body["details"]], reply.body


def test_a_repeated_top_counts_once_and_never_500s(world: World) -> None:
    reply = world.api.call("GET", f"/usage?{DAY}&top=1&top=1001")
    assert reply.status in (200, 422), reply.text
    if reply.status == 200:
        assert len(reply.body["team_breakdown"]) == 1


def test_a_series_of_exactly_1000_points_has_1000_points_when_start_is_off_the_minute(world: World) -> None:
    """The buckets start on the minute `start` is in, so 1000 minutes from half a minute past
    take 1001 buckets: refused as more than 1000 points (it once answered 1001), while the same
    range from the minute answers its 1000, covering the range."""
    reply = world.api.call("GET", "/usage?start=2026-01-04T12:00:30Z&end=2026-01-05T04:40:30Z&step=1m")
    assert reply.status == 422 and reply.body["details"][0]["field"] == "step", reply.text
    assert "1001 points" in reply.body["error"]
    whole = world.api.call("GET", "/usage?start=2026-01-04T12:00:00Z&end=2026-01-05T04:40:00Z&step=1m")
    assert whole.status == 200, whole.text
    assert len(whole.body["series_total"]) == 1000
    assert whole.body["series_total"][-1]["start"].startswith("2026-01-05T04:39:00")


def test_top_1000_with_a_1000_point_series_answers_quickly(world: World) -> None:
    started = time.perf_counter()
    reply = world.api.call("GET", "/usage?top=1000&window=1000m&step=1m")
    assert reply.status == 200, reply.text
    assert len(reply.body["series_total"]) == 1000
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(("role", "path", "status"), [
    ("member", "/usage?window=24h&step=1h", 403),
    ("team_admin", "/usage?window=24h&step=1h&top=1000", 403),
    ("member", "/users/ann/usage?window=24h&step=1h", 403),
    ("team_admin", "/users/alice/usage?window=24h&step=1h", 403),  # a member of tara's own team
    ("member", "/users/alice/usage?window=24h&step=1h", 200),  # herself
    ("member", "/me/usage?window=24h&step=1h", 200),
    ("member", "/me/usage?window=24h&step=1m", 422),
])
def test_who_may_see_whose_usage_series(world: World, role: str, path: str, status: int) -> None:
    reply = world.api.call("GET", path, auth=f"Bearer {world.tokens[role]}")
    assert reply.status == status, reply.text


def test_a_users_series_per_model_sums_to_their_totals(world: World) -> None:
    body = world.api.call("GET", f"/users/ann/usage?{DAY}").body
    assert [s["model"] for s in body["series"]] == ["m1"]
    assert sum(p["token_usage"] for s in body["series"] for p in s["points"]) == body["total_token_usage"] == 200
    assert all(len(s["points"]) == 24 for s in body["series"])
    nobody = world.api.call("GET", f"/users/nobody/usage?{DAY}").body
    assert nobody["series"] == [] and nobody["total_token_usage"] == 0


# -- the SPEC text --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "", "=", "=5/1m", "x=", "x=/1m", "x=5", "x=5/", "x=tokens:/1m", "x=bytes:5/1m", "x=5/1m,scope=key",
    "x=5/1m,model=", "x=5/1m,model", "x=5/1m,scope=team,scope=user", "x=5/1m,model=a,model=b",
    "x=5/1m,,", "x=5.5/1m", "x=5e3/1m", "x=0x10/1m", "x=tokens:requests:5/1m",
])
def test_spec_texts_that_are_no_spec_raise_spec_error(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec(text)


@pytest.mark.parametrize("text", ["x=1_000/1m", "x=١٢٣/1m", "x=+5/1m", "x=５/1m"])
def test_a_limit_is_ascii_digits_only(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec(text)


def test_a_key_spec_refuses_a_scope() -> None:
    with pytest.raises(SpecError):
        parse_spec("k=5/1m,scope=team", for_key=True)


@pytest.mark.parametrize("rate", [
    {"name": "tokens", "limit": 100, "window": "1h", "unit": "tokens", "scope": "user"},
    {"name": "rpm", "limit": 3, "window": "1m", "unit": "requests", "scope": "team", "model": "big"},
    {"name": "k", "limit": 3, "window": "1m", "unit": "requests", "scope": "key"},
])
def test_spec_text_round_trips(rate: dict[str, Any]) -> None:
    parsed = parse_spec(spec_text(rate), for_key=rate["scope"] == "key")
    assert {**parsed, "scope": parsed.get("scope", "user" if rate["scope"] != "key" else "key")} == rate | (
        {} if "model" in rate else {})


@pytest.mark.parametrize("limits", [
    [{"name": "tokens", "limit": -5, "window": "1h"}],
    [{"name": "tokens", "limit": 0, "window": "1h"}],
    [{"name": "tokens", "limit": 2**63, "window": "1h"}],
    [{"name": "tokens", "limit": 10**30, "window": "1h"}],
    [{"name": "tök", "limit": 5, "window": "1h"}],
    [{"name": "a,b", "limit": 5, "window": "1h"}],
    [{"name": "a=b", "limit": 5, "window": "1h"}],
    [{"name": "tokens", "limit": 5, "window": "1h", "scope": "key"}],
    [{"name": "tokens", "limit": 5, "window": "1h", "model": ""}],
])
def test_the_api_judges_what_a_spec_lets_through_with_a_422(ctx: Any, admin_key: str, limits: Any) -> None:
    api = DirectClient(admin_key)
    reply = api.call("POST", "/teams", json={"team_id": "t1", "limits": limits})
    assert reply.status == 422, reply.text
    assert reply.body["details"][0]["field"].startswith("limits"), reply.body


def test_a_huge_but_int64_limit_is_stored_and_shown_back(ctx: Any, admin_key: str) -> None:
    api = DirectClient(admin_key)
    reply = api.call("POST", "/teams", json={"team_id": "t1", "limits": [
        {"name": "tokens", "limit": 2**63 - 1, "window": "1h"}]})
    assert reply.status in (201, 422), reply.text
    if reply.status == 201:
        shown = api.call("GET", "/teams/t1")
        assert shown.status == 200 and shown.body["limits"][0]["limit"] == 2**63 - 1


# -- the console's rate forms ---------------------------------------------------------------------


def _console_team(console: Console) -> None:  # noqa: F811
    with console.api() as api:
        assert api.post("/teams", json={"team_id": "alpha", "limits": [
            {"name": "tokens", "limit": 1000, "window": "1h"}]}).status_code == 201


@pytest.mark.parametrize("lines", [
    "\n".join(f"r{i}=requests:{i + 1}/1m" for i in range(10_000)),
    "tokens=1000/1h\n" * 10_000,
    "tokens=1000/1h\n" + "x" * 200_000,
    "tokens=1000/1h\nrpm=requests:99999999999999999999999999/1m",
    "tokens=1000/1h\nrpm=requests:-1/1m",
    "tokens=1000/1h\nrpm=requests:5/1m,model=nosuchmodel",
    "tökens=1000/1h",
    "tokens=1000/1h\u2028rpm=requests:5/1m",
    "\x00tokens=1000/1h",
])
@pytest.mark.parametrize("action", ["", "/limits/simulate"])
def test_the_consoles_rate_forms_refuse_hostile_text_with_a_page_not_a_500(
        console: Console, lines: str, action: str) -> None:  # noqa: F811
    _console_team(console)
    with console.browser() as admin:
        page = admin.get("/console/teams/alpha")
        started = time.perf_counter()
        answer = admin.post(f"/console/teams/alpha{action}", data={"csrf": csrf_of(page.text), "limits": lines})
        assert answer.status_code in (200, 303, 413, 422), answer.text[:2000]
        assert time.perf_counter() - started < 5
    with console.api() as api:
        assert [r["name"] for r in api.get("/teams/alpha").json()["limits"]] in (["tokens"], ["tokens", "rpm"])


def test_a_rate_post_without_csrf_changes_nothing(console: Console) -> None:  # noqa: F811
    _console_team(console)
    with console.browser() as admin:
        for path in ("/console/teams/alpha", "/console/teams/alpha/limits/simulate"):
            answer = admin.post(path, data={"limits": "tokens=5/1m"})
            assert answer.status_code == 403, path
            wrong = admin.post(path, data={"limits": "tokens=5/1m", "csrf": "x" * 40})
            assert wrong.status_code == 403, path
    with console.api() as api:
        assert api.get("/teams/alpha").json()["limits"][0]["limit"] == 1000


# -- explain over a Limitador that answers garbage -------------------------------------------------


class Garbage:
    """An HTTP server answering GET /counters/... with whatever the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = b"[]"
        self.trickle_s = 0.0  # send the body a byte at a time over this long
        self.delay_s = 0.0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if served.delay_s:
                    time.sleep(served.delay_s)
                self.send_response(served.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                try:
                    if served.trickle_s:
                        pause = served.trickle_s / max(len(served.body), 1)
                        for i in range(len(served.body)):
                            self.wfile.write(served.body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(pause)
                    else:
                        self.wfile.write(served.body)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def garbage(ctx: Any, admin_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Garbage, DirectClient, Callable[..., Any]]]:
    """Team alpha (a token and a request rate), alice's key with its own rpm, and explain
    reading the Garbage server as its Limitador. Yields (server, api, counter-of-rate-name)."""
    from shared import explain
    from shared.limitplan import LimitPlanner, every_limit
    from shared.policies import limitador_counter

    monkeypatch.setattr(explain, "LIMITADOR_TIMEOUT_S", 1.0)
    served = Garbage()
    api = DirectClient(admin_key)
    assert api.call("POST", "/teams", json={"team_id": "alpha", "limits": [
        {"name": "tokens", "limit": 1000, "window": "1h"},
        {"name": "rpm", "limit": 60, "window": "1m", "unit": "requests"}]}).status == 201
    made = api.call("POST", "/teams/alpha/keys", json={"user_id": "alice", "limits": [
        {"name": "key-rpm", "limit": 5, "window": "1m", "unit": "requests"}]})
    assert made.status == 201, made.text
    current = context()
    current.settings = current.settings.model_copy(update={"limitador_url": served.url})
    current.counters = None
    key = current.store.get_key(secret_name=made.body["secret_name"])
    team = current.store.get_team(team_id="alpha")

    def counter(name: str, **changes: Any) -> dict[str, Any]:
        limit = next(limit for limit in every_limit(LimitPlanner(), team, key, None) if limit.rate.name == name)
        want = limitador_counter(team, key, limit.rate, current.settings)
        assert want is not None
        body: dict[str, Any] = {
            "limit": {"namespace": want.namespace, "max_value": want.max_value, "seconds": want.seconds,
                      "conditions": [f'descriptors[0]["{want.identifier}"] == "1"'],
                      "variables": [name for name, _ in want.variables]},
            "set_variables": dict(want.variables), "remaining": want.max_value - 7, "expires_in_seconds": 30}
        for path, value in changes.items():
            if path.startswith("limit__"):
                body["limit"][path[len("limit__"):]] = value
            else:
                body[path] = value
        return body

    try:
        yield served, api, counter
    finally:
        served.close()


def _explain(api: DirectClient, secret: bool = True) -> tuple[int, Any, float]:
    started = time.perf_counter()
    handle = next(k.secret_name for k in context().store.list_keys(team_id="alpha"))
    reply = api.call("GET", f"/teams/alpha/limits/explain?user_id=alice" + (f"&secret_name={handle}" if secret else ""))
    return reply.status, reply.body, time.perf_counter() - started


def test_a_sane_limitador_answer_is_read(garbage: Any) -> None:
    served, api, counter = garbage
    # key-rpm allows 5: 3 spent; tokens 7 spent; rpm has no counter yet (none spent).
    served.body = json.dumps([counter("tokens"), counter("key-rpm", remaining=2)]).encode()
    status, body, _ = _explain(api)
    assert status == 200 and body["counters"] == "live", body
    spent = {s["name"]: s["spent"] for s in body["limits"]}
    assert spent == {"tokens": 7, "rpm": 0, "key-rpm": 3}, spent


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{}", b'{"counters": []}', b"null", b"42", b'"x"', b"[1, 2, null, \"x\", []]",
    b"[" + b"{}," * 1_000_000 + b"{}]",
    b"\xff\xfe\x00garbage",
    b"[" * 100,  # unfinished, shallow
])
def test_explain_survives_a_limitador_answering_garbage(garbage: Any, body: bytes) -> None:
    served, api, _ = garbage
    served.body = body
    status, answer, elapsed = _explain(api)
    assert status == 200, answer
    assert answer["counters"] in ("unavailable", "live")
    assert elapsed < 5


@pytest.mark.parametrize("status", [204, 301, 404, 500, 503])
def test_explain_survives_a_limitador_answering_an_error(garbage: Any, status: int) -> None:
    served, api, _ = garbage
    served.status, served.body = status, b"oops"
    code, answer, _ = _explain(api)
    assert code == 200 and answer["counters"] == "unavailable", answer


@pytest.mark.parametrize("changes", [
    {"remaining": -5},
    {"remaining": 2**70},
    {"remaining": "5"},
    {"remaining": None},
    {"remaining": True},
    {"remaining": 1.5},
    {"limit__max_value": "60"},
    {"limit__max_value": -1},
    {"limit__seconds": "60"},
    {"limit__seconds": 0},
    {"limit__conditions": "descriptors"},
    {"limit__conditions": None},
    {"limit__conditions": [None, 5, {"a": 1}]},
    {"limit": None},
    {"set_variables": None},
    {"set_variables": {}},
    {"expires_in_seconds": None},
    {"expires_in_seconds": 1.5},
    {"expires_in_seconds": 10**30},
])
def test_explain_survives_odd_counter_fields(garbage: Any, changes: dict[str, Any]) -> None:
    served, api, counter = garbage
    served.body = json.dumps([counter("tokens", **changes), counter("key-rpm")]).encode()
    status, answer, _ = _explain(api)
    assert status == 200, answer
    for state in answer["limits"]:
        if state["spent"] is not None:
            assert state["spent"] >= 0 and (state["remaining"] is None or 0 <= state["remaining"] <= state["limit"])
            assert state["reset_seconds"] is None or state["reset_seconds"] >= 0


@pytest.mark.parametrize("changes", [
    {"limit": "a string"},
    {"limit": [1, 2]},
    {"set_variables": ["a", "b"]},
    {"set_variables": "x"},
    {"expires_in_seconds": "soon"},
    {"expires_in_seconds": [30]},
])
def test_explain_survives_counter_fields_of_the_wrong_type(garbage: Any, changes: dict[str, Any]) -> None:
    served, api, counter = garbage
    served.body = json.dumps([counter("tokens", **changes), counter("key-rpm")]).encode()
    status, answer, _ = _explain(api)
    assert status == 200, answer


def test_explain_gives_up_on_a_limitador_that_never_answers(garbage: Any) -> None:
    served, api, _ = garbage
    served.delay_s = 3  # past the (test's) 1 s timeout
    status, answer, elapsed = _explain(api)
    assert status == 200 and answer["counters"] == "unavailable", answer
    assert elapsed < 2.5


def test_explain_gives_up_on_a_limitador_trickling_its_answer(garbage: Any) -> None:
    served, api, counter = garbage
    served.body = json.dumps([counter("tokens")]).encode()[:60]
    served.trickle_s = 3.5  # never more than 1 s between bytes
    status, answer, elapsed = _explain(api)
    assert status == 200, answer
    assert elapsed < 2.5, f"explain took {elapsed:.1f}s with a 1s timeout"


def test_explain_reads_a_10_mb_answer_in_time(garbage: Any) -> None:
    served, api, counter = garbage
    filler = counter("tokens", set_variables={"descriptors[0][\"x\"]": "y" * 1000})
    served.body = json.dumps([counter("tokens")] + [filler] * 9_000).encode()
    assert len(served.body) > 10_000_000
    status, answer, elapsed = _explain(api)
    assert status == 200, answer
    assert elapsed < 5


def test_a_deeply_nested_limitador_answer_is_limitadors_fault_not_the_clients(garbage: Any) -> None:
    served, api, _ = garbage
    served.body = b"[" * 100_000 + b"]" * 100_000
    status, answer, _ = _explain(api)
    assert status == 200 and answer["counters"] == "unavailable", answer


def test_a_negative_expiry_from_limitador_is_no_negative_reset(garbage: Any) -> None:
    served, api, counter = garbage
    served.body = json.dumps([counter("tokens", expires_in_seconds=-30)]).encode()
    status, answer, _ = _explain(api)
    assert status == 200, answer
    assert all(s["reset_seconds"] is None or s["reset_seconds"] >= 0 for s in answer["limits"]), answer["limits"]


def test_a_member_page_survives_limitador_garbage(garbage: Any) -> None:
    """The console's my_budget calls explain_limits directly: a garbage answer must fall back to
    the ledger (or show the counters), never raise out of the page."""
    from functions.console.limitsview import my_budget

    served, _, counter = garbage
    served.body = b"not json"
    current = context()
    budget = my_budget(current, current.store.get_team(team_id="alpha"), "alice", current.clock())
    assert budget.source in ("live", "ledger")


def test_a_member_page_survives_a_counter_of_the_wrong_shape(garbage: Any) -> None:
    from functions.console.limitsview import my_budget

    served, _, counter = garbage
    served.body = json.dumps([counter("tokens", set_variables=["x"])]).encode()
    current = context()
    budget = my_budget(current, current.store.get_team(team_id="alpha"), "alice", current.clock())
    assert budget.source in ("live", "ledger")


# -- a key's own budgets across rotations ---------------------------------------------------------


def _team_t1(admin_key: str) -> DirectClient:
    """The admin API, with team t1 (1,000 tokens an hour) made."""
    api = DirectClient(admin_key)
    assert api.call("POST", "/teams", json={"team_id": "t1", "token_limit": 1000, "time_window": "1h"}).status == 201
    return api


def _issue(api: DirectClient, **body: Any) -> dict[str, Any]:
    made = api.call("POST", "/teams/t1/keys", json={"user_id": "alice", **body})
    assert made.status == 201, made.text
    return dict(made.body)


def _rotate(api: DirectClient, handle: str, **body: Any) -> Any:
    return api.call("POST", f"/keys/{handle}/rotate", json=body)


def test_five_rotations_in_a_row_keep_one_budget_handle(ctx: Any, admin_key: str) -> None:
    api = _team_t1(admin_key)
    first = _issue(api, limits=[{"name": "key-rpm", "limit": 3, "window": "1m", "unit": "requests"}])
    handle = first["secret_name"]
    chain = [handle]
    for _ in range(5):
        rotated = _rotate(api, handle, grace_period="1h")
        assert rotated.status == 201, rotated.text
        handle = rotated.body["secret_name"]
        chain.append(handle)
        assert _rotate(api, chain[-2]).status == 409  # rotated already
    for name in chain:
        key = ctx.store.get_key(secret_name=name)
        assert key.budget_handle == chain[0], name
        assert [r.name for r in key.rates] == ["key-rpm"]
    # Every key of the chain still in its grace: the team's listing counts them all.
    listing = api.call("GET", "/teams/t1").body
    assert listing["key_count"] == 6 and listing["user_count"] == 1 and listing["keys"] == sorted(chain)


def test_a_chain_whose_first_key_is_deleted_still_counts_under_its_handle(ctx: Any, admin_key: str) -> None:
    api = _team_t1(admin_key)
    first = _issue(api)
    second = _rotate(api, first["secret_name"], grace_period="1h").body
    assert api.call("DELETE", f"/keys/{first['secret_name']}").status == 200
    third = _rotate(api, second["secret_name"])
    assert third.status == 201, third.text
    assert ctx.store.get_key(secret_name=third.body["secret_name"]).budget_handle == first["secret_name"]


def test_a_key_whose_successor_was_deleted_may_be_rotated_again(ctx: Any, admin_key: str) -> None:
    api = _team_t1(admin_key)
    first = _issue(api)
    second = _rotate(api, first["secret_name"], grace_period="1h").body
    assert api.call("DELETE", f"/keys/{second['secret_name']}").status == 200
    again = _rotate(api, first["secret_name"], grace_period="1h")
    assert again.status == 201, again.text
    assert again.body["secret_name"] not in (first["secret_name"], second["secret_name"]), again.body


def test_rotating_during_grace_refuses_the_old_key_and_rotates_the_new(ctx: Any, admin_key: str) -> None:
    api = DirectClient(admin_key)
    assert api.call("POST", "/teams", json={"team_id": "t1", "token_limit": 1000, "time_window": "1h",
                                            "max_keys_per_user": 1}).status == 201
    first = _issue(api, max_concurrent=1)
    second = _rotate(api, first["secret_name"], grace_period="1h").body
    old_again = _rotate(api, first["secret_name"], grace_period="1h")
    assert old_again.status == 409 and second["secret_name"] in old_again.body["error"]
    third = _rotate(api, second["secret_name"], grace_period="1h")
    assert third.status == 201, third.text
    key = ctx.store.get_key(secret_name=third.body["secret_name"])
    assert (key.budget_handle, key.max_concurrent) == (first["secret_name"], 1)
    revoked = _rotate(api, third.body["secret_name"], grace_period="0s")
    assert revoked.status in (201, 422), revoked.text


# -- a team's key pages and counts ----------------------------------------------------------------


def _keys_page(api: DirectClient, query: str) -> Any:
    return api.call("GET", f"/teams/t1/keys?{query}")


def test_team_key_pages_hold_when_keys_are_added_and_deleted_between_pages(ctx: Any, admin_key: str) -> None:
    api = _team_t1(admin_key)
    made = sorted(_issue(api, alias=f"k{i}")["secret_name"] for i in range(7))
    first = _keys_page(api, "limit=3").body
    assert [k["secret_name"] for k in first["keys"]] == made[:3] and first["next_cursor"] == made[2]
    assert first["total_keys"] == 7
    # Between pages: the cursor's key is deleted and two keys are added.
    assert api.call("DELETE", f"/keys/{made[2]}").status == 200
    added = [_issue(api, alias=f"late{i}")["secret_name"] for i in range(2)]
    seen = [k["secret_name"] for k in first["keys"]]
    cursor = first["next_cursor"]
    while cursor:
        page = _keys_page(api, f"limit=3&cursor={cursor}")
        assert page.status == 200, page.text
        assert page.body["total_keys"] == 8
        seen += [k["secret_name"] for k in page.body["keys"]]
        cursor = page.body["next_cursor"]
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(made) - {made[2]} <= set(seen)
    assert {name for name in added if name > made[2]} <= set(seen)
    # Past the end, an edge limit, and bad values.
    past = _keys_page(api, "cursor=zzzz").body
    assert (past["keys"], past["next_cursor"], past["total_keys"]) == ([], None, 8)
    whole = _keys_page(api, "limit=1000").body
    assert len(whole["keys"]) == 8 and whole["next_cursor"] is None and whole["total_keys"] == 8
    one = _keys_page(api, "limit=1").body
    assert len(one["keys"]) == 1 and one["next_cursor"] == one["keys"][0]["secret_name"] and one["total_keys"] == 8
    last = _keys_page(api, f"limit=1&cursor={whole['keys'][-2]['secret_name']}").body
    assert len(last["keys"]) == 1 and last["next_cursor"] is None and last["total_keys"] == 8
    for query, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("limit=-1", "limit"),
                         ("limit=99999999999999999999", "limit"), ("cursor=", "cursor"), ("cursor=%2F..", "cursor"),
                         ("cursor=" + "a" * 300, "cursor")):
        bad = _keys_page(api, query)
        assert bad.status == 422 and [d["field"] for d in bad.body["details"]] == [field], (query, bad.text)


def test_a_team_of_no_keys_counts_zero_everywhere(ctx: Any, admin_key: str) -> None:
    api = DirectClient(admin_key)
    for team in ("empty", "t1"):
        assert api.call("POST", "/teams", json={"team_id": team, "token_limit": 1000, "time_window": "1h"}).status == 201
    _issue(api)
    detail = api.call("GET", "/teams/empty").body
    assert (detail["key_count"], detail["user_count"], detail["keys"]) == (0, 0, [])
    keys = api.call("GET", "/teams/empty/keys").body
    assert (keys["keys"], keys["total_keys"], keys["next_cursor"]) == ([], 0, None)
    listed = {t["team_id"]: (t["key_count"], t["user_count"]) for t in api.call("GET", "/teams").body["teams"]}
    assert listed == {"empty": (0, 0), "t1": (1, 1)}
    assert ctx.store.key_counts(team_ids=[]) == {} and ctx.store.key_counts(team_ids=["empty", "nope"]) == {}
    assert ctx.store.key_names(team_id="nope") == []
    patched = api.call("PATCH", "/teams/empty", json={"team_name": "Still empty"}).body
    assert (patched["key_count"], patched["user_count"]) == (0, 0)
    # The team's last key deleted: back to zero.
    handle = api.call("GET", "/teams/t1").body["keys"][0]
    assert api.call("DELETE", f"/keys/{handle}").status == 200
    assert api.call("GET", "/teams/t1").body["key_count"] == 0


# -- the real runtime: a hostile client over HTTPS, and a runtime that keeps running --------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from shared.keymaterial import generate_admin_key
    from tests.runtime import start_runtime

    admin_key = generate_admin_key()
    runtime = start_runtime(tmp_path_factory.mktemp("hostile-runtime"), env={"ADMIN_KEY": admin_key})
    try:
        yield runtime, admin_key
    finally:
        runtime.stop()


def test_the_runtime_answers_hostile_usage_queries_with_4xx_and_keeps_serving(served: tuple[Any, str]) -> None:
    import httpx

    runtime, admin_key = served
    with httpx.Client(base_url=runtime.admin_url, verify=False, timeout=15, trust_env=False,
                      headers={"Authorization": f"ADMIN {admin_key}"}) as http:
        assert http.post("/teams", json={"team_id": "t1", "token_limit": 1000, "time_window": "1h"}).status_code == 201
        made = http.post("/teams/t1/keys", json={"user_id": "alice"})
        assert made.status_code == 201, made.text
        for query in ("top=1000&window=1000m&step=1m", "top=1&top=2&top=x", "window=24h&step=1m",
                      "top=" + "9" * 5000, "start=" + "1" * 5000, "step=" + "1h" * 2000 + "&window=24h",
                      "top=%00", "window=%F0%9F%92%A5",
                      "end=1970-01-01T00:00:00Z&window=99999h&step=99999h"):
            for path in ("/usage", "/users/alice/usage", "/teams/t1/usage"):
                reply = http.get(f"{path}?{query}")
                assert reply.status_code in (200, 414, 422, 431), (path, query[:80], reply.status_code, reply.text[:300])
                assert len(reply.text) < 200_000 or reply.status_code == 200
        handle = made.json()["secret_name"]
        for _ in range(3):
            rotated = http.post(f"/keys/{handle}/rotate", json={"grace_period": "1h"})
            assert rotated.status_code == 201, rotated.text
            handle = rotated.json()["secret_name"]
        team = http.get("/teams/t1").json()
        assert team["key_count"] == 4 and team["user_count"] == 1
        explained = http.get(f"/teams/t1/limits/explain?secret_name={handle}")
        assert explained.status_code == 200 and explained.json()["counters"] == "live", explained.text
        assert http.get("/usage?window=24h&step=1h").status_code == 200  # still serving
    assert runtime.process.poll() is None
    assert "Traceback" not in runtime.text, runtime.text[-3000:]


def test_a_query_of_many_unknown_parameters_gets_a_short_422(served: tuple[Any, str]) -> None:
    import httpx

    runtime, admin_key = served
    query = "&".join(f"p{i}=1" for i in range(2000))
    with httpx.Client(base_url=runtime.admin_url, verify=False, timeout=15, trust_env=False,
                      headers={"Authorization": f"ADMIN {admin_key}"}) as http:
        reply = http.get(f"/usage?{query}")
    assert reply.status_code == 422
    assert len(reply.content) < 2 * len(query), f"{len(query)} bytes asked, {len(reply.content)} answered"


def test_a_browsers_crlf_textarea_saves_every_rate(console: Console) -> None:  # noqa: F811
    _console_team(console)
    with console.browser() as admin:
        page = admin.get("/console/teams/alpha")
        typed = "tokens=tokens:1000/1h\r\n\r\n rpm = requests : 5 / 1m , scope = team \r\n"
        saved = admin.post("/console/teams/alpha", data={"csrf": csrf_of(page.text), "limits": typed})
        assert saved.status_code == 303, text_of(saved.text)[:1500]
    with console.api() as api:
        limits = api.get("/teams/alpha").json()["limits"]
    assert [(r["name"], r["limit"], r["window"], r["unit"], r["scope"]) for r in limits] == [
        ("tokens", 1000, "1h", "tokens", "user"), ("rpm", 5, "1m", "requests", "team")]
