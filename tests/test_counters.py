"""Both counter stores against the semantics in local/gateway/counters.py.

Every example runs on MemoryCounters (on a clock the test moves) and on RedisCounters (on a real
redis-server from tests/redis_harness.py, through one event loop, each test under its own key
prefix instead of a FLUSHALL). The property tests replay random interleavings of reserve and
settle against a model of the semantics.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local.gateway.counters import Hold, MemoryCounters, wall_ms
from local.gateway.rediscounters import RedisCounters
from shared.errors import BackendUnavailable
from tests.redis_harness import RedisServer, free_port, redis_binary, redis_server  # noqa: F401

T = TypeVar("T")
HOUR = 3600


class Store(Protocol):
    """The sync face both stores are tested through. Reservation ids are the wrappers' (`Rids`):
    a settle takes back the oldest reservation of its amount on its counter."""

    def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None) -> Hold: ...

    def settle(self, key: str, *, window_s: int, reserved: int, tokens: int, also: str | None = None) -> None: ...

    def state(self, key: str) -> tuple[int, int]: ...

    def peek(self, key: str, window_s: int | None = None) -> tuple[int, int, int]: ...

    def wait_ms(self, ms: int) -> None:
        """Let `ms` of the store's clock pass."""


class MemoryStore:
    def __init__(self) -> None:
        self.now = wall_ms()
        self.counters = MemoryCounters(clock_ms=lambda: self.now)

    def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None) -> Hold:
        return self.counters.reserve(key, limit=limit, window_s=window_s, amount=amount, also=also)

    def settle(self, key: str, *, window_s: int, reserved: int, tokens: int, also: str | None = None) -> None:
        self.counters.settle(key, reserved=reserved, tokens=tokens, window_s=window_s, also=also)

    def state(self, key: str) -> tuple[int, int]:
        return self.counters.state(key)

    def peek(self, key: str, window_s: int | None = None) -> tuple[int, int, int]:
        return self.counters.peek(key, window_s)

    def wait_ms(self, ms: int) -> None:
        self.now += ms


class Rids:
    """Unique reservation ids, remembered by (counter, amount) until settled."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self._held: dict[tuple[str, int], list[str]] = {}

    def new(self, key: str, amount: int) -> str:
        rid = f"r{next(self._count)}"
        self._held.setdefault((key, amount), []).append(rid)
        return rid

    def take(self, key: str, amount: int) -> str:
        held = self._held.get((key, amount))
        return held.pop(0) if held else f"unknown{next(self._count)}"

    def forget(self, key: str, amount: int) -> None:
        """The newest one was refused: nothing to settle."""
        self._held[(key, amount)].pop()


class RedisStore:
    """RedisCounters run to completion on one loop; keys under a namespace of their own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: RedisCounters) -> None:
        self.loop = loop
        self.counters = counters
        self.namespace = f"{uuid.uuid4().hex}:"
        self.rids = Rids()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _also(self, also: str | None) -> str | None:
        return None if also is None else self.namespace + also

    def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None) -> Hold:
        rid = self.rids.new(key, amount)
        hold = self.run(self.counters.reserve(self.namespace + key, limit=limit, window_s=window_s, amount=amount,
                                              also=self._also(also), rid=rid, hold_ms=HOUR * 1000))
        if not hold.admitted:
            self.rids.forget(key, amount)
        return hold

    def settle(self, key: str, *, window_s: int, reserved: int, tokens: int, also: str | None = None) -> None:
        self.run(self.counters.settle(self.namespace + key, reserved=reserved, tokens=tokens, window_s=window_s,
                                      also=self._also(also), rid=self.rids.take(key, reserved)))

    def state(self, key: str) -> tuple[int, int]:
        return self.run(self.counters.state(self.namespace + key))

    def peek(self, key: str, window_s: int | None = None) -> tuple[int, int, int]:
        return self.run(self.counters.peek(self.namespace + key, window_s))

    def wait_ms(self, ms: int) -> None:
        time.sleep(ms / 1000)


PREFIX = "test:counter:"


@pytest.fixture(scope="module")
def redis_loop(redis_server: RedisServer) -> Iterator[tuple[asyncio.AbstractEventLoop, RedisCounters]]:  # noqa: F811
    loop = asyncio.new_event_loop()
    counters = RedisCounters(redis_server.url, prefix=PREFIX)
    yield loop, counters
    loop.run_until_complete(counters.close())
    loop.close()


