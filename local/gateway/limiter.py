"""Token limits with Limitador's semantics plus reservations (Kuadrant's reservation mode).

A counter per (team, user) — or per team when the team's limit_scope is "team" — counts tokens
in a fixed window that starts at the first hit (counters.py). A request is admitted while the
counter (spent plus reserved) is below the limit; it reserves what it can cost (proxy.py: every
completion's max_tokens plus the prompt) and is settled from the backend's usage at completion.
Every admitted request's reservation is visible to the next admission, so however many requests
run at once, a counter ends at most one request's worst cost over its limit: the last admitted
request saw `spent + reserved < limit` and may then use all it reserved.

The limit and window length are read from the team on every call, so a PATCH applies to the
next request. Both scopes' counters are kept (the one not enforced is only counted), so a change
of `limit_scope` keeps what was spent. A counter belongs to one team, not to its id: a team
deleted and created again under the same id (its `created_at` differs) starts afresh.

Two stores: `MemoryCounters` in the process (saved to the data dir every second by
`CounterFile`, so a restart or a kill keeps the windows), or Redis (`MAAS_REDIS_URL`), shared by
every gateway that names it. The in-process limiter admits synchronously, on the request path
without a task; the Redis one is awaited.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sqlite3
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from local.gateway.counters import Hold, MemoryCounters, Saved, wall_ms
from shared.durations import window_ms
from shared.errors import RateLimited
from shared.store.base import Team

log = logging.getLogger("maas.gateway")

# When a request is refused only because others' reservations are in flight (what was spent is
# below the limit), those settle within a request's time, not at the window's end.
IN_FLIGHT_RETRY_S = 1


class Reservation:
    """An admitted request's hold on its counter, and the X-RateLimit-* values at admission."""

    __slots__ = ("also", "amount", "key", "limit", "remaining", "reset", "rid", "settled", "window_s")

    def __init__(self, key: str, also: str, hold: Hold, window_s: int, amount: int, limit: int,
                 rid: str = "") -> None:
        self.key = key
        self.also = also
        self.rid = rid
        self.window_s = window_s
        self.amount = amount
        self.limit = limit
        # What is left once this request's reservation is counted.
        self.remaining = max(0, limit - hold.spent - hold.reserved - amount)
        self.reset = max(1, -(-hold.reset_ms // 1000))
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


def refusal(team: Team, hold: Hold) -> RateLimited:
    reset = max(1, -(-hold.reset_ms // 1000))
    if hold.spent < team.token_limit:
        # Only reservations in flight stand in the way: they settle (usually under what they
        # held) long before the window ends.
        retry = min(reset, IN_FLIGHT_RETRY_S)
        message = (f"token limit of {team.token_limit} per {team.time_window} is held by requests in "
                   f"flight; retry in {retry} s")
    else:
        retry = reset
        message = f"token limit of {team.token_limit} per {team.time_window} reached; retry in {retry} s"
    return RateLimited(message, headers={
        "Retry-After": str(retry),
        "X-RateLimit-Limit": str(team.token_limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(reset),
    })


class _Keys:
    """Counter names: one per team incarnation and user, one per team incarnation."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, datetime], str] = {}
        self._seconds: dict[str, int] = {}

    def window_s(self, time_window: str) -> int:
        seconds = self._seconds.get(time_window)
        if seconds is None:
            # Windows are whole seconds (normalize_rate_window); never 0.
            seconds = self._seconds[time_window] = max(1, window_ms(time_window) // 1000)
        return seconds

    def pair(self, team: Team, user_id: str) -> tuple[str, str]:
        """(the counter the team's scope enforces, the other scope's counter)."""
        incarnation = (team.team_id, team.created_at)
        prefix = self._prefixes.get(incarnation)
        if prefix is None:
            prefix = self._prefixes[incarnation] = f"{team.team_id}@{team.created_at.timestamp():.6f}/"
        user_key, team_key = prefix + "u/" + user_id, prefix + "team"
        return (team_key, user_key) if team.limit_scope == "team" else (user_key, team_key)


class Budget(NamedTuple):
    """A counter as a key holder may see it (GET /v1/me): why a request would be refused."""

    limit: int
    window: str
    scope: str
    spent: int
    reserved: int
    reset_s: int  # 0: no window open (the next request opens one)

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent - self.reserved)


def _budget(team: Team, peeked: tuple[int, int, int]) -> Budget:
    spent, reserved, reset_ms = peeked
    return Budget(team.token_limit, team.time_window, team.limit_scope, spent, reserved, -(-reset_ms // 1000))


class Limiter(Protocol):
    """What the gateway needs of a limiter: `admit` answers a Reservation (in-process) or an
    awaitable of one (Redis); `remote` says which."""

    remote: bool

    def settle(self, reservation: Reservation, *, tokens: int, team: Team) -> None: ...

    @property
    def outstanding(self) -> int: ...


class TokenLimiter:
    remote = False

    def __init__(self, counters: MemoryCounters | None = None) -> None:
        self.counters = counters if counters is not None else MemoryCounters()
        self._keys = _Keys()
        self._open = 0  # reservations admitted and not settled yet

    @property
    def outstanding(self) -> int:
        """How many admitted requests have not been settled (0 once all requests are over)."""
        return self._open

    def admit(self, *, team: Team, user_id: str, estimate: int) -> Reservation:
        """Reserve `estimate` tokens, or raise RateLimited with Retry-After and X-RateLimit-*."""
        key, also = self._keys.pair(team, user_id)
        window_s = self._keys.window_s(team.time_window)
        hold = self.counters.reserve(key, limit=team.token_limit, window_s=window_s, amount=estimate, also=also)
        if not hold.admitted:
            raise refusal(team, hold)
        self._open += 1
        return Reservation(key, also, hold, window_s, estimate, team.token_limit)

    def settle(self, reservation: Reservation, *, tokens: int, team: Team) -> None:
        """Replace the reservation by what was really used (0 releases it). Idempotent.

        Tokens used after the window ended count in the window current now, as Limitador
        counts a hit when it is reported."""
        if reservation.settled:
            return
        reservation.settled = True
        self._open -= 1
        self.counters.settle(reservation.key, reserved=reservation.amount, tokens=tokens,
                             window_s=reservation.window_s, also=reservation.also)

    def state(self, *, team: Team, user_id: str) -> tuple[int, int]:
        """(spent, reserved) in the current window of the counter the team enforces."""
        return self.counters.state(self._keys.pair(team, user_id)[0])

    def budget(self, *, team: Team, user_id: str) -> Budget:
        return _budget(team, self.counters.peek(self._keys.pair(team, user_id)[0]))


class RemoteCounters(Protocol):
    async def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None,
                      rid: str, hold_ms: int) -> Hold: ...

    async def settle(self, key: str, *, reserved: int, tokens: int, window_s: int, also: str | None = None,
                     rid: str, cancel: bool = False) -> None: ...

    async def state(self, key: str) -> tuple[int, int]: ...

    async def peek(self, key: str) -> tuple[int, int, int]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class RedisLimiter:
    """The same limits over counters every gateway naming the Redis shares. A Redis that cannot
    be reached fails the call closed (BackendUnavailable, 503, naming Redis)."""

    remote = True

    def __init__(self, counters: RemoteCounters, *, hold_s: float = 3600.0) -> None:
        self.counters = counters
        self._keys = _Keys()
        self._open = 0
        self._settling: set[asyncio.Task[None]] = set()
        self._hold_ms = int(hold_s * 1000)
        # Reservation ids: this gateway's own random part, then a count.
        self._rids = itertools.count()
        self._instance = os.urandom(6).hex()

    @property
    def outstanding(self) -> int:
        return self._open

    async def admit(self, *, team: Team, user_id: str, estimate: int) -> Reservation:
        key, also = self._keys.pair(team, user_id)
        window_s = self._keys.window_s(team.time_window)
        rid = f"{self._instance}.{next(self._rids)}"
        try:
            hold = await self.counters.reserve(key, limit=team.token_limit, window_s=window_s, amount=estimate,
                                               also=also, rid=rid, hold_ms=self._hold_ms)
        except BaseException:
            # Redis was too slow to answer, or the client left while it was asked: it may still
            # run the reservation. Take it back (or bar it) rather than hold the budget.
            self._send(self.counters.settle(key, reserved=estimate, tokens=0, window_s=window_s, also=also,
                                            rid=rid, cancel=True), "cancel a reservation", logging.DEBUG)
            raise
        if not hold.admitted:
            raise refusal(team, hold)
        self._open += 1
        return Reservation(key, also, hold, window_s, estimate, team.token_limit, rid)

    def settle(self, reservation: Reservation, *, tokens: int, team: Team) -> None:
        """Sent without waiting (the answer has gone out); a failure is logged: the reservation
        then stands until it lapses (`hold_s`, longer than a request runs), which errs on the
        side of the limit."""
        if reservation.settled:
            return
        reservation.settled = True
        self._open -= 1
        self._send(self.counters.settle(reservation.key, reserved=reservation.amount, tokens=tokens,
                                        window_s=reservation.window_s, also=reservation.also,
                                        rid=reservation.rid), f"settle {tokens} token(s)")

    def _send(self, settling: Coroutine[Any, Any, None], what: str, level: int = logging.WARNING) -> None:
        # A cancel follows a failed reserve: when Redis is down, the 503 has said so already.
        task = asyncio.get_running_loop().create_task(self._quietly(settling, what, level))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    @staticmethod
    async def _quietly(settling: Coroutine[Any, Any, None], what: str, level: int) -> None:
        try:
            await settling
        except Exception as exc:  # noqa: BLE001 - logged; the reservation lapses on its own
            log.log(level, "could not %s in Redis: %s", what, exc)

    async def state(self, *, team: Team, user_id: str) -> tuple[int, int]:
        return await self.counters.state(self._keys.pair(team, user_id)[0])

    async def budget(self, *, team: Team, user_id: str) -> Budget:
        return _budget(team, await self.counters.peek(self._keys.pair(team, user_id)[0]))

    async def drain(self) -> None:
        """Wait for the settlements sent (at shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self.counters.close()


class CounterFile:
    """The in-process counters' windows in a SQLite file, saved every `interval_s` seconds.

    Saving costs the gateway's loop one pass over the counters changed since the last save
    (MemoryCounters.snapshot); the write runs in a thread. What a `kill -9` loses is at most
    one interval of counts; reservations in flight are saved as spent (their tokens may have
    been generated).
    """

    def __init__(self, path: Path, counters: MemoryCounters, *, interval_s: float = 1.0) -> None:
        self._path = path
        self._counters = counters
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        fresh = not path.exists()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS windows (key TEXT PRIMARY KEY, started INTEGER NOT NULL, "
            "ends INTEGER NOT NULL, spent INTEGER NOT NULL)"
        )

    def load(self) -> int:
        """Put the saved windows that are still open back; how many."""
        now = wall_ms()
        rows: list[Saved] = [
            (str(key), int(started), int(ends), int(spent))
            for key, started, ends, spent in self._db.execute(
                "SELECT key, started, ends, spent FROM windows WHERE ends > ?", (now,)
            )
        ]
        self._counters.restore(rows)
        return len(rows)

    def _write(self, rows: list[Saved]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO windows (key, started, ends, spent) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET started = excluded.started, ends = excluded.ends, "
                "spent = excluded.spent",
                rows,
            )
            self._db.execute("DELETE FROM windows WHERE ends <= ?", (wall_ms(),))

    async def save(self) -> None:
        rows = self._counters.changes()  # on the loop: no race with the requests
        if rows:
            await asyncio.get_running_loop().run_in_executor(None, self._write, rows)

    def start(self) -> None:
        """Save every interval, on the running loop (the gateway's)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.save()
            except Exception as exc:  # noqa: BLE001 - one failed save must not end the saving
                log.warning("could not save the token counters to %s: %s", self._path, exc)

    async def stop(self) -> None:
        """The last save (after the requests have ended), then close."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await self.save()
        finally:
            self._db.close()
