"""Usage counting: the ledger (ranges, kept on disk) and /metrics (Limitador's series).

/metrics is rendered in Prometheus' text format with the names and label *shapes* Limitador
exposes under Kuadrant, so the same PromQL (shared/usage/prometheus.py) is tested locally
against what a cluster produces (tests/cluster/SOURCES.md, findings 5 and 16):

- `authorized_hits` (tokens) carries `user`, `team` and `model`: in a cluster it is counted by
  the response-phase Report, the only action the TelemetryPolicy's `requestBodyJSON("/model")`
  label is attached to.
- `authorized_calls` and `limited_calls` carry `user` and `team` only: they are counted by the
  request-phase Check, from which Kuadrant drops every label that reads the body. The ledger
  still counts calls per model; /metrics, like Limitador, cannot.
- every series carries `limitador_namespace`, which Limitador always adds: the
  `<route namespace>/<route name>` of the HTTPRoute the request went through. The local gateway
  is one route serving every model, so it is one fixed value (`LIMITADOR_NAMESPACE`), as in a
  cluster whose models share one HTTPRoute; a cluster with one route per model has one series
  set per route, which the reader sums.

prometheus_client's counters would add a `_total` suffix, which Limitador's series do not
have, hence this small renderer.
"""

from __future__ import annotations

from shared.ledger import UsageLedger

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `<route namespace>/<route name>` of the one route the local gateway stands for: namespace
# `local` (the catalog's namespace in local mode), route `maas-models` (the shared model route
# of finding 5).
LIMITADOR_NAMESPACE = "local/maas-models"

_TOKENS_HELP = "Tokens charged to authorized requests (Limitador's hits are tokens here)"
_AUTHORIZED_HELP = "Requests admitted under the token limit"
_LIMITED_HELP = "Requests refused with 429 over the token limit"
_BY_LIMIT_HELP = ("Requests refused with 429, by the team and the name of the limit that refused them "
                  "(Limitador's --limit-name-in-labels would put it on limited_calls)")
_UNMETERED_HELP = ("Model calls that ended without a usage report from the backend (charged the prompt "
                   "estimate plus their text at 4 bytes a token)")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(**labels: str) -> str:
    """Labels in Prometheus' text format, sorted by name (the order Limitador's exporter uses)."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(labels.items()))


class UsageMeter:
    """One call per request on the hot path: in-memory counters plus the ledger's buffer."""

    def __init__(self, ledger: UsageLedger) -> None:
        self._ledger = ledger
        # Since start: tokens per (team, user, model); [authorized, limited] calls per (team, user).
        self._tokens: dict[tuple[str, str, str], int] = {}
        self._calls: dict[tuple[str, str], list[int]] = {}
        # Calls per model that ended without a usage report (charged from their text instead).
        self._unmetered: dict[str, int] = {}
        # Refusals per (team, limit name): which of a team's limits binds in practice.
        self._by_limit: dict[tuple[str, str], int] = {}

    def _call_counts(self, team_id: str, user_id: str) -> list[int]:
        key = (team_id, user_id)
        counts = self._calls.get(key)
        if counts is None:
            counts = self._calls[key] = [0, 0]
        return counts

    def authorized(self, *, team_id: str, user_id: str, model: str, tokens: int) -> None:
        key = (team_id, user_id, model)
        self._tokens[key] = self._tokens.get(key, 0) + tokens
        self._call_counts(team_id, user_id)[0] += 1
        self._ledger.record(team_id=team_id, user_id=user_id, model=model, tokens=tokens, authorized_calls=1)

    def limited(self, *, team_id: str, user_id: str, model: str, limit: str) -> None:
        self._call_counts(team_id, user_id)[1] += 1
        by = (team_id, limit)
        self._by_limit[by] = self._by_limit.get(by, 0) + 1
        self._ledger.record(team_id=team_id, user_id=user_id, model=model, limited_calls=1)

    def unmetered(self, *, model: str) -> None:
        self._unmetered[model] = self._unmetered.get(model, 0) + 1

    def exposition(self) -> bytes:
        ns = LIMITADOR_NAMESPACE
        lines = [f"# HELP authorized_hits {_TOKENS_HELP}", "# TYPE authorized_hits counter"]
        for (team, user, model), tokens in sorted(self._tokens.items()):
            lines.append(f"authorized_hits{{{_labels(limitador_namespace=ns, model=model, team=team, user=user)}}} {tokens}")
        calls = sorted(self._calls.items())
        for name, help_text, index in (("authorized_calls", _AUTHORIZED_HELP, 0),
                                       ("limited_calls", _LIMITED_HELP, 1)):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            for (team, user), counts in calls:
                if not counts[index]:
                    continue  # as in Limitador, a series exists from its first increment
                lines.append(f"{name}{{{_labels(limitador_namespace=ns, team=team, user=user)}}} {counts[index]}")
        lines.append(f"# HELP maas_limited_calls_by_limit {_BY_LIMIT_HELP}")
        lines.append("# TYPE maas_limited_calls_by_limit counter")
        for (team, limit), count in sorted(self._by_limit.items()):
            lines.append(f"maas_limited_calls_by_limit{{{_labels(limit_name=limit, team=team)}}} {count}")
        lines.append(f"# HELP maas_unmetered_requests {_UNMETERED_HELP}")
        lines.append("# TYPE maas_unmetered_requests counter")
        for model, count in sorted(self._unmetered.items()):
            lines.append(f"maas_unmetered_requests{{{_labels(model=model)}}} {count}")
        return ("\n".join(lines) + "\n").encode("utf-8")
