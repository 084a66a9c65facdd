"""What `maas` exits with, and the one error every command raises to say why it stopped.

Scripts branch on these, so each means one thing and none changes meaning later.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    API_ERROR = 1
    USAGE = 2
    NOT_SIGNED_IN = 3
    FORBIDDEN = 4
    NOT_FOUND = 5
    CONFLICT = 6
    UNAVAILABLE = 7


EXIT_CODES_HELP: tuple[tuple[ExitCode, str], ...] = (
    (ExitCode.OK, "done"),
    (ExitCode.API_ERROR, "the API refused it (a 4xx not below, e.g. 422), or you said no"),
    (ExitCode.USAGE, "usage: a bad flag or argument; a delete without --yes, no terminal"),
    (ExitCode.NOT_SIGNED_IN, "not signed in, or the credentials were refused (401)"),
    (ExitCode.FORBIDDEN, "signed in, but your role may not do this (403)"),
    (ExitCode.NOT_FOUND, "no such team, key, member or endpoint (404)"),
    (ExitCode.CONFLICT, "it exists already (409)"),
    (ExitCode.UNAVAILABLE, "the server failed (5xx) or is unreachable (network, TLS)"),
)

_BY_STATUS = {401: ExitCode.NOT_SIGNED_IN, 403: ExitCode.FORBIDDEN, 404: ExitCode.NOT_FOUND, 409: ExitCode.CONFLICT}


def for_status(status: int) -> ExitCode:
    if status >= 500:
        return ExitCode.UNAVAILABLE
    return _BY_STATUS.get(status, ExitCode.API_ERROR)


class CliError(Exception):
    """A failure to report in one line on stderr, with what to do about it, and an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.API_ERROR, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint

    def line(self) -> str:
        text = " ".join(self.message.split())  # one line, whatever the server sent
        return f"{text.rstrip('.')}: {self.hint}" if self.hint else text
