"""Asking the person at the terminal: confirmation before a delete, and secrets read without echo.

Without a terminal nobody can answer, so a delete without --yes is refused rather than assumed.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli.exitcodes import CliError, ExitCode

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")]


def confirm(question: str, *, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"not confirmed: {question.rstrip('?')}", ExitCode.USAGE,
                       hint="pass --yes to confirm (there is no terminal to ask on)")
    if not typer.confirm(question, default=False, err=True):
        raise CliError("not done: you said no", ExitCode.API_ERROR)


def read_secret(what: str) -> str | None:
    """A secret piped on stdin (`maas login --token < file`), or typed at a hidden prompt; never
    taken from the command line, where `ps` and the shell's history would show it."""
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        return piped or None
    typed: str = typer.prompt(what, hide_input=True, err=True)
    return typed.strip() or None
