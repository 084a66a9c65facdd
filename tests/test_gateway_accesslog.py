"""One access line per gateway request, never holding a key (local/gateway/accesslog.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from local.gateway.accesslog import format_entry, shown_path
from tests.test_limits_hostile import MODEL, Setup, _chat, _post, make  # noqa: F401
from tests.waiting import eventually


def _lines(capsys: pytest.CaptureFixture[str], seen: list[str]) -> list[str]:
    """The access lines written so far, without their time stamp and logger prefix."""
    seen.extend(line.split(" INFO maas.access: ", 1)[1] for line in capsys.readouterr().err.splitlines()
                if " INFO maas.access: " in line)
    return seen


def test_every_request_gets_one_line_with_its_outcome_and_never_the_key(
    make: Callable[..., Setup], capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []
    setup = make(access_log=True)
    setup.team(token_limit=60)
    key = setup.key()
    url = setup.gateway.url
    assert _post(url, key, "/v1/chat/completions", _chat(max_tokens=60)).status_code == 200
    assert _post(url, key, "/v1/chat/completions", _chat(max_tokens=1)).status_code == 429
    assert _post(url, key + "x", "/v1/chat/completions", _chat()).status_code == 401
    assert _post(url, key, f"/{key}/%1b[31mred", _chat()).status_code == 404
    assert eventually(lambda: len(_lines(capsys, seen)) == 4, timeout=5)
    ok, limited, refused, missing = _lines(capsys, seen)
    assert ok.startswith("POST /v1/chat/completions 200 ") and f"model={MODEL}" in ok
    assert "team=t1 user=alice tokens=62 " in ok and " ms=" in ok
    assert limited.startswith("POST /v1/chat/completions 429 ") and "team=t1 user=alice tokens=0" in limited
    assert refused.startswith("POST /v1/chat/completions 401 ") and "team=- user=-" in refused
    assert missing.startswith("POST /maas_[redacted]/%1b[31mred 404 ")
    assert all(key not in line and key[5:] not in line for line in _lines(capsys, seen))


def test_lines_carry_the_time_in_the_other_logs_format() -> None:
    import io

    from local.gateway.accesslog import AccessLog

    stream = io.StringIO()
    access = AccessLog(stream=stream)
    access.record(b"GET", b"/health", 200, "", "", "", 0, time.monotonic())
    access._write(access._entries)  # noqa: SLF001 - the worker's part, run here
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO maas.access: GET /health 200 model=- "
                        r"team=- user=- tokens=0 ms=\d+\.\d\n", stream.getvalue())


def test_paths_are_cut_escaped_and_redacted() -> None:
    assert shown_path(b"/a" * 500).endswith("...") and len(shown_path(b"/a" * 500)) == 203
    assert shown_path(b"/keys/maas_abcdefgh12345678\n") == "/keys/maas_[redacted]\\x0a"
    line = format_entry((b"GET", b"/health", 200, "", "", "", 0, 10.0), 10.0015)
    assert line == "GET /health 200 model=- team=- user=- tokens=0 ms=1.5"
