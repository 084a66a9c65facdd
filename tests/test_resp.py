"""The counters' lean Redis client (local/gateway/resp.py): RESP2 replies however the bytes
arrive, URLs, AUTH and SELECT against a real redis-server, and pipelining many calls."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.gateway.resp import RespClient, RespConnectionError, RespError, _Incomplete, _parse, encode, parse_url
from tests.redis_harness import free_port, redis_binary


def _all(data: bytes) -> list[object]:
    replies, at = [], 0
    while at < len(data):
        reply, at = _parse(data, at)
        replies.append(reply)
    return replies


def test_every_reply_type_parses() -> None:
    data = b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n:1\r\n*2\r\n:2\r\n$0\r\n\r\n$3\r\nabc\r\n*-1\r\n-ERR nope\r\n"
    replies = _all(data)
    assert replies[:6] == [b"OK", 42, b"hello", None, [1, [2, b""], b"abc"], None]
    assert isinstance(replies[6], RespError) and str(replies[6]) == "ERR nope"


def test_a_reply_cut_anywhere_is_incomplete_not_wrong() -> None:
    data = b"*2\r\n$5\r\nhel\r\n\r\n:7\r\n"  # a bulk string holding CR LF
    assert _all(data) == [[b"hel\r\n", 7]]
    for cut in range(len(data)):
        with pytest.raises(_Incomplete):
            _parse(data[:cut], 0)


def test_commands_are_encoded_as_bulk_strings() -> None:
    assert encode("EVALSHA", "ab", 1, b"k") == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n"


def test_urls() -> None:
    a = parse_url("redis://:s3cret@10.0.0.5:6390/2")
    assert (a.host, a.port, a.password, a.db, a.tls, a.shown) == ("10.0.0.5", 6390, "s3cret", 2, False, "10.0.0.5:6390")
    assert parse_url("rediss://user:pw@cache.example").tls and parse_url("rediss://user:pw@cache.example").username == "user"
    assert parse_url("unix:///run/redis.sock?db=3").path == "/run/redis.sock" and parse_url("unix:///s?db=3").db == 3
    with pytest.raises(ValueError, match="redis://"):
        parse_url("http://127.0.0.1:6379")


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[int]:
    binary = redis_binary()
    if binary is None:
        pytest.fail("redis-server not installed (`make test` installs it)")
    port = free_port()
    process = subprocess.Popen([binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1",
                                "--requirepass", "s3cret", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            asyncio.run(_ping(f"redis://:s3cret@127.0.0.1:{port}/0"))
            break
        except (RespConnectionError, OSError):
            time.sleep(0.05)
    yield port
    process.kill()
    process.wait(10)


async def _ping(url: str) -> object:
    client = RespClient(url, timeout_s=0.5)
    try:
        return await client.call("PING")
    finally:
        await client.close()


def test_auth_and_select_from_the_url(protected: int) -> None:
    async def scenario() -> tuple[object, object, object]:
        one = RespClient(f"redis://:s3cret@127.0.0.1:{protected}/3", timeout_s=1)
        other = RespClient(f"redis://:s3cret@127.0.0.1:{protected}/0", timeout_s=1)
        try:
            await one.call("SET", "k", "in-db-3")
            return await one.call("GET", "k"), await other.call("GET", "k"), await one.call("CLIENT", "INFO")
        finally:
            await one.close()
            await other.close()

    here, elsewhere, info = asyncio.run(scenario())
    assert here == b"in-db-3" and elsewhere is None and b"db=3" in info  # type: ignore[operator]
    with pytest.raises(RespError, match="NOAUTH|WRONGPASS"):
        asyncio.run(_ping(f"redis://127.0.0.1:{protected}/0"))
    with pytest.raises(RespError, match="WRONGPASS|invalid"):
        asyncio.run(_ping(f"redis://:wrong@127.0.0.1:{protected}/0"))


def test_many_calls_share_the_connection_and_get_their_own_replies(protected: int) -> None:
    async def scenario() -> list[object]:
        client = RespClient(f"redis://:s3cret@127.0.0.1:{protected}/0", timeout_s=2)
        try:
            return list(await asyncio.gather(*(client.call("ECHO", f"call-{i}") for i in range(2000))))
        finally:
            await client.close()

    assert asyncio.run(scenario()) == [f"call-{i}".encode() for i in range(2000)]
