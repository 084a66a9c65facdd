"""Signing in to the admin API with a Kubernetes (or OpenShift) user token, in a cluster.

A caller presents `Authorization: Bearer <token>`: their `oc whoami -t`, a kubeconfig's token,
a ServiceAccount's. The key manager never reads the token itself; it asks the API server:

- who it is: a TokenReview (authentication.k8s.io/v1) answers the user name, uid, groups and
  extra the API server's authenticators give the token; an unauthenticated token is
  `Unauthorized`, with the review's own error (never the token) as the reason. With
  `audiences`, the review asks for those and the answer must confirm one of them
  (status.audiences): an API server that is not audience-aware answers none, and a token it
  vouches for only as its own is not one meant for us.
- what they may do: a SubjectAccessReview (authorization.k8s.io/v1) asks the cluster's
  authorizers (RBAC) whether that user, with those groups, uid and extra, may do a verb on a
  resource in the key manager's namespace. Extra goes back as it came: OpenShift scopes a token
  (`scopes.authorization.openshift.io`) there, and a review without it would judge a
  narrowly scoped token as its user's full rights.

Platform admin is the verb `admin` on `teams` in the API group `maas.opendatahub.io`, in the key
manager's namespace (PLATFORM_ADMIN). No API serves that resource, and none needs to: RBAC
matches rules by name, so a cluster admin grants it with a ClusterRole naming it (the manifests
render one, `maas-platform-admin`), bound by a ClusterRoleBinding (every namespace) or a
RoleBinding in the key manager's namespace. The verb is not a standard one on purpose: the
built-in `admin` and `edit` roles, which namespace owners hold, aggregate standard verbs on
served resources and can never grant it; only a wildcard (cluster-admin) or a rule naming it
does. A rule that names teams (`resourceNames`) never grants platform admin, which is asked
without a name.

Both answers are cached briefly so that an admin request does not cost the API server a review:
a TokenReview for 30 s when it authenticated, 5 s when it did not, keyed by the token's SHA-256
(the token itself is kept nowhere); a SubjectAccessReview for 30 s when allowed, 5 s when
refused. A revoked token, or a removed binding, is honoured within 30 s; a new grant within 5 s.
A failed call (API unreachable, 403) is never cached. The caches are bounded and thread-safe.

RBAC the key manager's own ServiceAccount needs (REVIEWER_RULES; the manifests render them as a
ClusterRole and ClusterRoleBinding, both reviews being cluster-scoped): `create` on
`tokenreviews.authentication.k8s.io` and on `subjectaccessreviews.authorization.k8s.io`,
the same two rules as the built-in `system:auth-delegator` ClusterRole. Without them every
sign-in is a 503 naming the missing grant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kubernetes.client import (
    ApiClient,
    AuthenticationV1Api,
    AuthorizationV1Api,
    V1ResourceAttributes,
    V1SubjectAccessReview,
    V1SubjectAccessReviewSpec,
    V1TokenReview,
    V1TokenReviewSpec,
    V1TokenReviewStatus,
)
from kubernetes.client.exceptions import ApiException

from shared.errors import BackendUnavailable, MaasError, Unauthorized
from shared.identity import Identity
from shared.store.kube import REQUEST_TIMEOUT, kube_errors

__all__ = [
    "PLATFORM_ADMIN",
    "PLATFORM_API_GROUP",
    "REVIEWER_RULES",
    "AccessCheck",
    "KubernetesIdentity",
    "KubernetesReviewer",
]

log = logging.getLogger("maas.kubeidentity")

PLATFORM_API_GROUP = "maas.opendatahub.io"


@dataclass(frozen=True)
class AccessCheck:
    """A (verb, resource) in PLATFORM_API_GROUP that RBAC is asked about."""

    verb: str
    resource: str
    group: str = PLATFORM_API_GROUP


PLATFORM_ADMIN = AccessCheck(verb="admin", resource="teams")

TOKEN_REVIEWS = "tokenreviews.authentication.k8s.io"
ACCESS_REVIEWS = "subjectaccessreviews.authorization.k8s.io"
# What the key manager's ServiceAccount must be granted, cluster-wide, to ask both reviews.
REVIEWER_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]

POSITIVE_TTL_S = 30.0
NEGATIVE_TTL_S = 5.0
CACHE_ENTRIES = 4096  # per cache; a full cache drops expired entries, then the oldest
_REASON_CHARS = 300
# A user name that is an email address (OpenShift with an OIDC or LDAP identity provider often
# names users so); anything with a colon or slash is a prefixed or URL-shaped name, not an address.
_EMAIL = re.compile(r"^[^@\s:/]+@[^@\s:/]+\.[^@\s:/]+$")


@dataclass(frozen=True)
class KubernetesIdentity(Identity):
    """An Identity from a TokenReview, with what a SubjectAccessReview must be given back.

    `uid` and `extra` are the review's; two tokens of one user with different OpenShift scopes
    are different identities, so one's access answers are never another's.
    """

    uid: str | None = None
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class _Refusal:
    """A cached "not authenticated": the reason, to refuse the same token again."""

    reason: str


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _TtlCache(Generic[K, V]):
    """A bounded map whose entries expire, safe to share between threads."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        with self._lock:
            now = self._clock()
            self._entries.pop(key, None)
            if len(self._entries) >= self._max:
                for stale in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                    del self._entries[stale]
                while len(self._entries) >= self._max:
                    self._entries.popitem(last=False)
            self._entries[key] = (now + ttl, value)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return str(exc.reason or "")
    return str(body.get("message") or exc.reason or "") if isinstance(body, dict) else str(exc.reason or "")


