"""Waiting for something another thread or process does, bounded."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], timeout: float = 5.0, every: float = 0.05) -> bool:
    """Whether `check()` became true within `timeout` seconds (tried once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()
