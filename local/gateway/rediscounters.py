"""Token counters in Redis: the semantics of counters.py, shared by every gateway on one Redis.

A window is a hash `<prefix><key>` (fields started, spent, reserved) whose expiry is its end: it
is created with PEXPIREAT at `started + window_s * 1000` on the first hit and never extended
(only cut, when its rate's window is shortened: counters.py), so Redis drops it when it ends.
That is how Limitador's Redis storage keeps fixed windows (Kuadrant/limitador at
2981b2bd389d42cf668519f9aa981a53541c4278): limitador/src/storage/redis/scripts.rs,
SCRIPT_UPDATE_COUNTER (run by `AsyncRedisStorage::update_counter` and
`check_and_update` in redis_async.rs), where an INCRBY whose result equals the delta is the first
hit and sets the key's EXPIRE, and BATCH_UPDATE_COUNTERS (redis_cached.rs), which reads the
window's end back with PEXPIRETIME.

Keys, under the store's prefix: `w:<counter>` the window (fields started, spent), `h:<counter>`
the reservations in flight (a sorted set of `<rid>:<amount>` scored by the time it lapses),
`r:<counter>` their total, and `x:<rid>` a reservation cancelled before Redis ran it. The tag
first, so no counter name (a user id may hold a colon) can reach another's keys.

What differs from upstream:
- Reservations. A counter holds `spent` in its window and reservations in flight beside it (they
  outlive the window: counters.py); `reserve` checks and reserves in one script, where Limitador
  reads (GET/MGET) and then increments, so it can go over a limit under concurrency ("does not
  guarantee exact limits"). Here one EVALSHA per call is atomic, so concurrent reservations
  cannot both take the last tokens.
- Every reservation has an id and lapses (`hold_ms`, longer than any request may run): a gateway
  that dies with calls in flight, or cannot reach Redis to settle, holds no budget for longer
  than that. A gateway that gave up waiting for its `reserve` (Redis slow, the client gone)
  cancels it by id; a cancel that finds nothing leaves a tombstone, so the reservation, when
  Redis runs it later, is refused instead of held.
- A window has an id, its start in ms, read from Redis' own clock (`TIME` inside the scripts),
  never the caller's, so gateways on several machines agree on it and on its end. Limitador
  needs no id: a TTL alone is on Redis' clock already.
- The end is absolute (PEXPIREAT, read with PEXPIRETIME: Redis >= 7.0, as upstream needs too), and
  a window counts as ended at `now >= end` as in MemoryCounters, where Redis itself keeps the
  key until `now > end`: the scripts check the end themselves instead of trusting the key to exist.
- One call touches both scopes' counters in one script: on a Redis Cluster they would need one
  hash slot. This store is for one Redis (or a primary with replicas), as the gateway's setting
  names.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Sequence

from local.gateway.counters import Check, Hold, Settlement, wall_ms
from local.gateway.resp import Reply, RespClient, RespConnectionError, RespError
from shared.errors import BackendUnavailable

log = logging.getLogger("maas.gateway")


# Every script starts by reading Redis' clock and defines the two window helpers. Times are
# written with %d: how Redis renders a Lua number given to a command has changed across versions,
# and a window id must read back exactly.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The key's window start and end while it is open; nil when it has none or it has ended.
local function live(key)
  local started = redis.call('HGET', key, 'started')
  if not started then return nil end
  local ends = redis.call('PEXPIRETIME', key)
  if ends < 0 or now >= ends then return nil end
  return tonumber(started), ends
end

-- The key's open window, started now when there is none. It never outlasts window_ms from its
-- start: a rate whose window was shortened since this one opened has it end sooner (counters.py).
local function open(key, window_ms)
  local started, ends = live(key)
  if started then
    local cut = started + window_ms
    if cut >= ends then return started, ends end
    if now < cut then
      redis.call('PEXPIREAT', key, string.format('%d', cut))
      return started, cut
    end
  end
  ends = now + window_ms
  redis.call('DEL', key)
  redis.call('HSET', key, 'started', string.format('%d', now), 'spent', 0)
  redis.call('PEXPIREAT', key, string.format('%d', ends))
  return now, ends
end
"""

