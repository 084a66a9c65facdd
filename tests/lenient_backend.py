"""A lenient vLLM-like backend that keeps its own count of what it generated.

Where vLLM (and many OpenAI-compatible servers) are lenient, this one is too: it streams for
any truthy `stream` (1, "yes", 1.0), generates `max(n, best_of)` completions of every prompt of
a prompt list, and, when no length is given, generates until prompt and completion fill the
context length (vLLM's default for a missing `max_tokens`). A token is one word; each generated
word is `tok ` (4 bytes, so the gateway's text count of a usage-less reply is exact).

`generated` is the backend's own count of the tokens it reported or would have reported
(prompt + completion), the ground truth a limit test compares the gateway's bound against.
`report_usage=False` makes it a backend that never reports usage.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from local.gateway.loopthread import LoopThread

WORD = "tok "


def _words(value: Any) -> int:
    """Prompt tokens of a prompt, message list or input: words of its text, or a token list's length."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if value and all(type(item) is int for item in value):
            return len(value)
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return sum(_words(member) for name, member in value.items() if name in ("content", "text", "input"))
    return 0


def _lenient_int(value: Any) -> int | None:
    """What a lax validator makes of a length: 100, "100", 100.0 -> 100; anything else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and number > 0 else None


class LenientBackend:
    def __init__(self, *, context: int = 4096, report_usage: bool = True, token_delay_s: float = 0.0) -> None:
        self.context = context
        self.report_usage = report_usage
        self.token_delay_s = token_delay_s
        self.generated = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._thread = LoopThread("lenient-backend")
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _count(self, tokens: int) -> None:
        with self._lock:
            self.generated += tokens
            self.requests += 1

    def reset(self) -> None:
        with self._lock:
            self.generated = self.requests = 0

    # -- generation ----------------------------------------------------------------------

    def _plan(self, body: dict[str, Any], prompts: list[int]) -> tuple[int, int, int]:
        """(completions per prompt, tokens per completion for the longest prompt, prompt tokens)."""
        copies = max(_lenient_int(body.get("n")) or 1, _lenient_int(body.get("best_of")) or 1)
        length = None
        for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            length = length or _lenient_int(body.get(name))
        return copies, length or 0, sum(prompts)

    def _lengths(self, length: int, prompt: int) -> int:
        room = max(0, self.context - prompt)
        return min(length, room) if length else room

    async def _chat_or_completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        if chat:
            prompts = [_words(body.get("messages"))]
        else:
            prompt = body.get("prompt")
            many = isinstance(prompt, list) and prompt and not all(type(item) is int for item in prompt)
            prompts = [_words(item) for item in prompt] if many else [_words(prompt)]  # type: ignore[union-attr]
        copies, length, prompt_tokens = self._plan(body, prompts)
        choices: list[tuple[int, int]] = []  # (index, tokens)
        for prompt in prompts:
            for _ in range(copies):
                choices.append((len(choices), self._lengths(length, prompt)))
        completion = sum(tokens for _, tokens in choices)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        self._count(prompt_tokens + completion)
        kind = "chat.completion" if chat else "text_completion"
        if body.get("stream"):  # any truthy value, as a lax server reads it
            return await self._stream(request, body, kind, choices, usage, chat)
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s * max(tokens for _, tokens in choices))
        reply: dict[str, Any] = {
            "id": "cmpl-lenient", "object": kind, "created": 0, "model": body.get("model"),
            "choices": [
                {"index": index, "finish_reason": "length",
                 **({"message": {"role": "assistant", "content": WORD * tokens}} if chat else {"text": WORD * tokens})}
                for index, tokens in choices
            ],
        }
        if self.report_usage:
            reply["usage"] = usage
        return web.json_response(reply)

    async def _stream(self, request: web.Request, body: dict[str, Any], kind: str, choices: list[tuple[int, int]],
                      usage: dict[str, int], chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "cmpl-lenient", "object": f"{kind}.chunk" if chat else kind, "created": 0, "model": body.get("model")}
        longest = max(tokens for _, tokens in choices)
        for step in range(longest):
            for index, tokens in choices:
                if step < tokens:
                    piece = {"delta": {"content": WORD}} if chat else {"text": WORD}
                    event = {**base, "choices": [{"index": index, **piece, "finish_reason": None}]}
                    await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
        options = body.get("stream_options")
        if self.report_usage and isinstance(options, dict) and options.get("include_usage"):
            await response.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = _words(body.get("input"))
        _, length, _ = self._plan(body, [prompt])
        tokens = self._lengths(length, prompt)
        usage = {"input_tokens": prompt, "output_tokens": tokens, "total_tokens": prompt + tokens}
        self._count(prompt + tokens)
        output = [{"type": "message", "role": "assistant",
                   "content": [{"type": "output_text", "text": WORD * tokens}]}]
        done: dict[str, Any] = {"id": "resp-lenient", "object": "response", "status": "completed",
                                "model": body.get("model"), "output": output}
        if self.report_usage:
            done["usage"] = usage
        if not body.get("stream"):
            return web.json_response(done)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(tokens):
            event = {"type": "response.output_text.delta", "delta": WORD}
            await response.write(b"event: response.output_text.delta\ndata: " + json.dumps(event).encode() + b"\n\n")
        # The whole response again in the last event, as the Responses API does (its text too:
        # a gateway must not count it twice).
        final = {"type": "response.completed", "response": done}
        await response.write(b"event: response.completed\ndata: " + json.dumps(final).encode() + b"\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not all(type(i) is int for i in inputs) else [inputs]
        prompt = sum(_words(item) for item in items)
        self._count(prompt)
        reply: dict[str, Any] = {
            "object": "list", "model": body.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(len(items))],
        }
        if self.report_usage:
            reply["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return web.json_response(reply)

    # -- serving -------------------------------------------------------------------------

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_or_completion)
        app.router.add_post("/v1/completions", self._chat_or_completion)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._thread.start()

        async def listen() -> int:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server  # noqa: SLF001 - aiohttp keeps the bound port there
            assert server is not None
            return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

        self.port = self._thread.call(listen)

    def stop(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        self._thread.stop(close)


@contextmanager
def lenient_backend(**options: Any) -> Iterator[LenientBackend]:
    backend = LenientBackend(**options)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()