@pytest.fixture
def raw_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:  # noqa: F811
    """A plain sync client, to look at what the store wrote."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
def new_store(request: pytest.FixtureRequest) -> Callable[[], Store]:
    """Makes fresh, empty stores of one kind (a property test needs one per example)."""
    if request.param == "memory":
        return MemoryStore
    loop, counters = request.getfixturevalue("redis_loop")
    return lambda: RedisStore(loop, counters)


@pytest.fixture
def store(new_store: Callable[[], Store]) -> Store:
    return new_store()


# -- examples --------------------------------------------------------------------------------


def test_admits_below_the_limit_and_reserves(store: Store) -> None:
    before = wall_ms()
    hold = store.reserve("k", limit=100, window_s=HOUR, amount=30)
    assert hold.admitted
    assert (hold.spent, hold.reserved) == (0, 0)
    # Redis' clock is this machine's: the window starts now, by either clock.
    assert before - 1000 <= hold.window <= wall_ms() + 1000
    assert 0 < hold.reset_ms <= HOUR * 1000
    assert store.state("k") == (0, 30)


def test_refuses_at_the_limit_and_changes_nothing(store: Store) -> None:
    first = store.reserve("k", limit=100, window_s=HOUR, amount=100)
    assert first.admitted
    refused = store.reserve("k", limit=100, window_s=HOUR, amount=1)
    assert not refused.admitted
    assert (refused.window, refused.spent, refused.reserved) == (first.window, 0, 100)
    assert store.state("k") == (0, 100)

    store.settle("k", window_s=HOUR, reserved=100, tokens=100)
    refused = store.reserve("k", limit=100, window_s=HOUR, amount=1)
    assert not refused.admitted
    assert (refused.window, refused.spent, refused.reserved) == (first.window, 100, 0)
    assert store.state("k") == (100, 0)


def test_admits_while_below_however_much_it_then_reserves(store: Store) -> None:
    # Admission is `spent + reserved < limit`: the last admitted request may go over by its own amount.
    assert store.reserve("k", limit=100, window_s=HOUR, amount=99).admitted
    assert store.reserve("k", limit=100, window_s=HOUR, amount=500).admitted
    assert store.state("k") == (0, 599)
    assert not store.reserve("k", limit=100, window_s=HOUR, amount=1).admitted


def test_a_reservation_is_visible_to_the_next_reserve(store: Store) -> None:
    a = store.reserve("k", limit=1000, window_s=HOUR, amount=30)
    b = store.reserve("k", limit=1000, window_s=HOUR, amount=70)
    assert b.admitted and b.window == a.window
    assert (b.spent, b.reserved) == (0, 30)
    c = store.reserve("k", limit=1000, window_s=HOUR, amount=1)
    assert (c.spent, c.reserved) == (0, 100)
    assert store.state("k") == (0, 101)


def test_settle_replaces_the_reservation_by_the_tokens(store: Store) -> None:
    a = store.reserve("k", limit=1000, window_s=HOUR, amount=50)
    b = store.reserve("k", limit=1000, window_s=HOUR, amount=40)
    store.settle("k", window_s=HOUR, reserved=50, tokens=20)
    assert store.state("k") == (20, 40)
    store.settle("k", window_s=HOUR, reserved=40, tokens=0)
    assert store.state("k") == (20, 0)
    nxt = store.reserve("k", limit=1000, window_s=HOUR, amount=1)
    assert (nxt.window, nxt.spent, nxt.reserved) == (a.window, 20, 0)


def test_also_holds_and_counts_and_is_never_checked(store: Store) -> None:
    # The other scope's counter sees the reservation in flight (a change of limit_scope now
    # finds it), though it is over its own limit: it is never checked.
    assert store.reserve("team", limit=10, window_s=HOUR, amount=10).admitted
    hold = store.reserve("user", limit=100, window_s=HOUR, amount=50, also="team")
    assert hold.admitted
    assert store.state("user") == (0, 50)
    assert store.state("team") == (0, 60)
    store.settle("user", window_s=HOUR, reserved=50, tokens=30, also="team")
    assert store.state("user") == (30, 0)
    assert store.state("team") == (30, 10)
    # Counted into a window of its own, that a later reserve on it sees.
    store.settle("team", window_s=HOUR, reserved=10, tokens=0)
    team = store.reserve("team", limit=1000, window_s=HOUR, amount=5)
    assert team.admitted and (team.spent, team.reserved) == (30, 0)
    # Zero tokens: nothing is counted anywhere, and no window is started for `also`.
    store.settle("user", window_s=HOUR, reserved=0, tokens=0, also="other")
    assert store.state("other") == (0, 0)
    assert store.state("team") == (30, 5)


def test_a_refused_reserve_holds_nothing_on_also(store: Store) -> None:
    assert store.reserve("user", limit=10, window_s=HOUR, amount=10).admitted
    assert not store.reserve("user", limit=10, window_s=HOUR, amount=7, also="team").admitted
    assert store.state("team") == (0, 0)


def test_reservations_outlive_their_window(store: Store) -> None:
    """A call admitted late in a window holds its reservation in the next: that window's
    admissions see it, and its tokens count where they were used."""
    store.reserve("a", limit=100, window_s=1, amount=50)
    late = store.reserve("a", limit=100, window_s=1, amount=40)
    store.wait_ms(1100)
    assert store.state("a") == (0, 90)  # no window open, both calls in flight
    nxt = store.reserve("a", limit=100, window_s=1, amount=20)
    assert nxt.admitted and nxt.window >= late.window + 1000
    assert (nxt.spent, nxt.reserved) == (0, 90)
    assert not store.reserve("a", limit=100, window_s=1, amount=1).admitted  # 110 held
    store.settle("a", window_s=1, reserved=50, tokens=45)
    store.settle("a", window_s=1, reserved=40, tokens=5)
    assert store.state("a") == (50, 20)
    refused = store.reserve("a", limit=70, window_s=1, amount=1)
    assert not refused.admitted and refused.window == nxt.window


def test_settle_after_the_window_ended_counts_in_a_new_window(store: Store) -> None:
    old = store.reserve("a", limit=100, window_s=1, amount=50)
    store.wait_ms(1100)
    # No window now: the settle starts one with the tokens.
    store.settle("a", window_s=1, reserved=50, tokens=20)
    assert store.state("a") == (20, 0)
    nxt = store.reserve("a", limit=100, window_s=1, amount=1)
    assert nxt.window >= old.window + 1000
    assert (nxt.spent, nxt.reserved) == (20, 0)


def test_a_window_ends_after_window_s(store: Store) -> None:
    first = store.reserve("k", limit=100, window_s=1, amount=100)
    store.settle("k", window_s=1, reserved=100, tokens=100)
    assert not store.reserve("k", limit=100, window_s=1, amount=1).admitted
    assert 0 < first.reset_ms <= 1000
    store.wait_ms(1100)
    assert store.state("k") == (0, 0)
    again = store.reserve("k", limit=100, window_s=1, amount=1)
    assert again.admitted
    assert (again.spent, again.reserved) == (0, 0)
    assert again.window >= first.window + 1000
    assert 0 < again.reset_ms <= 1000


def test_reset_ms_counts_down_to_the_window_end(store: Store) -> None:
    first = store.reserve("k", limit=100, window_s=60, amount=1)
    assert 60_000 - 1000 < first.reset_ms <= 60_000
    store.wait_ms(300)
    later = store.reserve("k", limit=100, window_s=60, amount=1)
    assert later.window == first.window
    assert 0 < later.reset_ms <= first.reset_ms - 300
    # A lengthened window keeps its end: a later call's longer window_s does not move it.
    other = store.reserve("k", limit=100, window_s=HOUR, amount=1)
    assert other.window == first.window and other.reset_ms <= later.reset_ms


def test_a_shortened_window_ends_as_its_new_length_says_from_its_start(store: Store) -> None:
    # An admin changes a team's 1h limit to 1s (the quickstart's step 4, with 1m): the hour's
    # window, spent past the new limit, ends a second after it started, not an hour after.
    first = store.reserve("k", limit=100, window_s=HOUR, amount=50)
    store.settle("k", window_s=HOUR, reserved=50, tokens=53)
    refused = store.reserve("k", limit=20, window_s=1, amount=1)
    assert not refused.admitted and refused.window == first.window and refused.spent == 53
    assert 0 < refused.reset_ms <= 1000
    assert store.peek("k", 1)[0] == 53 and 0 < store.peek("k", 1)[2] <= 1000
    store.wait_ms(1100)
    assert store.peek("k", 1) == (0, 0, 0)  # what the next call meets, before it is made
    again = store.reserve("k", limit=20, window_s=1, amount=1)
    assert again.admitted and again.spent == 0 and again.window > first.window
    assert 0 < again.reset_ms <= 1000


def test_a_window_cut_by_a_settlement_is_cut_for_the_next_reserve(store: Store) -> None:
    store.reserve("k", limit=100, window_s=HOUR, amount=10)
    store.settle("k", window_s=1, reserved=10, tokens=5)  # settled after the rate became 1s
    hold = store.reserve("k", limit=100, window_s=HOUR, amount=1)  # an older plan, still an hour
    assert hold.spent == 5 and 0 < hold.reset_ms <= 1000


# -- the Redis store only --------------------------------------------------------------------


def test_redis_keeps_a_window_as_a_hash_that_expires_at_its_end(
        redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters], raw_redis: redis.Redis) -> None:
    store = RedisStore(*redis_loop)
    hold = store.reserve("k", limit=100, window_s=HOUR, amount=30)
    key = PREFIX + "w:" + store.namespace + "k"
    assert raw_redis.hgetall(key) == {"started": str(hold.window), "spent": "0"}
    assert raw_redis.pexpiretime(key) == hold.window + HOUR * 1000
    # The reservation beside it, by id, lapsing after hold_ms (the wrapper's: an hour).
    held = raw_redis.zrange(PREFIX + "h:" + store.namespace + "k", 0, -1, withscores=True)
    assert [(member.rsplit(":", 1)[1], score - hold.window) for member, score in held] == [("30", HOUR * 1000)]
    assert raw_redis.get(PREFIX + "r:" + store.namespace + "k") == "30"
    # Later calls never push the end out (a fixed window, not a sliding one).
    store.settle("k", window_s=HOUR, reserved=30, tokens=10)
    assert raw_redis.pexpiretime(key) == hold.window + HOUR * 1000
    assert raw_redis.hget(key, "spent") == "10"


def _reserve(store: RedisStore, rid: str, amount: int = 10, hold_ms: int = HOUR * 1000) -> Hold:
    return store.run(store.counters.reserve(store.namespace + "k", limit=100, window_s=HOUR, amount=amount,
                                            rid=rid, hold_ms=hold_ms))


def _settle(store: RedisStore, rid: str, *, amount: int = 10, tokens: int = 0, cancel: bool = False) -> None:
    store.run(store.counters.settle(store.namespace + "k", reserved=amount, tokens=tokens, window_s=HOUR,
                                    rid=rid, cancel=cancel))


def test_redis_settles_a_reservation_once(redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters]) -> None:
    store = RedisStore(*redis_loop)
    _reserve(store, "a")
    _reserve(store, "b")
    _settle(store, "a", tokens=4)
    _settle(store, "a", tokens=4)  # a retry: the tokens count again, the reservation does not go twice
    assert store.state("k") == (8, 10)


def test_redis_reservations_lapse_after_hold_ms(redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters]) -> None:
    """A gateway that died with calls in flight holds no budget for longer than hold_ms."""
    store = RedisStore(*redis_loop)
    _reserve(store, "dead", amount=100, hold_ms=300)
    assert store.state("k") == (0, 100)
    assert not _reserve(store, "refused").admitted
    time.sleep(0.35)
    assert store.state("k") == (0, 0)
    assert _reserve(store, "fresh", amount=5).admitted
    _settle(store, "dead", amount=100, tokens=50)  # settled late: its tokens count, nothing is taken back
    assert store.state("k") == (50, 5)


def test_redis_cancel_takes_back_or_bars_a_reservation(
        redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters]) -> None:
    store = RedisStore(*redis_loop)
    _reserve(store, "ran")
    _settle(store, "ran", cancel=True)  # Redis had run it: taken back
    assert store.state("k") == (0, 0)
    _settle(store, "late", cancel=True)  # the cancel got there first: when the reserve runs, it is refused
    assert not _reserve(store, "late").admitted
    assert store.state("k") == (0, 0)
    assert _reserve(store, "other").admitted


def test_redis_counter_names_cannot_reach_each_others_keys(
        redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters]) -> None:
    store = RedisStore(*redis_loop)
    assert store.reserve("u/bob", limit=100, window_s=HOUR, amount=10).admitted
    assert store.reserve("u/bob:h", limit=100, window_s=HOUR, amount=20).admitted
    assert store.state("u/bob") == (0, 10) and store.state("u/bob:h") == (0, 20)


def test_redis_drops_an_ended_window(
        redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters], raw_redis: redis.Redis) -> None:
    store = RedisStore(*redis_loop)
    store.reserve("k", limit=100, window_s=1, amount=30)
    key = PREFIX + "w:" + store.namespace + "k"
    assert raw_redis.exists(key) == 1
    time.sleep(1.05)
    assert raw_redis.exists(key) == 0


def test_redis_answering_an_error_is_backend_unavailable_too(
        redis_server: RedisServer,  # noqa: F811
        redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters], raw_redis: redis.Redis) -> None:
    store = RedisStore(*redis_loop)
    raw_redis.set(PREFIX + "w:" + store.namespace + "k", "not a window")
    with pytest.raises(BackendUnavailable) as caught:
        store.reserve("k", limit=10, window_s=HOUR, amount=1)
    assert caught.value.message.startswith(
        f"the token counters' Redis at 127.0.0.1:{redis_server.port} answered with an error: ")
    assert "WRONGTYPE" in caught.value.message


def test_redis_concurrent_reservations_take_the_last_tokens_once(redis_server: RedisServer) -> None:  # noqa: F811
    async def scenario() -> list[Hold]:
        counters = RedisCounters(redis_server.url, prefix=f"test:{uuid.uuid4().hex}:")
        try:
            return await asyncio.gather(*(
                counters.reserve("k", limit=1000, window_s=HOUR, amount=100, rid=f"r{i}", hold_ms=60_000)
            for i in range(50)))
        finally:
            await counters.close()

    loop = asyncio.new_event_loop()
    try:
        holds = loop.run_until_complete(scenario())
    finally:
        loop.close()
    admitted = [hold for hold in holds if hold.admitted]
    assert len(admitted) == 10
    # Each admitted one saw the reservations of those before it, one at a time.
    assert sorted(hold.reserved for hold in admitted) == list(range(0, 1000, 100))
    assert len({hold.window for hold in holds}) == 1


def _run(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


_RIDS = (f"r{n}" for n in itertools.count())


async def _reserve_then_close(counters: RedisCounters) -> Hold:
    try:
        return await counters.reserve("k", limit=10, window_s=HOUR, amount=1, rid=next(_RIDS), hold_ms=60_000)
    finally:
        await counters.close()


def test_redis_down_is_backend_unavailable_naming_redis_and_the_port() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        _run(_reserve_then_close(RedisCounters(f"redis://:hunter2@127.0.0.1:{port}/0", timeout_s=0.5)))
    assert time.monotonic() - started < 1.0
    message = caught.value.message
    assert message == f"the token counters' Redis at 127.0.0.1:{port} cannot be reached: Connection refused"
    assert "hunter2" not in message
    assert caught.value.status == 503


def test_redis_that_never_answers_times_out_within_timeout_s() -> None:
    # Accepts connections (the kernel's backlog) and never says a word.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            _run(_reserve_then_close(RedisCounters(f"redis://127.0.0.1:{port}", timeout_s=0.3)))
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.8
    assert f"Redis at 127.0.0.1:{port} cannot be reached" in caught.value.message


def test_redis_stopped_then_started_again(tmp_path: Path) -> None:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server not installed (run `bash tools/ensure_redis.sh`)")
    server = RedisServer(binary, tmp_path).start()
    loop = asyncio.new_event_loop()
    counters = RedisCounters(server.url, timeout_s=0.5)
    try:
        loop.run_until_complete(counters.ping())
        assert loop.run_until_complete(counters.reserve("k", limit=10, window_s=HOUR, amount=1, rid=next(_RIDS), hold_ms=60_000)).admitted
        server.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            loop.run_until_complete(counters.reserve("k", limit=10, window_s=HOUR, amount=1, rid=next(_RIDS), hold_ms=60_000))
        assert time.monotonic() - started < 1.0
        assert f"Redis at 127.0.0.1:{server.port} cannot be reached" in caught.value.message
        with pytest.raises(BackendUnavailable):
            loop.run_until_complete(counters.ping())
        # Back, empty (nothing is saved): the same client reconnects on its next call, and puts
        # back what it saw first: its reservation still in flight.
        server.start()
        hold = loop.run_until_complete(counters.reserve("k", limit=10, window_s=HOUR, amount=1, rid=next(_RIDS),
                                                        hold_ms=60_000))
        assert hold.admitted and (hold.spent, hold.reserved) == (0, 1)
    finally:
        loop.run_until_complete(counters.close())
        loop.close()
        server.stop()


def test_redis_forgetting_its_counters_gets_back_what_every_gateway_saw(tmp_path: Path) -> None:
    """A Redis restarted without persistence (or flushed): each gateway puts back the windows it
    saw and its reservations in flight, the larger count winning, before it reserves again."""
    binary = redis_binary()
    assert binary is not None
    server = RedisServer(binary, tmp_path).start()
    loop = asyncio.new_event_loop()
    one, two = (RedisCounters(server.url, timeout_s=0.5, prefix="p:") for _ in range(2))

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coro)

    def reserve(counters: RedisCounters, key: str, amount: int, rid: str) -> Hold:
        return run(counters.reserve(key, limit=100, window_s=HOUR, amount=amount, rid=rid, hold_ms=60_000))

    try:
        first = reserve(one, "a", 30, "one-1")
        run(one.settle("a", reserved=30, tokens=30, window_s=HOUR, rid="one-1"))
        reserve(two, "a", 20, "two-1")
        run(two.settle("a", reserved=20, tokens=20, window_s=HOUR, rid="two-1"))  # two saw 50 spent
        reserve(one, "b", 40, "one-2")  # in flight through the restart
        run(one._client.call("FLUSHALL"))  # noqa: SLF001 - what a restart without persistence leaves
        # Gateway one puts back what it saw of a (30) and its hold on b; then two puts back a at 50.
        again = reserve(one, "a", 1, "one-3")
        assert again.admitted and again.window == first.window
        assert (again.spent, again.reserved) == (30, 0)
        assert reserve(two, "a", 1, "two-2").spent == 50
        state = run(one.state("b"))
        assert state == (0, 40)
        # The restored window keeps its end.
        assert 0 < reserve(one, "a", 1, "one-4").reset_ms <= first.reset_ms
    finally:
        for counters in (one, two):
            run(counters.close())
        loop.close()
        server.stop()


# -- MemoryCounters' snapshot and restore ----------------------------------------------------


def test_snapshot_keeps_open_windows_with_reservations_as_spent_and_drops_ended_ones() -> None:
    now = [1_700_000_000_000]
    counters = MemoryCounters(clock_ms=lambda: now[0])
    a = counters.reserve("a", limit=100, window_s=60, amount=40)
    counters.settle("a", window_s=60, reserved=40, tokens=25)
    b = counters.reserve("b", limit=100, window_s=60, amount=30)  # in flight at the snapshot
    counters.settle("b", window_s=60, reserved=0, tokens=5)
    counters.reserve("short", limit=100, window_s=1, amount=10)
    now[0] += 2000  # "short" has ended
    saved = counters.snapshot()
    assert sorted(saved) == [("a", a.window, a.window + 60_000, 25), ("b", b.window, b.window + 60_000, 35)]

    now[0] += 1000
    restored = MemoryCounters(clock_ms=lambda: now[0])
    restored.restore(saved + [("gone", now[0] - 5000, now[0], 99)])  # ends now: ended
    assert restored.state("a") == (25, 0)
    assert restored.state("b") == (35, 0)
    assert restored.state("gone") == (0, 0)
    assert sorted(restored.snapshot()) == sorted(saved)
    hold = restored.reserve("a", limit=100, window_s=60, amount=1)
    assert (hold.window, hold.spent, hold.reserved) == (a.window, 25, 0)
    assert hold.reset_ms == a.window + 60_000 - now[0]
    # A window the process already has is not overwritten by an older save.
    restored.restore([("a", a.window, a.window + 60_000, 0)])
    assert restored.state("a") == (25, 1)
    # And a restored window ends when it would have (the reservation in flight stays).
    now[0] = a.window + 60_000
    assert restored.state("a") == (0, 1)


# -- properties: random interleavings against a model ----------------------------------------

KEYS = ("k1", "k2", "k3")
ALSO = "also"

# A reservation's amount, and whether it holds on the other scope's counter too; which
# outstanding hold to settle (an index, taken modulo how many there are) and the share of its
# reservation used.
reserve_op = st.tuples(st.just("reserve"), st.sampled_from(KEYS), st.integers(1, 120), st.booleans())
settle_op = st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1))
operations = st.lists(st.one_of(reserve_op, settle_op), max_size=40)
limits = st.fixed_dictionaries({key: st.integers(1, 400) for key in KEYS})


@dataclass
class Model:
    """counters.py's semantics with one long window per key: (spent, reserved) and its id."""

    counters: dict[str, list[int]] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)

    def get(self, key: str) -> tuple[int, int]:
        spent, reserved = self.counters.get(key, [0, 0])
        return (spent, reserved)


