"""A lenient vLLM-like backend that keeps its own count of what it generated.

Where vLLM (and many OpenAI-compatible servers) are lenient, this one is too: it streams for
any truthy `stream` (1, "yes", 1.0), generates `max(n, best_of)` completions of every prompt of
a prompt list, and, when no length is given, generates until prompt and completion fill the
context length (vLLM's default for a missing `max_tokens`). A token is one word; each generated
word is `tok ` (4 bytes, so the gateway's text count of a usage-less reply is exact).

`generated` is the backend's own count of the tokens it reported or would have reported
(prompt + completion), the ground truth a limit test compares the gateway's bound against.
`report_usage=False` makes it a backend that never reports usage.

Further options (all off by default, where the backend behaves as above) make it odder, as real
servers are (tests/test_limits_review.py):

- `length_members="vllm"`: each endpoint reads only the length members vLLM's request models
  declare (chat: `max_completion_tokens or max_tokens`; completions: `max_tokens`, default 16;
  responses: `max_output_tokens`); other members are ignored, as vLLM ignores extra fields.
- `reasoning_tokens`: the first that many tokens of each chat completion are reasoning, sent in
  `reasoning` (vLLM's name since it dropped `reasoning_content`).
- `word`: the text of one generated token (default `tok `, 4 bytes).
- `image_tokens`: what an `image_url`/`input_image` content part costs in prompt tokens.
- `remember_responses`: Responses calls get ids and `previous_response_id` prepends the stored
  conversation to the prompt (vLLM's `store`).
- `echo_request`: a Responses stream opens with `response.created`, which echoes the request's
  `tools`, `text`, `instructions` and `metadata` (as vLLM and OpenAI do), `usage` null.
- `pause_before_usage_s`: a stream pauses after its last token, before its usage event (or
  `response.completed`).
- `split_usage_digits`/`split_usage_pause_s`: the usage event is written in two writes, cut after
  the first that many digits of `total_tokens`, with a pause between.
- `delay_s`: every call waits this long (after counting) before it answers.
- `first_wins`: a duplicated JSON member is read at its first occurrence (as some parsers do).
- `max_n`: a call asking for more completions than this is refused (400) after `delay_s`.

`GET /v1/models` answers as vLLM's does (vllm/entrypoints/openai/serving_models.py,
`show_available_models`): a ModelList with a ModelCard for each of `models` (default: the
tests' one, `lenient`), its `max_model_len` the backend's `context`, read at each call. With
`model_list="openai"` the cards have no `max_model_len` (as OpenAI's and most other servers'),
with `model_list="error"` the list is a 500. `models_listed` counts those calls (apart from
`requests`, which counts model calls only).

A stream whose reader goes away ends there, quietly (its tokens were counted when it started).
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


def _words(value: Any, image_tokens: int = 0) -> int:
    """Prompt tokens of a prompt, message list or input: words of its text, or a token list's length
    (and `image_tokens` for each image part)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if value and all(type(item) is int for item in value):
            return len(value)
        return sum(_words(item, image_tokens) for item in value)
    if isinstance(value, dict):
        image = image_tokens if value.get("type") in ("image_url", "input_image") else 0
        return image + sum(_words(member, image_tokens) for name, member in value.items()
                           if name in ("content", "text", "input"))
    return 0


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        members.setdefault(name, value)
    return members


