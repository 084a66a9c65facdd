"""Token counters: fixed windows with reservations, in the process (here) or in Redis.

Both stores keep the same semantics, which the limiter (limiter.py) builds on and the property
tests (tests/test_counters.py) check against a model:

- A counter is a key (str) with a window: it starts at the first `reserve` of a key that has
  none (or whose window has ended) and lasts `window_s` whole seconds, as Limitador's fixed
  windows do (its Redis storage: a key with an expiry set on the first hit). A window counts
  `spent` tokens. A window never outlasts the length its rate has now: a counter is named for its
  rate, not its window (shared/limitplan.py), so when an admin shortens a rate's window (1h to
  1m), an open window ends at `started + window_s`, a minute after it started (what it spent
  still counts until then), not an hour after. A lengthened window keeps its end; the next one
  has the new length.
- Reservations belong to the counter, not to a window: a request admitted late in a window that
  is still generating when the window ends holds its reservation in the next one, so that
  window's admissions see it and its tokens (counted when used, as Limitador counts a hit when it
  is reported) cannot take a window past its limit plus one request's worst cost.
- `reserve(key, limit=, window_s=, amount=, also=, rid=)` admits when `spent + reserved < limit`
  and then adds `amount` to the counter's reservations, and to `also`'s: the other scope's counter
  (a team's when users are limited, a user's when the team is), only counted, never checked, so
  that a change of `limit_scope` finds what is spent and what is in flight. Refused, it changes
  nothing. Either way it answers a `Hold`: the window's id (its start, ms since the epoch), what
  was spent and reserved before it, and the milliseconds until the window ends.
- `settle(key, rid=, reserved=, tokens=, window_s=, also=)` takes the reservation back from both
  counters and adds `tokens` to their current windows, starting one where there is none (the
  tokens were used now). Settling a reservation twice takes it back once (Redis: by its `rid`).
- Everything one call does is atomic: concurrent reservations cannot both take the last tokens.
- `reserve_all(checks, rid=)` reserves on several counters at once (a team's several rates, a
  key's own, its concurrency cap): all are admitted or none is changed, so a call refused by its
  third limit holds nothing on the first two. It answers the index of the first refusing check
  (-1: admitted) and a Hold per check. `settle_all` settles them together.

Times are wall-clock milliseconds, so that saved windows (`snapshot`/`restore`) keep their ends
across a restart, and several gateways on a Redis share one clock (Redis' own `TIME`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
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


# A saved counter: (key, window start ms, window end ms, spent).
Saved = tuple[str, int, int, int]


class Check(NamedTuple):
    """One counter of a `reserve_all`: reserve `amount` on `key` while below `limit`."""

    key: str
    limit: int
    window_s: int
    amount: int
    also: str | None = None


class Settlement(NamedTuple):
    """One counter of a `settle_all`: take `reserved` back, count `tokens`."""

    key: str
    reserved: int
    tokens: int
    window_s: int
    also: str | None = None


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryCounters:
    """The in-process store: a dict of windows and one of reservations in flight, used from the
    gateway's event loop only (so `rid`s are not needed to settle once: the limiter does)."""

    def __init__(self, clock_ms: Callable[[], int] = wall_ms) -> None:
        self._clock = clock_ms
        self._windows: dict[str, _Window] = {}
        self._reserved: dict[str, int] = {}
        self._changed: set[str] = set()  # since the last `changes()`

    def _current(self, key: str, window_s: int, now: int) -> _Window:
        """The key's open window, cut to `window_s` from its start; started now when it has none."""
        window = self._windows.get(key)
        if window is not None:
            ends = window.started + window_s * 1000
            if ends < window.ends:
                window.ends = ends
            if now < window.ends:
                return window
        window = self._windows[key] = _Window(started=now, ends=now + window_s * 1000)
        return window

    def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None,
                rid: str = "") -> Hold:
        now = self._clock()
        window = self._current(key, window_s, now)
        spent, reserved = window.spent, self._reserved.get(key, 0)
        admitted = spent + reserved < limit
        if admitted:
            self._reserved[key] = reserved + amount
            self._changed.add(key)
            if also is not None:
                self._reserved[also] = self._reserved.get(also, 0) + amount
                self._changed.add(also)
        return Hold(admitted, window.started, spent, reserved, window.ends - now)

    def reserve_all(self, checks: Sequence[Check], *, rid: str = "") -> tuple[int, list[Hold]]:
        now = self._clock()
        windows, reserved_map = self._windows, self._reserved
        holds: list[Hold] = []
        refused = -1
        for at, check in enumerate(checks):
            window = windows.get(check.key)  # _current, inlined: this is every call's path
            length = check.window_s * 1000
            if window is not None and window.started + length < window.ends:
                window.ends = window.started + length
            if window is None or now >= window.ends:
                window = windows[check.key] = _Window(started=now, ends=now + length)
            spent, reserved = window.spent, reserved_map.get(check.key, 0)
            admitted = spent + reserved < check.limit
            if not admitted and refused < 0:
                refused = at
            holds.append(Hold(admitted, window.started, spent, reserved, window.ends - now))
        if refused >= 0:
            return refused, holds
        changed = self._changed
        for check in checks:
            for counter in (check.key,) if check.also is None else (check.key, check.also):
                reserved_map[counter] = reserved_map.get(counter, 0) + check.amount
                changed.add(counter)
        return -1, holds

    def settle_all(self, settlements: Sequence[Settlement], *, rid: str = "") -> None:
        for item in settlements:
            self.settle(item.key, reserved=item.reserved, tokens=item.tokens, window_s=item.window_s, also=item.also)

    def _release(self, key: str, amount: int) -> None:
        left = self._reserved.get(key, 0) - amount
        if left > 0:
            self._reserved[key] = left
        else:
            self._reserved.pop(key, None)

    def settle(self, key: str, *, reserved: int, tokens: int, window_s: int, also: str | None = None,
               rid: str = "") -> None:
        now = self._clock()
        for counter in (key,) if also is None else (key, also):
            self._release(counter, reserved)
            self._changed.add(counter)
            if tokens > 0:
                self._current(counter, window_s, now).spent += tokens

    def state(self, key: str) -> tuple[int, int]:
        """(spent in the key's current window or 0 when it has none, reserved in flight)."""
        spent, reserved, _ = self.peek(key)
        return (spent, reserved)

    def peek(self, key: str, window_s: int | None = None) -> tuple[int, int, int]:
        """(spent, reserved, ms until the window ends); spent and the time are 0 when it has no
        open window. With `window_s`, the window as the next `reserve` of that length sees it."""
        window = self._windows.get(key)
        now = self._clock()
        reserved = self._reserved.get(key, 0)
        if window is None or now >= window.ends:
            return (0, reserved, 0)
        ends = window.ends if window_s is None else min(window.ends, window.started + window_s * 1000)
        if now >= ends:
            return (0, reserved, 0)
        return (window.spent, reserved, ends - now)

    # -- saving across restarts ----------------------------------------------------------

    def snapshot(self) -> list[Saved]:
        """The windows still open, with reservations in flight counted as spent: a request
        that was running when the process died may have had its tokens generated."""
        now = self._clock()
        ended = [key for key, window in self._windows.items() if now >= window.ends]
        for key in ended:
            del self._windows[key]
        reserved = self._reserved
        return [(key, w.started, w.ends, w.spent + reserved.get(key, 0)) for key, w in self._windows.items()]

    def changes(self) -> list[Saved]:
        """`snapshot()` of the counters changed since the last call only: what a periodic
        save must write, in time proportional to the traffic, not to the number of counters."""
        changed, self._changed = self._changed, set()
        now = self._clock()
        rows = []
        for key in changed:
            w = self._windows.get(key)
            if w is not None and now < w.ends:
                rows.append((key, w.started, w.ends, w.spent + self._reserved.get(key, 0)))
        return rows

    def restore(self, saved: Iterable[Saved]) -> None:
        now = self._clock()
        for key, started, ends, spent in saved:
            if now < ends and key not in self._windows:
                self._windows[key] = _Window(started=started, ends=ends, spent=spent)
