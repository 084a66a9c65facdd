"""The Kuadrant policies of a cluster deployment, generated as whole objects from all teams.

Pure functions returning plain dicts: no Kubernetes client here (the policy-apply module sends
them). The team Secrets are the source of truth; a policy is never read back for a limit.

- AuthPolicy: API keys are Secrets labelled `kuadrant.io/auth-secret: "true"` and
  `app: <key selector>`, sent as `Authorization: APIKEY <key>` or `Bearer <key>` (one
  authentication entry per prefix, since an entry carries one prefix). Kuadrant writes the
  AuthConfig into Authorino's own namespace, so the keys are found only with `allNamespaces`
  (tests/cluster/SOURCES.md §1); a key must then also live in the keys' namespace, or anyone
  able to label a Secret elsewhere could mint one. Success exposes
  `auth.identity.{userid,team,groups}` from the Secret's annotations to the rate limiter and the
  metrics; a key whose `maas/status` is not `active`, or whose `maas/expires-at` has passed, is
  refused with 401. These checks are `patternMatching` predicates, which deny when they fail to
  evaluate; a `when` condition that fails to evaluate is skipped instead, i.e. fails open (§3).
  A key with a `maas/models-allowed` list may call only the models in it: Authorino never sees
  the body (§7), so the model is the first path segment, `/<model>/v1/...` on the `maas-models`
  route (shared/modelroute.py); on any other path a listed key is refused. `split` is cel-go's
  strings extension, which Authorino's CEL environment has (§7).
- TokenRateLimitPolicy: one limit per budget tier (shared.tiers), active when
  `auth.identity.tier` names it, counted per team and user (`limit_scope: user`) or per team
  (`team`): each team keeps its own counters while the number of limits stays the number of
  distinct budgets (§10). Omitted when there is no team, because the CRD requires at least one
  limit: the caller deletes it then (see `managed_policies`).
- Authorino keeps the key Secret it indexed until it rebuilds the AuthConfig (§8), so the
  values a key carries of its team (policy, tier) and a rotated key's shortened expiry would
  not reach it. The AuthPolicy carries an identity revision that changes with exactly those
  values: Kuadrant then rewrites the AuthConfig, and Authorino rebuilds it, re-reading every
  key Secret as it is now.
- TelemetryPolicy: `user`, `team` and `model` labels on Limitador's metrics, which the usage
  queries group by.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.durations import normalize_window
from shared.errors import Unauthorized, openai_body
from shared.settings import Settings
from shared.store.base import ApiKey, Team
from shared.store.kubeshapes import EXPIRES_ANNOTATION, MODELS_ANNOTATION, STATUS_ANNOTATION
from shared.tiers import TIER_ANNOTATION, tier_of

AUTH_POLICY = ("kuadrant.io/v1", "AuthPolicy", "maas-api-keys")
TOKEN_RATE_LIMIT_POLICY = ("kuadrant.io/v1alpha1", "TokenRateLimitPolicy", "maas-team-token-limits")
TELEMETRY_POLICY = ("extensions.kuadrant.io/v1alpha1", "TelemetryPolicy", "maas-usage-labels")

MANAGED_BY = {"app.kubernetes.io/managed-by": "maas-key-manager", "app.kubernetes.io/part-of": "maas"}

# Authorization prefixes accepted on model calls, by authentication entry name.
KEY_PREFIXES = {"api-key": "APIKEY", "bearer": "Bearer"}

# Secret annotations (docs/ARCHITECTURE.md, "Kubernetes shapes") and the identity fields built
# from them.
IDENTITY_ANNOTATIONS = {
    "userid": "secret.kuadrant.io/user-id",
    "team": "maas/team-id",
    "groups": "kuadrant.io/groups",
    "tier": TIER_ANNOTATION,
}

# CEL over the request body: Kuadrant's wasm shim parses the JSON body of model calls.
MODEL_EXPRESSION = 'requestBodyJSON("/model")'
OTHER_MODEL = "other"


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """Identifies one managed policy object, whether or not the teams currently produce it."""

    api_version: str
    kind: str
    name: str
    namespace: str


def managed_policies(settings: Settings) -> list[PolicyRef]:
    """Every policy this module can produce; one absent from `generate_policies` must be deleted."""
    return [
        PolicyRef(api_version, kind, name, settings.policy_namespace)
        for api_version, kind, name in (AUTH_POLICY, TOKEN_RATE_LIMIT_POLICY, TELEMETRY_POLICY)
    ]


def generate_policies(teams: Iterable[Team], settings: Settings, *,
                      keys_in_grace: Iterable[ApiKey] = (), models: Iterable[str] = ()) -> list[dict[str, Any]]:
    """All the policies for these teams (and the models served, for the usage labels), in a
    stable order and with stable content."""
    ordered = sorted(teams, key=lambda team: team.team_id)
    policies = [auth_policy(settings, revision=identity_revision(ordered, keys_in_grace))]
    if ordered:
        policies.append(token_rate_limit_policy(ordered, settings))
    policies.append(telemetry_policy(settings, models))
    return policies


def identity_revision(teams: Iterable[Team], keys_in_grace: Iterable[ApiKey]) -> str:
    """A digest of what key Secrets carry that can change after Authorino indexed them."""
    digest = hashlib.sha256()
    for team in sorted(teams, key=lambda t: t.team_id):
        digest.update(json.dumps([team.team_id, team.policy, tier_of(team)]).encode())
    for key in sorted(keys_in_grace, key=lambda k: k.secret_name):
        expires = key.expires_at.isoformat() if key.expires_at else ""
        digest.update(json.dumps(["grace", key.secret_name, expires]).encode())
    return digest.hexdigest()[:16]


def auth_policy(settings: Settings, *, revision: str = "") -> dict[str, Any]:
    selector = {"matchLabels": {"kuadrant.io/auth-secret": "true", "app": settings.key_selector}}
    api_key: dict[str, Any] = {"selector": selector, "allNamespaces": True}
    authentication = {
        name: {"apiKey": copy.deepcopy(api_key), "credentials": {"authorizationHeader": {"prefix": prefix}}}
        for name, prefix in KEY_PREFIXES.items()
    }
    annotations = "auth.identity.metadata.annotations"
    authorization = {
        "key-in-keys-namespace": {
            "patternMatching": {
                "patterns": [{"predicate": f"auth.identity.metadata.namespace == {json.dumps(settings.store_namespace)}"}]
            }
        },
        # Always true; its text changes with the identity revision, which is the point (above).
        "identity-revision": {
            "patternMatching": {"patterns": [{"predicate": f"{json.dumps(revision or 'none')} != \"\""}]}
        },
        "key-active": {
            "patternMatching": {
                "patterns": [{"predicate": f'{annotations}["{STATUS_ANNOTATION}"] == "active"'}]
            }
        },
        "key-not-expired": {
            "patternMatching": {
                "patterns": [
                    {
                        "predicate": (
                            # request.time is {seconds, nanos}, not a timestamp (§3).
                            f'!("{EXPIRES_ANNOTATION}" in {annotations}) || '
                            f'int(timestamp({annotations}["{EXPIRES_ANNOTATION}"])) > int(request.time.seconds)'
                        )
                    }
                ]
            }
        },
        "key-allows-model": {
            "patternMatching": {
                "patterns": [
                    {
                        "predicate": (
                            f'!("{MODELS_ANNOTATION}" in {annotations}) || '
                            f'{annotations}["{MODELS_ANNOTATION}"] == "" || '
                            f'request.url_path.split("/")[1] in {annotations}["{MODELS_ANNOTATION}"].split(",")'
                        )
                    }
                ]
            }
        },
    }
    identity = {
        field: {"selector": f"{annotations}.{_escape_selector(annotation)}"}
        for field, annotation in IDENTITY_ANNOTATIONS.items()
    }
    return _policy(
        AUTH_POLICY,
        settings,
        {
            "targetRef": _gateway_ref(settings),
            "rules": {
                "authentication": authentication,
                "authorization": authorization,
                "response": {
                    "unauthenticated": _denial("missing or invalid API key"),
                    "unauthorized": _denial("API key is revoked or expired, or may not use this model"),
                    "success": {"filters": {"identity": {"json": {"properties": identity}}}},
                },
            },
        },
    )


def token_rate_limit_policy(teams: Iterable[Team], settings: Settings) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for team in sorted(teams, key=tier_of):
        tier = tier_of(team)
        if tier in limits:
            continue
        counters = [{"expression": "auth.identity.team"}]
        if team.limit_scope == "user":
            counters.append({"expression": "auth.identity.userid"})
        limits[tier] = {
            "rates": [{"limit": team.token_limit, "window": normalize_window(team.time_window)}],
            "when": [{"predicate": f"auth.identity.tier == {json.dumps(tier)}"}],
            "counters": counters,
        }
    return _policy(TOKEN_RATE_LIMIT_POLICY, settings, {"targetRef": _gateway_ref(settings), "limits": limits})


def model_label(models: Iterable[str]) -> str:
    """The `model` label: the body's model when it is one we serve, else `other`.

    A client may put any string in the body, and each distinct label value is a series in
    Prometheus (tests/cluster/SOURCES.md §16): bounded by the catalog, a new model is counted
    under `other` until the next policy sync. The expression keeps `requestBodyJSON(` even for
    an empty catalog, which is what keeps Kuadrant from putting it on the call counters.
    """
    listed = ", ".join(json.dumps(name) for name in sorted(set(models)))
    # string(): a number compares unequal to every name, a list or object fails (no label);
    # either way no value outside the catalog, whatever the CEL engine does with mixed types.
    model = f"string({MODEL_EXPRESSION})"
    return f"{model} in [{listed}] ? {model} : {json.dumps(OTHER_MODEL)}"


def telemetry_policy(settings: Settings, models: Iterable[str] = ()) -> dict[str, Any]:
    labels = {"user": "auth.identity.userid", "team": "auth.identity.team", "model": model_label(models)}
    return _policy(
        TELEMETRY_POLICY,
        settings,
        {"targetRef": _gateway_ref(settings), "metrics": {"default": {"labels": labels}}},
    )


def _policy(ref: tuple[str, str, str], settings: Settings, spec: dict[str, Any]) -> dict[str, Any]:
    api_version, kind, name = ref
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": settings.policy_namespace, "labels": dict(MANAGED_BY)},
        "spec": spec,
    }


def _gateway_ref(settings: Settings) -> dict[str, str]:
    return {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": settings.gateway_name}


def _denial(message: str) -> dict[str, Any]:
    """A 401 in the OpenAI error shape, the same body the local gateway answers with."""
    return {
        "code": 401,
        "headers": {"content-type": {"value": "application/json"}},
        "body": {"value": json.dumps(openai_body(Unauthorized(message)), separators=(",", ":"))},
    }


def _escape_selector(annotation: str) -> str:
    # Authorino selectors are JSON paths: a literal dot in a key is written `\.`.
    return annotation.replace(".", r"\.")
