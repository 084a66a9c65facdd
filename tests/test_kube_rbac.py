"""The rendered RBAC is exactly enough for each function, proven by use: the API double
authorizes every request against the Roles `tools.manifests.function_rbac` binds to the
function's own ServiceAccount, while the real function code (the HTTP targets through the
routing table, the cleanup handler) does its job on a seeded cluster.

Per account (tools.manifests.ACCOUNT_RULES; every function target has one, FUNCTION_ACCOUNTS):
- enough: every function of the account succeeds and nothing is refused;
- least: every granted (namespace, group, resource, verb) is used by a function of the account,
  or listed in NOT_EXERCISED with the reason it is granted anyway, so a new over-grant fails here
  until it is justified;
- necessary: taking away any used grant makes a function of the account fail (a 503 naming
  RBAC, or a lost audit entry) with exactly that request refused.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1DeleteOptions
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr

from functions._context import install_context, reset_context
from shared import cleanup
from shared.catalog.kserve import (
    INFERENCE_SERVICE,
    LLM_INFERENCE_SERVICE,
    KServeCatalog,
)
from shared.context import Context
from shared.errors import BackendUnavailable, MaasError
from shared.keymaterial import generate_admin_key
from shared.kubeapply import policy_syncer, sync_policies
from shared.modelroute import GRANT_NAME, ROUTE_NAME
from shared.policies import MANAGED_BY
from shared.rates import Rate
from shared.settings import Settings
from shared.store.base import AuditEntry
from shared.store.kube import KubernetesStore
from shared.store.kubeshapes import team_secret_name
from tests import records
from tests.admin_client import DirectClient, Reply
from tests.kube_double import Access, KubeDouble, Rbac, request_verb, running_double
from tools.manifests import ACCOUNT_RULES, FUNCTION_ACCOUNTS, account_name, function_rbac, function_targets

T0 = datetime(2025, 8, 25, 6, 17, 35, tzinfo=timezone.utc)
KUADRANT_GROUPS = ("kuadrant.io", "extensions.kuadrant.io")
ROUTE_GROUP = "gateway.networking.k8s.io"
# What the seeded models become in the maas-models route (shared/modelroute.py).
ROUTED = ["/granite-8b/v1", "/qwen3-0-6b-instruct/v1"]
ADMIN_KEY = generate_admin_key()

# The policies beside a Gateway in its own namespace, everything in one namespace, and teams,
# keys and audit entries in a namespace of their own (MAAS_KEYS_NAMESPACE): the layouts the
# Settings allow.
LAYOUTS = {
    "gateway-namespace": dict(namespace="llm", gateway_namespace="gateway-system"),
    "one-namespace": dict(namespace="llm", gateway_namespace=None),
    "keys-namespace": dict(namespace="llm", keys_namespace="llm-keys", gateway_namespace="gateway-system"),
}

# Granted but not exercised by any code path, and why each is granted anyway, per account.
# tests/test_manifests.py pins these grants; drop one there and in tools/manifests.py together,
# and remove it here.
# The request limits' RateLimitPolicy is written by the same sync as the token limits'
# (shared/kubeapply.py); these scenarios create and delete it, and only the writer's changes the
# set of teams with request rates while it stands.
_RLP_UPDATE = ("kuadrant.io", "ratelimitpolicies", "update")
_RLP_REASON = ("a team change that keeps a RateLimitPolicy but changes its limits: the same sync and "
               "verb as for the TokenRateLimitPolicy, which this account's scenario updates")
NOT_EXERCISED: dict[str, dict[tuple[str, str, str], str]] = {
    "console": {_RLP_UPDATE: _RLP_REASON},
    "cleanup": {_RLP_UPDATE: _RLP_REASON},
}

ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "granite-8b"},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "vLLM"}, "storageUri": "hf://ibm-granite/granite-3.1-8b-instruct"}}},
}
LLMISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1alpha2",
    "kind": "LLMInferenceService",
    "metadata": {"name": "qwen3"},
    "spec": {"model": {"uri": "hf://Qwen/Qwen3-0.6B", "name": "qwen3-0-6b-instruct"}},
}


def layout_settings(layout: str, data_dir: Path) -> Settings:
    return Settings(
        admin_key=SecretStr(ADMIN_KEY), store="kubernetes", data_dir=data_dir, key_selector="maas-api-key",
        gateway_name="maas-gateway", **LAYOUTS[layout],
    )


# -- an account's identity, from the rendered documents ---------------------------------------------


def account_rbac(settings: Settings, account: str, drop: tuple[str, str, str] | None = None) -> Rbac:
    """The rules of the Roles bound to one account's ServiceAccount; `drop` one (group,
    resource, verb) from them to take that grant away."""
    documents = function_rbac(settings)
    name, namespace = account_name(account), settings.namespace
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == name for d in documents)
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    bound = {
        (b["metadata"]["namespace"], b["roleRef"]["name"])
        for b in documents
        if b["kind"] == "RoleBinding" and b["roleRef"]["kind"] == "Role" and subject in b["subjects"]
    }
    roles = [d for d in documents if d["kind"] == "Role" and (d["metadata"]["namespace"], d["metadata"]["name"]) in bound]
    if drop is not None:
        roles = copy.deepcopy(roles)
        for role in roles:
            role["rules"] = [r for rule in role["rules"] for r in _without(rule, drop)]
    return Rbac.from_documents(roles, user=f"system:serviceaccount:{namespace}:{name}")


def _without(rule: dict[str, Any], drop: tuple[str, str, str]) -> list[dict[str, Any]]:
    """`rule` with one (group, resource, verb) taken out, split as an admin would edit it."""
    group, resource, verb = drop
    if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
        return [rule]
    rest = [r for r in rule["resources"] if r != resource]
    kept = [rule | {"resources": rest}] if rest else []
    verbs = [v for v in rule["verbs"] if v != verb]
    if verbs:
        kept.append(rule | {"resources": [resource], "verbs": verbs})
    return kept


def expected_namespace(settings: Settings, group: str, resource: str = "") -> str:
    """Policies and the model route beside the Gateway; Secrets and ConfigMaps (the store) in the
    keys namespace; the rest (the models, the route's ReferenceGrant beside their Services) in
    MAAS_NAMESPACE."""
    beside_the_gateway = group in KUADRANT_GROUPS or (group, resource) == (ROUTE_GROUP, "httproutes")
    if beside_the_gateway:
        return settings.policy_namespace
    return settings.store_namespace if group == "" else settings.namespace


# -- the seeded cluster ------------------------------------------------------------------------------


@dataclass
class Seed:
    """What the cluster holds before a function runs, written as a cluster admin."""

    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # user -> (secret name, api key)


def seed(client: ApiClient, settings: Settings) -> Seed:
    """Two teams with keys (one long expired), an orphaned key, old audit entries, the models
    (with the addresses KServe reports: a predictor Service, a workload Service); no policies
    and no model route yet (the first write of each is a create)."""
    api = CustomObjectsApi(client)
    statuses = {
        "granite-8b": {"url": "https://granite-8b-llm.apps.example.com",
                       "address": {"url": "http://granite-8b-predictor.llm.svc.cluster.local"}},
        "qwen3": {"addresses": [{"url": "http://qwen3-kserve-workload-svc.llm.svc.cluster.local"}]},
    }
    for obj, resource in ((ISVC, INFERENCE_SERVICE), (LLMISVC, LLM_INFERENCE_SERVICE)):
        group, version, plural = resource
        body = copy.deepcopy(obj)
        name = body["metadata"]["name"]
        api.create_namespaced_custom_object(group, version, settings.namespace, plural, body)
        api.patch_namespaced_custom_object_status(
            group, version, settings.namespace, plural, name,
            {"status": statuses[name] | {"conditions": [{"type": "Ready", "status": "True"}]}},
        )
    store = KubernetesStore(client, namespace=settings.store_namespace, key_selector=settings.key_selector, generation_check_s=0)
    store.create_team(team=records.a_team("alpha", policy="alpha-tokens"))
    # With a request rate: its RateLimitPolicy is written, changed and deleted like the token one.
    store.create_team(team=records.a_team("beta", policy="beta-tokens", limit_scope="team", rates=(
        Rate("tokens", 100_000, "1h", scope="team"), Rate("rpm", 60, "1m", unit="requests", scope="team"))))
    store.create_team(team=records.a_team("gone", policy="gone-tokens"))
    planted = Seed()
    for team, user, extra in (
        ("alpha", "alice", {}),
        ("alpha", "bob", {}),
        ("beta", "carol", {}),
        ("beta", "dave", {}),
        ("alpha", "old", {"expires_at": T0 + timedelta(days=1)}),  # expired long ago: marked, then deleted
        ("gone", "orphan", {}),
    ):
        record, plaintext = records.a_key(team, user, **extra)
        store.create_key(key=record, api_key=plaintext)
        planted.keys[user] = (record.secret_name, plaintext)
    # The team Secret goes, its key stays (as if the garbage collector had not run yet).
    CoreV1Api(client).delete_namespaced_secret(
        team_secret_name("gone"), settings.store_namespace, body=V1DeleteOptions(propagation_policy="Orphan")
    )
    store.record_audit(entry=AuditEntry(at=T0, actor="admin", action="create_team", method="POST", path="/teams", outcome=201, team_id="alpha"))
    return planted


# -- what each account's functions do ----------------------------------------------------------------


class FirstProblem(Exception):
    """Ends a run that only needs to know whether anything went wrong (Run.stop_at_first)."""


@dataclass
class Run:
    """One account's functions against the double: the replies that were not as expected."""

    double: KubeDouble
    settings: Settings
    seed: Seed
    api: DirectClient
    ctx: Context
    problems: list[str] = field(default_factory=list)
    stop_at_first: bool = False
    """Stop at the first problem: test_every_used_grant_is_needed asks only whether there is one
    (and which request was refused), and the rest of the scenario would only add more."""

    def problem(self, text: str) -> None:
        self.problems.append(text)
        if self.stop_at_first:
            raise FirstProblem(text)

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Reply:
        reply = self.api.call(method, path, **kwargs)
        if reply.status != expect:
            self.problem(f"{method} {path}: {reply.status} {reply.text.strip()[:200]}")
        return reply

    def audited(self, calls: Callable[[], None]) -> None:
        """Admin calls record an audit entry each, which a refusal must not lose silently."""
        before = len(self._audit_entries())
        count = len(self.double.requests)
        calls()
        made = sum(1 for method, path in self.double.requests[count:] if method == "POST" and path.endswith("/configmaps"))
        if len(self._audit_entries()) - before < made or made == 0:
            self.problem(f"audit: {len(self._audit_entries()) - before} entries recorded for {made} attempts")

    def _audit_entries(self) -> list[str]:
        return [n for n in self.double.names("configmaps", self.settings.store_namespace) if n.startswith("maas-audit-")]


TEAM_INDEPENDENT_POLICIES = (
    ("kuadrant.io", "v1", "authpolicies", "maas-api-keys"),
    ("extensions.kuadrant.io", "v1alpha1", "telemetrypolicies", "maas-usage-labels"),
)


def route_objects(settings: Settings) -> list[tuple[str, str, str, str, str]]:
    """(group, version, plural, namespace, name) of the model route and, when the policies live
    beside another namespace's Gateway, its ReferenceGrant."""
    found = [(ROUTE_GROUP, "v1", "httproutes", settings.policy_namespace, ROUTE_NAME)]
    if settings.policy_namespace != settings.namespace:
        found.append((ROUTE_GROUP, "v1beta1", "referencegrants", settings.namespace, GRANT_NAME))
    return found


MANAGED = "app.kubernetes.io/managed-by"  # a label of ours: an edit to it is drift to repair


def drift(run: Run) -> None:
    """Hand edits (as a cluster admin) to the policies that do not depend on the teams, and to
    the model route."""
    edited = [(g, v, p, run.settings.policy_namespace, n) for g, v, p, n in TEAM_INDEPENDENT_POLICIES]
    with as_cluster_admin(run.double) as admin:
        for group, version, plural, namespace, name in edited + route_objects(run.settings):
            try:
                CustomObjectsApi(admin).patch_namespaced_custom_object(
                    group, version, namespace, plural, name, {"metadata": {"labels": {MANAGED: "by-hand"}}}
                )
            except ApiException as exc:  # never written (a refused create): `repaired` reports it
                if exc.status != 404:
                    raise


def repaired(run: Run) -> None:
    """The next sync replaced both edited policies (and the model route, when there is one)."""
    for group, version, plural, name in TEAM_INDEPENDENT_POLICIES:
        policy = run.double.get(plural, run.settings.policy_namespace, name, group, version)
        if policy is None or (policy["metadata"].get("labels") or {}).get(MANAGED) != MANAGED_BY[MANAGED]:
            run.problem(f"{plural}/{name} was not repaired")
    for group, version, plural, namespace, name in route_objects(run.settings):
        found = run.double.get(plural, namespace, name, group, version)
        if found is not None and (found["metadata"].get("labels") or {}).get(MANAGED) != MANAGED_BY[MANAGED]:
            run.problem(f"{plural}/{name} was not repaired")


def routed(run: Run, *, models: bool) -> None:
    """The model route (and grant) hold the seeded models, or, with the models gone, are gone."""
    route = run.double.get("httproutes", run.settings.policy_namespace, ROUTE_NAME, ROUTE_GROUP, "v1")
    paths = [rule["matches"][0]["path"]["value"] for rule in route["spec"]["rules"]] if route else []
    if paths != (ROUTED if models else []):
        run.problem(f"model route serves {paths}")
    for group, version, plural, namespace, name in route_objects(run.settings)[1:]:
        if (run.double.get(plural, namespace, name, group, version) is not None) != models:
            run.problem(f"{plural}/{name} {'missing' if models else 'outlived the models'}")


def remove_models(run: Run) -> None:
    """KServe objects deleted by their owner: the next sync deletes the route."""
    with as_cluster_admin(run.double) as admin:
        for obj, (group, version, plural) in ((ISVC, INFERENCE_SERVICE), (LLMISVC, LLM_INFERENCE_SERVICE)):
            CustomObjectsApi(admin).delete_namespaced_custom_object(
                group, version, run.settings.namespace, plural, obj["metadata"]["name"])


def run_none(run: Run) -> None:
    body = run.call("GET", "/openapi.json").body
    if not isinstance(body, dict) or "paths" not in body:
        run.problem("openapi: no document")


def run_health(run: Run) -> None:
    run.call("GET", "/health")


def run_reader(run: Run) -> None:
    def calls() -> None:
        run.call("GET", "/teams")
        run.call("GET", "/teams/alpha")
        run.call("GET", "/teams/alpha/keys")
        run.call("GET", "/users/alice/keys")
        run.call("GET", "/audit")
        run.call("GET", "/users/alice/usage")
        run.call("GET", "/teams/alpha/usage")
        run.call("GET", "/usage")
        run.call("GET", "/teams/alpha/members")
        run.call("GET", "/me")
        run.call("GET", "/me/keys")
        run.call("GET", "/me/usage")
        run.call("GET", "/teams/alpha/limits/explain?user_id=alice")
        run.call("POST", "/teams/alpha/limits/simulate", json={"limits": [{"name": "t", "limit": 5, "window": "1h"}]})

    run.audited(calls)


def run_models(run: Run) -> None:
    def calls() -> None:
        listed = run.call("GET", "/models").body
        if not listed or [m["name"] for m in listed.get("models", listed.get("data", []))] != ["granite-8b"]:
            run.problem(f"/models: {listed}")
        run.call("GET", "/v1/models", auth=f"APIKEY {run.seed.keys['alice'][1]}")

    run.audited(calls)


def run_writer(run: Run) -> None:
    """Every key write, then every team write (the last team's delete drops the limits)."""
    def calls() -> None:
        created = run.call("POST", "/teams/alpha/keys", 201, json={"user_id": "erin", "user_email": "erin@test.com"}).body or {}
        run.call("POST", f"/keys/{created.get('secret_name', 'missing')}/revoke")
        run.call("POST", f"/keys/{run.seed.keys['alice'][0]}/rotate", 201, json={"grace_period": "1h"})
        run.call("DELETE", f"/keys/{run.seed.keys['bob'][0]}")
        run.call("DELETE", "/delete_key", json={"key": run.seed.keys["carol"][1]})
        run.call("POST", "/teams/alpha/members", 201, json={"user_id": "admin", "role": "member"})
        run.call("PATCH", "/teams/alpha/members/admin", json={"role": "admin"})
        run.call("POST", "/me/keys", 403, json={"team_id": "alpha", "alias": "mine"})  # the admin key is no person
        run.call("DELETE", "/teams/alpha/members/admin")
        run.call("POST", "/teams", 201, json={"team_id": "gamma", "limits": [  # changes the request limits' policy
            {"name": "tokens", "limit": 500, "window": "1h"}, {"name": "rpm", "limit": 60, "window": "1m",
                                                                "unit": "requests", "scope": "team"}]})
        routed(run, models=True)
        drift(run)  # a hand edit of the policies that do not depend on the teams, and of the route
        run.call("PATCH", "/teams/alpha", json={"policy": "alpha-gold"})  # regroups keys, repairs the edit
        repaired(run)
        remove_models(run)
        for team in ("gamma", "alpha", "beta"):
            run.call("DELETE", f"/teams/{team}")  # the first one deletes the route, the last the limits
        routed(run, models=False)

    run.audited(calls)
    repaired(run)
    if run.double.get("secrets", run.settings.store_namespace, run.seed.keys["dave"][0]) is not None:
        run.problem("beta's keys outlived their team")
    if run.double.names("tokenratelimitpolicies", run.settings.policy_namespace, "kuadrant.io", "v1alpha1"):
        run.problem("the TokenRateLimitPolicy outlived the last team")


def run_console(run: Run) -> None:
    """A platform admin's session in the console, its pages in the order the writer's calls go: the
    console acts through the API's targets, so it needs what they need, and lists the models."""
    from local.admin import create_admin_app

    client = create_admin_app().test_client()

    def page(method: str, path: str, expect: int = 200, **form: str) -> str:
        form_data = {"csrf": csrf[0], **form} if method == "POST" else None
        answer = client.open(path, method=method, data=form_data, base_url="https://console.test")
        text = answer.get_data(as_text=True)
        if answer.status_code != expect:
            shown = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text.partition("<main")[2]))
            run.problem(f"console {method} {path}: {answer.status_code} {shown.strip()[:200]}")
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        if found:
            csrf[0] = found.group(1)
        return text

    csrf = [""]

    def calls() -> None:
        page("GET", "/console/signin")
        page("POST", "/console/signin", 303, admin_key=ADMIN_KEY)
        page("GET", "/console/keys")
        page("POST", "/console/teams", 303, team_id="gamma", token_limit="500", time_window="1h")
        page("GET", "/console/teams")
        if "granite-8b" not in page("GET", "/console/teams/alpha"):
            run.problem("console: the key form offers no models")
        page("POST", "/console/teams/alpha/members", 303, user_id="erin", role="member")
        page("POST", "/console/teams/alpha/members/erin", 303, role="admin")
        issued = page("POST", "/console/teams/alpha/keys", 201, user_id="erin", alias="from-console")
        handle = re.search(r"<code>(apikey-erin-alpha-[0-9a-f]+)</code>", issued)
        page("POST", f"/console/keys/{handle.group(1) if handle else 'missing'}/revoke", 303)
        page("POST", f"/console/keys/{handle.group(1) if handle else 'missing'}/delete", 303)
        page("POST", f"/console/keys/{run.seed.keys['alice'][0]}/rotate", 201, grace_period="1h")
        page("POST", "/console/teams/alpha/members/erin/remove", 303)
        page("GET", "/console/usage")
        if "granite-8b" not in page("GET", "/console/models"):
            run.problem("console: the models page lists no models")
        routed(run, models=True)
        drift(run)
        page("POST", "/console/teams/alpha", 303, token_limit="5000", team_name="Alpha")  # repairs the edit
        repaired(run)
        remove_models(run)
        for team in ("gamma", "alpha", "beta"):
            page("GET", f"/console/teams/{team}/delete")
            page("POST", f"/console/teams/{team}/delete", 303)
        routed(run, models=False)
        page("POST", "/console/signout", 303)

    run.audited(calls)
    repaired(run)
    if run.double.get("secrets", run.settings.store_namespace, run.seed.keys["dave"][0]) is not None:
        run.problem("beta's keys outlived their team")


