"""The `cleanup` CloudEvent function: Knative Eventing delivers ApiServerSource and PingSource
events here (binary or structured mode; functions-framework parses both).

Every reply has an empty body; the status alone tells the Broker what happened (its filter's
rules, from its source, are in tests/cluster/SOURCES.md section 9):

- 202 handled (or ignored as not ours): the broker filter passes an empty 2xx on as success. A
  non-empty reply that is not a CloudEvent (functions-framework's "OK", a JSON summary) would
  be a 502 there, and the event redelivered: the summary goes to the log instead, one line;
- 5xx (503 when the store cannot be reached, 500 for a bug): retried by the Broker (the
  Triggers' `spec.delivery` in config/base/triggers.yaml); handling is idempotent, so a
  redelivery is safe. Errors that carry 404, 408, 409 or 429 keep them: also retried;
- 400 not a CloudEvent, 422 a CloudEvent that cannot be acted on (a delete event without an
  object): never retried, since a redelivery could only fail the same way.

functions-framework answers "OK" unless the function aborts, so every reply is an abort with a
ready response. Requests it refuses itself (not a CloudEvent: a 400 whose page echoes the request;
a GET: 405) go through `_refused`, installed on the app when main.py is loaded for the `cleanup`
target, which empties them too. Neither the event's data nor those pages are ever logged: a
Secret's data may be in them.
"""

from __future__ import annotations

import logging
import sys

import flask
import functions_framework
from cloudevents import exceptions as cloudevent_errors
from cloudevents.abstract import AnyCloudEvent
from werkzeug.exceptions import HTTPException

from functions._context import context
from shared import cleanup as core
from shared.context import Context
from shared.errors import MaasError
from shared.schemas import CleanupSummary

log = logging.getLogger("maas.cleanup")

TARGET = "cleanup"
HANDLED = 202
NOT_A_CLOUDEVENT = 400


def handle(ctx: Context, event: AnyCloudEvent) -> CleanupSummary:
    """One event, in-process: what local/events.py calls and what the target wraps.

    Raises MaasError: InvalidRequest for an event that cannot be acted on, BackendUnavailable
    when the store cannot be reached.
    """
    return core.on_event(ctx, event_type=event["type"], data=event.get_data())


def empty_reply(status: int) -> flask.Response:
    """A reply with a status and nothing else: no body, no content type."""
    response = flask.Response(b"", status=status)
    response.headers.pop("Content-Type", None)
    return response


def answer(event: AnyCloudEvent) -> flask.Response:
    """Handle `event` and choose the status; the summary is logged, never sent."""
    _ensure_logged()
    described = f"{event['type']} {event['id']}"
    try:
        summary = handle(context(), event)
    except MaasError as error:
        log.warning("cleanup %s: %d (%s) %s", described, error.status, "retried" if error.status >= 500
                    else "not retried", error.message)
        return empty_reply(error.status)
    except Exception:  # noqa: BLE001 - the one place an unexpected error becomes a 500
        log.exception("cleanup %s: 500, unhandled error", described)
        return empty_reply(500)
    # One line per event; the summary names keys by their public handle, never their value.
    log.info("cleanup %s: %d %s", described, HANDLED, summary.model_dump_json())
    return empty_reply(HANDLED)


@functions_framework.cloud_event
def cleanup(event: AnyCloudEvent) -> None:
    flask.abort(answer(event))


def _refused(error: HTTPException) -> flask.Response:
    """functions-framework's own refusals, emptied: its 400 page echoes the request's headers
    and body. An exception the CloudEvents SDK raised while parsing (a 500 there) is the
    sender's fault too: 400, so it is not retried."""
    _ensure_logged()
    status = error.code or 500
    if isinstance(getattr(error, "original_exception", None), cloudevent_errors.GenericException):
        status = NOT_A_CLOUDEVENT
    log.warning("cleanup: refused a request that is not a usable CloudEvent: %d %s",
                status, "(not a CloudEvent)" if status == NOT_A_CLOUDEVENT else error.name)
    return empty_reply(status)


def install(app: flask.Flask) -> None:
    """Empty every reply of `app` that functions-framework makes itself."""
    app.register_error_handler(HTTPException, _refused)
    # functions-framework's crash handler is registered for 500 by code, which Flask prefers.
    app.register_error_handler(500, _refused)


# functions-framework executes main.py inside the app context of the one app it is building;
# that import is where this target's app can be reached. Other targets' apps are left alone.
if flask.has_app_context() and flask.current_app.name == TARGET:
    install(flask.current_app)


def _ensure_logged() -> None:
    """Under the functions-framework CLI nothing configures logging, and INFO lines would be
    dropped: give this logger a handler of its own when nobody has configured any."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
