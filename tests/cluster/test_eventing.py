"""Knative Eventing's broker filter, as a small model, fed the real replies of our cleanup target.

Written from tests/cluster/SOURCES.md section 9 (knative/eventing at 8cf4c4b6):

- `filter_answer` is `pkg/broker/filter/filter_handler.go`: `Handler.send` (a non-2xx from the
  subscriber goes back to the channel with its status) and `Handler.writeResponse` (a 2xx reply
  is read as a CloudEvents HTTP message: unknown encoding with a non-empty body -> 502; unknown
  encoding and empty -> the subscriber's status; claims to be a CloudEvent but does not parse ->
  502; a valid CloudEvent -> sent on to the Broker as a new event);
- `retried` is `pkg/kncloudevents/retries.go`, `SelectiveRetry`: no response, 5xx, 404, 408,
  409 and 429 are retried; 3xx and every other 4xx are not;
- `deliver` is the dispatcher's loop: one attempt, then up to `spec.delivery.retry` more while
  the answer is retried (the Trigger's delivery, else the Broker's, else `config-br-defaults`:
  10 retries; `pkg/reconciler/broker/trigger/trigger.go`, `subscribeToBrokerChannel`).

The replies are real: the `cleanup` target under the functions-framework CLI, as its Knative
Service runs it (`MAAS_STORE=kubernetes`), against the Kubernetes API double, sent CloudEvents
built with the cloudevents SDK the way the Broker sends them. A store outage is the double
dropping every connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cloudevents import exceptions as cloudevent_errors
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from kubernetes.client import ApiClient, CoreV1Api

from shared.schemas import TeamCreate
from shared.settings import Settings
from shared.store.kube import KubernetesStore
from shared.store.kubeshapes import team_secret_name
from shared.teams import team_from_request
from tests.crds import validate
from tests.kube_double import KubeDouble, running_double
from tests.test_cleanup import _key, cleanup_target, summaries_in
from tools import manifests

NAMESPACE = "llm"
PING = "dev.knative.sources.ping"
DELETE = "dev.knative.apiserver.resource.delete"
CLUSTER_DEFAULT_RETRY = 10  # config/core/configmaps/default-broker.yaml, config-br-defaults

JSON = dict[str, Any]


# ------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Reply:
    """What the subscriber answered: None for no answer at all (connection dropped)."""

    status: int | None
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> Reply:
        return cls(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def filter_answer(reply: Reply) -> tuple[int | None, CloudEvent | None]:
    """filter_handler.go, Handler.send then Handler.writeResponse: the status the broker filter
    answers the channel with, and the CloudEvent it sends on to the Broker if the reply was one."""
    if reply.status is None:
        return None, None
    if not 200 <= reply.status < 300:
        return reply.status, None  # Handler.send: a non-2xx goes back as it is
    content_type = reply.headers.get("content-type", "")
    binary = "ce-specversion" in reply.headers
    structured = content_type.startswith("application/cloudevents")
    if not binary and not structured:
        # Unknown encoding: the handler reads one byte.
        if reply.body:
            return 502, None  # "received a non-empty response not recognized as CloudEvent"
        return reply.status, None  # proxies the subscriber's status code and headers
    try:
        event = from_http(dict(reply.headers), reply.body)
    except cloudevent_errors.GenericException:
        return 502, None  # claims to be a CloudEvent, does not parse
    return 202, event  # sent on to the Broker as a new event (the ingress accepts it)


def retried(status: int | None) -> bool:
    """retries.go, SelectiveRetry."""
    if status is None:
        return True
    return status >= 500 or status in (404, 408, 409, 429)


@dataclass
class Delivery:
    answers: list[int | None]  # what the filter answered, one per attempt
    replies: list[Reply]

    @property
    def attempts(self) -> int:
        return len(self.answers)

    @property
    def succeeded(self) -> bool:
        return self.answers[-1] is not None and 200 <= self.answers[-1] < 300


def deliver(send: Callable[[int], Reply], retry: int) -> Delivery:
    """The dispatcher: attempt, and while the answer is retried, up to `retry` more attempts.
    `send(attempt)` makes attempt number `attempt` (0 first); backoff delays are not waited."""
    delivery = Delivery([], [])
    for attempt in range(retry + 1):
        reply = send(attempt)
        status, _ = filter_answer(reply)
        delivery.answers.append(status)
        delivery.replies.append(reply)
        if not retried(status):
            break
    return delivery


def test_the_model_reads_replies_as_the_filter_does() -> None:
    """What the target used to answer, and the alternatives, through the model."""
    html, json_type = {"content-type": "text/html; charset=utf-8"}, {"content-type": "application/json"}
    cases = [
        # functions-framework's "OK" and our old JSON summary: 502, retried, the sweep runs again.
        (Reply(200, html, b"OK"), 502, True),
        (Reply(200, json_type, b'{"deleted_keys": []}\n'), 502, True),
        # Empty 2xx: passed on as success.
        (Reply(200, {}, b""), 200, False),
        (Reply(202, {"content-type": "text/plain; charset=utf-8"}, b""), 202, False),
        (Reply(204, {}, b""), 204, False),
        # A reply claiming to be a CloudEvent that is not one.
        (Reply(200, {"content-type": "application/cloudevents+json"}, b"{}"), 502, True),
        # Non-2xx: passed back, retried or not by SelectiveRetry.
        (Reply(503, json_type, b'{"error": "down"}'), 503, True),
        (Reply(500, {}, b""), 500, True),
        *((Reply(code, {}, b""), code, True) for code in (404, 408, 409, 429)),
        *((Reply(code, {}, b""), code, False) for code in (301, 400, 401, 403, 405, 413, 415, 422)),
        (Reply(None, {}, b""), None, True),
    ]
    for reply, status, again in cases:
        assert filter_answer(reply)[0] == status, reply
        assert retried(filter_answer(reply)[0]) is again, reply
    headers, body = to_binary(CloudEvent({"type": "reply", "source": "x"}, {"a": 1}))
    status, event = filter_answer(Reply(200, {k.lower(): v for k, v in headers.items()}, body))
    assert status == 202 and event is not None and event["type"] == "reply"
    # The old "OK" reply, delivered with the cluster default: the sweep runs 11 times.
    assert deliver(lambda _: Reply(200, html, b"OK"), CLUSTER_DEFAULT_RETRY).attempts == 11


# ------------------------------------------------------------------ what we render


def rendered(settings: Settings | None = None) -> list[JSON]:
    return manifests.render(settings or Settings())


DELIVERY_FIELDS = {"deadLetterSink", "retry", "backoffPolicy", "backoffDelay", "timeout", "retryAfterMax"}
_ISO_SECONDS = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def iso_seconds(text: str) -> float:
    """The few ISO 8601 durations a DeliverySpec uses (`PT1S`, `PT0.2S`, `PT1M30S`)."""
    found = _ISO_SECONDS.match(text)
    assert found and text != "PT", f"not an ISO 8601 duration: {text!r}"
    hours, minutes, seconds = (float(part or 0) for part in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def backoff_total(delivery: JSON) -> float:
    """Seconds from the first attempt to the last (retries.go: linear delay * n, exponential
    delay * 2^n for retry n counted from 0)."""
    delay = iso_seconds(delivery["backoffDelay"])
    steps = range(delivery["retry"])
    if delivery["backoffPolicy"] == "exponential":
        return sum(delay * 2**n for n in steps)
    return sum(delay * (n + 1) for n in steps)


def sweep_interval_s(documents: list[JSON]) -> int:
    (ping,) = [d for d in documents if d["kind"] == "PingSource"]
    minutes = re.fullmatch(r"\*/(\d+) \* \* \* \*", ping["spec"]["schedule"])
    assert minutes, ping["spec"]["schedule"]
    return int(minutes.group(1)) * 60


@pytest.mark.parametrize("settings", [Settings(), Settings(namespace="maas-system")], ids=["default", "namespaced"])
def test_triggers_and_broker_carry_an_explicit_delivery(settings: Settings) -> None:
    documents = rendered(settings)
    triggers = [d for d in documents if d["kind"] == "Trigger"]
    (broker,) = [d for d in documents if d["kind"] == "Broker"]
    assert len(triggers) == 3
    for holder in (*triggers, broker):
        validate(holder)
        delivery = holder["spec"].get("delivery")
        assert delivery, f"{holder['kind']} {holder['metadata']['name']} inherits the cluster default (10 retries)"
        # The CRD leaves delivery open (x-kubernetes-preserve-unknown-fields): check the fields.
        assert set(delivery) <= DELIVERY_FIELDS, delivery
        assert isinstance(delivery["retry"], int) and 1 <= delivery["retry"] < CLUSTER_DEFAULT_RETRY
        assert delivery["backoffPolicy"] in ("linear", "exponential")
        assert iso_seconds(delivery["backoffDelay"]) >= 1
        # All retries are over before the next sweep, which would do the same work anyway.
        assert backoff_total(delivery) < sweep_interval_s(documents)
        assert delivery == broker["spec"]["delivery"], "a Trigger without one would inherit the Broker's"


LAYOUTS = {"one-namespace": Settings(), "keys-namespace": Settings(keys_namespace="llm-keys")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_team_source_watches_the_keys_and_sends_to_the_broker(layout: str) -> None:
    """The team-Secret ApiServerSource lives beside the Secrets it watches (its Role grants only
    its own namespace), on an account that can watch them there, and sends to the Broker beside
    the functions. A sink `ref` without a namespace means the source's own (knative.dev/pkg
    KReference), so a Broker elsewhere is named; the ApiServerSource webhook validates the sink
    without a parent namespace (knative/eventing pkg/apis/sources/v1/apiserver_validation.go), so
    the cross-namespace ref is accepted. The models source and the PingSource stay in MAAS_NAMESPACE."""
    settings = LAYOUTS[layout]
    documents = rendered(settings)
    by = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    source = by[("ApiServerSource", manifests.TEAM_SOURCE)]
    validate(source)
    assert source["metadata"]["namespace"] == settings.store_namespace
    ref = source["spec"]["sink"]["ref"]
    broker_namespace = ref.get("namespace", source["metadata"]["namespace"])
    (broker,) = [d for d in documents if d["kind"] == "Broker"]
    assert (ref["kind"], ref["name"], broker_namespace) == ("Broker", broker["metadata"]["name"], settings.namespace)
    assert ("namespace" in ref) == (settings.store_namespace != settings.namespace)

    account = source["spec"]["serviceAccountName"]
    service_account, role, binding = (by[(kind, account)] for kind in ("ServiceAccount", "Role", "RoleBinding"))
    for obj in (service_account, role, binding):
        validate(obj)
        assert obj["metadata"]["namespace"] == settings.store_namespace, obj["kind"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": settings.store_namespace}]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]

    for name in ("maas-models",):
        other = by[("ApiServerSource", name)]
        assert other["metadata"]["namespace"] == settings.namespace and "namespace" not in other["spec"]["sink"]["ref"]
    (ping,) = [d for d in documents if d["kind"] == "PingSource"]
    assert ping["metadata"]["namespace"] == settings.namespace and "namespace" not in ping["spec"]["sink"]["ref"]
    for trigger in (d for d in documents if d["kind"] == "Trigger"):
        assert trigger["metadata"]["namespace"] == broker["metadata"]["namespace"] == settings.namespace


def test_iso_durations_and_backoff_are_read_right() -> None:
    assert iso_seconds("PT1S") == 1 and iso_seconds("PT0.2S") == 0.2 and iso_seconds("PT1M30S") == 90
    with pytest.raises(AssertionError):
        iso_seconds("1s")
    # The cluster default: 0.2 + 0.4 + ... + 102.4 s (SOURCES.md section 9).
    default = {"retry": 10, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"}
    assert backoff_total(default) == pytest.approx(204.6)
    assert backoff_total({"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT1S"}) == 7


# ------------------------------------------------------------------ the real target


@dataclass
class Cluster:
    base: str
    double: KubeDouble
    store: KubernetesStore
    client: ApiClient
    log: Path
    retry: int

    def send(self, event: CloudEvent, mode: str = "binary") -> Reply:
        headers, body = (to_binary if mode == "binary" else to_structured)(event)
        return self.post(headers, body)

    def post(self, headers: Mapping[str, str], body: bytes | str) -> Reply:
        return Reply.of(httpx.post(self.base, headers=dict(headers), content=body, timeout=60))

    def deliver(self, event: CloudEvent, mode: str = "binary") -> Delivery:
        return deliver(lambda _: self.send(event, mode), self.retry)

    def summaries(self) -> list[JSON]:
        return summaries_in(self.log.read_text())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (trigger,) = [d for d in rendered() if d["kind"] == "Trigger" and d["spec"]["filter"]["attributes"].get("type") == PING]
    with running_double() as (double, client):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": double.url}}],
            "users": [{"name": "maas", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "maas", "namespace": NAMESPACE}}],
        }))
        store = KubernetesStore(client, namespace=NAMESPACE, key_selector=Settings().key_selector)
        log = tmp_path / "cleanup.log"
        env = {"MAAS_STORE": "kubernetes", "KUBECONFIG": str(kubeconfig)}
        with cleanup_target(tmp_path / "data", log, env) as base:
            yield Cluster(base, double, store, client, log, trigger["spec"]["delivery"]["retry"])


def _ping() -> CloudEvent:
    return CloudEvent({"type": PING, "source": f"/apis/v1/namespaces/{NAMESPACE}/pingsources/maas-sweep"},
                      {"reason": "periodic-sweep"})


def _team_with_a_key(cluster: Cluster, team_id: str) -> str:
    cluster.store.create_team(team=team_from_request(TeamCreate(team_id=team_id), datetime.now(timezone.utc)))
    return _key(cluster.store, team_id).secret_name


def _assert_empty(delivery: Delivery) -> None:
    for reply in delivery.replies:
        assert reply.body == b"", reply


def test_a_ping_is_handled_once(cluster: Cluster) -> None:
    delivery = cluster.deliver(_ping())
    assert (delivery.attempts, delivery.succeeded) == (1, True), delivery.answers
    assert delivery.answers == [202]
    _assert_empty(delivery)
    (summary,) = cluster.summaries()
    assert summary["event_type"] == PING and summary["policies_synced"] is True


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_team_delete_is_handled_once(cluster: Cluster, mode: str) -> None:
    key = _team_with_a_key(cluster, "team-gone")
    # The team Secret goes without its dependents (what an interrupted cascade leaves behind).
    secret = CoreV1Api(cluster.client).read_namespaced_secret(team_secret_name("team-gone"), NAMESPACE)
    CoreV1Api(cluster.client).delete_namespaced_secret(team_secret_name("team-gone"), NAMESPACE,
                                                       propagation_policy="Orphan")
    assert [k.secret_name for k in cluster.store.list_keys()] == [key]
    event = CloudEvent({"type": DELETE, "source": "https://10.96.0.1:443",
                        "subject": f"/api/v1/namespaces/{NAMESPACE}/secrets/{secret.metadata.name}"},
                       cluster.client.sanitize_for_serialization(secret))
    delivery = cluster.deliver(event, mode)
    assert (delivery.attempts, delivery.succeeded) == (1, True), delivery.answers
    _assert_empty(delivery)
    assert cluster.store.list_keys() == []
    assert cluster.summaries()[-1]["deleted_keys"] == [key]


def test_a_model_change_syncs_the_policies_once(cluster: Cluster) -> None:
    """The maas-models ApiServerSource (Reference mode) reports an InferenceService."""
    event = CloudEvent({"type": "dev.knative.apiserver.ref.update", "source": "https://10.96.0.1:443",
                        "maasevent": "models-changed",
                        "subject": f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices/qwen"},
                       {"kind": "InferenceService", "namespace": NAMESPACE, "name": "qwen",
                        "apiVersion": "serving.kserve.io/v1beta1"})
    delivery = cluster.deliver(event)
    assert (delivery.attempts, delivery.succeeded, delivery.answers) == (1, True, [202])
    _assert_empty(delivery)
    (summary,) = cluster.summaries()
    assert summary["policies_synced"] is True and summary["ignored"] is None
    # The sync ran: the policies it writes are in the cluster now.
    assert cluster.double.get("authpolicies", NAMESPACE, "maas-api-keys", "kuadrant.io", "v1") is not None


def test_a_deleted_model_is_not_taken_for_a_team(cluster: Cluster) -> None:
    """ref.delete is also the team source's type in Reference mode: the kind tells them apart."""
    event = CloudEvent({"type": "dev.knative.apiserver.ref.delete", "source": "https://10.96.0.1:443",
                        "maasevent": "models-changed"},
                       {"kind": "LLMInferenceService", "namespace": NAMESPACE, "name": "team-x-config",
                        "apiVersion": "serving.kserve.io/v1alpha2"})
    delivery = cluster.deliver(event)
    assert delivery.answers == [202]
    (summary,) = cluster.summaries()
    assert summary["policies_synced"] is True and summary["team_id"] is None


