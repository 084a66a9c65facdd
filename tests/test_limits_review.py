"""A hostile review of the token limits (issue 11): clients and backends that try to break them.

The promise (README, "Token limits work as Kuadrant's do"; docs/ARCHITECTURE.md, "Token
limits"): the tokens a backend generates for a counter stay within the limit plus one request's
worst cost, however many requests run at once, and the usage recorded is what the backend
reported. Each attack below is checked against the lenient backend's own count
(tests/lenient_backend.py, with the odder options it grew for this file).

A test marked `xfail(strict=True)` is a bug found: it asserts what the promise says and fails
today; it flips (and then fails as XPASS) when the bug is fixed. The others are attacks that held.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import socket
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from local.gateway.contexts import Unreachable, context_from_listing, fetch_listing
from local.simulator import SimulatorService
from shared.modelsfile import ModelBackend
from shared.settings import Settings
from shared.store.base import TeamChanges
from shared.store.sqlite import SqliteStore
from tests.lenient_backend import LenientBackend
from tests.redis_harness import RedisServer, redis_binary, redis_server  # noqa: F401
from tests.test_limits_hostile import MODEL, Setup, _chat, _concurrently, _post, _BACKENDS_CONTEXT, _start_gateway, redis_url  # noqa: F401
from tests.waiting import eventually

CHAT = "/v1/chat/completions"


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    """`build(backend options..., max_context=, settings...)`: a lenient backend and a gateway."""
    opened: list[Callable[[], None]] = []
    backend_options = set(inspect.signature(LenientBackend).parameters)

    def make(*, max_context: int | None = _BACKENDS_CONTEXT, **options: Any) -> Setup:
        backend = LenientBackend(**{k: v for k, v in options.items() if k in backend_options})
        backend.start()
        opened.append(backend.stop)
        store = SqliteStore(tmp_path / "maas.db")
        opened.append(store.close)
        settings = {k: v for k, v in options.items() if k not in backend_options}
        gateway = _start_gateway(tmp_path, store, backend, max_context=max_context, **settings)
        setup = Setup(backend, store, gateway, tmp_path)
        opened.append(lambda: setup.gateway.stop())
        return setup

    yield make
    for close in reversed(opened):
        close()


def _raw(url: str, key: str, path: str, content: bytes, timeout: float = 30) -> httpx.Response:
    return httpx.post(url + path, content=content, timeout=timeout,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def _compact(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _estimate(body: dict[str, Any] | bytes) -> int:
    """The gateway's prompt estimate of a body (proxy.py: its bytes / 4)."""
    return len(body if isinstance(body, bytes) else _compact(body)) // 4


def _concurrent_raw(url: str, key: str, path: str, content: bytes, count: int) -> list[httpx.Response]:
    async def one(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.post(path, content=content, headers={"Authorization": f"Bearer {key}",
                                                                      "Content-Type": "application/json"})
        await response.aread()
        return response

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=count)) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(count))))

    return asyncio.run(run())


