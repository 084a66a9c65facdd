"""Signing in to the admin API: which credential an `Authorization` header holds, and whose.

Three ways, tried in this order on `Authorization: Bearer <token>` (or `ADMIN <admin key>`):
- the admin key (ADMIN_KEY): the bootstrap and break-glass credential, a platform admin;
- an OpenID Connect token (MAAS_OIDC_ISSUER), when the token looks like a JWT (and, with
  Kubernetes sign-in on, names that issuer: a ServiceAccount token is a JWT of the cluster's);
- in a cluster (MAAS_STORE=kubernetes, MAAS_KUBERNETES_SIGN_IN), a Kubernetes or OpenShift user
  token, asked about with a TokenReview.
An API key is not an admin credential: it is for the models (the gateway) and for the model
listings, which accept it themselves (shared.auth.authenticate).

Platform admins: the admin key; an OIDC identity in one of MAAS_ADMIN_GROUPS; a Kubernetes
identity that a SubjectAccessReview allows `admin` on `teams.maas.opendatahub.io`
(shared.kubeidentity.PLATFORM_ADMIN).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.auth import ADMIN_SCHEMES, credential, is_admin
from shared.keymaterial import looks_like_api_key
from shared.errors import Unauthorized
from shared.identity import Identity
from shared.settings import Settings
from shared.store import Store

# A subject no identity provider's user can share as a user id (it is none: shared.identifiers),
# so nothing made for a person named `admin` is the admin key's, nor the other way round.
ADMIN_KEY_IDENTITY = Identity(subject="<admin-key>", method="admin-key")

# What a person who sent their API key to the admin API is told (never the key itself).
_API_KEY_ELSEWHERE = ("an API key is for model calls through the gateway (Authorization: APIKEY <key>), "
                      "not for the admin API")


@dataclass(frozen=True)
class SignedIn:
    identity: Identity
    platform_admin: bool


class SignIn:
    """Built once per process; the verifiers inside it cache keys and reviews."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._lock = threading.Lock()
        self._oidc_built = False
        self._oidc: object | None = None
        self._reviewer: object | None = None
        self._reviewer_built = False

    def _oidc_verifier(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if not self._oidc_built:
                from shared.oidc import verifier_from_settings

                self._oidc = verifier_from_settings(self._settings)
                self._oidc_built = True
            return self._oidc

    def _kubernetes_reviewer(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if not self._reviewer_built:
                self._reviewer_built = True
                client = getattr(self._store, "api_client", None)
                if self._settings.kubernetes_sign_in and client is not None:
                    from shared.kubeidentity import KubernetesReviewer

                    self._reviewer = KubernetesReviewer(client, namespace=self._settings.namespace)
            return self._reviewer

    @property
    def methods(self) -> list[str]:
        """The ways of signing in this deployment accepts, for error messages."""
        found = []
        if self._settings.admin_key is not None:
            found.append("the admin key")
        if self._settings.oidc_issuer:
            found.append("an OpenID Connect token")
        if self._kubernetes_reviewer() is not None:
            found.append("a Kubernetes token")
        return found

    def sign_in(self, header: str | None) -> SignedIn:
        methods = self.methods
        if not methods:
            raise Unauthorized("admin access is disabled: no admin key is configured (set ADMIN_KEY) "
                               "and no identity provider (MAAS_OIDC_ISSUER)")
        sign_in_with = "sign in with " + " or ".join(methods)
        token = credential(header, ADMIN_SCHEMES, "admin key or token",
                           {"apikey": f"{_API_KEY_ELSEWHERE}: {sign_in_with}"})
        if is_admin(self._settings, token):
            return SignedIn(ADMIN_KEY_IDENTITY, platform_admin=True)
        verifier = self._oidc_verifier()
        reviewer = self._kubernetes_reviewer()
        if verifier is not None:
            from shared.oidc import looks_like_jwt, names_issuer

            # A ServiceAccount's token is a JWT too: one naming another issuer is the cluster's
            # to judge when it judges tokens, else the verifier refuses it ("wrong issuer").
            if looks_like_jwt(token) and (reviewer is None or names_issuer(token, verifier.issuer)):
                identity = verifier.verify(token)
                admins = set(self._settings.admin_groups)
                return SignedIn(identity, platform_admin=bool(admins.intersection(identity.groups)))
        if reviewer is not None:
            identity = reviewer.review(token)
            return SignedIn(identity, platform_admin=reviewer.is_platform_admin(identity))
        wrong = _API_KEY_ELSEWHERE if looks_like_api_key(token) else "invalid admin credentials"
        raise Unauthorized(f"{wrong}: {sign_in_with}")
