"""Shared fixtures. Every test starts from an environment without MAAS_* settings and with no
installed Context, so no test sees another's configuration or store."""

from __future__ import annotations

import ast
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from functions._context import install_context, reset_context
from shared.context import Context, build_context
from shared.keymaterial import generate_admin_key
from shared.settings import Settings
from tests.records import ManualClock

_OWN_VARIABLES = ("ADMIN_KEY", "PROMETHEUS_URL", "NAMESPACE", "FUNCTION_TARGET")


def _serialise_ast_parse() -> None:
    """CPython 3.11.7 keeps the AST constructor's recursion depth in state its threads share.
    Two parses at once (hypothesis describing a lambda while a server thread prints a traceback,
    which 3.11 parses to place its carets) raise "AST constructor recursion depth mismatch": it
    failed CI in the schemathesis run. One parse at a time in the test process avoids it."""
    parse = ast.parse
    lock = threading.RLock()

    def parse_alone(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            return parse(*args, **kwargs)

    ast.parse = parse_alone  # type: ignore[assignment]


_serialise_ast_parse()


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MAAS_") or name in _OWN_VARIABLES:
            monkeypatch.delenv(name)
    # A gateway built in a test without naming a metrics port must not take 8002, which a
    # `make run` on this machine may hold: any free port.
    monkeypatch.setenv("MAAS_METRICS_PORT", "0")
    # Access lines are written by a timer, often after the test that caused them: off unless a
    # test turns them on (tests/test_gateway_accesslog.py), or they land among other tests' output.
    monkeypatch.setenv("MAAS_ACCESS_LOG", "false")
    yield
    reset_context()


@pytest.fixture
def admin_key() -> str:
    return generate_admin_key()


@pytest.fixture
def settings(tmp_path: Path, admin_key: str) -> Settings:
    return Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / "data")


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    """An embedded Context installed for the functions, on a fresh SQLite file."""
    context = build_context(settings)
    install_context(context)
    yield context


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clocked_ctx(settings: Settings, clock: ManualClock) -> Iterator[Context]:
    """An embedded Context on the test's clock, installed for the functions."""
    context = build_context(settings)
    context.clock = clock
    install_context(context)
    yield context
