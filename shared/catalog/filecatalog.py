"""The one-machine ModelCatalog: the models file, each backend's readiness from a health probe.

`ready` is a `GET {backend}/models` answered 2xx within `probe_timeout_s`, cached for
`cache_s` per backend so listing models stays cheap and a dead backend costs one timeout per
cache period, not one per request. Backends are probed in parallel, so a listing takes at most
one probe timeout. The listed `url` is the backend's root (its OpenAI base URL without `/v1`),
the shape KServe reports in a cluster.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.catalog.base import ModelInfo
from shared.modelsfile import DEFAULT_MODELS_FILE, ModelBackend, ModelsFile, ModelsTable, load_models_file
from shared.settings import Settings

NAMESPACE = "local"
# Probes go straight to the backend, never through an environment proxy (as the gateway does).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Probe = Callable[[ModelBackend, float], bool]


def http_probe(backend: ModelBackend, timeout_s: float) -> bool:
    """True when the backend answers its OpenAI model list with 2xx in time."""
    request = urllib.request.Request(f"{backend.url}/models", method="GET")
    if backend.api_key is not None:
        request.add_header("Authorization", f"Bearer {backend.api_key.get_secret_value()}")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def describe(backends: list[ModelBackend], *, created: int,
             readiness: dict[str, bool] | None = None) -> list[ModelInfo]:
    """The models of a models file as the catalog lists them, sorted by name."""
    return [
        ModelInfo(
            name=backend.name,
            namespace=NAMESPACE,
            url=backend.url.removesuffix("/v1"),
            ready=True if readiness is None else readiness[backend.name],
            created=created,
            owned_by=NAMESPACE,
        )
        for backend in sorted(backends, key=lambda b: b.name)
    ]


def models_file_created(settings: Settings) -> int:
    """When the models file was last written: the models' `created` in the OpenAI listing."""
    path: Path = settings.models_file or DEFAULT_MODELS_FILE
    return int(path.stat().st_mtime)


class FileModelCatalog:
    def __init__(
        self,
        backends: list[ModelBackend],
        *,
        created: int,
        probe: Probe = http_probe,
        probe_timeout_s: float = 1.0,
        cache_s: float = 5.0,
    ) -> None:
        self._backends = backends
        self._created = created
        self._probe = probe
        self._probe_timeout_s = probe_timeout_s
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._ready: dict[str, tuple[float, bool]] = {}  # backend name -> (checked at, ready)

    @classmethod
    def from_settings(cls, settings: Settings, *, probe_timeout_s: float = 1.0,
                      cache_s: float = 5.0) -> FileModelCatalog:
        backends = load_models_file(settings.models_file, simulator_port=settings.simulator_port)
        return cls(backends, created=models_file_created(settings), probe_timeout_s=probe_timeout_s,
                   cache_s=cache_s)

    def list_models(self) -> list[ModelInfo]:
        return describe(self._backends, created=self._created, readiness=self._readiness())

    def list_openai_models(self) -> list[ModelInfo]:
        # On one machine every backend speaks OpenAI: both listings show the same models.
        return self.list_models()

    def _readiness(self) -> dict[str, bool]:
        now = time.monotonic()
        with self._lock:
            fresh = {
                name: ready for name, (at, ready) in self._ready.items() if now - at < self._cache_s
            }
        stale = [b for b in self._backends if b.name not in fresh]
        if stale:
            with ThreadPoolExecutor(max_workers=min(8, len(stale))) as pool:
                results = list(pool.map(lambda b: self._probe(b, self._probe_timeout_s), stale))
            checked = time.monotonic()
            with self._lock:
                for backend, ready in zip(stale, results, strict=True):
                    self._ready[backend.name] = (checked, ready)
                    fresh[backend.name] = ready
        return fresh


class FollowingCatalog:
    """The file catalog over a followed models file: each new table replaces it whole."""

    def __init__(self, models: ModelsFile) -> None:
        self._catalog = self._build(models.table)
        models.subscribe(self._use)

    @staticmethod
    def _build(table: ModelsTable) -> FileModelCatalog:
        return FileModelCatalog(list(table.backends), created=table.created)

    def _use(self, table: ModelsTable) -> None:
        self._catalog = self._build(table)  # one assignment: a listing sees one table or the next

    def list_models(self) -> list[ModelInfo]:
        return self._catalog.list_models()

    def list_openai_models(self) -> list[ModelInfo]:
        return self._catalog.list_openai_models()
