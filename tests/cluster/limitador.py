"""A model of what Kuadrant and Limitador do with our TokenRateLimitPolicy, written from their
source (commits and line numbers in tests/cluster/SOURCES.md):

- Each limit of the policy becomes one Limitador limit per HTTPRoute on the policy's path, in
  the Limitador namespace `<route namespace>/<route name>`, identified by
  `tokenlimit.<limit name>__<8 hex of sha256("<policy ns>/<policy name>/<limit name>")>`
  (kuadrant-operator internal/controller/ratelimit_workflow_helpers.go,
  LimitsNamespaceFromRoute, TokenLimitNameToLimitadorIdentifier;
  limitador_limits_reconciler.go, processPolicyRules). §5, §10
- A limit applies to a request when all its `when` predicates hold over the wasm-shim's
  attributes, where `auth.identity` is the AuthPolicy's success filter object; its counter is
  keyed by the string values of its `counters` expressions (internal/wasm/action_spec.go,
  conditionalDataToDescriptor, dataTypeToDescriptorEntry). §10
- The window is `int(seconds)` of Go's ParseDuration: truncated (api/v1/ratelimitpolicy_types.go,
  Duration.Seconds); a counter's window starts at its first hit and resets after it
  (limitador src/storage/atomic_expiring_value.rs). §13
- At request time Limitador checks with a delta of 1 whatever the shim asks (a request is
  admitted while `value + 1 <= limit`); after the response the shim reports
  `usage.total_tokens`, which Limitador adds, a 0 counted as 1 (limitador-server
  src/envoy_rls/kuadrant_service.rs, check_rate_limit and report). A response without usage
  reports nothing (wasm-shim store task fails, the response passes). §6, §14
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import celpy

JSON = dict[str, Any]
_GO_DURATION = re.compile(r"(\d+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration_seconds(window: str) -> int:
    """Duration.Seconds: time.ParseDuration, then int(seconds) (truncation toward zero)."""
    return int(sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _GO_DURATION.findall(window)))


def limit_identifier(policy: JSON, limit_name: str) -> str:
    meta = policy["metadata"]
    digest = hashlib.sha256(f"{meta['namespace']}/{meta['name']}/{limit_name}".encode()).hexdigest()[:8]
    return f"tokenlimit.{re.sub(r'[^A-Za-z0-9_]', '_', limit_name)}__{digest}"


@dataclass
class Counter:
    value: int = 0
    expires_at: datetime | None = None


@dataclass
class Limitador:
    """Limitador's counters for one TokenRateLimitPolicy, on the routes it covers."""

    policy: JSON
    counters: dict[tuple[str, str, tuple[str, ...]], Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._env = celpy.Environment()

    def _applicable(self, identity: JSON | None, route: str) -> list[tuple[str, int, int, tuple[str, ...]]]:
        """(identifier, limit, seconds, counter values) of every limit that applies."""
        activation = {"auth": celpy.json_to_cel({"identity": identity or {}})}
        found = []
        for name, limit in self.policy["spec"]["limits"].items():
            if not all(self._true(p["predicate"], activation) for p in limit.get("when", [])):
                continue
            values = tuple(self._string(c["expression"], activation) for c in limit.get("counters", []))
            if any(v is None for v in values):
                continue  # a counter that cannot be evaluated: the shim sends no descriptor
            (rate,) = limit["rates"]
            found.append((limit_identifier(self.policy, name), rate["limit"], go_duration_seconds(rate["window"]),
                          values))  # type: ignore[arg-type]
        return [(f"{route}|{ident}", lim, secs, vals) for ident, lim, secs, vals in found]

    def _true(self, predicate: str, activation: dict[str, Any]) -> bool:
        try:
            value = self._env.program(self._env.compile(predicate)).evaluate(activation)
        except celpy.CELEvalError:
            return False
        return isinstance(value, celpy.celtypes.BoolType) and bool(value)

    def _string(self, expression: str, activation: dict[str, Any]) -> str | None:
        try:
            value = self._env.program(self._env.compile(expression)).evaluate(activation)
        except celpy.CELEvalError:
            return None
        return None if value is None or isinstance(value, celpy.CELEvalError) else str(value)

    def _counter(self, key: tuple[str, str, tuple[str, ...]], seconds: int, now: datetime) -> Counter:
        counter = self.counters.get(key)
        if counter is None or counter.expires_at is None or counter.expires_at <= now:
            counter = Counter(0, now + timedelta(seconds=seconds))  # a 0 s window expires at once
            self.counters[key] = counter
        return counter

    def check(self, identity: JSON | None, *, route: str, now: datetime) -> bool:
        """The request phase: admitted unless a counter has no room for one more hit."""
        for ident, limit, seconds, values in self._applicable(identity, route):
            route_ns, identifier = ident.split("|", 1)
            if self._counter((route_ns, identifier, values), seconds, now).value + 1 > limit:
                return False
        return True

    def report(self, identity: JSON | None, total_tokens: int | None, *, route: str, now: datetime) -> None:
        """The response phase: no usage in the response, no report."""
        if total_tokens is None:
            return
        for ident, _, seconds, values in self._applicable(identity, route):
            route_ns, identifier = ident.split("|", 1)
            self._counter((route_ns, identifier, values), seconds, now).value += max(total_tokens, 1)
