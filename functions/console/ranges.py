"""The time range a usage page shows: one of the quick ranges (last 24 h, 7 d, 30 d) or a start and
an end typed into the page's form, read from the page's query string, all in UTC.

The range is the console's own reading of its form; the API still checks what it is sent (start
before end, at most its 1,000 points a series), and a refusal there is shown as it is. The bucket
length of the charts follows the range's length, so a chart never has more bars than can be read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# Quick ranges: (length, bucket seconds). Their end is the next whole bucket after now, so the
# buckets start on whole hours (or days) and read as such.
QUICK: dict[str, tuple[timedelta, int]] = {
    "24h": (timedelta(hours=24), 3600),
    "7d": (timedelta(days=7), 6 * 3600),
    "30d": (timedelta(days=30), 86400),
}
DEFAULT = "24h"
# A typed range: the bucket for its length, the first whose bars still fit a chart (about 60).
_STEPS = ((timedelta(days=2), 3600), (timedelta(days=14), 6 * 3600), (timedelta(days=180), 86400))
WEEK_S = 7 * 86400
MAX_POINTS = 1000  # the API's bound on a series (shared.usage.service.MAX_POINTS)
# What the form's datetime-local inputs send (minutes, maybe seconds), a bare date, or RFC 3339.
_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$")
_INPUT_FORMAT = "%Y-%m-%dT%H:%M"


class RangeProblem(ValueError):
    """A typed range the console cannot read: the message names the field, for the page."""


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime
    step_s: int
    quick: str | None  # the quick range's name, or None for a typed one

    @property
    def count(self) -> int:
        """Buckets from start to end; the last one may be cut short by the end."""
        return max(1, -(-int((self.end - self.start).total_seconds()) // self.step_s))

    @property
    def bucket_starts(self) -> list[datetime]:
        return [self.start + timedelta(seconds=self.step_s * n) for n in range(self.count)]

    def labels(self) -> list[str]:
        span = self.end - self.start
        if self.step_s < 86400:
            fmt = "%H:%M" if span <= timedelta(days=1) else ("%a %H:%M" if span <= timedelta(days=7) else "%m-%d %H:%M")
        else:
            fmt = "%b %d" if span <= timedelta(days=366) else "%Y-%m-%d"
        return [at.strftime(fmt) for at in self.bucket_starts]

    @property
    def step_words(self) -> str:
        return {3600: "hour", 6 * 3600: "6 hours", 86400: "day", WEEK_S: "week"}.get(self.step_s, f"{self.step_s} s")

    @property
    def step_query(self) -> str:
        """The bucket as the API's `step` takes it."""
        return f"{self.step_s}s"

    def query(self) -> dict[str, str]:
        """start and end as the API's usage routes take them (RFC 3339, UTC)."""
        return {"start": rfc3339(self.start), "end": rfc3339(self.end)}

    def describe(self) -> str:
        if self.quick is not None:
            return f"the last {self.quick}"
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"

    @property
    def start_input(self) -> str:
        return self.start.strftime(_INPUT_FORMAT)

    @property
    def end_input(self) -> str:
        return self.end.strftime(_INPUT_FORMAT)

    def args(self) -> dict[str, str]:
        """The query string that shows this range again (for links that keep it)."""
        if self.quick is not None:
            return {"range": self.quick}
        return {"start": self.start_input, "end": self.end_input}


def rfc3339(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str, field: str) -> datetime:
    """An instant typed into the form: `2025-08-25T10:00` (the datetime-local input, read as
    UTC), a bare date (its midnight, UTC) or RFC 3339 with an offset."""
    value = text.strip()
    try:
        if _LOCAL.match(value):
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RangeProblem(f"{field}: '{value[:40]}' is not a date and time such as 2025-08-25T10:00 (UTC)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _step_for(span: timedelta) -> int:
    for longest, step in _STEPS:
        if span <= longest:
            return step
    return WEEK_S


def quick_range(name: str, now: datetime) -> Range:
    length, step = QUICK[name]
    end = datetime.fromtimestamp((now.timestamp() // step + 1) * step, timezone.utc)
    return Range(start=end - length, end=end, step_s=step, quick=name)


def parse_range(args: Mapping[str, str], now: datetime) -> tuple[Range, str | None]:
    """The range the query string asks for, and a problem to show when it cannot be read (then
    the default range, so that the page still shows something)."""
    start_text, end_text = args.get("start", "").strip(), args.get("end", "").strip()
    if not start_text and not end_text:
        name = args.get("range", DEFAULT)
        return quick_range(name if name in QUICK else DEFAULT, now), None
    try:
        end = parse_instant(end_text, "To") if end_text else now
        start = parse_instant(start_text, "From") if start_text else end - QUICK[DEFAULT][0]
        if start >= end:
            raise RangeProblem("From must be before To")
        step = _step_for(end - start)
        if (end - start).total_seconds() / step > MAX_POINTS:
            raise RangeProblem(f"the range is too long: at most {MAX_POINTS} weeks")
    except RangeProblem as problem:
        return quick_range(DEFAULT, now), str(problem)
    return Range(start=start, end=end, step_s=step, quick=None), None


def bucket_index(rng: Range, at: datetime) -> int | None:
    """Which of the range's buckets `at` (a series point's start) falls in, if any. A point may
    start up to a minute before the range (the API's series start on a whole minute)."""
    offset = (at - rng.start).total_seconds()
    index = int(offset // rng.step_s) if offset >= 0 else (0 if offset > -60 else -1)
    return index if 0 <= index < rng.count else None
