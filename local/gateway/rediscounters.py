"""Token counters in Redis: the semantics of counters.py, shared by every gateway on one Redis.

A window is a hash `<prefix><key>` (fields started, spent, reserved) whose expiry is its end: it
is created with PEXPIREAT at `started + window_s * 1000` on the first hit and never extended, so
Redis drops it when it ends. That is how Limitador's Redis storage keeps fixed windows
(Kuadrant/limitador at 2981b2bd389d42cf668519f9aa981a53541c4278): limitador/src/storage/redis/
scripts.rs, SCRIPT_UPDATE_COUNTER (run by `AsyncRedisStorage::update_counter` and
`check_and_update` in redis_async.rs), where an INCRBY whose result equals the delta is the first
hit and sets the key's EXPIRE, and BATCH_UPDATE_COUNTERS (redis_cached.rs), which reads the
window's end back with PEXPIRETIME.

What differs from upstream:
- Reservations. A window holds `spent` and `reserved`, not one value; `reserve` checks and
  reserves in one script, where Limitador reads (GET/MGET) and then increments, so it can go over
  a limit under concurrency ("does not guarantee exact limits"). Here one EVALSHA per call is
  atomic, so concurrent reservations cannot both take the last tokens.
- A window has an id, its start in ms, read from Redis' own clock (`TIME` inside the scripts),
  never the caller's, so gateways on several machines agree on it and on its end. Limitador
  needs no id: a TTL alone is on Redis' clock already.
- The end is absolute (PEXPIREAT, read with PEXPIRETIME: Redis >= 7.0, as upstream needs too), and
  a window counts as ended at `now >= end` as in MemoryCounters, where Redis itself keeps the
  key until `now > end`: the scripts check the end themselves instead of trusting the key to exist.
- `settle` with `also` touches two keys in one script: on a Redis Cluster they would need one hash
  slot. This store is for one Redis (or a primary with replicas), as the gateway's setting names.
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
  redis.call('HSET', key, 'started', string.format('%d', now), 'spent', 0, 'reserved', 0)
  redis.call('PEXPIREAT', key, string.format('%d', ends))
  return now, ends
end
"""

# KEYS[1] counter; ARGV limit, window ms, amount -> {admitted, window, spent, reserved, reset ms}
_RESERVE = _PRELUDE + """
local started, ends = open(KEYS[1], tonumber(ARGV[2]))
local w = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
local spent, reserved = tonumber(w[1]), tonumber(w[2])
local admitted = 0
if spent + reserved < tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[3])
  admitted = 1
end
return {admitted, started, spent, reserved, ends - now}
"""

# KEYS[1] counter, KEYS[2] the optional `also`; ARGV window id, window ms, -reserved, tokens
_SETTLE = _PRELUDE + """
local started = live(KEYS[1])
if started and started == tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[3])
end
if tonumber(ARGV[4]) > 0 then
  for i = 1, #KEYS do
    open(KEYS[i], tonumber(ARGV[2]))
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[4])
  end
end
return 0
"""

# KEYS[1] counter -> {spent, reserved}, {0, 0} when it has no open window
# KEYS[1] counter -> {spent, reserved, ms until the window ends}; {0, 0, 0} with no open window
_STATE = _PRELUDE + """
local started, ends = live(KEYS[1])
if not started then return {0, 0, 0} end
local w = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return {tonumber(w[1]), tonumber(w[2]), ends - now}
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

    async def reserve(self, key: str, *, limit: int, window_s: int, amount: int) -> Hold:
        reply = await self._eval(self._reserve, [self._prefix + key], [limit, window_s * 1000, amount])
        assert isinstance(reply, list)
        admitted, window, spent, reserved, reset_ms = (int(value) for value in reply)  # type: ignore[arg-type]
        return Hold(admitted == 1, window, spent, reserved, reset_ms)

    async def settle(self, key: str, *, window: int, window_s: int, reserved: int, tokens: int,
                     also: str | None = None) -> None:
        keys = [self._prefix + key] + ([self._prefix + also] if also is not None else [])
        await self._eval(self._settle, keys, [window, window_s * 1000, -reserved, tokens])

    async def state(self, key: str) -> tuple[int, int]:
        """(spent, reserved) in the key's current window; (0, 0) when it has none."""
        spent, reserved, _ = await self.peek(key)
        return (spent, reserved)

    async def peek(self, key: str) -> tuple[int, int, int]:
        """(spent, reserved, ms until the window ends); all 0 when it has no open window."""
        reply = await self._eval(self._state, [self._prefix + key], [])
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
