"""The gateway's request path: authenticate, pick the backend, limit, forward, count.

Bodies are parsed once (to read `model`, `max_tokens`, `stream`) and re-encoded only when they
must change: for streams (to inject `stream_options.include_usage`) or when the backend knows
the model under another name. Usage is read from the response's `usage.total_tokens` without
decoding the response. When the backend knows the model under another name (`upstream_model`),
the reply's `"model"` members are rewritten to the client's name with one regular-expression
substitution over the bytes: the whole body, or a stream's complete lines as they arrive.

The model table is swapped whole (`Gateway.use`) when the models file changes: a request takes
the routes of the moment it arrives, and a call in flight finishes on the route it started on.

Everything up to the upstream call runs synchronously in the server's parser callback. With a
kept-alive backend connection at hand (the common case), the `_Call` is driven by the
connection's parser callbacks: no task, future, coroutine or timer per request. Otherwise (a new
connection, or a retry) the same call runs as a coroutine over `Pool.request`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from local.gateway.accesslog import AccessLog, shown_path
from local.gateway.auth import Caller, KeyCache
from local.gateway.contexts import ContextKey, context_key
from local.gateway.limiter import Limiter, RedisLimiter, Reservation, TokenLimiter
from local.gateway.metrics import UsageMeter
from local.gateway.server import Request, Responder, status_line
from local.gateway.textcount import reply_tokens, reply_total, responses_stream_total, stream_tokens
from local.gateway.upstream import (
    Pool,
    Response,
    UpstreamConnectError,
    UpstreamReadTimeout,
    _Connection,
)
from local.gateway.writes import WriteBatch
from shared.catalog.base import ModelInfo
from shared.catalog.filecatalog import describe
from shared.catalog.listing import openai_model_list, visible
from shared.errors import (
    InvalidRequest,
    MaasError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    UpstreamError,
    UpstreamTimeout,
    openai_body,
)
from shared.limitplan import Budget, budgets_view
from shared.modelsfile import DEFAULT_MAX_CONTEXT, ModelBackend
from shared.rates import primary_index

log = logging.getLogger("maas.gateway")

# A token is at least a few bytes of JSON, so body bytes / 4 bounds the prompt from above for
# ordinary text without tokenizing it.
_PROMPT_BYTES_PER_TOKEN = 4
# At most 9 digits: a larger count is no real call's usage (and would overflow the ledger's
# SQLite integers, or int()'s digit limit); such a report is ignored like a missing one.
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d{1,9})(?![\d.eE])')
_JSON = {"Content-Type": "application/json"}
# How much of a stream is kept to count its text should no usage report come (a stream of a
# 4,096-token completion is about 1 MB of events).
_SEEN_MAX = 8 * 1024 * 1024
# Every endpoint of vLLM's OpenAI-compatible server that generates or embeds, metered and
# limited; any other path is a 404 in the OpenAI shape.
_PATHS = {
    b"/v1/chat/completions": b"/chat/completions",
    b"/v1/completions": b"/completions",
    b"/v1/responses": b"/responses",
    b"/v1/embeddings": b"/embeddings",
}
# The endpoints whose streams report usage only when `stream_options.include_usage` asks (the
# Responses API's stream always ends with it, in `response.completed`).
_USAGE_OPTION_PATHS = frozenset({b"/v1/chat/completions", b"/v1/completions"})
_GET_PATHS = (b"/health", b"/v1/models", b"/v1/me")
# The most names of the models a key may call that the 404 of an unknown model lists.
_MODELS_SHOWN = 20


def model_path(path: bytes) -> tuple[bytes, str] | None:
    """(`/v1/<endpoint>`, model) of `/<model>/v1/<endpoint>`, the URL a cluster's `maas-models`
    route serves (shared/modelroute.py); None for any other path. Two suffix tests, no regex:
    only paths that are not one of _PATHS get here."""
    for endpoint in _PATHS:
        if path.endswith(endpoint) and path[:1] == b"/":
            model = path[1 : len(path) - len(endpoint)]
            if model and b"/" not in model:
                return endpoint, model.decode("utf-8", "replace")
    return None

# What the HTTP server refuses by status before a request reaches the gateway.
_SERVER_REFUSALS: dict[int, type[MaasError]] = {408: RequestTimeout, 413: PayloadTooLarge}


def last_total_tokens(data: bytes, *, whole: bool = True) -> int | None:
    """The last `"total_tokens": N` in a response (a quote inside JSON text is escaped).
    `whole=False` for a stream's bytes so far: a number that ends where they end may go on in
    the next read ("2" of "202"), so it is not taken yet."""
    # Searched from the end: usage comes last in a reply, and replies can be long.
    end = len(data)
    while (at := data.rfind(b'"total_tokens"', 0, end)) >= 0:
        found = _TOTAL_TOKENS.match(data, at)
        if found is not None and (whole or found.end() < len(data)):
            return int(found.group(1))
        end = at
    return None


class DuplicateMember(ValueError):
    """A JSON object gives a member twice."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two `"max_tokens"` counts (Python's and vLLM's the last,
    # others the first): a body read one way by the gateway and another by a backend escapes
    # its reservation, so it is refused. About 1 µs a request.
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateMember(name)
            seen.add(name)
    return members


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members)