def run_cleanup(run: Run) -> None:
    """The sweep (marks and deletes the expired key, deletes the orphan, prunes the audit log,
    creates the policies), then two teams' deletion events after hand edits of the policies:
    the first rewrites all three, the second, for the last team, deletes the limits."""
    swept = cleanup.on_event(run.ctx, event_type=cleanup.PING, data={})
    if sorted(swept.deleted_keys) != sorted([run.seed.keys["old"][0], run.seed.keys["orphan"][0]]) or swept.audit_pruned != 1:
        run.problem(f"sweep: {swept}")
    routed(run, models=True)
    policies = run.settings.policy_namespace
    for team, users in (("beta", ("carol", "dave")), ("alpha", ("alice", "bob"))):
        if team == "alpha":
            remove_models(run)  # this round's sync deletes the route
        with as_cluster_admin(run.double) as admin:
            CoreV1Api(admin).delete_namespaced_secret(
                team_secret_name(team), run.settings.store_namespace, body=V1DeleteOptions(propagation_policy="Orphan")
            )
        drift(run)
        labels = {"maas/resource-type": "team-config", "maas/team-id": team}
        event = {"kind": "Secret", "metadata": {"namespace": run.settings.store_namespace, "labels": labels}}
        handled = cleanup.on_event(run.ctx, event_type=cleanup.SECRET_DELETED[0], data=event)
        if sorted(handled.deleted_keys) != sorted(run.seed.keys[user][0] for user in users):
            run.problem(f"team {team} deleted: {handled}")
        repaired(run)
        limits = run.double.get("tokenratelimitpolicies", policies, "maas-team-token-limits", "kuadrant.io", "v1alpha1")
        if (limits is None) != (team == "alpha"):
            run.problem(f"limits after team {team} went: {limits}")
    routed(run, models=False)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "none": run_none,
    "health": run_health,
    "reader": run_reader,
    "models": run_models,
    "writer": run_writer,
    "console": run_console,
    "cleanup": run_cleanup,
}
# Which targets each scenario calls: every target of the account, and only those.
CALLED = {
    "none": {"openapi"},
    "health": {"health"},
    "reader": {"list_teams", "get_team", "list_team_keys", "list_user_keys", "list_audit", "user_usage", "team_usage",
               "platform_usage", "list_members", "whoami", "list_my_keys", "my_usage", "explain_limits", "simulate_limits"},
    "models": {"list_models", "list_openai_models"},
    "writer": {"create_key", "revoke_key", "rotate_key", "delete_key", "delete_key_legacy", "create_team", "update_team",
               "delete_team", "add_member", "update_member", "remove_member", "create_my_key"},
    "console": {"console"},
    "cleanup": {"cleanup"},
}