@contextmanager
def _review_errors(review: str, resource: str) -> Iterator[None]:
    """Every failure to get a review answered is a 503 that says what to fix."""
    try:
        with kube_errors(resource):
            yield
    except MaasError as exc:
        cause = exc.__cause__
        if isinstance(cause, ApiException) and cause.status == 403:
            raise BackendUnavailable(
                f"Kubernetes API refused the key manager's {review} (403: {_api_message(cause)}): its "
                f"ServiceAccount needs `create` on {resource}, granted by a ClusterRole and "
                "ClusterRoleBinding (docs/DEPLOY.md, \"Signing in with cluster identities\")"
            ) from cause
        if isinstance(cause, ApiException) and cause.status == 401:
            raise BackendUnavailable(
                f"Kubernetes API did not accept the key manager's own credentials for a {review} (401): "
                "check its ServiceAccount token"
            ) from cause
        if isinstance(exc, BackendUnavailable):
            raise
        # A served review is never missing, conflicting or invalid: the API cannot answer it.
        raise BackendUnavailable(f"Kubernetes API could not answer a {review}: {exc.message}") from cause


def _one_line(text: str, token: str) -> str:
    """A reason fit for a 401 body and a log line: one line, bounded, without the token (an
    authentication webhook may echo what it was given)."""
    if token:
        text = text.replace(token, "[token]")
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _extra(values: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(values, dict):
        return ()
    return tuple(sorted((str(key), tuple(str(v) for v in (value or []))) for key, value in values.items()))


class KubernetesReviewer:
    """Who a Kubernetes token is (TokenReview) and what RBAC lets them do (SubjectAccessReview).

    `namespace` is the key manager's (MAAS_NAMESPACE): access is asked about there, so a
    RoleBinding in it grants as well as a ClusterRoleBinding. `audiences`, when given, are
    those a token must be meant for; none means the API server's own (any token it accepts).
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        audiences: Sequence[str] = (),
        positive_ttl_s: float = POSITIVE_TTL_S,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        cache_entries: int = CACHE_ENTRIES,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not namespace:
            raise ValueError("KubernetesReviewer needs the key manager's namespace")
        self._authn = AuthenticationV1Api(api_client)
        self._authz = AuthorizationV1Api(api_client)
        self._namespace = namespace
        self._audiences = tuple(audiences)
        self._positive_ttl = positive_ttl_s
        self._negative_ttl = negative_ttl_s
        self._timeout = request_timeout
        self._tokens: _TtlCache[bytes, KubernetesIdentity | _Refusal] = _TtlCache(cache_entries, clock)
        self._access: _TtlCache[tuple[Any, ...], bool] = _TtlCache(cache_entries, clock)

    # -- who -----------------------------------------------------------------------------

    def review(self, token: str) -> KubernetesIdentity:
        """The identity the API server gives `token`; Unauthorized when it gives none."""
        if not token:
            raise Unauthorized("no Kubernetes token")
        key = hashlib.sha256(token.encode("utf-8")).digest()
        cached = self._tokens.get(key)
        if isinstance(cached, _Refusal):
            raise Unauthorized(cached.reason)
        if cached is not None:
            return cached
        body = V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=V1TokenReviewSpec(token=token, audiences=list(self._audiences) or None),
        )
        with _review_errors("TokenReview", TOKEN_REVIEWS):
            answer = self._authn.create_token_review(body, _request_timeout=self._timeout)
        outcome = self._outcome(answer.status, token)
        if isinstance(outcome, _Refusal):
            self._tokens.put(key, outcome, self._negative_ttl)
            raise Unauthorized(outcome.reason)
        self._tokens.put(key, outcome, self._positive_ttl)
        return outcome

    def _outcome(self, status: V1TokenReviewStatus | None, token: str) -> KubernetesIdentity | _Refusal:
        if status is None or not status.authenticated:
            error = _one_line(str(status.error or "") if status is not None else "", token)
            return _Refusal(f"Kubernetes did not authenticate the token: {error or 'no reason given'}")
        if self._audiences:
            # TokenReviewStatus.audiences: an audience-aware server names the ones it checked;
            # none means it only vouched for the token as its own.
            confirmed = set(status.audiences or ()) & set(self._audiences)
            if not confirmed:
                return _Refusal(
                    "Kubernetes did not confirm the token is meant for this service "
                    f"(audiences: {', '.join(self._audiences)})"
                )
        user = status.user
        username = (user.username if user is not None else None) or ""
        if not username:
            return _Refusal("Kubernetes authenticated the token but named no user")
        return KubernetesIdentity(
            subject=username,
            method="kubernetes",
            email=username if _EMAIL.match(username) else None,
            groups=tuple(user.groups or ()),
            issuer="kubernetes",
            uid=user.uid or None,
            extra=_extra(user.extra),
        )

    # -- what ----------------------------------------------------------------------------

    def is_platform_admin(self, identity: Identity) -> bool:
        """Whether RBAC grants `identity` PLATFORM_ADMIN in the key manager's namespace."""
        return self.allows(identity, PLATFORM_ADMIN)

    def allows(self, identity: Identity, check: AccessCheck, *, name: str | None = None) -> bool:
        """Whether RBAC grants `identity` the check's verb on its resource (on the object
        `name`, when given) in the key manager's namespace.

        Pass the identity `review` returned: a plain Identity carries no uid or extra, and is
        asked about with its user name and groups alone.
        """
        if identity.method != "kubernetes":
            raise ValueError(f"Kubernetes RBAC knows nothing of a {identity.method} identity")
        key = (identity, check, name, self._namespace)
        cached = self._access.get(key)
        if cached is not None:
            return cached
        uid = identity.uid if isinstance(identity, KubernetesIdentity) else None
        extra = dict((k, list(v)) for k, v in identity.extra) if isinstance(identity, KubernetesIdentity) else {}
        body = V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=V1SubjectAccessReviewSpec(
                user=identity.subject,
                # Without groups the API server answers for the user as a member of none.
                groups=list(identity.groups) or None,
                uid=uid,
                extra=extra or None,
                resource_attributes=V1ResourceAttributes(
                    namespace=self._namespace, verb=check.verb, group=check.group, resource=check.resource,
                    name=name,
                ),
            ),
        )
        with _review_errors("SubjectAccessReview", ACCESS_REVIEWS):
            answer = self._authz.create_subject_access_review(body, _request_timeout=self._timeout)
        status = answer.status
        allowed = status is not None and bool(status.allowed) and not status.denied
        if not allowed and status is not None and status.evaluation_error:
            # Still a refusal (RBAC denies by default), but an operator wants to know.
            log.warning("SubjectAccessReview for %s: %s", identity.subject, _one_line(status.evaluation_error, ""))
        self._access.put(key, allowed, self._positive_ttl if allowed else self._negative_ttl)
        return allowed
