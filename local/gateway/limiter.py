"""Token limits with Limitador's semantics plus reservations (Kuadrant's reservation mode).

A counter per (team, user) — or per team when the team's limit_scope is "team" — counts tokens
in a fixed window that starts at the first hit. A request is admitted while the counter (spent
plus reserved) is below the limit; it reserves an estimate (max_tokens + prompt size) and is
settled from `usage.total_tokens` at completion. Because every admitted request's reservation
is visible to the next admission, N concurrent requests overshoot the limit by at most about
one request's cost instead of N.

The limit and window length are read from the team on every call, so a PATCH applies to the
next request; the counter itself survives a change (what was spent stays spent). A counter
belongs to one team, not to its id: a team deleted and created again under the same id (its
`created_at` differs) starts with fresh counters, as its keys are new too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.durations import window_ms
from shared.errors import RateLimited
from shared.store.base import Team


# (team id, the team's created_at, user id or "" for a team-wide budget)
Counter = tuple[str, datetime, str]


@dataclass(slots=True)
class _Window:
    started: float
    spent: int = 0
    reserved: int = 0


class Reservation:
    """An admitted request's hold on its counter, and the X-RateLimit-* values at admission."""

    __slots__ = ("amount", "counter", "limit", "remaining", "reset", "settled", "window")

    def __init__(self, counter: Counter, window: _Window, amount: int, limit: int, remaining: int, reset: int) -> None:
        self.counter = counter
        self.window = window
        self.amount = amount
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        self.settled = False

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def header_lines(self) -> bytes:
        """`headers` as encoded head lines (the hot path writes heads as bytes)."""
        return b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n" % (
            self.limit, self.remaining, self.reset,
        )


class TokenLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[Counter, _Window] = {}
        self._lengths: dict[str, float] = {}
        self._open = 0  # reservations admitted and not settled yet

    @property
    def outstanding(self) -> int:
        """How many admitted requests have not been settled (0 once all requests are over)."""
        return self._open

    def _length_s(self, time_window: str) -> float:
        length = self._lengths.get(time_window)
        if length is None:
            length = self._lengths[time_window] = window_ms(time_window) / 1000.0
        return length

    def _current(self, counter: Counter, length: float, now: float) -> _Window:
        window = self._windows.get(counter)
        if window is None or now >= window.started + length:
            window = self._windows[counter] = _Window(started=now)
        return window

    @staticmethod
    def counter_for(team: Team, user_id: str) -> Counter:
        return (team.team_id, team.created_at, "" if team.limit_scope == "team" else user_id)

    def admit(self, *, team: Team, user_id: str, estimate: int) -> Reservation:
        """Reserve `estimate` tokens, or raise RateLimited with Retry-After and X-RateLimit-*."""
        now = self._clock()
        length = self._lengths.get(team.time_window) or self._length_s(team.time_window)
        counter = (team.team_id, team.created_at, "" if team.limit_scope == "team" else user_id)  # counter_for
        window = self._windows.get(counter)
        if window is None or now >= window.started + length:
            window = self._windows[counter] = _Window(started=now)
        reset = max(1, math.ceil(window.started + length - now))
        used = window.spent + window.reserved
        if used >= team.token_limit:
            raise RateLimited(
                f"token limit of {team.token_limit} per {team.time_window} reached; "
                f"retry in {reset} s",
                headers={
                    "Retry-After": str(reset),
                    "X-RateLimit-Limit": str(team.token_limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                },
            )
        window.reserved += estimate
        self._open += 1
        return Reservation(counter, window, estimate, team.token_limit, max(0, team.token_limit - used), reset)

    def settle(self, reservation: Reservation, *, tokens: int, team: Team) -> None:
        """Replace the reservation by what was really used (0 releases it). Idempotent."""
        if reservation.settled:
            return
        reservation.settled = True
        self._open -= 1
        reservation.window.reserved -= reservation.amount
        if tokens > 0:
            # The window may have ended while the request ran: then the tokens count in the
            # window that is current now, as Limitador counts a hit when it is reported.
            window = reservation.window
            length = self._lengths.get(team.time_window) or self._length_s(team.time_window)
            now = self._clock()
            if self._windows.get(reservation.counter) is not window or now >= window.started + length:
                window = self._current(reservation.counter, length, now)
            window.spent += tokens

    def state(self, *, team: Team, user_id: str) -> tuple[int, int]:
        """(spent, reserved) in the current window; for tests and diagnostics."""
        window = self._windows.get(self.counter_for(team, user_id))
        if window is None or self._clock() >= window.started + self._length_s(team.time_window):
            return (0, 0)
        return (window.spent, window.reserved)