@contextmanager
def as_cluster_admin(double: KubeDouble) -> Iterator[ApiClient]:
    """Someone else's unchecked writes (an admin's kubectl), not the functions'."""
    rbac, double.rbac = double.rbac, None
    client = double.api_client()
    try:
        yield client
    finally:
        client.close()
        double.rbac = rbac


def run_as(double: KubeDouble, settings: Settings, planted: Seed, account: str, rbac: Rbac,
           *, stop_at_first: bool = False) -> Run:
    """The account's functions, on a fresh Context (its own client and store), as that account."""
    client = double.api_client()
    store = KubernetesStore(client, namespace=settings.store_namespace, key_selector=settings.key_selector, generation_check_s=0)
    ctx = Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings))
    ctx._catalog = KServeCatalog(client, namespace=settings.namespace)
    install_context(ctx)
    run = Run(double=double, settings=settings, seed=planted, api=DirectClient(ADMIN_KEY), ctx=ctx,
              stop_at_first=stop_at_first)
    double.rbac = rbac
    try:
        SCENARIOS[account](run)
    except FirstProblem:
        pass
    except MaasError as error:  # the cleanup handler raises what the HTTP targets answer
        run.problems.append(f"{account}: {error.status} {error.message}")
    finally:
        double.rbac = None
        reset_context()
    return run


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[KubeDouble, Settings, Seed]]:
    settings = layout_settings(getattr(request, "param", "gateway-namespace"), tmp_path / "data")
    with running_double() as (double, client):
        yield double, settings, seed(client, settings)


