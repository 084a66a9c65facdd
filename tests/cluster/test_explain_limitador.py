"""Explain in a cluster (issue 16, item 3, in both deployments): with MAAS_LIMITADOR_URL the admin
API reads Limitador's counters over its HTTP API (shared/limitador.py) and matches each of our
limits to the counter the rendered policies make of it (shared/policies.py limitador_counter).

Limitador is the engines' model (tests/cluster/limitador.py) behind a real HTTP server on
127.0.0.1 that answers `GET /counters/{namespace}` in limitador-server's shape
(`Limitador.http_counters`), routing as actix-web does: `{namespace}` is one path segment, so
the namespace's '/' must come as %2F, which the segment is decoded from (actix-router src/url.rs
DEFAULT_QUOTER keeps %2F while routing; src/de.rs FULL_QUOTER decodes it for the handler).

The calls are the issue's (tests/cluster/test_rate_limits.py ISSUE_CALLS: every rate of the
team refuses one, a token counter is reported past its limit), each through Authorino and
Limitador and through the local gateway; after each, explain through the admin API reads the
cluster's counters, and explain over the gateway's own counters must say the same.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest

from functions._context import context
from tests.cluster.limitador import Limitador
from tests.cluster.test_rate_limits import (
    ISSUE_CALLS,
    ISSUE_LIMITS,
    T0,
    Call,
    Cluster,
    Gateway,
    cluster,  # noqa: F401
    make_key,
    make_team,
    replay,
    wired_key,
)

_ONE_SEGMENT = re.compile(r"^/counters/([^/]+)$")


class LimitadorHttp:
    """Limitador's HTTP API over the model's counters, at the instant the test sets."""

    def __init__(self) -> None:
        self.model: Limitador | None = None
        self.now = T0
        self.paths: list[str] = []
        self.down = False
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                served.paths.append(self.path)
                found = _ONE_SEGMENT.match(self.path)
                if served.down:
                    self.send_error(503)
                    return
                if found is None or served.model is None:
                    self.send_error(404)  # actix: no route has two segments after /counters
                    return
                body = json.dumps(served.model.http_counters(unquote(found[1]), served.now)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def limitador_http() -> Iterator[LimitadorHttp]:
    served = LimitadorHttp()
    try:
        yield served
    finally:
        served.close()


def _explain(api: Any, query: str) -> dict[str, Any]:
    answer = api.call("GET", f"/teams/alpha/limits/explain?{query}")
    assert answer.status == 200, answer.text
    return dict(answer.body)


def _through_limitador(api: Any, settings: Any, url: str, query: str) -> dict[str, Any]:
    ctx = context()
    ctx.settings, ctx.counters = settings.model_copy(update={"limitador_url": url}), None
    try:
        return _explain(api, query)
    finally:
        ctx.settings = settings


def _through_gateway(api: Any, gateway: Gateway, query: str) -> dict[str, Any]:
    ctx = context()
    ctx.counters = lambda keys: [gateway.limiter.counters.peek(key, window_s) for key, window_s in keys]
    try:
        return _explain(api, query)
    finally:
        ctx.counters = None


def _comparable(explained: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(s["name"], s["model"], s["spent"], s["remaining"], s["binding"]) for s in explained["limits"]]


def _alpha(api: Any, double: Any, key_rpm: int) -> tuple[Any, dict[str, Any]]:
    """The issue's team; alice's key has its own RPM on big, bob's none."""
    team = make_team(api, "alpha", ISSUE_LIMITS)
    alice = make_key(api, "alpha", "alice", limits=[{"name": "key-rpm", "limit": key_rpm, "window": "1m",
                                                     "unit": "requests", "model": "big"}])
    wired_key(double, alice[1])
    return team, {"alice": alice, "bob": make_key(api, "alpha", "bob")}


def _query(keys: dict[str, Any], user: str, model: str | None = None) -> str:
    return f"user_id={user}&secret_name={keys[user][1].secret_name}" + (f"&model={model}" if model else "")


def _at(limitador_http: LimitadorHttp, gateway: Gateway | None, seconds: float) -> None:
    at = T0 + timedelta(seconds=seconds)
    limitador_http.now = at
    if gateway is not None:
        gateway.now_ms = int(at.timestamp() * 1000)


