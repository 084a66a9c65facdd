"""The user-facing contract: our quickstart (docs/quickstart.md) pasted as it is into bash
against `make run` (python -m local serve), and so is the original key manager's quickstart
when it is beside the repository (../shared/seed/key-manager-quickstart.md, or
MAAS_SEED_QUICKSTART).

The steps' commands are read from the documents themselves, so the test follows them; the
example outputs shown there are the shapes our answers must carry. For the original, every
field name and nesting it shows; for ours, exactly the fields we answer, so the page stays true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.runtime import ROOT, start_runtime

OURS = ROOT / "docs" / "quickstart.md"
SEED = Path(os.environ.get("MAAS_SEED_QUICKSTART") or ROOT.parent / "shared" / "seed" / "key-manager-quickstart.md")
_STEP = re.compile(r"^### (\d+)\. (.+)$", re.M)
_SETUP = re.compile(r"^## Setup$", re.M)
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def steps(document: Path) -> dict[int, tuple[list[str], list[Any]]]:
    """Step number -> (bash blocks, example JSON outputs), in document order."""
    text = document.read_text()
    heads = list(_STEP.finditer(text))
    found: dict[int, tuple[list[str], list[Any]]] = {}
    for head, nxt in zip(heads, [*heads[1:], None]):
        body = text[head.end(): nxt.start() if nxt else len(text)]
        commands, examples = [], []
        for fence in _FENCE.finditer(body):
            lang, content = fence.group(1), fence.group(2)
            if lang == "bash":
                commands.append(content)
            else:
                try:
                    examples.append(json.loads(content))
                except ValueError:
                    pass
        found[int(head.group(1))] = (commands, examples)
    return found


def setup_blocks(document: Path) -> list[str]:
    """The bash blocks of the document's Setup section."""
    text = document.read_text()
    setup = _SETUP.search(text)
    assert setup, f"{document} has no '## Setup' section"
    end = _STEP.search(text, setup.end())
    section = text[setup.end(): end.start() if end else len(text)]
    section = section[: section.find("\n## ")] if "\n## " in section else section
    return [fence.group(2) for fence in _FENCE.finditer(section) if fence.group(1) == "bash"]


def json_documents(text: str) -> list[Any]:
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        start = min((i for i in (text.find("{", index), text.find("[", index)) if i >= 0), default=-1)
        if start < 0:
            break
        try:
            document, index = decoder.raw_decode(text, start)
            documents.append(document)
        except ValueError:
            index = start + 1
    return documents


