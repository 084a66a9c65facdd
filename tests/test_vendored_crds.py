"""The repository carries the upstream schemas its tests need, trimmed without changing meaning."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import crds
from tools.vendor_crds import strip_descriptions, trim_crd, vendor

ROOT = Path(__file__).resolve().parent.parent


def test_the_schemas_come_from_inside_the_repository() -> None:
    if os.environ.get(crds.CRDS_DIR_ENV):
        pytest.skip(f"{crds.CRDS_DIR_ENV} points elsewhere on purpose")
    assert crds.crds_dir() == ROOT / "tests" / "crds"
    assert crds.crds_dir().resolve().is_relative_to(ROOT)


def test_every_vendored_file_is_listed_with_its_source_and_licence() -> None:
    readme = (ROOT / "tests" / "crds" / "README.md").read_text()
    files = sorted(p.name for p in (ROOT / "tests" / "crds").iterdir() if p.name != "README.md")
    assert files, "no vendored schemas"
    for name in files:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, f"{name} is not in tests/crds/README.md"
        assert "Apache-2.0" in row and "github" in readme


def test_the_kinds_we_render_all_have_a_schema() -> None:
    kinds = crds.known_kinds()
    for wanted in [
        ("kuadrant.io/v1", "AuthPolicy"),
        ("kuadrant.io/v1alpha1", "TokenRateLimitPolicy"),
        ("extensions.kuadrant.io/v1alpha1", "TelemetryPolicy"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("serving.knative.dev/v1", "Service"),
        ("eventing.knative.dev/v1", "Trigger"),
        ("sources.knative.dev/v1", "PingSource"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    ]:
        assert wanted in kinds, f"no schema for {wanted}"


def test_stripping_keeps_a_property_named_description() -> None:
    schema = {
        "type": "object",
        "description": "prose",
        "properties": {
            "description": {"type": "string", "description": "the field's own prose"},
            "size": {"type": "integer", "minimum": 1, "description": "x"},
        },
    }
    assert strip_descriptions(schema) == {
        "type": "object",
        "properties": {"description": {"type": "string"}, "size": {"type": "integer", "minimum": 1}},
    }


def test_trimming_drops_unserved_versions_and_keeps_validation_rules() -> None:
    rule = {"rule": "self.a < self.b", "message": "a before b"}
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com", "uid": "x", "annotations": {"v": "1"}},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Thing"},
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {
                    "type": "object", "description": "d", "x-kubernetes-validations": [rule]}}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}},
            ],
        },
    }
    trimmed = trim_crd(crd)
    assert [v["name"] for v in trimmed["spec"]["versions"]] == ["v1"]
    assert trimmed["spec"]["versions"][0]["schema"]["openAPIV3Schema"] == {
        "type": "object", "x-kubernetes-validations": [rule]}
    assert trimmed["metadata"] == {"name": "things.example.com", "annotations": {"v": "1"}}


def test_vendoring_a_folder_records_the_upstream_digest(tmp_path: Path) -> None:
    source, out = tmp_path / "upstream", tmp_path / "out"
    source.mkdir()
    raw = yaml.safe_dump({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Thing"}, "scope": "Namespaced",
                 "versions": [{"name": "v1", "served": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "description": "long"}}}]},
    }).encode()
    (source / "example.com_things.yaml").write_bytes(raw)
    vendor(source, out)
    text = (out / "example.com_things.yaml").read_text()
    assert hashlib.sha256(raw).hexdigest() in text and "long" not in text
    assert yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] == {"type": "object"}


def test_the_vendoring_command_explains_itself() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.vendor_crds", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "description" in done.stdout and "sha256" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "tools.vendor_crds", "/nonexistent"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: /nonexistent is not a folder")
