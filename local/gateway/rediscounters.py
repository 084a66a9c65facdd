"""Token counters in Redis: the semantics of counters.py, shared by every gateway on one Redis.

A window is a hash `<prefix><key>` (fields started, spent, reserved) whose expiry is its end: it
is created with PEXPIREAT at `started + window_s * 1000` on the first hit and never extended, so
Redis drops it when it ends. That is how Limitador's Redis storage keeps fixed windows
(Kuadrant/limitador at 2981b2bd389d42cf668519f9aa981a53541c4278): limitador/src/storage/redis/
scripts.rs, SCRIPT_UPDATE_COUNTER (run by `AsyncRedisStorage::update_counter` and
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

from local.gateway.counters import Hold, wall_ms
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

-- The key's open window, started now when there is none.
local function open(key, window_ms)
  local started, ends = live(key)
  if started then return started, ends end
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

# KEYS generation, window, held, total, tombstone[, also held, also total]
# ARGV limit, window ms, amount, member, hold ms, the generation the caller knows ('' none), a new one
# -> {admitted, window, spent, reserved, reset ms, now, generation}, or {-1, generation} when the
# caller knew another generation: this Redis has forgotten what the caller saw (a restart
# without persistence, a flush), and the caller puts it back before it reserves.
_RESERVE = _PRELUDE + """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[7]
  redis.call('SET', KEYS[1], generation)
end
if ARGV[6] ~= '' and ARGV[6] ~= generation then return {-1, generation} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, 0, 0, 0, 0, now, generation} end
local reserved = purge(KEYS[3], KEYS[4])
local started, ends = open(KEYS[2], tonumber(ARGV[2]))
local spent = tonumber(redis.call('HGET', KEYS[2], 'spent'))
local admitted = 0
if spent + reserved < tonumber(ARGV[1]) then
  local lapses = now + tonumber(ARGV[5])
  hold(KEYS[3], KEYS[4], ARGV[4], ARGV[3], lapses)
  if #KEYS > 5 then
    purge(KEYS[6], KEYS[7])
    hold(KEYS[6], KEYS[7], ARGV[4], ARGV[3], lapses)
  end
  admitted = 1
end
return {admitted, started, spent, reserved, ends - now, now, generation}
"""

# KEYS window, held, total, tombstone[, also window, also held, also total]
# ARGV window ms, member, amount, tokens, cancel (1: the caller never learnt whether it was admitted)
# -> {} or, when tokens were counted, {started, ends, spent} of each window counted in
_SETTLE = _PRELUDE + """
local tokens = tonumber(ARGV[4])
local counted = {}
if not release(KEYS[2], KEYS[3], ARGV[2], ARGV[3]) and ARGV[5] == '1' then
  redis.call('SET', KEYS[4], 1, 'PX', 60000)
end
local function count(window)
  local started, ends = open(window, tonumber(ARGV[1]))
  local spent = redis.call('HINCRBY', window, 'spent', tokens)
  table.insert(counted, started)
  table.insert(counted, ends)
  table.insert(counted, spent)
end
if tokens > 0 then count(KEYS[1]) end
if #KEYS > 4 then
  release(KEYS[6], KEYS[7], ARGV[2], ARGV[3])
  if tokens > 0 then count(KEYS[5]) end
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

# KEYS window, held, total -> {spent, reserved, ms until the window ends}; spent and the time
# are 0 with no open window
_STATE = _PRELUDE + """
local reserved = purge(KEYS[2], KEYS[3])
local started, ends = live(KEYS[1])
if not started then return {0, reserved, 0} end
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
        self._held: dict[str, tuple[str, str, str | None, str | None, int, int]] = {}
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
        window, held, total = self._keys(key)
        keys = [self._prefix + "generation", window, held, total, f"{self._prefix}x:{rid}"]
        also_held = also_total = None
        if also is not None:
            _, also_held, also_total = self._keys(also)
            keys += [also_held, also_total]
        member = f"{rid}:{amount}"
        args = [limit, window_s * 1000, amount, member, hold_ms]
        for _ in range(3):
            reply = await self._eval(self._reserve, keys, [*args, self._generation, os.urandom(8).hex()])
            assert isinstance(reply, list)
            if int(reply[0]) == -1:  # type: ignore[arg-type]
                await self._recover(_text(reply[1]))
                continue
            admitted, started, spent, reserved, reset_ms, now = (int(v) for v in reply[:6])  # type: ignore[arg-type]
            self._generation = _text(reply[6])
            self._see(window, started, now + reset_ms, spent)
            if admitted == 1:
                self._held[rid] = (member, held, total, also_held, also_total, now + hold_ms)
            return Hold(admitted == 1, started, spent, reserved, reset_ms)
        raise self._unavailable("answered with an error", "its counters were reset three times in a row")

    async def settle(self, key: str, *, reserved: int, tokens: int, window_s: int, also: str | None = None,
                     rid: str, cancel: bool = False) -> None:
        """Take reservation `rid` back and count `tokens`. `cancel`: the caller does not know
        whether Redis ran the reserve (it gave up waiting), so one that runs later is refused."""
        self._held.pop(rid, None)
        keys = self._keys(key) + [f"{self._prefix}x:{rid}"]
        if also is not None:
            keys += self._keys(also)
        counted = await self._eval(self._settle, keys, [window_s * 1000, f"{rid}:{reserved}", reserved, tokens,
                                                        1 if cancel else 0])
        assert isinstance(counted, list)
        windows = [keys[0]] if also is None else [keys[0], keys[4]]
        for window, at in zip(windows, range(0, len(counted), 3)):
            self._see(window, *(int(v) for v in counted[at:at + 3]))  # type: ignore[arg-type]

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
        for member, held, total, also_held, also_total, lapses in list(self._held.values()):
            amount = int(member.rsplit(":", 1)[1])
            holds.append((held, total, member, amount, lapses))
            if also_held is not None and also_total is not None:
                holds.append((also_held, also_total, member, amount, lapses))
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

    async def peek(self, key: str) -> tuple[int, int, int]:
        """(spent, reserved, ms until the window ends); spent and the time are 0 with no open window."""
        reply = await self._eval(self._state, self._keys(key), [])
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