def check_sequence(store: Store, limits: dict[str, int], ops: list[tuple[Any, ...]]) -> None:
    model = Model()
    holds: list[tuple[str, str | None, int]] = []  # admitted and not yet settled: key, also, amount
    largest = 0
    for op in ops:
        if op[0] == "reserve":
            _, key, amount, with_also = op
            also = ALSO if with_also else None
            spent, reserved = model.get(key)
            hold = store.reserve(key, limit=limits[key], window_s=HOUR, amount=amount, also=also)
            assert hold.admitted == (spent + reserved < limits[key])
            assert (hold.spent, hold.reserved) == (spent, reserved)
            assert 0 < hold.reset_ms <= HOUR * 1000
            # One window per key for the whole sequence: every reserve names the same one.
            assert model.windows.setdefault(key, hold.window) == hold.window
            model.counters.setdefault(key, [0, 0])
            if hold.admitted:
                model.counters[key][1] += amount
                if also is not None:
                    model.counters.setdefault(also, [0, 0])[1] += amount
                holds.append((key, also, amount))
                largest = max(largest, amount)
        else:
            _, index, share = op
            if not holds:
                continue
            key, also, amount = holds.pop(index % len(holds))
            tokens = int(amount * share)
            store.settle(key, window_s=HOUR, reserved=amount, tokens=tokens, also=also)
            for counter in (key,) if also is None else (key, also):
                model.counters[counter][0] += tokens
                model.counters[counter][1] -= amount
        for key in (*KEYS, ALSO):
            spent, reserved = store.state(key)
            assert (spent, reserved) == model.get(key)
            assert reserved >= 0
        for key in KEYS:
            spent, reserved = model.get(key)
            # However the calls interleave, a counter ends at most one request's worth over.
            assert spent + reserved <= max(limits[key] - 1 + largest, 0)


