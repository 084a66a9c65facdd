"""API-key authentication from an in-memory snapshot of the Store.

The snapshot is reloaded when `store.generation()` changes (an mmap read per request), so a
deleted or revoked key is refused on the very next request and no request reads SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from shared.errors import Forbidden, Unauthorized
from shared.keymaterial import key_sha256
from shared.store.base import ApiKey, Snapshot, Store, Team

_SCHEMES = ("apikey", "bearer")
_HOW = "use 'Authorization: APIKEY <key>' or 'Authorization: Bearer <key>'"


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey
    team: Team

    def check_model(self, model: str) -> None:
        if self.key.models_allowed and model not in self.key.models_allowed:
            raise Forbidden(f"this API key may not use model '{model}'")

    def may_use(self, model: str) -> bool:
        return not self.key.models_allowed or model in self.key.models_allowed


class KeyCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._generation = -1
        self._snapshot = Snapshot()
        # Callers by key hash for the current snapshot: built once, not per request.
        self._callers: dict[str, Caller] = {}

    def snapshot(self) -> Snapshot:
        generation = self._store.generation()
        if generation != self._generation:
            # Read the generation before the snapshot: the snapshot is then at least as new.
            self._snapshot = self._store.snapshot()
            self._generation = generation
            self._callers = {}
        return self._snapshot

    def team(self, team_id: str) -> Team | None:
        """The team as it is now (a PATCH during a request applies at its settlement)."""
        return self.snapshot().teams.get(team_id)

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthorized(f"missing Authorization header: {_HOW}")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() not in _SCHEMES:
            raise Unauthorized(f"unsupported authorization scheme: {_HOW}")
        token = token.strip()
        if not token:
            raise Unauthorized(f"missing API key: {_HOW}")
        snapshot = self.snapshot()
        digest = key_sha256(token)
        caller = self._callers.get(digest)
        if caller is None:
            key = snapshot.keys_by_sha256.get(digest)
            team = None if key is None else snapshot.teams.get(key.team_id)
            if key is None or team is None:
                raise Unauthorized("invalid API key")
            if key.status != "active":
                raise Unauthorized(f"API key is {key.status}")
            caller = Caller(key=key, team=team)
            if self._snapshot is snapshot:
                self._callers[digest] = caller
        key = caller.key
        if key.expires_at is not None and key.expires_at <= datetime.now(timezone.utc):
            raise Unauthorized("API key has expired")
        return caller
