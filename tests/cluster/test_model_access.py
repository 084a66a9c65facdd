"""A key's models allow-list and a team's one budget across models, in a cluster (issue 10,
findings 5 and 7; tests/cluster/SOURCES.md §5, §7, §17).

Keys are made through the admin API's function targets on the Kubernetes store, against the API
double; the policy sync applies the AuthPolicy and the `maas-models` HTTPRoute generated from
the KServe objects in the double. Authorino (tests/cluster/authorino.py, with cel-go's `split`
emulated) and Limitador (tests/cluster/limitador.py) are the models of what the cluster does with
them. A request's path is the one the client sends (`/<model>/v1/...`): the wasm-shim asks
Authorino about the request as its filter sees it, and the route's URLRewrite happens when the
request is forwarded (SOURCES §17), after the check.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi
from pydantic import SecretStr

from functions._context import install_context, reset_context
from shared.catalog.kserve import INFERENCE_SERVICE
from shared.context import Context
from shared.keymaterial import generate_admin_key
from shared.kubeapply import policy_syncer
from shared.modelroute import ROUTE_NAME
from shared.policies import auth_policy
from shared.settings import Settings
from shared.store.kube import KubernetesStore
from tests.admin_client import DirectClient
from tests.cluster.authorino import CEL_EXTENSIONS, Authorino
from tests.cluster.limitador import Limitador
from tests.kube_double import KubeDouble, running_double

NS = "llm"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
CHAT = "/v1/chat/completions"


def isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": name},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "vLLM"}, "storageUri": f"hf://example/{name}"}}},
    }


def add_ready_model(client: Any, name: str) -> None:
    """An InferenceService as KServe reports it in Standard mode: its predictor Service's address."""
    group, version, plural = INFERENCE_SERVICE
    api = CustomObjectsApi(client)
    api.create_namespaced_custom_object(group, version, NS, plural, isvc(name))
    api.patch_namespaced_custom_object_status(group, version, NS, plural, name, {"status": {
        "url": f"https://{name}-{NS}.apps.example.com",
        "address": {"url": f"http://{name}-predictor.{NS}.svc.cluster.local"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }})


@pytest.fixture
def cluster() -> Iterator[tuple[KubeDouble, DirectClient, Settings]]:
    admin_key = generate_admin_key()
    settings = Settings(admin_key=SecretStr(admin_key), store="kubernetes", namespace=NS)
    with running_double() as (double, client):
        for name in ("a", "b"):
            add_ready_model(client, name)
        store = KubernetesStore(client, namespace=NS, key_selector=settings.key_selector,
                                watch_label=settings.authorino_watch_label)
        install_context(Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings)))
        try:
            api = DirectClient(admin_key)
            made = api.call("POST", "/teams", json={"team_id": "alpha", "token_limit": 100, "limit_scope": "team"})
            assert made.status == 201, made.text
            yield double, api, settings
        finally:
            reset_context()


def new_key(api: DirectClient, **fields: object) -> str:
    reply = api.call("POST", "/teams/alpha/keys", json={"user_id": "alice", "user_email": "a@example.com", **fields})
    assert reply.status == 201, reply.text
    return f"APIKEY {reply.body['api_key']}"


def applied(double: KubeDouble, plural: str, group: str, version: str, name: str) -> dict[str, Any]:
    found = double.get(plural, NS, name, group, version)
    assert found is not None, f"the policy sync applied no {plural}/{name}"
    return found


def test_a_listed_key_may_call_only_its_models(cluster) -> None:
    double, api, _ = cluster
    authorino = Authorino(double, (NS, "maas-api-keys"))  # the AuthPolicy the sync applied
    listed, unlisted = new_key(api, models=["a"]), new_key(api)
    assert authorino.check(listed, now=NOW, path=f"/a{CHAT}").status == 200
    assert authorino.check(listed, now=NOW, path="/a/v1/completions").status == 200
    refused = authorino.check(listed, now=NOW, path=f"/b{CHAT}")
    assert refused.status == 401 and refused.reason.startswith("key-allows-model"), refused.reason
    for model in ("a", "b"):
        assert authorino.check(unlisted, now=NOW, path=f"/{model}{CHAT}").status == 200