def test_an_unknown_event_type_is_not_redelivered(cluster: Cluster) -> None:
    key = _team_with_a_key(cluster, "team-kept")
    delivery = cluster.deliver(CloudEvent({"type": "dev.knative.apiserver.resource.update", "source": "x"}, {}))
    assert (delivery.attempts, delivery.succeeded) == (1, True), delivery.answers
    _assert_empty(delivery)
    assert "is not handled" in cluster.summaries()[-1]["ignored"]
    assert [k.secret_name for k in cluster.store.list_keys()] == [key]


MALFORMED: dict[str, tuple[dict[str, str], bytes]] = {
    "plain JSON, not a CloudEvent": ({"content-type": "application/json"}, b"{}"),
    "structured, not JSON": ({"content-type": "application/cloudevents+json"}, b"{not json"),
    "structured, no type": ({"content-type": "application/cloudevents+json"},
                            b'{"specversion": "1.0", "id": "1", "source": "x"}'),
    "binary, unknown specversion": ({"ce-specversion": "9.9", "ce-id": "1", "ce-source": "x", "ce-type": PING}, b""),
    "empty": ({}, b""),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_event_is_refused_and_not_retried(cluster: Cluster, case: str) -> None:
    headers, body = MALFORMED[case]
    delivery = deliver(lambda _: cluster.post(headers, body), cluster.retry)
    assert delivery.attempts == 1 and not delivery.succeeded, delivery.answers
    assert delivery.answers[0] is not None and 400 <= delivery.answers[0] < 500
    _assert_empty(delivery)
    assert cluster.summaries() == []


def test_a_delete_event_without_an_object_is_poison(cluster: Cluster) -> None:
    for mode in ("binary", "structured"):
        delivery = cluster.deliver(CloudEvent({"type": DELETE, "source": "x"}, None), mode)
        assert (delivery.attempts, delivery.answers) == (1, [422])
        _assert_empty(delivery)
    # Binary mode, JSON content type, a body that is not JSON: the data is bytes, not an object.
    headers, _ = to_binary(CloudEvent({"type": DELETE, "source": "x"}, {}))
    delivery = deliver(lambda _: cluster.post(headers, b"{not json"), cluster.retry)
    assert delivery.answers == [422]


def test_a_store_outage_is_retried_and_the_redelivery_does_the_work(cluster: Cluster) -> None:
    key = _team_with_a_key(cluster, "team-orphaned")
    CoreV1Api(cluster.client).delete_namespaced_secret(team_secret_name("team-orphaned"), NAMESPACE,
                                                       propagation_policy="Orphan")
    # Down for the whole delivery: every attempt is retried, then the event is dropped.
    with cluster.double.unreachable():
        delivery = cluster.deliver(_ping())
    assert delivery.answers == [503] * (cluster.retry + 1)
    _assert_empty(delivery)
    assert [k.secret_name for k in cluster.store.list_keys()] == [key]

    # Down for the first two attempts: the third does the sweep, and nothing after it.
    def flaky(attempt: int) -> Reply:
        if attempt < 2:
            with cluster.double.unreachable():
                return cluster.send(_ping())
        return cluster.send(_ping())

    delivery = deliver(flaky, cluster.retry)
    assert delivery.answers == [503, 503, 202]
    _assert_empty(delivery)
    assert cluster.store.list_keys() == []
    assert cluster.summaries()[-1]["deleted_keys"] == [key]