# -- enough, and least -------------------------------------------------------------------------------


def test_every_function_has_an_account_and_a_scenario() -> None:
    assert set(FUNCTION_ACCOUNTS) == set(function_targets())
    assert set(SCENARIOS) == set(ACCOUNT_RULES) == set(CALLED)
    for account, targets in CALLED.items():
        assert targets == {t for t, a in FUNCTION_ACCOUNTS.items() if a == account}, account


@pytest.mark.parametrize("cluster", sorted(LAYOUTS), indirect=True)
@pytest.mark.parametrize("account", sorted(SCENARIOS))
def test_each_account_is_enough_and_each_grant_is_used_or_justified(
    cluster: tuple[KubeDouble, Settings, Seed], account: str
) -> None:
    double, settings, planted = cluster
    rbac = account_rbac(settings, account)
    run = run_as(double, settings, planted, account, rbac)

    assert run.problems == []
    assert rbac.denied == []
    granted = rbac.granted()
    for namespace, group, resource, _ in granted:
        assert namespace == expected_namespace(settings, group, resource), (namespace, group, resource)
    if settings.store_namespace != settings.namespace:
        # The store's objects stay beside each other, none beside the functions and maas-admin-key.
        assert double.names("secrets", settings.namespace) == [] and double.names("configmaps", settings.namespace) == []
    justified = NOT_EXERCISED.get(account, {})
    unused = {(group, resource, verb) for _, group, resource, verb in granted - rbac.used}
    assert unused == set(justified), (
        f"{account}: granted but never used (over-granted unless justified in NOT_EXERCISED): "
        f"{sorted(unused - set(justified))}; justified but now used or no longer granted: "
        f"{sorted(set(justified) - unused)}"
    )


