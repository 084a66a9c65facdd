"""A model simulator in the spirit of llm-d's vLLM simulator: OpenAI-compatible, deterministic.

Replies are the same words for the same request and honour `max_tokens`; usage counts are
real (prompt tokens counted from the messages with the same tokenizer as the reply); streams
are SSE with one chunk per token and, when `stream_options.include_usage` is set, the usage
chunk before `[DONE]`. `time_to_first_token_s` and `inter_token_latency_s` slow it down like a
real model (tests use them for timeouts and disconnects).

It serves what the gateway meters, as vLLM does: `/v1/chat/completions`, `/v1/completions`,
`/v1/responses` (whole or streamed: a stream's `response.completed` event carries the usage) and
`/v1/embeddings` (a small deterministic vector per input; usage `prompt_tokens` and
`total_tokens`). A request without the member its endpoint needs (`messages`, `prompt`, `input`)
is a 400, and any other path a 404, both in the OpenAI error shape.

It answers only the gateway: every path but `/health` needs `Authorization: Bearer <token>`,
an internal token made when the service starts (`SimulatorService.token`, never written to disk
or logged) and handed to the models file, which sends it for the entries whose url names the
simulator by `{simulator_port}` (shared/modelsfile.py). Without it: 401 in the OpenAI shape.
So a key holder cannot bypass the gateway's limits by calling the simulator's port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import hdrs, web
from pydantic import SecretStr

from local.gateway.loopthread import LoopThread
from shared.errors import (
    InvalidRequest,
    MaasError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    openai_body,
)
from shared.settings import Settings

DEFAULT_MODELS = ("qwen3-0-6b-instruct", "vllm-simulator")
DEFAULT_MAX_TOKENS = 16
# Like a served model's max_model_len: vLLM refuses (400) a request whose prompt plus
# max_tokens exceeds it, which also keeps one request from occupying the simulator for long.
MAX_MODEL_LEN = 4096
# The length of the simulator's embeddings: small, since they mean nothing.
EMBEDDING_DIM = 16
# Longest list of inputs (or prompts) one call may send: bounds the work of one request.
MAX_INPUTS = 2048
_REPLY_WORDS = (
    "This is a simulated reply from the model simulator . It repeats the same words for the "
    "same request so that tests and demos can rely on it , and it counts tokens honestly ."
).split()
_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _required(body: dict[str, Any], name: str) -> Any:
    if body.get(name) is None:
        raise MalformedRequest(f"'{name}' is required")
    return body[name]


def _is_tokens(value: Any) -> bool:
    """A tokenized prompt: a non-empty list of token ids."""
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def prompt_list(value: Any, name: str) -> list[str | list[int]]:
    """The prompts of a Completions `prompt` or an embeddings `input`: a string, a list of
    strings, a list of token ids (one prompt) or a list of such lists."""
    if isinstance(value, str):
        return [value]
    if _is_tokens(value):
        return [value]
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS and all(
        isinstance(item, str) or _is_tokens(item) for item in value
    ):
        return list(value)
    raise MalformedRequest(
        f"'{name}' must be a string, a list of strings, a list of token ids or a list of such lists "
        f"(at most {MAX_INPUTS})"
    )


def _tokens_of(prompt: str | list[int]) -> int:
    return len(prompt) if isinstance(prompt, list) else count_tokens(prompt)


def _messages_tokens(messages: list[Any]) -> int:
    # Each message also costs its role and separators, as a chat template would.
    return sum(count_tokens(_content_text(m.get("content"))) + 2 for m in messages if isinstance(m, dict))


def _response_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses call's `input` as items: a string is one user message."""
    given = _required(body, "input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if isinstance(given, list) and given and len(given) <= MAX_INPUTS and all(isinstance(i, dict) for i in given):
        return given
    raise MalformedRequest("'input' must be a string or a non-empty list of input items")


def prompt_tokens(body: dict[str, Any], path: str = "/v1/chat/completions") -> int:
    """The prompt's tokens of a request to `path` (raises MalformedRequest, a 400 as vLLM's, when it has none)."""
    if path == "/v1/chat/completions":
        messages = _required(body, "messages")
        if not isinstance(messages, list) or not messages or len(messages) > MAX_INPUTS:
            raise MalformedRequest("'messages' must be a non-empty list")
        return _messages_tokens(messages)
    if path == "/v1/responses":
        items = [{**item, "content": item.get("content", item.get("output"))} for item in _response_items(body)]
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise MalformedRequest("'instructions' must be a string")
        return _messages_tokens(items) + (count_tokens(instructions) + 2 if instructions else 0)
    name = "input" if path == "/v1/embeddings" else "prompt"
    return sum(_tokens_of(p) for p in prompt_list(_required(body, name), name))


def embedding(prompt: str | list[int]) -> list[float]:
    """A unit vector of EMBEDDING_DIM floats, the same for the same input."""
    digest = hashlib.sha256(json.dumps(prompt).encode()).digest()
    raw = [byte / 127.5 - 1.0 for byte in digest[:EMBEDDING_DIM]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def reply_words(max_tokens: int, seed: int) -> list[str]:
    """`max_tokens` words, starting at a place that depends on the prompt."""
    start = seed % len(_REPLY_WORDS)
    return [_REPLY_WORDS[(start + i) % len(_REPLY_WORDS)] for i in range(max_tokens)]


def new_token() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))