def _hang_up_when_quiet(url: str, key: str, path: str, body: dict[str, Any], quiet_s: float = 0.15,
                        reset: bool = True) -> bytes | None:
    """Send a call over a raw socket, read until nothing has come for `quiet_s`, then hang up:
    with a reset (SO_LINGER 0: what a killed client with unread data, or a hostile one, sends),
    or with a plain close (FIN). What was received; None when the call was refused (429)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    content = _compact(body)
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n").encode()
    got = b""
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    try:
        sock.sendall(head + content)
        sock.settimeout(quiet_s)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    if got.startswith(b"HTTP/1.1 429"):
        return None
    assert got == b"" or got.startswith(b"HTTP/1.1 200"), got[:300]
    return got


def _hang_up_repeatedly(setup: Setup, key: str, path: str, body: dict[str, Any], times: int, **how: Any) -> int:
    """Calls that hang up once the answer pauses, one after another until refused; how many ran."""
    for ran in range(times):
        if _hang_up_when_quiet(setup.gateway.url, key, path, body, **how) is None:
            return ran
        assert _settled(setup)
    return times


def _settled(setup: Setup) -> bool:
    return eventually(lambda: setup.gateway.limiter.outstanding == 0, timeout=10)


def _spent(setup: Setup, user: str = "alice", team: str = "t1") -> tuple[int, int]:
    return setup.gateway.limiter.state(team=setup.store.get_team(team_id=team), user_id=user)  # type: ignore[attr-defined,no-any-return]


# -- 1. the reservation misses what a lenient backend reads ------------------------------------------


@pytest.mark.parametrize("lax", ["300", 300.0], ids=["string", "float"])
def test_an_int_max_tokens_beside_a_lax_max_completion_tokens_reserves_the_small_one(
    build: Callable[..., Setup], lax: object
) -> None:
    """vLLM's chat reads `max_completion_tokens or max_tokens`, and pydantic's lax mode reads "300"
    and 300.0 as 300; the gateway reads only ints and takes `max_tokens: 1` as the bound."""
    setup = build(context=300, token_delay_s=0.002)
    limit = 2000
    setup.team(token_limit=limit)
    body = _chat(max_tokens=1, max_completion_tokens=lax)
    responses = _concurrently(setup.gateway.url, setup.key(), CHAT, body, 40)
    assert all(r.status_code in (200, 429) for r in responses)
    # A lax backend reads the 300: the call's real worst cost is the context (300) and its prompt.
    assert setup.backend.generated <= limit + 300 + len(_compact(body))


@pytest.mark.parametrize(("path", "body"), [
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 1}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_tokens": 1}),
], ids=["chat-max_output_tokens", "responses-max_tokens"])
def test_a_length_member_the_endpoint_does_not_read_is_taken_as_the_bound(
    build: Callable[..., Setup], path: str, body: dict[str, Any]
) -> None:
    setup = build(context=300, length_members="vllm", delay_s=0.3)
    limit = 2000
    setup.team(token_limit=limit)
    _concurrently(setup.gateway.url, setup.key(), path, body, 40)
    # vLLM ignores the member: the call's real worst cost is the context (300) and its prompt.
    assert setup.backend.generated <= limit + 300 + len(_compact(body))


@pytest.mark.parametrize("max_tokens", [
    6000,  # an explicit length beyond the assumed context is taken at its word
    None,
], ids=["max_tokens-6000", "no-max_tokens"])
def test_a_model_without_max_context_under_reserves_a_larger_context(
    build: Callable[..., Setup], max_tokens: int | None
) -> None:
    """Without `max_context` the gateway assumed 4096, and an 8192-context backend asked for no
    length generated more than was reserved. It now learns the context from the backend's
    `GET /v1/models`, as vLLM answers it: each ModelCard's `max_model_len`
    (vllm/entrypoints/openai/protocol.py, class ModelCard), the engine's context length
    (vllm/entrypoints/openai/serving_models.py, `show_available_models`). The lenient backend
    answers the same way; the fixture waits for the gateway to have asked."""
    setup = build(context=8192, max_context=None, delay_s=0.3)
    limit = 9000
    setup.team(token_limit=limit)
    body = _chat(max_tokens=max_tokens)
    _concurrently(setup.gateway.url, setup.key(), CHAT, body, 10)
    # One request's real worst cost: max_tokens and the prompt, or the whole 8192 context.
    worst = 8192 if max_tokens is None else max_tokens + _estimate(body)
    assert setup.backend.generated <= limit + worst


def _reserved_by_one_call(setup: Setup, body: dict[str, Any]) -> int:
    """What one call in flight holds reserved (the backend's `delay_s` keeps it there a while)."""
    key = setup.key()
    answered: list[int] = []
    caller = threading.Thread(target=lambda: answered.append(_post(setup.gateway.url, key, CHAT, body).status_code))
    caller.start()
    try:
        assert eventually(lambda: _spent(setup)[1] > 0, timeout=10)
        return _spent(setup)[1]
    finally:
        caller.join(30)
        assert answered == [200]


def test_the_context_learned_from_the_backend_is_what_a_call_without_max_tokens_reserves(
    build: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="maas.gateway"):
        setup = build(context=8192, max_context=None, delay_s=0.5)
    setup.team(token_limit=10**6)
    assert setup.gateway.contexts() == {MODEL: 8192}
    assert _reserved_by_one_call(setup, _chat(max_tokens=None)) == 8192  # not the 4096 assumed before
    assert _reserved_by_one_call(setup, _chat(max_tokens=9000)) == 8192  # the backend holds no more
    said = [r.getMessage() for r in caplog.records if r.name == "maas.gateway" and "context" in r.getMessage()]
    assert said == [f"model '{MODEL}': context length 8192 tokens, learned from its backend's GET /v1/models "
                    "(max_model_len); a request without max_tokens is reserved that many"]
    # The gateway's own listing shows it, as vLLM's does.
    listing = httpx.get(setup.gateway.url + "/v1/models", headers={"Authorization": f"Bearer {setup.key()}"})
    assert [(m["id"], m["max_model_len"]) for m in listing.json()["data"]] == [(MODEL, 8192)]


def test_a_declared_max_context_wins_over_the_context_the_backend_says(build: Callable[..., Setup]) -> None:
    setup = build(context=8192, max_context=2048, delay_s=0.5)
    setup.team(token_limit=10**6)
    assert setup.gateway.contexts() == {MODEL: 2048}
    assert _reserved_by_one_call(setup, _chat(max_tokens=None)) == 2048
    assert setup.backend.models_listed == 0  # never asked


@pytest.mark.parametrize("model_list", ["error", "openai"])
def test_a_backend_that_does_not_say_its_context_keeps_the_assumed_4096_and_is_served(
    build: Callable[..., Setup], caplog: pytest.LogCaptureFixture, model_list: str
) -> None:
    """A 500 from GET /v1/models, or cards without `max_model_len` (OpenAI's shape)."""
    with caplog.at_level(logging.INFO, logger="maas.gateway"):
        setup = build(context=8192, max_context=None, delay_s=0.5, model_list=model_list)
    setup.team(token_limit=10**6)
    assert setup.backend.models_listed == 1
    assert setup.gateway.contexts() == {MODEL: None}
    assert _reserved_by_one_call(setup, _chat(max_tokens=None)) == 4096
    said = [r.getMessage() for r in caplog.records if r.name == "maas.gateway" and "context" in r.getMessage()]
    why = "could not ask its backend (HTTP 500)" if model_list == "error" else \
        f"its backend's GET /v1/models gives no max_model_len for '{MODEL}'"
    assert said == [f"model '{MODEL}': {why}; assuming a 4096-token context: set max_context in the models file "
                    "to its backend's context length (vLLM: --max-model-len)"]
    listing = httpx.get(setup.gateway.url + "/v1/models", headers={"Authorization": f"Bearer {setup.key()}"})
    assert [m["id"] for m in listing.json()["data"]] == [MODEL] and "max_model_len" not in listing.json()["data"][0]


def test_a_models_file_reload_learns_the_context_again(build: Callable[..., Setup]) -> None:
    setup = build(context=8192, max_context=None)
    assert setup.gateway.contexts() == {MODEL: 8192} and setup.backend.models_listed == 1
    setup.backend.context = 16384  # (a vLLM restarted with another --max-model-len)
    models = setup.tmp_path / "models.yaml"
    models.write_text(models.read_text() + f"  - name: second\n    url: {setup.backend.url}\n    upstream_model: {MODEL}\n")
    assert eventually(lambda: setup.gateway.contexts() == {MODEL: 16384, "second": 16384}, timeout=10)
    assert setup.backend.models_listed == 2  # one list for both models of the one server


def test_the_context_is_learned_again_every_few_minutes(
    build: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("local.gateway.contexts.RELEARN_INTERVAL_S", 0.2)
    setup = build(context=8192, max_context=None)
    assert setup.gateway.contexts() == {MODEL: 8192}
    setup.backend.context = 2048
    assert eventually(lambda: setup.gateway.contexts() == {MODEL: 2048}, timeout=10)
    setup.backend.model_list = "error"  # unreachable now: what it said last still holds
    listed = setup.backend.models_listed
    assert eventually(lambda: setup.backend.models_listed >= listed + 2, timeout=10)
    assert setup.gateway.contexts() == {MODEL: 2048}
    setup.backend.model_list = "openai"  # it answers, and says no context: 4096 is assumed again
    assert eventually(lambda: setup.gateway.contexts() == {MODEL: None}, timeout=10)


def test_the_context_is_not_asked_for_on_a_request(build: Callable[..., Setup]) -> None:
    setup = build(context=8192, max_context=None)
    setup.team(token_limit=10**9)
    key = setup.key()
    listed = setup.backend.models_listed
    assert listed == 1
    responses = _concurrently(setup.gateway.url, key, CHAT, _chat(max_tokens=2), 50)
    responses += _concurrently(setup.gateway.url, key, CHAT, _chat(max_tokens=None, stream=True), 10)
    assert [r.status_code for r in responses] == [200] * 60
    for _ in range(5):
        assert httpx.get(setup.gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert setup.backend.requests == 60 and setup.backend.models_listed == listed


def test_the_context_is_asked_with_the_backends_api_key() -> None:
    """The built-in simulator answers only its token, and lists its 4096-token context as vLLM does."""
    simulator = SimulatorService(Settings(simulator_port=0))  # type: ignore[call-arg]
    simulator.start()
    try:
        entry = {"name": "m", "url": f"{simulator.url}/v1", "upstream_model": "vllm-simulator"}
        keyed = ModelBackend.model_validate({**entry, "api_key": simulator.token.get_secret_value()})
        assert context_from_listing(fetch_listing(keyed, 2.0), keyed.served_model) == 4096
        with pytest.raises(Unreachable, match="HTTP 401"):
            fetch_listing(ModelBackend.model_validate(entry), 2.0)
    finally:
        simulator.stop()


@pytest.mark.parametrize(("listing", "served", "context"), [
    ({"object": "list", "data": [{"id": "m", "max_model_len": 8192}]}, "m", 8192),
    ({"data": [{"id": "other", "max_model_len": 8192}, {"id": "m", "max_model_len": 100}]}, "m", 100),
    ({"data": [{"id": "m", "max_model_len": 8192}]}, "n", None),  # no card for the served name
    ({"data": [{"id": "base", "max_model_len": 8192}, {"id": "lora", "parent": "base", "max_model_len": None}]},
     "lora", 8192),  # vLLM's LoRA cards have none: the base model's
    ({"data": [{"id": "m"}]}, "m", None),
    ({"data": [{"id": "m", "max_model_len": "8192"}]}, "m", None),
    ({"data": [{"id": "m", "max_model_len": 8192.0}]}, "m", None),
    ({"data": [{"id": "m", "max_model_len": True}]}, "m", None),
    ({"data": [{"id": "m", "max_model_len": 0}]}, "m", None),
    ({"data": [{"id": "m", "max_model_len": 10_000_001}]}, "m", None),
    ({"data": [{"id": "m", "max_model_len": 10_000_000}]}, "m", 10_000_000),
    ({"data": {"id": "m"}}, "m", None),
    ([{"id": "m", "max_model_len": 8192}], "m", None),
    (None, "m", None),
])
def test_only_an_int_context_within_bounds_on_the_served_models_card_is_learned(
    listing: Any, served: str, context: int | None
) -> None:
    assert context_from_listing(listing, served) == context


# -- 2. the prompt estimate (body bytes / 4) is not an upper bound -----------------------------------


def _words_prompt(words: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": " ".join(["a"] * words)}], "max_tokens": 1}


_IMAGE = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]}


@pytest.mark.parametrize(("path", "body", "context"), [
    (CHAT, _words_prompt(1500), 2000),
    ("/v1/completions", {"model": MODEL, "prompt": [0] * 1500, "max_tokens": 1}, 2000),
    ("/v1/embeddings", {"model": MODEL, "input": [[7] * 1500]}, 2000),
    (CHAT, _IMAGE, 2000),
], ids=["one-letter-words", "token-ids", "embedding-token-ids", "image"])
def test_a_prompt_the_byte_estimate_under_counts_breaks_the_bound_under_concurrency(
    build: Callable[..., Setup], path: str, body: dict[str, Any], context: int
) -> None:
    setup = build(context=context, image_tokens=1000, delay_s=0.5)
    limit = 2000
    setup.team(token_limit=limit)
    responses = _concurrently(setup.gateway.url, setup.key(), path, body, 30)
    assert all(r.status_code in (200, 429) for r in responses)
    assert _settled(setup)
    assert setup.charged() == setup.backend.generated  # settlement is exact: only the bound breaks
    assert setup.backend.generated <= limit + 1 + _estimate(body)


def test_a_responses_call_continuing_a_stored_conversation_is_reserved_at_its_tiny_body(
    build: Callable[..., Setup]
) -> None:
    setup = build(context=1000, remember_responses=True, delay_s=0.5)
    # A conversation stored earlier (straight at the backend: only its id matters here).
    first = httpx.post(setup.backend.url + "/responses",
                       json={"model": MODEL, "input": " ".join(["w"] * 250), "max_output_tokens": 40}).json()
    setup.backend.reset()
    limit = 2000
    setup.team(token_limit=limit)
    body = {"model": MODEL, "input": "go on", "previous_response_id": first["id"], "max_output_tokens": 10}
    _concurrently(setup.gateway.url, setup.key(), "/v1/responses", body, 30)
    assert setup.backend.generated <= limit + 10 + _estimate(body)


# -- 3. calls that generate and are charged (almost) nothing -----------------------------------------


@pytest.mark.parametrize("reset", [
    False,
    True,  # (was charged only its prompt estimate: now its worst cost, nothing having come back)
], ids=["close", "reset"])
def test_a_client_that_hangs_up_before_a_non_streamed_answer_pays_for_it(
    build: Callable[..., Setup], reset: bool
) -> None:
    """A plain close (FIN) is a half-close to the gateway: the call runs on and is charged its
    usage. A reset ends it at once, charged its prompt estimate."""
    setup = build(token_delay_s=0.002)  # 200 tokens: 0.4 s, answered whole at the end
    limit = 300
    setup.team(token_limit=limit)
    key = setup.key()
    body = _chat(max_tokens=200)
    ran = _hang_up_repeatedly(setup, key, CHAT, body, 8, quiet_s=0.2, reset=reset)
    assert _settled(setup)
    assert ran >= 1
    # vLLM aborts a call whose client left, so it would have generated about 0.2 / 0.4 of each;
    # this backend (like aiohttp or TGI servers) finishes them. Either breaks the bound.
    assert setup.backend.generated * 0.2 / 0.4 <= limit + 200 + _estimate(body)
    assert setup.charged() >= setup.backend.generated * 0.2 / 0.4


def test_a_call_that_outlasts_the_upstream_timeout_is_charged_its_worst_cost(build: Callable[..., Setup]) -> None:
    setup = build(token_delay_s=0.002, upstream_timeout_s=0.2)
    limit = 300
    setup.team(token_limit=limit)
    key = setup.key()
    body = _chat(max_tokens=200)  # 0.4 s of generation, answered at the end
    statuses = [_post(setup.gateway.url, key, CHAT, body).status_code for _ in range(8)]
    # Each 504 is charged its worst cost (nothing came back), so the limit stops the loop.
    assert statuses[0] == 504 and set(statuses) <= {504, 429} and 429 in statuses
    assert _settled(setup)
    assert setup.charged() > 0
    # Even a backend that stops at the gateway's hang-up generated 0.2 / 0.4 of each call.
    assert setup.backend.generated * 0.2 / 0.4 <= limit + 200 + _estimate(body)


@pytest.mark.parametrize("reasoning", [
    0,
    290,  # vLLM's `reasoning` member is text too
], ids=["content", "reasoning"])
def test_a_client_that_hangs_up_before_the_usage_event_pays_for_the_text_it_got(
    build: Callable[..., Setup], reasoning: int
) -> None:
    setup = build(reasoning_tokens=reasoning, pause_before_usage_s=0.4)
    limit = 300
    setup.team(token_limit=limit)
    key = setup.key()
    body = _chat(max_tokens=300, stream=True, stream_options={"include_usage": True})
    _hang_up_repeatedly(setup, key, CHAT, body, 10)  # all 300 tokens received, then a reset
    assert setup.charged() >= setup.backend.generated
    assert setup.backend.generated <= limit + 300 + _estimate(body) + 8


_SNEAKY_TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "total_tokens": 1}}