def test_explain_in_a_cluster_reads_limitador_and_says_what_the_gateway_says(cluster, limitador_http) -> None:  # noqa: F811
    """While the two agree on every decision and count (no call refused for tokens: after one,
    Limitador has still counted it for the request rates, which test_rate_limits pins), explain
    over Limitador's counters says what explain over the gateway's says, limit by limit."""
    double, api, settings = cluster
    team, keys = _alpha(api, double, key_rpm=3)
    model = Cluster(double)
    limitador_http.model = model.limitador
    queries = [_query(keys, "alice"), _query(keys, "alice", "big"), _query(keys, "bob"), _query(keys, "bob", "small")]
    compared: list[tuple[int, str]] = []

    def both_explain(call: Call, gateway: Gateway) -> None:
        _at(limitador_http, gateway, call.at + 0.5)  # half a second on: both round the seconds left alike
        for query in queries:
            in_cluster = _through_limitador(api, settings, limitador_http.url, query)
            local = _through_gateway(api, gateway, query)
            assert in_cluster["counters"] == local["counters"] == "live"
            assert _comparable(in_cluster) == _comparable(local), (call, query)
            assert (in_cluster["binding"], in_cluster["admitted_now"]) == (local["binding"], local["admitted_now"])
            # Where something was counted: a refused call opens the gateway's other windows and
            # none of Limitador's (test_rate_limits pins it), so an empty window may differ.
            resets = [(a["reset_seconds"], b["reset_seconds"]) for a, b in zip(in_cluster["limits"], local["limits"])
                      if a["spent"]]
            assert all(abs(a - b) <= 1 for a, b in resets), (call, query, resets)
            compared.append((call.at, query))

    # The RPM, the team's RPM, then the key's own RPM on big (its fourth call, at 100).
    calls = [*(call for call in ISSUE_CALLS if call.at < 100), Call(61, "alice", "big", 20),
             Call(62, "alice", "big", 20), Call(63, "alice", "big", 20), Call(100, "alice", "big", 20)]
    outcomes = replay(sorted(calls, key=lambda call: call.at), team, keys, model, after=both_explain)
    assert [o[0] for o in outcomes if o[1] != o[2]] == []
    assert [(o[0].at, o[3]) for o in outcomes if not o[1]] == [(4, "rpm"), (7, "team-rpm"), (100, "key-rpm")]
    assert len(compared) == len(calls) * len(queries)
    # The namespace went as one path segment, its '/' as %2F (else actix-web has no route for it).
    assert limitador_http.paths and all(path == "/counters/llm%2Fmaas-models" for path in limitador_http.paths)


def test_explain_in_a_cluster_foretells_each_decision_of_the_cluster(cluster, limitador_http) -> None:  # noqa: F811
    """Over the issue's whole day of calls (every rate refuses one; token calls refused while
    request rates count them; a token counter reported past its limit), explain for the next
    call's key and model, just before it, says whether the cluster then admits it."""
    double, api, settings = cluster
    team, keys = _alpha(api, double, key_rpm=3)
    model = Cluster(double)
    limitador_http.model = model.limitador
    calls = sorted([*ISSUE_CALLS, Call(3801, "alice", "big", 1), Call(3802, "alice", "big", 1),
                    Call(3803, "alice", "big", 1)], key=lambda call: call.at)
    foretold: list[bool | None] = []

    def foretell(call: Call, _: Gateway) -> None:
        following = calls.index(call) + 1
        if following < len(calls):
            upcoming = calls[following]
            _at(limitador_http, None, upcoming.at)
            explained = _through_limitador(api, settings, limitador_http.url, _query(keys, upcoming.user, upcoming.model))
            foretold.append(explained["admitted_now"])

    first = calls[0]
    _at(limitador_http, None, first.at)
    foretold.append(_through_limitador(api, settings, limitador_http.url,
                                       _query(keys, first.user, first.model))["admitted_now"])
    outcomes = replay(calls, team, keys, model, after=foretell)
    assert foretold == [o[2] for o in outcomes]
    assert {o[3] for o in outcomes if o[3]} == {"rpm", "team-rpm", "per-minute", "big-hourly", "per-day", "key-rpm"}


