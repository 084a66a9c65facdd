"""Every Store backend, by name, for the contract suite (tests/test_store_contract.py).

Each factory is a context manager taking a scratch directory and yielding a fresh, empty store.
A new backend joins the contract suite by adding one entry to BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from shared.store.base import Store
from shared.store.kube import KubernetesStore
from shared.store.sqlite import SqliteStore
from tests.kube_double import running_double


@contextmanager
def sqlite_store(scratch: Path) -> Iterator[Store]:
    store = SqliteStore(scratch / "maas.db")
    try:
        yield store
    finally:
        store.close()


@contextmanager
def kubernetes_store(scratch: Path) -> Iterator[Store]:
    """Secrets behind the real kubernetes client, served by the in-process API double."""
    del scratch  # the double keeps its state in memory
    with running_double() as (_, api_client):
        yield KubernetesStore(api_client, namespace="maas-test", key_selector="maas-api-key")


BACKENDS: dict[str, Callable[[Path], AbstractContextManager[Store]]] = {
    "sqlite": sqlite_store,
    "kubernetes": kubernetes_store,
}
