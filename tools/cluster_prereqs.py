"""The cluster prerequisites of docs/DEPLOY.md, read from the live API server with the real client.

What each check wants and why is in docs/DEPLOY.md ("Prerequisites") and tests/cluster/SOURCES.md
(Authorino cluster-wide with a Secret watcher label our keys carry; Gateway API >= v1.4 for rule
names; ExternalName backends only on Istio). Every check reads, nothing is written, and no Secret
value is ever printed: the admin key Secret is only checked for being there and not the
placeholder.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, VersionApi
from kubernetes.client.exceptions import ApiException

from shared.modelroute import ROUTE_NAME as MODEL_ROUTE
from shared.settings import Settings, weak_admin_key
from tools import manifests
from tools.cluster_report import Report

JSON = dict[str, Any]
SECTION = "prerequisites"
TIMEOUT = (5.0, 20.0)
MIN_KUBERNETES = (1, 28)
GATEWAY_API = "gateway.networking.k8s.io"
BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"
CHANNEL = "gateway.networking.k8s.io/channel"
ENVOY_GATEWAY = "gateway.envoyproxy.io/gatewayclass-controller"
DEFAULT_AUTHORINO_SELECTOR = "authorino.kuadrant.io/managed-by=authorino"


class ClusterError(Exception):
    """An API answer that is neither the object nor 404; the message says what to do."""


class Unreachable(ClusterError):
    """The API server did not answer at all."""


@dataclass(frozen=True)
class Crd:
    name: str
    version: str
    provider: str


KUADRANT = "the Kuadrant operator (https://docs.kuadrant.io: it installs Authorino and Limitador too)"
KNATIVE_SERVING = "Knative Serving (https://knative.dev/docs/install/)"
KNATIVE_EVENTING = "Knative Eventing with its core sources (https://knative.dev/docs/install/)"
KSERVE = "KServe (https://kserve.github.io/website/)"
GATEWAY_API_CRDS = "the Gateway API CRDs v1.4.0 or later, standard channel (https://gateway-api.sigs.k8s.io/guides/)"

CRDS = (
    Crd("authpolicies.kuadrant.io", "v1", KUADRANT),
    Crd("tokenratelimitpolicies.kuadrant.io", "v1alpha1", KUADRANT),
    Crd("ratelimitpolicies.kuadrant.io", "v1", KUADRANT),  # request rates (RPM) render as a RateLimitPolicy
    Crd("telemetrypolicies.extensions.kuadrant.io", "v1alpha1", KUADRANT + ", with its extensions enabled"),
    Crd("httproutes.gateway.networking.k8s.io", "v1", GATEWAY_API_CRDS),
    Crd("services.serving.knative.dev", "v1", KNATIVE_SERVING),
    Crd("brokers.eventing.knative.dev", "v1", KNATIVE_EVENTING),
    Crd("triggers.eventing.knative.dev", "v1", KNATIVE_EVENTING),
    Crd("apiserversources.sources.knative.dev", "v1", KNATIVE_EVENTING),
    Crd("pingsources.sources.knative.dev", "v1", KNATIVE_EVENTING),
    Crd("inferenceservices.serving.kserve.io", "v1beta1", KSERVE),
    Crd("llminferenceservices.serving.kserve.io", "v1alpha2", KSERVE + " with LLMInferenceService"),
)
REFERENCE_GRANTS = Crd("referencegrants.gateway.networking.k8s.io", "v1beta1", GATEWAY_API_CRDS)


# ------------------------------------------------------------------ reading


class Cluster:
    """Reads through the real client; None for 404, ClusterError for anything else."""

    def __init__(self, api_client: ApiClient) -> None:
        self.client = api_client
        self.custom = CustomObjectsApi(api_client)
        self.core = CoreV1Api(api_client)

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status in (401, 403):
                raise ClusterError(
                    f"reading {what} was refused ({exc.status} {exc.reason}): run with credentials that may "
                    f"get and list it (e.g. a cluster-admin kubeconfig)"
                ) from None
            if not exc.status:
                raise Unreachable(f"the API server did not answer ({exc.reason})") from None
            raise ClusterError(f"reading {what}: API error {exc.status} {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # connection refused, DNS, TLS, timeouts
            raise Unreachable(f"the API server at {self.host} did not answer ({type(exc).__name__})") from None
        except ValueError as exc:  # an answer the client could not read into its model
            raise ClusterError(f"reading {what}: unexpected answer ({type(exc).__name__})") from None

    def version(self) -> JSON:
        """GET /version as JSON (read raw: some distributions leave out fields the client's model requires)."""
        answer = self._call("the server version", lambda: VersionApi(self.client).get_code(
            _request_timeout=TIMEOUT, _preload_content=False))
        if answer is None:
            raise ClusterError("the API server has no /version")
        try:
            return dict(json.loads(answer.data))
        except ValueError:
            raise ClusterError("the API server's /version is not JSON") from None

    def get(self, group: str, version: str, plural: str, name: str, namespace: str | None = None) -> JSON | None:
        what = f"{plural}.{group} {namespace + '/' if namespace else ''}{name}"
        if namespace is None:
            return self._call(what, lambda: self.custom.get_cluster_custom_object(
                group, version, plural, name, _request_timeout=TIMEOUT))
        return self._call(what, lambda: self.custom.get_namespaced_custom_object(
            group, version, namespace, plural, name, _request_timeout=TIMEOUT))

    def list(self, group: str, version: str, plural: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[JSON] | None:
        """Items, or None when the kind is not served at all (its CRD is missing)."""
        options: JSON = {"_request_timeout": TIMEOUT}
        if label_selector:
            options["label_selector"] = label_selector
        if namespace is None:
            answer = self._call(f"{plural}.{group}", lambda: self.custom.list_cluster_custom_object(
                group, version, plural, **options))
        else:
            answer = self._call(f"{plural}.{group} in {namespace}", lambda: self.custom.list_namespaced_custom_object(
                group, version, namespace, plural, **options))
        return None if answer is None else list(answer.get("items") or [])

    def crd(self, name: str) -> JSON | None:
        return self.get("apiextensions.k8s.io", "v1", "customresourcedefinitions", name)

    def namespace(self, name: str) -> Any:
        return self._call(f"namespace {name}", lambda: self.core.read_namespace(name, _request_timeout=TIMEOUT))

    def secret(self, namespace: str, name: str) -> Any:
        return self._call(f"secret {namespace}/{name}", lambda: self.core.read_namespaced_secret(
            name, namespace, _request_timeout=TIMEOUT))

    def service(self, namespace: str, name: str) -> Any:
        return self._call(f"service {namespace}/{name}", lambda: self.core.read_namespaced_service(
            name, namespace, _request_timeout=TIMEOUT))

    def config_map(self, namespace: str, name: str) -> Any:
        return self._call(f"configmap {namespace}/{name}", lambda: self.core.read_namespaced_config_map(
            name, namespace, _request_timeout=TIMEOUT))


# ------------------------------------------------------------------ helpers


def condition(obj: JSON | None, kind: str) -> JSON | None:
    """The condition `kind` of an object (status.conditions), or of a route's status.parents[] entry."""
    holder = obj or {}
    conditions = holder["conditions"] if "conditions" in holder else (holder.get("status") or {}).get("conditions")
    for cond in conditions or []:
        if cond.get("type") == kind:
            return cond
    return None


def is_true(obj: JSON | None, kind: str) -> bool:
    cond = condition(obj, kind)
    return cond is not None and cond.get("status") == "True"


def why_not(obj: JSON | None, kind: str) -> str:
    cond = condition(obj, kind)
    if cond is None:
        return f"no {kind} condition yet"
    text = f"{kind}={cond.get('status')}"
    if cond.get("reason"):
        text += f" ({cond['reason']})"
    if cond.get("message"):
        text += f": {cond['message']}"
    return text


def parse_version(text: str | None) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?", (text or "").strip())
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


_REQUIREMENT = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[^\s,!=()]+)"
    r"|(?P<skey>[^\s,!=()]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)"
    r"|(?P<ekey>[^\s,!=()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|(?P<key>[^\s,!=()]+))\s*(?:,|$)"
)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (labels.Parse syntax) against a label set; ValueError if unparsable."""
    position, text = 0, selector.strip()
    while position < len(text):
        found = _REQUIREMENT.match(text, position)
        if found is None or found.end() == position:
            raise ValueError(f"cannot parse the label selector {selector!r}")
        position = found.end()
        if found["nkey"]:
            ok = found["nkey"] not in labels
        elif found["skey"]:
            values = {v.strip() for v in found["values"].split(",") if v.strip()}
            present = labels.get(found["skey"])
            ok = present in values if found["setop"] == "in" else present not in values
        elif found["ekey"]:
            present = labels.get(found["ekey"])
            ok = present == found["value"] if found["op"] != "!=" else present != found["value"]
        else:
            ok = found["key"] in labels
        if not ok:
            return False
    return True


def key_secret_labels(settings: Settings) -> dict[str, str]:
    """The labels an active key Secret carries (shared/store/kubeshapes.key_body) that selectors look at."""
    watch_key, watch_value = settings.authorino_watch_label
    return {
        "maas/resource-type": "team-key",
        "kuadrant.io/auth-secret": "true",
        "app": settings.key_selector,
        watch_key: watch_value,
    }


def is_istio(controller: str) -> bool:
    # Upstream Istio, and OpenShift Service Mesh's Gateway API controller (Istio underneath).
    return controller.startswith("istio.io/") or controller.startswith("openshift.io/gateway-controller")


# ------------------------------------------------------------------ the checks


class Checks:
    def __init__(self, cluster: Cluster, settings: Settings, report: Report) -> None:
        self.cluster, self.settings, self.report = cluster, settings, report
        self.gateway: JSON | None = None
        self.kuadrant_namespace: str | None = None

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.report.add(SECTION, name, status, detail, fix)  # type: ignore[arg-type]

    def run(self) -> None:
        if not self.api_server():
            return
        steps: list[tuple[str, Callable[[], None]]] = [
            ("crds", self.crds),
            ("gateway api version", self.gateway_api_version),
            ("kuadrant", self.kuadrant),
            ("authorino", self.authorino),
            ("limitador", self.limitador),
            ("gateway", self.gateway_checks),
            (f"namespace {self.settings.namespace}", self.namespace),
            *([(f"namespace {self.settings.store_namespace}", self.keys_namespace)]
              if self.settings.store_namespace != self.settings.namespace else []),
            (f"secret {self.settings.namespace}/{manifests.ADMIN_KEY_SECRET}", self.admin_key_secret),
            (f"configmap {self.settings.namespace}/{manifests.CONFIG_MAP}", self.config_map),
            ("knative services", self.knative_services),
            ("httproutes", self.http_routes),
            (f"httproute {self.settings.policy_namespace}/{MODEL_ROUTE}", self.model_route),
            ("other routes on the gateway", self.other_routes),
            ("authpolicy", self.auth_policy),
        ]
        for name, step in steps:
            try:
                step()
            except Unreachable as exc:
                self.add(name, "FAIL", str(exc), "check that the cluster is up and your kubeconfig points at it")
                return
            except ClusterError as exc:
                self.add(name, "FAIL", str(exc), "see the message")

    # -- the API server ------------------------------------------------------------------------

    def api_server(self) -> bool:
        try:
            info = self.cluster.version()
        except ClusterError as exc:
            self.add("kubernetes API", "FAIL", str(exc),
                     "check that the cluster is up and that KUBECONFIG (or --kubeconfig/--context) points at it")
            return False
        git_version = str(info.get("gitVersion") or "")
        found = parse_version(git_version) or (int(re.sub(r"\D", "", str(info.get("major", "0"))) or 0),
                                               int(re.sub(r"\D", "", str(info.get("minor", "0"))) or 0))
        if found[:2] < MIN_KUBERNETES:
            self.add("kubernetes API", "FAIL", f"{git_version} at {self.cluster.host}",
                     f"docs/DEPLOY.md needs Kubernetes {'.'.join(map(str, MIN_KUBERNETES))} or later: upgrade the cluster")
        else:
            self.add("kubernetes API", "ok", f"{git_version} at {self.cluster.host}")
        return True

    # -- CRDs ----------------------------------------------------------------------------------

    def needed_crds(self) -> list[Crd]:
        needed = list(CRDS)
        backend_namespace = self.settings.route_backend_namespace or self.settings.namespace
        if self.settings.route_backend_service and backend_namespace != self.settings.namespace:
            needed.append(REFERENCE_GRANTS)
        return needed

    def crds(self) -> None:
        for need in self.needed_crds():
            name = f"crd {need.name}"
            crd = self.cluster.crd(need.name)
            if crd is None:
                self.add(name, "FAIL", "not installed", f"install {need.provider}")
                continue
            served = [v.get("name") for v in (crd.get("spec") or {}).get("versions") or [] if v.get("served")]
            if need.version not in served:
                self.add(name, "FAIL", f"serves {', '.join(map(str, served)) or 'no version'}, not {need.version}",
                         f"upgrade {need.provider} to a release that serves {need.version}")
            else:
                self.add(name, "ok", f"{need.version} served")

    def gateway_api_version(self) -> None:
        name = "gateway api version"
        crd = self.cluster.crd("httproutes.gateway.networking.k8s.io")
        if crd is None:
            self.add(name, "skip", "no HTTPRoute CRD (see above)")
            return
        notes = (crd.get("metadata") or {}).get("annotations") or {}
        bundle, channel = notes.get(BUNDLE_VERSION), notes.get(CHANNEL, "standard")
        found = parse_version(bundle)
        shown = f"bundle {bundle or 'unknown'}, {channel} channel"
        if not self.settings.route_rule_names:
            self.add(name, "ok", f"{shown}; rule names off (MAAS_ROUTE_RULE_NAMES=false), any version will do")
            return
        needed = (1, 2, 0) if channel == "experimental" else (1, 4, 0)
        fix = ("install Gateway API v1.4.0 or later (standard channel), or render the manifests with "
               "MAAS_ROUTE_RULE_NAMES=false (older CRDs do not know HTTPRoute rules[].name)")
        if found is None:
            self.add(name, "warn", f"{shown}: cannot tell whether HTTPRoute rules[].name is known", fix)
        elif found < needed:
            self.add(name, "FAIL", f"{shown}: HTTPRoute rules[].name needs v{'.'.join(map(str, needed))} or later", fix)
        else:
            self.add(name, "ok", f"{shown}: rules[].name is known")

    # -- Kuadrant ------------------------------------------------------------------------------

    def _ready_instance(self, name: str, group: str, version: str, plural: str, kind: str, fix: str) -> JSON | None:
        items = self.cluster.list(group, version, plural)
        if items is None:
            self.add(name, "FAIL", f"the {kind} kind ({plural}.{group}/{version}) is not installed", fix)
            return None
        if self.kuadrant_namespace is not None:
            preferred = [i for i in items if (i.get("metadata") or {}).get("namespace") == self.kuadrant_namespace]
            items = preferred or items
        if not items:
            self.add(name, "FAIL", f"no {kind} object in the cluster", fix)
            return None
        return items[0]

    @staticmethod
    def _where(obj: JSON) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def kuadrant(self) -> None:
        fix = ("install the Kuadrant operator and create its Kuadrant object, e.g. `kubectl apply -n kuadrant-system "
               "-f -` with apiVersion kuadrant.io/v1beta1, kind Kuadrant, metadata.name kuadrant")
        obj = self._ready_instance("kuadrant", "kuadrant.io", "v1beta1", "kuadrants", "Kuadrant", fix)
        if obj is None:
            return
        self.kuadrant_namespace = (obj.get("metadata") or {}).get("namespace")
        if is_true(obj, "Ready"):
            self.add("kuadrant", "ok", f"Kuadrant {self._where(obj)} Ready")
        else:
            self.add("kuadrant", "FAIL", f"Kuadrant {self._where(obj)} not Ready: {why_not(obj, 'Ready')}",
                     f"kubectl -n {self.kuadrant_namespace} describe kuadrant {obj['metadata']['name']}")

    def authorino(self) -> None:
        fix = "the Kuadrant object creates Authorino: check the Kuadrant operator's logs"
        obj = self._ready_instance("authorino", "operator.authorino.kuadrant.io", "v1beta1", "authorinos",
                                   "Authorino", fix)
        if obj is None:
            self.add("authorino secret selector", "skip", "no Authorino")
            return
        where, spec = self._where(obj), obj.get("spec") or {}
        namespace, name = where.split("/", 1)
        if spec.get("clusterWide") is True:
            self.add("authorino", "ok", f"Authorino {where} is cluster-wide")
        else:
            self.add("authorino", "FAIL",
                     f"Authorino {where} is not cluster-wide: it reads AuthConfigs and key Secrets of {namespace} only",
                     f"kubectl -n {namespace} patch authorino {name} --type merge -p '{{\"spec\":{{\"clusterWide\":true}}}}'")
        selector = (spec.get("secretLabelSelectors") or "").strip() or DEFAULT_AUTHORINO_SELECTOR
        ours = self.settings.authorino_secret_label
        try:
            matches = selector_matches(selector, key_secret_labels(self.settings))
        except ValueError as exc:
            self.add("authorino secret selector", "FAIL", str(exc), f"fix spec.secretLabelSelectors of Authorino {where}")
            return
        if matches:
            self.add("authorino secret selector", "ok",
                     f"Authorino watches Secrets matching {selector!r}; our keys carry {ours}")
        else:
            single = re.fullmatch(r"\s*([^\s,!=()]+)\s*==?\s*([^\s,()]+)\s*", selector)
            setting = (f"set MAAS_AUTHORINO_SECRET_LABEL={single[1]}={single[2]} (in maas-config; re-render and apply, "
                       f"then issue new keys), or " if single else "")
            self.add(
                "authorino secret selector", "FAIL",
                f"Authorino watches Secrets matching {selector!r} but our keys carry {ours} "
                "(MAAS_AUTHORINO_SECRET_LABEL): new, revoked and deleted keys go unnoticed",
                f"{setting}kubectl -n {namespace} patch authorino {name} --type merge "
                f"-p '{{\"spec\":{{\"secretLabelSelectors\":\"{ours}\"}}}}'",
            )

    def limitador(self) -> None:
        fix = "the Kuadrant object creates Limitador: check the Kuadrant operator's logs"
        obj = self._ready_instance("limitador", "limitador.kuadrant.io", "v1alpha1", "limitadors", "Limitador", fix)
        if obj is None:
            return
        if is_true(obj, "Ready"):
            self.add("limitador", "ok", f"Limitador {self._where(obj)} Ready")
        else:
            namespace, name = self._where(obj).split("/", 1)
            self.add("limitador", "FAIL", f"Limitador {self._where(obj)} not Ready: {why_not(obj, 'Ready')}",
                     f"kubectl -n {namespace} describe limitador {name}")

    # -- Gateway -------------------------------------------------------------------------------

    def gateway_checks(self) -> None:
        settings = self.settings
        namespace, name = settings.policy_namespace, settings.gateway_name
        label = f"gateway {namespace}/{name}"
        gateway = self.cluster.get(GATEWAY_API, "v1", "gateways", name, namespace)
        if gateway is None:
            self.add(label, "FAIL", "not found",
                     f"create the Gateway {namespace}/{name}, or set MAAS_GATEWAY_NAME and MAAS_GATEWAY_NAMESPACE "
                     "to the Gateway that serves the models and re-render the manifests")
            for skipped in ("gatewayclass", "route backends"):
                self.add(skipped, "skip", "no Gateway")
            return
        self.gateway = gateway
        if is_true(gateway, "Programmed"):
            self.add(label, "ok", "Programmed")
        else:
            self.add(label, "FAIL", f"not Programmed: {why_not(gateway, 'Programmed')}",
                     f"kubectl -n {namespace} describe gateway {name}")
        self.listeners(gateway)
        class_name = (gateway.get("spec") or {}).get("gatewayClassName", "")
        gateway_class = self.cluster.get(GATEWAY_API, "v1", "gatewayclasses", class_name) if class_name else None
        if gateway_class is None:
            self.add(f"gatewayclass {class_name}", "FAIL", "not found",
                     "install the Gateway API implementation (Istio, or Envoy Gateway) that provides this class")
            self.add("route backends", "skip", "no GatewayClass")
            return
        controller = str((gateway_class.get("spec") or {}).get("controllerName", ""))
        if is_true(gateway_class, "Accepted"):
            self.add(f"gatewayclass {class_name}", "ok", f"Accepted, controller {controller}")
        else:
            self.add(f"gatewayclass {class_name}", "FAIL", f"not Accepted: {why_not(gateway_class, 'Accepted')}",
                     f"check the controller {controller}")
        self.route_backends(controller)

    def listeners(self, gateway: JSON) -> None:
        """Routes from the app namespace must be allowed to attach when the Gateway lives elsewhere."""
        settings = self.settings
        if settings.policy_namespace == settings.namespace:
            return
        label = f"gateway listeners allow routes from {settings.namespace}"
        namespace_obj = self.cluster.namespace(settings.namespace)
        labels = dict(getattr(getattr(namespace_obj, "metadata", None), "labels", None) or {})
        labels.setdefault("kubernetes.io/metadata.name", settings.namespace)
        allowed = []
        for listener in (gateway.get("spec") or {}).get("listeners") or []:
            spec = ((listener.get("allowedRoutes") or {}).get("namespaces") or {})
            origin = spec.get("from", "Same")
            if origin == "All":
                allowed.append(listener.get("name", "?"))
            elif origin == "Selector":
                match = (spec.get("selector") or {}).get("matchLabels") or {}
                if all(labels.get(k) == v for k, v in match.items()):
                    allowed.append(listener.get("name", "?"))
        if allowed:
            self.add(label, "ok", f"listeners {', '.join(allowed)}")
        else:
            self.add(label, "FAIL",
                     f"no listener of the Gateway accepts HTTPRoutes from namespace {settings.namespace}",
                     "set allowedRoutes.namespaces.from: All (or a Selector matching the namespace) on a listener")

    def route_backends(self, controller: str) -> None:
        settings = self.settings
        if settings.route_backend_service is None:
            if is_istio(controller):
                self.add("route backends", "ok", "Istio follows the Knative Services' ExternalName backends")
            elif controller == ENVOY_GATEWAY:
                self.add("route backends", "FAIL",
                         "Envoy Gateway does not follow ExternalName Services (503 'no ready endpoints')",
                         "render with MAAS_ROUTE_BACKEND_SERVICE (e.g. knative-local-gateway), "
                         "MAAS_ROUTE_BACKEND_NAMESPACE (its namespace) and MAAS_ROUTE_BACKEND_PORT (docs/DEPLOY.md)")
            else:
                self.add("route backends", "warn",
                         f"unknown whether {controller} follows ExternalName backends (Gateway API leaves it open)",
                         "if the admin API answers 503, render with MAAS_ROUTE_BACKEND_SERVICE/_NAMESPACE/_PORT")
            return
        namespace = settings.route_backend_namespace or settings.namespace
        where = f"{namespace}/{settings.route_backend_service}"
        service = self.cluster.service(namespace, settings.route_backend_service)
        if service is None:
            self.add("route backends", "FAIL", f"MAAS_ROUTE_BACKEND_SERVICE names {where}, which does not exist",
                     "set MAAS_ROUTE_BACKEND_SERVICE/_NAMESPACE to the Service of Knative's local gateway")
            return
        ports = [p.port for p in (service.spec.ports or [])] if service.spec else []
        if settings.route_backend_port not in ports:
            self.add("route backends", "FAIL",
                     f"Service {where} has ports {ports}, not MAAS_ROUTE_BACKEND_PORT={settings.route_backend_port}",
                     "set MAAS_ROUTE_BACKEND_PORT to the Service's HTTP port and re-render")
            return
        self.add("route backends", "ok", f"every rule goes to Service {where}:{settings.route_backend_port}")

    # -- the key manager's own objects ---------------------------------------------------------

    def namespace(self) -> None:
        self._namespace_exists(self.settings.namespace, "MAAS_NAMESPACE", "")

    def keys_namespace(self) -> None:
        """MAAS_KEYS_NAMESPACE: the teams, keys and audit entries, apart from the functions."""
        self._namespace_exists(self.settings.store_namespace, "MAAS_KEYS_NAMESPACE", " (MAAS_KEYS_NAMESPACE: the teams and keys)")

    def _namespace_exists(self, name: str, setting: str, what: str) -> None:
        if self.cluster.namespace(name) is None:
            self.add(f"namespace {name}", "FAIL", f"does not exist{what}",
                     f"kubectl create namespace {name} (or set {setting} to yours)")
        else:
            self.add(f"namespace {name}", "ok", f"exists{what}")

    def admin_key_secret(self) -> None:
        namespace, name = self.settings.namespace, manifests.ADMIN_KEY_SECRET
        label = f"secret {namespace}/{name}"
        secret = self.cluster.secret(namespace, name)
        create = (f"kubectl -n {namespace} create secret generic {name} --from-literal=ADMIN_KEY=\"$(python3 -c "
                  "'import secrets; print(secrets.token_urlsafe(32))')\" (docs/DEPLOY.md step 3)")
        if secret is None:
            self.add(label, "FAIL", "does not exist", create)
            return
        encoded = (secret.data or {}).get("ADMIN_KEY")
        if not encoded:
            self.add(label, "FAIL", "has no ADMIN_KEY entry", f"kubectl -n {namespace} delete secret {name}, then {create}")
            return
        try:
            value = base64.b64decode(encoded).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            value = ""
        if weak_admin_key(value):  # what the functions would refuse to start with
            self.add(label, "FAIL", "ADMIN_KEY is the manifests' placeholder or too short (value not shown)",
                     f"replace it: kubectl -n {namespace} delete secret {name}, then {create}; apply the manifests "
                     "rendered with --skip-admin-key")
            return
        self.add(label, "ok", "ADMIN_KEY set (value not shown)")

    def config_map(self) -> None:
        namespace, name = self.settings.namespace, manifests.CONFIG_MAP
        label = f"configmap {namespace}/{name}"
        found = self.cluster.config_map(namespace, name)
        if found is None:
            self.add(label, "FAIL", "does not exist: the key manager is not deployed here",
                     "render and apply dist/manifests.yaml (docs/DEPLOY.md step 4)")
            return
        deployed = found.data or {}
        ours = {
            "MAAS_KEY_SELECTOR": self.settings.key_selector,
            "MAAS_AUTHORINO_SECRET_LABEL": self.settings.authorino_secret_label,
            "MAAS_GATEWAY_NAME": self.settings.gateway_name,
            "MAAS_GATEWAY_NAMESPACE": self.settings.policy_namespace,
            "MAAS_KEYS_NAMESPACE": self.settings.store_namespace,
        }
        differ = [f"{k}={deployed[k]} (here {v})" for k, v in ours.items() if k in deployed and deployed[k] != v]
        if differ:
            self.add(label, "warn", "the deployment was rendered with other settings: " + "; ".join(differ),
                     "export the deployed values before running this check, so it checks what the functions use")
        else:
            self.add(label, "ok", "deployed with the same settings as this check")

    def knative_services(self) -> None:
        namespace = self.settings.namespace
        expected = [manifests.service_name(t) for t in manifests.function_targets()]
        items = self.cluster.list("serving.knative.dev", "v1", "services", namespace)
        if items is None:
            self.add("knative services", "FAIL", "Knative Serving is not installed", f"install {KNATIVE_SERVING}")
            return
        by_name = {(i.get("metadata") or {}).get("name"): i for i in items}
        missing = [n for n in expected if n not in by_name]
        not_ready = [n for n in expected if n in by_name and not is_true(by_name[n], "Ready")]
        if missing:
            listed = "none is deployed" if len(missing) == len(expected) else ", ".join(missing)
            self.add("knative services", "FAIL", f"{len(missing)} of {len(expected)} missing: {listed}",
                     "render and apply dist/manifests.yaml (docs/DEPLOY.md step 4)")
        if not_ready:
            reasons = "; ".join(f"{n}: {why_not(by_name[n], 'Ready')}" for n in not_ready)
            self.add("knative services", "FAIL", f"{len(not_ready)} not Ready: {reasons}",
                     f"kubectl -n {namespace} describe ksvc {not_ready[0]} (image pull, admission, the revision's logs)")
        if not missing and not not_ready:
            self.add("knative services", "ok", f"all {len(expected)} Ready")

    def http_routes(self) -> None:
        settings = self.settings
        expected = [r["metadata"]["name"] for r in manifests.http_routes(settings)]
        for name in expected:
            label = f"httproute {settings.namespace}/{name}"
            route = self.cluster.get(GATEWAY_API, "v1", "httproutes", name, settings.namespace)
            if route is None:
                self.add(label, "FAIL", "does not exist", "render and apply dist/manifests.yaml")
                continue
            parent = self._attached(route)
            if parent is None:
                self.add(label, "FAIL", f"not attached to Gateway {settings.policy_namespace}/{settings.gateway_name}",
                         f"kubectl -n {settings.namespace} describe httproute {name}; check the Gateway's allowedRoutes")
                continue
            problems = [why_not(parent, kind) for kind in ("Accepted", "ResolvedRefs") if not is_true(parent, kind)]
            if problems:
                self.add(label, "FAIL", "; ".join(problems),
                         f"kubectl -n {settings.namespace} describe httproute {name}")
            else:
                self.add(label, "ok", "Accepted, ResolvedRefs")

    def _attached(self, route: JSON) -> JSON | None:
        settings = self.settings
        for parent in (route.get("status") or {}).get("parents") or []:
            ref = parent.get("parentRef") or {}
            route_ns = (route.get("metadata") or {}).get("namespace", settings.namespace)
            if ref.get("name") == settings.gateway_name and ref.get("namespace", route_ns) == settings.policy_namespace:
                return parent
        return None

    def model_route(self) -> None:
        namespace = self.settings.policy_namespace
        label = f"httproute {namespace}/{MODEL_ROUTE}"
        route = self.cluster.get(GATEWAY_API, "v1", "httproutes", MODEL_ROUTE, namespace)
        if route is None:
            self.add(label, "warn", "not there yet: the functions apply it at the next policy sync once a model is Ready",
                     "deploy a model in MAAS_NAMESPACE and wait for a team change or the 15-minute sweep "
                     "(docs/DEPLOY.md, 'One route for all models')")
            return
        parent = self._attached(route)
        problems = ([f"not attached to Gateway {namespace}/{self.settings.gateway_name}"] if parent is None else
                    [why_not(parent, kind) for kind in ("Accepted", "ResolvedRefs") if not is_true(parent, kind)])
        rules = len((route.get("spec") or {}).get("rules") or [])
        if problems:
            self.add(label, "FAIL", "; ".join(problems), f"kubectl -n {namespace} describe httproute {MODEL_ROUTE}")
        else:
            self.add(label, "ok", f"Accepted, {rules} model(s) routed")

    def other_routes(self) -> None:
        """docs/DEPLOY.md: a model reached through a route of its own is outside the shared budget."""
        ours = {MODEL_ROUTE} | {r["metadata"]["name"] for r in manifests.http_routes(self.settings)}
        others = []
        for route in self.cluster.list(GATEWAY_API, "v1", "httproutes") or []:
            meta = route.get("metadata") or {}
            if self._attached(route) is not None and meta.get("name") not in ours:
                others.append(f"{meta.get('namespace')}/{meta.get('name')}")
        if others:
            self.add("other routes on the gateway", "warn",
                     f"{', '.join(sorted(others))} also attach to the Gateway: a model reached through its own route "
                     "is outside the team budgets of maas-models",
                     "keep KServe's own routes off this Gateway (docs/DEPLOY.md, 'Keep KServe's own routes off')")
        else:
            self.add("other routes on the gateway", "ok", "only the key manager's and maas-models")

    def auth_policy(self) -> None:
        namespace, name = self.settings.policy_namespace, "maas-api-keys"
        label = f"authpolicy {namespace}/{name}"
        policy = self.cluster.get("kuadrant.io", "v1", "authpolicies", name, namespace)
        if policy is None:
            self.add(label, "FAIL", "does not exist", "render and apply dist/manifests.yaml")
        elif not is_true(policy, "Enforced"):
            self.add(label, "FAIL", f"not enforced: {why_not(policy, 'Enforced')}",
                     f"kubectl -n {namespace} get authpolicy {name} -o yaml (status.conditions)")
        else:
            self.add(label, "ok", "Enforced")


# ------------------------------------------------------------------ URLs for the end-to-end run


def derive_admin_url(cluster: Cluster, settings: Settings) -> tuple[str | None, str]:
    """The admin API's URL from the key manager's HTTPRoute and its Gateway; (None, why) when it cannot."""
    return derive_url(cluster, settings, manifests.HTTP_ROUTE, settings.namespace)


def derive_gateway_url(cluster: Cluster, settings: Settings) -> tuple[str | None, str]:
    """The models' URL (calls go to <it>/<model>/v1/...) from HTTPRoute maas-models and its Gateway."""
    return derive_url(cluster, settings, MODEL_ROUTE, settings.policy_namespace)


