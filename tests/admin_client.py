"""Two ways to call the admin API with one interface: straight into the function targets
(a werkzeug request handed to the target, as functions-framework would), or over real HTTPS
to a running `python -m local serve`."""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

import flask
import httpx
from werkzeug.test import EnvironBuilder

from local.admin import function_targets
from shared.errors import MaasError
from functions._http import error_response
from shared.routes import resolve

_ADMIN = object()


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    text: str


class AdminClient:
    def __init__(self, admin_key: str) -> None:
        self.admin_key = admin_key

    def _headers(self, auth: object, headers: dict[str, str] | None, has_body: bool) -> dict[str, str]:
        merged = {"Content-Type": "application/json"} if has_body else {}
        if auth is _ADMIN:
            merged["Authorization"] = f"ADMIN {self.admin_key}"
        elif isinstance(auth, str):
            merged["Authorization"] = auth
        merged.update(headers or {})
        return merged

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        auth: object = _ADMIN,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        if json is not None:
            content = jsonlib.dumps(json).encode()
        return self._send(method, path, content, self._headers(auth, headers, content is not None))

    def _send(self, method: str, path: str, content: bytes | None, headers: dict[str, str]) -> Reply:
        raise NotImplementedError


def _reply(status: int, text: str, headers: dict[str, str]) -> Reply:
    try:
        body = jsonlib.loads(text) if text else None
    except ValueError:
        body = None
    return Reply(status=status, body=body, headers=headers, text=text)


class DirectClient(AdminClient):
    def _send(self, method: str, path: str, content: bytes | None, headers: dict[str, str]) -> Reply:
        environ = EnvironBuilder(path=path, method=method, data=content, headers=headers).get_environ()
        request = flask.Request(environ)
        try:
            route, _ = resolve(method, path.partition("?")[0])
            response = function_targets()[route.target](request)
        except MaasError as error:
            response = error_response(error)
        return _reply(response.status_code, response.get_data(as_text=True), dict(response.headers))


class HttpClient(AdminClient):
    def __init__(self, admin_key: str, base_url: str) -> None:
        super().__init__(admin_key)
        self.http = httpx.Client(base_url=base_url, verify=False, timeout=30)

    def _send(self, method: str, path: str, content: bytes | None, headers: dict[str, str]) -> Reply:
        response = self.http.request(method, path, content=content, headers=headers)
        return _reply(response.status_code, response.text, dict(response.headers))
