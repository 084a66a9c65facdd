"""A model of what Authorino does with our AuthPolicy and key Secrets, written from its source.

Each behaviour below is one that the key manager relies on, with the upstream place it comes
from (commits and line numbers in tests/cluster/SOURCES.md):

- Kuadrant translates the AuthPolicy into an AuthConfig in Authorino's own namespace
  (kuadrant-operator internal/controller/authconfigs_reconciler.go, Reconcile), so an API-key
  entry looks for Secrets there, or in every namespace when `allNamespaces` is set and Authorino
  is cluster-wide, as Kuadrant installs it (authorino controllers/auth_config_controller.go,
  translateAuthConfig). §1
- When an AuthConfig is built, the entry lists the Secrets matching its own `selector` in that
  scope and indexes those with a non-empty `api_key` (authorino pkg/evaluators/identity/
  api_key.go, loadSecrets, appendK8sSecretBasedIdentity). §2
- Afterwards only Secret events reach it, and only for Secrets that carry the watcher's label
  (`--secret-label-selector`; an update passes if the old or the new object has it: authorino
  controllers/label_selector.go, LabelSelectorPredicate). The reconcile reads the Secret as it is
  now: gone or no longer watched revokes it from every entry; otherwise each entry adds it if its
  selector matches and revokes it if not (controllers/secret_controller.go, Reconcile,
  refreshK8sSecretBasedIdentity). §2
- Adding a Secret already indexed under the same name with the same `api_key` keeps the old
  object: annotation or label edits of a live key are not seen (api_key.go,
  AddK8sSecretBasedIdentity, "api key unchanged"). §8
- The identity is the whole Secret object; `request.time` is `{seconds, nanos}` (a protobuf
  Timestamp through encoding/json); both are protobuf Structs in CEL, so numbers are doubles
  (pkg/service/well_known_attributes.go, pkg/service/auth_pipeline.go NewAuthorizationJSON,
  pkg/expressions/cel/expressions.go AuthJsonToCel). §3
- An authorization `patternMatching` predicate that is false or fails to evaluate denies
  (pkg/evaluators/authorization/json.go, pkg/service/auth_pipeline.go
  evaluateAuthorizationConfigs). §3
- Any change to the AuthPolicy's rules makes Kuadrant rewrite the AuthConfig, and Authorino
  then rebuilds it from scratch, listing the Secrets afresh (authorino
  controllers/auth_config_controller.go, Reconcile: translateAuthConfig builds new evaluators
  each time). Given the AuthPolicy's place in the cluster instead of a fixed policy, the model
  re-reads it at each sync and rebuilds when its spec changed.
- The success filter's `selector` values are gjson paths, `\\.` escaping a dot
  (api/v1beta3/auth_config_types.go, ValueOrSelector).

CEL is evaluated with cel-python, which has the standard library cel-go has for what we use
(`int(timestamp)`, `in` on maps). Of cel-go's extensions, Authorino enables the strings library
(`ext.Strings()` in pkg/expressions/cel/expressions.go, Compile; §7); cel-python lacks it, so
`split` is registered here as an emulation of it (cel-go ext/strings.go, `split` and `splitN`:
Go's strings.Split and strings.SplitN, so an empty separator splits into characters, a limit n > 0
keeps at most n parts, 0 gives none, and a negative one all). No other extension function is
modelled; a predicate using one fails to evaluate here, and is refused.
"""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import celpy

from tests.kube_double import KubeDouble

JSON = dict[str, Any]
SECRETS = ("", "v1", "secrets")


def _go_split(text: Any, separator: Any, limit: Any = -1) -> celpy.celtypes.ListType:
    """cel-go ext.Strings `split`/`splitN`: Go's strings.Split / strings.SplitN."""
    text, separator, limit = str(text), str(separator), int(limit)
    if limit == 0:
        parts: list[str] = []
    elif separator == "":
        chars = list(text)
        parts = chars if limit < 0 or limit >= len(chars) else [*chars[: limit - 1], "".join(chars[limit - 1:])]
    else:
        parts = text.split(separator) if limit < 0 else text.split(separator, limit - 1)
    return celpy.celtypes.ListType([celpy.celtypes.StringType(part) for part in parts])


# The extension functions Authorino's CEL has and cel-python does not (see the module docstring).
CEL_EXTENSIONS = {"split": _go_split}
KUADRANT_AUTHORINO_NAMESPACE = "kuadrant-system"
DEFAULT_WATCH_SELECTOR = {"authorino.kuadrant.io/managed-by": "authorino"}


