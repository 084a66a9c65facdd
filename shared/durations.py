"""Limitador's duration syntax (`1h`, `30m`, `1h30m`, `500ms`), plus `Nd` normalized to hours.

`normalize_window` is the syntax every duration setting shares (key lifetimes, grace periods,
retentions, usage ranges). A team's token-limit window goes further, through
`normalize_rate_window`: Kuadrant hands Limitador whole seconds, truncating (KO
`api/v1/ratelimitpolicy_types.go`, `Duration.Seconds`: Go `time.ParseDuration`, then
`int(d.Seconds())`), so `1500ms` would be a 1 s window in a cluster and 1.5 s on one machine, and
`500ms` a 0 s window that never limits (LI `atomic_expiring_value.rs`). Only whole seconds, at
least one, are accepted (tests/cluster/SOURCES.md section 13; tests/cluster/test_windows.py).
"""

from __future__ import annotations

import re

# The CRD's pattern for a Kuadrant `window` (GEP-2257): up to 5 digits per part, up to 4 parts.
_LIMITADOR = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_WITH_DAYS = re.compile(r"^([0-9]{1,5})d((?:[0-9]{1,5}(?:h|m|s|ms)){0,3})$")
_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
MAX_PART = 99_999  # five digits
MAX_DAYS = MAX_PART // 24  # 4166d = 99984h: the most days that still fit one hours part


def normalize_window(value: str) -> str:
    """Return `value` in Limitador's syntax, turning a leading `Nd` into hours.

    Raises ValueError with a message fit for the user when the value is not a duration.
    """
    text = _expand_days(value.strip())
    if not _LIMITADOR.match(text) or window_ms(text) == 0:
        raise ValueError(
            "must be a duration such as '1h', '30m', '1h30m', '500ms' or '7d' "
            "(up to 5 digits per unit, not zero)"
        )
    return text


def normalize_rate_window(value: str) -> str:
    """A token-limit window: Limitador's syntax (`Nd` turned into hours), a whole number of
    seconds, at least 1 s.

    Raises ValueError saying why: the cluster's rate limiter counts whole seconds only.
    """
    given = value.strip()
    text = _expand_days(given)
    if not _LIMITADOR.match(text):
        raise ValueError(
            "must be a duration in whole seconds such as '1h', '30m', '1h30m', '90s' or '7d' "
            "(up to 5 digits per unit)"
        )
    ms = window_ms(text)
    if ms < 1_000:
        raise ValueError(
            f"must be at least 1s: the rate limiter counts whole seconds, and '{given}' would be "
            "a 0s window, which never limits"
        )
    if ms % 1_000:
        raise ValueError(
            f"must be a whole number of seconds: the rate limiter drops the fraction, so '{given}' "
            f"would be a {ms // 1_000}s window"
        )
    return text


def _expand_days(text: str) -> str:
    """`Nd...` as `<N*24 + hours>h...`; anything else unchanged."""
    days = _WITH_DAYS.match(text)
    if not days:
        return text
    rest = days.group(2)
    hours = int(days.group(1)) * 24 + sum(int(n) for n, unit in _PART.findall(rest) if unit == "h")
    if hours > MAX_PART:
        # 4167d would be 100008h: six digits, which the CRD's pattern refuses.
        raise ValueError(f"is {hours}h; at most {MAX_PART}h ({MAX_DAYS}d) fits in one part")
    return f"{hours}h" + "".join(f"{n}{unit}" for n, unit in _PART.findall(rest) if unit != "h")


def window_ms(value: str) -> int:
    """Length of a window in Limitador's syntax, in milliseconds."""
    return sum(int(n) * _MS[unit] for n, unit in _PART.findall(value))


def window_seconds(value: str) -> float:
    """Length of a window in seconds, exactly (the local limiter's window length)."""
    return window_ms(value) / 1000.0
