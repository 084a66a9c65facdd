"""A rate as people type it: `NAME=[UNIT:]LIMIT/WINDOW[,scope=user|team][,model=M]`.

`maas team|key create --limit`, `maas limits simulate` and the console's rate forms take it,
and show rates back in it, so what an admin reads is what they can paste. It is only split into
the API's fields (RateSpec, KeyRateSpec) here: the API checks their values (names, windows, the
team's primary rate) and its 422 says what is wrong with them. Pure and standard-library only,
since the command line, a client of the API, imports it too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SPEC_SYNTAX = "NAME=[UNIT:]LIMIT/WINDOW[,scope=user|team][,model=M], e.g. rpm=requests:60/1m,scope=team"
KEY_SPEC_SYNTAX = "NAME=[UNIT:]LIMIT/WINDOW[,model=M], e.g. key-rpm=requests:10/1m"
_UNITS = ("tokens", "requests")
_SCOPES = ("user", "team")
_DIGITS = re.compile(r"^[0-9]{1,19}$")


class SpecError(ValueError):
    """Why a text is not a SPEC, in words for the person who typed it."""


def parse_spec(text: str, *, for_key: bool = False) -> dict[str, Any]:
    """One SPEC as the API's rate object (RateSpec; KeyRateSpec for a key, which has no scope)."""
    name, equals, rest = text.strip().partition("=")
    if not equals or not name.strip() or not rest:
        raise SpecError("no NAME=")
    rate, *extras = rest.split(",")  # model names hold no commas (the API refuses them)
    unit, colon, amount = rate.partition(":")
    if not colon:
        unit, amount = "tokens", rate
    limit, slash, window = amount.partition("/")
    if unit.strip() not in _UNITS:
        raise SpecError(f"the unit is {' or '.join(_UNITS)}, not {unit.strip()!r}")
    if not slash or not window.strip():
        raise SpecError("no /WINDOW after the limit")
    # ASCII digits only: int() would also take "1_000", "+5" and other scripts' digits, which
    # then read back as other text than was typed.
    if not _DIGITS.match(limit.strip()):
        raise SpecError(f"the limit is a whole number, not {limit.strip()!r}")
    count = int(limit.strip())
    spec: dict[str, Any] = {"name": name.strip(), "limit": count, "window": window.strip(), "unit": unit.strip()}
    allowed = ("model",) if for_key else ("scope", "model")
    for extra in extras:
        field, equals, value = extra.partition("=")
        field, value = field.strip(), value.strip()
        if field not in allowed or not equals or not value or field in spec:
            raise SpecError(f"{extra.strip()!r} is not one of {', '.join(f'{name}=' for name in allowed)} (each once)")
        if field == "scope" and value not in _SCOPES:
            raise SpecError(f"the scope is {' or '.join(_SCOPES)}, not {value!r}")
        spec[field] = value
    return spec


def spec_text(rate: Mapping[str, Any]) -> str:
    """A rate of the API's answers (RatePublic) as the SPEC that sets it; tokens, the default
    unit, unsaid (`tokens=100000/1h`, `rpm=requests:60/1m`)."""
    unit = rate.get("unit", "tokens")
    text = f"{rate.get('name')}={'' if unit == 'tokens' else f'{unit}:'}{rate.get('limit')}/{rate.get('window')}"
    if rate.get("scope") not in (None, "user", "key"):
        text += f",scope={rate['scope']}"
    return text + (f",model={rate['model']}" if rate.get("model") else "")