@pytest.mark.parametrize("tools", [
    [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    [_SNEAKY_TOOL],  # echoed in response.created: only response.completed's usage counts
], ids=["plain-tools", "total_tokens-in-a-tool-schema"])
def test_a_responses_stream_cut_before_completion_is_charged_its_text(
    build: Callable[..., Setup], tools: list[dict[str, Any]]
) -> None:
    setup = build(echo_request=True, pause_before_usage_s=0.4)
    limit = 300
    setup.team(token_limit=limit)
    key = setup.key()
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 200, "stream": True, "tools": tools}
    _hang_up_repeatedly(setup, key, "/v1/responses", body, 6)  # every delta received, then a reset
    assert setup.charged() >= setup.backend.generated
    assert setup.backend.generated <= limit + 2 * (200 + _estimate(body))


def test_a_usage_number_split_across_reads_and_a_client_that_hangs_up_between(build: Callable[..., Setup]) -> None:
    setup = build(split_usage_digits=1, split_usage_pause_s=0.4)
    limit = 300
    setup.team(token_limit=limit)
    key = setup.key()
    body = _chat(max_tokens=200, stream=True, stream_options={"include_usage": True})
    _hang_up_repeatedly(setup, key, CHAT, body, 5)  # `"total_tokens": 2` received, then a reset
    assert setup.charged() >= setup.backend.generated