def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (an unknown path, a wrong method, a body over its limit), which it
    sends as text/plain ("404: Not Found"), in the OpenAI error shape."""
    path = request.path[:200]
    error: MaasError
    if exc.status == 404:
        # Through the gateway, which passes a backend's answer on: saying what the simulator
        # serves, not aiohttp's text/plain "404: Not Found".
        error = NotFound(f"the built-in simulator does not serve {json.dumps(path)}: it serves /v1/chat/completions, "
                         "/v1/completions, /v1/responses, /v1/embeddings and /v1/models; for other endpoints, add a "
                         "backend that serves them to the models file (MAAS_MODELS_FILE)")
    elif exc.status == 405:
        error = MethodNotAllowed(f"method {request.method} is not allowed on {path}")
    elif exc.status == 413:
        error = PayloadTooLarge(exc.reason)
    else:
        error = MalformedRequest(exc.reason) if exc.status < 500 else MaasError(exc.reason)
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return web.json_response(openai_body(error), status=exc.status, headers=allow)


class Simulator:
    def __init__(
        self,
        models: Sequence[str] = DEFAULT_MODELS,
        *,
        token: SecretStr,
        time_to_first_token_s: float = 0.0,
        inter_token_latency_s: float = 0.0,
    ) -> None:
        self.models = tuple(models)
        self._authorization = f"Bearer {token.get_secret_value()}".encode()
        self.ttft = time_to_first_token_s
        self.itl = inter_token_latency_s
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._authorized])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except MaasError as exc:
            return web.json_response(openai_body(exc), status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(request, exc)

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/health":
            given = request.headers.get(hdrs.AUTHORIZATION, "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, self._authorization):
                # Says how to reach it, never what was sent or expected.
                raise Unauthorized(
                    "the built-in simulator answers the gateway only: call the gateway, or point a "
                    "models file entry at http://127.0.0.1:{simulator_port}/v1 so it sends the internal token"
                )
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_models(self, request: web.Request) -> web.Response:
        # With vLLM's `max_model_len`: what the gateway reserves for a request without max_tokens.
        data = [{"id": m, "object": "model", "created": self.created, "owned_by": "simulator",
                 "max_model_len": MAX_MODEL_LEN} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise MalformedRequest("request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise MalformedRequest("request body must be a JSON object")
        model = body.get("model")
        if model not in self.models:
            raise NotFound(f"model '{model}' does not exist")
        return body

    async def _generation(self, request: web.Request, *names: str) -> tuple[dict[str, Any], int, int]:
        """The body, prompt tokens and completion length of a request that generates; the
        length is the first of `names` the body sets (the members the endpoint reads)."""
        body = await self._body(request)
        prompt = prompt_tokens(body, request.path)  # (a 400 without the prompt)
        name = next((n for n in names if body.get(n) is not None), None)
        max_tokens = DEFAULT_MAX_TOKENS if name is None else body[name]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer")
        if prompt + max_tokens > MAX_MODEL_LEN:
            raise InvalidRequest(
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion)."
            )
        return body, prompt, max_tokens

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        lengths = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
        body, prompt, max_tokens = await self._generation(request, *lengths)
        words = reply_words(max_tokens, seed=prompt)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        base = {"id": ident, "created": int(time.time()), "model": body["model"]}
        if self.ttft:
            await asyncio.sleep(self.ttft)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return await self._stream(request, base, words, usage, chat, bool(options.get("include_usage")))
        text = " ".join(words)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        return web.json_response({**base, "object": obj, "choices": [choice], "usage": usage})

    async def _stream(
        self,
        request: web.Request,
        base: dict[str, Any],
        words: list[str],
        usage: dict[str, int],
        chat: bool,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({**base, "object": obj, "choices": choices, **extra}).encode() + b"\n\n"

        if chat:
            await response.write(event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        for i, word in enumerate(words):
            if self.itl and i:
                await asyncio.sleep(self.itl)
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            await response.write(event([{**choice, "finish_reason": None}]))
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        await response.write(event([{**last, "finish_reason": "length"}]))
        if include_usage:
            await response.write(event([], usage=usage))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        """vLLM's /v1/embeddings: one vector per input, usage `prompt_tokens` = `total_tokens`."""
        body = await self._body(request)
        inputs = prompt_list(_required(body, "input"), "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise MalformedRequest("'encoding_format' must be 'float' or 'base64'")
        tokens = 0
        data = []
        for index, given in enumerate(inputs):
            length = _tokens_of(given)
            if length > MAX_MODEL_LEN:
                raise InvalidRequest(
                    f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, input {index} "
                    f"has {length} tokens."
                )
            tokens += length
            vector: list[float] | str = embedding(given)
            if encoding == "base64":  # what OpenAI's SDKs ask for by default: little-endian float32
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        if self.ttft:
            await asyncio.sleep(self.ttft)
        return web.json_response({
            "id": "embd-" + uuid.uuid4().hex, "object": "list", "created": int(time.time()),
            "model": body["model"], "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """vLLM's /v1/responses (the OpenAI Responses API), whole or streamed. The reply always
        stops at `max_output_tokens` (16 unless given), so it is `incomplete` for that reason, as
        vLLM says of a reply cut by its length; a stream ends with `response.completed`."""
        body, prompt, max_tokens = await self._generation(request, "max_output_tokens")
        words = reply_words(max_tokens, seed=prompt)
        usage = {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(words), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + len(words),
        }
        item_id = "msg_" + uuid.uuid4().hex
        text = " ".join(words)
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": item_id, "status": "incomplete", "role": "assistant", "content": [part]}
        reply = {
            "id": "resp_" + uuid.uuid4().hex, "object": "response", "created_at": int(time.time()),
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "error": None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"], "output": [item], "parallel_tool_calls": True,
            "previous_response_id": None, "temperature": body.get("temperature", 1.0),
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
            "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
        }
        if self.ttft:
            await asyncio.sleep(self.ttft)
        if body.get("stream"):
            return await self._responses_stream(request, reply, words)
        return web.json_response(reply)

    async def _responses_stream(
        self, request: web.Request, reply: dict[str, Any], words: list[str]
    ) -> web.StreamResponse:
        """The Responses API's events, `event:` and `data:` lines each; the usage comes once, in
        the final `response.completed` (the earlier snapshots carry `"usage": null`)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sequence = 0

        async def send(kind: str, **members: Any) -> None:
            nonlocal sequence
            payload = json.dumps({"type": kind, "sequence_number": sequence, **members})
            sequence += 1
            await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())

        [item] = reply["output"]
        [part] = item["content"]
        started = {**reply, "status": "in_progress", "incomplete_details": None, "output": [], "usage": None}
        await send("response.created", response=started)
        await send("response.in_progress", response=started)
        at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        await send("response.output_item.added", output_index=0,
                   item={**item, "status": "in_progress", "content": []})
        await send("response.content_part.added", **at, part={**part, "text": ""})
        for i, word in enumerate(words):
            if self.itl and i:
                await asyncio.sleep(self.itl)
            await send("response.output_text.delta", **at, delta=word if i == 0 else " " + word, logprobs=[])
        await send("response.output_text.done", **at, text=part["text"], logprobs=[])
        await send("response.content_part.done", **at, part=part)
        await send("response.output_item.done", output_index=0, item=item)
        await send("response.completed", response=reply)
        await response.write_eof()
        return response

class SimulatorService:
    """The simulator on settings.host:settings.simulator_port (0 picks a free port), answering
    requests that carry `token` (a new random one unless given)."""

    def __init__(
        self,
        settings: Settings,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        token: SecretStr | None = None,
        time_to_first_token_s: float = 0.0,
        inter_token_latency_s: float = 0.0,
    ) -> None:
        self._settings = settings
        self.token = token if token is not None else new_token()
        self._simulator = Simulator(
            models, token=self.token, time_to_first_token_s=time_to_first_token_s,
            inter_token_latency_s=inter_token_latency_s,
        )
        self._thread = LoopThread("model-simulator")
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return f"http://{self._settings.host}:{self._port}"

    def start(self) -> None:
        self._thread.start()
        try:
            self._port = self._thread.call(self._serve)
        except BaseException:
            self._thread.stop()
            raise

    async def _serve(self) -> int:
        self._runner = web.AppRunner(self._simulator.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.host, self._settings.simulator_port)
        await site.start()
        # The bound address tells the port when 0 (any free port) was asked for.
        return int(self._runner.addresses[0][1])

    def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._thread.stop(runner.cleanup if runner is not None else None)
        self._port = None