def test_the_static_account_makes_no_api_request(cluster: tuple[KubeDouble, Settings, Seed]) -> None:
    double, settings, planted = cluster
    count = len(double.requests)
    run = run_as(double, settings, planted, "none", account_rbac(settings, "none"))
    assert run.problems == [] and double.requests[count:] == []


# The console acts only through the API's targets, whose every grant the writer, reader and
# models accounts prove needed in each layout; its own grants (the same resources, through the
# same code) are proven needed in the layout with the most namespaces apart, where its set of
# grants is the largest (the ReferenceGrant too), and enough and least in all three above.
# Its scenario is the longest: this saves two thirds of the module's time.
NECESSARY_CASES = [
    pytest.param(layout, account, id=f"{account}-{layout}")
    for account in sorted(a for a, rules in ACCOUNT_RULES.items() if rules)
    for layout in sorted(LAYOUTS)
    if account != "console" or layout == "keys-namespace"
]


@pytest.mark.parametrize(("cluster", "account"), NECESSARY_CASES, indirect=["cluster"])
def test_every_used_grant_is_needed(cluster: tuple[KubeDouble, Settings, Seed], account: str) -> None:
    """Taking away any one grant the account's functions use makes one of them fail, with
    exactly that request refused. Each such run stops at its first problem: the refused
    request is known by then, and the rest of the scenario would not change the verdict."""
    double, settings, planted = cluster
    pristine = copy.deepcopy(double.cluster.objects)
    full = account_rbac(settings, account)
    assert run_as(double, settings, planted, account, full).problems == []
    used = sorted({(group, resource, verb) for _, group, resource, verb in full.used})
    assert 0 < len(used) <= 40  # the loop below is bounded by what the run used

    for grant in used:
        with double.cluster.lock:
            double.cluster.objects = copy.deepcopy(pristine)
        rbac = account_rbac(settings, account, drop=grant)
        run = run_as(double, settings, planted, account, rbac, stop_at_first=True)
        assert run.problems, f"{account} still does its job without {grant}"
        assert {(a.group, a.resource, a.verb) for a in rbac.denied} == {grant}, grant


