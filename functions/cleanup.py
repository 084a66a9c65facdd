"""The `cleanup` CloudEvent function: Knative Eventing delivers ApiServerSource and PingSource
events here (binary or structured mode; functions-framework parses both).

functions-framework answers every CloudEvent "OK" and ignores the return value, so the summary
is sent by aborting with a ready response: the one way its CloudEvent view lets a function
choose its reply. A failure the caller should retry (the store unreachable) answers 503, so
Knative redelivers; handling is idempotent, so a redelivery is safe.
"""

from __future__ import annotations

import logging

import flask
import functions_framework
from cloudevents.abstract import AnyCloudEvent

from functions._context import context
from functions._http import error_response, json_response
from shared import cleanup as core
from shared.context import Context
from shared.errors import MaasError
from shared.schemas import CleanupSummary

log = logging.getLogger("maas.cleanup")


def handle(ctx: Context, event: AnyCloudEvent) -> CleanupSummary:
    """One event, in-process: what local/events.py calls and what the target wraps."""
    return core.on_event(ctx, event_type=event["type"], data=event.get_data())


@functions_framework.cloud_event
def cleanup(event: AnyCloudEvent) -> None:
    try:
        response = json_response(handle(context(), event))
    except MaasError as error:
        response = error_response(error)
    except Exception:  # noqa: BLE001 - the one place an unexpected error becomes a 500
        log.exception("unhandled error in cleanup (event type %s)", event["type"])
        response = error_response(MaasError("internal error"))
    flask.abort(response)
