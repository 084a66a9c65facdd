"""Token counters: fixed windows with reservations, in the process (here) or in Redis.

Both stores keep the same semantics, which the limiter (limiter.py) builds on and the property
tests (tests/test_counters.py) check against a model:

- A counter is a key (str) with a window: it starts at the first `reserve` of a key that has
  none (or whose window has ended) and lasts `window_s` whole seconds, as Limitador's fixed
  windows do (its Redis storage: a key with an expiry set on the first hit).
- `reserve(key, limit=, window_s=, amount=)` admits when `spent + reserved < limit` and then adds
  `amount` to `reserved`; otherwise it changes nothing. Either way it answers a `Hold`: the
  window's id (its start, ms since the epoch), what was spent and reserved before it, and the
  milliseconds until the window ends.
- `settle(key, window=, window_s=, reserved=, tokens=, also=)` takes the request's reservation
  back from the window it was made in (if that window is still the key's current one: an ended
  window is gone with its reservations) and adds `tokens` to the key's current window, starting
  one if there is none (the tokens were used now). `also` names a second counter that is only
  counted, never checked: the other scope's counter (a team's when users are limited, a user's
  when the team is), so that a change of `limit_scope` finds what was spent.
- Everything one call does is atomic: concurrent reservations cannot both take the last tokens.

Times are wall-clock milliseconds, so that saved windows (`snapshot`/`restore`) keep their ends
across a restart, and several gateways on a Redis share one clock (Redis' own `TIME`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple


class Hold(NamedTuple):
    """What a reservation found (a tuple: one is made per request, and a frozen dataclass costs
    several times as much to build)."""

    admitted: bool
    window: int  # the window's start, ms since the epoch: its id
    spent: int  # settled tokens in the window, before this reservation
    reserved: int  # others' reservations in flight, before this one
    reset_ms: int  # until the window ends


@dataclass(slots=True)
class _Window:
    started: int  # ms
    ends: int  # ms
    spent: int = 0
    reserved: int = 0


# A saved counter: (key, window start ms, window end ms, spent).
Saved = tuple[str, int, int, int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryCounters:
    """The in-process store: a dict of windows, used from the gateway's event loop only."""

    def __init__(self, clock_ms: Callable[[], int] = wall_ms) -> None:
        self._clock = clock_ms
        self._windows: dict[str, _Window] = {}
        self._changed: set[str] = set()  # since the last `changes()`

    def _current(self, key: str, window_s: int, now: int) -> _Window:
        window = self._windows.get(key)
        if window is None or now >= window.ends:
            window = self._windows[key] = _Window(started=now, ends=now + window_s * 1000)
        return window

    def reserve(self, key: str, *, limit: int, window_s: int, amount: int) -> Hold:
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now >= window.ends:
            window = self._windows[key] = _Window(started=now, ends=now + window_s * 1000)
        spent, reserved = window.spent, window.reserved
        admitted = spent + reserved < limit
        if admitted:
            window.reserved = reserved + amount
            self._changed.add(key)
        return Hold(admitted, window.started, spent, reserved, window.ends - now)

    def settle(self, key: str, *, window: int, window_s: int, reserved: int, tokens: int,
               also: str | None = None) -> None:
        now = self._clock()
        current = self._windows.get(key)
        if current is not None and current.started == window and now < current.ends:
            current.reserved -= reserved
        self._changed.add(key)
        if tokens > 0:
            self._current(key, window_s, now).spent += tokens
            if also is not None:
                self._current(also, window_s, now).spent += tokens
                self._changed.add(also)

    def state(self, key: str) -> tuple[int, int]:
        """(spent, reserved) in the key's current window; (0, 0) when it has none."""
        spent, reserved, _ = self.peek(key)
        return (spent, reserved)

    def peek(self, key: str) -> tuple[int, int, int]:
        """(spent, reserved, ms until the window ends); all 0 when it has no open window."""
        window = self._windows.get(key)
        now = self._clock()
        if window is None or now >= window.ends:
            return (0, 0, 0)
        return (window.spent, window.reserved, window.ends - now)

    # -- saving across restarts ----------------------------------------------------------

    def snapshot(self) -> list[Saved]:
        """The windows still open, with reservations in flight counted as spent: a request
        that was running when the process died may have had its tokens generated."""
        now = self._clock()
        ended = [key for key, window in self._windows.items() if now >= window.ends]
        for key in ended:
            del self._windows[key]
        return [(key, w.started, w.ends, w.spent + w.reserved) for key, w in self._windows.items()]

    def changes(self) -> list[Saved]:
        """`snapshot()` of the counters changed since the last call only: what a periodic
        save must write, in time proportional to the traffic, not to the number of counters."""
        changed, self._changed = self._changed, set()
        now = self._clock()
        rows = []
        for key in changed:
            w = self._windows.get(key)
            if w is not None and now < w.ends:
                rows.append((key, w.started, w.ends, w.spent + w.reserved))
        return rows

    def restore(self, saved: Iterable[Saved]) -> None:
        now = self._clock()
        for key, started, ends, spent in saved:
            if now < ends and key not in self._windows:
                self._windows[key] = _Window(started=started, ends=ends, spent=spent)
