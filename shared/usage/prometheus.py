"""The Prometheus UsageSource: PromQL over Limitador's counters (or the local gateway's /metrics).

Series, as Limitador exposes them under Kuadrant (tests/cluster/SOURCES.md, findings 5 and 16;
tests/cluster/test_limitador_metrics.py checks these queries against such series):
- `authorized_hits` (tokens), counted by the response-phase Report, labelled `user`, `team` and
  `model` by the TelemetryPolicy;
- `authorized_calls` and `limited_calls`, counted by the request-phase Check, labelled `user` and
  `team` only: Kuadrant drops labels that read the request body (`requestBodyJSON`) from guard
  actions, so calls carry **no `model`**;
- every series also has `limitador_namespace` (`<route namespace>/<route name>`: one series set per
  HTTPRoute), plus whatever the scrape adds (`instance`, `job`, `pod`...) and, with Limitador's
  `--limit-name-in-labels`, `limit_name` on `limited_calls`.

So every query sums over everything but the labels it groups by: rows are per **(team, user)**,
tokens and calls in the same row, summed over routes, replicas and models (`model` is "" in
these rows). Tokens per model come from `model_tokens`: `authorized_hits` summed by `model`.
Calls per model are not known from Limitador: the usage bodies give `null` for a model's
`authorized_calls` and `limited_calls` in Prometheus mode (`calls_by_model = False`).

`model` is whatever the client put in the request body (unless the TelemetryPolicy maps values
outside the catalog to "other"): any string, any number of them. Aggregation is done by
Prometheus, never per series in Python: answers are bounded by (team, user) pairs, and the model
breakdown lists at most `MAX_MODELS` models (`topk`), the rest summed under `OTHER_MODEL`.

What the numbers mean:
- All-time totals are exact integers: per series, the last value seen within the look-back
  (`last_over_time`, so a gateway that stopped being scraped still counts), plus, for the rare
  series whose counter reset (a gateway or Limitador restart starts again from 0), the value it
  had reached before each reset, read from the raw samples. A plain `sum(authorized_hits)` would
  forget everything counted before a restart; `increase` would be an estimate.
- A range (`start`/`end`) is `increase(...[end - start])` evaluated at `end`: Prometheus
  extrapolates at the range's edges, so those numbers are estimates (rounded to integers),
  close to but not always equal to the exact counts of the embedded ledger.
- Time series use `increase(...[step])` at each step's end, estimates likewise.
- Tokens are what the gateway reported: a response without `usage.total_tokens` sends no Report
  (finding 6), so it counts as a call with no tokens.

The three metrics are read in one query (joined with `or`, tagged by `label_replace`) so one
answer is one consistent evaluation. Every call is bounded by `timeout_s` in total (no HTTP
retries, the remaining budget passed to each request and to Prometheus' own `timeout`);
unreachable, slow or failing Prometheus is a BackendUnavailable naming it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from shared.errors import BackendUnavailable
from shared.settings import Settings
from shared.usage.base import UsagePoint, UsageRow

# Prometheus metric name -> UsageRow field.
METRICS: Mapping[str, str] = {
    "authorized_hits": "tokens",
    "authorized_calls": "authorized_calls",
    "limited_calls": "limited_calls",
}
TOKENS = "authorized_hits"
# The labels every metric has (the call counters have no `model`): rows are per (team, user).
GROUP_LABELS = ("team", "user")
GROUP = ", ".join(GROUP_LABELS)
# The model breakdown names at most this many models (most tokens first); the rest are summed
# under OTHER_MODEL, the name the TelemetryPolicy gives to models outside the catalog.
MAX_MODELS = 100
OTHER_MODEL = "other"
_TAG = "maas_metric"
# How far back "all time" looks: longer than any sane retention (Prometheus' default is 15d).
ALL_TIME = "400d"

Key = tuple[str, ...]


def label_value(value: str) -> str:
    """A PromQL double-quoted string literal holding `value` exactly."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(*, team_id: str | None = None, user_id: str | None = None,
             extra: Mapping[str, str] | None = None) -> str:
    """`{team="…",user="…"}` with exact (never regex) matchers; "" when there is nothing to match."""
    matchers = {"team": team_id, "user": user_id, **(extra or {})}
    parts = [f"{name}={label_value(v)}" for name, v in matchers.items() if v is not None]
    return "{" + ",".join(parts) + "}" if parts else ""


def duration(seconds: float) -> str:
    """A PromQL duration in whole seconds (at least 1s)."""
    return f"{max(1, int(round(seconds)))}s"


def tagged(expression_for: Mapping[str, str]) -> str:
    """One query returning every metric's expression, each result tagged with its metric name."""
    return " or ".join(
        f'label_replace({expr}, "{_TAG}", "{metric}", "", "")' for metric, expr in expression_for.items()
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _number(text: str) -> int:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):  # NaN / Inf from a bad scrape
        return 0
    return int(round(value))


