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

import hashlib
import os

from local.gateway.counters import Hold
from local.gateway.resp import Reply, RespClient, RespConnectionError, RespError
from shared.errors import BackendUnavailable


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

# KEYS window, held, total, tombstone[, also held, also total]
# ARGV limit, window ms, amount, member, hold ms -> {admitted, window, spent, reserved, reset ms}
_RESERVE = _PRELUDE + """
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, 0, 0, 0, 0} end
local reserved = purge(KEYS[2], KEYS[3])
local started, ends = open(KEYS[1], tonumber(ARGV[2]))
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local admitted = 0
if spent + reserved < tonumber(ARGV[1]) then
  local lapses = now + tonumber(ARGV[5])
  hold(KEYS[2], KEYS[3], ARGV[4], ARGV[3], lapses)
  if #KEYS > 4 then
    purge(KEYS[5], KEYS[6])
    hold(KEYS[5], KEYS[6], ARGV[4], ARGV[3], lapses)
  end
  admitted = 1
end
return {admitted, started, spent, reserved, ends - now}
"""

# KEYS window, held, total, tombstone[, also window, also held, also total]
# ARGV window ms, member, amount, tokens, cancel (1: the caller never learnt whether it was admitted)
_SETTLE = _PRELUDE + """
local tokens = tonumber(ARGV[4])
if not release(KEYS[2], KEYS[3], ARGV[2], ARGV[3]) and ARGV[5] == '1' then
  redis.call('SET', KEYS[4], 1, 'PX', 60000)
end
if tokens > 0 then
  open(KEYS[1], tonumber(ARGV[1]))
  redis.call('HINCRBY', KEYS[1], 'spent', tokens)
end
if #KEYS > 4 then
  release(KEYS[6], KEYS[7], ARGV[2], ARGV[3])
  if tokens > 0 then
    open(KEYS[5], tonumber(ARGV[1]))
    redis.call('HINCRBY', KEYS[5], 'spent', tokens)
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
        keys = self._keys(key) + [f"{self._prefix}x:{rid}"]
        if also is not None:
            keys += self._keys(also)[1:]
        reply = await self._eval(self._reserve, keys, [limit, window_s * 1000, amount, f"{rid}:{amount}", hold_ms])
        assert isinstance(reply, list)
        admitted, window, spent, reserved, reset_ms = (int(value) for value in reply)  # type: ignore[arg-type]
        return Hold(admitted == 1, window, spent, reserved, reset_ms)

    async def settle(self, key: str, *, reserved: int, tokens: int, window_s: int, also: str | None = None,
                     rid: str, cancel: bool = False) -> None:
        """Take reservation `rid` back and count `tokens`. `cancel`: the caller does not know
        whether Redis ran the reserve (it gave up waiting), so one that runs later is refused."""
        keys = self._keys(key) + [f"{self._prefix}x:{rid}"]
        if also is not None:
            keys += self._keys(also)
        await self._eval(self._settle, keys, [window_s * 1000, f"{rid}:{reserved}", reserved, tokens,
                                              1 if cancel else 0])

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
