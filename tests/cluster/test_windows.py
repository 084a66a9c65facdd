"""A team's `time_window` as Kuadrant and Limitador see it, against what our API accepts.

Written from tests/cluster/SOURCES.md section 13:

- KO `api/v1/ratelimitpolicy_types.go`: the `window` field carries the CRD pattern
  `^([0-9]{1,5}(h|m|s|ms)){1,4}$`; `Duration.Seconds` parses it with Go `time.ParseDuration` and
  returns `int(duration.Seconds())`, truncating toward zero (a parse error gives 0), and
  `internal/controller/limitador_limits_reconciler.go` puts those seconds in the Limitador limit.
  `go_parse_duration` below is Go's `time.ParseDuration` (src/time/format.go), `kuadrant_seconds`
  is `Duration.Seconds`.
- LI `limitador/src/storage/atomic_expiring_value.rs`: `AtomicExpiringValue::value_at` reads 0
  once expired and `expired_at` is true when expiry <= now, so a 0-second window expires as it
  is created and never limits. `ExpiringCounter` below is that value.

What is encoded: every window the API accepts is within the CRD pattern and converts to exactly
our own `window_seconds` (so the local gateway's limiter and Limitador count the same window),
and the API refuses every input whose conversion would lose anything (a fraction of a second, or
everything: 0 s).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.durations import normalize_rate_window, normalize_window, window_seconds
from shared.policies import generate_policies
from shared.schemas import KeyCreate, KeyRotate, TeamCreate, TeamUpdate
from shared.settings import Settings
from shared.teams import team_from_request
from tests.admin_client import AdminClient
from tests.crds import crds_dir, validate
from tests.test_admin_api import api, module_admin_key, runtime, unique  # noqa: F401 - fixtures

# ------------------------------------------------------------------ Go's time.ParseDuration

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
_GO_UNITS = {"ns": NANOSECOND, "us": MICROSECOND, "\u00b5s": MICROSECOND, "\u03bcs": MICROSECOND,
             "ms": MILLISECOND, "s": SECOND, "m": MINUTE, "h": HOUR}
_INT64_MAX = (1 << 63) - 1


class GoDurationError(ValueError):
    pass


def _leading_int(s: str) -> tuple[int, str]:
    """format.go, leadingInt: the leading digits; overflow past 1<<63 is an error."""
    x, i = 0, 0
    while i < len(s) and "0" <= s[i] <= "9":
        if x > _INT64_MAX // 10:
            raise GoDurationError("bad [0-9]*")
        x = x * 10 + int(s[i])
        if x > 1 << 63:
            raise GoDurationError("bad [0-9]*")
        i += 1
    return x, s[i:]


def _leading_fraction(s: str) -> tuple[int, float, str]:
    """format.go, leadingFraction: digits after the dot, with their scale; digits past int64
    precision are dropped."""
    x, scale, overflow, i = 0, 1.0, False, 0
    while i < len(s) and "0" <= s[i] <= "9":
        if not overflow:
            if x > _INT64_MAX // 10:
                overflow = True
            else:
                y = x * 10 + int(s[i])
                if y > 1 << 63:
                    overflow = True
                else:
                    x, scale = y, scale * 10
        i += 1
    return x, scale, s[i:]


def go_parse_duration(text: str) -> int:
    """format.go, ParseDuration: nanoseconds; `[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`."""
    s, negative, d = text, False, 0
    if s and s[0] in "+-":
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if s == "":
        raise GoDurationError(f"invalid duration {text!r}")
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise GoDurationError(f"invalid duration {text!r}")
        before = len(s)
        v, s = _leading_int(s)
        pre = before != len(s)
        f, scale, post = 0, 1.0, False
        if s and s[0] == ".":
            s = s[1:]
            before = len(s)
            f, scale, s = _leading_fraction(s)
            post = before != len(s)
        if not pre and not post:
            raise GoDurationError(f"invalid duration {text!r}")
        i = 0
        while i < len(s) and s[i] != "." and not ("0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise GoDurationError(f"missing unit in duration {text!r}")
        unit_name, s = s[:i], s[i:]
        if unit_name not in _GO_UNITS:
            raise GoDurationError(f"unknown unit {unit_name!r} in duration {text!r}")
        unit = _GO_UNITS[unit_name]
        if v > (1 << 63) // unit:
            raise GoDurationError(f"invalid duration {text!r}")
        v *= unit
        if f > 0:
            v += int(float(f) * (float(unit) / scale))
            if v > 1 << 63:
                raise GoDurationError(f"invalid duration {text!r}")
        d += v
        if d > 1 << 63:
            raise GoDurationError(f"invalid duration {text!r}")
    if negative:
        return -d
    if d > _INT64_MAX:
        raise GoDurationError(f"invalid duration {text!r}")
    return d


def _go_quo(a: int, b: int) -> int:
    """Go's integer division: truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def kuadrant_seconds(window: str) -> int:
    """KO ratelimitpolicy_types.go, Duration.Seconds: int(time.ParseDuration(d).Seconds()), 0 on
    a parse error. Go's Duration.Seconds is float64(d/Second) + float64(d%Second)/1e9; int()
    truncates toward zero."""
    try:
        d = go_parse_duration(window)
    except GoDurationError:
        return 0
    sec = _go_quo(d, SECOND)
    return int(float(sec) + float(d - sec * SECOND) / 1e9)