def _unix(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()


class PrometheusUsage:
    # Limitador's call counters carry no `model` label: a model's calls are unknown here.
    calls_by_model = False

    def __init__(self, url: str, *, timeout_s: float, lookback: str = ALL_TIME,
                 max_models: int = MAX_MODELS) -> None:
        self._url = url.rstrip("/")
        self._shown_url = _redacted(self._url)
        self._timeout_s = timeout_s
        self._lookback = lookback
        self._max_models = max_models
        # No HTTP-level retries: they would break the time bound (the client's default retries
        # three times with back-off). Callers get a fast, clear 503 instead.
        session = requests.Session()
        session.trust_env = False  # straight to Prometheus, never through an environment proxy
        self._prom = PrometheusConnect(url=self._url, retry=Retry(total=False, raise_on_status=False),
                                       timeout=timeout_s, session=session)

    @classmethod
    def from_settings(cls, settings: Settings) -> PrometheusUsage:
        return cls(settings.prometheus_url, timeout_s=settings.prometheus_timeout_s)

    # -- UsageSource -------------------------------------------------------------------------

    def totals(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsageRow]:
        """Counts per (team, user), `model` "": tokens and calls of a pair in one row."""
        deadline = _Deadline(self._timeout_s)
        sel = selector(team_id=team_id, user_id=user_id)
        at = time.time() if end is None else _unix(end)
        if start is None:
            counts = self._all_time(METRICS, GROUP_LABELS, sel, at, deadline)
        else:
            span = duration(at - _unix(start))
            query = tagged({m: f"sum by ({GROUP}) (increase({m}{sel}[{span}]))" for m in METRICS})
            counts = _counts(self._query(query, at, deadline), GROUP_LABELS)
        return sorted(
            (_row(key[0], key[1], "", c) for key, c in counts.items() if any(c.values())),
            key=lambda r: (r.team_id, r.user_id),
        )

    def model_tokens(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[tuple[str, int]]:
        """Tokens per model, sorted by model, at most `max_models` of them plus OTHER_MODEL.

        Summed and ranked by Prometheus (`sum by (model)`, `topk`): whatever values the label
        takes, the answer holds `max_models` + 1 series. Models with no tokens are left out;
        tokens whose series had no `model` label are under "".
        """
        deadline = _Deadline(self._timeout_s)
        sel = selector(team_id=team_id, user_id=user_id)
        at = time.time() if end is None else _unix(end)
        counter = (f"last_over_time({TOKENS}{sel}[{self._lookback}])" if start is None
                   else f"increase({TOKENS}{sel}[{duration(at - _unix(start))}])")
        query = (f'label_replace(topk({self._max_models}, sum by (model) ({counter})), "{_TAG}", "top", "", "")'
                 f' or label_replace(sum({counter}), "{_TAG}", "all", "", "")')
        top: dict[str, int] = {}
        total = 0
        for item in self._query(query, at, deadline):
            labels = item.get("metric", {})
            value = _number(item["value"][1])
            if labels.get(_TAG) == "all":
                total += value
            else:
                top[labels.get("model", "")] = value
        # Fewer than max_models answers: every model is listed, nothing is left for "other"
        # (and rounding each estimate apart cannot invent a remainder).
        truncated = len(top) >= self._max_models
        if start is None:
            # What reset series had counted before each reset goes to their model, if listed.
            for labels, lost in self._lost_to_resets((TOKENS,), sel, at, deadline):
                model = labels.get("model", "")
                total += lost
                if model in top:
                    top[model] += lost
        rest = total - sum(top.values())
        if truncated and rest > 0:
            top[OTHER_MODEL] = top.get(OTHER_MODEL, 0) + rest
        return sorted((model, tokens) for model, tokens in top.items() if tokens)

    def series(
        self,
        *,
        start: datetime,
        end: datetime,
        step_s: int,
        team_id: str | None = None,
        user_id: str | None = None,
    ) -> list[UsagePoint]:
        """Counts per (team, user) per bucket, `model` "" (calls have no model)."""
        deadline = _Deadline(self._timeout_s)
        sel = selector(team_id=team_id, user_id=user_id)
        step = duration(step_s)
        query = tagged({m: f"sum by ({GROUP}) (increase({m}{sel}[{step}]))" for m in METRICS})
        # Evaluated at each bucket's end: the value at t covers (t - step, t].
        first_end = _unix(start) + step_s
        result = self._call(
            lambda timeout: self._prom.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(first_end, timezone.utc),
                end_time=datetime.fromtimestamp(max(first_end, _unix(end)), timezone.utc),
                step=step,
                params={"timeout": duration(timeout)},
                timeout=timeout,
            ),
            deadline,
        )
        buckets: dict[tuple[float, str, str], dict[str, int]] = defaultdict(dict)
        for item in result:
            labels = item.get("metric", {})
            field = METRICS[labels[_TAG]]
            for stamp, value in item.get("values", []):
                buckets[(float(stamp) - step_s, labels.get("team", ""), labels.get("user", ""))][field] = _number(value)
        points = [
            UsagePoint(start=datetime.fromtimestamp(stamp, timezone.utc), row=_row(team, user, "", counts))
            for (stamp, team, user), counts in buckets.items()
            if any(counts.values())
        ]
        return sorted(points, key=lambda p: (p.start, p.row.team_id, p.row.user_id))

    def close(self) -> None:
        self._prom.close()

    # -- internals ---------------------------------------------------------------------------

    def _all_time(self, metrics: Iterable[str], group: tuple[str, ...], sel: str, at: float,
                  deadline: _Deadline) -> dict[Key, dict[str, int]]:
        by = ", ".join(group)
        last = tagged({m: f"sum by ({by}) (last_over_time({m}{sel}[{self._lookback}]))" for m in metrics})
        rows = _counts(self._query(last, at, deadline), group)
        # Series whose counter went back to 0 (a restart): add what they had before each reset.
        for labels, lost in self._lost_to_resets(metrics, sel, at, deadline):
            counts = rows.setdefault(tuple(labels.get(name, "") for name in group), {})
            field = METRICS[labels[_TAG]]
            counts[field] = counts.get(field, 0) + lost
        return rows

    def _lost_to_resets(self, metrics: Iterable[str], sel: str, at: float,
                        deadline: _Deadline) -> list[tuple[dict[str, str], int]]:
        """(labels with the metric under _TAG, value lost to resets) of each series that reset."""
        lookback = self._lookback
        found: list[tuple[dict[str, str], int]] = []
        reset = tagged({m: f"resets({m}{sel}[{lookback}]) > 0" for m in metrics})
        for item in self._query(reset, at, deadline):
            labels = dict(item.get("metric", {}))
            metric = labels.pop(_TAG)
            raw = self._query(f"{metric}{selector(extra=labels)}[{lookback}]", at, deadline)
            # A selector also matches series with more labels (one with `model` beside one
            # without): keep only the series whose labels are exactly these.
            lost = sum(
                _lost_to_resets(float(v) for _, v in series.get("values", []))
                for series in raw
                if {k: v for k, v in series.get("metric", {}).items() if k != "__name__"} == labels
            )
            found.append(({**labels, _TAG: metric}, int(round(lost))))
        return found

    def _query(self, query: str, at: float, deadline: _Deadline) -> list[dict[str, Any]]:
        return self._call(
            lambda timeout: self._prom.custom_query(
                query, params={"time": f"{at:.3f}", "timeout": duration(timeout)}, timeout=timeout
            ),
            deadline,
        )

    def _call(self, request: Any, deadline: _Deadline) -> list[dict[str, Any]]:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise BackendUnavailable(
                f"Prometheus at {self._shown_url} unreachable: no answer within {deadline.seconds:g}s"
            )
        try:
            result = request(remaining)
        except requests.Timeout as exc:
            raise BackendUnavailable(
                f"Prometheus at {self._shown_url} unreachable: no answer within {deadline.seconds:g}s"
            ) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            # Without retries urllib3 may raise its own connection errors unwrapped.
            raise BackendUnavailable(
                f"Prometheus at {self._shown_url} unreachable: {type(exc).__name__}"
            ) from exc
        except PrometheusApiClientException as exc:
            raise BackendUnavailable(f"Prometheus at {self._shown_url} failed the query: {exc}") from exc
        except ValueError as exc:  # a body that is not Prometheus' JSON
            raise BackendUnavailable(f"Prometheus at {self._shown_url} answered garbage: {exc}") from exc
        return list(result or [])


def _lost_to_resets(values: Iterable[float]) -> float:
    """What a counter had reached before each of its resets (a drop in value)."""
    lost = 0.0
    previous: float | None = None
    for value in values:
        if previous is not None and value < previous:
            lost += previous
        previous = value
    return lost


def _counts(result: list[dict[str, Any]], group: tuple[str, ...]) -> dict[Key, dict[str, int]]:
    rows: dict[Key, dict[str, int]] = defaultdict(dict)
    for item in result:
        labels = item.get("metric", {})
        key = tuple(labels.get(name, "") for name in group)
        rows[key][METRICS[labels[_TAG]]] = _number(item["value"][1])
    return rows


def _row(team: str, user: str, model: str, counts: Mapping[str, int]) -> UsageRow:
    return UsageRow(
        team_id=team,
        user_id=user,
        model=model,
        tokens=counts.get("tokens", 0),
        authorized_calls=counts.get("authorized_calls", 0),
        limited_calls=counts.get("limited_calls", 0),
    )
