"""The layers hold: the core imports no web framework and nothing above it; each backend's
client library is imported by its adapter alone; only shared/settings.py reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEB = ("flask", "werkzeug", "functions_framework", "aiohttp", "httptools", "uvloop", "starlette", "uvicorn")

# (who, what it must not import, the only files allowed to)
RULES: list[tuple[str, tuple[str, ...], set[str]]] = [
    ("shared", WEB + ("local", "functions", "main"), set()),
    ("functions", ("local",), set()),
    ("shared functions local", ("kubernetes",), {"shared/store/kube.py", "shared/kubeapply.py", "shared/kubeidentity.py"}),
    ("shared functions local", ("prometheus_api_client",), {"shared/usage/prometheus.py"}),
    # The command line is a client of the admin API over HTTP, like any other: none of the server
    # is in it, but for `maas serve` (the local runtime), `maas cluster-check` (its tool) and
    # `maas policy render` (shared/policies.py, pure), and the key format's one constant
    # (shared/keymaterial.py KEY_PREFIX: `maas key delete` tells a key from a handle by it), and
    # the SPEC form of a rate that the console's forms take too (shared/ratespec.py, pure).
    ("cli", WEB + ("functions", "main", "kubernetes", "prometheus_api_client"), set()),
    ("cli", ("local",), {"cli/serve.py"}),
    ("cli", ("tools",), {"cli/cluster.py"}),
    ("cli", ("shared",), {"cli/policy.py", "cli/keys.py", "cli/limits.py"}),
]


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _files(folders: str) -> list[Path]:
    return [path for folder in folders.split() for path in sorted((REPO / folder).rglob("*.py"))]


@pytest.mark.parametrize(("folders", "forbidden", "allowed"), RULES, ids=[f"{r[0]}:{r[1][0]}" for r in RULES])
def test_imports_follow_the_layers(folders: str, forbidden: tuple[str, ...], allowed: set[str]) -> None:
    offenders = []
    for path in _files(folders):
        relative = path.relative_to(REPO).as_posix()
        if relative in allowed:
            continue
        for name in _imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                offenders.append(f"{relative} imports {name}")
    assert offenders == []


def test_only_settings_reads_the_environment() -> None:
    offenders = []
    for path in _files("shared functions local"):
        relative = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if relative != "shared/settings.py" and ("os.environ" in text or "os.getenv" in text):
            offenders.append(relative)
    assert offenders == []


def test_the_rules_can_catch_an_offender(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import flask\nfrom kubernetes.client import ApiClient\n")
    assert {"flask", "kubernetes.client"} <= _imports(sample)