# ------------------------------------------------------------------ Limitador's counter


class ExpiringCounter:
    """LI atomic_expiring_value.rs, AtomicExpiringValue (times in seconds)."""

    def __init__(self) -> None:
        self.value, self.expiry = 0, 0.0

    def expired_at(self, now: float) -> bool:
        return self.expiry <= now

    def value_at(self, now: float) -> int:
        return 0 if self.expired_at(now) else self.value

    def update(self, delta: int, ttl_s: int, now: float) -> int:
        if self.expired_at(now):  # update_if_expired: a new window starts at this hit
            self.expiry, self.value = now + ttl_s, delta
            return delta
        self.value += delta
        return self.value


def ever_limits(seconds: int, limit: int = 1) -> bool:
    """Does a counter with this window ever refuse a request (used + 1 > limit) right after
    `limit + 1` hits in the same instant?"""
    counter = ExpiringCounter()
    for _ in range(limit + 1):
        counter.update(1, seconds, now=100.0)
    return counter.value_at(100.0) + 1 > limit


def test_the_models_are_go_and_limitador() -> None:
    # Go's ParseDuration, on the cases its own tests (src/time/time_test.go) list.
    assert go_parse_duration("1h30m") == 90 * MINUTE
    assert go_parse_duration("1.5s") == 1500 * MILLISECOND
    assert go_parse_duration("1h1h") == 2 * HOUR
    assert go_parse_duration("0") == 0 and go_parse_duration("-2m") == -2 * MINUTE
    assert go_parse_duration("9223372036854775807ns") == _INT64_MAX
    assert go_parse_duration("1.s") == SECOND and go_parse_duration(".5m") == 30 * SECOND
    for bad in ("", "3", "1d", "-", ".", ".s", "1hh", "9223372036854775808ns", "3000000h"):
        with pytest.raises(GoDurationError):
            go_parse_duration(bad)
    # Kuadrant's truncation, SOURCES.md section 13's examples.
    assert [kuadrant_seconds(w) for w in ("1500ms", "999ms", "500ms", "1m30s", "24h", "7d")] == [1, 0, 0, 90, 86400, 0]
    # Limitador: a 0 s window never limits, a 1 s window does.
    assert not ever_limits(0) and ever_limits(1) and ever_limits(3600, limit=5)
    counter = ExpiringCounter()
    counter.update(3, 1, now=0.0)
    assert (counter.value_at(0.5), counter.value_at(1.0)) == (3, 0), "fixed window, reset after `seconds`"


# ------------------------------------------------------------------ the CRD's pattern


