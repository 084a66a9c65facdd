"""The local gateway against the real simulator and a real SQLite store, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from local.gateway import GatewayService
from local.simulator import SimulatorService, new_token
from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.settings import Settings
from shared.store.base import ApiKey, Team, TeamChanges
from shared.store.sqlite import SqliteStore
from tests.records import T0

MODEL = "qwen3-0-6b-instruct"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50}
# The simulator's usage for HELLO: "Hello" is 1 token + 2 for the message, plus 50 completion.
HELLO_TOKENS = 53
# The simulators here answer only this token (what a models file's simulator entry sends).
SIM_TOKEN = new_token()


def _team(team_id: str, *, token_limit: int = 100_000, time_window: str = "1h", scope: str = "user") -> Team:
    # One fixed created_at: a limiter counter belongs to the team (id and created_at), so a test
    # reading a counter with a team it builds again must build the same team.
    return Team(team_id, team_id, "", team_id, token_limit, time_window, scope, T0)  # type: ignore[arg-type]


def _issue(store: SqliteStore, team_id: str, user_id: str, **fields: object) -> tuple[str, ApiKey]:
    api_key = generate_api_key()
    record = ApiKey(
        secret_name=secret_name_for(user_id, team_id),
        key_sha256=key_sha256(api_key),
        team_id=team_id,
        user_id=user_id,
        user_email=f"{user_id}@example.com",
        role="member",
        status="active",
        created_at=datetime.now(timezone.utc),
    )
    record = replace(record, **fields)  # type: ignore[arg-type]
    store.create_key(key=record, api_key=api_key)
    return api_key, record


def _models_file(path: Path, url: str, names: tuple[str, ...] = (MODEL, "vllm-simulator")) -> Path:
    key = SIM_TOKEN.get_secret_value()
    path.write_text("models:\n" + "".join(f"  - name: {n}\n    url: {url}/v1\n    api_key: {key}\n" for n in names))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorService]:
    service = SimulatorService(Settings(simulator_port=0), token=SIM_TOKEN)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "maas.db")
    yield store
    store.close()


def _gateway(tmp_path: Path, store: SqliteStore, backend_url: str, **settings: object) -> GatewayService:
    models = _models_file(tmp_path / "models.yaml", backend_url)
    config = Settings(gateway_port=0, metrics_port=0, data_dir=tmp_path / "data", models_file=models,  # type: ignore[arg-type]
                      **settings)
    service = GatewayService(config, store)
    service.start()
    return service


@pytest.fixture
def gateway(tmp_path: Path, store: SqliteStore, simulator: SimulatorService) -> Iterator[GatewayService]:
    service = _gateway(tmp_path, store, simulator.url)
    yield service
    service.stop()


@pytest.fixture
def client(gateway: GatewayService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


@pytest.fixture
def metrics(gateway: GatewayService) -> Callable[[], httpx.Response]:
    """GET /metrics on the gateway's metrics port (not the model port)."""
    return lambda: httpx.get(gateway.metrics_url + "/metrics", timeout=10)


def _chat(client: httpx.Client, api_key: str | None, body: dict[str, object] = HELLO, scheme: str = "APIKEY") -> httpx.Response:
    headers = {} if api_key is None else {"Authorization": f"{scheme} {api_key}"}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def _error(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    return body["error"]


# -- authentication ------------------------------------------------------------------------


def test_apikey_and_bearer_schemes_both_work(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    for scheme in ("APIKEY", "Bearer", "apikey"):
        response = _chat(client, api_key, scheme=scheme)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["total_tokens"] == HELLO_TOKENS


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "unsupported authorization scheme"),
        ("APIKEY", "missing API key"),
        ("APIKEY maas_not-a-key-anyone-issued", "invalid API key"),
    ],
    ids=["missing-header", "wrong-scheme", "no-key", "unknown-key"],
)
def test_auth_failures_are_401_in_openai_shape(
    client: httpx.Client, store: SqliteStore, header: str | None, fragment: str
) -> None:
    store.create_team(team=_team("t1"))
    headers = {} if header is None else {"Authorization": header}
    response = client.post("/v1/chat/completions", json=HELLO, headers=headers)
    assert response.status_code == 401
    error = _error(response)
    assert fragment in error["message"] and error["type"] == "authentication_error"
    if header and " " in header:
        assert header.split(" ")[-1] not in response.text  # never echo what was sent


