"""The admin API on one machine: one Flask app routing ROUTES to the same function targets
that run as separate Knative Services in a cluster, served (over TLS) by the server the image
runs them on (local/adminserver.py). `make run` runs it in a process of its own, as the image
does (local/adminprocess.py); `AdminServer` runs the same worker on a thread of this process,
for tests that install a Context here."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

import main
from functions._http import METRICS_PATH, error_response
from local.adminserver import AdminApplication, Limits, WorkerThread, gunicorn_options
from local.tls import ensure_certificate
from shared.errors import MaasError, MalformedRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from shared.routes import HTTP_ROUTES, resolve
from shared.settings import Settings

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
        if request.path == METRICS_PATH and request.method in ("GET", "HEAD"):
            # Not a route: every function target answers it (its process's refusal counts), as
            # each Knative Service does in a cluster; here one process serves them all.
            return table["health"](request)
        try:
            route, _ = resolve(request.method, request.path, HTTP_ROUTES)
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
                resolve(request.method, request.path, HTTP_ROUTES)
            except MaasError as ours:
                return error_response(ours)
        ours_for = _WERKZEUG_ERRORS.get(error.code or 0)
        if ours_for is None:
            return error
        return error_response(ours_for(error.description or error.name))

    app.wsgi_app = _logged(app.wsgi_app)  # type: ignore[method-assign]
    return app


log = logging.getLogger("maas.admin")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _request_path(environ: dict[str, Any]) -> str:
    """The path as the client sent it (the log's records are cleaned of keys and control
    characters where they are made, shared/logsafety), without its query string."""
    raw = environ.get("RAW_URI") or quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    return str(raw).partition("?")[0]


def _logged(app: WSGIApp) -> WSGIApp:
    """One plain line per request: method, path, status. No headers, no bodies, no query."""

    def logged(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            log.info("%s %s %s", environ.get("REQUEST_METHOD", "-"), _request_path(environ), status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return logged


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; OSError (EADDRINUSE) names a busy port before any server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # gunicorn's default backlog: where clients wait at the connection cap
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(listener: socket.socket, *, tls: bool) -> str:
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class AdminServer:
    """The admin API on a thread of this process; `stop()` returns once it has stopped."""

    def __init__(self, *, host: str, port: int, tls_dir: Path | None, settings: Settings | None = None) -> None:
        self._host, self._port, self._tls_dir = host, port, tls_dir
        self._settings = settings
        self._worker: WorkerThread | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        settings = self._settings or Settings()
        listener = listen(self._host, self._port)
        try:
            files = ensure_certificate(self._tls_dir) if self._tls_dir is not None else None
            options = gunicorn_options(settings, bind=f"{self._host}:{listener.getsockname()[1]}",
                                       certfile=str(files[0]) if files else None,
                                       keyfile=str(files[1]) if files else None)
            application = AdminApplication(create_admin_app, options, Limits.from_settings(settings))
            self._worker = WorkerThread(application, listener)
        except BaseException:
            listener.close()
            raise
        self.url = url_of(listener, tls=files is not None)
        self._thread = threading.Thread(target=self._worker.run, name="admin-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._worker is None or self._thread is None:
            return
        self._worker.stop()
        self._thread.join(timeout=15)
