"""Copy upstream CRD schemas into tests/crds/, trimmed to what validation reads.

    python -m tools.vendor_crds SOURCE_DIR [--out tests/crds]

Upstream CRDs are mostly prose: the two KServe files alone are 4.7 MB, nearly all of it
`description` strings. Validation reads none of them, so they are dropped; everything else
(types, patterns, enums, defaults, `x-kubernetes-validations`) is kept as upstream wrote it.
Only served versions are kept. Each file gets a header naming where it came from, and the
sha256 of the upstream file it was made from, so the copy can be checked against its source.
`func_yaml-schema.json` (Knative func's schema for func.yaml) is copied as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "crds"
JSON_SCHEMAS = ("func_yaml-schema.json",)
COMPACT_ABOVE = 512 * 1024


def strip_descriptions(schema: Any, *, in_properties: bool = False) -> Any:
    """Drop every `description` annotation; a property that is *named* description stays."""
    if isinstance(schema, list):
        return [strip_descriptions(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description" and not in_properties and isinstance(value, str):
            continue
        out[key] = strip_descriptions(value, in_properties=key in ("properties", "patternProperties"))
    return out


def trim_crd(crd: dict[str, Any]) -> dict[str, Any]:
    spec = dict(crd["spec"])
    spec["versions"] = [
        {**version, "schema": strip_descriptions(version["schema"])}
        for version in spec["versions"]
        if version.get("served", True)
    ]
    for version in spec["versions"]:
        for column in version.get("additionalPrinterColumns", []):
            column.pop("description", None)
    metadata = {key: crd["metadata"][key] for key in ("name", "annotations", "labels") if key in crd["metadata"]}
    return {"apiVersion": crd["apiVersion"], "kind": crd["kind"], "metadata": metadata, "spec": spec}


def vendor(source: Path, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for path in sorted(source.glob("*.yaml")):
        raw = path.read_bytes()
        crds = [doc for doc in yaml.safe_load_all(raw) if doc and doc.get("kind") == "CustomResourceDefinition"]
        if not crds:
            continue
        header = (
            f"# Trimmed copy of an upstream CRD (tools/vendor_crds.py): descriptions and unserved\n"
            f"# versions removed, nothing else changed. Source and licence: tests/crds/README.md.\n"
            f"# upstream sha256: {hashlib.sha256(raw).hexdigest()}\n"
        )
        trimmed = [trim_crd(crd) for crd in crds]
        body = yaml.safe_dump_all(trimmed, sort_keys=False, width=120)
        if len(body) > COMPACT_ABOVE:
            # KServe's schemas nest pod specs ten levels deep: as YAML, indentation is most of the
            # file. JSON is YAML too, and the loader reads it the same way.
            body = "\n---\n".join(json.dumps(crd, separators=(",", ":")) for crd in trimmed) + "\n"
        (out / path.name).write_text(header + body)
        lines.append(f"{path.name}: {len(raw):,} -> {len(header) + len(body):,} bytes")
    for name in JSON_SCHEMAS:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
            lines.append(f"{name}: copied")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of upstream CRD YAML files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source} is not a folder", file=sys.stderr)
        return 2
    for line in vendor(args.source, args.out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