def test_a_usage_event_split_across_reads_is_read_whole(build: Callable[..., Setup]) -> None:
    """Held: the usage event cut inside its number, in two reads, is still read as one number."""
    setup = build(split_usage_digits=1, split_usage_pause_s=0.05)
    setup.team(token_limit=100_000)
    key = setup.key()
    for stream_options in ({"include_usage": True}, None):
        body = _chat(max_tokens=200, stream=True, **({"stream_options": stream_options} if stream_options else {}))
        response = _post(setup.gateway.url, key, CHAT, body)
        assert response.status_code == 200
        # A client that did not ask for usage is not sent the usage event.
        assert (b'"usage"' in response.content) == (stream_options is not None)
    assert _settled(setup)
    assert setup.charged() == setup.backend.generated == 2 * 202
    assert "maas_unmetered_requests{" not in setup.metrics()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_usage_less_reply_of_short_tokens_is_charged_what_was_generated(
    build: Callable[..., Setup], stream: bool
) -> None:
    """A stream's events count at least one token each, which holds for one token an event."""
    setup = build(report_usage=False, word="a ")
    setup.team(token_limit=100_000)
    key = setup.key()
    for _ in range(3):
        assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=400, stream=stream)).status_code == 200
    assert _settled(setup)
    assert setup.charged() >= setup.backend.generated


