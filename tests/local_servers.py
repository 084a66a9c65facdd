"""What the harnesses of real servers (Prometheus, Redis) share: finding a Debian package's
binary and a free port on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path


def installed(name: str) -> str | None:
    """The binary's path: on PATH, or where Debian and a local install put it (tests may run
    with a PATH that lacks /usr/sbin-like directories)."""
    found = shutil.which(name)
    if found:
        return found
    return next((path for path in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if Path(path).is_file()), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
