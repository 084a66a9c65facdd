"""The models file: the default points at the simulator; mistakes name the entry in one line;
edits are followed (the gateway over HTTP); replies carry the client's model name."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.backend import RequestReader
from local.gateway import GatewayService
from local.gateway.loopthread import LoopThread
from shared.modelsfile import ModelsFile, load_models_file
from shared.settings import Settings
from shared.store.base import Team
from shared.store.sqlite import SqliteStore
from tests.records import a_key
from tests.waiting import eventually


def test_default_file_serves_both_models_from_the_simulator_port() -> None:
    backends = load_models_file(None, simulator_port=8123)
    assert [(b.name, b.url) for b in backends] == [
        ("qwen3-0-6b-instruct", "http://127.0.0.1:8123/v1"),
        ("vllm-simulator", "http://127.0.0.1:8123/v1"),
    ]


def test_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - name: q\n    url: http://127.0.0.1:9/v1/\n    upstream_model: Qwen/Q\n    api_key: sk-1\n")
    [backend] = load_models_file(path)
    assert backend.url == "http://127.0.0.1:9/v1" and backend.served_model == "Qwen/Q"
    assert "sk-1" not in repr(backend)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: {}", "under 'models:'"),
        ("models:\n  - name: q\n    url: http://127.0.0.1:9/api\n", "entry 1 ('q'): url"),
        ("models:\n  - name: q\n", "entry 1 ('q'): url"),
        ("models:\n  - name: a\n    url: http://h/v1\n  - name: q\n", "entry 2 ('q'): url"),
        ("models:\n  - name: q\n    url: http://h/v1\n  - name: q\n    url: http://h/v1\n", "listed twice"),
        ("models:\n  - name: q\n    url: http://h/v1\n    colour: red\n", "colour"),
        ("models: [", "not valid YAML"),
    ],
)
def test_bad_files_raise_value_error_naming_the_entry(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="models file") as caught:
        load_models_file(path)
    assert fragment in str(caught.value)


def test_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_models_file(tmp_path / "absent.yaml")


def test_bad_files_are_one_line_and_never_echo_an_api_key(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    for text in ("models: [\n", "models:\n  - name: q\n    url: http://h/v1\n    api_key: [sk-secret-1]\n",
                 "models:\n  - name: q\n    url: ftp://h/v1\n    api_key: sk-secret-1\n"):
        path.write_text(text)
        with pytest.raises(ValueError) as caught:
            load_models_file(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and "sk-secret-1" not in message
        assert "Value error," not in message


# -- following the file: ModelsFile --------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """Replace the file's text so the change is visible to a stat even within one clock tick."""
    before = path.stat().st_size if path.exists() else -1
    path.write_text(text)
    if path.stat().st_size == before:  # same size: make sure the modification time moves
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_models_file_takes_good_edits_and_keeps_the_last_good_table(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - name: a\n    url: http://h/v1\n")
    models = ModelsFile(path)
    seen: list[list[str]] = []
    models.subscribe(lambda table: seen.append(table.names))
    assert models.table.names == ["a"] and not models.check()  # unchanged: nothing read

    _write(path, "models:\n  - name: a\n    url: http://h/v1\n  - name: b\n    url: http://h/v1\n")
    assert models.check() and models.table.names == ["a", "b"] and seen == [["a", "b"]]

    with caplog.at_level(logging.WARNING, logger="maas.models"):
        _write(path, "models:\n  - name: a\n")  # a bad edit: url missing
        assert not models.check() and not models.check()  # reported once, not per check
    assert models.table.names == ["a", "b"] and seen == [["a", "b"]]
    [record] = [r for r in caplog.records if r.name == "maas.models"]
    assert str(path) in record.getMessage() and "url" in record.getMessage() and "previous 2" in record.getMessage()
    assert record.exc_info is None and "\n" not in record.getMessage()

    _write(path, "models:\n  - name: c\n    url: http://h/v1\n")
    assert models.check() and models.table.names == ["c"] and seen[-1] == ["c"]


def test_models_file_watcher_thread_notices_an_edit_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - name: a\n    url: http://h/v1\n")
    models = ModelsFile(path, interval_s=0.2)
    changed = threading.Event()
    models.subscribe(lambda table: changed.set())
    models.start()
    try:
        replacement = tmp_path / "m.yaml.new"  # saved the way editors do: a new file renamed over
        replacement.write_text("models:\n  - name: b\n    url: http://h/v1\n")
        os.replace(replacement, path)
        assert changed.wait(3) and models.table.names == ["b"]
    finally:
        models.stop()


# -- the gateway over HTTP: edits picked up, replies under the client's name ---------------

UPSTREAM = "Qwen/Qwen3-0.6B"
CLIENT = "qwen-small"
TEAM = Team("t1", "t1", "", "t1", 10**9, "1h", "user", datetime.now(timezone.utc))
USAGE_TOTAL = 8
# The reply quotes a "model" member inside its text: it must arrive as written.
CONTENT = 'a JSON line: {"model": "Qwen/Qwen3-0.6B"}'


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Answering(RequestReader):
    """Answers under the name it was asked for, as vLLM does; a stream's events are each
    written in two pieces cut inside the `"model"` value, so they reach the gateway split."""

    asked: list[str]

    def on_request(self, body: bytes) -> None:
        if not body:  # the gateway's GET /v1/models, asking for the context: not a vLLM's answer
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        asyncio.get_running_loop().create_task(self._answer(json.loads(body)))

    async def _answer(self, request: dict[str, Any]) -> None:
        out = self.transport
        model = request["model"]
        type(self).asked.append(model)
        usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": USAGE_TOTAL}
        if request.get("stream") is not True:
            body = json.dumps({"id": "x", "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": CONTENT}, "finish_reason": "stop"}],
                "usage": usage}).encode()
            out.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                      % (len(body), body))
            return
        out.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        events = [{"id": "x", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": {"content": word}}]} for word in CONTENT.split(" ")]
        if request.get("stream_options", {}).get("include_usage") is True:
            events.append({"id": "x", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
        for event in events:
            data = b"data: " + json.dumps(event).encode() + b"\r\n\r\n"
            cut = data.index(b"Qwen3") if b"Qwen3" in data else len(data) // 2
            for piece in (data[:cut], data[cut:]):
                out.write(_chunk(piece))
                await asyncio.sleep(0.003)  # a read each
        out.write(_chunk(b"data: [DONE]\r\n\r\n") + b"0\r\n\r\n")


@pytest.fixture
def backend() -> Iterator[tuple[int, list[str]]]:
    asked: list[str] = []
    handler = type("Answering", (_Answering,), {"asked": asked})
    thread = LoopThread("answering-backend")
    thread.start()
    servers: list[asyncio.AbstractServer] = []

    async def listen() -> int:
        servers.append(await asyncio.get_running_loop().create_server(handler, "127.0.0.1", 0))
        return int(servers[0].sockets[0].getsockname()[1])

    async def close() -> None:
        servers[0].close()

    port = thread.call(listen)
    yield port, asked
    thread.stop(close)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "maas.db")
    store.create_team(team=TEAM)
    yield store
    store.close()


@pytest.fixture
def api_key(store: SqliteStore) -> str:
    key, value = a_key("t1", "alice")
    store.create_key(key=key, api_key=value)
    return value


def _gateway(tmp_path: Path, store: SqliteStore, models_text: str) -> tuple[GatewayService, Path]:
    path = tmp_path / "models.yaml"
    path.write_text(models_text)
    service = GatewayService(Settings(gateway_port=0, data_dir=tmp_path / "data", models_file=path), store)  # type: ignore[call-arg]
    service.start()
    return service, path


def _entry(name: str, port: int, upstream: str | None = None) -> str:
    text = f"  - name: {name}\n    url: http://127.0.0.1:{port}/v1\n"
    return text + (f"    upstream_model: {upstream}\n" if upstream else "")


def _chat(client: httpx.Client, model: str, **extra: object) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 5, **extra})


def _stream_events(client: httpx.Client, model: str) -> list[str]:
    with client.stream("POST", "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
    }) as response:
        assert response.status_code == 200
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_replies_carry_the_clients_model_name_not_the_backends(
    tmp_path: Path, store: SqliteStore, api_key: str, backend: tuple[int, list[str]]
) -> None:
    port, asked = backend
    gateway, _ = _gateway(tmp_path, store, "models:\n" + _entry(CLIENT, port, UPSTREAM))
    try:
        with httpx.Client(base_url=gateway.url, timeout=10, headers={"Authorization": f"APIKEY {api_key}"}) as http:
            for _ in range(2):  # the first on a new backend connection, the second on the kept-alive one
                reply = _chat(http, CLIENT)
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert body["model"] == CLIENT and body["choices"][0]["message"]["content"] == CONTENT
                assert int(reply.headers["Content-Length"]) == len(reply.content)
            for _ in range(2):
                events = _stream_events(http, CLIENT)
                assert events[-1] == "[DONE]"
                parsed = [json.loads(event) for event in events[:-1]]
                assert [event["model"] for event in parsed] == [CLIENT] * len(parsed)
                assert " ".join(e["choices"][0]["delta"]["content"] for e in parsed if e["choices"]) == CONTENT
                assert not any("usage" in event for event in parsed)  # not asked for: counted, not sent
        assert asked == [UPSTREAM] * 4  # the backend was asked under its own name
        assert gateway.limiter.state(team=TEAM, user_id="alice") == (4 * USAGE_TOTAL, 0)  # usage still counted
    finally:
        gateway.stop()