def test_deleted_key_is_refused_on_the_next_request(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1"))
    api_key, record = _issue(store, "t1", "alice")
    assert _chat(client, api_key).status_code == 200
    store.delete_key(secret_name=record.secret_name)
    response = _chat(client, api_key)
    assert response.status_code == 401 and api_key not in response.text


def test_a_team_created_again_under_its_old_id_starts_with_fresh_counters(client: httpx.Client, store: SqliteStore) -> None:
    """Deleting a team takes its keys; its successor under the same id must not inherit its
    spent budget either (found by a new user running the README session, then the quickstart)."""
    store.create_team(team=_team("t1", token_limit=20))
    first, _ = _issue(store, "t1", "alice")
    assert _chat(client, first).status_code == 200  # spends more than 20
    assert _chat(client, first).status_code == 429
    store.delete_team(team_id="t1")
    store.create_team(team=replace(_team("t1", token_limit=20), created_at=T0 + timedelta(minutes=1)))
    second, _ = _issue(store, "t1", "alice")
    assert _chat(client, second).status_code == 200


def test_revoked_expired_and_teamless_keys_are_refused(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1"))
    store.create_team(team=_team("t2"))
    revoked, record = _issue(store, "t1", "alice")
    store.set_key_status(secret_name=record.secret_name, status="revoked")
    expired, _ = _issue(store, "t1", "bob", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    orphan, _ = _issue(store, "t2", "carol")
    store.delete_team(team_id="t2")
    assert "revoked" in _error(_chat(client, revoked))["message"]
    assert "expired" in _error(_chat(client, expired))["message"]
    assert _chat(client, orphan).status_code == 401


def test_models_allowed_limits_models_and_the_listing(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice", models_allowed=("vllm-simulator",))
    response = _chat(client, api_key)
    assert response.status_code == 403 and MODEL in _error(response)["message"]
    assert _chat(client, api_key, {**HELLO, "model": "vllm-simulator"}).status_code == 200
    listing = client.get("/v1/models", headers={"Authorization": f"Bearer {api_key}"})
    assert [m["id"] for m in listing.json()["data"]] == ["vllm-simulator"]
    assert client.get("/v1/models").status_code == 401


# -- the cluster's URL: /<model>/v1/<endpoint> ------------------------------------------------


def test_the_model_may_be_named_in_the_path_as_in_a_cluster(
    client: httpx.Client, store: SqliteStore, metrics: Callable[[], httpx.Response]
) -> None:
    """`https://<models host>/<model>/v1` is an OpenAI base URL in a cluster (maas-models);
    the same URL works here, the body's model agreeing or left out."""
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    headers = {"Authorization": f"APIKEY {api_key}"}
    agreeing = client.post(f"/{MODEL}/v1/chat/completions", json=HELLO, headers=headers)
    assert agreeing.status_code == 200, agreeing.text
    assert agreeing.json()["usage"]["total_tokens"] == HELLO_TOKENS and agreeing.json()["model"] == MODEL
    without = {k: v for k, v in HELLO.items() if k != "model"}
    implied = client.post("/vllm-simulator/v1/chat/completions", json=without, headers=headers)
    assert implied.status_code == 200 and implied.json()["model"] == "vllm-simulator"
    completion = client.post(f"/{MODEL}/v1/completions", json={"prompt": "Hello", "max_tokens": 5}, headers=headers)
    assert completion.status_code == 200, completion.text
    with client.stream("POST", f"/{MODEL}/v1/chat/completions", json={**without, "stream": True, "max_tokens": 7,
                       "stream_options": {"include_usage": True}}, headers=headers) as streamed:
        assert streamed.status_code == 200
        events = _events(list(streamed.iter_lines()))
    assert json.loads(events[-2])["usage"]["total_tokens"] == 3 + 7  # usage injected, as without the path
    assert 'authorized_calls{limitador_namespace="local/maas-models",team="t1",user="alice"} 4' in metrics().text


def test_a_body_model_other_than_the_paths_is_400_naming_both(
    client: httpx.Client, store: SqliteStore, metrics: Callable[[], httpx.Response]
) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    headers = {"Authorization": f"APIKEY {api_key}"}
    for body_model in ("vllm-simulator", None, 7):
        response = client.post(f"/{MODEL}/v1/chat/completions", json={**HELLO, "model": body_model}, headers=headers)
        assert response.status_code == 400, response.text
        message = _error(response)["message"]
        assert MODEL in message and json.dumps(body_model) in message, message
    assert "vllm-simulator" in _error(
        client.post(f"/{MODEL}/v1/chat/completions", json={**HELLO, "model": "vllm-simulator"}, headers=headers))["message"]
    # Nothing was admitted: no call counted, no tokens spent.
    assert "authorized_calls{" not in metrics().text


def test_the_path_model_is_checked_like_the_body_model(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1"))
    listed, _ = _issue(store, "t1", "alice", models_allowed=("vllm-simulator",))
    without = {k: v for k, v in HELLO.items() if k != "model"}
    headers = {"Authorization": f"APIKEY {listed}"}
    refused = client.post(f"/{MODEL}/v1/chat/completions", json=without, headers=headers)
    assert refused.status_code == 403 and MODEL in _error(refused)["message"]
    assert client.post("/vllm-simulator/v1/chat/completions", json=without, headers=headers).status_code == 200
    missing = client.post("/gpt-17/v1/chat/completions", json=without, headers=headers)
    assert missing.status_code == 404 and "gpt-17" in _error(missing)["message"]
    assert client.post("/v1/chat/completions", json=without, headers=headers).status_code == 422  # no model at all
    assert client.post("/no/such/v1/chat/completions", json=HELLO, headers=headers).status_code == 404
    assert client.post(f"/{MODEL}/v1/audio/transcriptions", json=HELLO, headers=headers).status_code == 404
    assert client.post("//v1/chat/completions", json=HELLO, headers=headers).status_code == 404
    assert client.get(f"/{MODEL}/v1/chat/completions", headers=headers).status_code == 405
    assert client.post(f"/{MODEL}/v1/chat/completions", json=without).status_code == 401


def test_unknown_model_is_404_and_bad_bodies_are_400_413(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    missing = _chat(client, api_key, {**HELLO, "model": "gpt-17"})
    assert missing.status_code == 404 and "gpt-17" in _error(missing)["message"]
    headers = {"Authorization": f"APIKEY {api_key}", "Content-Type": "application/json"}
    assert client.post("/v1/chat/completions", content=b"{not json", headers=headers).status_code == 400
    huge = client.post("/v1/chat/completions", content=b"x" * (17 * 1024 * 1024), headers=headers)
    assert huge.status_code == 413
    assert client.get("/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok"}


# -- token limits --------------------------------------------------------------------------


def test_429_once_spent_with_retry_after_and_ratelimit_headers(client: httpx.Client, store: SqliteStore) -> None:
    store.create_team(team=_team("t1", token_limit=100, time_window="1m"))
    api_key, _ = _issue(store, "t1", "alice")
    first, second = _chat(client, api_key), _chat(client, api_key)
    assert (first.status_code, second.status_code) == (200, 200)
    # Remaining is what is left once the request's own reservation (max_tokens + the prompt's
    # bound, a byte a token) counts.
    reserved = 50 + len(first.request.content)
    assert first.headers["X-RateLimit-Limit"] == "100"
    assert first.headers["X-RateLimit-Remaining"] == str(max(0, 100 - reserved))
    assert second.headers["X-RateLimit-Remaining"] == str(max(0, 100 - HELLO_TOKENS - reserved))
    limited = _chat(client, api_key)
    assert limited.status_code == 429
    assert _error(limited)["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["X-RateLimit-Limit"] == "100"
    assert 1 <= int(limited.headers["X-RateLimit-Reset"]) <= 60


def test_user_scope_gives_each_member_a_budget_team_scope_shares_one(
    client: httpx.Client, store: SqliteStore
) -> None:
    store.create_team(team=_team("solo", token_limit=20, time_window="1m"))
    store.create_team(team=_team("shared", token_limit=20, time_window="1m", scope="team"))
    a1, _ = _issue(store, "solo", "alice")
    b1, _ = _issue(store, "solo", "bob")
    a2, _ = _issue(store, "shared", "alice")
    b2, _ = _issue(store, "shared", "bob")
    assert _chat(client, a1).status_code == 200 and _chat(client, a1).status_code == 429
    assert _chat(client, b1).status_code == 200
    assert _chat(client, a2).status_code == 200 and _chat(client, b2).status_code == 429


def test_a_limit_change_applies_to_the_next_request(client: httpx.Client, store: SqliteStore) -> None:
    # The quickstart's steps 3-5: a call under a big limit, a PATCH to 20/1m, then 429.
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    assert _chat(client, api_key).status_code == 200
    store.update_team(team_id="t1", changes=TeamChanges(token_limit=20, time_window="1m"))
    limited = _chat(client, api_key)
    assert limited.status_code == 429 and limited.headers["X-RateLimit-Limit"] == "20"
    store.update_team(team_id="t1", changes=TeamChanges(token_limit=1000))
    assert _chat(client, api_key).status_code == 200


def test_60_concurrent_requests_overshoot_by_at_most_one_request(
    tmp_path: Path, store: SqliteStore
) -> None:
    slow = SimulatorService(Settings(simulator_port=0), token=SIM_TOKEN, time_to_first_token_s=0.3)
    slow.start()
    service = _gateway(tmp_path, store, slow.url)
    try:
        limit = 200
        store.create_team(team=_team("t1", token_limit=limit, time_window="1h"))
        api_key, _ = _issue(store, "t1", "alice")
        body = {**HELLO, "max_tokens": 20}

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
                calls = [
                    client.post("/v1/chat/completions", json=body, headers={"Authorization": f"APIKEY {api_key}"})
                    for _ in range(60)
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(burst())
        ok = statuses.count(200)
        team = _team("t1", token_limit=limit)
        spent, reserved = service.limiter.state(team=team, user_id="alice")
        one_request = 23  # 3 prompt + 20 completion tokens
        assert reserved == 0 and ok >= 1
        assert spent == ok * one_request <= limit + one_request, (ok, spent)
        assert statuses.count(429) == 60 - ok
        usage = service.ledger.totals(team_id="t1")
        assert usage[0].authorized_calls == ok and usage[0].limited_calls == 60 - ok
        # Reservations err on the safe side under a burst; the rest of the budget stays usable
        # and the counter ends within one request of the limit.
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for _ in range(limit):
                if _chat(client, api_key, body).status_code == 429:
                    break
        spent, _ = service.limiter.state(team=team, user_id="alice")
        assert limit <= spent <= limit + one_request, spent
    finally:
        service.stop()
        slow.stop()


# -- streaming and failures ---------------------------------------------------------------


def _events(lines: list[str]) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def test_streams_pass_through_and_count_the_usage_chunk(
    client: httpx.Client, store: SqliteStore, gateway: GatewayService
) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    body = {**HELLO, "stream": True, "max_tokens": 7}
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"APIKEY {api_key}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    # The gateway asked for usage (stream_options.include_usage) and counted it; the client,
    # which did not ask, gets the stream it asked for: no usage event.
    assert not any("usage" in json.loads(e) for e in events[:-1])
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert len(text.split()) == 7
    [row] = gateway.ledger.totals(user_id="alice")
    assert (row.tokens, row.authorized_calls) == (10, 1)
    for asked in ({"include_usage": True}, {"include_usage": False}):
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream_options": asked},
                           headers={"Authorization": f"APIKEY {api_key}"}) as r:
            events = _events(list(r.iter_lines()))
        usage = [json.loads(e)["usage"] for e in events[:-1] if "usage" in json.loads(e)]
        assert usage == ([{"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}]
                         if asked["include_usage"] else [])
    [row] = gateway.ledger.totals(user_id="alice")
    assert (row.tokens, row.authorized_calls) == (30, 3)  # counted whether sent or not
    assert ('authorized_hits{limitador_namespace="local/maas-models",model="qwen3-0-6b-instruct",team="t1",'
            'user="alice"} 30') in httpx.get(gateway.metrics_url + "/metrics").text


@pytest.mark.parametrize("value", [1, 0, "yes", "true", 1.0, [], {}])
def test_a_stream_flag_that_is_not_a_boolean_is_refused_before_anything_is_spent(
    client: httpx.Client, store: SqliteStore, gateway: GatewayService, value: object
) -> None:
    """vLLM streams on `"stream": 1` too; a gateway that did not take it for a stream would not
    ask for usage and would charge nothing (issue 11: 30 calls of 4,000 tokens passed a
    1,000-token limit). Only true, false or null mean anything."""
    store.create_team(team=_team("t1", token_limit=50))
    api_key, _ = _issue(store, "t1", "alice")
    response = _chat(client, api_key, {**HELLO, "stream": value})
    assert response.status_code == 422
    assert "'stream' must be true or false" in _error(response)["message"]
    assert gateway.limiter.state(team=_team("t1", token_limit=50), user_id="alice") == (0, 0)
    assert gateway.limiter.outstanding == 0


@pytest.mark.parametrize(("fields", "path", "completions"), [
    ({}, "/v1/chat/completions", 1),
    ({"n": 5}, "/v1/chat/completions", 5),
    ({"n": 2, "best_of": 4}, "/v1/completions", 4),
    ({"prompt": ["a", "b", "c"], "n": 2}, "/v1/completions", 6),
    ({"prompt": [[1, 2], [3, 4]]}, "/v1/completions", 2),
    ({"prompt": [1, 2, 3]}, "/v1/completions", 1),  # one prompt, as token ids
])
def test_the_reservation_covers_every_completion_the_request_asks_for(
    tmp_path: Path, store: SqliteStore, fields: dict[str, object], path: str, completions: int
) -> None:
    slow = SimulatorService(Settings(simulator_port=0), token=SIM_TOKEN, time_to_first_token_s=0.5)
    slow.start()
    service = _gateway(tmp_path, store, slow.url)
    try:
        store.create_team(team=_team("t1"))
        api_key, _ = _issue(store, "t1", "alice")
        base = {"model": "qwen3-0-6b-instruct", "max_tokens": 20}
        base.update({"messages": HELLO["messages"]} if path.endswith("chat/completions") else {"prompt": "hi"})
        body = json.dumps({**base, **fields}).encode()
        done = threading.Thread(target=lambda: httpx.post(
            service.url + path, content=body, timeout=10,
            headers={"Authorization": f"APIKEY {api_key}", "Content-Type": "application/json"}))
        done.start()
        deadline = time.monotonic() + 5
        while service.limiter.state(team=_team("t1"), user_id="alice")[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        _, reserved = service.limiter.state(team=_team("t1"), user_id="alice")
        done.join(10)
        # Every completion at max_tokens, plus the prompt at its bound (a byte a token).
        assert reserved == completions * 20 + len(body)
    finally:
        service.stop()
        slow.stop()


@pytest.mark.parametrize(("field", "value"), [("n", 0), ("n", "20"), ("n", 2.0), ("best_of", True), ("n", -1)])
def test_a_completion_count_that_is_not_a_positive_integer_is_refused(
    client: httpx.Client, store: SqliteStore, field: str, value: object
) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    response = _chat(client, api_key, {**HELLO, field: value})
    assert response.status_code == 422 and f"'{field}' must be an integer from 1 to 128" in _error(response)["message"]


@pytest.mark.parametrize("value", [False, None])
def test_stream_false_or_null_is_a_plain_answer(client: httpx.Client, store: SqliteStore, value: object) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    response = _chat(client, api_key, {**HELLO, "stream": value})
    assert response.status_code == 200 and response.json()["usage"]["total_tokens"] > 0


def test_upstream_down_is_502_naming_the_model_and_releases_the_reservation(
    tmp_path: Path, store: SqliteStore
) -> None:
    service = _gateway(tmp_path, store, f"http://127.0.0.1:{_free_port()}")
    try:
        team = _team("t1", token_limit=100)
        store.create_team(team=team)
        api_key, _ = _issue(store, "t1", "alice")
        with httpx.Client(base_url=service.url) as client:
            response = _chat(client, api_key)
        assert response.status_code == 502 and MODEL in _error(response)["message"]
        assert service.limiter.state(team=team, user_id="alice") == (0, 0)
    finally:
        service.stop()


def test_upstream_timeout_is_504_naming_the_model_and_charges_the_worst_cost(
    tmp_path: Path, store: SqliteStore
) -> None:
    stuck = SimulatorService(Settings(simulator_port=0), token=SIM_TOKEN, time_to_first_token_s=3)
    stuck.start()
    service = _gateway(tmp_path, store, stuck.url, upstream_timeout_s=0.3)
    try:
        team = _team("t1", token_limit=100)
        store.create_team(team=team)
        api_key, _ = _issue(store, "t1", "alice")
        with httpx.Client(base_url=service.url) as client:
            started = time.monotonic()
            response = _chat(client, api_key)
        assert response.status_code == 504 and MODEL in _error(response)["message"]
        assert time.monotonic() - started < 2
        # The backend had the request and may have been generating a whole reply (whose
        # headers come last): nothing came back, so the call is charged its worst cost, not 0.
        spent, reserved = service.limiter.state(team=team, user_id="alice")
        assert reserved == 0 and spent == 50 + len(response.request.content)
    finally:
        service.stop()
        stuck.stop()


def test_client_disconnect_mid_stream_settles_what_was_used(tmp_path: Path, store: SqliteStore) -> None:
    slow = SimulatorService(Settings(simulator_port=0), token=SIM_TOKEN, inter_token_latency_s=0.02)
    slow.start()
    service = _gateway(tmp_path, store, slow.url)
    try:
        team = _team("t1", token_limit=10_000)
        store.create_team(team=team)
        api_key, _ = _issue(store, "t1", "alice")
        body = {**HELLO, "stream": True, "max_tokens": 500}  # 10 s if read to the end
        with httpx.Client(base_url=service.url, timeout=10) as client:
            with client.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"APIKEY {api_key}"}) as r:
                seen = 0
                for line in r.iter_lines():
                    seen += line.startswith("data: ")
                    if seen == 10:
                        break
        deadline = time.monotonic() + 3
        while service.limiter.state(team=team, user_id="alice")[1] and time.monotonic() < deadline:
            time.sleep(0.02)
        spent, reserved = service.limiter.state(team=team, user_id="alice")
        assert reserved == 0
        # Charged for the prompt estimate and the events relayed: more than seen, far below 500.
        assert 10 <= spent < 200, spent
        [row] = service.ledger.totals(user_id="alice")
        assert row.tokens == spent and row.authorized_calls == 1
    finally:
        service.stop()
        slow.stop()


def test_metrics_expose_limitador_series(
    client: httpx.Client, store: SqliteStore, metrics: Callable[[], httpx.Response]
) -> None:
    store.create_team(team=_team("t1", token_limit=20, time_window="1m"))
    api_key, _ = _issue(store, "t1", "alice")
    _chat(client, api_key)
    _chat(client, api_key)
    response = metrics()
    assert response.headers["content-type"].startswith("text/plain")
    # Limitador's shapes under Kuadrant (tests/cluster/SOURCES.md 5 and 16): `model` only on the
    # Report's authorized_hits, `limitador_namespace` on every series.
    route = 'limitador_namespace="local/maas-models"'
    lines = response.text.splitlines()
    for name, labels, value in (
        ("authorized_hits", f'{{{route},model="qwen3-0-6b-instruct",team="t1",user="alice"}}', HELLO_TOKENS),
        ("authorized_calls", f'{{{route},team="t1",user="alice"}}', 1),
        ("limited_calls", f'{{{route},team="t1",user="alice"}}', 1),
    ):
        assert f"# TYPE {name} counter" in lines
        assert f"{name}{labels} {value}" in lines
    # Ours beside them: which limit refused, by its name (the short form's is `tokens`).
    assert 'maas_limited_calls_by_limit{limit_name="tokens",team="t1"} 1' in lines
    samples = [line for line in lines if not line.startswith("#") and not line.startswith("maas_")]
    assert len(samples) == 3
    assert all(route in line for line in samples)
    assert [line for line in samples if "model=" in line] == [samples[0]]
    assert "_total" not in response.text


def test_stop_flushes_the_ledger(tmp_path: Path, store: SqliteStore, simulator: SimulatorService) -> None:
    from shared.ledger import UsageLedger

    service = _gateway(tmp_path, store, simulator.url)
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    with httpx.Client(base_url=service.url) as client:
        assert _chat(client, api_key).status_code == 200
    service.stop()
    reopened = UsageLedger(tmp_path / "data" / "usage.db")
    try:
        [row] = reopened.totals()
        assert (row.team_id, row.user_id, row.model, row.tokens) == ("t1", "alice", MODEL, HELLO_TOKENS)
    finally:
        reopened.close()


def test_last_use_is_recorded_in_batches_off_the_request_path(
    tmp_path: Path, store: SqliteStore, simulator: SimulatorService
) -> None:
    store.create_team(team=_team("t1"))
    used_key, used = _issue(store, "t1", "alice")
    _, idle = _issue(store, "t1", "bob")
    generation = store.generation()
    service = _gateway(tmp_path, store, simulator.url, last_used_interval_s=0.2)
    try:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            assert _chat(http, used_key).status_code == 200
        deadline = time.monotonic() + 5
        while store.get_key(secret_name=used.secret_name).last_used_at is None:
            assert time.monotonic() < deadline, "last_used_at was never written"
            time.sleep(0.05)
    finally:
        service.stop()
    assert store.get_key(secret_name=idle.secret_name).last_used_at is None
    # Recording use is not a change of keys or teams: the gateway's cache is not reloaded for it.
    assert store.generation() == generation


def test_the_last_uses_not_yet_written_are_written_on_stop(
    tmp_path: Path, store: SqliteStore, simulator: SimulatorService
) -> None:
    store.create_team(team=_team("t1"))
    key, record = _issue(store, "t1", "alice")
    service = _gateway(tmp_path, store, simulator.url, last_used_interval_s=3600)
    try:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            assert _chat(http, key).status_code == 200
        assert store.get_key(secret_name=record.secret_name).last_used_at is None
    finally:
        service.stop()
    assert store.get_key(secret_name=record.secret_name).last_used_at is not None
