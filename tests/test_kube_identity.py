"""Signing in with a Kubernetes user token (shared.kubeidentity), through the real `kubernetes`
client against the API double (tests/kube_double.py), whose reviews follow the API server's
source (kubernetes/kubernetes):

- staging/src/k8s.io/api/authentication/v1/types.go (TokenReview: spec.token, spec.audiences;
  status.authenticated, user{username, uid, groups, extra}, audiences, error) and
  pkg/registry/authentication/tokenreview/storage.go (the review's audiences, else the API
  server's; an unauthenticated token is status.error, not an HTTP error);
- staging/src/k8s.io/apiserver/pkg/authentication/request/bearertoken/bearertoken.go (an
  unknown token's default error, "invalid bearer token");
- staging/src/k8s.io/api/authorization/v1/types.go (SubjectAccessReview: spec.user, groups, uid,
  extra, resourceAttributes{namespace, verb, group, resource, name}; status.allowed, denied,
  reason, evaluationError), pkg/registry/authorization/subjectaccessreview/rest.go and
  pkg/apis/authorization/validation/validation.go;
- plugin/pkg/auth/authorizer/rbac/rbac.go (RuleAllows: verbs, apiGroups, resources and
  resourceNames matched by name, so a verb or resource no API serves is granted like any
  other) and pkg/registry/rbac/validation/rule.go (VisitRulesFor: ClusterRoleBindings, then the
  RoleBindings of the namespace asked about; subjects User, Group, ServiceAccount).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient, AuthenticationV1Api, AuthorizationV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException

from shared.errors import BackendUnavailable, Unauthorized
from shared.identity import Identity
from shared.kubeidentity import (
    NEGATIVE_TTL_S,
    PLATFORM_ADMIN,
    POSITIVE_TTL_S,
    AccessCheck,
    KubernetesIdentity,
    KubernetesReviewer,
)
from shared.settings import Settings
from tests.kube_double import KubeDouble, Rbac, running_double
from tools import manifests

NS = "llm"
ALICE = "sha256~alice-token-0123456789"
BOB = "sha256~bob-token-0123456789"
ROBOT = "eyJhbGciOiJSUzI1NiJ9.robot.sig"
OUR_AUDIENCE = "maas-key-manager"
RBAC_API = "rbac.authorization.k8s.io"


class Clock:
    """A monotonic clock the test moves: TTLs are checked without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def kube() -> Iterator[tuple[KubeDouble, ApiClient]]:
    with running_double() as (double, client):
        double.add_token(ALICE, "alice@example.com", uid="uid-alice", groups=("maas-admins", "devs"),
                         extra={"scopes.authorization.openshift.io": ["user:full"]})
        double.add_token(BOB, "bob", uid="uid-bob", groups=("devs",))
        double.add_token(ROBOT, f"system:serviceaccount:{NS}:ci", uid="uid-ci",
                         groups=("system:serviceaccounts", f"system:serviceaccounts:{NS}"))
        yield double, client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reviewer(kube: tuple[KubeDouble, ApiClient], clock: Clock) -> KubernetesReviewer:
    return KubernetesReviewer(kube[1], namespace=NS, clock=clock)


def grant(client: ApiClient, *objects: dict[str, Any]) -> None:
    """Write RBAC objects as a cluster admin would (kubectl apply), through the real client."""
    api = RbacAuthorizationV1Api(client)
    for obj in objects:
        body = copy.deepcopy(obj)
        namespace = body["metadata"].get("namespace")
        create: dict[str, Callable[[], Any]] = {
            "ClusterRole": lambda: api.create_cluster_role(body),
            "ClusterRoleBinding": lambda: api.create_cluster_role_binding(body),
            "Role": lambda: api.create_namespaced_role(namespace, body),
            "RoleBinding": lambda: api.create_namespaced_role_binding(namespace, body),
        }
        create[body["kind"]]()


