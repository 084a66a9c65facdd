"""What each backend says its context length is, learned off the request path.

A model call without `max_tokens` can make vLLM generate until prompt and completion fill the
context, so the gateway reserves the context (proxy.py, `_worst_cost`). A models file entry may
declare it (`max_context`); for one that does not, the gateway asks the backend: vLLM answers
`GET {url}/models` with a ModelList whose ModelCards carry `max_model_len`, the engine's
context length (vllm/entrypoints/openai/protocol.py, `ModelCard.max_model_len`, set in
vllm/entrypoints/openai/serving_models.py, `show_available_models`). The card is the one whose
`id` is the entry's served model name (`upstream_model`, else `name`); a LoRA adapter's card has
no `max_model_len`, and takes its `parent`'s.

`ContextLearner` asks on a thread of its own, never on a request: at once when a models table
is taken (the gateway's start, every reload), then every RELEARN_INTERVAL_S (5 minutes: a vLLM
restarted with another `--max-model-len` is followed). One `GET` per backend server and key
(with its `api_key`, without any environment proxy, a LEARN_TIMEOUT_S timeout, at most 1 MiB
read), every server at once. A declared `max_context` always wins and is never asked about.
Until a backend answers, or when its list does not say, DEFAULT_MAX_CONTEXT is assumed, as
without this; a backend that cannot be reached or answers an error keeps what it said last.
Each backend's outcome is logged once at INFO (again only when it changes): the context
learned, or that none was and 4,096 is assumed.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.modelsfile import DEFAULT_MAX_CONTEXT, ModelBackend

log = logging.getLogger("maas.gateway")

# What a learned context may be: the bounds of a declared `max_context`.
MIN_CONTEXT = 1
MAX_CONTEXT = 10_000_000
LEARN_TIMEOUT_S = 2.0
RELEARN_INTERVAL_S = 300.0
# A model list is a few hundred bytes a model: more is no vLLM's answer.
_MAX_LISTING_BYTES = 1024 * 1024
# Straight to the backend, never through an environment proxy (as the gateway's own calls).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Which backend a learned context belongs to: (name, url, served model). A reload that moves a
# name to another backend never inherits the old backend's context.
ContextKey = tuple[str, str, str]
Fetch = Callable[[ModelBackend, float], Any]


def context_key(backend: ModelBackend) -> ContextKey:
    return (backend.name, backend.url, backend.served_model)


class Unreachable(Exception):
    """The backend's model list could not be had (refused, timed out, not JSON...)."""


