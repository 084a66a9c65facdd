"""A new user's mistakes with `maas` (found by a walkthrough of the README): each gets an answer
that says what to do, and each command's help says what it does."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.test_cli import Maas, admin, runtime  # noqa: F401 (the fixtures, a runtime per module)


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
    by = next(line for line in text.splitlines() if "--by" in line)
    assert all(value in by for value in offered) and f"|{refused}" not in by and f"{refused}|" not in by, by


def test_the_not_signed_in_hint_holds_a_command_that_pastes_whole(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["team", "list"], env={"XDG_CONFIG_HOME": str(tmp_path), "MAAS_URL": "https://127.0.0.1:9"})
    assert result.exit_code == 3, result.output
    assert "`maas login --url https://127.0.0.1:9 --admin-key`" in result.stderr, result.stderr
