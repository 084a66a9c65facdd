"""A pydantic ValidationError as the 422's `details`, in our words.

pydantic's errors name its own machinery: locations carry union branches and validator tags
(`user_email.function-after[_validate(), str]`), messages start with "Value error, " or quote
a regular expression, and its `type`s change between releases. A client needs the field, a
message it can act on, and a type it can branch on that we keep stable:

    missing       a required field is absent
    unexpected    a field the request does not take
    wrong_type    not a string / an integer / a list / ... (or not valid UTF-8 text)
    out_of_range  a number, a length or a count outside its bounds
    invalid       anything else: a format, a choice, a rule of ours (the message says which)
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypedDict

from pydantic import ValidationError

from shared.fields import PATTERN_MESSAGES

FieldErrorType = Literal["missing", "unexpected", "wrong_type", "out_of_range", "invalid"]


class FieldError(TypedDict):
    field: str
    message: str
    type: FieldErrorType


# A location part that names pydantic's machinery rather than a field: a union branch or a
# validator (`function-after[...]`, `literal['']`, `constrained-str`) or a bare type name.
_TAG = re.compile(r"[\[\]()'\- ,]")
_BARE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "tuple", "set", "none",
                        "datetime", "date", "time", "timedelta", "decimal", "uuid", "url", "json"})

_WRONG_TYPE = {
    "string_type": "must be a string",
    "string_unicode": "must be valid UTF-8 text",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "float_type": "must be a number",
    "datetime_type": "must be an RFC 3339 date-time with an offset, e.g. 2025-08-25T00:00:00Z",
}


def _count(number: object, noun: str) -> str:
    """'1 character', '3 characters'."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"

def _kind(error_type: str) -> FieldErrorType:
    if error_type == "missing":
        return "missing"
    if error_type == "extra_forbidden":
        return "unexpected"
    if error_type in _WRONG_TYPE or error_type.endswith("_type"):
        return "wrong_type"
    if error_type.startswith(("greater_than", "less_than")) or error_type in (
            "too_short", "too_long", "string_too_short", "string_too_long", "finite_number"):
        return "out_of_range"
    return "invalid"


def _message(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    if kind in _WRONG_TYPE:
        return _WRONG_TYPE[kind]
    if kind == "string_pattern_mismatch":
        return PATTERN_MESSAGES.get(str(ctx.get("pattern")), "has the wrong format")
    if kind == "string_too_short":
        return "may not be empty" if ctx.get("min_length") == 1 else f"must be at least {_count(ctx.get('min_length'), 'character')}"
    if kind == "string_too_long":
        return f"may be at most {_count(ctx.get('max_length'), 'character')}"
    if kind == "too_short":
        return f"must have at least {_count(ctx.get('min_length'), 'item')}"
    if kind == "too_long":
        return f"may have at most {_count(ctx.get('max_length'), 'item')}"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {ctx.get(name)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("datetime_parsing", "datetime_from_date_parsing", "timezone_aware"):
        return "must be an RFC 3339 date-time with an offset, e.g. 2025-08-25T00:00:00Z"
    message = str(error["msg"])
    # Our own validators' ValueErrors (and assertions) speak for themselves, minus pydantic's prefix.
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message


def _location(loc: tuple[int | str, ...], prefix: tuple[str, ...], fallback: str) -> str:
    parts = [str(part) for index, part in enumerate(loc)
             if isinstance(part, int) or index == 0 or not (_TAG.search(part) or part in _BARE_TAGS)]
    return ".".join((*prefix, *parts)) or fallback


def field_errors(exc: ValidationError, prefix: tuple[str, ...] = (), fallback: str = "body") -> list[FieldError]:
    """One detail per field (a union's branches are one field: its first reason is kept)."""
    details: dict[str, FieldError] = {}
    for error in exc.errors(include_url=False, include_input=False):
        field = _location(error["loc"], prefix, fallback)
        if field not in details:
            details[field] = FieldError(field=field, message=_message(error), type=_kind(error["type"]))
    return list(details.values())


def invalid_field(field: str, message: str, kind: FieldErrorType = "invalid") -> FieldError:
    return FieldError(field=field, message=message, type=kind)