def test_a_refused_write_answers_503_about_rbac(cluster: tuple[KubeDouble, Settings, Seed]) -> None:
    double, settings, _ = cluster
    install_context(Context(settings=settings, store=KubernetesStore(double.api_client(), namespace="llm", key_selector="maas-api-key")))
    double.rbac = account_rbac(settings, "writer", drop=("", "secrets", "create"))
    reply = DirectClient(ADMIN_KEY).call("POST", "/teams", json={"team_id": "delta"})
    assert reply.status == 503
    assert "RBAC" in reply.text
    assert [(a.resource, a.verb) for a in double.rbac.denied] == [("secrets", "create")]
    assert double.rbac.forbidden(double.rbac.denied[0]).message == (
        'secrets is forbidden: User "system:serviceaccount:llm:maas-key-manager-writer" cannot create '
        'resource "secrets" in API group "" in the namespace "llm"'
    )
    assert double.get("secrets", "llm", team_secret_name("delta")) is None


def test_readers_cannot_write(cluster: tuple[KubeDouble, Settings, Seed]) -> None:
    """The read-only account is refused every write a key or team function makes."""
    double, settings, planted = cluster
    rbac = account_rbac(settings, "reader")
    run = run_as(double, settings, planted, "writer", rbac)
    assert run.problems
    assert {a.verb for a in rbac.denied} <= {"create", "patch", "delete"} and rbac.denied