# -- 4. duplicate members ------------------------------------------------------------------------------


@pytest.mark.parametrize("first_wins", [False, True], ids=["last-wins-backend", "first-wins-backend"])
def test_duplicate_members_are_read_as_the_backend_reads_them(build: Callable[..., Setup], first_wins: bool) -> None:
    setup = build(first_wins=first_wins, context=300, delay_s=0.3)
    limit = 300
    setup.team(token_limit=limit)
    key = setup.key()
    messages = '[{"role":"user","content":"hi"}]'
    # The gateway (and Python's json) read the last occurrence: `streamed` is not a stream, `longer`
    # asks for 5 tokens. A first-wins parser reads a stream (no usage asked) and 290 tokens.
    streamed = f'{{"model":"{MODEL}","messages":{messages},"stream":true,"max_tokens":200,"stream":false}}'.encode()
    longer = f'{{"model":"{MODEL}","messages":{messages},"max_tokens":290,"max_tokens":5}}'.encode()
    # A member given twice is refused (400, naming it) before anything is reserved or sent.
    for _ in range(4):
        refused = _raw(setup.gateway.url, key, CHAT, streamed)
        assert refused.status_code == 400 and '"stream"' in refused.json()["error"]["message"]
    assert {r.status_code for r in _concurrent_raw(setup.gateway.url, key, CHAT, longer, 20)} == {400}
    assert setup.backend.requests == 0
    assert _settled(setup)
    assert setup.charged() >= setup.backend.generated
    assert setup.backend.generated <= limit + max(200 + _estimate(streamed), 5 + _estimate(longer))


# -- 5. the counters ---------------------------------------------------------------------------------


def test_a_huge_reservation_does_not_stop_the_counters_being_saved(build: Callable[..., Setup]) -> None:
    setup = build(max_n=16, delay_s=1.5)
    setup.team(token_limit=1000)
    key = setup.key()
    huge = _post(setup.gateway.url, key, CHAT, _chat(max_tokens=4, n=2**62))
    assert huge.status_code == 422  # n above 128: refused before anything is reserved
    assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=60)).status_code == 200
    time.sleep(2.5)  # the counters are saved every second: "at most a second of counts" may be lost

    def saved() -> int:
        with sqlite3.connect(setup.tmp_path / "data" / "limits.db") as db:
            return sum(row[0] for row in db.execute("SELECT spent FROM windows WHERE key LIKE '%/u/alice'"))

    assert saved() >= 62


