"""A model of what Kuadrant, the wasm-shim and Limitador do with our rate limits (a
TokenRateLimitPolicy, a RateLimitPolicy, or both), written from their source (commits and line
numbers in tests/cluster/SOURCES.md):

- Each limit of a policy becomes one Limitador limit per rate and per HTTPRoute on the policy's
  path, in the Limitador namespace `<route namespace>/<route name>`, identified by
  `tokenlimit.<name>__<8 hex>` (TokenRateLimitPolicy) or `limit.<name>__<8 hex>`
  (RateLimitPolicy) of sha256("<policy ns>/<policy name>/<limit name>") (kuadrant-operator
  internal/controller/ratelimit_workflow_helpers.go, LimitsNamespaceFromRoute,
  TokenLimitNameToLimitadorIdentifier, LimitNameToLimitadorIdentifier;
  limitador_limits_reconciler.go, processPolicyRules). The rates of one limit share its
  conditions and variables and differ by their window, which is part of a Limitador limit's
  identity (limitador src/limit.rs, Eq/Hash of Limit: namespace, seconds, conditions,
  variables). §5, §10, §18
- A limit applies to a request when all its `when` predicates hold over the wasm-shim's
  attributes (`auth.identity` is the AuthPolicy's success filter object; `request.url_path`
  the path the client sent); its counter is keyed by the string values of its `counters`
  expressions (internal/wasm/action_spec.go, conditionalDataToDescriptor,
  dataTypeToDescriptorEntry). §10, §18
- The window is `int(seconds)` of Go's ParseDuration: truncated (api/v1/ratelimitpolicy_types.go,
  Duration.Seconds); a counter's window starts when Limitador first writes it and resets after
  it (limitador src/storage/atomic_expiring_value.rs). §13
- The order on a request: the RateLimitPolicy's actions before the TokenRateLimitPolicy's
  (internal/controller/istio_extension_reconciler.go, the wasm config of a path: auth, then
  rate limit, then token rate limit). §18
- RateLimitPolicy: its limits are consecutive actions of one service and scope, merged into one
  (data_plane_policies_workflow.go, mergeAndVerifySpecs): one ShouldRateLimit per request, whose
  predicate is the `||` of the limits' and whose descriptor has the entries of each limit whose
  predicate holds (action_spec.go buildRateLimitPredicate; cel.go conditionalEntriesCEL). A
  predicate or counter that fails to evaluate fails that one action, which is only logged
  (wasm-shim kuadrant/pipeline/tasks/dynamic.rs, executor.rs process_tasks): none of the request
  limits applies to that request. Limitador checks every counter that applies with the request's
  1 hit, creating each as it goes, stops at the first that has no room and then updates none,
  else adds 1 to all (limitador src/storage/in_memory.rs, check_and_update; limitador-server
  src/envoy_rls/server.rs, should_rate_limit: hits_addend 0 is 1). Limitador goes through the
  counters in the order of a hash set; the model goes in limit-name order. §18
- TokenRateLimitPolicy: a check action and a report action per limit, never merged (they
  alternate services). At request time Limitador checks with a delta of 1 whatever the shim
  asks (a request is admitted while `value + 1 <= limit`) and creates nothing; after the
  response the shim reports `usage.total_tokens`, which Limitador adds, a 0 counted as 1
  (limitador-server src/envoy_rls/kuadrant_service.rs, check_rate_limit and report;
  limitador src/storage/in_memory.rs, is_within_limits). A response without usage reports
  nothing (wasm-shim store task fails, the response passes). §6, §14
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import celpy

JSON = dict[str, Any]
_GO_DURATION = re.compile(r"(\d+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
DEFAULT_PATH = "/v1/chat/completions"
_PREFIXES = {"TokenRateLimitPolicy": "tokenlimit.", "RateLimitPolicy": "limit."}

CounterKey = tuple[str, str, int, tuple[str, ...]]  # route, identifier, seconds, variable values


def go_duration_seconds(window: str) -> int:
    """Duration.Seconds: time.ParseDuration, then int(seconds) (truncation toward zero)."""
    return int(sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _GO_DURATION.findall(window)))


def limit_identifier(policy: JSON, limit_name: str) -> str:
    meta = policy["metadata"]
    digest = hashlib.sha256(f"{meta['namespace']}/{meta['name']}/{limit_name}".encode()).hexdigest()[:8]
    return f"{_PREFIXES[policy['kind']]}{re.sub(r'[^A-Za-z0-9_]', '_', limit_name)}__{digest}"


@dataclass
class Counter:
    value: int = 0
    expires_at: datetime | None = None


class _Failed(Exception):
    """An action whose predicate or descriptor cannot be evaluated: the shim drops it."""


@dataclass(frozen=True)
class _Applied:
    name: str  # the policy's limit name
    counters: tuple[tuple[CounterKey, int], ...]  # (counter, its rate's limit), one per rate


class Limitador:
    """Limitador's counters for our rate-limit policies, on the routes they cover."""

    def __init__(self, *policies: JSON) -> None:
        self.policies = list(policies)
        self.counters: dict[CounterKey, Counter] = {}
        self.refused_by: str | None = None  # the policy limit that refused the last check, if one did
        self._env = celpy.Environment()

    @property
    def policy(self) -> JSON:
        (only,) = self.policies
        return only

    @policy.setter
    def policy(self, policy: JSON) -> None:
        """A re-applied policy of the same kind replaces the one held; the counters stay."""
        self.policies = [p for p in self.policies if p["kind"] != policy["kind"]] + [policy]

    def _of(self, kind: str) -> list[JSON]:
        return [p for p in self.policies if p["kind"] == kind]

    # -- evaluation over the shim's attributes -------------------------------------------------

    def _activation(self, identity: JSON | None, path: str) -> dict[str, Any]:
        return {
            "auth": celpy.json_to_cel({"identity": identity or {}}),
            "request": celpy.json_to_cel({"url_path": path, "path": path, "method": "POST"}),
        }

    def _eval(self, expression: str, activation: dict[str, Any]) -> Any:
        try:
            value = self._env.program(self._env.compile(expression)).evaluate(activation)
        except celpy.CELEvalError as exc:
            raise _Failed(expression) from exc
        if isinstance(value, celpy.CELEvalError):
            raise _Failed(expression)
        return value

    def _holds(self, limit: JSON, activation: dict[str, Any]) -> bool:
        verdicts = [self._eval(p["predicate"], activation) for p in limit.get("when", [])]
        return all(isinstance(v, celpy.celtypes.BoolType) and bool(v) for v in verdicts)

    def _applied(self, policy: JSON, name: str, limit: JSON, activation: dict[str, Any], route: str) -> _Applied:
        values = []
        for counter in limit.get("counters", []):
            value = self._eval(f"string({counter['expression']})", activation)  # the descriptor entry's CEL
            values.append(str(value))
        identifier = limit_identifier(policy, name)
        return _Applied(name, tuple(((route, identifier, go_duration_seconds(rate["window"]), tuple(values)),
                                     int(rate["limit"])) for rate in limit["rates"]))

    def _value(self, key: CounterKey, now: datetime) -> int:
        counter = self.counters.get(key)
        return 0 if counter is None or counter.expires_at is None or counter.expires_at <= now else counter.value

    def _written(self, key: CounterKey, now: datetime) -> Counter:
        counter = self.counters.get(key)
        if counter is None or counter.expires_at is None or counter.expires_at <= now:
            counter = Counter(0, now + timedelta(seconds=key[2]))  # a 0 s window expires at once
            self.counters[key] = counter
        return counter

    # -- its HTTP API -----------------------------------------------------------------------------

    def http_counters(self, namespace: str, now: datetime) -> list[JSON]:
        """`GET /counters/{namespace}` as limitador-server answers it (src/http_api/server.rs
        get_counters; src/http_api/request_types.rs Counter and Limit, whose fields these are):
        the counters not yet expired (src/storage/in_memory.rs get_counters), `remaining` as
        `max_value - value` in u64, wrapping when a report took a token counter past its limit,
        `expires_in_seconds` the whole seconds left (Duration::as_secs). A limit's `conditions`
        and `variables` are those Kuadrant gives it (limitador_limits_reconciler.go
        processPolicyRules; the counters' expressions through TransformCounterVariable)."""
        limits: dict[tuple[str, int], tuple[int, list[str]]] = {}
        for policy in self.policies:
            for name, limit in policy["spec"]["limits"].items():
                variables = [f'descriptors[0]["{counter["expression"]}"]' for counter in limit.get("counters", [])]
                for rate in limit["rates"]:
                    limits[(limit_identifier(policy, name), go_duration_seconds(rate["window"]))] = (
                        int(rate["limit"]), variables)
        answer = []
        for (route, identifier, seconds, values), counter in sorted(self.counters.items()):
            if route != namespace or counter.expires_at is None or counter.expires_at <= now:
                continue
            max_value, variables = limits[(identifier, seconds)]
            answer.append({
                "limit": {"id": None, "namespace": route, "max_value": max_value, "seconds": seconds, "name": None,
                          "conditions": [f'descriptors[0]["{identifier}"] == "1"'], "variables": variables},
                "set_variables": dict(zip(variables, values)),
                "remaining": (max_value - counter.value) % 2**64,
                "expires_in_seconds": int((counter.expires_at - now).total_seconds()),
            })
        return answer

    # -- a request ------------------------------------------------------------------------------

    def check(self, identity: JSON | None, *, route: str, now: datetime, path: str = DEFAULT_PATH) -> bool:
        """The request phase: the request limits, then each token limit; False on a 429."""
        self.refused_by = None
        activation = self._activation(identity, path)
        for policy in self._of("RateLimitPolicy"):
            refused = self._should_rate_limit(policy, activation, route, now)
            if refused is not None:
                self.refused_by = refused
                return False
        for policy in self._of("TokenRateLimitPolicy"):
            for name, limit in sorted(policy["spec"]["limits"].items()):  # the operator sorts them by name
                try:
                    if not self._holds(limit, activation):
                        continue
                    applied = self._applied(policy, name, limit, activation, route)
                except _Failed:
                    continue  # this limit's check action failed: logged, the request goes on
                if any(self._value(key, now) + 1 > rate_limit for key, rate_limit in applied.counters):
                    self.refused_by = name
                    return False
        return True

    def _should_rate_limit(self, policy: JSON, activation: dict[str, Any], route: str, now: datetime) -> str | None:
        """The merged action of a RateLimitPolicy; the limit that refused, or None."""
        try:
            applied = [self._applied(policy, name, limit, activation, route)
                       for name, limit in sorted(policy["spec"]["limits"].items()) if self._holds(limit, activation)]
        except _Failed:
            return None  # the one action failed: no request limit applies to this request
        seen: list[Counter] = []
        for limit in applied:
            for key, rate_limit in limit.counters:
                counter = self._written(key, now)  # created as it is gone through, even if refused after
                if counter.value + 1 > rate_limit:
                    return limit.name  # and nothing is updated
                seen.append(counter)
        for counter in seen:
            counter.value += 1
        return None

    def report(self, identity: JSON | None, total_tokens: int | None, *, route: str, now: datetime,
               path: str = DEFAULT_PATH) -> None:
        """The response phase of the token limits: no usage in the response, no report."""
        if total_tokens is None:
            return
        activation = self._activation(identity, path)
        for policy in self._of("TokenRateLimitPolicy"):
            for name, limit in sorted(policy["spec"]["limits"].items()):
                try:
                    if not self._holds(limit, activation):
                        continue
                    applied = self._applied(policy, name, limit, activation, route)
                except _Failed:
                    continue
                for key, _ in applied.counters:
                    self._written(key, now).value += max(total_tokens, 1)