# Reservations in flight: take out the lapsed ones (a bounded number a call: each lapsed one was
# put in by a call, so they cannot pile up faster than calls take them out), then the total.
_PRELUDE += """
local function purge(held, total)
  local lapsed = redis.call('ZRANGEBYSCORE', held, '-inf', string.format('%d', now), 'LIMIT', 0, 16)
  for _, member in ipairs(lapsed) do
    redis.call('ZREM', held, member)
    redis.call('DECRBY', total, tonumber(string.match(member, ':(%d+)$')))
  end
  return tonumber(redis.call('GET', total) or '0')
end

local function hold(held, total, member, amount, lapses)
  redis.call('ZADD', held, string.format('%d', lapses), member)
  redis.call('INCRBY', total, amount)
  -- Both keys go when the last reservation in them has lapsed.
  if redis.call('PEXPIRETIME', held) < lapses then
    redis.call('PEXPIREAT', held, string.format('%d', lapses))
    redis.call('PEXPIREAT', total, string.format('%d', lapses))
  end
end

local function release(held, total, member, amount)
  if redis.call('ZREM', held, member) == 1 then
    redis.call('DECRBY', total, amount)
    return true
  end
  return false
end
"""

# Several counters at once (counters.py, reserve_all): all admitted, or none changed.
# KEYS generation, tombstone, then per counter: window, held, total, also held, also total
# ARGV rid, hold ms, the generation the caller knows ('' none), a new one, then per counter:
#      limit, window ms, amount, 1 when it has an `also` (its two keys are unused otherwise)
# -> {refused index (1-based; 0: admitted), now, generation, then per counter started, spent,
# reserved, reset ms}, or {-1, generation} when the caller knew another generation: this Redis has
# forgotten what the caller saw (a restart without persistence, a flush), and the caller puts it
# back before it reserves. A tombstoned rid is refused at its first counter.
_RESERVE = _PRELUDE + """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[4]
  redis.call('SET', KEYS[1], generation)
end
if ARGV[3] ~= '' and ARGV[3] ~= generation then return {-1, generation} end
local n = (#ARGV - 4) / 4
local out = {0, now, generation}
if redis.call('EXISTS', KEYS[2]) == 1 then
  out[1] = 1
  for i = 1, n do
    table.insert(out, 0); table.insert(out, 0); table.insert(out, 0); table.insert(out, 0)
  end
  return out
end
for i = 1, n do
  local k, a = 2 + 5 * (i - 1), 4 + 4 * (i - 1)
  local reserved = purge(KEYS[k + 2], KEYS[k + 3])
  local started, ends = open(KEYS[k + 1], tonumber(ARGV[a + 2]))
  local spent = tonumber(redis.call('HGET', KEYS[k + 1], 'spent'))
  if out[1] == 0 and spent + reserved >= tonumber(ARGV[a + 1]) then out[1] = i end
  table.insert(out, started); table.insert(out, spent); table.insert(out, reserved); table.insert(out, ends - now)
end
if out[1] == 0 then
  local lapses = now + tonumber(ARGV[2])
  for i = 1, n do
    local k, a = 2 + 5 * (i - 1), 4 + 4 * (i - 1)
    local member = ARGV[1] .. ':' .. ARGV[a + 3]
    hold(KEYS[k + 2], KEYS[k + 3], member, ARGV[a + 3], lapses)
    if ARGV[a + 4] == '1' then
      purge(KEYS[k + 4], KEYS[k + 5])
      hold(KEYS[k + 4], KEYS[k + 5], member, ARGV[a + 3], lapses)
    end
  end
end
return out
"""

