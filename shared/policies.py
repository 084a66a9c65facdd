"""The Kuadrant policies of a cluster deployment, generated as whole objects from all teams.

Pure functions returning plain dicts: no Kubernetes client here (the policy-apply module sends
them). The team Secrets are the source of truth; a policy is never read back for a limit.

- AuthPolicy: API keys are Secrets labelled `kuadrant.io/auth-secret: "true"` and
  `app: <key selector>`, sent as `Authorization: APIKEY <key>` or `Bearer <key>` (one
  authentication entry per prefix, since an entry carries one prefix). Kuadrant writes the
  AuthConfig into Authorino's own namespace, so the keys are found only with `allNamespaces`
  (tests/cluster/SOURCES.md §1); a key must then also live in the keys' namespace, or anyone
  able to label a Secret elsewhere could mint one. Success exposes
  `auth.identity.{userid,team,groups,tier,keytier}` from the Secret's annotations, and
  `auth.identity.key` (its name), to the rate limiter and the metrics; a key whose `maas/status` is not `active`, or whose `maas/expires-at` has passed, is
  refused with 401. These checks are `patternMatching` predicates, which deny when they fail to
  evaluate; a `when` condition that fails to evaluate is skipped instead, i.e. fails open (§3).
  A key with a `maas/models-allowed` list may call only the models in it: Authorino never sees
  the body (§7), so the model is the first path segment, `/<model>/v1/...` on the `maas-models`
  route (shared/modelroute.py); on any other path a listed key is refused. `split` is cel-go's
  strings extension, which Authorino's CEL environment has (§7).
- TokenRateLimitPolicy and RateLimitPolicy: a team's rates (shared/rates.py) by tier
  (shared/tiers.py: teams with the same rates share one, which each key carries as
  `auth.identity.tier`). Token rates are limits of the TokenRateLimitPolicy, request rates
  limits of the RateLimitPolicy; the rates of one unit, scope and model are one limit with
  several `rates` (one per window), named by what it counts and active for every tier that
  has exactly those rates (`auth.identity.tier in [...]`). A rate of one model adds a predicate on the path, whose first
  segment is the model on the `maas-models` route (`/<model>/v1/...`, shared/modelroute.py;
  the wasm-shim has `request.url_path`, §18). A per-user rate is counted per team and user, a
  per-team one per team: each team keeps its own counters while the number of limits stays
  the number of distinct groups of rates (§10). A key's own rates are limits of their own,
  selected by the key's tier (`auth.identity.keytier`) and counted per key
  (`auth.identity.key`, its Secret's name). Either policy is omitted when it would have no
  limit, because the CRDs require at least one: the caller deletes it then (see
  `managed_policies`). A key's cap on calls in flight has no Kuadrant form (Limitador counts
  hits in windows, nothing in flight: §18); `policy_warnings` says so.
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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.durations import MAX_PART
from shared.errors import Unauthorized, openai_body
from shared.rates import Rate, RateUnit
from shared.settings import Settings
from shared.store.base import ApiKey, Team
from shared.store.kubeshapes import (
    EXPIRES_ANNOTATION,
    LINEAGE_ANNOTATION,
    MODELS_ANNOTATION,
    STATUS_ANNOTATION,
    timestamp,
)
from shared.tiers import KEY_TIER_ANNOTATION, TIER_ANNOTATION, RateShape, key_tier_of, shapes_of, tier_of, window_s

AUTH_POLICY = ("kuadrant.io/v1", "AuthPolicy", "maas-api-keys")
TOKEN_RATE_LIMIT_POLICY = ("kuadrant.io/v1alpha1", "TokenRateLimitPolicy", "maas-team-token-limits")
RATE_LIMIT_POLICY = ("kuadrant.io/v1", "RateLimitPolicy", "maas-team-request-limits")
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
TIER_FIELD = "tier"
# What a key's own rates are counted by: the first handle of its rotation chain (the
# `maas/lineage` annotation a rotated key carries), else its own Secret's name; so a rotation
# keeps the key's budgets, as the local gateway does (ApiKey.budget_handle). An expression, as
# KEY_TIER_FIELD below and for the same reasons.
KEY_FIELD = "key"
# The tier of a key's own rates. A CEL expression rather than a selector: a selector that finds
# nothing gives null (authorino pkg/json/json.go, JSONValue.ResolveFor), this gives "" for a key
# without rates, so the predicates comparing it compare two strings whatever the engine makes of
# null (one that errs would fail the RateLimitPolicy's one merged action, every request limit
# with it: §18). It cannot err itself: every key that gets this far has annotations (the
# `key-active` rule read them).
KEY_TIER_FIELD = "keytier"

# What the counters are keyed by (the identity the AuthPolicy's success filter hands the shim).
TEAM_COUNTER = "auth.identity.team"
USER_COUNTER = "auth.identity.userid"
KEY_COUNTER = f"auth.identity.{KEY_FIELD}"
# Past this many limits the Gateway's wasm configuration (every limit an action, a token limit
# two, on every route rule: §10) is worth a look before it reaches the object size limit.
MANY_LIMITS = 200

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
        for api_version, kind, name in (AUTH_POLICY, TOKEN_RATE_LIMIT_POLICY, RATE_LIMIT_POLICY, TELEMETRY_POLICY)
    ]


def generate_policies(teams: Iterable[Team], settings: Settings, *, keys_in_grace: Iterable[ApiKey] = (),
                      models: Iterable[str] = (), keys: Iterable[ApiKey] = ()) -> list[dict[str, Any]]:
    """All the policies for these teams (and the models served, for the usage labels), in a
    stable order and with stable content. `keys`: the keys with rates of their own (others are
    ignored), whose tiers the rate limits must hold."""
    ordered = sorted(teams, key=lambda team: team.team_id)
    with_rates = sorted((key for key in keys if key.rates), key=lambda key: key.secret_name)
    policies = [auth_policy(settings, revision=identity_revision(ordered, keys_in_grace))]
    tokens = token_rate_limit_policy(ordered, settings, keys=with_rates)
    if tokens["spec"]["limits"]:
        policies.append(tokens)
    requests = rate_limit_policy(ordered, settings, keys=with_rates)
    if requests["spec"]["limits"]:
        policies.append(requests)
    policies.append(telemetry_policy(settings, models))
    return policies


def identity_revision(teams: Iterable[Team], keys_in_grace: Iterable[ApiKey]) -> str:
    """A digest of what key Secrets carry that can change after Authorino indexed them."""
    digest = hashlib.sha256()
    for team in sorted(teams, key=lambda t: t.team_id):
        digest.update(json.dumps([team.team_id, team.policy, tier_of(team)]).encode())
    for key in sorted(keys_in_grace, key=lambda k: k.secret_name):
        # In whole seconds: Authorino compares whole seconds (`int(timestamp(...))`), and the API
        # shows no more, so `maas policy render` from a listing digests to the sync's revision.
        expires = timestamp(key.expires_at.replace(microsecond=0)) if key.expires_at else ""
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
    identity: dict[str, dict[str, str]] = {
        field: {"selector": f"{annotations}.{_escape_selector(annotation)}"}
        for field, annotation in IDENTITY_ANNOTATIONS.items()
    }
    lineage = json.dumps(LINEAGE_ANNOTATION)
    identity[KEY_FIELD] = {
        "expression": f"{lineage} in {annotations} ? {annotations}[{lineage}] : auth.identity.metadata.name"}
    tier = json.dumps(KEY_TIER_ANNOTATION)
    identity[KEY_TIER_FIELD] = {"expression": f'{tier} in {annotations} ? {annotations}[{tier}] : ""'}
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


def token_rate_limit_policy(teams: Iterable[Team], settings: Settings, *,
                            keys: Iterable[ApiKey] = ()) -> dict[str, Any]:
    """The token rates of every tier (the teams', and the keys' own); `limits` may be empty,
    which the CRD refuses: `generate_policies` leaves such a policy out."""
    limits = _rate_limits(teams, keys, "tokens")
    return _policy(TOKEN_RATE_LIMIT_POLICY, settings, {"targetRef": _gateway_ref(settings), "limits": limits})


def rate_limit_policy(teams: Iterable[Team], settings: Settings, *, keys: Iterable[ApiKey] = ()) -> dict[str, Any]:
    """The request rates of every tier, as `token_rate_limit_policy` the token rates. The same
    tier predicates and counters: Kuadrant's RateLimitPolicy and TokenRateLimitPolicy share
    their limit shape (KO api/v1/ratelimitpolicy_types.go `Limit`, api/v1alpha1
    tokenratelimitpolicy_types.go `TokenLimit`)."""
    limits = _rate_limits(teams, keys, "requests")
    return _policy(RATE_LIMIT_POLICY, settings, {"targetRef": _gateway_ref(settings), "limits": limits})


def _rate_limits(teams: Iterable[Team], keys: Iterable[ApiKey], unit: RateUnit) -> dict[str, Any]:
    """The limits of one unit for these teams and keys, by name: one per distinct group of
    rates (same unit, scope and model), selected by every tier that has that group."""
    wanted: dict[tuple[str, str, str, tuple[tuple[int, int], ...]], tuple[tuple[RateShape, ...], set[str]]] = {}

    def want(field: str, tier: str, shapes: tuple[RateShape, ...]) -> None:
        for scope, model, group in _groups(shapes, unit):
            content = tuple((shape.seconds, shape.limit) for shape in group)
            wanted.setdefault((field, scope, model, content), (group, set()))[1].add(tier)

    seen: set[str] = set()
    for team in teams:
        tier = tier_of(team)
        if tier not in seen:
            seen.add(tier)
            want(TIER_FIELD, tier, shapes_of(team.limits))
    for key in keys:
        key_tier = key_tier_of(key)
        if key_tier is not None and key_tier not in seen:
            seen.add(key_tier)
            want(KEY_TIER_FIELD, key_tier, shapes_of(key.rates))
    limits: dict[str, Any] = {}
    for (field, scope, model, _), (group, tiers) in wanted.items():
        when = [{"predicate": _selected_by(field, sorted(tiers))}]
        if model:
            when.append({"predicate": model_predicate(model)})
        limits[_limit_name(field, unit, scope, model, group)] = {
            "rates": [{"limit": shape.limit, "window": kuadrant_window(shape)} for shape in group],
            "when": when,
            "counters": [{"expression": expression} for expression in _counters(scope)],
        }
    return dict(sorted(limits.items()))


def _groups(shapes: Iterable[RateShape], unit: RateUnit) -> list[tuple[str, str, tuple[RateShape, ...]]]:
    """(scope, model, rates by window) of the rates of `unit`: one policy limit each. A limit
    holds several rates only when their calls and counters agree: Limitador makes each rate a
    limit of its own that shares the limit's conditions and variables, told apart by its window
    (LI limitador/src/limit.rs, `Limit`'s Eq and Hash; §18); two rates of one window cannot both
    be there, and shapes_of keeps only the lower."""
    groups: dict[tuple[str, str], list[RateShape]] = {}
    for shape in shapes:
        if shape.unit == unit:
            groups.setdefault((shape.scope, shape.model), []).append(shape)
    return [(scope, model, tuple(sorted(group, key=_by_window))) for (scope, model), group in sorted(groups.items())]


def _by_window(shape: RateShape) -> int:
    return shape.seconds


def _selected_by(field: str, tiers: list[str]) -> str:
    if len(tiers) == 1:
        return f"auth.identity.{field} == {json.dumps(tiers[0])}"
    return f"auth.identity.{field} in [{', '.join(json.dumps(tier) for tier in tiers)}]"


def _limit_name(field: str, unit: RateUnit, scope: str, model: str, group: tuple[RateShape, ...]) -> str:
    """The name says what the limit counts, e.g. `100000-per-3600s-user` (the name a team with
    the short form always had, so its Limitador counters survive), `20000-per-60s-1000000-per-86400s-user`,
    `60-per-60s-requests-team-on-big`, `key-10-per-60s-requests`. Named by its content rather
    than by a tier, a limit, hence its counters (§5: the identifier is a hash of the name), stays
    when a team's list changes elsewhere, e.g. when an RPM is added to a token budget. Kuadrant
    makes an identifier of it, sanitised and with that hash, so any text is safe (§5); many
    rates, or a model whose name is long or odd, are named by a digest to keep it short."""
    rates = "-".join(f"{shape.limit}-per-{shape.seconds}s" for shape in group)
    if len(rates) > 40:
        # `r` where the plain form has a digit: a digest never reads as rates.
        rates = "r" + hashlib.sha256(rates.encode()).hexdigest()[:12]
    name = ("key-" if field == KEY_TIER_FIELD else "") + rates
    if unit == "requests":
        name += "-requests"
    if scope != "key":
        name += f"-{scope}"
    if model:
        # `~` is in no plain name, so a digest never reads as one.
        plain = re.fullmatch(r"[A-Za-z0-9._-]{1,63}", model)
        tag = model if plain else "~" + hashlib.sha256(model.encode()).hexdigest()[:10]
        name += f"-on-{tag}"
    return name


@dataclass(frozen=True)
class LimitadorCounter:
    """Where Limitador counts one of our rates for one key's calls: the counter of the limit
    this rendering makes of it (tests/cluster/SOURCES.md §5, §10, §18)."""

    namespace: str  # the model route's `<ns>/<name>` (KO LimitsNamespaceFromRoute)
    identifier: str  # in the limit's condition `descriptors[0]["<identifier>"] == "1"`
    seconds: int  # a rate of a limit is a Limitador limit of its own, told apart by its window
    max_value: int
    variables: tuple[tuple[str, str], ...]  # the counter's `set_variables`, sorted


def limitador_identifier(kind: str, settings: Settings, limit_name: str) -> str:
    """Kuadrant's name for a policy limit in Limitador: `tokenlimit.` or `limit.`, the name with
    what is not a letter, digit or `_` made `_`, then `__` and 8 hex of sha256 of
    `<policy ns>/<policy name>/<limit name>` (KO internal/controller/ratelimit_workflow_helpers.go,
    TokenLimitNameToLimitadorIdentifier, LimitNameToLimitadorIdentifier)."""
    prefix, policy = (("tokenlimit.", TOKEN_RATE_LIMIT_POLICY[2]) if kind == TOKEN_RATE_LIMIT_POLICY[1]
                      else ("limit.", RATE_LIMIT_POLICY[2]))
    digest = hashlib.sha256(f"{settings.policy_namespace}/{policy}/{limit_name}".encode()).hexdigest()[:8]
    return f"{prefix}{re.sub(r'[^A-Za-z0-9_]', '_', limit_name)}__{digest}"


def limitador_counter(team: Team, key: ApiKey, rate: Rate, settings: Settings) -> LimitadorCounter | None:
    """The counter a cluster keeps for `rate` (the team's, or the key's own) on `key`'s calls;
    None where the rendering makes none (a model the route cannot serve)."""
    from shared.modelroute import _MODEL_NAME as ROUTABLE
    from shared.modelroute import ROUTE_NAME

    model = rate.model or ""
    if model and not ROUTABLE.match(model):
        return None
    field, shapes = (KEY_TIER_FIELD, shapes_of(key.rates)) if rate.scope == "key" else (TIER_FIELD, shapes_of(team.limits))
    seconds = window_s(rate.window)
    group = next((group for scope, on, group in _groups(shapes, rate.unit) if (scope, on) == (rate.scope, model)), ())
    shape = next((shape for shape in group if shape.seconds == seconds), None)
    if shape is None:
        return None
    kind = TOKEN_RATE_LIMIT_POLICY[1] if rate.unit == "tokens" else RATE_LIMIT_POLICY[1]
    # The identity's fields as the AuthPolicy's success filter gives them (auth_policy).
    identity = {TEAM_COUNTER: team.team_id, USER_COUNTER: key.user_id, KEY_COUNTER: key.budget_handle}
    # A counter expression is the Limitador variable `descriptors[0]["<expression>"]` (KO
    # internal/cel/transformer.go, TransformCounterVariable, as both policies' CountersAsStringList call it).
    variables = tuple(sorted((f'descriptors[0]["{expression}"]', identity[expression])
                             for expression in _counters(rate.scope)))
    return LimitadorCounter(f"{settings.policy_namespace}/{ROUTE_NAME}",
                            limitador_identifier(kind, settings, _limit_name(field, rate.unit, rate.scope, model, group)),
                            seconds, shape.limit, variables)


def _counters(scope: str) -> list[str]:
    if scope == "key":
        return [KEY_COUNTER]
    if scope == "team":
        return [TEAM_COUNTER]
    return [TEAM_COUNTER, USER_COUNTER]


def model_predicate(model: str) -> str:
    """True for calls of `model` through the `maas-models` route, whose paths are
    `/<model>/v1/...` (shared/modelroute.py): the path as the client sent it, which the
    wasm-shim has as `request.url_path` (§18), while the body is not read for predicates (§7)."""
    return f"request.url_path.startsWith({json.dumps('/' + model + '/')})"


def kuadrant_window(shape: RateShape) -> str:
    """The window in hours, minutes and seconds (`1h30m`), one text per length, so teams that
    wrote `60m` and `1h` render the same limit. Past 99999 hours (the CRD's five digits) the
    rate's own text, which already fits the CRD's pattern (shared/durations.py)."""
    hours, rest = divmod(shape.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours > MAX_PART:
        return shape.window
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "")
    return text or "1s"  # never 0: windows are at least 1 s (normalize_rate_window)


def policy_warnings(teams: Iterable[Team], keys: Iterable[ApiKey] = ()) -> list[str]:
    """What the admins asked for that these policies cannot do in a cluster, one line each,
    for `maas policy render` and `maas cluster-check` to show. Nothing here blocks rendering:
    the rest of the limits are still enforced."""
    from shared.modelroute import _MODEL_NAME as ROUTABLE  # the route's rule; it imports this module

    teams, keys = list(teams), list(keys)
    warnings: list[str] = []
    capped = sorted((key for key in keys if key.max_concurrent is not None), key=lambda key: key.secret_name)
    if capped:
        example = capped[0]
        warnings.append(
            f"{len(capped)} key(s) have max_concurrent (e.g. '{example.secret_name}' of team '{example.team_id}', "
            f"{example.max_concurrent}): not enforced in a cluster, Limitador counts hits in windows and has no "
            "limit on calls in flight; only the local gateway caps them"
        )
    owners = [(f"team '{team.team_id}'", rate) for team in teams for rate in team.limits]
    owners += [(f"key '{key.secret_name}'", rate) for key in keys for rate in key.rates]
    for owner, rate in owners:
        if rate.model is not None and not ROUTABLE.match(rate.model):
            warnings.append(f"{owner}: limit '{rate.name}' is on model '{rate.model}', which the maas-models route "
                            "cannot serve (not one path segment): it never applies in a cluster")
    count = len(_rate_limits(teams, keys, "tokens")) + len(_rate_limits(teams, keys, "requests"))
    if count > MANY_LIMITS:
        warnings.append(f"the rate limits have {count} limits (one per tier, unit, scope and model): each is an action "
                        "on every route rule of the Gateway, so fewer distinct lists of rates keep its wasm "
                        "configuration small (docs/DEPLOY.md, 'Rate limits in a cluster')")
    return warnings


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
