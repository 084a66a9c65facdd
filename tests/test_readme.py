"""The README is true: its quickstart session runs as written against `make run`, the banner it
shows is the one `make run` prints, and the commands and settings it names exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.runtime import ROOT, start_runtime
from tests.test_quickstart import json_documents

README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start: end if end >= 0 else len(text)]


def fences(text: str, lang: str) -> list[str]:
    return [f.group(2) for f in _FENCE.finditer(text) if f.group(1) == lang]


def test_the_readme_session_runs_as_written(tmp_path: Path) -> None:
    setup, session = fences(section("Try it"), "bash")
    runtime = start_runtime(tmp_path / ".maas")
    try:
        admin = runtime.admin_url.removeprefix("https://")
        gateway = runtime.urls["gateway"].removeprefix("http://")
        script = "\n".join(["set -euo pipefail", setup,
                            # Only the ports differ from the README: tests take free ones.
                            f"export KEY_MANAGER_ROUTE={admin} QWEN3_ROUTE={gateway}", session])
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        assert runtime.stop() == 0
    answers = json_documents(done.stdout)
    assert answers[0]["team_id"] == "test-team" and answers[0]["token_limit"] == 100000
    completion = answers[1]
    assert completion["usage"]["total_tokens"] > 20
    assert answers[2]["token_limit"] == 20
    assert re.search(r"^HTTP/1\.1 429 ", done.stdout, re.M), "step 5 is not refused"
    assert re.search(r"^Retry-After: \d+", done.stdout, re.M | re.I)
    refusal = answers[3]
    assert refusal["error"]["type"] == "rate_limit_error"
    usage = [a for a in answers if "total_token_usage" in a]
    assert [u["total_limited_calls"] for u in usage] == [1, 1]
    assert answers[-2]["secret_name"].startswith("apikey-test-user-test-team-")
    assert answers[-1] == {**answers[-1], "team_id": "test-team", "keys_deleted": 0}
    # Nothing but step 2's answer carries the key, and step 2's answer goes into a variable.
    assert "maas_" not in done.stdout.replace("maas_admin", "")


def test_the_banner_shown_is_the_banner_printed(tmp_path: Path) -> None:
    shown = next(block for block in fences(section("Try it"), "") if block.startswith("MaaS key manager"))
    runtime = start_runtime(tmp_path / ".maas")
    assert runtime.stop() == 0
    label = re.compile(r"^  (\S+(?: \S+)?)\s{2,}")
    shown_labels = [m.group(1) for line in shown.splitlines() if (m := label.match(line))]
    printed = [m.group(1) for line in runtime.output if (m := label.match(line))]
    assert shown_labels == printed, "README's banner differs from make run's"
    assert shown.splitlines()[0].split(":")[0] == runtime.output[0].split(":")[0]


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    named = set(re.findall(r"`make (\w[\w-]*)", README.read_text()))
    assert {"run", "test", "clean", "reset"} <= named
    for target in named:
        assert re.search(rf"^{target}:", makefile, re.M), f"README names make {target}, which does not exist"


def test_every_setting_the_readme_lists_is_read() -> None:
    settings_source = (ROOT / "shared" / "settings.py").read_text().upper()
    for variable in re.findall(r"^\| `([A-Z][A-Z_]+)`", section("Configuration"), re.M):
        assert variable in settings_source, f"README lists {variable}, shared/settings.py does not read it"
    for variable in re.findall(r"`(MAAS_[A-Z_]+)`", section("Configuration")):
        assert variable in settings_source, variable


def test_no_document_points_outside_the_repository() -> None:
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text, f"{path.name} refers to ../shared"
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_every_models_file_field_is_documented() -> None:
    from shared.modelsfile import ModelBackend

    text = README.read_text()
    table = text[text.index("### The models file"):text.index("## Errors")]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert sorted(documented) == sorted(ModelBackend.model_fields), "README's models file table is not complete"


def test_the_settings_defaults_in_the_readme_are_those_python_m_local_help_shows() -> None:
    # Each row of the README's settings table that gives one backticked default per variable
    # is checked against the settings themselves, as `python -m local --help` shows them.
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "local", "--help"], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, check=True).stdout
    helped = dict(re.findall(r"^  ([A-Z][A-Z0-9_]+) .*?(?:\(default: ([^)]*)\))?$", shown, re.MULTILINE))
    checked = 0
    for row in re.findall(r"^\| (`[A-Z][^|]*) \| ([^|]*) \|", README.read_text(), re.MULTILINE):
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0])
        defaults = re.findall(r"`([^`]*)`", row[1])
        if len(names) != len(defaults) or not names:
            continue
        for name, default in zip(names, defaults):
            if name in helped and helped[name]:
                assert helped[name] == default, f"{name}: README says {default!r}, the settings {helped[name]!r}"
                checked += 1
    assert checked >= 15, checked
