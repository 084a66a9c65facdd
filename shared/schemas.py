"""Pydantic models at the edge: every admin request and response, named by role.

Requests forbid unknown fields. Only `KeyCreated` carries key material, so a key can't leak
through any other response by accident. The field types and base classes are shared/fields.py's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    EmailStr,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.fields import (
    ACTION_PATTERN,
    CURSOR_PATTERN,
    MODEL_NAME_PATTERN,
    OUTCOME_PATTERN,
    PAGE_CURSOR_PATTERN,
    Description,
    DnsLabel,
    GracePeriod,
    Lifetime,
    LimitScope,
    MaxKeys,
    Name,
    Request,
    Response,
    Rfc3339,
    SecretName,
    Timestamp,
    TimeWindow,
    TokenLimit,
    UserId,
)
from shared.rates import MAX_RATES, Rate, check_names, primary_index
from shared.store.base import CLEARABLE_TEAM_FIELDS

# -- requests --------------------------------------------------------------------------

RateUnit = Literal["tokens", "requests"]
RateLimit = Annotated[int, Field(strict=True, ge=1, le=2**53, description="Tokens or requests per window")]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=MODEL_NAME_PATTERN)]
MaxConcurrent = Annotated[int, Field(strict=True, ge=1, le=10_000)]
_SHORT_FORM = ("token_limit", "time_window", "limit_scope")


class KeyRateSpec(Request):
    """One of a key's own rates: counted for that key alone, on top of its team's."""

    name: DnsLabel = Field(description="Names the limit in 429s and explain, e.g. 'per-minute'")
    limit: RateLimit
    window: TimeWindow
    unit: RateUnit = Field(default="tokens", description="'tokens' or 'requests'")
    model: ModelName | None = Field(default=None, description="Only calls of this model count; null: every model")

    def rate(self, scope: Literal["user", "team", "key"] = "key") -> Rate:
        return Rate(self.name, self.limit, self.window, self.unit, scope, self.model)


class RateSpec(KeyRateSpec):
    """One of a team's rates."""

    scope: LimitScope = Field(default="user", description="'user': each member has it; 'team': one shared")

    def rate(self, scope: Literal["user", "team", "key"] | None = None) -> Rate:
        return Rate(self.name, self.limit, self.window, self.unit, scope or self.scope, self.model)


def _team_rates(limits: list[RateSpec] | None, given: set[str]) -> tuple[Rate, ...] | None:
    """The rates a create or update gives; ValueError when they contradict or lack the primary."""
    if limits is None:
        return None
    both = sorted(name for name in _SHORT_FORM if name in given)
    if both:
        raise ValueError(f"give 'limits' or the short form ({', '.join(both)}), not both: the short form "
                         "is the first token rate of 'limits'")
    rates = tuple(spec.rate() for spec in limits)
    check_names(rates)
    primary_index(rates)
    return rates


def _key_rates(limits: list[KeyRateSpec]) -> tuple[Rate, ...]:
    rates = tuple(spec.rate("key") for spec in limits)
    check_names(rates)
    return rates



class TeamCreate(Request):
    team_id: DnsLabel
    team_name: Name | None = Field(default=None, description="Defaults to team_id")
    description: Description = ""
    policy: DnsLabel | None = Field(default=None, description="Defaults to team_id")
    token_limit: TokenLimit = 100_000
    time_window: TimeWindow = "1h"
    limit_scope: LimitScope = Field(
        default="user", description="'user': each member has the budget; 'team': one shared budget"
    )
    max_keys_per_user: MaxKeys | None = Field(default=None, description="Active keys a user may hold here; null: any")
    max_key_lifetime: Lifetime | None = Field(
        default=None, description="Longest a key issued here may live, e.g. '90d'; null: keys may not expire"
    )
    limits: list[RateSpec] | None = Field(
        default=None, max_length=MAX_RATES,
        description="Every rate of the team (tokens or requests per window, per user or for the team, over "
                    "every model or one); the first token rate over every model is token_limit/time_window. "
                    "Excludes token_limit, time_window and limit_scope",
    )

    @model_validator(mode="after")
    def _limits_or_short_form(self) -> TeamCreate:
        _team_rates(self.limits, self.model_fields_set)
        return self

    @property
    def rates(self) -> tuple[Rate, ...]:
        """The rates to store: () when the short form alone says them."""
        return _team_rates(self.limits, set()) or ()


