"""What a new user's walkthrough of the gateway and the built-in simulator ran into.

Every endpoint the README lists is served by the simulator and charged what it reports; a call
without its prompt is vLLM's 400; a refusal's access line names its model; a model named wrong
is told which ones the key may call; the admin key sent to the gateway is told where it goes.
All on 127.0.0.1, against the real simulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from local.gateway import GatewayService
from shared.settings import Settings
from shared.store.sqlite import SqliteStore
from tests.test_gateway import (  # noqa: F401 - fixtures
    HELLO,
    MODEL,
    _error,
    _gateway,
    _issue,
    _models_file,
    _team,
    client,
    gateway,
    simulator,
    store,
)
from tests.waiting import eventually


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"APIKEY {api_key}"}


def _charged(gateway: GatewayService, user_id: str = "alice") -> tuple[int, int]:
    """(tokens, authorized calls) the usage ledger holds for the user."""
    rows = gateway.ledger.totals(user_id=user_id)
    return sum(r.tokens for r in rows), sum(r.authorized_calls for r in rows)


def _unmetered(gateway: GatewayService) -> dict[str, int]:
    return dict(gateway._gateway._meter._unmetered)  # noqa: SLF001 - calls charged without a usage report


# -- 1. every endpoint the README lists, served and charged what the simulator reports ------


@pytest.mark.parametrize("given", ["Hello, world", ["a b", "Hello, world", "c"], [[1, 2, 3], [4, 5]]],
                         ids=["string", "strings", "token-arrays"])
def test_embeddings_through_the_gateway_are_served_and_charged_their_reported_usage(
    client: httpx.Client, store: SqliteStore, gateway: GatewayService, given: object
) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    for path in ("/v1/embeddings", f"/{MODEL}/v1/embeddings"):
        body = {"input": given} if path.startswith(f"/{MODEL}") else {"model": MODEL, "input": given}
        response = client.post(path, json=body, headers=_headers(api_key))
        assert response.status_code == 200, response.text
        reply = response.json()
        inputs = 1 if isinstance(given, str) else len(given)
        assert reply["object"] == "list" and len(reply["data"]) == inputs and reply["model"] == MODEL
        assert [d["index"] for d in reply["data"]] == list(range(inputs))
        assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] > 0
    total = reply["usage"]["total_tokens"]
    assert _charged(gateway) == (2 * total, 2)  # exactly as reported, each call
    assert _unmetered(gateway) == {}
    spent, reserved = gateway.limiter.state(team=_team("t1"), user_id="alice")
    assert (spent, reserved) == (2 * total, 0)


def test_responses_through_the_gateway_whole_and_streamed_are_charged_their_reported_usage(
    client: httpx.Client, store: SqliteStore, gateway: GatewayService
) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    body = {"model": MODEL, "input": "Hello, world", "max_output_tokens": 6}
    whole = client.post("/v1/responses", json=body, headers=_headers(api_key))
    assert whole.status_code == 200, whole.text
    usage = whole.json()["usage"]
    # "Hello, world" is 3 tokens, +2 for the message; 6 generated.
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 6, 11)
    assert whole.json()["output"][0]["content"][0]["type"] == "output_text"
    assert _charged(gateway) == (11, 1)

    with client.stream("POST", "/v1/responses", json={**body, "stream": True, "max_output_tokens": 9},
                       headers=_headers(api_key)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    streamed = events[-1]["response"]["usage"]
    assert (streamed["input_tokens"], streamed["output_tokens"], streamed["total_tokens"]) == (5, 9, 14)
    assert _charged(gateway) == (11 + 14, 2)
    assert _unmetered(gateway) == {}  # both read from the usage report, not guessed from the text
    assert gateway.limiter.state(team=_team("t1"), user_id="alice") == (25, 0)


# -- 2. a call without its prompt: vLLM's 400, charged nothing --------------------------------


@pytest.mark.parametrize(("path", "body", "member"), [
    ("/v1/chat/completions", {"model": MODEL, "max_tokens": 5}, "messages"),
    ("/v1/completions", {"model": MODEL, "max_tokens": 5}, "prompt"),
    ("/v1/embeddings", {"model": MODEL}, "input"),
    ("/v1/responses", {"model": MODEL, "max_output_tokens": 5}, "input"),
])
def test_a_call_without_its_prompt_is_a_400_through_the_gateway_and_charges_nothing(
    client: httpx.Client, store: SqliteStore, gateway: GatewayService, path: str, body: dict[str, object],
    member: str,
) -> None:
    store.create_team(team=_team("t1"))
    api_key, _ = _issue(store, "t1", "alice")
    response = client.post(path, json=body, headers=_headers(api_key))
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["type"] == "invalid_request_error" and f"'{member}' is required" in error["message"]
    assert _charged(gateway)[0] == 0
    assert gateway.limiter.state(team=_team("t1"), user_id="alice") == (0, 0)


# -- 3. a refusal's access line names its model --------------------------------------------


def test_the_access_line_of_a_refused_call_names_its_model_as_the_ledger_does(
    tmp_path: Path, store: SqliteStore, simulator: object, capsys: pytest.CaptureFixture[str]
) -> None:
    service = _gateway(tmp_path, store, simulator.url, access_log=True)  # type: ignore[attr-defined]
    try:
        store.create_team(team=_team("t1", token_limit=50))
        api_key, _ = _issue(store, "t1", "alice")
        limited_key, _ = _issue(store, "t1", "bob", models_allowed=("vllm-simulator",))
        with httpx.Client(base_url=service.url, timeout=10, headers=_headers(api_key)) as client:
            assert client.post("/v1/chat/completions", json=HELLO).status_code == 200  # 53: the 50 spent
            assert client.post("/v1/chat/completions", json=HELLO).status_code == 429
            assert client.post("/v1/chat/completions", json={**HELLO, "model": "qwen3"}).status_code == 404
            assert client.post("/v1/chat/completions", json={**HELLO, "stream": 1}).status_code == 422
            forbidden = client.post("/v1/chat/completions", json=HELLO, headers=_headers(limited_key))
            assert forbidden.status_code == 403
        seen: list[str] = []

        def lines() -> list[str]:
            seen.extend(line.split(" INFO maas.access: ", 1)[1] for line in capsys.readouterr().err.splitlines()
                        if " INFO maas.access: " in line)
            return seen

        assert eventually(lambda: len(lines()) == 5, timeout=5), seen
        ok, limited, unknown, invalid, refused = seen
        assert f"200 model={MODEL} team=t1 user=alice tokens=53" in ok
        assert limited.startswith(f"POST /v1/chat/completions 429 model={MODEL} team=t1 user=alice tokens=0 ")
        [row] = [r for r in service.ledger.totals(user_id="alice") if r.limited_calls]
        assert row.model == MODEL  # what the ledger attributes the refusal to
        # A name that is not served is the client's text, not a model: not logged as one.
        assert unknown.startswith("POST /v1/chat/completions 404 model=- team=t1 user=alice ")
        assert invalid.startswith(f"POST /v1/chat/completions 422 model={MODEL} team=t1 user=alice ")
        assert refused.startswith(f"POST /v1/chat/completions 403 model={MODEL} team=t1 user=bob ")
        assert all(api_key not in line and limited_key not in line for line in seen)
    finally:
        service.stop()


# -- 4. a model named wrong: which ones this key may call ----------------------------------


def test_an_unknown_model_is_told_the_models_this_key_may_call(
    client: httpx.Client, store: SqliteStore
) -> None:
    store.create_team(team=_team("t1"))
    everyone, _ = _issue(store, "t1", "alice")
    response = client.post("/v1/chat/completions", json={**HELLO, "model": "qwen3"}, headers=_headers(everyone))
    assert response.status_code == 404
    assert _error(response)["message"] == (
        f"model 'qwen3' not found; this key may call: {MODEL}, vllm-simulator")
    limited, _ = _issue(store, "t1", "bob", models_allowed=("vllm-simulator",))
    response = client.post("/vllm/v1/chat/completions", json={"messages": HELLO["messages"]},
                           headers=_headers(limited))
    message = _error(response)["message"]
    assert response.status_code == 404 and message == "model 'vllm' not found; this key may call: vllm-simulator"
    assert MODEL not in message  # never a model the key may not call
    nothing, _ = _issue(store, "t1", "carol", models_allowed=("retired-model",))
    message = _error(client.post("/v1/completions", json={"model": "qwen3", "prompt": "hi"},
                                 headers=_headers(nothing)))["message"]
    assert "may call none of the models served here" in message and "retired-model" not in message


def test_the_models_an_unknown_model_is_told_of_are_bounded(
    tmp_path: Path, store: SqliteStore, simulator: object
) -> None:
    names = tuple(f"model-{i:02d}" for i in range(25))
    models = _models_file(tmp_path / "models.yaml", simulator.url, names)  # type: ignore[attr-defined]
    service = GatewayService(Settings(gateway_port=0, metrics_port=0, data_dir=tmp_path / "data",  # type: ignore[call-arg]
                                      models_file=models), store)
    service.start()
    try:
        store.create_team(team=_team("t1"))
        api_key, _ = _issue(store, "t1", "alice")
        picked, _ = _issue(store, "t1", "bob", models_allowed=("model-03", "model-24", "gone"))
        with httpx.Client(base_url=service.url, timeout=10) as client:
            body = {"model": "qwen3", "prompt": "hi"}
            message = _error(client.post("/v1/completions", json=body, headers=_headers(api_key)))["message"]
            assert message.startswith("model 'qwen3' not found; this key may call: model-00, model-01, ")
            assert "model-19 and 5 more" in message and "model-20" not in message
            message = _error(client.post("/v1/completions", json=body, headers=_headers(picked)))["message"]
            assert message == "model 'qwen3' not found; this key may call: model-03, model-24"
    finally:
        service.stop()


# -- 5. the admin key sent to the gateway -------------------------------------------------


@pytest.mark.parametrize("header", ["ADMIN {secret}", "admin {secret}", "Admin   {secret}", "ADMIN"])
def test_the_admin_scheme_on_the_gateway_is_told_the_admin_key_is_for_the_admin_api(
    client: httpx.Client, store: SqliteStore, header: str
) -> None:
    store.create_team(team=_team("t1"))
    secret = "an-admin-key-that-must-never-come-back-0123456789"
    authorization = header.format(secret=secret)
    for path, body in (("/v1/chat/completions", HELLO), ("/v1/embeddings", {"model": MODEL, "input": "hi"})):
        response = client.post(path, json=body, headers={"Authorization": authorization})
        assert response.status_code == 401
        message = _error(response)["message"]
        assert "admin key is for the admin API" in message and "8443" in message
        assert "'Authorization: APIKEY <key>'" in message and "'Authorization: Bearer <key>'" in message
        assert secret not in response.text and secret[:12] not in response.text
    for path in ("/v1/models", "/v1/me"):
        response = client.get(path, headers={"Authorization": authorization})
        assert response.status_code == 401 and "admin key is for the admin API" in _error(response)["message"]
        assert secret not in response.text
    # Other schemes keep their answer.
    basic = client.post("/v1/chat/completions", json=HELLO, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert "unsupported authorization scheme" in _error(basic)["message"]