def test_listing_models_in_every_namespace_needs_more_than_these_roles(cluster: tuple[KubeDouble, Settings, Seed]) -> None:
    """KServeCatalog(namespace=None) is a cluster-scope list: Roles cannot grant it, so the
    functions list their own namespace (KServeCatalog.from_settings)."""
    double, settings, _ = cluster
    client = double.api_client()
    double.rbac = account_rbac(settings, "models")
    with pytest.raises(BackendUnavailable, match="RBAC"):
        KServeCatalog(client, namespace=None).list_models()
    assert [(a.namespace, a.resource, a.verb) for a in double.rbac.denied] == [(None, "inferenceservices", "list")]


def test_policy_grants_name_their_objects(cluster: tuple[KubeDouble, Settings, Seed]) -> None:
    """get/update/delete carry resourceNames: another object of the same kind is refused."""
    double, settings, _ = cluster
    with as_cluster_admin(double) as admin:
        CustomObjectsApi(admin).create_namespaced_custom_object(
            "kuadrant.io", "v1", settings.policy_namespace, "authpolicies",
            {"apiVersion": "kuadrant.io/v1", "kind": "AuthPolicy", "metadata": {"name": "someone-elses"}, "spec": {}},
        )
    double.rbac = account_rbac(settings, "writer")
    api = CustomObjectsApi(double.api_client())
    with pytest.raises(ApiException) as caught:
        api.get_namespaced_custom_object("kuadrant.io", "v1", settings.policy_namespace, "authpolicies", "someone-elses")
    assert caught.value.status == 403
    with pytest.raises(ApiException):
        api.delete_namespaced_custom_object("kuadrant.io", "v1alpha1", settings.policy_namespace, "tokenratelimitpolicies", "someone-elses")
    assert {(a.verb, a.name) for a in double.rbac.denied} == {("get", "someone-elses"), ("delete", "someone-elses")}


# -- the double's authorizer itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "name", "query", "verb"),
    [
        ("GET", "x", {}, "get"),
        ("GET", None, {}, "list"),
        ("GET", None, {"watch": "true"}, "watch"),
        ("GET", None, {"watch": "1"}, "watch"),
        ("POST", None, {}, "create"),
        ("PUT", "x", {}, "update"),
        ("PATCH", "x", {}, "patch"),
        ("DELETE", "x", {}, "delete"),
        ("DELETE", None, {}, "deletecollection"),
    ],
)
def test_requests_map_to_verbs_as_on_the_api_server(method: str, name: str | None, query: dict[str, str], verb: str) -> None:
    assert request_verb(method, name, query) == verb


