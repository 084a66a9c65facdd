"""Token limits against a lenient vLLM-like backend and hostile request shapes (issue 11).

The promise (README, local/gateway/limiter.py): under any mix of concurrent requests, the tokens
a backend generates for a counter stay within the limit plus one request's worst cost, and the
usage the gateway records equals what the backend reported. Each test loads the gateway with
concurrent calls and checks the bound against the backend's own count (tests/lenient_backend.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from local.gateway import GatewayService
from local.gateway.limits import DataDirInUse
from shared.settings import Settings
from shared.store.base import Team, TeamChanges
from shared.store.sqlite import SqliteStore
from tests.lenient_backend import LenientBackend, lenient_backend
from tests.records import T0, a_key
from tests.redis_harness import RedisServer, free_port, redis_server  # noqa: F401
from tests.runtime import Runtime, start_runtime
from tests.waiting import eventually

MODEL = "lenient"


@dataclass
class Setup:
    backend: LenientBackend
    store: SqliteStore
    gateway: GatewayService
    tmp_path: Path

    def key(self, user_id: str = "alice", team_id: str = "t1") -> str:
        record, value = a_key(team_id, user_id)
        self.store.create_key(key=record, api_key=value)
        return value

    def team(self, team_id: str = "t1", **fields: Any) -> Team:
        team = Team(team_id, team_id, "", team_id, fields.get("token_limit", 1000), fields.get("time_window", "1h"),
                    fields.get("scope", "user"), T0)  # type: ignore[arg-type]
        return self.store.create_team(team=team)

    def charged(self, team_id: str = "t1") -> int:
        """What the gateway recorded (the usage ledger, flushed or not) for the team."""
        return sum(row.tokens for row in self.gateway.ledger.totals(team_id=team_id))

    def metrics(self) -> str:
        return self.gateway._gateway._meter.exposition().decode()  # noqa: SLF001


_BACKENDS_CONTEXT = -1


def _start_gateway(tmp_path: Path, store: SqliteStore, backend: LenientBackend, *,
                   max_context: int | None = _BACKENDS_CONTEXT, **settings: Any) -> GatewayService:
    """A gateway in front of `backend`; its model's max_context is the backend's unless given
    (None: left out of the models file)."""
    models = tmp_path / "models.yaml"
    context = backend.context if max_context == _BACKENDS_CONTEXT else max_context
    declared = "" if context is None else f"    max_context: {context}\n"
    models.write_text(f"models:\n  - name: {MODEL}\n    url: {backend.url}\n{declared}")
    service = GatewayService(
        Settings(gateway_port=0, metrics_port=0, data_dir=tmp_path / "data", models_file=models, **settings),  # type: ignore[call-arg]
        store,
    )
    service.start()
    if context is None:  # the gateway asks the backend for it (local/gateway/contexts.py)
        assert service.wait_for_contexts(10)
    return service


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    opened: list[Callable[[], None]] = []

    def build(*, context: int = 4096, report_usage: bool = True, token_delay_s: float = 0.0, **settings: Any) -> Setup:
        backend = LenientBackend(context=context, report_usage=report_usage, token_delay_s=token_delay_s)
        backend.start()
        opened.append(backend.stop)
        store = SqliteStore(tmp_path / "maas.db")
        opened.append(store.close)
        gateway = _start_gateway(tmp_path, store, backend, **settings)
        opened.append(gateway.stop)
        return Setup(backend, store, gateway, tmp_path)

    yield build
    for close in reversed(opened):
        close()


def _post(url: str, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _concurrently(url: str, key: str, path: str, body: dict[str, Any], count: int) -> list[httpx.Response]:
    """`count` calls at once (bounded), each read to its end (streams too)."""

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        response = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        await response.aread()
        return response

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(count))))

    return asyncio.run(run())


def _chat(max_tokens: Any = 50, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _reservation(body: dict[str, Any], worst_completions: int) -> int:
    """The gateway's worst cost of one request (proxy.py `_worst_cost`): completions times the
    length, plus the prompt's bound (the body's bytes), for the bound checks."""
    return worst_completions + len(json.dumps(body, separators=(",", ":")).encode()) + 8


# -- one reading of the request -----------------------------------------------------------


@pytest.mark.parametrize("stream", [1, "yes", 1.0, "true", [True], {"on": 1}])
def test_a_stream_flag_a_lenient_backend_would_stream_on_is_a_422_before_the_backend(
    make: Callable[..., Setup], stream: object
) -> None:
    setup = make()
    setup.team()
    response = _post(setup.gateway.url, setup.key(), "/v1/chat/completions", _chat(stream=stream))
    assert response.status_code == 422 and "'stream' must be true or false" in response.json()["error"]["message"]
    assert setup.backend.requests == 0 and setup.charged() == 0


@pytest.mark.parametrize("n", [0, -1, "20", 2.5, True])
def test_a_count_that_a_backend_could_read_otherwise_is_a_422(make: Callable[..., Setup], n: object) -> None:
    setup = make()
    setup.team()
    response = _post(setup.gateway.url, setup.key(), "/v1/chat/completions", _chat(n=n))
    assert response.status_code == 422 and "'n' must be an integer from 1 to 128" in response.json()["error"]["message"]
    assert setup.backend.requests == 0


# -- the reservation covers the request's worst cost, for any concurrency ---------------------


@pytest.mark.parametrize(
    ("path", "body", "worst_completions"),
    [
        ("/v1/chat/completions", _chat(max_tokens=50, n=20), 20 * 50),
        ("/v1/chat/completions", _chat(max_completion_tokens=40, best_of=5, n=2), 5 * 40),
        ("/v1/completions", {"model": MODEL, "prompt": ["a b", "c d e", "f"], "max_tokens": 30, "n": 4}, 3 * 4 * 30),
        ("/v1/completions", {"model": MODEL, "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 60}, 2 * 60),
        ("/v1/chat/completions", _chat(max_tokens=None), 300),  # no length: up to the context
        ("/v1/chat/completions", _chat(max_tokens="100"), 300),  # a lax backend reads "100" as 100
        ("/v1/chat/completions", _chat(max_tokens=50, n=3, stream=True), 3 * 50),
        ("/v1/responses", {"model": MODEL, "input": "hello there", "max_output_tokens": 70}, 70),
        ("/v1/responses", {"model": MODEL, "input": "hello there", "stream": True}, 300),
    ],
    ids=["n", "best_of", "prompt-list", "token-lists", "no-max-tokens", "string-max-tokens", "stream-n",
         "responses", "responses-stream-no-length"],
)
def test_concurrent_calls_stay_within_the_limit_plus_one_requests_worst_cost(
    make: Callable[..., Setup], path: str, body: dict[str, Any], worst_completions: int
) -> None:
    setup = make(context=300, token_delay_s=0.002)
    limit = 2000
    setup.team(token_limit=limit)
    key = setup.key()
    responses = _concurrently(setup.gateway.url, key, path, body, 40)
    admitted = sum(r.status_code == 200 for r in responses)
    assert {r.status_code for r in responses} <= {200, 429}
    assert admitted >= 1
    assert setup.backend.generated <= limit + _reservation(body, worst_completions)
    # What was recorded is what the backend reported, token for token.
    assert eventually(lambda: setup.gateway.limiter.outstanding == 0, timeout=10)
    assert setup.charged() == setup.backend.generated
    assert "maas_unmetered_requests{" not in setup.metrics()


def test_without_the_reservation_of_n_the_same_load_would_have_broken_the_limit(make: Callable[..., Setup]) -> None:
    """The load above is strong enough to matter: each admitted call costs far more than the
    limit leaves, so a gateway reserving one completion would admit dozens."""
    setup = make(context=300, token_delay_s=0.002)
    setup.team(token_limit=2000)
    responses = _concurrently(setup.gateway.url, setup.key(), "/v1/chat/completions", _chat(max_tokens=50, n=20), 40)
    admitted = sum(r.status_code == 200 for r in responses)
    per_call = 2 + 20 * 50
    assert admitted * per_call == setup.backend.generated
    assert admitted <= 2000 // per_call + 1 < 40


# -- a backend that reports no usage ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_without_usage_is_charged_its_text_and_counted_as_unmetered(
    make: Callable[..., Setup], stream: bool
) -> None:
    setup = make(report_usage=False)
    setup.team(token_limit=100_000)
    key = setup.key()
    for _ in range(3):
        response = _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=40, n=2, stream=stream))
        assert response.status_code == 200
    assert eventually(lambda: setup.gateway.limiter.outstanding == 0, timeout=10)
    generated = setup.backend.generated  # 3 x (2 prompt + 2 x 40)
    charged = setup.charged()
    # Never less than was generated. Not much more for a stream (an event a token, 4 bytes of
    # text a token); a whole reply at a byte a token (`tok ` is 4), capped by its reservation.
    if stream:
        assert generated <= charged <= generated + 3 * 40
    else:
        assert generated <= charged <= 4 * generated + 3 * 40
    assert f'maas_unmetered_requests{{model="{MODEL}"}} 3' in setup.metrics()


def test_usage_less_calls_stay_within_the_bound_under_concurrency(make: Callable[..., Setup]) -> None:
    setup = make(report_usage=False, context=300, token_delay_s=0.002)
    setup.team(token_limit=1500)
    body = _chat(max_tokens=100, n=3, stream=True)
    _concurrently(setup.gateway.url, setup.key(), "/v1/chat/completions", body, 30)
    assert setup.backend.generated <= 1500 + _reservation(body, 300)


# -- every endpoint vLLM serves is metered or refused ---------------------------------------------


def test_embeddings_are_metered_and_limited(make: Callable[..., Setup]) -> None:
    setup = make()
    setup.team(token_limit=10)
    key = setup.key()
    body = {"model": MODEL, "input": ["one two three four", "five six seven"]}
    first = _post(setup.gateway.url, key, "/v1/embeddings", body)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 7
    assert _post(setup.gateway.url, key, "/v1/embeddings", body).status_code == 200  # 7 < 10
    refused = _post(setup.gateway.url, key, "/v1/embeddings", body)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert eventually(lambda: setup.charged() == 14, timeout=5)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_are_metered_once(make: Callable[..., Setup], stream: bool) -> None:
    """A Responses stream ends with the whole response, usage included: counted once."""
    setup = make()
    setup.team()
    response = _post(setup.gateway.url, setup.key(), "/v1/responses",
                     {"model": MODEL, "input": "a b c", "max_output_tokens": 9, "stream": stream})
    assert response.status_code == 200
    assert eventually(lambda: setup.gateway.limiter.outstanding == 0, timeout=5)
    assert setup.charged() == setup.backend.generated == 12


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/score", "/v1/audio/transcriptions", "/tokenize",
                                  "/v1/responses/resp-1", "/pooling"])
def test_other_endpoints_are_a_404_in_the_openai_shape_and_never_reach_the_backend(
    make: Callable[..., Setup], path: str
) -> None:
    setup = make()
    setup.team()
    response = _post(setup.gateway.url, setup.key(), path, {"model": MODEL, "input": "x"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "not_found" and path in error["message"]
    assert setup.backend.requests == 0


# -- false 429s and scope changes ----------------------------------------------------------------


def test_a_call_refused_only_by_reservations_in_flight_is_told_to_retry_soon(make: Callable[..., Setup]) -> None:
    setup = make(token_delay_s=0.003)  # 990 tokens: about 3 s generating
    setup.team(token_limit=1000, time_window="1h")
    key = setup.key()

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=setup.gateway.url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {key}"}
            slow = asyncio.ensure_future(client.post("/v1/chat/completions", json=_chat(max_tokens=990), headers=headers))
            await asyncio.sleep(0.3)  # the first is generating: its reservation holds the budget
            second = await client.post("/v1/chat/completions", json=_chat(max_tokens=5), headers=headers)
            return await slow, second

    slow, second = asyncio.run(run())
    assert slow.status_code == 200
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    assert "in flight" in second.json()["error"]["message"]
    assert int(second.headers["X-RateLimit-Reset"]) > 3000  # the window itself runs on


def test_remaining_counts_this_requests_own_reservation(make: Callable[..., Setup]) -> None:
    setup = make()
    setup.team(token_limit=1000)
    body = _chat(max_tokens=100)
    response = _post(setup.gateway.url, setup.key(), "/v1/chat/completions", body)
    prompt_bound = len(response.request.content)  # a token is at least a byte
    assert response.headers["X-RateLimit-Remaining"] == str(1000 - 100 - prompt_bound)


def test_changing_the_limit_scope_keeps_what_was_spent(make: Callable[..., Setup]) -> None:
    setup = make()
    setup.team(token_limit=60)
    alice, bob = setup.key("alice"), setup.key("bob")
    url = setup.gateway.url
    assert _post(url, alice, "/v1/chat/completions", _chat(max_tokens=51)).status_code == 200  # 53 spent
    setup.store.update_team(team_id="t1", changes=TeamChanges(limit_scope="team"))
    # The team's counter already holds alice's 53: bob's call is admitted (53 < 60) and then
    # nobody's is. Had the team counter started at 0, alice would have been admitted again.
    assert _post(url, bob, "/v1/chat/completions", _chat(max_tokens=51)).status_code == 200
    assert _post(url, alice, "/v1/chat/completions", _chat(max_tokens=1)).status_code == 429
    setup.store.update_team(team_id="t1", changes=TeamChanges(limit_scope="user"))
    # Back to per-user budgets: alice has spent 53 of 60 in her own counter (the refused call
    # cost nothing): one more call, then 429.
    assert _post(url, alice, "/v1/chat/completions", _chat(max_tokens=10)).status_code == 200
    assert _post(url, alice, "/v1/chat/completions", _chat(max_tokens=1)).status_code == 429


# -- restarts ------------------------------------------------------------------------------------


def test_a_restart_keeps_the_window(make: Callable[..., Setup]) -> None:
    setup = make()
    setup.team(token_limit=60, time_window="1h")
    key = setup.key()
    assert _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=60)).status_code == 200
    refused = _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=1))
    assert refused.status_code == 429
    setup.gateway.stop()
    again = _start_gateway(setup.tmp_path, setup.store, setup.backend)
    try:
        after = _post(again.url, key, "/v1/chat/completions", _chat(max_tokens=1))
        assert after.status_code == 429
        assert abs(int(after.headers["X-RateLimit-Reset"]) - int(refused.headers["X-RateLimit-Reset"])) <= 2
        assert again.limiter.state(team=setup.store.get_team(team_id="t1"), user_id="alice")[0] == 62  # type: ignore[attr-defined]
    finally:
        again.stop()
        setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend)  # for the fixture's stop


# -- several gateways on one Redis ---------------------------------------------------------------


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()  # counters are keyed by team incarnation, and every test's team is "t1" at T0
    client.close()
    return redis_server.url


def test_two_gateways_on_one_redis_share_one_limit(make: Callable[..., Setup], redis_url: str) -> None:
    setup = make(context=300, token_delay_s=0.002, redis_url=redis_url)
    limit = 2000
    setup.team(token_limit=limit)
    key = setup.key()
    # A second gateway process's worth: its own service, limiter and connections, the same Redis
    # and the same data dir (runtimes with Redis counters may share one).
    second = _start_gateway(setup.tmp_path, setup.store, setup.backend, redis_url=redis_url)
    try:
        body = _chat(max_tokens=50, n=10)

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=40)) as client:
                headers = {"Authorization": f"Bearer {key}"}
                calls = [client.post(url + "/v1/chat/completions", json=body, headers=headers)
                         for url in (setup.gateway.url, second.url) for _ in range(20)]
                return list(await asyncio.gather(*calls))

        responses = asyncio.run(run())
        admitted = sum(r.status_code == 200 for r in responses)
        assert {r.status_code for r in responses} <= {200, 429} and admitted >= 1
        assert setup.backend.generated <= limit + _reservation(body, 10 * 50)
        # Each would have admitted on its own what the other did: the counter is one.
        assert admitted * (2 + 10 * 50) == setup.backend.generated
        assert admitted <= limit // (2 + 10 * 50) + 1
    finally:
        second.stop()


def test_a_gateway_on_redis_keeps_windows_across_restarts(make: Callable[..., Setup], redis_url: str) -> None:
    setup = make(redis_url=redis_url)
    setup.team(token_limit=60)
    key = setup.key()
    assert _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=60)).status_code == 200
    setup.gateway.stop()
    setup.gateway = _start_gateway(setup.tmp_path, setup.store, setup.backend, redis_url=redis_url)
    assert _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=1)).status_code == 429


def test_redis_down_fails_model_calls_closed_with_503_naming_redis(make: Callable[..., Setup]) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    setup = make(redis_url=nobody, redis_timeout_s=0.5)
    setup.team()
    response = _post(setup.gateway.url, setup.key(), "/v1/chat/completions", _chat())
    assert response.status_code == 503
    error = response.json()["error"]
    assert "Redis" in error["message"] and nobody.split("//")[1].split("/")[0] in error["message"]
    assert error["type"] == "server_error"
    assert setup.backend.requests == 0


# -- one runtime per data dir without Redis --------------------------------------------------------


def test_a_second_gateway_on_the_same_data_dir_refuses_to_start(make: Callable[..., Setup]) -> None:
    setup = make()
    with pytest.raises(DataDirInUse, match="another maas runtime is using") as refused:
        _start_gateway(setup.tmp_path, setup.store, setup.backend)
    assert "MAAS_DATA_DIR" in str(refused.value) and "MAAS_REDIS_URL" in str(refused.value)


def test_a_gateway_with_redis_refuses_a_data_dir_held_by_in_process_counters(
    make: Callable[..., Setup], redis_url: str
) -> None:
    setup = make()
    with pytest.raises(DataDirInUse, match="in memory"):
        _start_gateway(setup.tmp_path, setup.store, setup.backend, redis_url=redis_url)


# -- the real runtime: kill -9, and a second `make run` on the same data dir ------------------------


def _seeded_data_dir(tmp_path: Path, token_limit: int) -> tuple[Path, str]:
    """A data dir whose store already holds team t1 and a key for alice (no admin API needed)."""
    data_dir = tmp_path / ".maas"
    data_dir.mkdir()
    store = SqliteStore(data_dir / "maas.db")
    try:
        store.create_team(team=Team("t1", "t1", "", "t1", token_limit, "1h", "user", T0))  # type: ignore[arg-type]
        record, value = a_key("t1", "alice")
        store.create_key(key=record, api_key=value)
    finally:
        store.close()
    return data_dir, value


def _simulated_chat(runtime: Runtime, key: str) -> httpx.Response:
    body = {"model": "qwen3-0-6b-instruct", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 30}
    return _post(runtime.urls["gateway"], key, "/v1/chat/completions", body)


def test_kill_9_keeps_the_window(tmp_path: Path) -> None:
    data_dir, key = _seeded_data_dir(tmp_path, token_limit=20)
    runtime = start_runtime(data_dir)
    try:
        assert _simulated_chat(runtime, key).status_code == 200  # 33 tokens of 20
        assert _simulated_chat(runtime, key).status_code == 429
        time.sleep(1.5)  # the counters are saved every second: at most that is lost
        runtime.process.kill()
        runtime.process.wait(timeout=10)
    finally:
        runtime.stop()
    again = start_runtime(data_dir)
    try:
        refused = _simulated_chat(again, key)
        assert refused.status_code == 429, refused.text
        assert 3500 <= int(refused.headers["X-RateLimit-Reset"]) <= 3600
    finally:
        again.stop()


def test_a_second_runtime_on_the_same_data_dir_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    data_dir, key = _seeded_data_dir(tmp_path, token_limit=20)
    first = start_runtime(data_dir)
    try:
        with pytest.raises(RuntimeError) as refused:
            start_runtime(data_dir)
        errors = [line for line in str(refused.value).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "another maas runtime is using" in errors[0] and "MAAS_REDIS_URL" in errors[0]
        assert "Traceback" not in str(refused.value)
        assert _simulated_chat(first, key).status_code == 200  # the first is unharmed
    finally:
        first.stop()


def test_a_second_make_run_is_told_of_the_data_dir_before_any_busy_port(tmp_path: Path) -> None:
    # Two `make run`s in one folder take the same ports too: the first thing to say is the data
    # dir (the advice that works), not a busy port (whose advice, other ports, then fails on it).
    data_dir, _ = _seeded_data_dir(tmp_path, token_limit=20)
    first = start_runtime(data_dir)
    try:
        ports = {name: first.urls[label].rsplit(":", 1)[1] for name, label in (
            ("MAAS_SIMULATOR_PORT", "simulator"), ("MAAS_GATEWAY_PORT", "gateway"), ("MAAS_ADMIN_PORT", "admin API"))}
        with pytest.raises(RuntimeError) as refused:
            start_runtime(data_dir, env=ports)
        errors = [line for line in str(refused.value).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "another maas runtime is using" in errors[0], errors
        assert "cannot listen" not in str(refused.value)
    finally:
        first.stop()


# -- GET /v1/me: a key holder sees why they were refused ------------------------------------------


def _me(url: str, key: str) -> httpx.Response:
    return httpx.get(url + "/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_v1_me_shows_the_key_holder_and_their_budget_now(make: Callable[..., Setup]) -> None:
    setup = make()
    setup.team(token_limit=100, time_window="1h")
    key = setup.key()
    before = _me(setup.gateway.url, key)
    assert before.status_code == 200
    body = before.json()
    assert (body["team_id"], body["user_id"], body["models"]) == ("t1", "alice", [MODEL])
    assert body["key"]["models"] is None and key not in before.text
    assert body["budget"] == {"token_limit": 100, "time_window": "1h", "limit_scope": "user", "spent": 0,
                              "reserved": 0, "remaining": 100, "reset_seconds": 0}
    assert _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=98)).status_code == 200
    refused = _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=1))
    assert refused.status_code == 429
    budget = _me(setup.gateway.url, key).json()["budget"]
    assert (budget["spent"], budget["reserved"], budget["remaining"]) == (100, 0, 0)
    assert abs(budget["reset_seconds"] - int(refused.headers["Retry-After"])) <= 1
    assert _me(setup.gateway.url, key + "x").status_code == 401
    assert httpx.post(setup.gateway.url + "/v1/me", timeout=10).status_code == 405


def test_v1_me_with_redis_counters(make: Callable[..., Setup], redis_url: str) -> None:
    setup = make(redis_url=redis_url)
    setup.team(token_limit=100, scope="team")
    key = setup.key()
    assert _post(setup.gateway.url, key, "/v1/chat/completions", _chat(max_tokens=8)).status_code == 200
    assert eventually(lambda: _me(setup.gateway.url, key).json()["budget"]["spent"] == 10, timeout=5)
    budget = _me(setup.gateway.url, key).json()["budget"]
    assert budget["limit_scope"] == "team" and budget["remaining"] == 90 and 3500 < budget["reset_seconds"] <= 3600
