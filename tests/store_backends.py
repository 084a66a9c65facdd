"""Every Store backend, by name, for the contract suite (tests/test_store_contract.py).

Each factory is a context manager taking a scratch directory and yielding a fresh, empty store.
A new backend joins the contract suite by adding one entry to BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from shared.store.base import Store
from shared.store.sqlite import SqliteStore


@contextmanager
def sqlite_store(scratch: Path) -> Iterator[Store]:
    store = SqliteStore(scratch / "maas.db")
    try:
        yield store
    finally:
        store.close()


BACKENDS: dict[str, Callable[[Path], AbstractContextManager[Store]]] = {
    "sqlite": sqlite_store,
}
