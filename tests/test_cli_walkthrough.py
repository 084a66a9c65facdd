"""A new user's mistakes with `maas` (found by a walkthrough of the README): each gets an answer
that says what to do, and each command's help says what it does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cli.client import _hint
from cli.exitcodes import CliError, ExitCode
from cli.main import app
from cli.session import Session
from tests.runtime import Runtime
from tests.test_cli import MAAS, Maas, admin, admin_key_of, runtime  # noqa: F401 (the fixtures, a runtime per module)


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_admin_key_creating_a_key_for_no_one_is_told_to_name_the_user(admin: Maas) -> None:  # noqa: F811
    admin("team", "create", "walk-a")
    ran = admin("key", "create", "walk-a")
    assert ran.code == 2, (ran.out, ran.err)
    assert "maas key create walk-a USER_ID" in ran.err and "ask a platform admin" not in ran.err, ran.err


def test_the_admin_key_listing_its_own_keys_is_pointed_at_team_and_user(admin: Maas) -> None:  # noqa: F811
    ran = admin("key", "list")
    assert ran.code == 2 and "--team" in ran.err and "--user" in ran.err, (ran.out, ran.err)


def test_team_show_lists_every_limit_and_the_keys_handles(admin: Maas) -> None:  # noqa: F811
    admin("team", "create", "walk-b", "--limit", "tokens=5000/1h", "--limit", "rpm=requests:60/1m")
    handle = admin("key", "create", "walk-b", "alice", "--json").json()["secret_name"]
    shown = admin("team", "show", "walk-b")
    assert shown.code == 0, shown.err
    assert handle in shown.out and "rpm" in shown.out and "alice" in shown.out, shown.out


def test_team_update_help_promises_no_defaults() -> None:
    # What a team is created with is no default of an update: leaving an option out keeps it.
    create_defaults = ("(default 100000)", "(default 1h)", "(default: the team id)", "budget (default)")
    assert all(shown in _help("team", "create") for shown in create_defaults)
    text = _help("team", "update")
    assert not [shown for shown in create_defaults if shown in text], text
    assert "keeps the team's current value" in text


@pytest.mark.parametrize(("command", "offered", "refused"), [
    (("usage", "user"), ("team", "model"), "user"),
    (("usage", "team"), ("user", "model"), "team"),
])
def test_usage_by_offers_only_what_the_command_accepts(command: tuple[str, ...], offered: tuple[str, ...],
                                                       refused: str) -> None:
    text = _help(*command)
    # The option's row, not the docstring's line that names --by too.
    by = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("--by"))
    assert all(value in by for value in offered) and f"|{refused}" not in by and f"{refused}|" not in by, by


def test_the_not_signed_in_hint_holds_a_command_that_pastes_whole(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["team", "list"], env={"XDG_CONFIG_HOME": str(tmp_path), "MAAS_URL": "https://127.0.0.1:9"})
    assert result.exit_code == 3, result.output
    assert "`maas login --url https://127.0.0.1:9 --admin-key`" in result.stderr, result.stderr


def test_a_403_to_the_admin_key_is_not_sent_to_a_platform_admin(admin: Maas,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The admin key has every right: its 403 says something else, in the API's own words.
    admin("team", "create", "walk-c")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(admin.config))
    monkeypatch.setenv("MAAS_DATA_DIR", str(admin.data_dir))
    with Session(url_flag=admin.url).api() as api, pytest.raises(CliError) as refused:
        api.call("POST", "/me/keys", json={"team_id": "walk-c"})
    assert refused.value.code is ExitCode.FORBIDDEN and "the admin key is no user" in refused.value.line()
    assert "ask a platform admin" not in refused.value.line()
    # Anyone else's 403 is about their roles still.
    assert "ask a platform admin" in _hint(403, admin.url, admin_key=False)


def test_the_admin_key_given_as_a_token_is_the_admin_key_still(runtime: Runtime, admin: Maas,  # noqa: F811
                                                               tmp_path: Path) -> None:
    maas = Maas(tmp_path / "config", runtime.admin_url, admin.data_dir)
    admin_key = admin_key_of(runtime)
    assert maas("login", "--token", input=admin_key).code == 0
    admin("team", "create", "walk-d")
    ran = maas("key", "create", "walk-d")
    assert ran.code == 2 and "maas key create walk-d USER_ID" in ran.err, ran.err
    assert not any(admin_key in text for text in maas.seen + admin.seen)


def test_team_show_lists_the_short_form_limit_too_and_json_is_the_answer(admin: Maas) -> None:  # noqa: F811
    admin("team", "create", "walk-e", "--token-limit", "777", "--time-window", "10m")
    shown = admin("team", "show", "walk-e")
    assert shown.code == 0, shown.err
    (row,) = [line.split() for line in shown.out.splitlines() if line.split()[:1] == ["tokens"]]
    assert row[:4] == ["tokens", "tokens", "777", "10m"], shown.out
    assert "no keys yet: maas key create walk-e USER_ID" in shown.err
    answer = admin("team", "show", "walk-e", "--json").json()
    assert answer["keys"] == [] and [rate["limit"] for rate in answer["limits"]] == [777]


@pytest.mark.parametrize(("command", "offered"), [
    ("usage user someone", ["team", "model"]),
    ("usage team some-team", ["user", "model"]),
    ("usage me", ["team", "model"]),
    ("usage platform", ["team", "user", "model"]),
])
def test_tab_after_by_offers_only_what_the_command_accepts(command: str, offered: list[str]) -> None:
    words = f"maas {command} --by "
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MAAS_")}
    done = subprocess.run([str(MAAS)], capture_output=True, text=True, timeout=30, env={
        **environment, "_MAAS_COMPLETE": "complete_bash", "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()))})
    assert done.stdout.split() == offered, done.stderr


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, child in getattr(command, "commands", {}).items():
        yield from _commands(child, [*path, name])


def _examples(text: str) -> list[str]:
    """The lines of a help's Examples: block, as written (a continued command's lines each)."""
    lines, found, inside = text.splitlines(), [], False
    for line in lines:
        if line.strip() == "Examples:":
            inside = True
        elif inside and line.startswith("  ") and line.strip():
            found.append(line.strip())
        else:
            inside = False
    return found


def test_no_example_is_split_at_80_columns() -> None:
    checked = 0
    for path, command in _commands(get_command(app), []):
        if path == ["cluster-check"]:
            continue  # tools/cluster_check.py's own help
        examples = _examples(f"{command.help or ''}\n\n{command.epilog or ''}")
        shown = {line.strip() for line in CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}).stdout.splitlines()}
        split = [example for example in examples if example not in shown]
        assert not split, f"maas {' '.join(path)} --help splits {split}"
        checked += len(examples)
    assert checked > 80
    # Not on a terminal, with no COLUMNS: rich's 80 columns too.
    environment = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "TERMINAL_WIDTH")}
    for command in ([], ["login"], ["team", "create"], ["key", "create"]):
        helped = subprocess.run([str(MAAS), *command, "--help"], capture_output=True, text=True, timeout=30, env=environment)
        lines = {line.strip() for line in helped.stdout.splitlines()}
        root = get_command(app)
        for name in command:
            root = root.commands[name]
        assert set(_examples(f"{root.help or ''}\n\n{root.epilog or ''}")) <= lines, helped.stdout
