"""Usage counting: the ledger (ranges, kept on disk) and /metrics (Limitador's series).

/metrics is rendered in Prometheus' text format with Limitador's exact names and labels
(`authorized_hits`, `authorized_calls`, `limited_calls`; `user`, `team`, `model`), so the same
PromQL works against Limitador in a cluster. prometheus_client's counters would add a `_total`
suffix, which Limitador's series do not have, hence this small renderer.
"""

from __future__ import annotations

from shared.ledger import UsageLedger

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAMILIES = (
    ("authorized_hits", "Tokens charged to authorized requests (Limitador's hits are tokens here)"),
    ("authorized_calls", "Requests admitted under the token limit"),
    ("limited_calls", "Requests refused with 429 over the token limit"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


class UsageMeter:
    """One call per request on the hot path: in-memory counters plus the ledger's buffer."""

    def __init__(self, ledger: UsageLedger) -> None:
        self._ledger = ledger
        # (team, user, model) -> [tokens, authorized calls, limited calls], since start.
        self._counters: dict[tuple[str, str, str], list[int]] = {}

    def _counts(self, team_id: str, user_id: str, model: str) -> list[int]:
        key = (team_id, user_id, model)
        counts = self._counters.get(key)
        if counts is None:
            counts = self._counters[key] = [0, 0, 0]
        return counts

    def authorized(self, *, team_id: str, user_id: str, model: str, tokens: int) -> None:
        counts = self._counts(team_id, user_id, model)
        counts[0] += tokens
        counts[1] += 1
        self._ledger.record(team_id=team_id, user_id=user_id, model=model, tokens=tokens, authorized_calls=1)

    def limited(self, *, team_id: str, user_id: str, model: str) -> None:
        self._counts(team_id, user_id, model)[2] += 1
        self._ledger.record(team_id=team_id, user_id=user_id, model=model, limited_calls=1)

    def exposition(self) -> bytes:
        lines: list[str] = []
        series = sorted(self._counters.items())
        for index, (name, help_text) in enumerate(_FAMILIES):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            for (team, user, model), counts in series:
                labels = f'model="{_escape(model)}",team="{_escape(team)}",user="{_escape(user)}"'
                lines.append(f"{name}{{{labels}}} {counts[index]}")
        return ("\n".join(lines) + "\n").encode("utf-8")
