"""The gateway in its own process for the benchmark: `python -m bench.gateway DATA_DIR PORT MODELS [REDIS_URL]`.

The parent prepared the store (a team with a limit no run can reach, and a key) in DATA_DIR, so
no key crosses a pipe or a command line. With REDIS_URL, the token counters are kept there
(MAAS_REDIS_URL). The access log is on, as under `make run`. Prints "ready" once listening.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from local.gateway import GatewayService
from shared.settings import Settings


def main() -> None:
    data_dir, port, models = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    redis_url = sys.argv[4] if len(sys.argv) > 4 else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Nothing scrapes the bench's gateway: its metrics listener takes any free port.
    settings = Settings(data_dir=data_dir, gateway_port=port, metrics_port=0, models_file=models,  # type: ignore[call-arg]
                        redis_url=redis_url)
    service = GatewayService(settings)
    service.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    service.stop()


if __name__ == "__main__":
    main()