# The Redis test's fixture holds one loop and client for every example: reusing it is the point.
_PROPERTY = settings(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(_PROPERTY, max_examples=200)
@given(limits=limits, ops=operations)
def test_memory_store_follows_the_model(limits: dict[str, int], ops: list[tuple[Any, ...]]) -> None:
    check_sequence(MemoryStore(), limits, ops)


@settings(_PROPERTY, max_examples=50)
@given(limits=limits, ops=operations)
def test_redis_store_follows_the_model(
        redis_loop: tuple[asyncio.AbstractEventLoop, RedisCounters],
        limits: dict[str, int], ops: list[tuple[Any, ...]]) -> None:
    check_sequence(RedisStore(*redis_loop), limits, ops)


def test_the_model_check_can_fail() -> None:
    """A store that admits at the limit (<= instead of <) is caught by the same check."""

    class OffByOne(MemoryStore):
        def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None) -> Hold:
            return super().reserve(key, limit=limit + 1, window_s=window_s, amount=amount, also=also)

    with pytest.raises(AssertionError):
        check_sequence(OffByOne(), {"k1": 10, "k2": 10, "k3": 10},
                       [("reserve", "k1", 10, False), ("reserve", "k1", 1, False)])


def test_the_model_check_sees_a_store_that_forgets_also() -> None:
    class NoAlso(MemoryStore):
        def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None) -> Hold:
            return super().reserve(key, limit=limit, window_s=window_s, amount=amount)

    with pytest.raises(AssertionError):
        check_sequence(NoAlso(), {"k1": 10, "k2": 10, "k3": 10}, [("reserve", "k1", 5, True)])