def test_a_token_counter_reported_past_its_limit_reads_as_spent_not_as_u64_wrapped(cluster, limitador_http) -> None:  # noqa: F811
    """limitador src/storage/in_memory.rs get_counters: `remaining = max_value - value` in u64,
    which wraps once a report takes the counter past its limit (150 + 150 of 200 here)."""
    double, api, settings = cluster
    team = make_team(api, "alpha", [{"name": "per-minute", "limit": 200, "window": "1m"}])
    keys = {"alice": make_key(api, "alpha", "alice")}
    model = Cluster(double)
    limitador_http.model, limitador_http.now = model.limitador, T0 + timedelta(seconds=2)
    replay([Call(0, "alice", "small", 150), Call(1, "alice", "small", 150)], team, keys, model)
    served = model.limitador.http_counters("llm/maas-models", limitador_http.now)
    assert [counter["remaining"] for counter in served] == [2**64 - 100]
    (state,) = _through_limitador(api, settings, limitador_http.url, "user_id=alice")["limits"]
    assert (state["spent"], state["remaining"], state["binding"]) == (300, 0, True)
    assert 57 <= state["reset_seconds"] <= 58


def test_without_limitador_explain_shows_the_limits_and_says_so(cluster, limitador_http) -> None:  # noqa: F811
    double, api, settings = cluster
    make_team(api, "alpha", ISSUE_LIMITS)
    make_key(api, "alpha", "alice", max_concurrent=2)
    limitador_http.model, limitador_http.down = Limitador(), True
    down = _through_limitador(api, settings, limitador_http.url, "user_id=alice")
    assert down["counters"] == "unavailable" and down["admitted_now"] is None
    assert {state["spent"] for state in down["limits"]} == {None}
    unset = _explain(api, "user_id=alice")  # no MAAS_LIMITADOR_URL
    assert unset["counters"] == "unavailable" and _comparable(unset) == _comparable(down)
    # A key's cap on calls in flight has no counter in a cluster (§18): shown, never counted.
    limitador_http.down = False
    handle = next(key.secret_name for key in context().store.list_keys(team_id="alpha"))
    capped = _through_limitador(api, settings, limitador_http.url, f"secret_name={handle}")
    assert capped["counters"] == "live"
    concurrent = [state for state in capped["limits"] if state["name"] == "concurrent"]
    assert len(concurrent) == 1 and concurrent[0]["spent"] is None and not concurrent[0]["binding"]
    assert all(state["spent"] == 0 for state in capped["limits"] if state["name"] != "concurrent")


def test_the_counter_asked_for_is_the_one_limitador_keeps(cluster) -> None:  # noqa: F811
    """The pure computation against the engines' model: after one call, every counter the model
    wrote is one that limitador_counter names for the limits that call met, and no other."""
    from shared.limitplan import LimitPlanner, every_limit
    from shared.policies import limitador_counter

    double, api, settings = cluster
    team = make_team(api, "alpha", ISSUE_LIMITS)
    alice = make_key(api, "alpha", "alice", limits=[{"name": "key-rpm", "limit": 3, "window": "1m",
                                                     "unit": "requests"}])
    wired_key(double, alice[1])
    model = Cluster(double)
    replay([Call(0, "alice", "big", 5)], team, {"alice": alice}, model)
    written = {(c["limit"]["conditions"][0], c["limit"]["seconds"], tuple(sorted(c["set_variables"].items())))
               for c in model.limitador.http_counters("llm/maas-models", T0 + timedelta(seconds=1))}
    named = set()
    for limit in every_limit(LimitPlanner(), team, alice[1], "big"):
        counter = limitador_counter(team, alice[1], limit.rate, settings)
        assert counter is not None and counter.namespace == "llm/maas-models"
        named.add((f'descriptors[0]["{counter.identifier}"] == "1"', counter.seconds, counter.variables))
    assert written == named and len(named) == 6  # per-minute, per-day, rpm, team-rpm, big-hourly, key-rpm
