"""An asyncio (uvloop) event loop in a daemon thread, driven from synchronous code.

The gateway and the simulator are asyncio servers, while `make run` and the tests are
synchronous: `start()` returns once the server listens, `stop()` once it has shut down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name} is not running")
        return self._loop

    def start(self) -> None:
        loop = uvloop.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                _cancel_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(factory(), self.loop).result(timeout)

    def stop(self, last: Callable[[], Awaitable[None]] | None = None, timeout: float = 30.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if last is not None:
                asyncio.run_coroutine_threadsafe(_await(last), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._loop = self._thread = None


async def _await(last: Callable[[], Awaitable[None]]) -> None:
    await last()


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What a server's stop left running (as asyncio.run does): cancelled, and run to its end
    so that its `finally` blocks run on the loop rather than never."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception in a task at the loop's stop",
                                         "exception": task.exception(), "task": task})