# KEYS tombstone, then per counter: window, held, total, also window, also held, also total
# ARGV rid, cancel (1: the caller never learnt whether it was admitted), then per counter:
#      window ms, amount, tokens, 1 when it has an `also`
# -> {key index, started, ends, spent} of each window tokens were counted in
_SETTLE = _PRELUDE + """
local counted = {}
local n = (#ARGV - 2) / 4
local function count(index, window_ms, tokens)
  local started, ends = open(KEYS[index], window_ms)
  local spent = redis.call('HINCRBY', KEYS[index], 'spent', tokens)
  table.insert(counted, index); table.insert(counted, started); table.insert(counted, ends); table.insert(counted, spent)
end
local found = false
for i = 1, n do
  local k, a = 1 + 6 * (i - 1), 2 + 4 * (i - 1)
  local window_ms, amount, tokens = tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local member = ARGV[1] .. ':' .. amount
  if release(KEYS[k + 2], KEYS[k + 3], member, amount) then found = true end
  if tokens > 0 then count(k + 1, window_ms, tokens) end
  if ARGV[a + 4] == '1' then
    release(KEYS[k + 5], KEYS[k + 6], member, amount)
    if tokens > 0 then count(k + 4, window_ms, tokens) end
  end
end
if not found and ARGV[2] == '1' then
  redis.call('SET', KEYS[1], 1, 'PX', 60000)
end
return counted
"""

# Putting back what a Redis forgot (see _RESERVE). KEYS windows; ARGV started, ends, spent of
# each. A window is put back as it was seen; one another gateway put back already keeps the
# larger count; one opened since the restart holds usage after the last sighting and is added.
_RESTORE_WINDOWS = _PRELUDE + """
for i = 1, #KEYS do
  local started, ends, spent = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if ends > now then
    local current = live(KEYS[i])
    if current == started then
      if spent > tonumber(redis.call('HGET', KEYS[i], 'spent')) then
        redis.call('HSET', KEYS[i], 'spent', spent)
      end
    else
      if current then spent = spent + tonumber(redis.call('HGET', KEYS[i], 'spent')) end
      redis.call('DEL', KEYS[i])
      redis.call('HSET', KEYS[i], 'started', string.format('%d', started), 'spent', spent)
      redis.call('PEXPIREAT', KEYS[i], string.format('%d', ends))
    end
  end
end
return 0
"""

# KEYS held, total of each reservation; ARGV member, amount, lapses of each
_RESTORE_HOLDS = _PRELUDE + """
for i = 1, #KEYS / 2 do
  local held, total = KEYS[2 * i - 1], KEYS[2 * i]
  local member, amount, lapses = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if lapses > now and not redis.call('ZSCORE', held, member) then
    hold(held, total, member, amount, lapses)
  end
end
return 0
"""

# KEYS window, held, total; ARGV the window's length in ms, or none -> {spent, reserved, ms until
# the window ends}; spent and the time are 0 with no open window (under that length, when given)
_STATE = _PRELUDE + """
local reserved = purge(KEYS[2], KEYS[3])
local started, ends = live(KEYS[1])
if started and ARGV[1] then ends = math.min(ends, started + tonumber(ARGV[1])) end
if not started or now >= ends then return {0, reserved, 0} end
return {tonumber(redis.call('HGET', KEYS[1], 'spent')), reserved, ends - now}
"""