RULES = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "delete"], "resourceNames": ["only-this"]},
    {"apiGroups": ["kuadrant.io"], "resources": ["authpolicies"], "verbs": ["get", "update"]},
    {"apiGroups": ["kuadrant.io"], "resources": ["*/status"], "verbs": ["patch"]},
]


@pytest.fixture
def guarded() -> Iterator[tuple[KubeDouble, ApiClient]]:
    with running_double() as (double, client):
        CoreV1Api(client).create_namespaced_config_map("llm", {"metadata": {"name": "only-this"}})
        CoreV1Api(client).create_namespaced_config_map("llm", {"metadata": {"name": "another"}})
        CustomObjectsApi(client).create_namespaced_custom_object(
            "kuadrant.io", "v1", "llm", "authpolicies", {"apiVersion": "kuadrant.io/v1", "kind": "AuthPolicy", "metadata": {"name": "p"}, "spec": {}}
        )
        double.rbac = Rbac(roles=[("llm", RULES)], user="system:serviceaccount:llm:maas")
        yield double, client


def forbidden_message(call: Any) -> str:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403
    body = json.loads(caught.value.body)
    assert (body["kind"], body["status"], body["reason"], body["code"]) == ("Status", "Failure", "Forbidden", 403)
    return str(body["message"])


def test_the_double_authorizes_verbs_groups_resources_names_and_namespaces(guarded: tuple[KubeDouble, ApiClient]) -> None:
    double, client = guarded
    core, custom = CoreV1Api(client), CustomObjectsApi(client)
    user = 'User "system:serviceaccount:llm:maas"'
    assert core.list_namespaced_secret("llm").items == []
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret("x", "llm")
    assert missing.value.status == 404  # authorized first, then not found
    assert forbidden_message(lambda: core.list_namespaced_secret("other")) == (
        f'secrets is forbidden: {user} cannot list resource "secrets" in API group "" in the namespace "other"'
    )
    assert forbidden_message(lambda: core.list_secret_for_all_namespaces()) == (
        f'secrets is forbidden: {user} cannot list resource "secrets" in API group "" at the cluster scope'
    )
    assert forbidden_message(lambda: core.list_namespaced_secret("llm", watch=True, _preload_content=False)).endswith(
        'cannot watch resource "secrets" in API group "" in the namespace "llm"'
    )
    assert forbidden_message(lambda: core.delete_collection_namespaced_secret("llm")).endswith(
        'cannot deletecollection resource "secrets" in API group "" in the namespace "llm"'
    )
    # resourceNames: that object only, and never a request without a name.
    assert core.read_namespaced_config_map("only-this", "llm").metadata.name == "only-this"
    assert forbidden_message(lambda: core.read_namespaced_config_map("another", "llm")) == (
        f'configmaps "another" is forbidden: {user} cannot get resource "configmaps" in API group "" in the namespace "llm"'
    )
    assert forbidden_message(lambda: core.list_namespaced_config_map("llm")).startswith("configmaps is forbidden")
    core.delete_namespaced_config_map("only-this", "llm", body=V1DeleteOptions())
    # Groups and subresources: update on the object does not give patch; */status does.
    current = custom.get_namespaced_custom_object("kuadrant.io", "v1", "llm", "authpolicies", "p")
    custom.replace_namespaced_custom_object("kuadrant.io", "v1", "llm", "authpolicies", "p", current)
    assert forbidden_message(
        lambda: custom.patch_namespaced_custom_object("kuadrant.io", "v1", "llm", "authpolicies", "p", {"spec": {}})
    ) == f'authpolicies.kuadrant.io "p" is forbidden: {user} cannot patch resource "authpolicies" in API group "kuadrant.io" in the namespace "llm"'
    custom.patch_namespaced_custom_object_status("kuadrant.io", "v1", "llm", "authpolicies", "p", {"status": {"x": 1}})
    assert forbidden_message(
        lambda: custom.get_namespaced_custom_object("extensions.kuadrant.io", "v1alpha1", "llm", "authpolicies", "p")
    ).endswith('cannot get resource "authpolicies" in API group "extensions.kuadrant.io" in the namespace "llm"')

    assert ("llm", "kuadrant.io", "authpolicies/status", "patch") in double.rbac.used  # type: ignore[union-attr]
    assert Access("llm", "", "configmaps", "get", "another") in double.rbac.denied  # type: ignore[union-attr]
