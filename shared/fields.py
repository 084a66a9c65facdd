"""The field types, patterns and base classes every schema module of the API builds on.

Kept apart from shared/schemas.py so that a function target loads its own models only: the
health target (what a Knative cold start and `make bench` start) or the usage targets need
none of the ~60 admin models, and defining them was a tenth of a cold start (issue 12).
Timestamps render as `2025-08-25T06:17:35Z`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
)

from shared import identifiers
from shared.durations import normalize_rate_window, normalize_window, window_ms
from shared.expiry import MAX_GRACE


def _utc_text(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(_utc_text, return_type=str)]

_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)$")


def _rfc3339_only(value: object) -> object:
    # pydantic would also take a number as a Unix time and other ISO 8601 forms; the API
    # documents (and so accepts) RFC 3339 only.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2025-08-25T00:00:00Z")
    return value


# Instants the API takes. Python's dates end at years 1 and 9999, so an instant near either end
# cannot be turned into UTC (9999-12-31T23:59:59-01:00), nor have a window added to it or a key
# lifetime kept across a rotation: the range leaves millennia of room for that arithmetic.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)
_OUT_OF_RANGE = "must be from 1970-01-01T00:00:00Z up to (not including) 9000-01-01T00:00:00Z"


def _in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(_OUT_OF_RANGE) from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(_OUT_OF_RANGE)
    return value


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only), AfterValidator(_in_range)]

DnsLabel = Annotated[
    str,
    StringConstraints(pattern=identifiers.DNS_LABEL),
    Field(description="A DNS label: lowercase letters, digits and '-', 1-63 chars, alphanumeric at both ends"),
]
UserId = Annotated[
    str,
    StringConstraints(pattern=identifiers.USER_ID),
    Field(description="1-63 chars of [A-Za-z0-9._-], alphanumeric at both ends"),
]
SecretName = Annotated[
    str,
    StringConstraints(pattern=identifiers.SECRET_NAME),
    Field(description="A key's public handle, e.g. apikey-alice-team-a-0119cba6"),
]
TimeWindow = Annotated[
    str,
    StringConstraints(max_length=32),
    # Whole seconds, at least 1s: Kuadrant truncates a window to whole seconds (shared/durations.py).
    AfterValidator(normalize_rate_window),
    Field(description="Limitador duration such as '1h', '30m', '1h30m', a whole number of seconds "
          "of at least 1s; 'Nd' is normalized to hours"),
]
Lifetime = Annotated[
    str,
    StringConstraints(max_length=32),
    AfterValidator(normalize_window),
    Field(description="How long the key works, e.g. '30d', '12h', '90m'"),
]


_ZERO = re.compile(r"^0+(ms|s|m|h|d)?$")


def _grace(value: str) -> str:
    text = value.strip()
    normalized = "0s" if _ZERO.match(text) else normalize_window(text)
    if window_ms(normalized) > MAX_GRACE.total_seconds() * 1000:
        raise ValueError(f"may be at most {MAX_GRACE.days}d")
    return normalized


GracePeriod = Annotated[
    str,
    StringConstraints(max_length=32),
    AfterValidator(_grace),
    Field(description="How long the old key keeps working after a rotation: '0' (default) to '30d'"),
]
TokenLimit = Annotated[int, Field(strict=True, ge=1, le=2**53, description="Tokens per time window")]
MaxKeys = Annotated[int, Field(strict=True, ge=1, le=10_000)]

MODEL_NAME_PATTERN = r"^[^,\s]+$"
ACTION_PATTERN = r"^[a-z_]{1,64}$"
OUTCOME_PATTERN = r"^(success|failure|[1-5][0-9][0-9])$"
CURSOR_PATTERN = r"^[0-9]{1,18}$"
PAGE_CURSOR_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,252}$"
# What a pattern means, for the 422 (functions/_fielderrors.py): a regular expression is not an answer.
PATTERN_MESSAGES: dict[str, str] = {
    identifiers.DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-', 1-63 characters, "
                           "starting and ending with a letter or digit",
    identifiers.USER_ID: "must be 1-63 characters of letters, digits, '.', '_' and '-', starting and "
                         "ending with a letter or digit",
    identifiers.SECRET_NAME: "must be a key handle such as apikey-alice-team-a-0119cba6",
    MODEL_NAME_PATTERN: "may not contain commas or spaces",
    ACTION_PATTERN: "must be a function target such as create_key",
    OUTCOME_PATTERN: "must be 'success', 'failure' or a status code such as 404",
    CURSOR_PATTERN: "must be the next_cursor of a previous page",
    PAGE_CURSOR_PATTERN: "must be the next_cursor of a previous page",
}
Name = Annotated[str, StringConstraints(min_length=1, max_length=253, strip_whitespace=True)]
Description = Annotated[str, StringConstraints(max_length=1024)]
LimitScope = Literal["user", "team"]

# Path parameters are validated like body fields, so a bad id is a 422 naming it. Built on first
# use, as the models are: the health target has no path parameter.
_DEFERRED = ConfigDict(defer_build=True)
PATH_PARAMETERS: dict[str, TypeAdapter[str]] = {
    "team_id": TypeAdapter(DnsLabel, config=_DEFERRED),
    "user_id": TypeAdapter(UserId, config=_DEFERRED),
    "secret_name": TypeAdapter(SecretName, config=_DEFERRED),
}


# defer_build: each model is compiled on its first use, so a function target compiles its own only.
class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, defer_build=True)


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