def _crd_window_patterns() -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            window = node.get("properties", {}).get("window") if isinstance(node.get("properties"), dict) else None
            if isinstance(window, dict) and "pattern" in window:
                found.add(window["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in ("kuadrant.io_tokenratelimitpolicies.yaml", "kuadrant.io_ratelimitpolicies.yaml"):
        for document in yaml.safe_load_all(Path(crds_dir(), name).read_text()):
            walk(document)
    return found


(WINDOW_PATTERN,) = _crd_window_patterns()
CRD_WINDOW = re.compile(WINDOW_PATTERN)


def test_the_crd_pattern_is_the_one_sources_md_names() -> None:
    assert WINDOW_PATTERN == r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"


# ------------------------------------------------------------------ what the API accepts


def accepted(window: str) -> str | None:
    """The stored (and rendered) window for a create, or None when refused; a PATCH agrees."""
    try:
        created = TeamCreate(team_id="t", time_window=window).time_window
    except ValidationError as exc:
        assert [e["loc"] for e in exc.errors()] == [("time_window",)]
        with pytest.raises(ValidationError):
            TeamUpdate(time_window=window)
        return None
    assert TeamUpdate(time_window=window).time_window == created
    return created


_NUMBER = st.one_of(st.integers(0, 99_999).map(str), st.from_regex(r"\A[0-9]{1,6}\Z"))
_PART = st.tuples(_NUMBER, st.sampled_from(["h", "m", "s", "ms"])).map("".join)
CRD_SYNTAX = st.lists(_PART, min_size=1, max_size=5).map("".join)
WITH_DAYS = st.tuples(st.integers(0, 5_000), st.lists(_PART, max_size=3).map("".join)).map(
    lambda parts: f"{parts[0]}d{parts[1]}"
)
EDGES = ["500ms", "999ms", "1000ms", "1500ms", "1s500ms", "0s", "0h0m", "0h1s", "1s", "90s", "1m30s",
         "99999h", "100000h", "99999h59m59s", "99999h99999m99999s99999ms", "1h1h", "001s", "60000ms",
         "5d", "7d", "1d12h", "1d12h30m", "4166d", "4166d15h", "4166d16h", "4167d", "0d1s", "1d500ms"]


@settings(max_examples=400, deadline=None)
@given(window=st.one_of(CRD_SYNTAX, WITH_DAYS, st.text(max_size=12)))
@example(window="1500ms")
@example(window="4167d")
def test_every_accepted_window_converts_exactly_and_every_lossy_one_is_refused(window: str) -> None:
    check_window(window)


@pytest.mark.parametrize("window", EDGES)
def test_edge_windows(window: str) -> None:
    check_window(window)


def check_window(window: str) -> None:
    stored = accepted(window)
    if stored is not None:
        # Within the CRD's pattern, and Kuadrant's seconds are exactly ours: nothing truncated.
        assert CRD_WINDOW.match(stored), stored
        assert kuadrant_seconds(stored) == window_seconds(stored) >= 1, stored
        assert ever_limits(kuadrant_seconds(stored))
    text = window.strip()
    if CRD_WINDOW.match(text):
        # Written in the CRD's syntax: accepted exactly when Kuadrant's conversion loses nothing.
        nanoseconds = go_parse_duration(text)
        lossless = kuadrant_seconds(text) >= 1 and kuadrant_seconds(text) * SECOND == nanoseconds
        assert (stored is not None) == lossless, (text, stored, nanoseconds)
        if stored is not None:
            assert stored == text, "a window in the CRD's syntax is kept as written"
    days = re.fullmatch(r"([0-9]{1,5})d((?:[0-9]{1,5}(?:h|m|s|ms)){0,3})", text)
    if days:
        # Days, then at most three parts: 24 h each, summed into the hours part.
        rest = days.group(2)
        nanoseconds = int(days.group(1)) * 24 * HOUR + (go_parse_duration(rest) if rest else 0)
        hours = int(days.group(1)) * 24 + sum(int(n) for n in re.findall(r"([0-9]+)h", rest))
        lossless = nanoseconds >= SECOND and nanoseconds % SECOND == 0
        assert (stored is not None) == (lossless and hours <= 99_999), (text, stored)
        if stored is not None:
            assert kuadrant_seconds(stored) * SECOND == nanoseconds, (text, stored)
            assert stored.startswith(f"{hours}h"), (text, stored)
    if stored is not None:
        assert CRD_WINDOW.match(text) or days, f"{text!r} accepted in neither syntax"


def test_day_windows_normalize_within_the_pattern() -> None:
    assert [accepted(w) for w in ("7d", "5d", "1d12h", "1d12h30m", "4166d", "4166d15h59m59s")] == [
        "168h", "120h", "36h", "36h30m", "99984h", "99999h59m59s"]
    # 4167d is 100008h: six digits, outside the pattern; refused, saying why.
    for too_long in ("4167d", "4166d16h"):
        with pytest.raises(ValidationError, match=r"at most 99999h \(4166d\)"):
            TeamCreate(team_id="t", time_window=too_long)
    assert accepted("99999h") == "99999h" and accepted("100000h") is None


def test_other_durations_keep_their_sub_second_syntax() -> None:
    # Only the token-limit window feeds Kuadrant; the shared syntax is unchanged.
    assert normalize_window("500ms") == "500ms" and normalize_window("1500ms") == "1500ms"
    with pytest.raises(ValueError, match="whole number of seconds"):
        normalize_rate_window("1500ms")
    assert KeyCreate(user_id="u", expires_in="1500ms").expires_in == "1500ms"
    assert KeyRotate(grace_period="1500ms", expires_in="500ms").grace_period == "1500ms"


def test_rendered_policies_carry_the_window_kuadrant_reads() -> None:
    windows = ["1s", "90s", "1m30s", "7d", "1d12h", "99999h", "60000ms"]
    teams = [team_from_request(TeamCreate(team_id=f"team-{n}", time_window=w), datetime.now(timezone.utc))
             for n, w in enumerate(windows)]
    (limits,) = [p for p in generate_policies(teams, Settings()) if p["kind"] == "TokenRateLimitPolicy"]
    validate(limits)
    # However the limits are keyed (per team or per tier), every window is one a team asked for.
    rendered = [rate["window"] for limit in limits["spec"]["limits"].values() for rate in limit["rates"]]
    assert {kuadrant_seconds(w) for w in rendered} == {window_seconds(team.time_window) for team in teams}
    for window in rendered:
        assert CRD_WINDOW.match(window)
        assert kuadrant_seconds(window) == window_seconds(window) >= 1


# ------------------------------------------------------------------ over the admin API


@pytest.fixture
def team_id(api: AdminClient) -> Iterator[str]:  # noqa: F811 - the imported fixture
    created = unique()
    reply = api.call("POST", "/teams", json={"team_id": created, "time_window": "1h"})
    assert reply.status == 201, reply.text
    yield created


@pytest.mark.parametrize(("window", "why"), [
    ("500ms", "never limits"), ("1500ms", "whole number of seconds"), ("0s", "at least 1s"),
])
def test_lossy_windows_are_422_naming_time_window(api: AdminClient, team_id: str, window: str,  # noqa: F811
                                                   why: str) -> None:
    for method, path, body in (("POST", "/teams", {"team_id": unique(), "time_window": window}),
                               ("PATCH", f"/teams/{team_id}", {"time_window": window})):
        reply = api.call(method, path, json=body)
        assert reply.status == 422, reply.text
        assert [d["field"] for d in reply.body["details"]] == ["time_window"]
        assert why in reply.body["details"][0]["message"] and "time_window" in reply.body["error"]
    assert api.call("GET", f"/teams/{team_id}").body["time_window"] == "1h"


@pytest.mark.parametrize(("window", "stored"), [("1m30s", "1m30s"), ("7d", "168h")])
def test_whole_second_windows_are_accepted(api: AdminClient, team_id: str, window: str,  # noqa: F811
                                           stored: str) -> None:
    reply = api.call("POST", "/teams", json={"team_id": unique(), "time_window": window})
    assert (reply.status, reply.body["time_window"]) == (201, stored), reply.text
    reply = api.call("PATCH", f"/teams/{team_id}", json={"time_window": window})
    assert (reply.status, reply.body["time_window"]) == (200, stored), reply.text
