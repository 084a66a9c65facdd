"""Our usage queries against series shaped as Limitador exposes them under Kuadrant.

What Limitador's /metrics looks like in a cluster, from tests/cluster/SOURCES.md sections 5 and 16
(Kuadrant/kuadrant-operator at ae698811, Kuadrant/limitador at 2981b2bd):

- KO `internal/controller/limitador_reconciler.go` line 87 (`MetricLabelsDefault`, re-asserted at
  line 132): Kuadrant sets Limitador's `--metric-labels-default` to `descriptors[1]`, so the
  entries of a rate-limit request's second descriptor become labels of Limitador's counters.
- KO `internal/wasm/action_spec.go` `bindingsToDescriptor` (696-712): the TelemetryPolicy's labels
  are that second descriptor, key = label name, value = `string(<expression>)`.
- KO `internal/wasm/action_spec.go` `AttachBindings` (381-406) and `availableBindings` (408-423):
  a guard action (the request-phase rate-limit Check) gets no binding for which
  `isResponsePhaseExpression` (368-373) holds, and that matches `requestBodyJSON(` as well as
  `responseBodyJSON(`. Our `model` label is `requestBodyJSON("/model")`: it reaches only the
  response-phase Report.
- LI `limitador-server/src/envoy_rls/kuadrant_service.rs`: `check_rate_limit` (27-105) counts
  `authorized_calls` or `limited_calls`, `report` (108-180) counts `authorized_hits` (the tokens).
  So `authorized_hits` has `user`, `team`, `model`; the two call counters `user` and `team` only.
- LI `limitador-server/src/prometheus_metrics.rs` `incr_authorized_calls` / `incr_authorized_hits` /
  `incr_limited_calls` (93-125): every series gets `limitador_namespace`, the request's domain,
  which is `<route namespace>/<route name>` (KO `internal/controller/ratelimit_workflow_helpers.go`
  `LimitsNamespaceFromRoute` 66-68): one series set per HTTPRoute. With `--limit-name-in-labels`
  `limited_calls` also has `limit_name`. A label whose expression fails is left out (the
  TelemetryPolicy API: "only labels whose CEL expressions resolve successfully will be
  included"), e.g. `model` for a body without one. Counters are `metrics` crate counters: no
  `_total`, a series exists from its first increment, and a restart starts every one at 0.

Two "Limitador replicas" (in-memory counters each, two scrape targets) serve exposition text
written here in that shape, with several routes, model only on tokens, odd model values, then a
restart that resets both. A real Prometheus scrapes them; PrometheusUsage must give the exact
sums computed here from the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shared.usage.base import UsageRow
from shared.usage.prometheus import PrometheusUsage
from tests.prometheus_harness import Prometheus, TextExporter, prometheus_binary

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(90)]

QWEN_ROUTE, SIM_ROUTE = "llm/qwen3-0-6b-instruct", "llm/vllm-simulator"  # KServe: one route per model
SHARED_ROUTE = "llm/maas-models"  # the shared model route of finding 5


@dataclass
class Limitador:
    """The counters of one Limitador replica, rendered as its /metrics."""

    # (route, team, user, model or None when the label failed to resolve) -> tokens
    hits: dict[tuple[str, str, str, str | None], int] = field(default_factory=dict)
    # (route, team, user) -> calls
    authorized: dict[tuple[str, str, str], int] = field(default_factory=dict)
    limited: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def text(self) -> str:
        def labels(pairs: list[tuple[str, str]]) -> str:
            escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
            return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"

        lines = ["# TYPE limitador_up gauge", "limitador_up 1", "# TYPE authorized_hits counter"]
        for (route, team, user, model), value in self.hits.items():
            # descriptors[1] first (the TelemetryPolicy's labels), limitador_namespace last.
            pairs = [("user", user), ("team", team)] + ([("model", model)] if model is not None else [])
            lines.append(f"authorized_hits{labels([*pairs, ('limitador_namespace', route)])} {value}")
        lines += ["# HELP authorized_calls Authorized calls", "# TYPE authorized_calls counter"]
        for (route, team, user), value in self.authorized.items():
            lines.append(f"authorized_calls{labels([('user', user), ('team', team), ('limitador_namespace', route)])} {value}")
        lines += ["# HELP limited_calls Limited calls", "# TYPE limited_calls counter"]
        for (route, team, user), value in self.limited.items():
            pairs = [("user", user), ("team", team), ("limitador_namespace", route), ("limit_name", "tokenlimit.x__1")]
            lines.append(f"limited_calls{labels(pairs)} {value}")
        return "\n".join(lines) + "\n"


# Before the restart, per replica. Alice (team t1) calls qwen through its KServe route and the
# simulator through the shared route; bob (t1) and alice in t2 too; one body had no model.
BEFORE = (
    Limitador(
        hits={(QWEN_ROUTE, "t1", "alice", "qwen3-0-6b-instruct"): 1200,
              (SHARED_ROUTE, "t1", "alice", "vllm-simulator"): 300,
              (SHARED_ROUTE, "t1", "alice", None): 9,
              (QWEN_ROUTE, "t1", "bob", 'qw"en\\3\nx'): 44,
              (SIM_ROUTE, "t2", "alice", "vllm-simulator"): 70},
        authorized={(QWEN_ROUTE, "t1", "alice"): 12, (SHARED_ROUTE, "t1", "alice"): 4,
                    (QWEN_ROUTE, "t1", "bob"): 2, (SIM_ROUTE, "t2", "alice"): 1},
        limited={(QWEN_ROUTE, "t1", "alice"): 3, (SIM_ROUTE, "t2", "alice"): 5},
    ),
    Limitador(
        hits={(QWEN_ROUTE, "t1", "alice", "qwen3-0-6b-instruct"): 800,
              (QWEN_ROUTE, "t1", "bob", "qwen3-0-6b-instruct"): 10},
        authorized={(QWEN_ROUTE, "t1", "alice"): 8, (QWEN_ROUTE, "t1", "bob"): 1},
        limited={(QWEN_ROUTE, "t1", "bob"): 1},
    ),
)
# After both replicas restarted: counters from 0, only the series that saw traffic since. The
# model-less series reset beside one with the same labels plus `model`: a selector of its labels
# matches both.
AFTER = (
    Limitador(
        hits={(QWEN_ROUTE, "t1", "alice", "qwen3-0-6b-instruct"): 50,
              (SHARED_ROUTE, "t1", "alice", None): 2,
              (SHARED_ROUTE, "t1", "alice", "vllm-simulator"): 30},
        authorized={(QWEN_ROUTE, "t1", "alice"): 1},
        limited={(SIM_ROUTE, "t2", "alice"): 2},
    ),
    Limitador(
        hits={(SHARED_ROUTE, "t1", "bob", "vllm-simulator"): 5},
        authorized={(SHARED_ROUTE, "t1", "bob"): 1},
    ),
)


def _expected(*phases: tuple[Limitador, ...]) -> tuple[list[UsageRow], dict[tuple[str, str, str], int]]:
    """Rows per (team, user) and tokens per (team, user, model), summed by hand."""
    rows: dict[tuple[str, str], list[int]] = {}
    models: dict[tuple[str, str, str], int] = {}
    for replicas in phases:
        for replica in replicas:
            for (_, team, user, model), n in replica.hits.items():
                rows.setdefault((team, user), [0, 0, 0])[0] += n
                models[(team, user, model or "")] = models.get((team, user, model or ""), 0) + n
            for index, counts in ((1, replica.authorized), (2, replica.limited)):
                for (_, team, user), n in counts.items():
                    rows.setdefault((team, user), [0, 0, 0])[index] += n
    return [UsageRow(t, u, "", *c) for (t, u), c in sorted(rows.items())], models


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[TextExporter, TextExporter]]:
    served = (TextExporter().start(), TextExporter().start())
    for exporter, replica in zip(served, BEFORE, strict=True):
        exporter.text = replica.text()
    yield served
    for exporter in served:
        exporter.stop()


@pytest.fixture(scope="module")
def prometheus(replicas: tuple[TextExporter, TextExporter],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; run tools/ensure_prometheus.sh)")
    server = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), [r.target for r in replicas]).start()
    yield server
    server.stop()


def _settled(usage: PrometheusUsage, expected: list[UsageRow], within_s: float = 10.0) -> list[UsageRow]:
    deadline = time.monotonic() + within_s
    while (got := usage.totals()) != expected and time.monotonic() < deadline:
        time.sleep(0.25)
    return got


def _model_tokens(usage: PrometheusUsage, team: str | None = None, user: str | None = None) -> dict[str, int]:
    return dict(usage.model_tokens(team_id=team, user_id=user))


def _by_model(models: dict[tuple[str, str, str], int], team: str | None = None,
              user: str | None = None) -> dict[str, int]:
    summed: dict[str, int] = {}
    for (t, u, model), n in models.items():
        if team in (None, t) and user in (None, u) and n:
            summed[model] = summed.get(model, 0) + n
    return summed


def test_the_exposition_has_limitadors_shapes() -> None:
    """The text this module serves is what the sources say Limitador renders."""
    text = BEFORE[0].text()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all("limitador_namespace=" in line for line in samples if not line.startswith("limitador_up"))
    assert all("model=" not in line for line in samples if line.startswith(("authorized_calls", "limited_calls")))
    assert sum("model=" in line for line in samples if line.startswith("authorized_hits")) == 4
    assert "_total" not in text


def test_usage_queries_sum_routes_and_replicas_and_survive_a_restart(
    prometheus: Prometheus, replicas: tuple[TextExporter, TextExporter]
) -> None:
    usage = PrometheusUsage(prometheus.url, timeout_s=5)
    rows, models = _expected(BEFORE)
    # alice in t1: tokens 1200 + 300 + 9 + 800 and calls 12 + 4 + 8 from two routes and two
    # replicas, in one row with her limited calls.
    assert rows[0] == UsageRow("t1", "alice", "", 2309, 24, 3)
    assert _settled(usage, rows) == rows
    assert _model_tokens(usage, "t1", "alice") == {"": 9, "qwen3-0-6b-instruct": 2000, "vllm-simulator": 300}
    assert _model_tokens(usage, "t1") == _by_model(models, "t1")
    assert usage.totals(user_id="alice") == [r for r in rows if r.user_id == "alice"]

    # Both replicas restart: every counter from 0; series without traffic since are gone.
    prometheus.wait_for_scrapes()
    for exporter, replica in zip(replicas, AFTER, strict=True):
        exporter.text = replica.text()
    rows, models = _expected(BEFORE, AFTER)
    assert rows[0] == UsageRow("t1", "alice", "", 2391, 25, 3)
    assert _settled(usage, rows) == rows
    for team, user in (("t1", "alice"), ("t1", "bob"), ("t2", "alice"), (None, "alice"), ("t1", None), (None, None)):
        assert _model_tokens(usage, team, user) == _by_model(models, team, user), (team, user)
    assert usage.totals(team_id="t2") == [UsageRow("t2", "alice", "", 70, 1, 7)]
    assert usage.totals(team_id="t1", user_id="nobody") == []
    usage.close()
