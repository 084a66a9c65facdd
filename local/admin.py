"""The admin API on one machine: one Flask app routing ROUTES to the same function targets
that run as separate Knative Services in a cluster, served over TLS by werkzeug's threaded
server."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

import main
from functions._http import error_response
from local.tls import server_context
from shared.errors import MaasError, MalformedRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from shared.routes import resolve

Target = Callable[[flask.Request], flask.Response]
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_WERKZEUG_ERRORS: dict[int, type[MaasError]] = {
    400: MalformedRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
}


def function_targets() -> dict[str, Target]:
    return {name: getattr(main, name) for name in main.__all__}


class _AnyPath(PathConverter):
    """Every path, control characters included: werkzeug's `path` stops at a newline, so
    `/teams/%0A` would get its bare 404 instead of our routing (401 without credentials, then
    the 422 naming `team_id`)."""

    regex = r"[\s\S]*?"
    part_isolating = False  # werkzeug infers True for a regex without "/"


def create_admin_app(targets: Mapping[str, Target] | None = None) -> flask.Flask:
    table = dict(targets or function_targets())
    app = flask.Flask("maas-admin")
    app.url_map.converters["anypath"] = _AnyPath

    @app.route("/", defaults={"path": ""}, methods=_METHODS)
    @app.route("/<anypath:path>", methods=_METHODS)
    def dispatch(path: str) -> flask.Response:
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        try:
            route, _ = resolve(request.method, request.path)
        except MaasError as error:
            return error_response(error)
        return table[route.target](request)

    @app.errorhandler(HTTPException)
    def refused_by_werkzeug(error: HTTPException) -> flask.Response | HTTPException:
        """Werkzeug's own refusals in our JSON error shape, not its HTML page: a method outside
        _METHODS (TRACE, QUERY, ...) never reaches `dispatch`, so it gets its 405, with the
        path's real methods in `Allow`, from the routing table here."""
        request = flask.request
        if error.code == 405:
            try:
                resolve(request.method, request.path)
            except MaasError as ours:
                return error_response(ours)
        ours_for = _WERKZEUG_ERRORS.get(error.code or 0)
        if ours_for is None:
            return error
        return error_response(ours_for(error.description or error.name))

    return app


log = logging.getLogger("maas.admin")


class _RequestLog(WSGIRequestHandler):
    """One plain line per request: method, path, status, time. No headers, no bodies, no
    terminal colour codes (werkzeug's default), so the log reads the same in a file."""

    # werkzeug writes a response's head and body in separate sends; with Nagle on, the body
    # waits for the client's ACK of the head (a request took 16 ms here, 4 ms without Nagle).
    disable_nagle_algorithm = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info("%s %s %s", self.command, self.path.partition("?")[0], code)


class AdminServer:
    """The admin API in a background thread; `stop()` returns once it has stopped."""

    def __init__(self, *, host: str, port: int, tls_dir: Path | None) -> None:
        self._host, self._port, self._tls_dir = host, port, tls_dir
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        # werkzeug answers a busy port by printing and exiting the process; find out first, so
        # the caller gets an OSError it can explain.
        if self._port:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self._host, self._port))
        ssl_context = server_context(self._tls_dir) if self._tls_dir is not None else None
        self._server = make_server(
            self._host, self._port, create_admin_app(), threaded=True, ssl_context=ssl_context,
            request_handler=_RequestLog,
        )
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{self._host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
