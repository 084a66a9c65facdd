"""Pydantic models at the edge: every admin request and response, named by role.

Requests forbid unknown fields. Only `KeyCreated` carries key material, so a key can't leak
through any other response by accident. Timestamps render as `2025-08-25T06:17:35Z`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

from shared.durations import normalize_window


def _utc_text(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(_utc_text, return_type=str)]

DnsLabel = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(description="A DNS label: lowercase letters, digits and '-', 1-63 chars, alphanumeric at both ends"),
]
UserId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"),
    Field(description="1-63 chars of [A-Za-z0-9._-], alphanumeric at both ends"),
]
SecretName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"),
    Field(description="A key's public handle, e.g. apikey-alice-team-a-0119cba6"),
]
TimeWindow = Annotated[
    str,
    StringConstraints(max_length=32),
    AfterValidator(normalize_window),
    Field(description="Limitador duration such as '1h', '30m', '1h30m'; 'Nd' is normalized to hours"),
]
TokenLimit = Annotated[int, Field(strict=True, ge=1, le=2**53, description="Tokens per time window")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=253, strip_whitespace=True)]
Description = Annotated[str, StringConstraints(max_length=1024)]
LimitScope = Literal["user", "team"]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests --------------------------------------------------------------------------


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


class TeamUpdate(Request):
    team_name: Name | None = None
    description: Description | None = None
    policy: DnsLabel | None = None
    token_limit: TokenLimit | None = None
    time_window: TimeWindow | None = None
    limit_scope: LimitScope | None = None

    @model_validator(mode="after")
    def _no_nulls_and_not_empty(self) -> TeamUpdate:
        if not self.model_fields_set:
            raise ValueError("the update names no field to change")
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"fields may not be null: {', '.join(nulls)}")
        return self


class KeyCreate(Request):
    user_id: UserId
    user_email: EmailStr | Literal[""] = ""
    alias: Annotated[str, StringConstraints(max_length=63)] = ""
    role: Literal["member", "admin"] = "member"
    models: list[Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[^,\s]+$")]] = Field(
        default_factory=list, max_length=100, description="Models this key may use; empty means all"
    )


class KeyDeleteByValue(Request):
    key: Annotated[str, StringConstraints(min_length=1, max_length=512)]


# -- responses -------------------------------------------------------------------------


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


class TeamList(Response):
    teams: list[TeamPublic]
    total_teams: int


class TeamMember(Response):
    user_id: str
    user_email: str
    role: str
    team_id: str
    team_name: str
    joined_at: Timestamp
    policy: str


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


class UserKeys(Response):
    user_id: str
    keys: list[UserKeyPublic]
    total_keys: int


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


class Health(Response):
    status: Literal["healthy", "degraded"]
    store: str
    version: str
