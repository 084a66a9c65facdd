"""Knative Serving's admission rules for what `make manifests` renders, as a small validator.

Written from tests/cluster/SOURCES.md section 4 (knative/serving at 98e5ef90), with the default
`config-features` (every `kubernetes.*` flag at its default): a Service that fails here is refused
by the Knative webhook on a stock install. The CRD schema (tests/crds.py) cannot say any of this:
the Knative CRD leaves the pod template open, and the webhook applies field *masks* instead.

Each rule is one function below that names its upstream source; `test_each_rule_catches_its_mutation`
feeds every rule a copy of a rendered Service broken in exactly that rule's way, so no rule can
pass vacuously.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.settings import Settings
from tools import manifests

JSON = dict[str, Any]

# k8s_validation.go, reservedEnvVars: set by Knative itself in every user container.
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
# k8s_validation.go, reservedPorts: queue-proxy's ports (8012 http, 8013 h2c, 8022 admin, 9090
# autoscaling metrics, 9091 user metrics) and the profiling port 8008.
RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}
# k8s_validation.go, validPortNames.
PORT_NAMES = {"", "h2c", "http1"}
# k8s_validation.go, reservedContainerNames.
RESERVED_CONTAINER_NAMES = {"queue-proxy"}
DEFAULT_USER_PORT = 8080  # validateContainersPorts: no port given means 8080 ("http")

# fieldmask.go, EnvVarSourceMask(source, fieldRef=false): `kubernetes.podspec-fieldref` is
# Disabled in features.go, defaultFeaturesConfig, so fieldRef/resourceFieldRef are masked away.
ENV_VALUE_FROM = {"secretKeyRef", "configMapKeyRef"}
ENV_VAR = {"name", "value", "valueFrom"}  # fieldmask.go, EnvVarMask
ENV_FROM = {"prefix", "configMapRef", "secretRef"}  # fieldmask.go, EnvFromSourceMask
PORT_FIELDS = {"containerPort", "name", "protocol"}  # fieldmask.go, ContainerPortMask (no hostIP/hostPort)
# fieldmask.go, ContainerMask: everything else (lifecycle, stdin, stdinOnce, tty, volumeDevices,
# and any field it does not copy) is a "must not set" error.
CONTAINER_FIELDS = {
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
    "livenessProbe", "ports", "readinessProbe", "resources", "securityContext", "startupProbe",
    "terminationMessagePath", "terminationMessagePolicy", "volumeMounts",
}
# fieldmask.go, SecurityContextMask (`privileged` is copied only when false; seLinuxOptions,
# procMount and windowsOptions never are).
SECURITY_CONTEXT = {
    "capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
    "allowPrivilegeEscalation", "seccompProfile", "privileged",
}
# fieldmask.go, PodSpecMask with the default features: always copied. `automountServiceAccountToken`
# only when false; `volumes` (emptyDir is Enabled by default). Feature-gated fields (affinity,
# tolerations, nodeSelector, runtimeClassName, securityContext, initContainers, hostAliases,
# dnsPolicy, dnsConfig, priorityClassName, schedulerName, hostIPC/PID/Network, ...) are all
# Disabled in features.go, defaultFeaturesConfig; restartPolicy, terminationGracePeriodSeconds,
# activeDeadlineSeconds, nodeName, readinessGates, ... are never copied.
POD_SPEC = {
    "serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
    "automountServiceAccountToken",
}
# The RevisionSpec fields beside the inlined PodSpec (pkg/apis/serving/v1/revision_types.go).
REVISION_SPEC = {"containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds"}
PROBE_FIELDS = {  # fieldmask.go, ProbeMask and HandlerMask
    "httpGet", "tcpSocket", "exec", "grpc", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
    "successThreshold", "failureThreshold", "terminationGracePeriodSeconds",
}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# ------------------------------------------------------------------ the rules


def _containers(service: JSON) -> list[JSON]:
    return service["spec"]["template"]["spec"].get("containers") or []


def env_value_from(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateEnvValueFrom -> fieldmask.go EnvVarSourceMask: only secretKeyRef and
    configMapKeyRef while features.go leaves `kubernetes.podspec-fieldref` Disabled."""
    for container in _containers(service):
        for env in container.get("env") or []:
            for key in set(env.get("valueFrom") or {}) - ENV_VALUE_FROM:
                yield f"env {env.get('name')}: valueFrom.{key} needs kubernetes.podspec-fieldref"