def platform_admin_role() -> dict[str, Any]:
    """The ClusterRole the manifests render for a cluster admin to bind."""
    (role,) = [d for d in manifests.identity_rbac(Settings(namespace=NS)) if d["metadata"]["name"] == manifests.PLATFORM_ADMIN_ROLE]
    return role


def binding(kind: str, name: str, subject: dict[str, str], *, role: str = manifests.PLATFORM_ADMIN_ROLE,
            role_kind: str = "ClusterRole", namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, str] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": f"{RBAC_API}/v1", "kind": kind, "metadata": metadata,
        "roleRef": {"apiGroup": RBAC_API, "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": RBAC_API, **subject} if subject["kind"] != "ServiceAccount" else subject],
    }


def group(name: str) -> dict[str, str]:
    return {"kind": "Group", "name": name}


def user(name: str) -> dict[str, str]:
    return {"kind": "User", "name": name}


def asked(double: KubeDouble) -> list[dict[str, Any]]:
    """Record the spec of every SubjectAccessReview the double answers from now on."""
    specs: list[dict[str, Any]] = []
    answer = double._access_review

    def recording(body: Any) -> dict[str, Any]:
        specs.append(copy.deepcopy(body["spec"]))
        return answer(body)

    double._access_review = recording  # type: ignore[method-assign]
    return specs


# -- who: TokenReview ------------------------------------------------------------------------


def test_a_valid_token_becomes_the_users_identity(kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer) -> None:
    alice = reviewer.review(ALICE)
    assert alice == KubernetesIdentity(
        subject="alice@example.com", method="kubernetes", email="alice@example.com",
        # The API server adds system:authenticated to every authenticated user.
        groups=("maas-admins", "devs", "system:authenticated"), issuer="kubernetes",
        uid="uid-alice", extra=(("scopes.authorization.openshift.io", ("user:full",)),),
    )
    assert isinstance(alice, Identity) and alice.actor == "kubernetes:alice@example.com"
    robot = reviewer.review(ROBOT)
    # A name that is not an address is no email: the subject names the user.
    assert (robot.subject, robot.email, robot.actor) == (
        f"system:serviceaccount:{NS}:ci", None, f"kubernetes:system:serviceaccount:{NS}:ci")
    assert reviewer.review(BOB).email is None
    assert kube[0].review_count() == 3


def test_an_unknown_token_is_unauthorized_with_the_reviews_reason(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer
) -> None:
    with pytest.raises(Unauthorized) as refused:
        reviewer.review("sha256~not-a-token")
    assert refused.value.message == "Kubernetes did not authenticate the token: invalid bearer token"
    assert refused.value.status == 401
    # No token asks nothing: the API server would answer 400.
    with pytest.raises(Unauthorized, match="no Kubernetes token"):
        reviewer.review("")
    assert kube[0].review_count() == 1


def test_a_reason_never_carries_the_token(kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer) -> None:
    """An authentication webhook may echo what it was given; the reason is one bounded line."""
    double, _ = kube
    answer = double._token_review

    def echoing(body: Any) -> dict[str, Any]:
        review = answer(body)
        review["status"]["error"] = f"webhook: token {body['spec']['token']} unknown\nsee the logs " + "x" * 500
        return review

    double._token_review = echoing  # type: ignore[method-assign]
    with pytest.raises(Unauthorized) as refused:
        reviewer.review("sha256~secret-looking-token")
    message = refused.value.message
    assert "secret-looking" not in message and "[token]" in message
    assert "\n" not in message and len(message) < 400


def test_audiences_are_asked_for_and_must_be_confirmed(kube: tuple[KubeDouble, ApiClient], clock: Clock) -> None:
    double, client = kube
    ours = double.add_token("for-us", "carol", groups=("devs",), audiences=(OUR_AUDIENCE,))
    scoped = KubernetesReviewer(client, namespace=NS, audiences=[OUR_AUDIENCE], clock=clock)
    assert scoped.review("for-us").subject == ours.username
    # A token for the API server (the default audience) is not one meant for us.
    with pytest.raises(Unauthorized) as refused:
        scoped.review(BOB)
    assert refused.value.message == (
        'Kubernetes did not authenticate the token: [invalid bearer token, token audiences '
        '["https://kubernetes.default.svc"] is invalid for the target audiences ["maas-key-manager"]]'
    )
    # And without audiences of ours, the API server's own apply: our token is not for it.
    with pytest.raises(Unauthorized, match="is invalid for the target audiences"):
        KubernetesReviewer(client, namespace=NS, clock=clock).review("for-us")


