"""The model simulator: deterministic OpenAI-compatible replies with honest usage."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from local.simulator import SimulatorService, count_tokens
from shared.settings import Settings

CHAT = {"model": "vllm-simulator", "messages": [{"role": "user", "content": "Hello, world"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def service() -> Iterator[SimulatorService]:
    service = SimulatorService(Settings(simulator_port=0))
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(service: SimulatorService) -> Iterator[httpx.Client]:
    # What the gateway sends: the simulator's internal token (shared/modelsfile.py).
    token = service.token.get_secret_value()
    with httpx.Client(base_url=service.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def test_only_callers_with_the_internal_token_are_answered(service: SimulatorService) -> None:
    token = service.token.get_secret_value()
    with httpx.Client(base_url=service.url, timeout=10) as anyone:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                        {"Authorization": f"APIKEY {token}"}, {"Authorization": f"Bearer {token}x"}):
            refused = anyone.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert refused.status_code == 401, headers
            error = refused.json()["error"]
            assert error["type"] == "authentication_error" and token not in refused.text
            assert anyone.get("/v1/models", headers=headers).status_code == 401
            assert anyone.post("/v1/completions", json=CHAT, headers=headers).status_code == 401
        assert anyone.get("/health").status_code == 200  # liveness tells nothing
        answered = anyone.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})
        assert answered.status_code == 200 and answered.json()["usage"]["total_tokens"] == 10
    assert SimulatorService(Settings(simulator_port=0)).token.get_secret_value() != token  # one per start


def test_chat_is_deterministic_honours_max_tokens_and_counts_usage(client: httpx.Client) -> None:
    first = client.post("/v1/chat/completions", json=CHAT).json()
    second = client.post("/v1/chat/completions", json=CHAT).json()
    text = first["choices"][0]["message"]["content"]
    assert text == second["choices"][0]["message"]["content"]
    assert count_tokens(text) == 5
    assert first["usage"] == {"prompt_tokens": 3 + 2, "completion_tokens": 5, "total_tokens": 10}
    assert first["object"] == "chat.completion" and first["model"] == "vllm-simulator"


def test_completions_and_models(client: httpx.Client) -> None:
    reply = client.post("/v1/completions", json={"model": "qwen3-0-6b-instruct", "prompt": "a b c", "max_tokens": 4}).json()
    assert reply["usage"]["prompt_tokens"] == 3 and reply["usage"]["completion_tokens"] == 4
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["qwen3-0-6b-instruct", "vllm-simulator"]


def test_stream_sends_one_chunk_per_token_and_usage_only_when_asked(client: httpx.Client) -> None:
    def events(body: dict[str, object]) -> list[str]:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]

    plain = events({**CHAT, "stream": True})
    assert plain[-1] == "[DONE]" and all("usage" not in json.loads(e) for e in plain[:-1])
    counted = events({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert json.loads(counted[-2])["usage"]["total_tokens"] == 10
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") for e in counted[1:-3]]
    assert len(deltas) == 5 and all(deltas)


def test_errors_in_openai_shape(client: httpx.Client) -> None:
    unknown = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/chat/completions", content=b"{").status_code == 400
    assert client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0}).status_code == 422


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/responses", "/v1/nothing"])
def test_an_endpoint_it_does_not_serve_is_a_404_in_openai_shape_naming_what_it_serves(
        client: httpx.Client, service: SimulatorService, path: str) -> None:
    # The gateway passes a backend's answer on: a README reader calling /v1/embeddings on the
    # simulator's models must learn why, not get aiohttp's text/plain "404: Not Found".
    missing = client.post(path, json={"model": "vllm-simulator", "input": "Hi"})
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/json")
    error = missing.json()["error"]
    assert error["type"] == "invalid_request_error" and path in error["message"], error
    assert "/v1/chat/completions" in error["message"] and "MAAS_MODELS_FILE" in error["message"]
    # Without the internal token: still refused first, and not told what exists.
    with httpx.Client(base_url=service.url, timeout=10) as anyone:
        assert anyone.post(path, json={}).status_code == 401


def test_requests_beyond_the_context_length_are_refused_like_vllm(client: httpx.Client) -> None:
    from local.simulator import MAX_MODEL_LEN

    body = {"model": "qwen3-0-6b-instruct", "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": MAX_MODEL_LEN}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert "maximum context length" in response.json()["error"]["message"]
    body["max_tokens"] = 10**20  # answered at once, not generated
    assert client.post("/v1/chat/completions", json=body).status_code == 422
    from local.simulator import prompt_tokens

    body["max_tokens"] = MAX_MODEL_LEN - prompt_tokens(body)  # exactly the context length: served
    assert client.post("/v1/chat/completions", json=body).json()["usage"]["total_tokens"] == MAX_MODEL_LEN