@dataclass
class Entry:
    """One API-key authentication entry of the AuthConfig and its index of trusted Secrets."""

    name: str
    prefix: str
    selector: dict[str, str]
    scope: str  # "" = every namespace
    secrets: dict[str, JSON] = field(default_factory=dict)  # api_key value -> Secret as indexed

    def matches(self, secret: JSON) -> bool:
        labels = secret["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, v in self.selector.items())

    def within_scope(self, namespace: str) -> bool:
        return self.scope == "" or self.scope == namespace

    def add(self, secret: JSON) -> None:
        if not self.within_scope(secret["metadata"]["namespace"]):
            return
        value = _api_key(secret)
        for old_value, current in list(self.secrets.items()):
            if _same(current, secret):
                if old_value != value and value:
                    del self.secrets[old_value]
                    self.secrets[value] = copy.deepcopy(secret)
                return  # unchanged value: the indexed object stays as it was
        if value:
            self.secrets[value] = copy.deepcopy(secret)

    def revoke(self, namespace: str, name: str) -> None:
        if not self.within_scope(namespace):
            return
        for value, current in list(self.secrets.items()):
            if current["metadata"]["namespace"] == namespace and current["metadata"]["name"] == name:
                del self.secrets[value]
                return


@dataclass
class Decision:
    status: int  # 200, or 401 as our policy answers both denials
    reason: str
    identity: JSON | None = None  # the success filter's object, what the rate limiter sees as auth.identity


class Authorino:
    """Authorino serving one AuthPolicy, fed by the Secrets of a KubeDouble."""

    def __init__(
        self,
        double: KubeDouble,
        auth_policy: JSON | tuple[str, str],
        *,
        namespace: str = KUADRANT_AUTHORINO_NAMESPACE,
        cluster_wide: bool = True,
        watch_selector: dict[str, str] | None = None,
    ) -> None:
        self.double = double
        # A policy object, or the (namespace, name) of the AuthPolicy to follow in the cluster.
        self._policy_ref = auth_policy if isinstance(auth_policy, tuple) else None
        self._namespace, self._cluster_wide = namespace, cluster_wide
        self.watch_selector = DEFAULT_WATCH_SELECTOR if watch_selector is None else watch_selector
        self._env = celpy.Environment()
        self._seen: dict[tuple[str, str], JSON] = {}
        self.rebuilds = 0
        self.policy: JSON = {}
        self._translate(self._read_policy() if self._policy_ref else auth_policy)  # type: ignore[arg-type]

    def _read_policy(self) -> JSON:
        assert self._policy_ref is not None
        namespace, name = self._policy_ref
        with self.double.cluster.lock:
            found = self.double.cluster.objects.get(("kuadrant.io", "v1", "authpolicies", namespace, name))
        assert found is not None, f"no AuthPolicy {namespace}/{name} in the cluster"
        return copy.deepcopy(found)

    def _translate(self, policy: JSON) -> None:
        """Kuadrant writes the AuthConfig; Authorino builds its evaluators and lists the keys."""
        self.policy = policy
        self.entries = []
        for name, spec in policy["spec"]["rules"]["authentication"].items():
            api_key = spec["apiKey"]
            scope = "" if api_key.get("allNamespaces") and self._cluster_wide else self._namespace
            prefix = spec["credentials"]["authorizationHeader"]["prefix"]
            self.entries.append(Entry(name, prefix, api_key["selector"]["matchLabels"], scope))
        self.build()
        self.rebuilds += 1

    # -- the Secret index ---------------------------------------------------------------------

    def _secrets(self) -> dict[tuple[str, str], JSON]:
        with self.double.cluster.lock:
            return {
                (key[3], key[4]): copy.deepcopy(obj)
                for key, obj in self.double.cluster.objects.items()
                if key[:3] == SECRETS
            }

    def build(self) -> None:
        """The AuthConfig is (re)built: every entry lists its Secrets afresh."""
        current = self._secrets()
        for entry in self.entries:
            entry.secrets = {}
            for (namespace, _), secret in sorted(current.items()):
                if entry.within_scope(namespace) and entry.matches(secret):
                    entry.add(secret)
        self._seen = current

    def _watched(self, secret: JSON | None) -> bool:
        if secret is None:
            return False
        labels = secret["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, v in self.watch_selector.items())

    def sync(self) -> None:
        """Deliver the Secret events since the last sync, as the informer would (coalesced), and
        rebuild if the AuthPolicy being followed changed."""
        if self._policy_ref is not None:
            policy = self._read_policy()
            if policy["spec"] != self.policy["spec"]:
                self._translate(policy)
                return
        current = self._secrets()
        for ref in sorted(set(current) | set(self._seen)):
            old, new = self._seen.get(ref), current.get(ref)
            if old is not None and new is not None and old["metadata"]["resourceVersion"] == new["metadata"]["resourceVersion"]:
                continue
            if not (self._watched(old) or self._watched(new)):
                continue  # the predicate drops the event: Authorino never hears of it
            self._reconcile(ref, new)
        self._seen = current

    def _reconcile(self, ref: tuple[str, str], secret: JSON | None) -> None:
        namespace, name = ref
        for entry in self.entries:
            if secret is None or not self._watched(secret) or not entry.matches(secret):
                entry.revoke(namespace, name)
            else:
                entry.add(secret)

    # -- a request ----------------------------------------------------------------------------

    def check(self, authorization: str | None, *, now: datetime, path: str = "/v1/chat/completions",
              host: str = "models.example.com") -> Decision:
        self.sync()
        rules = self.policy["spec"]["rules"]
        identity = self._authenticate(authorization)
        if identity is None:
            return Decision(401, "unauthenticated")
        seconds = now.timestamp()
        activation = {
            "auth": celpy.json_to_cel({"identity": identity}),
            "request": celpy.json_to_cel({
                "time": {"seconds": float(int(seconds)), "nanos": float(int((seconds % 1) * 1e9))},
                "url_path": path, "path": path, "host": host, "method": "POST",
            }),
        }
        for rule_name, rule in rules.get("authorization", {}).items():
            for pattern in rule["patternMatching"]["patterns"]:
                try:
                    program = self._env.program(self._env.compile(pattern["predicate"]), functions=CEL_EXTENSIONS)
                    verdict = program.evaluate(activation)
                except celpy.CELEvalError as exc:
                    return Decision(401, f"{rule_name}: evaluation error {exc.args[0]}")
                if isinstance(verdict, celpy.CELEvalError):
                    return Decision(401, f"{rule_name}: evaluation error {verdict.args[0]}")
                if not (isinstance(verdict, celpy.celtypes.BoolType) and bool(verdict)):
                    return Decision(401, f"{rule_name}: {verdict!r}")
        return Decision(200, "ok", self._success_filter(rules, identity, activation))

    def _success_filter(self, rules: JSON, identity: JSON, activation: dict[str, Any]) -> JSON | None:
        """The `identity` filter the shim gets as `auth.identity`: each property a selector (a
        gjson path; one that finds nothing is null) or a CEL expression (authorino
        pkg/evaluators/response/dynamic_json.go, pkg/json/json.go JSONValue.ResolveFor,
        pkg/expressions/cel/expressions.go Expression.ResolveFor). A property that fails to
        evaluate fails the whole filter, which is only logged (pkg/service/auth_pipeline.go,
        evaluateResponseConfigs): the request passes without it, None here."""
        properties = rules["response"]["success"]["filters"]["identity"]["json"]["properties"]
        document = {"auth": {"identity": identity}}
        built: JSON = {}
        for name, prop in properties.items():
            if "expression" in prop:
                try:
                    program = self._env.program(self._env.compile(prop["expression"]), functions=CEL_EXTENSIONS)
                    value = program.evaluate(activation)
                except celpy.CELEvalError:
                    return None
                if isinstance(value, celpy.CELEvalError):
                    return None
                built[name] = _plain(value)
            else:
                built[name] = _gjson(document, prop["selector"])
        return built

    def _authenticate(self, authorization: str | None) -> JSON | None:
        for entry in self.entries:
            if authorization is None or not authorization.startswith(entry.prefix + " "):
                continue
            value = authorization[len(entry.prefix) + 1:]
            for key, secret in entry.secrets.items():
                if key == value:
                    return secret
        return None


def _plain(value: Any) -> Any:
    """A CEL value as the JSON Authorino makes of it (ValueToJSON, then gjson)."""
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, celpy.celtypes.StringType):
        return str(value)
    if isinstance(value, (celpy.celtypes.IntType, celpy.celtypes.UintType, celpy.celtypes.DoubleType)):
        return float(value)  # gjson reads every JSON number as a float64
    if isinstance(value, celpy.celtypes.ListType):
        return [_plain(item) for item in value]
    if isinstance(value, celpy.celtypes.MapType):
        return {str(k): _plain(v) for k, v in value.items()}
    return None


def _api_key(secret: JSON) -> str:
    raw = (secret.get("data") or {}).get("api_key", "")
    return base64.b64decode(raw).decode() if raw else ""


def _same(a: JSON, b: JSON) -> bool:
    return a["metadata"]["namespace"] == b["metadata"]["namespace"] and a["metadata"]["name"] == b["metadata"]["name"]


def _gjson(document: Any, path: str) -> Any:
    value = document
    for part in re.split(r"(?<!\\)\.", path):
        part = part.replace("\\.", ".")
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
