"""A minimal, fast OpenAI-compatible responder: canned answers, so it is never the bottleneck.

Run as `python -m bench.backend PORT`; prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import cast

import httptools
import uvloop

_USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
_REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three four five"}, "finish_reason": "length"}],
        "usage": _USAGE,
    }
).encode()
_PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(_REPLY), _REPLY)


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _stream_body() -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
    events = [_event({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in "one two three four five".split()]
    events.append(_event({**base, "choices": [], "usage": _USAGE}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


_STREAM = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + _stream_body()


class RequestReader(asyncio.Protocol):
    """Reads HTTP/1.1 requests off a connection and hands each whole body to `on_request`.

    The canned backend here and the tests' scripted backends answer on top of it.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._body = b""
        self._transport: asyncio.Transport | None = None

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self._body = b""

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.on_request(self._body)

    def on_request(self, body: bytes) -> None:
        raise NotImplementedError


class _Responder(RequestReader):
    def on_request(self, body: bytes) -> None:
        self.transport.write(_STREAM if b'"stream":true' in body.replace(b" ", b"") else _PLAIN)


async def _main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1])))
