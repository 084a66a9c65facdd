"""Limitador's duration syntax (`1h`, `30m`, `1h30m`, `500ms`), plus `Nd` normalized to hours."""

from __future__ import annotations

import re

_LIMITADOR = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_WITH_DAYS = re.compile(r"^([0-9]{1,5})d((?:[0-9]{1,5}(?:h|m|s|ms)){0,3})$")
_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def normalize_window(value: str) -> str:
    """Return `value` in Limitador's syntax, turning a leading `Nd` into hours.

    Raises ValueError with a message fit for the user when the value is not a duration.
    """
    text = value.strip()
    days = _WITH_DAYS.match(text)
    if days:
        hours = int(days.group(1)) * 24
        rest = days.group(2)
        extra_hours = sum(int(n) for n, unit in _PART.findall(rest) if unit == "h")
        others = "".join(f"{n}{unit}" for n, unit in _PART.findall(rest) if unit != "h")
        text = f"{hours + extra_hours}h{others}"
    if not _LIMITADOR.match(text) or window_ms(text) == 0:
        raise ValueError(
            "must be a duration such as '1h', '30m', '1h30m', '500ms' or '7d' "
            "(up to 5 digits per unit, not zero)"
        )
    return text


def window_ms(value: str) -> int:
    """Length of a window in Limitador's syntax, in milliseconds."""
    return sum(int(n) * _MS[unit] for n, unit in _PART.findall(value))


def window_seconds(value: str) -> float:
    return window_ms(value) / 1000.0
