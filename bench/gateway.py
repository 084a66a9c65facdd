"""The gateway in its own process for the benchmark: `python -m bench.gateway DATA_DIR PORT MODELS`.

The parent prepared the store (a team with a limit no run can reach, and a key) in DATA_DIR, so
no key crosses a pipe or a command line. Prints "ready" once listening.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from local.gateway import GatewayService
from shared.settings import Settings


def main() -> None:
    data_dir, port, models = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    # Nothing scrapes the bench's gateway: its metrics listener takes any free port.
    settings = Settings(data_dir=data_dir, gateway_port=port, metrics_port=0, models_file=models)
    service = GatewayService(settings)
    service.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    service.stop()


if __name__ == "__main__":
    main()
