"""Signing in to the admin API with cluster identities, end to end: the functions on the
Kubernetes store, a TokenReview per new token and a SubjectAccessReview for platform admin, through
the real kubernetes client against the API double (tests/kube_double.py). The review shapes are
checked against the API server's source in tests/test_kube_identity.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from functions._context import install_context, reset_context
from shared.context import Context
from shared.settings import Settings
from shared.store.kube import KubernetesStore
from tests.admin_client import DirectClient
from tests.kube_double import KubeDouble, running_double
from tests.test_kube_identity import binding, grant, group, platform_admin_role

NS = "llm"
ALICE, BOB, ROBOT = "sha256~alice-token", "sha256~bob-token", "sa-token"


@pytest.fixture
def cluster(admin_key: str) -> Iterator[tuple[KubeDouble, DirectClient]]:
    settings = Settings(admin_key=SecretStr(admin_key), store="kubernetes", namespace=NS)
    with running_double() as (double, client):
        double.add_token(ALICE, "alice", uid="uid-alice", groups=("platform-team",))
        double.add_token(BOB, "bob", uid="uid-bob", groups=("devs",))
        double.add_token(ROBOT, f"system:serviceaccount:{NS}:ci", uid="uid-ci", groups=("system:serviceaccounts",))
        grant(client, platform_admin_role(), binding("ClusterRoleBinding", "platform-team", group("platform-team")))
        store = KubernetesStore(client, namespace=NS, key_selector=settings.key_selector)
        install_context(Context(settings=settings, store=store))
        try:
            yield double, DirectClient(admin_key)
        finally:
            reset_context()


def _as(token: str) -> str:
    return f"Bearer {token}"


def test_a_cluster_admin_group_makes_a_platform_admin(cluster: tuple[KubeDouble, DirectClient]) -> None:
    _, api = cluster
    made = api.call("POST", "/teams", json={"team_id": "alpha", "token_limit": 100, "time_window": "1h"},
                    auth=_as(ALICE))
    assert made.status == 201, made.text
    me = api.call("GET", "/me", auth=_as(ALICE)).body
    assert me["platform_admin"] is True and me["signed_in_with"] == "kubernetes" and me["user_id"] == "alice"
    entries = api.call("GET", "/audit?action=create_team").body["entries"]
    assert entries[0]["actor"] == "kubernetes:alice"


def test_a_user_without_the_grant_is_a_member_where_added(cluster: tuple[KubeDouble, DirectClient]) -> None:
    _, api = cluster
    assert api.call("POST", "/teams", json={"team_id": "alpha", "token_limit": 100, "time_window": "1h"}).status == 201
    refused = api.call("GET", "/teams", auth=_as(BOB))
    assert refused.status == 403 and "platform admin" in refused.body["error"], refused.text
    assert api.call("POST", "/me/keys", json={"team_id": "alpha"}, auth=_as(BOB)).status == 403
    added = api.call("POST", "/teams/alpha/members", json={"user_id": "bob", "user_email": "bob@example.com"}, auth=_as(ALICE))
    assert added.status == 201, added.text
    mine = api.call("POST", "/me/keys", json={"team_id": "alpha", "alias": "laptop"}, auth=_as(BOB))
    assert mine.status == 201, mine.text
    assert mine.body["user_id"] == "bob"
    listed = api.call("GET", "/me/keys", auth=_as(BOB)).body
    assert [key["secret_name"] for key in listed["keys"]] == [mine.body["secret_name"]]
    assert api.call("POST", f"/keys/{mine.body['secret_name']}/revoke", auth=_as(BOB)).status == 200


def test_a_user_name_that_cannot_be_a_user_id_gets_no_key_of_its_own(
        cluster: tuple[KubeDouble, DirectClient]) -> None:
    _, api = cluster
    assert api.call("POST", "/teams", json={"team_id": "alpha", "token_limit": 100, "time_window": "1h"}).status == 201
    me = api.call("GET", "/me", auth=_as(ROBOT)).body
    assert me["user_id"] == f"system:serviceaccount:{NS}:ci" and me["teams"] == []
    refused = api.call("POST", "/me/keys", json={"team_id": "alpha"}, auth=_as(ROBOT))
    assert refused.status == 403 and "MAAS_OIDC_USER_CLAIM" in refused.body["error"], refused.text


def test_a_token_the_cluster_does_not_know_is_401(cluster: tuple[KubeDouble, DirectClient]) -> None:
    double, api = cluster
    reply = api.call("GET", "/me", auth=_as("sha256~nobody"))
    assert reply.status == 401 and "sha256~nobody" not in reply.text
    double.revoke_token(BOB)
    assert api.call("GET", "/me", auth=_as(BOB)).status == 401


def test_sign_in_with_cluster_tokens_can_be_turned_off(admin_key: str) -> None:
    settings = Settings(admin_key=SecretStr(admin_key), store="kubernetes", namespace=NS, kubernetes_sign_in=False)
    with running_double() as (double, client):
        double.add_token(ALICE, "alice", groups=("platform-team",))
        install_context(Context(settings=settings, store=KubernetesStore(client, namespace=NS,
                                                                         key_selector=settings.key_selector)))
        try:
            reply: Any = DirectClient(admin_key).call("GET", "/me", auth=_as(ALICE))
            assert reply.status == 401
            assert double.review_count() == 0
        finally:
            reset_context()
