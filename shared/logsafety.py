"""Logs never hold a credential nor a client's control characters.

Paths, ids and exception messages are the client's, and a client may paste an API key into a
path (`DELETE /keys/maas_...`) or send escape sequences that rewrite an operator's terminal. So
every record is cleaned before any handler formats it: anything shaped like one of our keys
(`maas_...`, which the generated admin key shares) or like a credential after an
`Authorization` scheme is redacted, and control characters are escaped (`\\x1b`), in the message,
its arguments and a traceback's text.

`install()` cleans at the source (the record factory), so handlers added later (gunicorn's,
pytest's) get clean records too; `safe_handler()` is the stderr handler for `logging.basicConfig`.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any, TextIO

# The API key format of shared/keymaterial (`maas_` + 43 url-safe characters) and the admin
# key's (`maas_admin_` + 43); a cut-off key is still a secret, so 8 characters suffice.
KEY_SHAPED = re.compile(r"maas_[A-Za-z0-9_\-]{8,}")
REDACTED = "maas_[redacted]"
# A credential after its scheme, as in a pasted header; ADMIN_KEY may have any shape (16+ chars).
_AFTER_SCHEME = re.compile(r"\b(ADMIN|APIKEY|Bearer|BEARER|Basic|BASIC) +[^\s\"',;]{16,}")
# C0, DEL, C1, and the Unicode line and paragraph separators, which terminals and log viewers
# also act on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def redact(text: str) -> str:
    """`text` with anything key-shaped replaced; control characters left as they are."""
    return _AFTER_SCHEME.sub(lambda m: f"{m.group(1)} [redacted]", KEY_SHAPED.sub(REDACTED, text))


def clean(text: str) -> str:
    """One line of client-influenced text, safe to log or store: redacted and escaped."""
    return _CONTROL.sub(_escaped, redact(text))


def _clean_block(text: str) -> str:
    # A traceback is several lines by nature: keep its newlines, escape the rest.
    return _CONTROL_BUT_NEWLINES.sub(_escaped, redact(text))


_CLEANED = "_maas_cleaned"


def clean_record(record: logging.LogRecord) -> logging.LogRecord:
    """Clean `record` in place, once: its message is rendered with its arguments first, since an
    argument of any type (an exception, a dict) may carry the client's text."""
    if getattr(record, _CLEANED, False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must still be logged, cleaned
        message = f"{record.msg!s} {record.args!s}"
    record.msg, record.args = clean(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = _clean_block(record.exc_text)
    if record.stack_info:
        record.stack_info = _clean_block(record.stack_info)
    setattr(record, _CLEANED, True)
    return record


class RedactingFilter(logging.Filter):
    """Lets every record through, cleaned (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        clean_record(record)
        return True


def safe_handler(stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) that only ever writes cleaned records."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    return handler


_installed = threading.Lock()
_factory_wrapped: list[bool] = []


def install() -> None:
    """Clean every record of this process where it is made, and on the handlers that already
    exist (including `logging.lastResort`, which writes when nothing is configured). Idempotent."""
    with _installed:
        if not _factory_wrapped:
            made = logging.getLogRecordFactory()

            def cleaned_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
                return clean_record(made(*args, **kwargs))

            logging.setLogRecordFactory(cleaned_record)
            _factory_wrapped.append(True)
        handlers = list(logging.getLogger().handlers)
        for logger in list(logging.Logger.manager.loggerDict.values()):
            if isinstance(logger, logging.Logger):
                handlers.extend(logger.handlers)
        if logging.lastResort is not None:
            handlers.append(logging.lastResort)
        for handler in handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