def test_an_authenticated_token_whose_audience_is_not_confirmed_is_refused(
    kube: tuple[KubeDouble, ApiClient], clock: Clock
) -> None:
    """types.go, TokenReviewStatus.audiences: a server that is not audience-aware answers none,
    having only vouched for the token as its own."""
    double, client = kube
    double.add_token("for-us", "carol", audiences=(OUR_AUDIENCE,))
    answer = double._token_review

    def unaware(body: Any) -> dict[str, Any]:
        review = answer(body)
        review["status"].pop("audiences", None)
        return review

    double._token_review = unaware  # type: ignore[method-assign]
    with pytest.raises(Unauthorized, match="did not confirm the token is meant for this service"):
        KubernetesReviewer(client, namespace=NS, audiences=[OUR_AUDIENCE], clock=clock).review("for-us")
    # Without audiences of ours there is nothing to confirm.
    double.add_token("plain", "dave")
    assert KubernetesReviewer(client, namespace=NS, clock=clock).review("plain").subject == "dave"


# -- what: SubjectAccessReview ---------------------------------------------------------------


def test_platform_admin_through_a_cluster_role_binding_to_a_group(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer
) -> None:
    double, client = kube
    alice, bob = reviewer.review(ALICE), reviewer.review(BOB)
    assert not reviewer.is_platform_admin(alice)
    grant(client, platform_admin_role(), binding("ClusterRoleBinding", "maas-admins", group("maas-admins")))
    fresh = KubernetesReviewer(client, namespace=NS)
    assert fresh.is_platform_admin(alice)
    assert not fresh.is_platform_admin(bob)  # devs only
    specs = asked(double)
    KubernetesReviewer(client, namespace=NS).is_platform_admin(alice)
    # Asked about with everything the TokenReview said: OpenShift scopes a token in its extra.
    assert specs == [{
        "user": "alice@example.com", "groups": ["maas-admins", "devs", "system:authenticated"], "uid": "uid-alice",
        "extra": {"scopes.authorization.openshift.io": ["user:full"]},
        "resourceAttributes": {"namespace": NS, "verb": "admin", "group": "maas.opendatahub.io", "resource": "teams"},
    }]


def test_platform_admin_through_a_role_binding_in_the_namespace_only(
    kube: tuple[KubeDouble, ApiClient], clock: Clock
) -> None:
    _, client = kube
    grant(client, platform_admin_role(),
          binding("RoleBinding", "bob-elsewhere", user("bob"), namespace="other"),
          binding("RoleBinding", "ci-here", {"kind": "ServiceAccount", "name": "ci"}, namespace=NS))
    reviewer = KubernetesReviewer(client, namespace=NS, clock=clock)
    assert reviewer.is_platform_admin(reviewer.review(ROBOT))  # a ServiceAccount of the binding's namespace
    assert not reviewer.is_platform_admin(reviewer.review(BOB))  # bound in another namespace
    # The same binding, seen from the install in "other".
    assert KubernetesReviewer(client, namespace="other", clock=clock).is_platform_admin(reviewer.review(BOB))
    grant(client, binding("RoleBinding", "bob-here", user("bob"), namespace=NS))
    assert KubernetesReviewer(client, namespace=NS, clock=clock).is_platform_admin(reviewer.review(BOB))


