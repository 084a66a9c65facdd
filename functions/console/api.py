"""The console's one way to act: the API's own function targets, called in this process as the
person signed in (functions._http.SIGNED_IN_ENVIRON), with the request the API would get.

So a console action is exactly an API call: the route's check of its path and body, its access
rule (shared.access) for this person, its audit entry naming them, and its answer, whose error
message the page shows as it is. Nothing here decides who may do what.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import flask
from werkzeug.test import EnvironBuilder

from functions import keys, lifecycle, limits, me, members, teams, usage
from functions._http import SIGNED_IN_ENVIRON
from shared.routes import route_for
from shared.signin import SignedIn

Target = Callable[[flask.Request], flask.Response]
_MODULES = (keys, lifecycle, limits, me, members, teams, usage)


def _target(name: str) -> Target:
    for module in _MODULES:
        found = getattr(module, name, None)
        if callable(found):
            return found  # type: ignore[no-any-return]
    raise KeyError(f"no function target {name}")


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    # "console": refused before it was sent (a form the console could not turn into a request).
    source: str = "API"

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        """The API's error message as it is, with the fields it names."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return f"the API answered {self.status}"


def call(target: str, signed: SignedIn, *, params: Mapping[str, str] | None = None,
         query: Mapping[str, str | None] | None = None, body: Mapping[str, Any] | None = None,
         remote_addr: str | None = None) -> Answer:
    route = route_for(target)
    path = route.path.format(**{name: quote(value, safe="") for name, value in (params or {}).items()})
    given = {name: value for name, value in (query or {}).items() if value not in (None, "")}
    builder = EnvironBuilder(
        path=path, method=route.method, query_string=urlencode(given),
        data=None if body is None else json.dumps(dict(body)),
        content_type="application/json" if body is not None else None,
        environ_overrides={SIGNED_IN_ENVIRON: signed, "REMOTE_ADDR": remote_addr or "127.0.0.1"},
    )
    try:
        response = _target(target)(flask.Request(builder.get_environ()))
    finally:
        builder.close()
    text = response.get_data(as_text=True)
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return Answer(response.status_code, parsed)
