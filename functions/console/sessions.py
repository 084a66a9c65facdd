"""The console's sessions: who signed in, kept on the server, named by a random id in a cookie.

The cookie holds only the id (`__Host-` prefixed: Secure, Path=/, no Domain, so no other host or
path can set or read it); HttpOnly, so no script reads it; SameSite=Lax, so a cross-site form
cannot post with it while the identity provider's redirect back (a top-level GET) still carries
it, which Strict would not. The session holds the identity (never a credential: not the admin
key, not the provider's tokens), its CSRF token, its expiry and the messages of the next page.

Kept in this process's memory, by the SHA-256 of the id: `make run` serves the admin API from one
worker process, and in a cluster the console runs as one pod (tools/manifests.py); several pods
would need sticky sessions or sessions in the store. A restart signs everyone out.

A visitor who has not signed in gets a short-lived anonymous session too: the sign-in form's CSRF
token and the OIDC round trip's state, nonce and PKCE verifier live there, so a sign-in cannot be
forged from another site and the provider's answer is bound to the browser that asked. Signing in
starts a new session (a new id) rather than promoting that one, so an id planted before the
sign-in is worth nothing after it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.signin import SignedIn

COOKIE = "__Host-maas-console"
# Long enough to type an admin key or to sign in at the provider, not to keep a stranger's slot.
ANONYMOUS_TTL = timedelta(minutes=15)
# A bound on memory: anonymous sessions cost a request each, so they go first when it is reached.
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class PendingSignIn:
    """One OIDC authorization request in flight, checked when the provider sends the browser back."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str


@dataclass
class Session:
    csrf: str
    created: datetime
    expires: datetime
    signed: SignedIn | None = None
    pending: PendingSignIn | None = None
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) for the next page

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def flash(self, text: str, kind: str = "info") -> None:
        self.flashes.append((kind, text))

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        return taken


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """Thread-safe; every read drops what has expired, so an expired session is never used."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._lock = threading.Lock()
        self._by_digest: dict[str, Session] = {}
        self._max = max_sessions

    def find(self, session_id: str | None, now: datetime) -> Session | None:
        if not session_id:
            return None
        digest = _digest(session_id)
        with self._lock:
            session = self._by_digest.get(digest)
            if session is not None and session.expires <= now:
                del self._by_digest[digest]
                return None
            return session

    def start(self, now: datetime, *, signed: SignedIn | None = None,
              ttl: timedelta = ANONYMOUS_TTL) -> tuple[str, Session]:
        """A new session and its id (for the cookie; never kept here)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created=now, expires=now + ttl, signed=signed)
        with self._lock:
            if len(self._by_digest) >= self._max:
                self._make_room(now)
            self._by_digest[_digest(session_id)] = session
        return session_id, session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._by_digest.pop(_digest(session_id), None)

    def _make_room(self, now: datetime) -> None:
        for digest, session in list(self._by_digest.items()):
            if session.expires <= now:
                del self._by_digest[digest]
        if len(self._by_digest) < self._max:
            return
        anonymous = sorted((s.created, d) for d, s in self._by_digest.items() if s.signed is None)
        for _, digest in anonymous[: max(1, len(self._by_digest) - self._max + 1)]:
            del self._by_digest[digest]
        if len(self._by_digest) >= self._max:
            oldest = min(self._by_digest.items(), key=lambda item: item[1].created)[0]
            del self._by_digest[oldest]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_digest)


SESSIONS = Sessions()