def assert_shape(example: Any, actual: Any, where: str = "$", *, exact: bool = False) -> None:
    """Every field the quickstart shows is present in our answer, with the same nesting; with
    `exact`, our answer has no field the example leaves out either."""
    if isinstance(example, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        if exact:
            extra = sorted(set(actual) - set(example))
            assert not extra, f"{where}: the document does not show field(s) {extra}"
        for key, value in example.items():
            assert key in actual, f"{where}: missing field {key!r} (have {sorted(actual)})"
            assert_shape(value, actual[key], f"{where}.{key}", exact=exact)
    elif isinstance(example, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        if exact:
            # Our page shows whole answers: as many items as make run gives.
            assert len(actual) == len(example), f"{where}: {len(actual)} items, the document shows {len(example)}"
            for index, (shown, answered) in enumerate(zip(example, actual)):
                assert_shape(shown, answered, f"{where}[{index}]", exact=exact)
        elif example and actual:
            assert_shape(example[0], actual[0], f"{where}[0]", exact=exact)
    elif isinstance(example, bool):
        assert isinstance(actual, bool), f"{where}: expected a boolean, got {actual!r}"
    elif isinstance(example, (int, float)):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r}"
    elif isinstance(example, str):
        assert isinstance(actual, str), f"{where}: expected a string, got {actual!r}"


DOCUMENTS = [pytest.param(OURS, id="docs-quickstart")]
if SEED.is_file():
    # Only where it exists: a clone has nothing beside it, and that is no reason to skip.
    DOCUMENTS.append(pytest.param(SEED, id="original-quickstart-verbatim"))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_whole_quickstart_pasted_into_bash(document: Path, tmp_path: Path) -> None:
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool), f"{tool} is needed to paste the quickstart (make test installs it)"
    doc = steps(document)
    assert sorted(doc) == list(range(1, 14))
    ours = document == OURS

    # The folder a user runs `make run` in: the admin key and the certificate appear in .maas/.
    # Keys' last use written within 50 ms, not 5 s: step 9 shows step 3's however fast bash is.
    runtime = start_runtime(tmp_path / ".maas", env={"MAAS_LAST_USED_INTERVAL": "0.05"})
    try:
        gateway = runtime.urls["gateway"].removeprefix("http://")
        admin = runtime.admin_url.removeprefix("https://")
        if ours:
            # Our setup as written; only the ports differ, since tests take free ones.
            script = ["set -euo pipefail", *setup_blocks(document)]
        else:
            # The original finds its routes with `oc`; the three exports are its setup on one machine.
            script = [
                "set -euo pipefail",
                "export ADMIN_KEY=$(cat .maas/admin-key)",
                'export TEAM_ID="test-team"',
                'export USER_ID="test-user"',
                # Its step 13 calls the admin route without -k: trust the local certificate.
                "export CURL_CA_BUNDLE=$PWD/.maas/tls/cert.pem",
            ]
        script += [f"export KEY_MANAGER_ROUTE={admin}", f"export QWEN3_ROUTE={gateway}"]
        for number in sorted(doc):
            for block in doc[number][0]:
                script += [f"echo '@@step {number}@@'", block]
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        assert runtime.stop() == 0

    outputs: dict[int, list[Any]] = {}
    raw: dict[int, str] = {}
    for chunk in done.stdout.split("@@step ")[1:]:
        number_text, _, text = chunk.partition("@@")
        number = int(number_text)
        raw[number] = raw.get(number, "") + text
        outputs.setdefault(number, []).extend(json_documents(text))

    # The example outputs are the contract for field names and nesting.
    for number, (_, examples) in doc.items():
        if ours:
            assert len(examples) == len(outputs[number]), f"step {number}: shows {len(examples)} outputs"
        for index, example in enumerate(examples):
            assert index < len(outputs[number]), f"step {number}: no JSON answer for example {index}"
            assert_shape(example, outputs[number][index], f"step {number}", exact=ours)

    created = outputs[1][0]
    assert (created["team_id"], created["token_limit"], created["time_window"]) == ("test-team", 100000, "1h")
    if ours:
        api_key = outputs[2][0]["api_key"]
    else:
        found = re.search(r"API Key: (\S+)", raw[2])
        assert found, raw[2]
        api_key = found.group(1)
    assert api_key.startswith("maas_")

    reply = outputs[3][0]
    spent = reply["usage"]["total_tokens"]
    assert reply["choices"][0]["message"]["content"] and spent > 20

    assert (outputs[4][0]["token_limit"], outputs[4][0]["time_window"]) == (20, "1m")
    refused = outputs[5][0]["error"]
    assert refused["type"] == "rate_limit_error"  # the 20-token limit of step 5
    # The window step 3 began is now a minute long: refused for what is left of that minute, not
    # for the hour it began under.
    limit = refused["limit"]
    assert (limit["limit"], limit["window"]) == (20, "1m")
    assert 0 < limit["reset_seconds"] <= 60 and 0 < limit["retry_after_seconds"] <= 60, limit
    assert re.search(r"retry in (\d+) s$", refused["message"]) and int(refused["message"].split()[-2]) <= 60

    models, openai_models = outputs[6]
    assert {m["name"] for m in models["models"]} == {"qwen3-0-6b-instruct", "vllm-simulator"}
    assert all(m["ready"] for m in models["models"])
    assert "qwen3-0-6b-instruct" in {m["id"] for m in openai_models["data"]}

    team = next(t for t in outputs[7][0]["teams"] if t["team_id"] == "test-team")
    assert (team["key_count"], team["user_count"]) == (1, 1)
    assert outputs[8][0]["users"][0]["user_id"] == "test-user"
    assert outputs[9][0]["total_keys"] == 1 and outputs[9][0]["keys"][0]["status"] == "active"
    assert outputs[9][0]["keys"][0]["last_used_at"] is not None  # step 3's call
    assert outputs[10][0]["total_keys"] == 1 and outputs[10][0]["keys"][0]["team_id"] == "test-team"

    for usage in (outputs[11][0], outputs[12][0]):
        assert usage["total_token_usage"] == spent
        assert (usage["total_authorized_calls"], usage["total_limited_calls"]) == (1, 1)
    assert outputs[11][0]["team_breakdown"][0]["token_usage"] == spent
    assert outputs[12][0]["user_breakdown"][0]["user_email"] == "test-user@test.com"

    key_deleted, team_deleted = outputs[13]
    assert key_deleted["secret_name"].startswith("apikey-test-user-test-team-")
    assert (team_deleted["team_id"], team_deleted["keys_deleted"]) == ("test-team", 0)
    if ours:
        assert api_key not in runtime.text
