"""A real Redis for tests: a free 127.0.0.1 port, a temp dir, nothing saved to disk.

The binary comes from Debian's `redis-server` package (tools/ensure_redis.sh installs it).
Tests fail, saying so, when it cannot be found. Use the session fixture by importing it
into the test module: `from tests.redis_harness import redis_server  # noqa: F401`.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.local_servers import free_port, installed  # noqa: F401 - free_port is theirs too

def redis_binary() -> str | None:
    return installed("redis-server")


def _answers_ping(port: int) -> bool:
    # RESP by hand: the harness should not depend on the client it is there to test.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    binary: str
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, ready_within_s: float = 10.0) -> RedisServer:
        """Start (or start again, on the same port, so clients holding the URL reconnect)."""
        self.port = self.port or free_port()
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--save", "", "--appendonly", "no", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            if _answers_ping(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server not answering PING within {ready_within_s}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = redis_binary()
    if binary is None:
        # A failure, not a skip: `make test` installs it, and a skipped Redis test proves nothing.
        pytest.fail("redis-server not installed (`make test` installs it; or run `bash tools/ensure_redis.sh`)")
    with tempfile.TemporaryDirectory(prefix="maas-redis-") as workdir:
        server = RedisServer(binary, Path(workdir)).start()
        try:
            yield server
        finally:
            server.stop()
