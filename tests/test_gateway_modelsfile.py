"""The models file: the default points at the simulator; mistakes name the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.modelsfile import load_models_file


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
