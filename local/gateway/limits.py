"""The gateway's limiter as the settings choose it, with what it needs around it.

- Without MAAS_REDIS_URL: the counters live in the process and are saved to `limits.db` in the
  data dir every second (CounterFile), so a restart or a `kill -9` keeps every window. Only
  one runtime may then use a data dir: a second one would count apart from the first (a
  20-token limit admitted 48 with two), so it refuses to start, saying so.
- With MAAS_REDIS_URL: the counters are in Redis, shared by every gateway naming it, on this
  machine or others; runtimes may then share a data dir (its store and ledger are SQLite files
  that several processes may use).

The data dir lock is an advisory `flock` on `gateway.lock`: exclusive for in-process counters,
shared for Redis ones, released by the kernel when the process ends however it ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from local.gateway.counters import MemoryCounters
from local.gateway.limiter import CounterFile, Limiter, RedisLimiter, TokenLimiter
from shared.errors import MaasError
from shared.settings import Settings

log = logging.getLogger("maas.gateway")


class DataDirInUse(RuntimeError):
    """Another runtime holds the data dir in a way this one cannot share."""


class DataDirLock:
    def __init__(self, data_dir: Path, *, shared: bool) -> None:
        self._path = data_dir / "gateway.lock"
        self._shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if self._shared:
                raise DataDirInUse(
                    f"another maas runtime is using {self._path.parent} with its token counters in memory; "
                    "stop it, or set MAAS_REDIS_URL for both so that they share counters"
                ) from None
            raise DataDirInUse(
                f"another maas runtime is using {self._path.parent}: two would count tokens apart and "
                "admit twice the limit. Stop it, give this one another MAAS_DATA_DIR, or set "
                "MAAS_REDIS_URL for both so that they share counters"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class LimiterService:
    """`limiter` for the gateway; `start`/`stop` run on the gateway's loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = DataDirLock(settings.data_dir, shared=settings.redis_url is not None)
        self._file: CounterFile | None = None
        self.limiter: Limiter
        if settings.redis_url is not None:
            from local.gateway.rediscounters import RedisCounters  # only where Redis is used

            # A reservation outlives any call but a stream that runs past it (the upstream
            # timeout is between chunks, not for the whole call): then it no longer holds budget.
            self.limiter = RedisLimiter(RedisCounters(settings.redis_url, timeout_s=settings.redis_timeout_s),
                                        hold_s=max(3600.0, 4 * settings.upstream_timeout_s))
        else:
            self.limiter = TokenLimiter(MemoryCounters())

    def acquire(self) -> None:
        """Take the data dir (raises DataDirInUse); call before listening."""
        self._lock.acquire()

    def release(self) -> None:
        """Let the data dir go without stopping (a start that failed)."""
        self._lock.release()

    async def start(self) -> None:
        limiter = self.limiter
        if isinstance(limiter, TokenLimiter):
            self._file = CounterFile(self._settings.limits_path, limiter.counters)
            restored = self._file.load()
            if restored:
                log.info("token counters: %d window(s) restored from %s", restored, self._settings.limits_path)
            self._file.start()
        elif isinstance(limiter, RedisLimiter):
            try:
                await limiter.counters.ping()
            except MaasError as exc:
                # Not fatal: model calls fail closed (503) until Redis answers.
                log.warning("%s; model calls get 503 until it answers", exc.message)

    async def stop(self) -> None:
        try:
            if self._file is not None:
                await self._file.stop()
                self._file = None
            elif isinstance(self.limiter, RedisLimiter):
                await self.limiter.close()
        finally:
            self._lock.release()