def test_two_users_of_a_team_scope_limit_share_it_under_concurrency(build: Callable[..., Setup]) -> None:
    """Held: alice and bob at once, on /v1/chat/completions and /v1/completions, one team counter."""
    setup = build(context=300, token_delay_s=0.002)
    limit = 2000
    setup.team(token_limit=limit, scope="team")
    alice, bob = setup.key("alice"), setup.key("bob")
    chat = _chat(max_tokens=50, n=5)
    completion = {"model": MODEL, "prompt": ["a b", "c"], "max_tokens": 40, "n": 3}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=setup.gateway.url, timeout=60,
                                     limits=httpx.Limits(max_connections=60)) as client:
            calls = [client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
                     for key in (alice, bob) for path, body in ((CHAT, chat), ("/v1/completions", completion))
                     for _ in range(15)]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(run())
    assert {r.status_code for r in responses} <= {200, 429}
    worst = max(5 * 50 + _estimate(chat), 2 * 3 * 40 + _estimate(completion))
    assert setup.backend.generated <= limit + worst
    assert _settled(setup)
    assert setup.charged() == setup.backend.generated


def test_switching_to_team_scope_mid_flight_counts_the_calls_in_flight(build: Callable[..., Setup]) -> None:
    setup = build(context=1000, token_delay_s=0.003)
    limit = 1000
    setup.team(token_limit=limit)
    keys = [setup.key(user) for user in ("alice", "bob", "carol")]
    body = _chat(max_tokens=900)  # 2.7 s each

    async def run() -> None:
        async with httpx.AsyncClient(base_url=setup.gateway.url, timeout=60) as client:
            first = [asyncio.ensure_future(client.post(CHAT, json=body, headers={"Authorization": f"Bearer {k}"}))
                     for k in keys[:2]]
            await asyncio.sleep(0.5)
            setup.store.update_team(team_id="t1", changes=TeamChanges(limit_scope="team"))
            late = await client.post(CHAT, json=body, headers={"Authorization": f"Bearer {keys[2]}"})
            for call in first:
                await call
            assert late.status_code in (200, 429)

    asyncio.run(run())
    assert setup.backend.generated <= limit + 900 + _estimate(body)


def test_a_window_counts_at_most_the_limit_plus_one_call(build: Callable[..., Setup]) -> None:
    setup = build(context=400, token_delay_s=0.004)  # 300 tokens: about 1.2 s a call
    limit = 1000
    setup.team(token_limit=limit, time_window="1h")
    key = setup.key()
    # The in-process counters on a clock the test moves (the gateway's loop reads it).
    now = [time.time_ns() // 1_000_000]
    setup.gateway.limiter.counters._clock = lambda: now[0]  # type: ignore[attr-defined]  # noqa: SLF001
    body = _chat(max_tokens=300)

    async def wave(client: httpx.AsyncClient) -> list[int]:
        calls = [client.post(CHAT, json=body, headers={"Authorization": f"Bearer {key}"}) for _ in range(6)]
        return [r.status_code for r in await asyncio.gather(*calls)]

    async def run() -> None:
        async with httpx.AsyncClient(base_url=setup.gateway.url, timeout=60) as client:
            late = asyncio.ensure_future(wave(client))  # admitted in the first window
            while setup.gateway.limiter.outstanding == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # every call of the wave admitted or refused by now
            admitted = setup.gateway.limiter.outstanding
            assert admitted >= 2
            now[0] += 3600 * 1000 + 1  # the first window ends while they generate
            # A second window opens, its admissions seeing the calls in flight: held by them,
            # with a short Retry-After.
            refused = await client.post(CHAT, json=body, headers={"Authorization": f"Bearer {key}"})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1", refused.text
            assert (await late).count(200) == admitted
            await wave(client)  # their tokens, used now, count in this window: so do these

    asyncio.run(run())
    assert _settled(setup)
    spent, _ = _spent(setup)  # the second window: both waves' tokens, used in it
    assert spent <= limit + 300 + _estimate(body)


# -- 6. restarts -------------------------------------------------------------------------------------


# A stop drains (local/gateway/service.py): the calls in flight get MAAS_GATEWAY_DRAIN_TIMEOUT to
# finish; "cut" gives them 0.1 s, so that they are cut off mid-stream and settled as a client's
# hang-up settles them (one of them on a kept-alive backend connection: the callback-driven path).
_DRAINS = pytest.mark.parametrize("drain", [{}, {"gateway_drain_timeout_s": 0.1}], ids=["finished", "cut"])


def test_a_restart_with_calls_in_flight_keeps_their_reservations(build: Callable[..., Setup]) -> None:
    """Held: a stop lets the calls in flight finish, and the counters saved then hold what they used."""
    setup = build(token_delay_s=0.01)
    setup.team(token_limit=1000)
    key = setup.key()
    body = _chat(max_tokens=100, stream=True)
    threads = [threading.Thread(target=_ignore_errors, args=(setup.gateway.url, key, body)) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert eventually(lambda: setup.gateway.limiter.outstanding == 3, timeout=5)
    time.sleep(0.3)
    setup.gateway.stop()
    for thread in threads:
        thread.join(10)
    setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend)
    assert _spent(setup)[0] >= setup.backend.generated


@_DRAINS
def test_a_restart_with_calls_in_flight_records_their_usage(build: Callable[..., Setup], drain: dict[str, Any]) -> None:
    setup = build(token_delay_s=0.01, **drain)
    setup.team(token_limit=100_000)
    key = setup.key()
    assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=1)).status_code == 200  # a backend connection kept
    body = _chat(max_tokens=100, stream=True)
    received: list[bytes] = []
    threads = [threading.Thread(target=_ignore_errors, args=(setup.gateway.url, key, body, received)) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert eventually(lambda: setup.gateway.limiter.outstanding == 3, timeout=5)
    time.sleep(0.5)
    setup.gateway.stop()
    assert setup.gateway.limiter.outstanding == 0  # every call settled by the time stop returns
    for thread in threads:
        thread.join(10)
    relayed = sum(got.count(b"data: {") for got in received)
    assert relayed >= 30  # the clients were sent tokens
    if not drain:
        assert relayed == 300  # every stream finished
    setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend)
    assert setup.charged() >= relayed


