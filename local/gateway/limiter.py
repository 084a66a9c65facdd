"""Token and request limits with Limitador's semantics plus reservations (Kuadrant's reservation mode).

Each rate of a team (shared/rates.py) has a counter per (team, user), or per team when its scope
is "team", counting tokens or requests in a fixed window that starts at the first hit
(counters.py); a key's own rates have a counter per key, and its cap on concurrent calls one
more. A call reserves on every limit that applies to it (rates of another model do not) in one
atomic step, so it is admitted by all of them or holds nothing; the first that refuses is named
in the 429 (`refusal`). A request is admitted while the
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
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from local.gateway.counters import Check, Hold, MemoryCounters, Saved, Settlement, wall_ms
from shared.errors import RateLimited
from shared.limitplan import CONCURRENT, TOKENS, Budget, Limit, LimitPlanner, budget_of, every_limit
from shared.store.base import ApiKey, Team

log = logging.getLogger("maas.gateway")

# When a request is refused only because others' reservations are in flight (what was spent is
# below the limit), those settle within a request's time, not at the window's end.
IN_FLIGHT_RETRY_S = 1

class Reservation:
    """An admitted request's hold on its counters, and the X-RateLimit-* values at admission:
    those of the token limit with the least left (the one that binds)."""

    __slots__ = ("amount", "limits", "remaining", "reset", "rid", "settled", "shown")

    def __init__(self, limits: tuple[Limit, ...], holds: Sequence[Hold], amount: int, rid: str = "") -> None:
        self.limits = limits
        self.rid = rid
        self.amount = amount
        self.settled = False
        if len(limits) == 1:  # the short form alone: most teams, on the hot path
            limit, hold = limits[0], holds[0]
            self.shown = limit.limit
            self.remaining = max(0, limit.limit - hold.spent - hold.reserved - amount) if limit.kind == TOKENS else 0
            self.reset = max(1, -(-hold.reset_ms // 1000))
            return
        shown, remaining, reset_ms = limits[0], -1, holds[0].reset_ms
        for limit, hold in zip(limits, holds):
            if limit.kind != TOKENS:
                continue
            left = max(0, limit.limit - hold.spent - hold.reserved - amount)
            if remaining < 0 or left < remaining:
                shown, remaining, reset_ms = limit, left, hold.reset_ms
        self.shown = shown.limit
        self.remaining = max(0, remaining)
        self.reset = max(1, -(-reset_ms // 1000))

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.shown),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def header_lines(self) -> bytes:
        """`headers` as encoded head lines (the hot path writes heads as bytes)."""
        return b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n" % (
            self.shown, self.remaining, self.reset,
        )

    def settlements(self, tokens: int, *, cancel: bool = False) -> list[Settlement]:
        amount = self.amount
        return [Settlement(limit.key, limit.amount(amount), 0 if cancel else limit.used(tokens), limit.window_s,
                           limit.also) for limit in self.limits]


def refusal(limit: Limit, hold: Hold) -> RateLimited:
    """The 429 of the first limit that refused a call, naming it: which, its window, its reset."""
    reset = max(1, -(-hold.reset_ms // 1000))
    rate = limit.rate
    if limit.kind == CONCURRENT:
        retry = IN_FLIGHT_RETRY_S
        message = (f"this key already has {hold.reserved} call(s) in flight, its max_concurrent of {limit.limit}; "
                   f"retry in {retry} s")
    elif hold.spent < limit.limit:
        # Only reservations in flight stand in the way: they settle (usually under what they
        # held) long before the window ends.
        retry = min(reset, IN_FLIGHT_RETRY_S)
        message = f"{rate.describe()} is held by requests in flight; retry in {retry} s"
    else:
        retry = reset
        message = f"{rate.describe()} reached; retry in {retry} s"
    return RateLimited(message, limit={
        "name": rate.name, "unit": rate.unit, "limit": rate.limit, "window": rate.window, "scope": rate.scope,
        "model": rate.model, "reset_seconds": reset, "retry_after_seconds": retry,
    }, headers={
        "Retry-After": str(retry),
        "X-RateLimit-Limit": str(limit.limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(reset),
    })


class Limiter(Protocol):
    """What the gateway needs of a limiter: `admit` answers a Reservation (in-process) or an
    awaitable of one (Redis); `remote` says which."""

    remote: bool

    def settle(self, reservation: Reservation, *, tokens: int) -> None: ...

    @property
    def outstanding(self) -> int: ...


class TokenLimiter:
    remote = False

    def __init__(self, counters: MemoryCounters | None = None) -> None:
        self.counters = counters if counters is not None else MemoryCounters()
        self._keys = LimitPlanner()
        self._open = 0  # reservations admitted and not settled yet

    @property
    def outstanding(self) -> int:
        """How many admitted requests have not been settled (0 once all requests are over)."""
        return self._open

    def admit(self, *, team: Team, key: ApiKey, model: str, estimate: int) -> Reservation:
        """Reserve on every limit of the call, or raise RateLimited naming the first that refuses."""
        limits = self._keys.plan(team, key, model)
        if len(limits) == 1:  # the short form alone: one counter, without the lists
            limit = limits[0]
            hold = self.counters.reserve(limit.key, limit=limit.limit, window_s=limit.window_s,
                                         amount=estimate if limit.kind == TOKENS else 1, also=limit.also)
            if not hold.admitted:
                raise refusal(limit, hold)
            self._open += 1
            return Reservation(limits, (hold,), estimate)
        refused, holds = self.counters.reserve_all([Check(limit.key, limit.limit, limit.window_s,
                                                          limit.amount(estimate), limit.also) for limit in limits])
        if refused >= 0:
            raise refusal(limits[refused], holds[refused])
        self._open += 1
        return Reservation(limits, holds, estimate)

    def settle(self, reservation: Reservation, *, tokens: int) -> None:
        """Replace the reservation by what was really used (0 releases it). Idempotent.

        Tokens used after the window ended count in the window current now, as Limitador
        counts a hit when it is reported."""
        if reservation.settled:
            return
        reservation.settled = True
        self._open -= 1
        limits = reservation.limits
        if len(limits) == 1:
            limit = limits[0]
            self.counters.settle(limit.key, reserved=limit.amount(reservation.amount), tokens=limit.used(tokens),
                                 window_s=limit.window_s, also=limit.also)
            return
        self.counters.settle_all(reservation.settlements(tokens))

    def state(self, *, team: Team, user_id: str) -> tuple[int, int]:
        """(spent, reserved) in the current window of the counter the team's primary rate enforces."""
        return self.counters.state(self._keys.pair(team, user_id)[0])

    def budgets(self, *, team: Team, key: ApiKey, model: str | None = None) -> list[Budget]:
        """Every limit of the key's calls (of `model`; None: the limits of every model) now."""
        return [budget_of(limit, self.counters.peek(limit.key, limit.window_s))
                for limit in every_limit(self._keys, team, key, model)]