def _loads(body: bytes) -> Any:
    """json.loads(body), without its encoding sniffing for the usual UTF-8 object; a member
    given twice raises DuplicateMember."""
    if body[:1] == b"{" and body[1:2] != b"\x00":
        # What json.detect_encoding concludes for these first bytes: UTF-8.
        return _DECODER.decode(body.decode("utf-8", "surrogatepass"))
    return json.loads(body, object_pairs_hook=_unique_members)


_USAGE_OPTION = b',"stream_options":{"include_usage":true}}'

# A `"model": "<any JSON string>"` member. In valid JSON it cannot match inside a string value
# (a quote there is escaped), nor a "model" string value (a colon never follows one).
_MODEL_MEMBER = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def _without_usage_events(lines: bytes) -> bytes:
    """Complete SSE lines without the usage event (`"choices": []` with `"usage"`), which the
    gateway asked for and a client that did not ask may choke on (it reads choices[0])."""
    if b'"usage"' not in lines:
        return lines
    return b"\n".join(
        line for line in lines.split(b"\n")
        if not (line.startswith(b"data:") and b'"usage"' in line and _EMPTY_CHOICES.search(line))
    )


def renamer(name: str) -> Callable[[bytes], bytes]:
    """Rewrites every `"model"` member of a reply (or of complete SSE lines) to `name`."""
    member = b'"model":' + json.dumps(name).encode()
    return partial(_MODEL_MEMBER.sub, member.replace(b"\\", b"\\\\"))  # a template: \ is special


def _completions(body: dict[str, Any], path: bytes) -> int:
    """How many completions a request asks for: `n` (or `best_of`, which vLLM generates in full)
    for each prompt of a `/v1/completions` prompt list. A count a lenient backend would read
    differently from us (a string, a float) is refused rather than guessed."""
    copies = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or not 1 <= value <= MAX_COMPLETIONS:
            raise InvalidRequest(
                f"'{name}' must be an integer from 1 to {MAX_COMPLETIONS}, not {json.dumps(value)[:40]}")
        copies = max(copies, value)
    return copies * _prompts(body, path)


# OpenAI's own bound on `n`; more is no real use, and bounds what one reservation can be.
MAX_COMPLETIONS = 128

# The members each endpoint reads as a completion's length (vLLM: Chat Completions takes
# `max_completion_tokens`, else `max_tokens`; Completions `max_tokens`; Responses
# `max_output_tokens`). A member the endpoint does not read bounds nothing.
_LENGTH_MEMBERS = {
    b"/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    b"/v1/completions": ("max_tokens",),
    b"/v1/responses": ("max_output_tokens",),
}
# What makes a prompt longer than its bytes: media parts (an image URL stands for hundreds of
# tokens), and a Responses call continuing a conversation the backend stored.
_UNBOUNDED_PROMPT = (b'"image_url"', b'"input_image"', b'"input_audio"', b'"video_url"', b'"audio_url"',
                     b'"input_file"', b'"file"', b'"previous_response_id"', b'"conversation"')


def _prompts(body: dict[str, Any], path: bytes) -> int:
    """How many prompts a request sends: a Completions prompt list or an embeddings input list
    counts each (a list of ints is one tokenized prompt)."""
    given = body.get("input" if path == b"/v1/embeddings" else "prompt")
    return len(given) if type(given) is list and given and type(given[0]) is not int else 1


def _prompt_bound(raw: bytes, body: dict[str, Any], path: bytes, max_context: int) -> int:
    """The most tokens the prompt can be: a token is at least one byte of the body (a one-letter
    word, a one-digit token id are two), and no prompt exceeds the context; a prompt with media or
    a stored conversation is bounded by the context only."""
    ceiling = _prompts(body, path) * max_context
    if any(marker in raw for marker in _UNBOUNDED_PROMPT):
        return ceiling
    return min(len(raw), ceiling)


def _worst_cost(raw: bytes, body: dict[str, Any], path: bytes, known: int | None) -> int:
    """The most tokens this request can be charged: its prompt, plus every completion of every
    prompt at the length the endpoint reads (capped by the model's known context, `known`: its
    `max_context` in the models file, else what its backend's GET /v1/models says, contexts.py);
    when it sets none a backend reads as a plain number (absent, or "300" or 300.0, which a lax
    parser takes), every completion at the context length (vLLM generates until prompt and
    completion fill it; 4,096 when neither says). Never more than every completion filling a
    known context."""
    max_context = known or DEFAULT_MAX_CONTEXT
    if path == b"/v1/embeddings":
        return _prompt_bound(raw, body, path, max_context)  # nothing is generated
    completions = _completions(body, path)
    bound = 0
    for name in _LENGTH_MEMBERS[path]:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:  # (a bool is not an int here)
            bound = max_context  # read some other way by a lax backend: anything up to the context
            break
        bound = max(bound, value)
    filled = completions * max_context
    if not bound:
        return filled
    if known is None:  # an explicit length beyond the assumed context is the client's word
        return completions * bound + _prompt_bound(raw, body, path, max(max_context, bound))
    return min(filled, completions * min(bound, known) + _prompt_bound(raw, body, path, known))


def _with_usage_option(body: bytes) -> bytes | None:
    """A JSON object without a top-level `stream_options`, with one asking for usage.

    Spliced before the closing brace rather than re-encoded: the object parsed, so its last
    non-blank byte closes it, and it has a member (`model`), so a comma goes first.
    """
    end = body.rstrip()
    return end[:-1] + _USAGE_OPTION if end.endswith(b"}") else None