# What vLLM's request models read for a completion's length, per endpoint (`length_members="vllm"`).
_VLLM_LENGTHS = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
_VLLM_COMPLETIONS_DEFAULT = 16


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
    def __init__(self, *, context: int = 4096, report_usage: bool = True, token_delay_s: float = 0.0,
                 length_members: str = "any", reasoning_tokens: int = 0, word: str = WORD,
                 image_tokens: int = 0, remember_responses: bool = False, echo_request: bool = False,
                 pause_before_usage_s: float = 0.0, split_usage_digits: int = 0,
                 split_usage_pause_s: float = 0.0, delay_s: float = 0.0, first_wins: bool = False,
                 max_n: int | None = None, models: tuple[str, ...] = ("lenient",),
                 model_list: str = "vllm") -> None:
        self.context = context
        self.report_usage = report_usage
        self.token_delay_s = token_delay_s
        self.length_members = length_members
        self.reasoning_tokens = reasoning_tokens
        self.word = word
        self.image_tokens = image_tokens
        self.remember_responses = remember_responses
        self.echo_request = echo_request
        self.pause_before_usage_s = pause_before_usage_s
        self.split_usage_digits = split_usage_digits
        self.split_usage_pause_s = split_usage_pause_s
        self.delay_s = delay_s
        self.first_wins = first_wins
        self.max_n = max_n
        self.models = models
        self.model_list = model_list
        self.models_listed = 0
        self._stored: dict[str, int] = {}  # response id -> its prompt + output tokens
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

    async def _body(self, request: web.Request) -> Any:
        if self.first_wins:
            return json.loads(await request.text(), object_pairs_hook=_first_wins)
        return await request.json()

    def _plan(self, body: dict[str, Any], prompts: list[int], endpoint: str = "") -> tuple[int, int, int]:
        """(completions per prompt, tokens per completion for the longest prompt, prompt tokens)."""
        copies = max(_lenient_int(body.get("n")) or 1, _lenient_int(body.get("best_of")) or 1)
        length = None
        members = ("max_completion_tokens", "max_tokens", "max_output_tokens")
        if self.length_members == "vllm" and endpoint in _VLLM_LENGTHS:
            members = _VLLM_LENGTHS[endpoint]
        for name in members:
            length = length or _lenient_int(body.get(name))
        if length is None and self.length_members == "vllm" and endpoint == "completions":
            length = _VLLM_COMPLETIONS_DEFAULT
        return copies, length or 0, sum(prompts)

    def _refusal(self, copies: int) -> web.Response | None:
        if self.max_n is not None and copies > self.max_n:
            return web.json_response({"object": "error", "message": f"n must be at most {self.max_n}",
                                      "type": "BadRequestError", "code": 400}, status=400)
        return None

    def _piece(self, chat: bool, step: int, text: str) -> dict[str, Any]:
        """A stream event's choice content for the `step`-th token of a completion."""
        if not chat:
            return {"text": text}
        if step < self.reasoning_tokens:
            return {"delta": {"reasoning": text}}
        return {"delta": {"content": text}}

    def _message(self, tokens: int) -> dict[str, Any]:
        reasoning = min(self.reasoning_tokens, tokens)
        message: dict[str, Any] = {"role": "assistant", "content": self.word * (tokens - reasoning)}
        if reasoning:
            message["reasoning"] = self.word * reasoning
        return message

    async def _write_usage(self, response: web.StreamResponse, event: bytes) -> None:
        if self.pause_before_usage_s:
            await asyncio.sleep(self.pause_before_usage_s)
        if self.split_usage_digits:
            at = event.index(b'"total_tokens": ') + len(b'"total_tokens": ') + self.split_usage_digits
            await response.write(event[:at])
            await asyncio.sleep(self.split_usage_pause_s)
            await response.write(event[at:])
        else:
            await response.write(event)

    def _lengths(self, length: int, prompt: int) -> int:
        room = max(0, self.context - prompt)
        return min(length, room) if length else room

    async def _chat_or_completion(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        chat = request.path.endswith("/chat/completions")
        if chat:
            prompts = [_words(body.get("messages"), self.image_tokens)]
        else:
            prompt = body.get("prompt")
            many = isinstance(prompt, list) and prompt and not all(type(item) is int for item in prompt)
            prompts = [_words(item) for item in prompt] if many else [_words(prompt)]  # type: ignore[union-attr]
        copies, length, prompt_tokens = self._plan(body, prompts, "chat" if chat else "completions")
        refused = self._refusal(copies)
        if refused is not None:
            await asyncio.sleep(self.delay_s)
            return refused
        choices: list[tuple[int, int]] = []  # (index, tokens)
        for prompt in prompts:
            for _ in range(copies):
                choices.append((len(choices), self._lengths(length, prompt)))
        completion = sum(tokens for _, tokens in choices)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        self._count(prompt_tokens + completion)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        kind = "chat.completion" if chat else "text_completion"
        if body.get("stream"):  # any truthy value, as a lax server reads it
            return await self._stream(request, body, kind, choices, usage, chat)
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s * max(tokens for _, tokens in choices))
        reply: dict[str, Any] = {
            "id": "cmpl-lenient", "object": kind, "created": 0, "model": body.get("model"),
            "choices": [
                {"index": index, "finish_reason": "length",
                 **({"message": self._message(tokens)} if chat else {"text": self.word * tokens})}
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
        try:
            base = {"id": "cmpl-lenient", "object": f"{kind}.chunk" if chat else kind, "created": 0,
                    "model": body.get("model")}
            longest = max(tokens for _, tokens in choices)
            for step in range(longest):
                for index, tokens in choices:
                    if step < tokens:
                        piece = self._piece(chat, step, self.word)
                        event = {**base, "choices": [{"index": index, **piece, "finish_reason": None}]}
                        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
            options = body.get("stream_options")
            if self.report_usage and isinstance(options, dict) and options.get("include_usage"):
                await self._write_usage(
                    response, b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the reader went away: the stream ends here (its tokens were counted), quietly
        return response

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = _words(body.get("input"), self.image_tokens)
        if self.remember_responses:
            prompt += self._stored.get(str(body.get("previous_response_id")), 0)
        _, length, _ = self._plan(body, [prompt], "responses")
        tokens = self._lengths(length, prompt)
        usage = {"input_tokens": prompt, "output_tokens": tokens, "total_tokens": prompt + tokens}
        self._count(prompt + tokens)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        response_id = "resp-lenient"
        if self.remember_responses:
            with self._lock:
                response_id = f"resp-{len(self._stored) + 1}"
                self._stored[response_id] = prompt + tokens
        output = [{"type": "message", "role": "assistant",
                   "content": [{"type": "output_text", "text": self.word * tokens}]}]
        done: dict[str, Any] = {"id": response_id, "object": "response", "status": "completed",
                                "model": body.get("model"), "output": output}
        if self.report_usage:
            done["usage"] = usage
        if not body.get("stream"):
            return web.json_response(done)
        return await self._responses_stream(request, body, response_id, tokens, done)

    async def _responses_stream(self, request: web.Request, body: dict[str, Any], response_id: str, tokens: int,
                                done: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if self.echo_request:
                created = {"id": response_id, "object": "response", "status": "in_progress", "model": body.get("model"),
                           "output": [], "instructions": body.get("instructions"), "metadata": body.get("metadata"),
                           "text": body.get("text"), "tools": body.get("tools") or [], "usage": None}
                event_created = {"type": "response.created", "response": created}
                await response.write(b"event: response.created\ndata: " + json.dumps(event_created).encode() + b"\n\n")
            for _ in range(tokens):
                event = {"type": "response.output_text.delta", "delta": self.word}
                await response.write(b"event: response.output_text.delta\ndata: " + json.dumps(event).encode() + b"\n\n")
            # The whole response again in the last event, as the Responses API does (its text too:
            # a gateway must not count it twice).
            final = {"type": "response.completed", "response": done}
            await self._write_usage(response, b"event: response.completed\ndata: " + json.dumps(final).encode() + b"\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # as in _stream
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not all(type(i) is int for i in inputs) else [inputs]
        prompt = sum(_words(item) for item in items)
        self._count(prompt)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply: dict[str, Any] = {
            "object": "list", "model": body.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(len(items))],
        }
        if self.report_usage:
            reply["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return web.json_response(reply)

    async def _list_models(self, request: web.Request) -> web.Response:
        with self._lock:
            self.models_listed += 1
        if self.model_list == "error":
            return web.json_response({"object": "error", "message": "no listing today", "type": "InternalServerError",
                                      "code": 500}, status=500)
        cards = []
        for model in self.models:
            card: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": "vllm", "root": model,
                                    "parent": None, "permission": []}
            if self.model_list == "vllm":
                card["max_model_len"] = self.context
            cards.append(card)
        return web.json_response({"object": "list", "data": cards})

    # -- serving -------------------------------------------------------------------------

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_or_completion)
        app.router.add_post("/v1/completions", self._chat_or_completion)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._list_models)
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
