"""Knative Eventing's part on one machine: the cleanup function's CloudEvents, delivered in-process.

- a PingSource: a `dev.knative.sources.ping` event every `interval_s` seconds;
- an ApiServerSource: a `dev.knative.apiserver.resource.delete` event for each team that has
  disappeared, carrying the team Secret's shape (kind, name, namespace, labels) as `data`.

Deleted teams are noticed without the core knowing about this module: the service wraps the
Context's `teams_changed` callback (called after every committed team change) and, on its own
thread, compares the team ids with the ones it saw last. The ping compares too, so a team
deleted by another process is still followed by its event.

Events go through `functions.cleanup.handle`, the same code the `cleanup` target runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from cloudevents.http import CloudEvent

from functions.cleanup import handle
from shared import cleanup as core
from shared.context import Context
from shared.schemas import CleanupSummary
from shared.store.kubeshapes import (
    RESOURCE_TYPE,
    TEAM_ID_LABEL,
    TEAM_TYPE,
    team_secret_name,
)

log = logging.getLogger("maas.events")

_PING_SOURCE = "/apis/v1/namespaces/{namespace}/pingsources/maas-cleanup"
_APISERVER_SOURCE = "https://kubernetes.default.svc"
_TEAMS_CHANGED = "teams-changed"
_STOP = "stop"


def ping_event(namespace: str) -> CloudEvent:
    return CloudEvent({"type": core.PING, "source": _PING_SOURCE.format(namespace=namespace)}, {})


def team_deleted_event(namespace: str, team_id: str) -> CloudEvent:
    name = team_secret_name(team_id)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {RESOURCE_TYPE: TEAM_TYPE, TEAM_ID_LABEL: team_id},
        },
    }
    attributes = {
        "type": core.SECRET_DELETED[0],
        "source": _APISERVER_SOURCE,
        "subject": f"/api/v1/namespaces/{namespace}/secrets/{name}",
    }
    return CloudEvent(attributes, secret)


FOLLOW_EVERY_S = 0.5


class EventsService:
    """Runs the sweep on a timer and follows team deletes; `start()`/`stop()` like the servers."""

    def __init__(self, ctx: Context, *, interval_s: float, keep: int = 100) -> None:
        # What `make run` prints beside the servers' URLs.
        self.url = f"in-process, sweep every {interval_s:g}s"
        self._ctx = ctx
        self._interval_s = interval_s
        self._inbox: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="cleanup-events", daemon=True)
        self._original: Callable[[], None] | None = None
        self._known: set[str] = set()
        # The latest summaries, newest last: what `make run` did, for logs and tests.
        self.delivered: deque[CleanupSummary] = deque(maxlen=keep)
        self._delivered_cond = threading.Condition()

    def start(self) -> None:
        self._known = {team.team_id for team in self._ctx.store.list_teams()}
        original = self._ctx.teams_changed
        self._original = original

        def teams_changed() -> None:
            original()
            self._inbox.put(_TEAMS_CHANGED)

        self._ctx.teams_changed = teams_changed
        self._thread.start()

    def stop(self) -> None:
        if self._original is not None:
            self._ctx.teams_changed = self._original
        self._inbox.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def wait_for(self, predicate: Callable[[CleanupSummary], bool], timeout: float) -> CleanupSummary | None:
        """The first delivered summary matching `predicate`, waiting up to `timeout` seconds."""
        with self._delivered_cond:
            found: list[CleanupSummary] = []

            def matched() -> bool:
                found[:] = [s for s in self.delivered if predicate(s)][:1]
                return bool(found)

            self._delivered_cond.wait_for(matched, timeout=timeout)
            return found[0] if found else None

    # -- the events thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                message = self._inbox.get(timeout=self._interval_s)
            except queue.Empty:
                message = core.PING
            if message == _STOP:
                return
            # A burst of team changes (each queues a message) is followed once: each following
            # reads every team, and 10,000 teams read per admin write kept this thread, in the
            # gateway's process, busy long after the writes (bench/admin.py).
            stopping = False
            while True:
                try:
                    queued = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if queued == _STOP:
                    stopping = True
                    break
                if queued == core.PING:
                    message = core.PING
            try:
                self._follow_deletes()
                if message == core.PING:
                    self._deliver(ping_event(self._ctx.settings.namespace))
            except Exception:  # noqa: BLE001 - one failed round must not stop the next ones
                log.exception("cleanup event delivery failed; retrying on the next tick")
            if stopping:
                return
            if message != core.PING:
                # At most two followings a second while admins write: each reads every team, on
                # the gateway's process (at 10,000 teams, back-to-back followings held its p50 at
                # 8x idle during writes). What changes meanwhile is taken by the next one.
                time.sleep(FOLLOW_EVERY_S)

    def _follow_deletes(self) -> None:
        now = {team.team_id for team in self._ctx.store.list_teams()}
        gone = sorted(self._known - now)
        self._known = now
        for team_id in gone:
            self._deliver(team_deleted_event(self._ctx.settings.store_namespace, team_id))

    def _deliver(self, event: CloudEvent) -> None:
        summary = handle(self._ctx, event)
        if summary.deleted_keys or summary.expired_keys or summary.revoked_keys:
            log.info(
                "cleanup (%s): deleted %s, expired %s, revoked %s",
                event["type"], summary.deleted_keys, summary.expired_keys, summary.revoked_keys,
            )
        with self._delivered_cond:
            self.delivered.append(summary)
            self._delivered_cond.notify_all()