class _Route:
    """A model name bound to its backend and that backend's connection pool."""

    def __init__(self, backend: ModelBackend, pool: Pool) -> None:
        self.backend = backend
        self.pool = pool
        # The model's context when known: declared in the models file, or learned from the
        # backend (Gateway.learned); None: DEFAULT_MAX_CONTEXT is assumed.
        self.max_context = backend.max_context
        # Set when the backend answers under another name: what turns its name into the client's.
        self.rename = renamer(backend.name) if backend.renamed else None
        auth = b""
        if backend.api_key is not None:
            auth = b"Authorization: Bearer " + backend.api_key.get_secret_value().encode("latin-1") + b"\r\n"
        self._prefixes = {
            path: (
                b"POST " + pool.base_path.encode() + suffix + b" HTTP/1.1\r\nHost: "
                + pool.host_header.encode() + b"\r\nContent-Type: application/json\r\nAccept: */*\r\n" + auth
            )
            for path, suffix in _PATHS.items()
        }

    def request(self, path: bytes, payload: bytes) -> bytes:
        return self._prefixes[path] + b"Content-Length: %d\r\n\r\n" % len(payload) + payload


class _Call:
    """One admitted model call and what it has used, settled exactly once however it ends.

    `final` is set when the answer is known without a usage report (0: the backend was not
    reached or refused). Otherwise the backend's `usage.total_tokens` counts; when a call ends
    without one (a backend that reports none, the client gone, a stream cut) it is charged the
    prompt estimate plus the text it relayed (textcount.py), and counted as unmetered.

    On a kept-alive connection the call is driven by that connection's parser callbacks (it is
    the connection's Sink; see `start`), with the same outcomes as `Gateway._forward`: the
    answer relayed or sent whole, 502/504 naming the model, a stream cut when the backend
    stalls or fails. One object per request: this is the hot path.
    """

    __slots__ = (
        "caller",
        "conn",
        "events",
        "final",
        "gateway",
        "headers_in",
        "lines",
        "model",
        "parts",
        "path",
        "paused",
        "payload",
        "pending",
        "prompt_estimate",
        "relaying",
        "released",
        "reservation",
        "responder",
        "route",
        "settled",
        "stream",
        "seen",
        "seen_bytes",
        "started",
        "status",
        "tail",
        "total",
    )

    def __init__(self, gateway: Gateway, caller: Caller, model: str, route: _Route, path: bytes,
                 payload: bytes, stream: bool, reservation: Reservation, prompt_estimate: int,
                 strip_usage: bool = False) -> None:
        self.gateway = gateway
        self.caller = caller
        self.model = model
        self.route = route
        self.path = path
        self.payload = payload
        self.stream = stream
        self.reservation = reservation
        self.prompt_estimate = prompt_estimate
        self.events = 0
        self.total: int | None = None
        self.final: int | None = None
        self.settled = False
        self.conn: _Connection | None = None
        self.responder: Responder | None = None
        self.parts: list[bytes] = []
        self.headers_in = False
        self.relaying = False
        self.tail = b""
        # What was relayed of a stream (or the whole reply), kept until a usage report shows up:
        # without one, the call is charged from its text (textcount.py).
        self.seen: list[bytes] | None = []
        self.seen_bytes = 0
        self.started = time.monotonic()
        self.status = 499  # until an answer is sent: the client went away first (nginx's code)
        self.paused = False
        self.released = False
        self.pending = b""
        # What a stream's complete lines go through before the client sees them: the model's
        # name put back, and the usage event dropped when the client did not ask for it (the
        # gateway always asks, to count).
        rename = route.rename
        if strip_usage:
            self.lines: Callable[[bytes], bytes] | None = (
                _without_usage_events if rename is None else lambda data: _without_usage_events(rename(data))
            )
        else:
            self.lines = rename

    def tokens(self) -> int:
        if self.final is not None:
            return self.final
        if self.total is not None:
            return self.total
        seen = self.seen
        if self.path == b"/v1/responses" and self.stream and seen:
            # A Responses stream's usage is in its response.completed event, read as JSON: its
            # first events echo the request (its tools), where a client may write anything.
            found = responses_stream_total(b"".join(seen))
            if found is not None:
                return found
        # No usage report: what was relayed, and never nothing (the prompt was read).
        self.gateway._meter.unmetered(model=self.model)
        if seen is not None and not seen and not self.events:
            # Nothing came back (a client gone before a whole reply, a backend that timed out
            # while generating it): what it generated is unknown, so the request's worst cost.
            return self.reservation.amount
        if seen is None:  # more than _SEEN_MAX relayed: one token per event
            generated = self.events
        elif self.stream:
            generated = stream_tokens(b"".join(seen))
        else:
            # At least a byte a token: an upper bound, which the reservation caps (the backend
            # could not generate more than the request allowed).
            generated = min(reply_tokens(b"".join(seen)), self.reservation.amount)
        return max(1, self.prompt_estimate + generated)

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        tokens = self.tokens()
        team = self.caller.team
        gateway = self.gateway
        gateway._limiter.settle(self.reservation, tokens=tokens)
        user = self.caller.key.user_id
        gateway._meter.authorized(team_id=team.team_id, user_id=user, model=self.model, tokens=tokens)
        gateway.access.record(b"POST", self.path, self.status, self.model, team.team_id, user, tokens, self.started)

    def count_stream(self, tail: bytes, chunk: bytes) -> bytes:
        """Note the usage event and events in a relayed chunk; returns the tail for the next."""
        # The usage event may be split across reads: search with the previous tail.
        window = tail + chunk
        if b"total_tokens" in window and self.path != b"/v1/responses":
            total = last_total_tokens(window, whole=False)
            if total is not None:
                self.total = total
                self.seen = None  # reported: the text need not be counted
        self.events += chunk.count(b"data:")
        seen = self.seen
        if seen is not None and self.total is None:
            seen.append(chunk)
            self.seen_bytes += len(chunk)
            if self.seen_bytes > _SEEN_MAX:
                self.seen = None
        return window[-64:]

    def whole(self, data: bytes) -> None:
        """A whole 2xx reply: its usage report, or the reply kept to be counted without one."""
        # A Responses reply echoes the request (tools, metadata): its usage is read as JSON.
        self.total = reply_total(data) if self.path == b"/v1/responses" else last_total_tokens(data)
        if self.total is None:
            self.seen = [data]

    def lined(self, data: bytes) -> bytes:
        """A stream's complete lines, through `lines`; a line's start waits for its end in
        `pending`.

        A `"model"` member or a usage event never spans lines (JSON strings hold no raw
        newline), so rewriting whole lines catches every one, however the backend's writes
        split them.
        """
        assert self.lines is not None
        data = self.pending + data if self.pending else data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        return self.lines(data[:cut]) if cut else b""

    def rest(self) -> bytes:
        """What a stream still holds back in `pending` (its end, or up to a failure)."""
        pending, self.pending = self.pending, b""
        return self.lines(pending) if pending and self.lines is not None else pending

    def stream_head(self, status: int, content_type: bytes, responder: Responder) -> bytes:
        self.status = status
        return b"".join((
            status_line(status), b"Content-Type: ", content_type, b"\r\n", self.reservation.header_lines(),
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n", responder.close_head(),
        ))

    # -- driven by a kept-alive connection's callbacks -----------------------------------

    def start(self, conn: _Connection, responder: Responder) -> None:
        self.conn = conn
        self.responder = responder
        responder.on_cancel = self._cancel
        if self.stream:
            responder.on_pause = self._pause
            responder.on_resume = self._resume
        conn.begin(self, self.route.request(self.path, self.payload))
        if self.stream and responder.paused:
            self._pause()  # a pipelined call behind a response the client has not read yet
        self.gateway._watch.add(self)

    def _release(self) -> None:
        if not self.released and self.conn is not None:
            self.released = True
            self.route.pool.release(self.conn)  # unfinished: aborted, cancelling the backend's work

    def _pause(self) -> None:
        # A slow client pauses the backend's connection; its silence then is not a timeout.
        assert self.conn is not None
        self.paused = True
        self.conn.pause_reading()

    def _resume(self) -> None:
        assert self.conn is not None
        self.paused = False
        self.conn.last_read = self.conn.loop.time()
        self.conn.resume_reading()

    def on_headers(self) -> None:
        self.headers_in = True
        conn, responder = self.conn, self.responder
        assert conn is not None and responder is not None
        if self.stream and 200 <= conn.status < 300:
            self.relaying = True
            content_type = conn.header(b"content-type") or b"application/json"
            responder.cork()  # until on_read_end
            responder.start_raw(self.stream_head(conn.status, content_type, responder))

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)  # relayed (a stream) or sent whole, after this read

    def on_read_end(self) -> None:
        if self.relaying and self.responder is not None:
            if self.parts:
                self._relay_parts()
            self.responder.uncork()

    def _relay_parts(self) -> None:
        # What one read brought goes out as one chunk, whatever the backend's chunking was.
        parts = self.parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        assert self.responder is not None
        self.tail = self.count_stream(self.tail, data)  # as the backend sent it (usage included)
        if self.lines is not None:
            data = self.lined(data)
        self.responder.write_now(data)

    def _relay_rest(self) -> None:
        if self.pending:
            data = self.rest()  # (counted as it arrived)
            assert self.responder is not None
            self.responder.write_now(data)

    def on_complete(self) -> None:
        self.gateway._watch.discard(self)
        conn, responder = self.conn, self.responder
        assert conn is not None and responder is not None
        try:
            if self.relaying:
                if self.parts:
                    self._relay_parts()
                self._relay_rest()
                responder.end()
            else:
                parts = self.parts
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                status = conn.status
                if 200 <= status < 300:
                    self.whole(data)
                    if self.route.rename is not None:
                        data = self.route.rename(data)
                elif not 300 <= status < 600:
                    conn.keep_alive = False  # what follows on it cannot be trusted: not reused
                    self._release()
                    self.final = 0
                    self._fail(UpstreamError(_bad_status(self.route.backend.name, status)))
                    return
                else:
                    self.final = 0  # the backend refused the request: nothing generated
                content_type = conn.header(b"content-type") or b"application/json"
                self.status = status
                responder.send_raw(_whole_response(status, content_type, self.reservation, responder, data))
            self._release()
        except Exception:
            self._crash()
        finally:
            self.settle()

    def on_error(self, exc: Exception) -> None:
        self.gateway._watch.discard(self)
        conn, responder = self.conn, self.responder
        assert conn is not None and responder is not None
        model = self.route.backend.name
        try:
            if not self.headers_in:
                if not conn.got_bytes:
                    # A kept-alive connection the backend closed meanwhile: retry on another.
                    responder.on_cancel = self.settle
                    responder.on_pause = responder.on_resume = _nothing
                    responder.spawn(self.gateway._call_async(self, responder))
                    return
                self.final = 0
                self._fail(UpstreamError(f"model '{model}' is unavailable: {exc}"))
            elif self.relaying:
                log.warning("model '%s' failed mid-stream: %s", model, exc)
                if self.parts:
                    self._relay_parts()  # what arrived before the failure, as the client is owed
                self._relay_rest()
                self.settle()
                responder.abort()
            else:
                self._fail(UpstreamError(f"model '{model}' failed while answering: {exc}"))
        except Exception:
            self._crash()

    def quiet_since(self) -> float | None:
        """When the backend last sent something, or None while the client holds it back."""
        assert self.conn is not None
        return None if self.paused else self.conn.last_read

    def expire(self, timeout: float) -> None:
        """The backend sent nothing for `timeout` seconds (called by the gateway's watch)."""
        conn = self.conn
        assert conn is not None
        conn.detach()
        self._release()
        try:
            if self.relaying:
                log.warning("model '%s' stalled mid-stream; cutting the response", self.model)
                self._relay_rest()
                self.settle()
                assert self.responder is not None
                self.responder.abort()
                return
            # (Not charged 0: the request was sent, and a backend generating a whole reply
            # sends its headers last; with nothing back, the call is charged its worst cost.)
            self._fail(UpstreamTimeout(f"model '{self.route.backend.name}' did not answer within {timeout:g} s"))
        except Exception:
            self._crash()

    def _cancel(self) -> None:
        """The client went away: abort the backend's call and settle what was used."""
        self.gateway._watch.discard(self)
        assert self.conn is not None
        self.conn.detach()
        self._release()
        self.settle()

    def _fail(self, error: MaasError) -> None:
        self.status = error.status
        self.settle()
        assert self.responder is not None
        self.gateway.reject(self.responder, error)

    def _crash(self) -> None:
        log.exception("gateway error on POST %s", self.path.decode("latin-1"))
        self.status = 500
        self.settle()
        conn, responder = self.conn, self.responder
        assert conn is not None and responder is not None
        self.gateway._watch.discard(self)
        if conn.sink is self:
            conn.detach()
        self._release()
        if responder.started:
            responder.abort()
        else:
            self.gateway.reject(responder, MaasError("internal gateway error"))


