"""`make clean` keeps data; `make reset` deletes it only when asked twice; bench writes nothing
that git tracks. Each runs the project's Makefile in a scratch folder, never in the checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

import bench.__main__ as bench_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.fail("make is needed (it is how the README says to run everything)")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for folder in (".venv/bin", "dist", ".maas/tls", "pkg/__pycache__"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / ".maas" / "maas.db").write_text("teams")
    (tmp_path / ".maas" / "admin-key").write_text("secret")
    return tmp_path


def make(project: Path, *args: str, answer: str | None = None, env: dict[str, str] | None = None):
    return subprocess.run(["make", "-s", *args], cwd=project, input=answer, capture_output=True,
                          text=True, timeout=60, env=env)


def test_clean_removes_what_can_be_rebuilt_and_keeps_the_data(project: Path) -> None:
    done = make(project, "clean")
    assert done.returncode == 0, done.stderr
    assert not (project / ".venv").exists() and not (project / "dist").exists()
    assert not (project / "pkg" / "__pycache__").exists()
    assert (project / ".maas" / "maas.db").read_text() == "teams"
    assert (project / ".maas" / "admin-key").exists()


@pytest.mark.parametrize("answer", ["", "no\n", "yes\n", "y\n"])
def test_reset_keeps_the_data_unless_told_yes(project: Path, answer: str) -> None:
    done = make(project, "reset", answer=answer)
    assert done.returncode != 0
    assert "not deleted" in done.stdout and "Type YES" in done.stdout
    assert (project / ".maas" / "maas.db").exists()


def test_reset_deletes_after_yes_or_with_yes_1(project: Path) -> None:
    done = make(project, "reset", answer="YES\n")
    assert done.returncode == 0 and not (project / ".maas").exists()
    (project / ".maas").mkdir()
    done = make(project, "reset", "YES=1")
    assert done.returncode == 0 and not (project / ".maas").exists()
    assert (project / "Makefile").exists()
    again = make(project, "reset", "YES=1")
    assert again.returncode == 0 and "nothing to delete" in again.stdout


def test_reset_follows_maas_data_dir(project: Path) -> None:
    elsewhere = project / "data"
    elsewhere.mkdir()
    done = make(project, "reset", "YES=1", f"MAAS_DATA_DIR={elsewhere}")
    assert done.returncode == 0 and not elsewhere.exists()
    assert (project / ".maas").exists()


def test_every_target_has_help(project: Path) -> None:
    listed = make(project, "help").stdout
    targets = re.findall(r"^([a-z][a-z-]*):(?!=)", (ROOT / "Makefile").read_text(), re.M)
    assert {"run", "test", "clean", "reset"} <= set(targets)
    for target in targets:
        assert f"make {target} " in listed, f"{target} has no help line"


def test_bench_reports_go_to_an_ignored_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench_main.RESULTS_DIR == ROOT / "bench" / "results"
    monkeypatch.setattr(bench_main, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(bench_main, "ROOT", tmp_path)
    bench_main._write_results(datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc), ["c=1 plain 1 rps"])
    assert (tmp_path / "results" / "20261201T120000Z.md").read_text().endswith("c=1 plain 1 rps\n```\n")
    assert (tmp_path / "results" / "latest.md").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "bench/results/x.md"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, "bench/results/ must be ignored by git"