class TeamUpdate(Request):
    team_name: Name | None = None
    description: Description | None = None
    policy: DnsLabel | None = None
    token_limit: TokenLimit | None = None
    time_window: TimeWindow | None = None
    limit_scope: LimitScope | None = None
    max_keys_per_user: MaxKeys | None = Field(default=None, description="null removes the cap")
    max_key_lifetime: Lifetime | None = Field(default=None, description="null removes the cap")
    limits: list[RateSpec] | None = Field(
        default=None, max_length=MAX_RATES,
        description="Replaces every rate of the team; excludes token_limit, time_window and limit_scope",
    )

    @model_validator(mode="after")
    def _limits_or_short_form(self) -> TeamUpdate:
        _team_rates(self.limits, self.model_fields_set)
        return self

    @property
    def rates(self) -> tuple[Rate, ...] | None:
        return _team_rates(self.limits, set())

    @model_validator(mode="after")
    def _no_nulls_and_not_empty(self) -> TeamUpdate:
        if not self.model_fields_set:
            raise ValueError("the update names no field to change")
        nulls = sorted(name for name in self.model_fields_set - CLEARABLE_TEAM_FIELDS if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"fields may not be null: {', '.join(nulls)}")
        return self


def _only_one_expiry(expires_at: datetime | None, info: ValidationInfo) -> datetime | None:
    # A field validator (not a model one) so the 422 names the field.
    if expires_at is not None and info.data.get("expires_in") is not None:
        raise ValueError("give expires_in or expires_at, not both")
    return expires_at