def fetch_listing(backend: ModelBackend, timeout_s: float) -> Any:
    """The backend's `GET {url}/models`, parsed; raises Unreachable (a non-2xx answer too: a
    server without the endpoint, a wrong key, a vLLM still starting)."""
    request = urllib.request.Request(f"{backend.url}/models", method="GET", headers={"Accept": "application/json"})
    if backend.api_key is not None:
        request.add_header("Authorization", f"Bearer {backend.api_key.get_secret_value()}")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            data = response.read(_MAX_LISTING_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise Unreachable(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Unreachable(str(getattr(reason, "strerror", None) or reason)) from None
    if len(data) > _MAX_LISTING_BYTES:
        raise Unreachable("its model list is over 1 MiB")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise Unreachable("its model list is not JSON") from None


def _valid(value: Any) -> int | None:
    return value if type(value) is int and MIN_CONTEXT <= value <= MAX_CONTEXT else None


def context_from_listing(listing: Any, served_model: str) -> int | None:
    """The `max_model_len` of the card whose `id` is `served_model` (or of its `parent`, for an
    adapter's card without one); None when the listing does not say, or says something that is no
    context (not an int, out of 1..10,000,000)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    cards = {card["id"]: card for card in data if isinstance(card, dict) and isinstance(card.get("id"), str)}
    card = cards.get(served_model)
    if card is None:
        return None
    if card.get("max_model_len") is None and isinstance(card.get("parent"), str):
        card = cards.get(card["parent"], card)
    return _valid(card.get("max_model_len"))


class ContextLearner:
    """Learns the context of every backend without a declared `max_context` (see the module).

    `use(backends)` hands it a new table (learned at once, on its thread); `apply` is called
    after each round with every context known, by backend (`context_key`), and should put them
    in force. `wait(timeout)` returns once the latest table's round has been applied.
    """

    def __init__(self, apply: Callable[[dict[ContextKey, int]], None], *, timeout_s: float = LEARN_TIMEOUT_S,
                 interval_s: float | None = None, fetch: Fetch = fetch_listing) -> None:
        self._apply = apply
        self._timeout_s = timeout_s
        self._interval_s = interval_s if interval_s is not None else RELEARN_INTERVAL_S
        self._fetch = fetch
        self._lock = threading.Condition()
        self._backends: tuple[ModelBackend, ...] = ()
        self._asked = 0  # tables handed in
        self._done = 0  # the last table whose round was applied
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()  # one round at a time (the thread's, or a caller's)
        self._learned: dict[ContextKey, int] = {}
        self._said: dict[ContextKey, int | str] = {}  # the outcome last logged, per backend

    def use(self, backends: Sequence[ModelBackend]) -> None:
        with self._lock:
            self._backends = tuple(backends)
            self._asked += 1
        self._wake.set()

    def wait(self, timeout: float) -> bool:
        """Whether the backends of the latest table were asked (and what they said applied)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._done >= self._asked, timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="maas-model-contexts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Without waiting for a round's requests (the thread is a daemon and applies nothing more)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(0.2)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.learn()
            except Exception:
                log.exception("learning the models' context lengths failed")

    def learn(self) -> None:
        """One round: ask every backend without a declared context, then apply what is known."""
        with self._round:
            self._learn()

    def _learn(self) -> None:
        with self._lock:
            backends, table = self._backends, self._asked
        asking = [backend for backend in backends if backend.max_context is None]
        # One request per server and key: models served by one server share its list.
        servers: dict[tuple[str, str], ModelBackend] = {}
        for backend in asking:
            secret = "" if backend.api_key is None else backend.api_key.get_secret_value()
            servers.setdefault((backend.url, secret), backend)
        listings: dict[tuple[str, str], Any] = {}
        if len(servers) == 1:
            [(server, backend)] = servers.items()
            listings[server] = self._ask(backend)
        elif servers:
            with ThreadPoolExecutor(max_workers=min(8, len(servers)), thread_name_prefix="maas-model-context") as pool:
                for server, outcome in zip(servers, pool.map(self._ask, servers.values()), strict=True):
                    listings[server] = outcome
        learned: dict[ContextKey, int] = {}
        for backend in asking:
            secret = "" if backend.api_key is None else backend.api_key.get_secret_value()
            key = context_key(backend)
            listing = listings[(backend.url, secret)]
            if isinstance(listing, Unreachable):
                if key in self._learned:
                    learned[key] = self._learned[key]  # said before: a restart is no new answer
                    continue
                self._say(backend, key, "unreachable", f"could not ask its backend ({listing})")
                continue
            context = context_from_listing(listing, backend.served_model)
            if context is not None:
                learned[key] = context
                self._say(backend, key, context)
            else:
                self._say(backend, key, "unsaid",
                          f"its backend's GET /v1/models gives no max_model_len for {backend.served_model!r}")
        if self._stopping:
            return
        self._learned = learned
        try:
            self._apply(dict(learned))
        finally:
            with self._lock:
                self._done = max(self._done, table)
                self._lock.notify_all()

    def _ask(self, backend: ModelBackend) -> Any:
        try:
            return self._fetch(backend, self._timeout_s)
        except Unreachable as exc:
            return exc

    def _say(self, backend: ModelBackend, key: ContextKey, outcome: int | str, why: str = "") -> None:
        """Log a backend's outcome (a context, "unsaid" or "unreachable") once, and again when it changes."""
        if self._said.get(key) == outcome:
            return
        self._said[key] = outcome
        if type(outcome) is int:
            log.info("model %r: context length %d tokens, learned from its backend's GET /v1/models "
                     "(max_model_len); a request without max_tokens is reserved that many", backend.name, outcome)
        else:
            log.info("model %r: %s; assuming a %d-token context: set max_context in the models file to its "
                     "backend's context length (vLLM: --max-model-len)", backend.name, why, DEFAULT_MAX_CONTEXT)