def test_a_listed_key_is_refused_off_the_models_route(cluster) -> None:
    """The AuthPolicy is the Gateway's, so it also guards any other route on it: there the
    path's first segment is no model (`v1` of a plain OpenAI path), and a listed key is refused,
    while an unlisted key keeps working (its budget still applies)."""
    double, api, _ = cluster
    authorino = Authorino(double, (NS, "maas-api-keys"))
    listed, unlisted = new_key(api, models=["a"]), new_key(api)
    assert authorino.check(listed, now=NOW, path=CHAT).status == 401
    assert authorino.check(listed, now=NOW, path="/").status == 401
    assert authorino.check(listed, now=NOW, path="/ab/v1/chat/completions").status == 401  # no prefix match
    assert authorino.check(unlisted, now=NOW, path=CHAT).status == 200


def test_a_key_for_several_models_may_call_each(cluster) -> None:
    double, api, _ = cluster
    authorino = Authorino(double, (NS, "maas-api-keys"))
    both = new_key(api, models=["b", "a"])
    assert [authorino.check(both, now=NOW, path=f"/{m}{CHAT}").status for m in ("a", "b", "c")] == [200, 200, 401]


def test_without_the_rule_a_listed_key_calls_every_model(cluster) -> None:
    """The control: the previous AuthPolicy, without `key-allows-model`, lets the key through."""
    double, api, settings = cluster
    listed = new_key(api, models=["a"])
    policy = copy.deepcopy(auth_policy(settings))
    del policy["spec"]["rules"]["authorization"]["key-allows-model"]
    assert Authorino(double, policy).check(listed, now=NOW, path=f"/b{CHAT}").status == 200


def test_the_rule_needs_the_strings_extension(cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cel-go's `split` (what cel-python lacks) the predicate cannot be evaluated, and
    an authorization rule that cannot be evaluated denies: even unlisted keys are refused. This
    is why the emulation is there, and why the rule must run where ext.Strings is enabled."""
    double, api, _ = cluster
    unlisted, listed = new_key(api), new_key(api, models=["a"])
    authorino = Authorino(double, (NS, "maas-api-keys"))
    monkeypatch.delitem(CEL_EXTENSIONS, "split")
    # `||` short-circuits for a key without a list; a listed key reaches `split` and is refused.
    assert authorino.check(unlisted, now=NOW, path=f"/a{CHAT}").status == 200
    decision = authorino.check(listed, now=NOW, path=f"/a{CHAT}")
    assert decision.status == 401 and "evaluation error" in decision.reason


@pytest.mark.parametrize(("text", "separator", "limit", "parts"), [
    ("/a/v1/chat", "/", -1, ["", "a", "v1", "chat"]),
    ("a,b", ",", -1, ["a", "b"]),
    ("", ",", -1, [""]),
    ("abc", "", -1, ["a", "b", "c"]),
    ("a,b,c", ",", 2, ["a", "b,c"]),
    ("a,b,c", ",", 0, []),
    ("abc", "", 2, ["a", "bc"]),
])
def test_the_split_emulation_is_gos(text: str, separator: str, limit: int, parts: list[str]) -> None:
    """cel-go ext/strings.go: split = strings.Split, split(sep, n) = strings.SplitN."""
    assert [str(p) for p in CEL_EXTENSIONS["split"](text, separator, limit)] == parts


def test_two_models_on_the_route_share_the_teams_budget(cluster) -> None:
    """§5: the Limitador namespace is `<route namespace>/<route name>`; both models are rules of
    `maas-models`, so the team's 100 tokens are spent across them."""
    double, api, _ = cluster
    authorino = Authorino(double, (NS, "maas-api-keys"))
    key = new_key(api)
    route = applied(double, "httproutes", "gateway.networking.k8s.io", "v1", ROUTE_NAME)
    served = [rule["matches"][0]["path"]["value"] for rule in route["spec"]["rules"]]
    assert served == ["/a/v1", "/b/v1"]
    namespace = f"{route['metadata']['namespace']}/{route['metadata']['name']}"
    assert namespace == "llm/maas-models"
    limitador = Limitador(applied(double, "tokenratelimitpolicies", "kuadrant.io", "v1alpha1", "maas-team-token-limits"))

    on_a = authorino.check(key, now=NOW, path=f"/a{CHAT}")
    assert on_a.status == 200 and limitador.check(on_a.identity, route=namespace, now=NOW)
    limitador.report(on_a.identity, 100, route=namespace, now=NOW)
    on_b = authorino.check(key, now=NOW, path=f"/b{CHAT}")
    assert on_b.status == 200
    assert not limitador.check(on_b.identity, route=namespace, now=NOW)  # b's calls share a's budget
    # The control: KServe's own route per model is a Limitador namespace per model.
    assert limitador.check(on_b.identity, route=f"{NS}/b", now=NOW)
