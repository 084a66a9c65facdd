"""The API double keeps the API server's semantics the adapters rely on (checked through the real
client), the one mapping of API answers to our errors, and the layering rule that only the
Kubernetes adapters import `kubernetes`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1DeleteOptions
from kubernetes.client.exceptions import ApiException

from shared.errors import BackendUnavailable, Conflict, InvalidRequest, MaasError, NotFound
from shared.store.kube import translate
from tests.kube_double import KubeDouble, parse_label_selector, running_double, version_info

NS = "llm"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def kube() -> Iterator[tuple[KubeDouble, ApiClient]]:
    with running_double() as pair:
        yield pair


def status_of(call: Any) -> dict[str, Any]:
    with pytest.raises(ApiException) as caught:
        call()
    body = json.loads(caught.value.body)
    assert body["code"] == caught.value.status
    return body


def secret(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, **extra}


def test_status_bodies_are_the_api_servers(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    core = CoreV1Api(client)
    assert status_of(lambda: core.read_namespaced_secret("nope", NS)) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'secrets "nope" not found', "reason": "NotFound", "code": 404,
        "details": {"name": "nope", "kind": "secrets"},
    }
    core.create_namespaced_secret(NS, secret("a"))
    exists = status_of(lambda: core.create_namespaced_secret(NS, secret("a")))
    assert (exists["reason"], exists["code"], exists["message"]) == ("AlreadyExists", 409, 'secrets "a" already exists')
    stale = status_of(lambda: core.replace_namespaced_secret("a", NS, {"metadata": {"name": "a", "resourceVersion": "0"}}))
    assert (stale["reason"], stale["code"]) == ("Conflict", 409)
    assert "the object has been modified" in stale["message"]
    bad = status_of(lambda: core.create_namespaced_secret(NS, secret("b", {"x": "not valid!"})))
    assert (bad["reason"], bad["code"], bad["details"]["causes"][0]["field"]) == ("Invalid", 422, "metadata.labels")
    custom = status_of(lambda: CustomObjectsApi(client).get_namespaced_custom_object("kuadrant.io", "v1", NS, "authpolicies", "x"))
    assert custom["details"] == {"name": "x", "kind": "authpolicies", "group": "kuadrant.io"}


def test_resource_versions_are_monotonic_and_server_fields_are_set(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    core = CoreV1Api(client)
    made = core.create_namespaced_secret(NS, {"metadata": {"generateName": "key-"}, "stringData": {"k": "v"}})
    assert made.metadata.name.startswith("key-") and len(made.metadata.name) == 9
    assert made.metadata.uid and made.metadata.creation_timestamp is not None
    assert made.data == {"k": "dg=="} and made.type == "Opaque"
    versions = [int(made.metadata.resource_version)]
    for n in range(3):
        patched = core.patch_namespaced_secret(made.metadata.name, NS, {"metadata": {"labels": {"n": str(n)}}})
        versions.append(int(patched.metadata.resource_version))
    assert versions == sorted(versions) and len(set(versions)) == 4
    again = core.patch_namespaced_secret(made.metadata.name, NS, {"metadata": {"labels": {"n": "2"}}})
    assert int(again.metadata.resource_version) == versions[-1]  # a no-op write keeps its version
    bad = status_of(lambda: core.create_namespaced_secret(NS, {"metadata": {"name": "x"}, "data": {"k": "***"}}))
    assert bad["reason"] == "Invalid"


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=gold", ["a"]),
        ("tier==gold", ["a"]),
        ("tier!=gold", ["b", "c"]),
        ("tier in (gold, silver)", ["a", "b"]),
        ("tier notin (gold)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("tier,app=x", ["a"]),
        ("tier in (silver),!app", ["b"]),
    ],
)
def test_label_selectors(kube: tuple[KubeDouble, ApiClient], selector: str, expected: list[str]) -> None:
    _, client = kube
    core = CoreV1Api(client)
    core.create_namespaced_secret(NS, secret("a", {"tier": "gold", "app": "x"}))
    core.create_namespaced_secret(NS, secret("b", {"tier": "silver"}))
    core.create_namespaced_secret(NS, secret("c", {"app": "y"}))
    assert [s.metadata.name for s in core.list_namespaced_secret(NS, label_selector=selector).items] == expected


def test_bad_selectors_are_bad_requests() -> None:
    for text in ("tier in ()", "a=b=c(", "bad key!=x"):
        with pytest.raises(Exception, match="unable to parse"):
            parse_label_selector(text)


def test_paging_and_field_selectors(kube: tuple[KubeDouble, ApiClient]) -> None:
    _, client = kube
    core = CoreV1Api(client)
    for name in "abcde":
        core.create_namespaced_secret(NS, secret(name))
    first = core.list_namespaced_secret(NS, limit=2)
    second = core.list_namespaced_secret(NS, limit=2, _continue=first.metadata._continue)
    assert [s.metadata.name for s in first.items + second.items] == ["a", "b", "c", "d"]
    assert [s.metadata.name for s in core.list_namespaced_secret(NS, field_selector="metadata.name=c").items] == ["c"]


def test_patch_kinds_and_delete_preconditions(kube: tuple[KubeDouble, ApiClient]) -> None:
    double, client = kube
    core = CoreV1Api(client)
    made = core.create_namespaced_secret(NS, secret("a", {"x": "1", "y": "2"}))
    core.patch_namespaced_secret("a", NS, [{"op": "remove", "path": "/metadata/labels/y"}])
    core.patch_namespaced_secret("a", NS, {"metadata": {"labels": {"x": None, "z": "3"}}})
    assert core.read_namespaced_secret("a", NS).metadata.labels == {"z": "3"}
    stale = V1DeleteOptions(preconditions={"resourceVersion": made.metadata.resource_version})
    assert status_of(lambda: core.delete_namespaced_secret("a", NS, body=stale))["reason"] == "Conflict"
    core.delete_namespaced_secret("a", NS)
    assert double.names("secrets", NS) == []


def test_garbage_collection_follows_owner_references(kube: tuple[KubeDouble, ApiClient]) -> None:
    double, client = kube
    core = CoreV1Api(client)

    def owned(name: str, *owners: Any) -> None:
        refs = [{"apiVersion": "v1", "kind": "Secret", "name": o.metadata.name, "uid": o.metadata.uid} for o in owners]
        core.create_namespaced_secret(NS, {"metadata": {"name": name, "ownerReferences": refs}})

    one = core.create_namespaced_secret(NS, secret("one"))
    two = core.create_namespaced_secret(NS, secret("two"))
    owned("child", one)
    owned("shared", one, two)
    grandchild_owner = core.read_namespaced_secret("child", NS)
    owned("grandchild", grandchild_owner)
    core.delete_namespaced_secret("one", NS)
    assert double.names("secrets", NS) == ["shared", "two"]  # cascade; a living owner keeps `shared`
    assert [r["name"] for r in double.get("secrets", NS, "shared")["metadata"]["ownerReferences"]] == ["two"]  # type: ignore[index]
    core.delete_namespaced_secret("two", NS, body=V1DeleteOptions(propagation_policy="Orphan"))
    assert double.names("secrets", NS) == ["shared"]
    core.delete_collection_namespaced_secret(NS)
    assert double.names("secrets", NS) == []


def test_custom_objects_keep_status_and_require_a_version_to_replace(kube: tuple[KubeDouble, ApiClient]) -> None:
    double, client = kube
    api = CustomObjectsApi(client)
    body = {"apiVersion": "kuadrant.io/v1", "kind": "AuthPolicy", "metadata": {"name": "p"}, "spec": {"a": 1}, "status": {"s": 1}}
    made = api.create_namespaced_custom_object("kuadrant.io", "v1", NS, "authpolicies", body)
    assert made["metadata"]["generation"] == 1
    missing = status_of(lambda: api.replace_namespaced_custom_object("kuadrant.io", "v1", NS, "authpolicies", "p", {**body, "spec": {"a": 2}}))
    assert missing["reason"] == "Invalid" and "resourceVersion" in missing["message"]
    replaced = api.replace_namespaced_custom_object(
        "kuadrant.io", "v1", NS, "authpolicies", "p",
        {**body, "metadata": {"name": "p", "resourceVersion": made["metadata"]["resourceVersion"]}, "spec": {"a": 2}, "status": {"s": 9}},
    )
    assert replaced["metadata"]["generation"] == 2 and replaced["status"] == {"s": 1}
    assert status_of(lambda: api.create_namespaced_custom_object("kuadrant.io", "v1", NS, "authpolicies", {"metadata": {"name": "q"}}))["code"] == 400


@pytest.mark.parametrize(
    ("status", "reason", "error", "words"),
    [
        (404, "NotFound", NotFound, "team 't' not found"),
        (409, "AlreadyExists", Conflict, "already exists"),
        (409, "Conflict", Conflict, "modified concurrently"),
        (422, "Invalid", InvalidRequest, "Kubernetes rejected"),
        (400, "BadRequest", InvalidRequest, "Kubernetes rejected"),
        (401, "Unauthorized", BackendUnavailable, "RBAC"),
        (403, "Forbidden", BackendUnavailable, "RBAC"),
        (500, "InternalError", BackendUnavailable, "Kubernetes API error 500"),
        (0, "SSLError", BackendUnavailable, "Kubernetes API unreachable"),
    ],
)
def test_every_api_answer_maps_to_one_of_our_errors(status: int, reason: str, error: type[MaasError], words: str) -> None:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason, "message": "m", "code": status})
    mapped = translate(exc, "team 't'")
    assert type(mapped) is error and words in mapped.message



def test_cluster_scoped_kinds_have_no_namespace(kube: tuple[KubeDouble, ApiClient]) -> None:
    double, client = kube
    api, core = CustomObjectsApi(client), CoreV1Api(client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com", "namespace": "ignored"},
        "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
                 "versions": [{"name": "v1", "served": True, "storage": True}]},
    }
    made = api.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", crd)
    assert "namespace" not in made["metadata"] and made["metadata"]["uid"]
    got = api.get_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", "things.example.com")
    assert got["spec"]["versions"][0]["name"] == "v1"
    listed = api.list_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["things.example.com"]
    # A namespaced path to a cluster-scoped kind does not exist, as on the API server.
    assert status_of(lambda: api.get_namespaced_custom_object(
        "apiextensions.k8s.io", "v1", NS, "customresourcedefinitions", "things.example.com"))["code"] == 404
    api.delete_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", "things.example.com")
    assert status_of(lambda: api.get_cluster_custom_object(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "things.example.com"))["code"] == 404
    # A namespaced kind still has no cluster-scoped object by name.
    assert status_of(lambda: api.get_cluster_custom_object("kuadrant.io", "v1", "authpolicies", "x"))["code"] == 404
    core.create_namespace({"metadata": {"name": "llm", "labels": {"team": "a"}}})
    assert core.read_namespace("llm").metadata.labels == {"team": "a"}
    assert [n.metadata.name for n in core.list_namespace().items] == ["llm"]
    assert status_of(lambda: core.read_namespace("nope"))["details"] == {"name": "nope", "kind": "namespaces"}
    assert double.get("namespaces", "", "llm") is not None


def test_services_and_version(kube: tuple[KubeDouble, ApiClient]) -> None:
    from kubernetes.client import VersionApi

    double, client = kube
    core = CoreV1Api(client)
    core.create_namespaced_service(NS, {"metadata": {"name": "gw"}, "spec": {"ports": [{"port": 80}]}})
    assert core.read_namespaced_service("gw", NS).spec.ports[0].port == 80
    assert status_of(lambda: core.read_namespaced_service("gw", "other"))["reason"] == "NotFound"
    assert VersionApi(client).get_code().git_version == "v1.31.2"
    double.version = version_info("v1.27.0")
    assert VersionApi(client).get_code().minor == "27"
