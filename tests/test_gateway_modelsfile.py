"""The models file: the default points at the simulator; mistakes name the entry in one line;
edits are followed, and a bad edit keeps the last good table."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from shared.modelsfile import ModelsFile, load_models_file


def test_default_file_serves_both_models_from_the_simulator_port() -> None:
    backends = load_models_file(None, simulator_port=8123)
    assert [(b.name, b.url) for b in backends] == [
        ("qwen3-0-6b-instruct", "http://127.0.0.1:8123/v1"),
        ("vllm-simulator", "http://127.0.0.1:8123/v1"),
    ]


def test_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - name: q\n    url: http://127.0.0.1:9/v1/\n    upstream_model: Qwen/Q\n    api_key: sk-1\n")
    [backend] = load_models_file(path)
    assert backend.url == "http://127.0.0.1:9/v1" and backend.served_model == "Qwen/Q"
    assert "sk-1" not in repr(backend)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: {}", "under 'models:'"),
        ("models:\n  - name: q\n    url: http://127.0.0.1:9/api\n", "entry 0 ('q'): url"),
        ("models:\n  - name: q\n", "entry 0 ('q'): url"),
        ("models:\n  - name: q\n    url: http://h/v1\n  - name: q\n    url: http://h/v1\n", "listed twice"),
        ("models:\n  - name: q\n    url: http://h/v1\n    colour: red\n", "colour"),
        ("models: [", "not valid YAML"),
    ],
)
def test_bad_files_raise_value_error_naming_the_entry(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="models file") as caught:
        load_models_file(path)
    assert fragment in str(caught.value)


def test_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_models_file(tmp_path / "absent.yaml")


def test_bad_files_are_one_line_and_never_echo_an_api_key(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    for text in ("models: [\n", "models:\n  - name: q\n    url: http://h/v1\n    api_key: [sk-secret-1]\n",
                 "models:\n  - name: q\n    url: ftp://h/v1\n    api_key: sk-secret-1\n"):
        path.write_text(text)
        with pytest.raises(ValueError) as caught:
            load_models_file(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and "sk-secret-1" not in message
        assert "Value error," not in message


# -- following the file: ModelsFile --------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """Replace the file's text so the change is visible to a stat even within one clock tick."""
    before = path.stat().st_size if path.exists() else -1
    path.write_text(text)
    if path.stat().st_size == before:  # same size: make sure the modification time moves
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_models_file_takes_good_edits_and_keeps_the_last_good_table(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - name: a\n    url: http://h/v1\n")
    models = ModelsFile(path)
    seen: list[list[str]] = []
    models.subscribe(lambda table: seen.append(table.names))
    assert models.table.names == ["a"] and not models.check()  # unchanged: nothing read

    _write(path, "models:\n  - name: a\n    url: http://h/v1\n  - name: b\n    url: http://h/v1\n")
    assert models.check() and models.table.names == ["a", "b"] and seen == [["a", "b"]]

    with caplog.at_level(logging.WARNING, logger="maas.models"):
        _write(path, "models:\n  - name: a\n")  # a bad edit: url missing
        assert not models.check() and not models.check()  # reported once, not per check
    assert models.table.names == ["a", "b"] and seen == [["a", "b"]]
    [record] = [r for r in caplog.records if r.name == "maas.models"]
    assert str(path) in record.getMessage() and "url" in record.getMessage() and "previous 2" in record.getMessage()
    assert record.exc_info is None and "\n" not in record.getMessage()

    _write(path, "models:\n  - name: c\n    url: http://h/v1\n")
    assert models.check() and models.table.names == ["c"] and seen[-1] == ["c"]


def test_models_file_watcher_thread_notices_an_edit_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - name: a\n    url: http://h/v1\n")
    models = ModelsFile(path, interval_s=0.2)
    changed = threading.Event()
    models.subscribe(lambda table: changed.set())
    models.start()
    try:
        replacement = tmp_path / "m.yaml.new"  # saved the way editors do: a new file renamed over
        replacement.write_text("models:\n  - name: b\n    url: http://h/v1\n")
        os.replace(replacement, path)
        assert changed.wait(3) and models.table.names == ["b"]
    finally:
        models.stop()
