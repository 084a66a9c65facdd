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


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/audio/transcriptions", "/v1/embeddings/x"])
def test_an_endpoint_it_does_not_serve_is_a_404_in_openai_shape_naming_what_it_serves(
        client: httpx.Client, service: SimulatorService, path: str) -> None:
    # The gateway passes a backend's answer on: a README reader calling an endpoint the
    # simulator does not serve must learn why, not get aiohttp's text/plain "404: Not Found".
    missing = client.post(path, json={"model": "vllm-simulator", "input": "Hi"})
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/json")
    error = missing.json()["error"]
    assert error["type"] == "invalid_request_error" and path in error["message"], error
    assert "/v1/chat/completions" in error["message"] and "MAAS_MODELS_FILE" in error["message"]
    assert "/v1/embeddings and" in error["message"] and "/v1/responses" in error["message"]
    wrong = client.get("/v1/chat/completions")  # a served path, another method: 405, JSON too
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert "POST" in wrong.headers["Allow"]
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


# -- what vLLM serves besides chat and completions ------------------------------------------


def test_embeddings_give_one_deterministic_vector_per_input_and_count_usage(client: httpx.Client) -> None:
    import base64
    import struct

    from local.simulator import EMBEDDING_DIM

    one = client.post("/v1/embeddings", json={"model": "vllm-simulator", "input": "Hello, world"})
    assert one.status_code == 200, one.text
    reply = one.json()
    assert reply["object"] == "list" and reply["model"] == "vllm-simulator"
    [item] = reply["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == EMBEDDING_DIM and all(isinstance(x, float) for x in item["embedding"])
    assert abs(sum(x * x for x in item["embedding"]) - 1) < 1e-4  # a unit vector, as vLLM normalizes
    assert reply["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # "Hello", ",", "world"
    # Same input, same vector; a list is one vector per input, in order; token ids count one each.
    many = client.post("/v1/embeddings", json={"model": "vllm-simulator",
                                               "input": ["a b", "Hello, world", "c"]}).json()
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    assert many["data"][1]["embedding"] == item["embedding"] != many["data"][0]["embedding"]
    assert many["usage"] == {"prompt_tokens": 2 + 3 + 1, "total_tokens": 6}
    tokens = client.post("/v1/embeddings", json={"model": "vllm-simulator", "input": [[1, 2, 3], [4]]}).json()
    assert len(tokens["data"]) == 2 and tokens["usage"]["total_tokens"] == 4
    assert client.post("/v1/embeddings", json={"model": "vllm-simulator", "input": [7, 8]}).json()["usage"] == {
        "prompt_tokens": 2, "total_tokens": 2}  # one tokenized input
    # OpenAI's SDKs ask for base64 (little-endian float32) by default.
    packed = client.post("/v1/embeddings", json={"model": "vllm-simulator", "input": "Hello, world",
                                                 "encoding_format": "base64"}).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{EMBEDDING_DIM}f", base64.b64decode(packed))
    assert all(abs(a - b) < 1e-6 for a, b in zip(decoded, item["embedding"], strict=True))


def test_responses_answer_whole_and_streamed_with_the_same_usage(client: httpx.Client) -> None:
    body = {"model": "vllm-simulator", "input": "Hello, world", "max_output_tokens": 5}
    whole = client.post("/v1/responses", json=body)
    assert whole.status_code == 200, whole.text
    reply = whole.json()
    assert reply["object"] == "response" and reply["id"].startswith("resp_") and reply["model"] == "vllm-simulator"
    # Stopped by max_output_tokens, as every simulated reply is.
    assert reply["status"] == "incomplete" and reply["incomplete_details"] == {"reason": "max_output_tokens"}
    [message] = reply["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    [part] = message["content"]
    assert part["type"] == "output_text" and count_tokens(part["text"]) == 5
    # "Hello, world" as a user message: 3 tokens + 2 for the message, as in chat.
    assert reply["usage"]["input_tokens"] == 5 and reply["usage"]["output_tokens"] == 5
    assert reply["usage"]["total_tokens"] == 10
    # Instructions and a list of input items count as messages.
    listed = client.post("/v1/responses", json={
        "model": "vllm-simulator", "instructions": "Be brief", "max_output_tokens": 2,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello, world"}]}]}).json()
    assert listed["usage"] == {**listed["usage"], "input_tokens": (2 + 2) + (3 + 2), "output_tokens": 2,
                               "total_tokens": 11}
    assert client.post("/v1/responses", json={"model": "vllm-simulator", "input": "Hi"}).json()["usage"][
        "output_tokens"] == 16  # the simulator's default length

    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    kinds = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert kinds == [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) == 5 and "".join(deltas) == part["text"] == events[-4]["text"]
    # The usage comes once, in the final event (the first snapshots carry none).
    assert events[0]["response"]["usage"] is None
    assert events[-1]["response"]["usage"] == reply["usage"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"max_tokens": 5}),
    ("/v1/chat/completions", {"messages": None}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": "Hello"}),
    ("/v1/completions", {"max_tokens": 5}),
    ("/v1/completions", {"prompt": 7}),
    ("/v1/completions", {"prompt": []}),
    ("/v1/embeddings", {}),
    ("/v1/embeddings", {"input": []}),
    ("/v1/embeddings", {"input": [{"text": "a"}]}),
    ("/v1/responses", {"max_output_tokens": 5}),
    ("/v1/responses", {"input": []}),
    ("/v1/responses", {"input": ["not an item"]}),
], ids=lambda value: value if isinstance(value, str) else json.dumps(value))
def test_a_call_without_what_it_is_about_is_a_400_like_vllm(client: httpx.Client, path: str,
                                                           body: dict[str, object]) -> None:
    # vLLM refuses these (it used to answer a chat call without messages 200, prompt_tokens 0).
    refused = client.post(path, json={"model": "vllm-simulator", **body})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error"
    member = "messages" if path.endswith("chat/completions") else "prompt" if path == "/v1/completions" else "input"
    assert f"'{member}'" in error["message"], error