def derive_url(cluster: Cluster, settings: Settings, route_name: str, namespace: str) -> tuple[str | None, str]:
    route = cluster.get(GATEWAY_API, "v1", "httproutes", route_name, namespace)
    if route is None:
        return None, f"no HTTPRoute {namespace}/{route_name}"
    gateway = cluster.get(GATEWAY_API, "v1", "gateways", settings.gateway_name, settings.policy_namespace)
    listeners = list(((gateway or {}).get("spec") or {}).get("listeners") or [])
    hostnames = list((route.get("spec") or {}).get("hostnames") or [])
    host = hostnames[0] if hostnames else None
    if host is None:
        addresses = [a.get("value") for a in ((gateway or {}).get("status") or {}).get("addresses") or [] if a.get("value")]
        if not addresses:
            return None, "the HTTPRoute has no hostname and the Gateway reports no address"
        host = addresses[0]
    https = [l for l in listeners if l.get("protocol") == "HTTPS" and _host_fits(l.get("hostname"), host)]
    http = [l for l in listeners if l.get("protocol") == "HTTP" and _host_fits(l.get("hostname"), host)]
    scheme, chosen = ("https", https[0]) if https else ("http", http[0]) if http else ("https", {})
    port = chosen.get("port")
    default = 443 if scheme == "https" else 80
    suffix = f":{port}" if port and port != default else ""
    return f"{scheme}://{host}{suffix}", f"from HTTPRoute {route_name} and Gateway {settings.gateway_name}"


def _host_fits(pattern: str | None, host: str) -> bool:
    if not pattern:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host