class RemoteCounters(Protocol):
    async def reserve_all(self, checks: Sequence[Check], *, rid: str, hold_ms: int) -> tuple[int, list[Hold]]: ...

    async def settle_all(self, settlements: Sequence[Settlement], *, rid: str, cancel: bool = False) -> None: ...

    async def state(self, key: str) -> tuple[int, int]: ...

    async def peek(self, key: str, window_s: int | None = None) -> tuple[int, int, int]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class RedisLimiter:
    """The same limits over counters every gateway naming the Redis shares. A Redis that cannot
    be reached fails the call closed (BackendUnavailable, 503, naming Redis)."""

    remote = True

    def __init__(self, counters: RemoteCounters, *, hold_s: float = 3600.0) -> None:
        self.counters = counters
        self._keys = LimitPlanner()
        self._open = 0
        self._settling: set[asyncio.Task[None]] = set()
        self._hold_ms = int(hold_s * 1000)
        # Reservation ids: this gateway's own random part, then a count.
        self._rids = itertools.count()
        self._instance = os.urandom(6).hex()

    @property
    def outstanding(self) -> int:
        return self._open

    async def admit(self, *, team: Team, key: ApiKey, model: str, estimate: int) -> Reservation:
        limits = self._keys.plan(team, key, model)
        rid = f"{self._instance}.{next(self._rids)}"
        checks = [Check(limit.key, limit.limit, limit.window_s, limit.amount(estimate), limit.also) for limit in limits]
        try:
            refused, holds = await self.counters.reserve_all(checks, rid=rid, hold_ms=self._hold_ms)
        except BaseException:
            # Redis was too slow to answer, or the client left while it was asked: it may still
            # run the reservation. Take it back (or bar it) rather than hold the budget.
            taken_back = Reservation(limits, [Hold(True, 0, 0, 0, 0)] * len(limits), estimate, rid)
            self._send(self.counters.settle_all(taken_back.settlements(0, cancel=True), rid=rid, cancel=True),
                       "cancel a reservation", logging.DEBUG)
            raise
        if refused >= 0:
            raise refusal(limits[refused], holds[refused])
        self._open += 1
        return Reservation(limits, holds, estimate, rid)

    def settle(self, reservation: Reservation, *, tokens: int) -> None:
        """Sent without waiting (the answer has gone out); a failure is logged: the reservation
        then stands until it lapses (`hold_s`, longer than a request runs), which errs on the
        side of the limit."""
        if reservation.settled:
            return
        reservation.settled = True
        self._open -= 1
        self._send(self.counters.settle_all(reservation.settlements(tokens), rid=reservation.rid),
                   f"settle {tokens} token(s)")

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

    async def budgets(self, *, team: Team, key: ApiKey, model: str | None = None) -> list[Budget]:
        limits = every_limit(self._keys, team, key, model)
        peeked = await asyncio.gather(*(self.counters.peek(limit.key, limit.window_s) for limit in limits))
        return [budget_of(limit, seen) for limit, seen in zip(limits, peeked)]

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
