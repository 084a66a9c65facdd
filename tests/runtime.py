"""Start `python -m local serve` as a real process on free ports and read its URLs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_URL_LINE = re.compile(r"^\s+(admin API|gateway|metrics|simulator)\s+(\S+)")


@dataclass
class Runtime:
    process: subprocess.Popen[str]
    urls: dict[str, str]
    output: list[str] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return self.urls["admin API"]

    @property
    def text(self) -> str:
        return "".join(self.output)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_runtime(data_dir: Path, *, env: dict[str, str] | None = None, timeout: float = 30) -> Runtime:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MAAS_") and key not in ("ADMIN_KEY", "PROMETHEUS_URL")
    }
    environment.update(
        {
            "MAAS_DATA_DIR": str(data_dir),
            "MAAS_ADMIN_PORT": "0",
            "MAAS_GATEWAY_PORT": "0",
            "MAAS_METRICS_PORT": "0",
            "MAAS_SIMULATOR_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    environment.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "serve"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    runtime = Runtime(process=process, urls={})
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            runtime.output.append(line)
            found = _URL_LINE.match(line)
            if found:
                runtime.urls[found.group(1)] = found.group(2)
            if line.startswith("Press Ctrl-C"):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"runtime did not start in {timeout}s:\n{runtime.text}")
    if process.poll() is not None or "admin API" not in runtime.urls:
        raise RuntimeError(f"runtime failed to start:\n{runtime.text}")
    return runtime
