"""The process's one Context: built on first use from the environment, or installed.

A Knative Service runs one function per process and builds its Context from the environment
on first use, so targets that never touch the store (health, openapi) start cheaply. The local
runtime installs the Context it has already built, so every function shares one store.
"""

from __future__ import annotations

import threading

from shared.context import Context, build_context
from shared.settings import load_settings

_lock = threading.Lock()
_current: list[Context] = []


def context() -> Context:
    if _current:
        return _current[0]
    with _lock:
        if not _current:
            _current.append(build_context(load_settings()))
        return _current[0]


def install_context(ctx: Context) -> None:
    with _lock:
        _current[:] = [ctx]


def reset_context() -> None:
    """Close and forget the Context (tests, and the local runtime's shutdown)."""
    with _lock:
        for ctx in _current:
            ctx.close()
        _current.clear()