@pytest.mark.parametrize(("rules", "admin"), [
    ([{"apiGroups": ["maas.opendatahub.io"], "resources": ["teams"], "verbs": ["admin"]}], True),
    ([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], True),  # cluster-admin
    # What namespace owners hold (the built-in admin and edit roles' standard verbs): not enough.
    ([{"apiGroups": ["maas.opendatahub.io"], "resources": ["teams"], "verbs": ["get", "list", "update", "delete"]}], False),
    # Naming teams grants on those teams, never platform admin (asked without a name).
    ([{"apiGroups": ["maas.opendatahub.io"], "resources": ["teams"], "resourceNames": ["team-a"], "verbs": ["admin"]}], False),
    ([{"apiGroups": [""], "resources": ["teams"], "verbs": ["admin"]}], False),
    ([{"apiGroups": ["maas.opendatahub.io"], "resources": ["keys"], "verbs": ["admin"]}], False),
])
def test_only_a_rule_naming_the_verb_and_resource_grants_platform_admin(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer, rules: list[dict[str, Any]], admin: bool
) -> None:
    _, client = kube
    grant(client, {"apiVersion": f"{RBAC_API}/v1", "kind": "Role", "metadata": {"name": "r", "namespace": NS}, "rules": rules},
          binding("RoleBinding", "r", user("bob"), role="r", role_kind="Role", namespace=NS))
    assert reviewer.is_platform_admin(reviewer.review(BOB)) is admin


def test_an_arbitrary_check_and_a_named_object(kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer) -> None:
    _, client = kube
    grant(client, {"apiVersion": f"{RBAC_API}/v1", "kind": "Role", "metadata": {"name": "team-a-admin", "namespace": NS},
                   "rules": [{"apiGroups": ["maas.opendatahub.io"], "resources": ["teams"], "resourceNames": ["team-a"],
                              "verbs": ["admin"]}]},
          binding("RoleBinding", "team-a-admin", group("devs"), role="team-a-admin", role_kind="Role", namespace=NS))
    bob = reviewer.review(BOB)
    assert reviewer.allows(bob, PLATFORM_ADMIN, name="team-a")
    assert not reviewer.allows(bob, PLATFORM_ADMIN, name="team-b")
    assert not reviewer.allows(bob, AccessCheck(verb="get", resource="teams"), name="team-a")
    assert not reviewer.is_platform_admin(bob)


def test_only_a_kubernetes_identity_is_asked_about(reviewer: KubernetesReviewer) -> None:
    with pytest.raises(ValueError, match="oidc"):
        reviewer.is_platform_admin(Identity(subject="alice", method="oidc", issuer="https://idp.example.com"))


# -- caching ---------------------------------------------------------------------------------


def test_a_review_is_reused_within_its_ttl_and_a_revoked_token_stops_after_it(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer, clock: Clock
) -> None:
    double, _ = kube
    first = reviewer.review(ALICE)
    clock.advance(POSITIVE_TTL_S - 1)
    assert reviewer.review(ALICE) == first
    assert double.review_count() == 1  # the second review made no API request
    double.revoke_token(ALICE)
    assert reviewer.review(ALICE) == first  # still within the 30 s
    clock.advance(1)
    with pytest.raises(Unauthorized, match="invalid bearer token"):
        reviewer.review(ALICE)
    assert double.review_count() == 2
    # The cache holds digests, not tokens.
    entries = reviewer._tokens._entries
    assert entries and all(isinstance(key, bytes) and len(key) == 32 for key in entries)
    assert ALICE not in repr(list(entries.items()))


def test_a_refusal_is_reused_briefly(kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer, clock: Clock) -> None:
    double, _ = kube
    with pytest.raises(Unauthorized):
        reviewer.review("sha256~new-token")
    double.add_token("sha256~new-token", "erin")
    clock.advance(NEGATIVE_TTL_S - 1)
    with pytest.raises(Unauthorized):
        reviewer.review("sha256~new-token")
    assert double.review_count() == 1
    clock.advance(1)
    assert reviewer.review("sha256~new-token").subject == "erin"
    assert double.review_count() == 2