def test_gateway_follows_edits_to_the_models_file_and_keeps_serving_through_a_bad_one(
    tmp_path: Path, store: SqliteStore, api_key: str, backend: tuple[int, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, _ = backend
    gateway, path = _gateway(tmp_path, store, "models:\n" + _entry("first", port))
    try:
        with httpx.Client(base_url=gateway.url, timeout=10, headers={"Authorization": f"APIKEY {api_key}"}) as http:

            def listed() -> list[str]:
                return [m["id"] for m in http.get("/v1/models").json()["data"]]

            assert _chat(http, "first").status_code == 200
            assert _chat(http, "second").status_code == 404
            started = time.monotonic()
            _write(path, "models:\n" + _entry("first", port) + _entry("second", port, UPSTREAM))
            assert eventually(lambda: _chat(http, "second").status_code == 200)
            assert time.monotonic() - started < 3  # within the watcher's second, plus slack
            assert listed() == ["first", "second"]
            assert _chat(http, "second").json()["model"] == "second"  # renamed from the edit on

            with caplog.at_level(logging.WARNING, logger="maas.models"):
                _write(path, "models:\n  - name: first\n    url: http://127.0.0.1:1/api\n")  # no /v1
                assert eventually(lambda: any(r.name == "maas.models" for r in caplog.records))
                time.sleep(1.5)  # more ticks: still one line
            records = [r for r in caplog.records if r.name == "maas.models"]
            assert len(records) == 1 and str(path) in records[0].getMessage() and records[0].exc_info is None
            assert "/v1" in records[0].getMessage()
            assert _chat(http, "first").status_code == 200 and _chat(http, "second").status_code == 200
            assert listed() == ["first", "second"]

            _write(path, "models:\n" + _entry("second", port))  # fixed: only "second", not renamed
            assert eventually(lambda: _chat(http, "first").status_code == 404)
            assert listed() == ["second"]
            reply = _chat(http, "second")
            assert reply.status_code == 200 and reply.json()["model"] == "second"
    finally:
        gateway.stop()