class _Watch:
    """Read timeouts for the calls in flight: one periodic sweep, not a timer per call.

    A call times out when its backend has sent nothing for `timeout` seconds, noticed within
    a tick (timeout / 8, at most 0.25 s) of that moment. The timer runs only while calls are
    in flight.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._tick = min(timeout / 8, 0.25)
        self._calls: set[_Call] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.add = self._calls.add
        self.discard = self._calls.discard

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self._calls:  # else already armed (most calls) or idle
            self._timer = loop.call_later(self._tick, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        deadline = loop.time() - self._timeout
        expired = []
        for call in self._calls:
            since = call.quiet_since()
            if since is not None and since <= deadline:
                expired.append(call)
        for call in expired:
            self._calls.discard(call)
            call.expire(self._timeout)
        self.arm(loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Gateway:
    def __init__(
        self,
        *,
        keys: KeyCache,
        limiter: Limiter,
        meter: UsageMeter,
        backends: list[ModelBackend],
        upstream_timeout_s: float,
        models_created: int = 0,
        access: AccessLog | None = None,
    ) -> None:
        self.access = access if access is not None else AccessLog(enabled=False)
        self._keys = keys
        self._limiter = limiter
        self._meter = meter
        self._timeout = upstream_timeout_s
        # One batch for the client and backend sides: see writes.py.
        self.writes = WriteBatch()
        self._pools: dict[str, Pool] = {}
        self._routes: dict[str, _Route] = {}
        self._models: list[ModelInfo] = []
        # What backends said their context is (contexts.py), for the models that declare none.
        self._learned: dict[ContextKey, int] = {}
        self.use(backends, created=models_created)
        self._watch = _Watch(upstream_timeout_s)

    def use(self, backends: Sequence[ModelBackend], *, created: int) -> None:
        """Serve this model table from the next request on; call it on the gateway's loop.

        Servers still in the table keep their pool (and its kept-alive connections); a server
        no longer in it has its idle connections closed, and those of calls still on it are
        closed when those calls end.
        """
        pools: dict[str, Pool] = {}
        routes: dict[str, _Route] = {}
        for backend in backends:
            # One pool per backend server: models served by one server share its connections.
            server = backend.url
            pool = pools.get(server) or self._pools.get(server) or Pool(server, writes=self.writes)
            pools[server] = pool
            routes[backend.name] = _Route(backend, pool)
        dropped = [pool for server, pool in self._pools.items() if server not in pools]
        self._take_learned(routes)
        # What /v1/models lists: the same entries as the admin API's listing of the models file.
        self._routes, self._pools = routes, pools
        self._models = describe(list(backends), created=created)
        for pool in dropped:
            pool.close()

    def learned(self, contexts: dict[ContextKey, int]) -> None:
        """What the backends without a declared `max_context` say theirs is (contexts.py): in force
        from the next request on (call it on the gateway's loop). A backend left out is assumed
        to hold DEFAULT_MAX_CONTEXT again."""
        self._learned = contexts
        self._take_learned(self._routes)

    def _take_learned(self, routes: dict[str, _Route]) -> None:
        for route in routes.values():
            if route.backend.max_context is None:  # a declared context always wins
                route.max_context = self._learned.get(context_key(route.backend))

    def contexts(self) -> dict[str, int | None]:
        """Each model's context as reserved: declared or learned; None where DEFAULT_MAX_CONTEXT
        is assumed."""
        return {name: route.max_context for name, route in self._routes.items()}

    def close(self) -> None:
        self._watch.close()
        for pool in self._pools.values():
            pool.close()

    # -- entry points --------------------------------------------------------------------

    def handle(self, request: Request, responder: Responder) -> Coroutine[Any, Any, None] | None:
        """Answer now, or arrange the answer (a callback-driven call, or a coroutine to run)."""
        try:
            method, path = request.method, request.path
            if method == b"POST":
                if path in _PATHS:
                    return self._proxy(request, responder, path)
                found = model_path(path)
                if found is not None:
                    return self._proxy(request, responder, *found)
            if method == b"GET":
                if path == b"/health":
                    responder.send(200, _JSON, b'{"status":"ok"}')
                    self._log(request, 200)
                    return None
                if path == b"/v1/models":
                    self._list_models(request, responder)
                    self._log(request, 200)
                    return None
                if path == b"/v1/me":
                    return self._me(request, responder)
            shown = path.decode("latin-1")
            if path in _PATHS or path in _GET_PATHS or model_path(path) is not None:
                raise MethodNotAllowed(f"method {method.decode('latin-1')} is not allowed on {shown}")
            raise NotFound(f"no such endpoint: {shown}")
        except MaasError as exc:
            self.reject(responder, exc)
            self._log(request, exc.status)
        except Exception:
            log.exception("gateway error on %s %s", request.method.decode("latin-1"), shown_path(request.path))
            self.reject(responder, MaasError("internal gateway error"))
            self._log(request, 500)
        return None

    def _log(self, request: Request, status: int) -> None:
        """The access line of an answer that is not a settled model call's (those log at
        settlement): with the model once the body named a served one (a 429, a 403 for a model
        the key may not use), as the usage ledger attributes a refusal. A name that is not
        served stays out: it is the client's text, not a model."""
        caller = request.caller
        team, user = ("", "") if caller is None else (caller.team.team_id, caller.key.user_id)
        self.access.record(request.method, request.path, status, request.model, team, user, 0, time.monotonic())

    def check_head(self, method: bytes, path: bytes, headers: dict[bytes, bytes]) -> Caller | None:
        """Before a model call's body is read: the caller its key names (raises Unauthorized,
        so that a client without a valid key is refused before it can send megabytes). None
        for requests that are not model calls (their handling authenticates, or needs no key)."""
        if method == b"POST" and (path in _PATHS or model_path(path) is not None):
            value = headers.get(b"authorization")
            try:
                return self._keys.authenticate(None if value is None else value.decode("latin-1"))
            except MaasError as exc:
                self.access.record(method, path, exc.status, "", "", "", 0, time.monotonic())
                raise
        return None

    def reject(self, responder: Responder, error: MaasError | int, message: str = "") -> None:
        """Answer with an error in the OpenAI shape (also used by the server: 400, 408, 413)."""
        if isinstance(error, int):
            error = _SERVER_REFUSALS.get(error, MalformedRequest)(message)
        headers = {**_JSON, **error.headers}
        responder.send(error.status, headers, json.dumps(openai_body(error)).encode())

    def _me(self, request: Request, responder: Responder) -> Coroutine[Any, Any, None] | None:
        """Who a key holder is and their budget now: the answer to "why did I get a 429?"."""
        caller = request.caller = self._keys.authenticate(request.header(b"authorization"))
        limiter = self._limiter
        if isinstance(limiter, TokenLimiter):
            self._send_me(request, responder, caller, limiter.budgets(team=caller.team, key=caller.key))
            return None
        assert isinstance(limiter, RedisLimiter)
        return self._me_remote(request, responder, caller, limiter)

    async def _me_remote(self, request: Request, responder: Responder, caller: Caller, limiter: RedisLimiter) -> None:
        try:
            budgets = await limiter.budgets(team=caller.team, key=caller.key)
        except MaasError as exc:
            self.reject(responder, exc)
            self._log(request, exc.status)
            return
        self._send_me(request, responder, caller, budgets)

    def _send_me(self, request: Request, responder: Responder, caller: Caller, budgets: list[Budget]) -> None:
        key, team = caller.key, caller.team
        budget = budgets[primary_index(team.limits)]
        body = {
            "object": "key_holder",
            "user_id": key.user_id,
            "user_email": key.user_email,
            "team_id": team.team_id,
            "team_name": team.team_name,
            "key": {
                "secret_name": key.secret_name,
                "alias": key.alias,
                "expires_at": None if key.expires_at is None else key.expires_at.isoformat().replace("+00:00", "Z"),
                "models": list(key.models_allowed) or None,  # null: every model
            },
            "models": [model.name for model in visible(self._models, key)],
            # The team's primary rate (its short form), as before teams had several.
            "budget": {
                "token_limit": budget.limit,
                "time_window": budget.window,
                "limit_scope": budget.scope,
                "spent": budget.spent,
                "reserved": budget.reserved,
                "remaining": budget.remaining,
                "reset_seconds": budget.reset_s,
            },
            "limits": budgets_view(budgets),
        }
        responder.send(200, _JSON, json.dumps(body).encode())
        self._log(request, 200)

    def _list_models(self, request: Request, responder: Responder) -> None:
        caller = self._keys.authenticate(request.header(b"authorization"))
        listing = openai_model_list(visible(self._models, caller.key)).model_dump()
        routes = self._routes
        for model in listing["data"]:  # vLLM's member for the context, where it is known
            route = routes.get(model["id"])
            if route is not None and route.max_context is not None:
                model["max_model_len"] = route.max_context
        responder.send(200, _JSON, json.dumps(listing, separators=(",", ":")).encode())

    # -- model calls ---------------------------------------------------------------------

    def _parse(self, request: Request) -> dict[str, Any]:
        try:
            body = _loads(request.body)
        except DuplicateMember as exc:
            raise MalformedRequest(
                f"request body gives member {json.dumps(str(exc))[:80]} twice; send each member once") from None
        except ValueError as exc:
            raise MalformedRequest("request body is not valid JSON") from exc
        except RecursionError as exc:  # the decoder recurses per nesting level
            raise MalformedRequest("request body is nested too deeply") from exc
        if not isinstance(body, dict):
            raise MalformedRequest("request body must be a JSON object")
        return body

    def _proxy(self, request: Request, responder: Responder, path: bytes,
               path_model: str | None = None) -> Coroutine[Any, Any, None] | None:
        """`path` is the endpoint (`/v1/...`); `path_model` the model a `/<model>/v1/...` path
        names, which the body must then agree with (or leave out)."""
        # The hot path: helpers inlined where a call per request showed in the profile.
        caller = request.caller
        if caller is None:
            caller = request.caller = self._keys.authenticate(request.header(b"authorization"))
        body = self._parse(request)
        model = body.get("model")
        inserted = False
        if path_model is not None and model != path_model:
            if "model" in body:
                raise MalformedRequest(
                    f"the path asks for model {json.dumps(path_model)} but the body's 'model' is "
                    f"{json.dumps(model)}; send one model, or leave 'model' out of the body"
                )
            body["model"] = model = path_model
            inserted = True
        if type(model) is not str or not model:
            raise InvalidRequest("'model' is required and must be a string")
        route = self._routes.get(model)
        if route is None:
            raise NotFound(f"model '{model}' not found; {self._callable(caller)}")
        request.model = model  # (a served name: what the access line of a refusal names)
        if caller.key.models_allowed:
            caller.check_model(model)
        stream = body.get("stream")
        if stream is not True and stream is not False and stream is not None:
            # A lenient backend streams on 1 or "yes" too, and a stream the gateway does not know
            # for one gets no usage option and is charged nothing: only a boolean is a request.
            raise InvalidRequest(f"'stream' must be true or false, not {json.dumps(stream)[:40]}")
        stream = stream is True
        prompt_estimate = len(request.body) // _PROMPT_BYTES_PER_TOKEN
        if path == b"/v1/embeddings":
            stream = False  # (an embeddings reply is never a stream)
        estimate = _worst_cost(request.body, body, path, route.max_context)
        options = body.get("stream_options")
        # The gateway asks every stream for usage; a client that did not is not sent it.
        strip_usage = stream and path in _USAGE_OPTION_PATHS and not (
            type(options) is dict and options.get("include_usage") is True)
        payload = request.body
        if path in _USAGE_OPTION_PATHS and (route.rename is not None or inserted or (stream and "stream_options" in body)):
            if stream:
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            body["model"] = route.backend.served_model
            payload = json.dumps(body, separators=(",", ":")).encode()
        elif stream and path in _USAGE_OPTION_PATHS:
            payload = _with_usage_option(payload) or json.dumps(
                {**body, "stream_options": {"include_usage": True}}, separators=(",", ":")
            ).encode()
        elif route.rename is not None or inserted:
            body["model"] = route.backend.served_model
            payload = json.dumps(body, separators=(",", ":")).encode()
        if self._limiter.remote:
            return self._call_remote(caller, model, route, path, payload, stream, estimate, prompt_estimate,
                                     strip_usage, responder)
        reservation = self._admit(caller, model, estimate)
        call = _Call(self, caller, model, route, path, payload, stream, reservation, prompt_estimate, strip_usage)
        return self._launch(call, responder)

    def _callable(self, caller: Caller) -> str:
        """The models this key may call, for the 404 of a model it named wrong (an error path:
        the listing is made here, not kept). At most _MODELS_SHOWN names, never one the key may
        not call."""
        names = [model.name for model in visible(self._models, caller.key)]
        if not names:
            return "this key may call none of the models served here"
        shown = ", ".join(names[:_MODELS_SHOWN])
        more = len(names) - _MODELS_SHOWN
        return f"this key may call: {shown}" + (f" and {more} more (GET /v1/models lists them)" if more > 0 else "")

    def _launch(self, call: _Call, responder: Responder) -> Coroutine[Any, Any, None] | None:
        try:
            conn = call.route.pool.take_idle()
            if conn is not None:
                call.start(conn, responder)
                self._watch.arm(conn.loop)
                return None
            responder.on_cancel = call.settle
        except BaseException:
            call.settle()
            raise
        return self._call_async(call, responder)

    async def _call_remote(self, caller: Caller, model: str, route: _Route, path: bytes, payload: bytes,
                           stream: bool, estimate: int, prompt_estimate: int, strip_usage: bool,
                           responder: Responder) -> None:
        """A model call under a limiter that is awaited (Redis): admitted, then forwarded."""
        limiter = self._limiter
        assert isinstance(limiter, RedisLimiter)
        try:
            reservation = await limiter.admit(team=caller.team, key=caller.key, model=model, estimate=estimate)
        except MaasError as exc:
            if isinstance(exc, RateLimited):
                self._meter.limited(team_id=caller.team.team_id, user_id=caller.key.user_id, model=model,
                                    limit=exc.limit["name"] if exc.limit else "")
            self.reject(responder, exc)
            self.access.record(b"POST", path, exc.status, model, caller.team.team_id, caller.key.user_id, 0,
                               time.monotonic())
            return
        call = _Call(self, caller, model, route, path, payload, stream, reservation, prompt_estimate, strip_usage)
        responder.on_cancel = call.settle
        await self._call_async(call, responder)

    def _admit(self, caller: Caller, model: str, estimate: int) -> Reservation:
        limiter = self._limiter
        assert isinstance(limiter, TokenLimiter)
        try:
            return limiter.admit(team=caller.team, key=caller.key, model=model, estimate=estimate)
        except RateLimited as exc:
            self._meter.limited(team_id=caller.team.team_id, user_id=caller.key.user_id, model=model,
                                limit=exc.limit["name"] if exc.limit else "")
            raise

    async def _call_async(self, call: _Call, responder: Responder) -> None:
        """The call as a coroutine: when a connection must be opened, or on a retry."""
        try:
            await self._forward(call, responder)
        except MaasError as exc:
            call.status = exc.status
            call.settle()
            if responder.started:
                raise ConnectionAbortedError("error after the response started") from exc
            self.reject(responder, exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("gateway error on POST %s", call.path.decode("latin-1"))
            call.status = 500
            call.settle()
            if responder.started:
                raise ConnectionAbortedError("error after the response started") from None
            self.reject(responder, MaasError("internal gateway error"))
        finally:
            call.settle()

    async def _forward(self, call: _Call, responder: Responder) -> None:
        route = call.route
        model = route.backend.name
        try:
            upstream = await route.pool.request(route.request(call.path, call.payload), timeout=self._timeout)
        except UpstreamConnectError as exc:
            call.final = 0
            raise UpstreamError(f"model '{model}' is unavailable: {exc}") from exc
        except UpstreamReadTimeout as exc:  # sent, and maybe generating: not charged 0 (see expire)
            raise UpstreamTimeout(f"model '{model}' did not answer within {self._timeout:g} s") from exc
        try:
            if not 200 <= upstream.status < 600:
                upstream.discard()
                call.final = 0
                raise UpstreamError(_bad_status(model, upstream.status))
            content_type = upstream.header(b"content-type") or b"application/json"
            if call.stream and 200 <= upstream.status < 300:
                await self._relay(upstream, responder, call, content_type)
                return
            try:
                data = await upstream.read()
            except UpstreamReadTimeout as exc:
                raise UpstreamTimeout(f"model '{model}' did not answer within {self._timeout:g} s") from exc
            except UpstreamConnectError as exc:
                raise UpstreamError(f"model '{model}' failed while answering: {exc}") from exc
            if 200 <= upstream.status < 300:
                call.whole(data)
                if route.rename is not None:
                    data = route.rename(data)
            else:
                call.final = 0  # the backend refused the request: nothing generated
            call.status = upstream.status
            responder.send_raw(_whole_response(upstream.status, content_type, call.reservation, responder, data))
        finally:
            upstream.close()

    async def _relay(self, upstream: Response, responder: Responder, call: _Call, content_type: bytes) -> None:
        responder.start_raw(call.stream_head(upstream.status, content_type, responder))
        tail = b""
        lined = call.lines is not None
        try:
            async for chunk in upstream.chunks():
                tail = call.count_stream(tail, chunk)  # as the backend sent it (usage included)
                if lined:
                    chunk = call.lined(chunk)
                await responder.write(chunk)
        except UpstreamReadTimeout as exc:
            log.warning("model '%s' stalled mid-stream; cutting the response", call.model)
            await responder.write(call.rest())
            raise ConnectionAbortedError("upstream stalled") from exc
        except UpstreamConnectError as exc:
            log.warning("model '%s' failed mid-stream: %s", call.model, exc)
            await responder.write(call.rest())
            raise ConnectionAbortedError("upstream failed") from exc
        rest = call.rest()
        if rest:
            await responder.write(rest)
        responder.end()


def _bad_status(model: str, status: int) -> str:
    # A 1xx is not passed on either: the answer that follows it would be taken for the next
    # request's on a kept-alive connection.
    return f"model '{model}' answered with HTTP status {status}, which the gateway does not relay"


def _whole_response(status: int, content_type: bytes, reservation: Reservation, responder: Responder, data: bytes) -> bytes:
    return b"".join((
        status_line(status), b"Content-Type: ", content_type, b"\r\n", reservation.header_lines(),
        b"Content-Length: %d\r\n" % len(data), responder.close_head(), data,
    ))


def _nothing() -> None:
    pass
