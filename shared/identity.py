"""Who signed in to the admin API: the one shape every way of signing in produces.

The admin key, an OpenID Connect token (shared.oidc) and, in a cluster, a Kubernetes user token
(shared.kubeidentity) each become an `Identity`; roles (platform admin, team admin, member) are
decided from it, and the audit log names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SignInMethod = Literal["admin-key", "oidc", "kubernetes"]


@dataclass(frozen=True)
class Identity:
    subject: str
    """The user id: the configured claim of an OIDC token, the Kubernetes user name, or `admin`."""
    method: SignInMethod
    email: str | None = None
    groups: tuple[str, ...] = ()
    issuer: str | None = None
    """The OIDC issuer or `kubernetes`; None for the admin key."""

    @property
    def actor(self) -> str:
        """How the audit log names this identity: `oidc:alice`, `kubernetes:alice`, `admin-key`.
        The subject, not the email: a provider may let a user claim someone else's address, while
        the subject is the provider's own name for them (and the user id of their keys)."""
        if self.method == "admin-key":
            return "admin-key"
        return f"{self.method}:{self.subject}"