def test_access_answers_are_reused_a_grant_within_5s_a_removal_within_30s(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer, clock: Clock
) -> None:
    double, client = kube
    bob = reviewer.review(BOB)
    assert not reviewer.is_platform_admin(bob)
    grant(client, platform_admin_role(), binding("ClusterRoleBinding", "bob", user("bob")))
    assert not reviewer.is_platform_admin(bob)
    assert double.review_count("subjectaccessreviews") == 1
    clock.advance(NEGATIVE_TTL_S)
    assert reviewer.is_platform_admin(bob)
    RbacAuthorizationV1Api(client).delete_cluster_role_binding("bob")
    clock.advance(POSITIVE_TTL_S - 1)
    assert reviewer.is_platform_admin(bob)
    assert double.review_count("subjectaccessreviews") == 2
    clock.advance(1)
    assert not reviewer.is_platform_admin(bob)
    assert double.review_count("subjectaccessreviews") == 3


def test_the_caches_are_bounded(kube: tuple[KubeDouble, ApiClient], clock: Clock) -> None:
    double, client = kube
    reviewer = KubernetesReviewer(client, namespace=NS, cache_entries=2, clock=clock)
    for token in (ALICE, BOB, ROBOT):
        reviewer.review(token)
    assert len(reviewer._tokens) == 2
    reviewer.review(ROBOT)
    assert double.review_count() == 3  # the newest is kept
    reviewer.review(ALICE)
    assert double.review_count() == 4  # the oldest was dropped


# -- failures --------------------------------------------------------------------------------


def test_an_unreachable_api_is_backend_unavailable_and_not_remembered(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer
) -> None:
    double, _ = kube
    with double.unreachable():
        with pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
            reviewer.review(ALICE)
    alice = reviewer.review(ALICE)
    with double.unreachable():
        with pytest.raises(BackendUnavailable, match="Kubernetes API unreachable"):
            reviewer.is_platform_admin(alice)
    assert not reviewer.is_platform_admin(alice)


def test_a_forbidden_review_names_the_rbac_the_service_account_needs(
    kube: tuple[KubeDouble, ApiClient], reviewer: KubernetesReviewer
) -> None:
    double, _ = kube
    alice = reviewer.review(ALICE)
    with double.forbid():
        with pytest.raises(BackendUnavailable) as refused:
            reviewer.review(BOB)
        assert refused.value.status == 503
        assert "needs `create` on tokenreviews.authentication.k8s.io" in refused.value.message
        assert "ClusterRole" in refused.value.message and BOB not in refused.value.message
        with pytest.raises(BackendUnavailable, match="needs `create` on subjectaccessreviews.authorization.k8s.io"):
            reviewer.is_platform_admin(alice)


# -- the key manager's own RBAC, as rendered -------------------------------------------------


def account_rbac(documents: list[dict[str, Any]], account: str, *, drop: str | None = None) -> Rbac:
    """The Roles and ClusterRoles the rendered bindings give one account's ServiceAccount, as
    tests/test_kube_rbac.py builds them for the namespaced grants; `drop` a resource's rules."""
    subject = {"kind": "ServiceAccount", "name": manifests.account_name(account), "namespace": NS}
    bound = {(b["kind"], b["metadata"].get("namespace"), b["roleRef"]["name"])
             for b in documents if b["kind"] in ("RoleBinding", "ClusterRoleBinding") and subject in b["subjects"]}
    roles = [copy.deepcopy(d) for d in documents
             if (d["kind"] == "Role" and ("RoleBinding", d["metadata"]["namespace"], d["metadata"]["name"]) in bound)
             or (d["kind"] == "ClusterRole" and ("ClusterRoleBinding", None, d["metadata"]["name"]) in bound)]
    for role in roles:
        role["rules"] = [rule for rule in role["rules"] if drop not in rule["resources"]]
    return Rbac.from_documents(roles, user=f"system:serviceaccount:{NS}:{manifests.account_name(account)}")