def env_fields(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateEnvVar -> fieldmask.go EnvVarMask; validateEnv -> EnvFromSourceMask."""
    for container in _containers(service):
        for env in container.get("env") or []:
            if not env.get("name"):
                yield "env without a name"
            for key in set(env) - ENV_VAR:
                yield f"env {env.get('name')}: {key} must not be set"
        for source in container.get("envFrom") or []:
            for key in set(source) - ENV_FROM:
                yield f"envFrom: {key} must not be set"


def reserved_env(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateEnvVar with reservedEnvVars: PORT, K_SERVICE, K_CONFIGURATION, K_REVISION."""
    for container in _containers(service):
        for env in container.get("env") or []:
            if env.get("name") in RESERVED_ENV:
                yield f"{env['name']} is a reserved environment variable"


def one_port(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateContainersPorts: a single port across all containers."""
    count = sum(len(c.get("ports") or []) for c in _containers(service))
    if count > 1:
        yield f"{count} container ports; only a single port is allowed across all containers"


def port_rules(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateContainerPorts / validateContainerPortBasic and fieldmask.go
    ContainerPortMask: name "", h2c or http1; protocol TCP (or empty); not a reserved port;
    no hostIP/hostPort."""
    for container in _containers(service):
        ports = container.get("ports") or []
        if not ports:
            continue
        port = ports[0]
        for key in set(port) - PORT_FIELDS:
            yield f"port: {key} must not be set"
        if port.get("name", "") not in PORT_NAMES:
            yield f"port name {port['name']!r} is not allowed"
        if port.get("protocol", "") not in ("", "TCP"):
            yield f"port protocol {port['protocol']!r} is not TCP"
        number = port.get("containerPort", 0)
        if number in RESERVED_PORTS:
            yield f"{number} is a reserved port"
        if not 0 <= number <= 65535:
            yield f"containerPort {number} out of range"


def container_mask(service: JSON) -> Iterator[str]:
    """fieldmask.go ContainerMask (no lifecycle, stdin, stdinOnce, tty, volumeDevices, ...) and
    k8s_validation.go reservedContainerNames (queue-proxy)."""
    for container in _containers(service):
        for key in set(container) - CONTAINER_FIELDS:
            yield f"container {container.get('name')}: {key} must not be set"
        if container.get("name") in RESERVED_CONTAINER_NAMES:
            yield f"container name {container['name']!r} is reserved"


def security_context(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateSecurityContext -> fieldmask.go SecurityContextMask (privileged
    only false) and CapabilitiesMask (`add` needs kubernetes.containerspec-addcapabilities or
    secure-pod-defaults, both Disabled by default)."""
    for container in _containers(service):
        context = container.get("securityContext") or {}
        for key in set(context) - SECURITY_CONTEXT:
            yield f"securityContext.{key} must not be set"
        if context.get("privileged") not in (None, False):
            yield "securityContext.privileged may only be false"
        capabilities = context.get("capabilities") or {}
        for key in set(capabilities) - {"drop", "add"}:
            yield f"securityContext.capabilities.{key} must not be set"
        if capabilities.get("add"):
            yield "securityContext.capabilities.add needs kubernetes.containerspec-addcapabilities"


def pod_spec_mask(service: JSON) -> Iterator[str]:
    """k8s_validation.go ValidatePodSpec -> fieldmask.go PodSpecMask with features.go's defaults:
    no pod securityContext, automountServiceAccountToken only false, no
    terminationGracePeriodSeconds, restartPolicy, affinity, tolerations, nodeSelector, ..."""
    spec = service["spec"]["template"]["spec"]
    for key in set(spec) - POD_SPEC - REVISION_SPEC:
        yield f"spec.template.spec.{key} must not be set"
    if spec.get("automountServiceAccountToken") not in (None, False):
        yield "automountServiceAccountToken may only be false"
    if not _containers(service):
        yield "spec.template.spec.containers is missing"


def service_account_name(service: JSON) -> Iterator[str]:
    """k8s_validation.go ValidatePodSpec: serviceAccountName must be a DNS-1123 subdomain."""
    name = service["spec"]["template"]["spec"].get("serviceAccountName", "")
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        yield f"serviceAccountName {name!r} is not a DNS-1123 subdomain"


def probes(service: JSON) -> Iterator[str]:
    """k8s_validation.go validateProbe / validateReadinessProbe and fieldmask.go ProbeMask: one
    handler; a user container's httpGet/tcpSocket port must be the user port (a name must equal
    the port's name, "http" by default; here a number must also equal containerPort, which is
    stricter than the webhook, which overwrites it); periodSeconds 0 forbids failureThreshold
    and timeoutSeconds."""
    for container in _containers(service):
        ports = container.get("ports") or [{}]
        user_port = ports[0].get("containerPort", DEFAULT_USER_PORT)
        user_name = ports[0].get("name") or "http"
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            for key in set(probe) - PROBE_FIELDS:
                yield f"{kind}.{key} must not be set"
            handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe]
            if len(handlers) != 1:
                yield f"{kind}: exactly one of httpGet, tcpSocket, exec, grpc (got {handlers})"
            for handler in ("httpGet", "tcpSocket"):
                port = (probe.get(handler) or {}).get("port")
                if port is None:
                    continue
                if (isinstance(port, str) and port != user_name) or (isinstance(port, int) and port != user_port):
                    yield f"{kind}.{handler}.port {port!r} is not the user port"
            if kind == "readinessProbe" and probe.get("periodSeconds", 0) == 0:
                for key in ("failureThreshold", "timeoutSeconds"):
                    if probe.get(key):
                        yield f"readinessProbe.{key} is disallowed when periodSeconds is zero"


RULES: dict[str, Callable[[JSON], Iterator[str]]] = {
    rule.__name__: rule
    for rule in (
        env_value_from, env_fields, reserved_env, one_port, port_rules, container_mask,
        security_context, pod_spec_mask, service_account_name, probes,
    )
}


def knative_errors(service: JSON) -> list[str]:
    """Everything the Knative webhook (default features) would refuse in this Service."""
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    return [problem for rule in RULES.values() for problem in rule(service)]


# ------------------------------------------------------------------ what we render

RENDERINGS = {
    "default": Settings(),
    "non-default": Settings(
        namespace="maas-system",
        gateway_name="models",
        gateway_namespace="gateway-system",
        key_selector="team-keys",
        api_hostname="keys.example.com",
    ),
}


def knative_services(settings: Settings) -> list[JSON]:
    return [
        d for d in manifests.render(settings)
        if d["kind"] == "Service" and d["apiVersion"] == "serving.knative.dev/v1"
    ]


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_rendered_knative_service_passes_admission(rendering: str) -> None:
    services = knative_services(RENDERINGS[rendering])
    assert len(services) == len(manifests.function_targets())
    problems = {s["metadata"]["name"]: knative_errors(s) for s in services}
    assert {name: errors for name, errors in problems.items() if errors} == {}


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_the_namespace_is_a_literal_of_the_rendered_namespace(rendering: str) -> None:
    """The finding itself (SOURCES.md 4): no fieldRef anywhere, the namespace written out."""
    settings = RENDERINGS[rendering]
    for service in knative_services(settings):
        (container,) = _containers(service)
        env = {e["name"]: e for e in container["env"]}
        assert env["MAAS_NAMESPACE"] == {"name": "MAAS_NAMESPACE", "value": settings.namespace}
        assert all("fieldRef" not in (e.get("valueFrom") or {}) for e in container["env"])
        assert all("resourceFieldRef" not in (e.get("valueFrom") or {}) for e in container["env"])


# ------------------------------------------------------------------ each rule can fail


def _first(service: JSON) -> JSON:
    return _containers(service)[0]


def _spec(service: JSON) -> JSON:
    return service["spec"]["template"]["spec"]


MUTATIONS: dict[str, tuple[str, Callable[[JSON], None]]] = {
    "fieldRef env": ("env_value_from", lambda s: _first(s)["env"].append(
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})),
    "resourceFieldRef env": ("env_value_from", lambda s: _first(s)["env"].append(
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}})),
    "env with an unknown field": ("env_fields", lambda s: _first(s)["env"][0].update({"valueFromX": 1})),
    "reserved env PORT": ("reserved_env", lambda s: _first(s)["env"].append({"name": "PORT", "value": "8080"})),
    "reserved env K_REVISION": ("reserved_env", lambda s: _first(s)["env"].append({"name": "K_REVISION", "value": "x"})),
    "two ports": ("one_port", lambda s: _first(s)["ports"].append({"containerPort": 8081})),
    "port named http": ("port_rules", lambda s: _first(s)["ports"][0].update({"name": "http"})),
    "UDP port": ("port_rules", lambda s: _first(s)["ports"][0].update({"protocol": "UDP"})),
    "reserved port 8012": ("port_rules", lambda s: _first(s)["ports"][0].update({"containerPort": 8012})),
    "reserved port 9091": ("port_rules", lambda s: _first(s)["ports"][0].update({"containerPort": 9091})),
    "hostPort": ("port_rules", lambda s: _first(s)["ports"][0].update({"hostPort": 80})),
    "hostIP": ("port_rules", lambda s: _first(s)["ports"][0].update({"hostIP": "0.0.0.0"})),
    "lifecycle": ("container_mask", lambda s: _first(s).update({"lifecycle": {"preStop": {"exec": {"command": ["true"]}}}})),
    "stdin": ("container_mask", lambda s: _first(s).update({"stdin": True})),
    "tty": ("container_mask", lambda s: _first(s).update({"tty": True})),
    "volumeDevices": ("container_mask", lambda s: _first(s).update({"volumeDevices": [{"name": "d", "devicePath": "/dev/x"}]})),
    "container named queue-proxy": ("container_mask", lambda s: _first(s).update({"name": "queue-proxy"})),
    "seLinuxOptions": ("security_context", lambda s: _first(s)["securityContext"].update({"seLinuxOptions": {"level": "s0"}})),
    "privileged": ("security_context", lambda s: _first(s)["securityContext"].update({"privileged": True})),
    "capabilities add": ("security_context", lambda s: _first(s)["securityContext"]["capabilities"].update({"add": ["NET_ADMIN"]})),
    "pod securityContext": ("pod_spec_mask", lambda s: _spec(s).update({"securityContext": {"runAsNonRoot": True}})),
    "automount true": ("pod_spec_mask", lambda s: _spec(s).update({"automountServiceAccountToken": True})),
    "terminationGracePeriodSeconds": ("pod_spec_mask", lambda s: _spec(s).update({"terminationGracePeriodSeconds": 5})),
    "nodeSelector": ("pod_spec_mask", lambda s: _spec(s).update({"nodeSelector": {"disk": "ssd"}})),
    "tolerations": ("pod_spec_mask", lambda s: _spec(s).update({"tolerations": [{"operator": "Exists"}]})),
    "initContainers": ("pod_spec_mask", lambda s: _spec(s).update({"initContainers": [{"name": "i", "image": "x"}]})),
    "service account with capitals": ("service_account_name", lambda s: _spec(s).update({"serviceAccountName": "Maas_SA"})),
    "probe on another port": ("probes", lambda s: _first(s).update({"readinessProbe": {"httpGet": {"path": "/health", "port": 9000}}})),
    "probe on a named other port": ("probes", lambda s: _first(s).update({"livenessProbe": {"tcpSocket": {"port": "admin"}}})),
    "probe with two handlers": ("probes", lambda s: _first(s).update({"livenessProbe": {"tcpSocket": {}, "exec": {"command": ["true"]}}})),
    "aggressive probe with failureThreshold": ("probes", lambda s: _first(s).update({"readinessProbe": {"httpGet": {"path": "/"}, "failureThreshold": 3}})),
}


def test_every_rule_has_a_mutation() -> None:
    assert {rule for rule, _ in MUTATIONS.values()} == set(RULES)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_rule_catches_its_mutation(mutation: str) -> None:
    rule, mutate = MUTATIONS[mutation]
    for service in knative_services(RENDERINGS["default"])[:2] + knative_services(RENDERINGS["non-default"])[-1:]:
        assert list(RULES[rule](service)) == []
        broken = copy.deepcopy(service)
        mutate(broken)
        assert list(RULES[rule](broken)), f"{rule} let '{mutation}' through"
        assert knative_errors(broken)


def test_a_probe_on_the_user_port_passes() -> None:
    """The probe rule is not a blanket refusal: probes on the user port (by number, by the
    default name, or without a port) are admitted."""
    service = knative_services(RENDERINGS["default"])[0]
    _first(service).update({
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": "http"}},
        "startupProbe": {"httpGet": {"path": "/health"}},
    })
    assert list(probes(service)) == []
