"""Store records for tests: a team and a key with sensible defaults, any field overridable."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.store import ApiKey, Team

T0 = datetime(2025, 8, 25, 6, 17, 35, tzinfo=timezone.utc)
# Where a ManualClock starts, on the hour so that expiry arithmetic in tests reads plainly.
CLOCK_START = datetime(2025, 8, 25, 6, 0, 0, tzinfo=timezone.utc)


def a_team(team_id: str = "test-team", **overrides: object) -> Team:
    fields: dict[str, object] = {
        "team_id": team_id,
        "team_name": "Test Team",
        "description": "",
        "policy": "test-tokens",
        "token_limit": 100_000,
        "time_window": "1h",
        "limit_scope": "user",
        "created_at": T0,
    }
    fields.update(overrides)
    return Team(**fields)  # type: ignore[arg-type]


def a_key(team_id: str = "test-team", user_id: str = "alice", **overrides: object) -> tuple[ApiKey, str]:
    """A key record and the API key it was made from."""
    api_key = generate_api_key()
    fields: dict[str, object] = {
        "secret_name": secret_name_for(user_id, team_id),
        "key_sha256": key_sha256(api_key),
        "team_id": team_id,
        "user_id": user_id,
        "user_email": f"{user_id}@test.com",
        "role": "member",
        "status": "active",
        "created_at": T0,
    }
    fields.update(overrides)
    return ApiKey(**fields), api_key  # type: ignore[arg-type]


class ManualClock:
    """A Context clock that a test moves: "an hour later" takes no time."""

    def __init__(self, now: datetime = CLOCK_START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