@pytest.mark.parametrize("account", manifests.reviewer_accounts())
def test_the_rendered_rbac_lets_each_admin_checking_account_ask_both_reviews(
    kube: tuple[KubeDouble, ApiClient], clock: Clock, account: str
) -> None:
    double, client = kube
    documents = manifests.render(Settings(namespace=NS))
    grant(client, platform_admin_role(), binding("ClusterRoleBinding", "admins", group("maas-admins")))
    double.rbac = account_rbac(documents, account)
    reviewer = KubernetesReviewer(client, namespace=NS, clock=clock)
    assert reviewer.is_platform_admin(reviewer.review(ALICE))
    assert double.rbac.denied == []
    assert {(None, "authentication.k8s.io", "tokenreviews", "create"),
            (None, "authorization.k8s.io", "subjectaccessreviews", "create")} <= double.rbac.used


@pytest.mark.parametrize("resource", ["tokenreviews", "subjectaccessreviews"])
def test_without_its_grant_a_review_is_refused_naming_it(kube: tuple[KubeDouble, ApiClient], clock: Clock, resource: str) -> None:
    double, client = kube
    double.rbac = account_rbac(manifests.render(Settings(namespace=NS)), "writer", drop=resource)
    reviewer = KubernetesReviewer(client, namespace=NS, clock=clock)
    with pytest.raises(BackendUnavailable, match=f"needs `create` on {resource}"):
        reviewer.is_platform_admin(reviewer.review(ALICE))
    assert [(a.resource, a.verb, a.namespace) for a in double.rbac.denied] == [(resource, "create", None)]


def test_an_account_that_checks_no_admin_credentials_cannot_review(kube: tuple[KubeDouble, ApiClient], clock: Clock) -> None:
    double, client = kube
    double.rbac = account_rbac(manifests.render(Settings(namespace=NS)), "cleanup")
    with pytest.raises(BackendUnavailable) as refused:
        KubernetesReviewer(client, namespace=NS, clock=clock).review(ALICE)
    assert (
        'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:llm:maas-key-manager-cleanup" '
        'cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope'
    ) in refused.value.message


# -- the double's reviews, as the API server answers them ------------------------------------


def test_the_doubles_reviews_keep_the_api_servers_shapes(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    authn, authz = AuthenticationV1Api(client), AuthorizationV1Api(client)
    with pytest.raises(ApiException) as empty:
        authn.create_token_review({"spec": {"token": ""}})
    assert (empty.value.status, "token is required for TokenReview in authentication") == (400, _message(empty.value))
    unknown = authn.create_token_review({"spec": {"token": "nope"}}).status
    assert (unknown.authenticated, unknown.error) in ((None, "invalid bearer token"), (False, "invalid bearer token"))
    known = authn.create_token_review({"spec": {"token": BOB}}).status
    assert known.authenticated and known.audiences == ["https://kubernetes.default.svc"]
    assert (known.user.username, known.user.uid, known.user.groups) == ("bob", "uid-bob", ["devs", "system:authenticated"])
    with pytest.raises(ApiException) as nobody:
        authz.create_subject_access_review({"spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}})
    assert nobody.value.status == 422 and "at least one of user or group must be specified" in _message(nobody.value)
    with pytest.raises(ApiException) as nothing:
        authz.create_subject_access_review({"spec": {"user": "bob"}})
    assert nothing.value.status == 422 and "exactly one of nonResourceAttributes or resourceAttributes" in _message(nothing.value)
    # system:masters is allowed everything, ahead of RBAC (and with no reason).
    masters = authz.create_subject_access_review(
        {"spec": {"user": "root", "groups": ["system:masters"], "resourceAttributes": {"verb": "admin", "resource": "teams"}}}
    ).status
    assert (masters.allowed, masters.reason) == (True, None)
    grant(client, binding("ClusterRoleBinding", "dangling", group("devs"), role="missing"))
    refused = authz.create_subject_access_review(
        {"spec": {"user": "bob", "groups": ["devs"], "resourceAttributes": {"verb": "get", "resource": "pods"}}}).status
    assert (refused.allowed, refused.reason) == (False, 'RBAC: clusterrole.rbac.authorization.k8s.io "missing" not found')


def _message(exc: ApiException) -> str:
    import json

    return str(json.loads(exc.body)["message"])