def _text(value: Reply) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reason(exc: BaseException) -> str:
    # The errno's own words ("Connection refused"), which asyncio may have wrapped in its own
    # message ("Connect call failed (...)").
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisCounters:
    """Counters in one Redis, for the gateway's event loop: every call is one atomic script,
    sent over one pipelined connection (resp.py)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, prefix: str = "maas:counter:") -> None:
        self._client = RespClient(url, timeout_s=timeout_s)
        self._where = self._client.address.shown
        self._password = self._client.address.password
        self._prefix = prefix
        self._reserve = _Script(_RESERVE)
        self._settle = _Script(_SETTLE)
        self._state = _Script(_STATE)
        self._restore_windows = _Script(_RESTORE_WINDOWS)
        self._restore_holds = _Script(_RESTORE_HOLDS)
        # What this gateway last saw of each window it used, and its reservations in flight:
        # what it puts back when the Redis turns out to have forgotten (a new generation).
        self._generation = ""
        self._seen: dict[str, tuple[int, int, int]] = {}  # window key: (started, ends, spent)
        # rid: ((member, held, total) of each counter it holds on, when it lapses)
        self._held: dict[str, tuple[list[tuple[str, str, str]], int]] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._prune_at = 1024

    async def _eval(self, script: _Script, keys: list[str], args: list[int]) -> Reply:
        call = self._client.call
        try:
            try:
                return await call("EVALSHA", script.sha, len(keys), *keys, *args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # A Redis that restarted, or was flushed of scripts: load it, then again.
                await call("SCRIPT", "LOAD", script.source)
                return await call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:  # it answered, with an error (a replica's READONLY, WRONGTYPE, OOM)
            raise self._unavailable("answered with an error", str(exc)) from exc
        except (RespConnectionError, OSError, TimeoutError) as exc:
            raise self._unavailable("cannot be reached", _reason(exc)) from exc

    def _unavailable(self, what: str, reason: str) -> BackendUnavailable:
        if self._password:
            reason = reason.replace(self._password, "***")
        return BackendUnavailable(f"the token counters' Redis at {self._where} {what}: {reason}")

    def _keys(self, key: str) -> list[str]:
        prefix = self._prefix
        return [f"{prefix}w:{key}", f"{prefix}h:{key}", f"{prefix}r:{key}"]

    async def reserve(self, key: str, *, limit: int, window_s: int, amount: int, also: str | None = None,
                      rid: str, hold_ms: int) -> Hold:
        _, holds = await self.reserve_all([Check(key, limit, window_s, amount, also)], rid=rid, hold_ms=hold_ms)
        return holds[0]

    async def reserve_all(self, checks: Sequence[Check], *, rid: str, hold_ms: int) -> tuple[int, list[Hold]]:
        prefix = self._prefix
        keys = [prefix + "generation", f"{prefix}x:{rid}"]
        args: list[int | str] = [rid, hold_ms]
        pairs: list[tuple[str, str, str]] = []  # (member, held, total) of every counter reserved on
        for check in checks:
            window, held, total = self._keys(check.key)
            member = f"{rid}:{check.amount}"
            pairs.append((member, held, total))
            if check.also is not None:
                _, also_held, also_total = self._keys(check.also)
                pairs.append((member, also_held, also_total))
            else:
                also_held = also_total = held  # unused: the flag below says so
            keys += [window, held, total, also_held, also_total]
            args += [check.limit, check.window_s * 1000, check.amount, 0 if check.also is None else 1]
        for _ in range(3):
            reply = await self._eval(self._reserve, keys, [*args[:2], self._generation, os.urandom(8).hex(), *args[2:]])
            assert isinstance(reply, list)
            if int(reply[0]) == -1:  # type: ignore[arg-type]
                await self._recover(_text(reply[1]))
                continue
            refused, now = int(reply[0]) - 1, int(reply[1])  # type: ignore[arg-type]
            self._generation = _text(reply[2])
            holds = []
            for at, check in enumerate(checks):
                started, spent, reserved, reset_ms = (int(v) for v in reply[3 + 4 * at:7 + 4 * at])  # type: ignore[arg-type]
                if started:
                    self._see(keys[2 + 5 * at], started, now + reset_ms, spent)
                admitted = refused < 0 or (spent + reserved < check.limit and started != 0)
                holds.append(Hold(admitted, started, spent, reserved, reset_ms))
            if refused < 0:
                self._held[rid] = (pairs, now + hold_ms)
            return refused, holds
        raise self._unavailable("answered with an error", "its counters were reset three times in a row")

    async def settle(self, key: str, *, reserved: int, tokens: int, window_s: int, also: str | None = None,
                     rid: str, cancel: bool = False) -> None:
        """Take reservation `rid` back and count `tokens`. `cancel`: the caller does not know
        whether Redis ran the reserve (it gave up waiting), so one that runs later is refused."""
        await self.settle_all([Settlement(key, reserved, tokens, window_s, also)], rid=rid, cancel=cancel)

    async def settle_all(self, settlements: Sequence[Settlement], *, rid: str, cancel: bool = False) -> None:
        self._held.pop(rid, None)
        keys = [f"{self._prefix}x:{rid}"]
        args: list[int | str] = [rid, 1 if cancel else 0]
        for item in settlements:
            mine = self._keys(item.key)
            keys += mine + (mine if item.also is None else self._keys(item.also))
            args += [item.window_s * 1000, item.reserved, item.tokens, 0 if item.also is None else 1]
        counted = await self._eval(self._settle, keys, args)
        assert isinstance(counted, list)
        for at in range(0, len(counted), 4):
            index, started, ends, spent = (int(v) for v in counted[at:at + 4])  # type: ignore[arg-type]
            self._see(keys[index - 1], started, ends, spent)

    def _see(self, window: str, started: int, ends: int, spent: int) -> None:
        seen = self._seen
        last = seen.get(window)
        if last is None or last[0] != started or last[2] < spent:
            seen[window] = (started, ends, spent)
        if len(seen) >= self._prune_at:
            # Ended windows need not be put back; by this machine's clock, which is close enough
            # to Redis' for a sweep.
            now = wall_ms()
            for name in [name for name, (_, ends_at, _) in seen.items() if ends_at <= now]:
                del seen[name]
            self._prune_at = max(1024, 2 * len(seen))

    async def _recover(self, generation: str) -> None:
        """Put back the windows and reservations this gateway saw, once per new generation
        however many calls find it at once."""
        if generation == self._generation:
            return  # another call of this gateway has put them back
        if self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self._put_back(generation))
        recovery = self._recovery
        try:
            await asyncio.shield(recovery)
        finally:
            if recovery.done() and self._recovery is recovery:
                self._recovery = None

    async def _put_back(self, generation: str) -> None:
        windows = list(self._seen.items())
        for at in range(0, len(windows), 200):
            batch = windows[at:at + 200]
            await self._eval(self._restore_windows, [name for name, _ in batch],
                             [value for _, seen in batch for value in seen])
        holds: list[tuple[str, str, str, int, int]] = []
        for pairs, lapses in list(self._held.values()):
            for member, held, total in pairs:
                holds.append((held, total, member, int(member.rsplit(":", 1)[1]), lapses))
        for at in range(0, len(holds), 200):
            batch = holds[at:at + 200]
            await self._eval(self._restore_holds, [k for h in batch for k in h[:2]],
                             [v for h in batch for v in h[2:]])
        log.warning("the token counters' Redis at %s had forgotten its counters (restarted without "
                    "persistence?): put back %d window(s) and %d reservation(s) this gateway saw",
                    self._where, len(windows), len(holds))
        self._generation = generation

    async def state(self, key: str) -> tuple[int, int]:
        """(spent in the key's current window or 0 when it has none, reserved in flight)."""
        spent, reserved, _ = await self.peek(key)
        return (spent, reserved)

    async def peek(self, key: str, window_s: int | None = None) -> tuple[int, int, int]:
        """(spent, reserved, ms until the window ends); spent and the time are 0 with no open
        window. With `window_s`, the window as the next reserve of that length sees it."""
        reply = await self._eval(self._state, self._keys(key), [] if window_s is None else [window_s * 1000])
        assert isinstance(reply, list)
        spent, reserved, reset_ms = (int(value) for value in reply)  # type: ignore[arg-type]
        return (spent, reserved, reset_ms)

    async def ping(self) -> None:
        try:
            await self._client.call("PING")
        except RespError as exc:
            raise self._unavailable("answered with an error", str(exc)) from exc
        except (RespConnectionError, OSError, TimeoutError) as exc:
            raise self._unavailable("cannot be reached", _reason(exc)) from exc

    async def close(self) -> None:
        await self._client.close()