@_DRAINS
def test_a_stop_with_streams_in_flight_is_clean(
    build: Callable[..., Setup], drain: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    setup = build(token_delay_s=0.01, **drain)
    setup.team(token_limit=100_000)
    key = setup.key()
    assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=1)).status_code == 200
    threads = [threading.Thread(target=_ignore_errors, args=(setup.gateway.url, key, _chat(max_tokens=100, stream=True)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    assert eventually(lambda: setup.gateway.limiter.outstanding == 2, timeout=5)
    time.sleep(0.2)
    with _no_loop_errors(monkeypatch, caplog):
        setup.gateway.stop()
    for thread in threads:
        thread.join(10)
    setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend)


def test_a_call_that_ends_within_the_grace_period_is_delivered_whole(
    build: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    setup = build(token_delay_s=0.01)  # 100 tokens: a second of streaming, within the 10 s grace
    setup.team(token_limit=100_000)
    key = setup.key()
    outcome: dict[str, Any] = {}

    def read() -> None:
        try:
            with httpx.Client(timeout=10) as client, client.stream(
                "POST", setup.gateway.url + CHAT, json=_chat(max_tokens=100, stream=True),
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                outcome["status"] = response.status_code
                outcome["body"] = b"".join(response.iter_raw())  # raises unless the chunked body ends
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    assert eventually(lambda: setup.gateway.limiter.outstanding == 1, timeout=5)
    time.sleep(0.2)
    started = time.monotonic()
    with _no_loop_errors(monkeypatch, caplog):
        setup.gateway.stop()
    took = time.monotonic() - started
    reader.join(10)
    assert "error" not in outcome, outcome
    assert outcome["status"] == 200
    assert outcome["body"].count(b"data: {") == 100 and outcome["body"].endswith(b"data: [DONE]\n\n")
    assert took < 5  # it waited for the call, not for the whole grace period
    setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend)
    assert setup.charged() == setup.backend.generated  # its usage report, recorded


def test_a_stop_refuses_new_connections_and_answers_new_requests_503(build: Callable[..., Setup]) -> None:
    setup = build(token_delay_s=0.01)
    setup.team(token_limit=100_000)
    key = setup.key()
    parts = urlsplit(setup.gateway.url)
    address = (str(parts.hostname), int(parts.port or 0))
    health = f"GET /health HTTP/1.1\r\nHost: {address[0]}\r\n\r\n".encode()
    idle = socket.create_connection(address, timeout=10)
    busy = socket.create_connection(address, timeout=10)
    stopper = threading.Thread(target=setup.gateway.stop)
    try:
        idle.sendall(health)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # answered, and kept alive
        content = _compact(_chat(max_tokens=200, stream=True))  # 2 s of streaming
        busy.sendall((f"POST {CHAT} HTTP/1.1\r\nHost: {address[0]}\r\nAuthorization: Bearer {key}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n").encode() + content)
        got = busy.recv(65536)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        stopper.start()
        assert eventually(lambda: _refused(address), timeout=5)  # the drain has begun: no new connection
        assert _until_closed(idle) == b""  # the idle connection is closed
        busy.sendall(health)  # a new request on a busy kept-alive connection
        got += _until_closed(busy)
        stream, _, after = got.partition(b"0\r\n\r\n")  # the stream's last chunk
        assert stream.count(b"data: {") == 200 and stream.endswith(b"data: [DONE]\n\n\r\n")  # delivered whole
        assert after.startswith(b"HTTP/1.1 503"), after[:300]
        assert b"Connection: close\r\n" in after and b"shutting down" in after
    finally:
        idle.close()
        busy.close()
        stopper.join(15)
    setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend)
    assert setup.charged() == setup.backend.generated


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """What comes on `sock` until the server closes it."""
    sock.settimeout(timeout)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@contextmanager
def _no_loop_errors(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Around a stop: no exception escapes a thread (a loop closed with connections open: EBUSY),
    none is raised where nobody can catch it (a transport left open), nothing is logged as an
    error ("Event loop is closed", an async generator closed while it runs)."""
    escaped: list[str] = []
    # What earlier tests of this process left for the collector (an HTTPS client's socket) is
    # theirs: collected before the hooks go in, so only what the stop leaves is counted.
    gc.collect()
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(f"{args.thread}: {args.exc_value!r}"))
    monkeypatch.setattr(sys, "unraisablehook", lambda args: escaped.append(f"unraisable: {args.exc_value!r}"))
    with caplog.at_level(logging.ERROR):
        yield
        gc.collect()
    escaped += [f"{record.name}: {record.getMessage()}" for record in caplog.records if record.levelno >= logging.ERROR]
    assert escaped == []


def _ignore_errors(url: str, key: str, body: dict[str, Any], received: list[bytes] | None = None) -> None:
    got = b""
    try:
        with httpx.Client(timeout=3) as client, client.stream(
            "POST", url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            for chunk in response.iter_raw():
                got += chunk
    except httpx.HTTPError:
        pass
    if received is not None:
        received.append(got)


# -- 7. Redis ----------------------------------------------------------------------------------------


def _busy(url: str, seconds: float) -> threading.Thread:
    """Keep the Redis busy (one Lua script spinning) for `seconds`: every other client waits."""
    script = """
    local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]
    while true do
      t = redis.call('TIME')
      if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) then break end
    end
    return 0"""

    def spin() -> None:
        client = redis.Redis.from_url(url, socket_timeout=seconds + 5)
        try:
            client.eval(script, 0, int(seconds * 1_000_000))
        finally:
            client.close()

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.1)
    return thread


@pytest.mark.parametrize("how", ["redis-timeout", "client-left"])
def test_an_admission_redis_answers_late_does_not_hold_the_budget(
    build: Callable[..., Setup], redis_url: str, how: str  # noqa: F811
) -> None:
    setup = build(redis_url=redis_url, redis_timeout_s=0.3 if how == "redis-timeout" else 3.0)
    setup.team(token_limit=100, time_window="1h")
    key = setup.key()
    assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=1)).status_code == 200  # connected, scripts loaded
    spinner = _busy(redis_url, 1.0)
    try:
        if how == "redis-timeout":
            assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=200)).status_code == 503
        else:  # the client resets the connection while its admission waits on Redis
            assert _hang_up_when_quiet(setup.gateway.url, key, CHAT, _chat(max_tokens=200), quiet_s=0.3) == b""
    finally:
        spinner.join(10)
    time.sleep(1.5)  # anything in flight has long settled
    again = _post(setup.gateway.url, key, CHAT, _chat(max_tokens=1))
    assert again.status_code == 200, again.text


def test_a_gateway_on_redis_serves_again_after_redis_restarts(build: Callable[..., Setup], tmp_path: Path) -> None:
    """Held: Redis down fails calls closed (503); once it is back, calls are served again."""
    binary = redis_binary()
    assert binary is not None
    own = RedisServer(binary, tmp_path / "redis-own")
    own.workdir.mkdir()
    own.start()
    try:
        setup = build(redis_url=own.url, redis_timeout_s=0.5)
        setup.team(token_limit=100_000)
        key = setup.key()
        assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=5)).status_code == 200
        own.stop()
        down = _post(setup.gateway.url, key, CHAT, _chat(max_tokens=5))
        assert down.status_code == 503 and "Redis" in down.json()["error"]["message"]
        own.start()
        assert eventually(lambda: _post(setup.gateway.url, key, CHAT, _chat(max_tokens=5)).status_code == 200,
                          timeout=5)
        generated = setup.backend.generated
        assert _settled(setup)
        assert setup.charged() == generated
    finally:
        own.stop()


def test_a_redis_restart_keeps_the_windows(build: Callable[..., Setup], tmp_path: Path) -> None:
    binary = redis_binary()
    assert binary is not None
    own = RedisServer(binary, tmp_path / "redis-own")
    own.workdir.mkdir()
    own.start()
    try:
        setup = build(redis_url=own.url, redis_timeout_s=0.5)
        setup.team(token_limit=60)
        key = setup.key()
        assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=60)).status_code == 200
        assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=1)).status_code == 429
        own.stop()
        own.start()
        statuses = [_post(setup.gateway.url, key, CHAT, _chat(max_tokens=60)).status_code for _ in range(3)]
        assert 200 not in statuses, statuses
    finally:
        own.stop()


# -- 8. the bound, read to the letter ----------------------------------------------------------------


def test_one_call_may_cost_many_times_the_limit(build: Callable[..., Setup]) -> None:
    """Held to the letter, and worth knowing: "limit + one request's worst cost" has no bound of its
    own. A 100-token limit admits one call of n=50 at the whole context (15,000 tokens)."""
    setup = build(context=300)
    setup.team(token_limit=100)
    key = setup.key()
    response = _post(setup.gateway.url, key, CHAT, _chat(max_tokens=None, n=50))
    assert response.status_code == 200
    assert setup.backend.generated == 50 * 298 + 2
    assert _post(setup.gateway.url, key, CHAT, _chat(max_tokens=1)).status_code == 429
