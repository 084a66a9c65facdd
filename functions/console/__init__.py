"""The web console: server-rendered pages for admins, team admins and members, one function target
(`console`) beside the API on the same origin. functions/console/app.py has the pages; they act
only through the API's own targets (functions/console/api.py)."""

from __future__ import annotations

import flask
import functions_framework

from functions._http import METRICS_PATH
from shared import audit


@functions_framework.http
def console(request: flask.Request) -> flask.Response:
    """The console's pages (shared.routes.PAGES)."""
    if request.path == METRICS_PATH and request.method in ("GET", "HEAD"):
        # As every target: its process's refusal counts, for Prometheus to scrape from the pod.
        return flask.Response(audit.REFUSED.exposition(), status=200,
                              mimetype="text/plain; version=0.0.4; charset=utf-8")
    from functions.console.app import serve  # its templates and pygal load on the first page only

    return serve(request)
