"""A real Prometheus for tests: free 127.0.0.1 port, temp config and storage, 1 s scrapes.

Its targets are `host:port` of /metrics endpoints; the local gateway's is its metrics listener
(`GatewayService.metrics_url`, MAAS_METRICS_PORT), not the model port, which has no /metrics.

The binary comes from Debian's `prometheus` package (tools/ensure_prometheus.sh installs it;
`make test` calls that). Tests skip with the reason when it cannot be found.

Also two tiny exporters, so the Prometheus side can be tested without the gateway:
- UsageExporter serves Limitador's three usage series (`authorized_hits`, `authorized_calls`,
  `limited_calls`, no `_total`) in the shapes Limitador gives them under Kuadrant
  (tests/cluster/SOURCES.md 5 and 16): `model` on `authorized_hits` only, `limitador_namespace`
  (the HTTPRoute, `<ns>/<name>`) on every series.
- TextExporter serves whatever exposition text the test sets, byte for byte.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from tests.local_servers import free_port, installed  # noqa: F401 - free_port is theirs too

SCRAPE_INTERVAL_S = 1
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def prometheus_binary() -> str | None:
    return installed("prometheus")


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class Prometheus:
    binary: str
    workdir: Path
    targets: list[str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_within_s: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        targets = ", ".join(f"'{t}'" for t in self.targets)
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n"
            "  - job_name: maas\n"
            f"    static_configs:\n      - targets: [{targets}]\n",
            encoding="utf-8",
        )
        self.port = self.port or free_port()
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            # Ready is not enough: target discovery hands targets over after ~5 s.
            if _get(f"{self.url}/-/ready") == 200 and self.targets_up():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready or not scraping within {ready_within_s}s")

    def targets_up(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.url}/api/v1/targets", timeout=1.0) as response:
                active = json.loads(response.read())["data"]["activeTargets"]
        except (OSError, ValueError, KeyError):
            return False
        up = {t["labels"].get("instance") for t in active if t.get("health") == "up"}
        return set(self.targets) <= up

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def wait_for_scrapes(self, count: int = 2) -> None:
        """Let `count` scrape intervals pass (plus a margin), so the latest values are stored."""
        time.sleep(count * SCRAPE_INTERVAL_S + 0.3)


ROUTE = "llm/maas-models"  # limitador_namespace of series added without a route


@dataclass
class UsageExporter:
    """Serves authorized_hits / authorized_calls / limited_calls as Limitador shapes them.

    Tokens per (route, team, user, model); calls per (route, team, user), since Limitador's
    Check never sees the model. A series exists from its first add, as in Limitador.
    """

    port: int = 0
    tokens: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    authorized: dict[tuple[str, str, str], int] = field(default_factory=dict)
    limited: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: object | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, *, team: str, user: str, model: str, tokens: int = 0, authorized_calls: int = 0,
            limited_calls: int = 0, route: str = ROUTE) -> None:
        """Count some traffic; with no counts at all, create the three series at 0 (a start for
        `increase`), else a call series appears with its first call."""
        touch = not (tokens or authorized_calls or limited_calls)
        with self._lock:
            key = (route, team, user, model)
            self.tokens[key] = self.tokens.get(key, 0) + tokens
            for counts, n in ((self.authorized, authorized_calls), (self.limited, limited_calls)):
                if n or touch or (route, team, user) in counts:
                    counts[(route, team, user)] = counts.get((route, team, user), 0) + n

    def reset(self) -> None:
        """What a gateway restart looks like: every counter starts again from 0."""
        with self._lock:
            for counts in (self.tokens, self.authorized, self.limited):
                for key in counts:
                    counts[key] = 0  # type: ignore[index]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            tokens, authorized, limited = dict(self.tokens), dict(self.authorized), dict(self.limited)
        # As a "counter" prometheus_client would name it `_total`; Limitador's names have none.
        family = Metric("authorized_hits", "tokens per route, user, team and model", "unknown")
        for (route, team, user, model), value in sorted(tokens.items()):
            family.add_sample("authorized_hits", {"limitador_namespace": route, "user": user, "team": team,
                                                  "model": model}, value)
        yield family
        for name, counts in (("authorized_calls", authorized), ("limited_calls", limited)):
            family = Metric(name, f"{name} per route, user and team", "unknown")
            for (route, team, user), value in sorted(counts.items()):
                family.add_sample(name, {"limitador_namespace": route, "user": user, "team": team}, value)
            yield family

    def start(self) -> UsageExporter:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Adapter(self))
        self.port = self.port or free_port()
        server, _thread = start_http_server(self.port, addr="127.0.0.1", registry=registry)
        self._server = server
        return self

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            self._server = None


class TextExporter:
    """Serves `text` (Prometheus' text exposition format) at every path; `text` may change."""

    def __init__(self) -> None:
        self.text = ""
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TextExporter:
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = exporter.text.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Adapter(Collector):
    def __init__(self, exporter: UsageExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        yield from self._exporter.collect()


__all__ = ["ROUTE", "Prometheus", "TextExporter", "UsageExporter", "free_port", "prometheus_binary"]
