"""A cluster's counters, read from Limitador's HTTP API for explain.

`GET /counters/{namespace}` (limitador-server src/http_api/server.rs, get_counters) answers every
counter of a namespace that has not expired: its `limit` (`namespace`, `max_value`, `seconds`,
`conditions`, `variables`, ...), `set_variables` (each variable's value for this counter),
`remaining` and `expires_in_seconds` (src/http_api/request_types.rs, Counter; the in-memory
storage's get_counters leaves out expired ones). The namespace holds a '/' (`<ns>/<route>`): sent
as %2F, which actix-web keeps inside the one path segment when it routes and decodes when it
hands the segment over (actix-router src/url.rs DEFAULT_QUOTER, src/de.rs FULL_QUOTER).

`remaining` is `max_value - value` in u64 (limitador src/storage/in_memory.rs, get_counters):
a token counter is reported past its limit (a report adds whatever the response used), and
then the subtraction wraps, so the value is read back modulo 2^64, never from `remaining` as
it stands. A counter that is absent has not been written in its window: 0 spent, no window open.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from shared.errors import BackendUnavailable
from shared.policies import LimitadorCounter

_U64 = 2**64
_CONDITION = re.compile(r'^descriptors\[0\]\["(?P<identifier>[^"]+)"\] == "1"$')

CounterKey = tuple[str, int, tuple[tuple[str, str], ...]]  # identifier, seconds, set variables


class Seen:
    """A counter as Limitador holds it now."""

    __slots__ = ("value", "expires_in_s")

    def __init__(self, value: int, expires_in_s: int) -> None:
        self.value, self.expires_in_s = value, expires_in_s


def counters_url(base_url: str, namespace: str) -> str:
    return f"{base_url.rstrip('/')}/counters/{quote(namespace, safe='')}"


# A namespace's counters for a few hundred thousand users; an answer past this is not read.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def read_counters(base_url: str, namespace: str, timeout_s: float) -> list[dict[str, Any]]:
    """Limitador's answer for the namespace; BackendUnavailable when there is none to read
    within `timeout_s` in all (httpx's timeouts are per read: a trickle would hold it)."""
    import httpx  # only a cluster's explain reads Limitador

    deadline = time.monotonic() + timeout_s
    url = counters_url(base_url, namespace)
    try:
        with httpx.stream("GET", url, timeout=timeout_s) as answer:
            if answer.status_code != 200:
                raise BackendUnavailable(f"Limitador at {base_url} answered {answer.status_code} for the counters")
            body = bytearray()
            for chunk in answer.iter_bytes():
                body += chunk
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"Limitador at {base_url} did not answer within {timeout_s:g} s")
                if len(body) > MAX_ANSWER_BYTES:
                    raise BackendUnavailable(f"Limitador at {base_url} answered more than {MAX_ANSWER_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"Limitador at {base_url} did not answer ({type(exc).__name__})") from None
    try:
        counters = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past what the reader takes
        raise BackendUnavailable(f"Limitador at {base_url} answered no JSON list of counters") from None
    if not isinstance(counters, list):
        raise BackendUnavailable(f"Limitador at {base_url} answered no list of counters")
    return [counter for counter in counters if isinstance(counter, dict)]


def index(counters: Iterable[Mapping[str, Any]]) -> dict[CounterKey, Seen]:
    """The counters by what names one: the limit's identifier and window, and the variables' values."""
    found: dict[CounterKey, Seen] = {}
    for counter in counters:
        # A field of another type than Limitador's (request_types.rs) leaves that counter out:
        # what is read is an answer from elsewhere, never trusted to hold its shape.
        limit, variables = counter.get("limit"), counter.get("set_variables")
        if not isinstance(limit, dict) or not isinstance(variables, dict):
            continue
        remaining, max_value, seconds = counter.get("remaining"), limit.get("max_value"), limit.get("seconds")
        expires, conditions = counter.get("expires_in_seconds"), limit.get("conditions")
        if expires is None:
            expires = 0  # Option<u64>: no expiry known, so no window to tell the end of
        if not (_u64(remaining) and _u64(max_value) and _u64(seconds) and _u64(expires)
                and isinstance(conditions, list)):
            continue
        values = tuple(sorted((str(name), str(value)) for name, value in variables.items()))
        for condition in conditions:
            matched = _CONDITION.match(str(condition))
            if matched:
                found[(matched["identifier"], seconds, values)] = Seen((max_value - remaining) % _U64, expires)
    return found


def _u64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def seen_by(counters: Mapping[CounterKey, Seen], counter: LimitadorCounter) -> Seen:
    return counters.get((counter.identifier, counter.seconds, counter.variables)) or Seen(0, 0)