class KeyTerms(Request):
    """What a new key may do and how long it lives: the same whoever issues it."""

    alias: Annotated[str, StringConstraints(max_length=63)] = ""
    models: list[Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=MODEL_NAME_PATTERN)]] = Field(
        default_factory=list, max_length=100, description="Models this key may use; empty means all"
    )
    expires_in: Lifetime | None = Field(default=None, description="Lifetime from now; excludes expires_at")
    expires_at: Rfc3339 | None = Field(
        default=None, description="RFC 3339 instant in the future; excludes expires_in"
    )
    limits: list[KeyRateSpec] = Field(
        default_factory=list, max_length=MAX_RATES,
        description="The key's own rates, checked on top of its team's (they cannot widen them)",
    )
    max_concurrent: MaxConcurrent | None = Field(
        default=None, description="Calls this key may have in flight at once; null: no cap",
    )

    @field_validator("expires_at")
    @classmethod
    def _one_expiry(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return _only_one_expiry(value, info)

    @field_validator("limits")
    @classmethod
    def _distinct_names(cls, value: list[KeyRateSpec]) -> list[KeyRateSpec]:
        _key_rates(value)
        return value

    @property
    def rates(self) -> tuple[Rate, ...]:
        return _key_rates(self.limits)


class KeyCreate(KeyTerms):
    user_id: UserId
    user_email: EmailStr | Literal[""] = ""
    role: Literal["member", "admin"] = "member"


class MyKeyCreate(KeyTerms):
    """A key for the caller (POST /me/keys), in a team they belong to, with the membership's role."""

    team_id: DnsLabel


MemberRole = Literal["member", "admin"]


class MemberCreate(Request):
    user_id: UserId
    user_email: EmailStr | Literal[""] = ""
    role: MemberRole = "member"


class MemberUpdate(Request):
    role: MemberRole


class KeyRotate(Request):
    """Rotate a key: a new key for the same user, team, models and alias."""

    grace_period: GracePeriod = "0s"
    expires_in: Lifetime | None = Field(
        default=None, description="Lifetime of the new key; default: the old key's lifetime, if it had one"
    )
    expires_at: Rfc3339 | None = Field(default=None, description="Expiry of the new key (RFC 3339)")

    @field_validator("expires_at")
    @classmethod
    def _one_expiry(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return _only_one_expiry(value, info)


class AuditQuery(Request):
    """Filters and paging of GET /audit (query parameters)."""

    action: Annotated[str, StringConstraints(pattern=ACTION_PATTERN)] | None = Field(
        default=None, description="A function target, e.g. create_key"
    )
    team_id: DnsLabel | None = None
    outcome: Annotated[str, StringConstraints(pattern=OUTCOME_PATTERN)] | None = Field(
        default=None, description="'success' (2xx), 'failure' (anything else) or one status code"
    )
    since: Rfc3339 | None = Field(default=None, description="RFC 3339, inclusive")
    until: Rfc3339 | None = Field(default=None, description="RFC 3339, exclusive")
    limit: Annotated[int, Field(ge=1, le=500)] = 100
    cursor: Annotated[str, StringConstraints(pattern=CURSOR_PATTERN)] | None = Field(
        default=None, description="next_cursor of the previous page"
    )


class PageQuery(Request):
    """Paging of a listing (query parameters): at most `limit` items after `cursor`."""

    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: Annotated[str, StringConstraints(pattern=PAGE_CURSOR_PATTERN)] | None = Field(
        default=None, description="next_cursor of the previous page"
    )


class ExplainQuery(Request):
    """Whose limits GET /teams/{team_id}/limits/explain shows (query parameters)."""

    user_id: UserId | None = Field(default=None, description="The user whose counters to show; "
                                   "default: the key's user (give one of the two)")
    secret_name: SecretName | None = Field(default=None, description="A key of the team: its own limits too")
    model: ModelName | None = Field(default=None, description="Only the limits a call of this model meets; "
                                    "default: every model's")

    @model_validator(mode="after")
    def _someone(self) -> ExplainQuery:
        if self.user_id is None and self.secret_name is None:
            raise ValueError("give user_id or secret_name: limits are counted per user or per key")
        return self


class SimulateRequest(Request):
    """Proposed limits to replay the team's recorded usage against."""

    limits: list[RateSpec] = Field(min_length=1, max_length=MAX_RATES, description="The team's rates as "
                                   "PATCH /teams/{team_id} would set them")
    start: Rfc3339 | None = Field(default=None, description="RFC 3339, inclusive; default: end minus 24h")
    end: Rfc3339 | None = Field(default=None, description="RFC 3339, exclusive; default: now")

    @field_validator("limits")
    @classmethod
    def _a_team_list(cls, value: list[RateSpec]) -> list[RateSpec]:
        _team_rates(value, set())
        return value

    @property
    def rates(self) -> tuple[Rate, ...]:
        return _team_rates(self.limits, set()) or ()


class KeyDeleteByValue(Request):
    key: Annotated[str, StringConstraints(min_length=1, max_length=512)]


# -- responses -------------------------------------------------------------------------


class RatePublic(Response):
    name: str
    limit: int
    window: str
    unit: RateUnit
    scope: Literal["user", "team", "key"]
    model: str | None = None

    @classmethod
    def of(cls, rate: Rate) -> RatePublic:
        return cls(name=rate.name, limit=rate.limit, window=rate.window, unit=rate.unit, scope=rate.scope,
                   model=rate.model)



class TeamPublic(Response):
    team_id: str
    team_name: str
    description: str
    policy: str
    token_limit: int
    time_window: str
    limit_scope: LimitScope
    created_at: Timestamp
    key_count: int
    user_count: int
    max_keys_per_user: int | None = None
    max_key_lifetime: str | None = None
    limits: list[RatePublic] = Field(default_factory=list, description="Every rate of the team, the short form's included")


class LimitState(Response):
    """One limit with its counter now (GET /v1/me and explain)."""

    name: str
    unit: RateUnit
    limit: int
    window: str
    scope: Literal["user", "team", "key"]
    model: str | None
    spent: int | None = Field(description="Counted in the current window; null when the counters cannot be read")
    reserved: int | None = Field(description="Held by calls in flight")
    remaining: int | None
    reset_seconds: int | None = Field(description="Until the window ends; 0: no window open (the next call opens one)")
    binding: bool = Field(description="The limit that refuses first: the first exhausted one, else the one "
                          "with the smallest share left")


class LimitsExplained(Response):
    team_id: str
    user_id: str
    secret_name: str | None
    model: str | None
    counters: Literal["live", "unavailable"] = Field(
        description="'live': the counters as they are now (the gateway's; in a cluster Limitador's, read "
                    "from MAAS_LIMITADOR_URL, where a limit it does not count has null counters); "
                    "'unavailable': only the limits")
    limits: list[LimitState]
    binding: str | None = Field(description="Name of the binding limit")
    admitted_now: bool | None = Field(description="Whether a call would be admitted now; null without counters")


class UserSimulation(Response):
    user_id: str
    requests: int = Field(description="Calls replayed (the calls admitted when they were made)")
    tokens: int
    refused_requests: int
    refused_tokens: int
    refused_by: dict[str, int] = Field(description="Refused calls by the name of the limit that refused them")


class LimitsSimulated(Response):
    team_id: str
    start: Timestamp
    end: Timestamp
    limits: list[RatePublic]
    requests: int
    tokens: int
    refused_requests: int
    refused_tokens: int
    refused_by: dict[str, int]
    users: list[UserSimulation]
    notes: list[str] = Field(default_factory=list, description="Where the replay is approximate, and why")


class TeamList(Response):
    teams: list[TeamPublic]
    total_teams: int
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next page; null on the last")


class TeamMember(Response):
    user_id: str
    user_email: str
    role: str
    team_id: str
    team_name: str
    joined_at: Timestamp
    policy: str


class MemberPublic(Response):
    team_id: str
    user_id: str
    user_email: str
    role: str
    joined_at: Timestamp


class MemberList(Response):
    members: list[MemberPublic]
    total_members: int
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next page; null on the last")


class MemberRemoved(Response):
    member: MemberPublic
    revoked_keys: list[str] = Field(description="Handles of the member's keys in the team, revoked with it")


class MyTeam(Response):
    team_id: str
    team_name: str
    role: str


class Me(Response):
    """Who the caller is (GET /me): how they signed in, and their teams with their roles."""

    user_id: str
    user_email: str | None
    signed_in_with: str
    platform_admin: bool
    groups: list[str]
    teams: list[MyTeam]


class TeamDetail(TeamPublic):
    keys: list[str]
    users: list[TeamMember]


class KeyPublic(Response):
    secret_name: str
    user_id: str
    user_email: str
    role: str
    policy: str
    status: str
    models_allowed: str
    alias: str
    created_at: Timestamp
    expires_at: Timestamp | None = None
    last_used_at: Timestamp | None = None
    replaced_by: str | None = None
    limits: list[RatePublic] = Field(default_factory=list, description="The key's own rates, on top of its team's")
    max_concurrent: int | None = None


class UserKeyPublic(KeyPublic):
    team_id: str
    team_name: str


class TeamKeys(Response):
    team_id: str
    team_name: str
    policy: str
    keys: list[KeyPublic]
    users: list[TeamMember]
    total_keys: int
    total_users: int
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next page of keys")


class UserKeys(Response):
    user_id: str
    keys: list[UserKeyPublic]
    total_keys: int
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next page")


class KeyCreated(Response):
    """The only response that carries an API key: it is shown once, here."""

    api_key: str
    secret_name: str
    user_id: str
    user_email: str
    team_id: str
    team_name: str
    policy: str
    role: str
    status: str
    models_allowed: str
    alias: str
    created_at: Timestamp
    expires_at: Timestamp | None = None
    limits: list[RatePublic] = Field(default_factory=list, description="The key's own rates, on top of its team's")
    max_concurrent: int | None = None
    warnings: list[str] = Field(
        default_factory=list,
        description="What could not be checked, e.g. the models when the model catalog was unreachable",
    )


class TeamDeleted(Response):
    message: str
    team_id: str
    keys_deleted: int
    deleted_keys: list[str]


class KeyDeleted(Response):
    message: str
    secret_name: str
    team_id: str
    user_id: str


class KeyRevoked(Response):
    message: str
    secret_name: str
    team_id: str
    user_id: str
    status: str


class AuditChange(Response):
    """One field an update changed, as the answers of the API showed it before and after."""

    before: str | bool | int | float | None
    after: str | bool | int | float | None


class AuditEntryPublic(Response):
    id: int
    at: Timestamp
    actor: str
    action: str
    method: str
    path: str
    outcome: int
    team_id: str | None
    secret_name: str | None
    changes: dict[str, AuditChange] | None = Field(
        description="For an update, each field it changed; null for other actions. Values are cut to "
                    "200 characters, at most 20 fields, never a key",
    )


class AuditPage(Response):
    entries: list[AuditEntryPublic]
    next_cursor: str | None


class CleanupSummary(Response):
    """What one cleanup event changed; all lists empty when it changed nothing."""

    event_type: str
    team_id: str | None = None
    deleted_keys: list[str] = Field(description="Keys removed: their team is gone, or they expired long ago")
    expired_keys: list[str] = Field(description="Keys marked expired")
    revoked_keys: list[str] = Field(description="Rotated keys whose grace period ended, marked revoked")
    policies_synced: bool = Field(description="Whether the policies were regenerated from the teams")
    audit_pruned: int = Field(default=0, description="Audit entries older than MAAS_AUDIT_RETENTION removed")
    ignored: str | None = Field(default=None, description="Why the event was not acted on, if it was not")
