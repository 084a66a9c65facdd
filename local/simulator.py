"""A model simulator in the spirit of llm-d's vLLM simulator: OpenAI-compatible, deterministic.

Replies are the same words for the same request and honour `max_tokens`; usage counts are
real (prompt tokens counted from the messages with the same tokenizer as the reply); streams
are SSE with one chunk per token and, when `stream_options.include_usage` is set, the usage
chunk before `[DONE]`. `time_to_first_token_s` and `inter_token_latency_s` slow it down like a
real model (tests use them for timeouts and disconnects).

It answers only the gateway: every path but `/health` needs `Authorization: Bearer <token>`,
an internal token made when the service starts (`SimulatorService.token`, never written to disk
or logged) and handed to the models file, which sends it for the entries whose url names the
simulator by `{simulator_port}` (shared/modelsfile.py). Without it: 401 in the OpenAI shape.
So a key holder cannot bypass the gateway's limits by calling the simulator's port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import hdrs, web
from pydantic import SecretStr

from local.gateway.loopthread import LoopThread
from shared.errors import InvalidRequest, MaasError, MalformedRequest, NotFound, Unauthorized, openai_body
from shared.settings import Settings

DEFAULT_MODELS = ("qwen3-0-6b-instruct", "vllm-simulator")
DEFAULT_MAX_TOKENS = 16
# Like a served model's max_model_len: vLLM refuses (400) a request whose prompt plus
# max_tokens exceeds it, which also keeps one request from occupying the simulator for long.
MAX_MODEL_LEN = 4096
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


def prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty list")
        # Each message also costs its role and separators, as a chat template would.
        return sum(count_tokens(_content_text(m.get("content"))) + 2 for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(str(p) for p in prompt)
    return count_tokens(str(prompt))


def reply_words(max_tokens: int, seed: int) -> list[str]:
    """`max_tokens` words, starting at a place that depends on the prompt."""
    start = seed % len(_REPLY_WORDS)
    return [_REPLY_WORDS[(start + i) % len(_REPLY_WORDS)] for i in range(max_tokens)]


def new_token() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))


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
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except MaasError as exc:
            return web.json_response(openai_body(exc), status=exc.status)
        except web.HTTPNotFound:
            # Through the gateway, which passes a backend's answer on: in the OpenAI shape, and
            # saying what the simulator serves, not aiohttp's text/plain "404: Not Found".
            path = json.dumps(request.path[:200])
            missing = NotFound(f"the built-in simulator does not serve {path}: it serves /v1/chat/completions, "
                               "/v1/completions and /v1/models; for other endpoints, add a backend that serves them "
                               "to the models file (MAAS_MODELS_FILE)")
            return web.json_response(openai_body(missing), status=404)

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
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest("'max_tokens' must be a positive integer")
        prompt = prompt_tokens(body)
        if prompt + max_tokens > MAX_MODEL_LEN:
            raise InvalidRequest(
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion)."
            )
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self._body(request)
        prompt = prompt_tokens(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
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
