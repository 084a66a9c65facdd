"""The models-file catalog: names and URLs from the file, readiness from a short-cached probe."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.catalog.base import ModelCatalog
from shared.catalog.filecatalog import FileModelCatalog, http_probe
from shared.catalog.listing import model_list, open_catalog, openai_model_list, visible
from shared.modelsfile import ModelBackend
from shared.settings import Settings
from shared.store.base import ApiKey
from tests.prometheus_harness import free_port


class _Backend(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits.append(self.headers.get("Authorization") or "")
        ok = self.path == "/v1/models"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"object":"list","data":[]}')

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def backend() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Backend", (_Backend,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_ready_comes_from_a_probe_cached_for_a_few_seconds(backend: tuple[str, list[str]]) -> None:
    url, hits = backend
    catalog = FileModelCatalog(
        [
            ModelBackend(name="b-model", url=f"{url}/v1", api_key="sk-upstream"),
            ModelBackend(name="a-dead", url=f"http://127.0.0.1:{free_port()}/v1"),
        ],
        created=1756849635,
        cache_s=0.5,
    )
    assert isinstance(catalog, ModelCatalog)
    first = catalog.list_models()
    assert [(m.name, m.namespace, m.url, m.ready) for m in first] == [
        ("a-dead", "local", first[0].url, False),
        ("b-model", "local", url, True),
    ]
    assert hits == ["Bearer sk-upstream"]
    catalog.list_openai_models()
    assert len(hits) == 1  # cached
    time.sleep(0.6)
    catalog.list_models()
    assert len(hits) == 2  # probed again once the cache expired


def test_a_silent_backend_costs_one_probe_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        backends = [ModelBackend(name=f"m{i}", url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1") for i in range(3)]
        catalog = FileModelCatalog(backends, created=0, probe_timeout_s=0.5)
        started = time.monotonic()
        assert [m.ready for m in catalog.list_models()] == [False, False, False]
        assert time.monotonic() - started < 1.5  # probed in parallel
    finally:
        listener.close()


def test_probe_refuses_non_2xx(backend: tuple[str, list[str]]) -> None:
    url, _ = backend
    assert http_probe(ModelBackend(name="x", url=f"{url}/v1"), 1.0)
    assert not http_probe(ModelBackend(name="x", url=f"{url}/other/v1"), 1.0)


def test_default_models_file_lists_the_simulators_models(tmp_path: Path) -> None:
    catalog = open_catalog(Settings(data_dir=tmp_path, simulator_port=free_port()))
    models = catalog.list_models()
    assert [m.name for m in models] == ["qwen3-0-6b-instruct", "vllm-simulator"]
    assert all(not m.ready and m.created > 0 for m in models)


def test_bodies_and_visibility(backend: tuple[str, list[str]]) -> None:
    url, _ = backend
    catalog = FileModelCatalog([ModelBackend(name="a", url=f"{url}/v1"), ModelBackend(name="b", url=f"{url}/v1")],
                               created=42)
    models = catalog.list_models()
    key = ApiKey(secret_name="apikey-u-t-00000000", key_sha256="0" * 64, team_id="t", user_id="u", user_email="",
                 role="member", status="active", created_at=datetime.now(timezone.utc),
                 models_allowed=("b",))
    assert [m.name for m in visible(models, None)] == ["a", "b"]
    assert [m.name for m in visible(models, key)] == ["b"]
    assert model_list(visible(models, key)).model_dump() == {
        "models": [{"name": "b", "namespace": "local", "url": url, "ready": True}]
    }
    assert openai_model_list(models).model_dump() == {
        "object": "list",
        "data": [{"id": "a", "created": 42, "object": "model", "owned_by": "local"},
                 {"id": "b", "created": 42, "object": "model", "owned_by": "local"}],
    }
