"""API-key authentication from an in-memory snapshot of the Store.

The snapshot is reloaded when `store.generation()` changes (an mmap read per request), so a
deleted or revoked key is refused on the very next request and no request reads SQLite.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from shared.auth import KEY_SCHEMES, credential, may_use_model, usable
from shared.errors import Forbidden, Unauthorized
from shared.keymaterial import key_sha256
from shared.store.base import ApiKey, Snapshot, Store, Team


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey
    team: Team

    def check_model(self, model: str) -> None:
        if not may_use_model(self.key, model):
            raise Forbidden(f"this API key may not use model '{model}'")


class KeyCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._generation = -1
        self._snapshot = Snapshot()
        # Callers by key hash for the current snapshot: built once, not per request.
        self._callers: dict[str, Caller] = {}
        # secret_name -> last successful authentication; taken in batches by the service,
        # which writes them to the store off the request path.
        self._last_used: dict[str, float] = {}

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
        token = credential(authorization, KEY_SCHEMES, "API key")
        snapshot = self.snapshot()
        digest = key_sha256(token)
        caller = self._callers.get(digest)
        if caller is None:
            key = snapshot.keys_by_sha256.get(digest)
            team = None if key is None else snapshot.teams.get(key.team_id)
            if key is None or team is None:
                raise Unauthorized("invalid API key")
            caller = Caller(key=key, team=team)
            if self._snapshot is snapshot:
                self._callers[digest] = caller
        key = caller.key
        # An active key without expiry is usable at any time: only read the clock when the
        # rule depends on it.
        if (key.status != "active" or key.expires_at is not None) and not usable(key, datetime.now(timezone.utc)):
            raise Unauthorized("API key is revoked or expired")
        self._last_used[key.secret_name] = time.time()
        return caller

    def take_last_used(self) -> dict[str, datetime]:
        """The last uses recorded since the previous call (for Store.touch_keys)."""
        taken, self._last_used = self._last_used, {}
        return {name: datetime.fromtimestamp(at, timezone.utc) for name, at in taken.items()}
