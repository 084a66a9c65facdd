"""Property-based fuzzing of the admin API from its own OpenAPI document (schemathesis).

The contract under test, for every documented operation, over real HTTPS to a running
`python -m local serve`:

- a user's mistake never gets a 5xx;
- the status is one the operation documents, and a JSON body conforms to its schema;
- an error body has the `error` field;
- neither the admin key nor any API key appears in a response, except the one key a
  create_key / rotate_key response issues (the only place `api_key` may appear);
- without credentials, or with wrong ones, the answer is always 401.

Generation is derandomized with a fixed seed and bounded per operation, so a CI run makes the
same requests every time. Beyond what the document's schemas give, the generator also picks the
extremes that were 500s (issue 12): instants from year 1 to 9999 with offsets up to a day
wherever a date-time goes; and hypothesis tests of their own put what the schemas leave out
(JSON nested past the recursion limit, NaN, 1e400, thousands of digits, integers beyond int64,
60 kB ids) into any body field, query parameter and path id.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datetime import datetime
from urllib.parse import quote

import httpx
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
import schemathesis
from schemathesis import Case
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from shared.keymaterial import generate_admin_key
from shared.openapi import openapi_document
from shared.routes import ROUTES
from tests.runtime import Runtime, start_runtime

ADMIN_KEY = generate_admin_key()
TEAM = "fuzz-team"
USER = "fuzz-user"
# A placeholder the generator may pick for {secret_name}; each case swaps in the live handle of
# the seeded key (which a previous case may have deleted or rotated away, so it changes).
SEEDED_KEY = "seeded-key-handle"
SEED_VALUES = {"team_id": TEAM, "user_id": USER, "secret_name": SEEDED_KEY}
EXAMPLES_PER_OPERATION = 40
# How often each operation is sent each wrong credential, each time with another case's input.
# The credentials are checked before anything of the request but its route is read
# (functions/_http.py `endpoint`), so more inputs cannot reach other code before the 401: every
# case of an operation was resent, 2,441 requests, for what 2 inputs per credential show.
BAD_AUTH_ROUNDS = 2
# Anything shaped like an API key: `maas_` + 43 url-safe characters.
API_KEY_SHAPE = re.compile(r"maas_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
ISSUING = {"create_key", "rotate_key"}
# Deleting a team or key, revoking and rotating (POST /keys/.../*) may take a seed away.
DESTRUCTIVE_METHODS = {"DELETE", "POST"}
# Missing or wrong credentials, in turn per operation. An active API key is wrong only where the
# admin key is required; {active} variants are skipped for operations that accept API keys.
BAD_AUTH = ("", "ADMIN ", "ADMIN wrong-admin-key-0123456789", "APIKEY {revoked}", "Bearer {revoked}",
            "Basic {admin}", "{admin}", "ADMIN {admin}x", "APIKEY {active}", "Bearer {active}", "ADMIN {active}")


# Offsets that push an instant near year 1 or 9999 out of what Python's dates hold.
OFFSETS = ["Z", "+00:00", "+23:59", "-23:59", "+05:30", "-01:00"]


def _rfc3339(moment: datetime, offset: str) -> str:
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}{offset}"


# Instants at the ends of Python's dates, and at the ends of the range the API takes.
EDGE_INSTANTS = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999999Z",
                 "0001-01-01T00:00:00Z", "8999-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "1970-01-01T00:00:00+23:59"]
# Mostly instants a client would send (so handlers run past the 422), the rest anywhere in
# years 1-9999, and the very ends.
DATE_TIMES = st.one_of(
    st.builds(_rfc3339, st.datetimes(datetime(2020, 1, 1), datetime(2100, 1, 1)), st.sampled_from(OFFSETS)),
    st.builds(_rfc3339, st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)), st.sampled_from(OFFSETS)),
    st.sampled_from(EDGE_INSTANTS),
)
schemathesis.openapi.format("date-time", DATE_TIMES)


def fuzz_document() -> dict[str, Any]:
    """Our document, with each path id sometimes an existing record: the generator picks the
    seeded value as often as a random one, so handlers run past their 404s."""
    document = copy.deepcopy(openapi_document())
    for operation in (op for path in document["paths"].values() for op in path.values()):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in SEED_VALUES:
                parameter["schema"] = {"anyOf": [{"enum": [SEED_VALUES[parameter["name"]]]}, parameter["schema"]]}
    return document


schema = schemathesis.openapi.from_dict(
    fuzz_document(),
    config=schemathesis.Config.from_dict(
        {
            "seed": 20250825,
            "generation": {"max-examples": EXAMPLES_PER_OPERATION, "deterministic": True, "database": "none"},
            "tls-verify": False,
        }
    ),
)


@dataclass
class Seeds:
    """The seeded team, user and key, put back before the next case once a case may have
    deleted, revoked or rotated them, so every case can find them."""

    http: httpx.Client
    secret_name: str = ""
    api_key: str = ""
    issued: set[str] = field(default_factory=set)
    revoked_key: str = ""
    # Set when a case may have removed a seed: checking before every case costs a request each.
    dirty: bool = True

    def create_key(self) -> dict[str, Any]:
        reply = self.http.post(f"/teams/{TEAM}/keys", json={"user_id": USER, "user_email": "fuzz@example.com"})
        assert reply.status_code == 201, reply.text
        created = reply.json()
        self.issued.add(created["api_key"])
        return created

    def ensure(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        reply = self.http.get(f"/teams/{TEAM}/keys")
        if reply.status_code == 404:
            created = self.http.post("/teams", json={"team_id": TEAM, "token_limit": 1000})
            assert created.status_code == 201, created.text
            keys: list[dict[str, Any]] = []
        else:
            assert reply.status_code == 200, reply.text
            keys = reply.json()["keys"]
        if not any(k["secret_name"] == self.secret_name and k["status"] == "active" for k in keys):
            created = self.create_key()
            self.secret_name, self.api_key = created["secret_name"], created["api_key"]


class _OneTlsContext(HTTPAdapter):
    """One TLS context for every connection. The admin API closes each connection (werkzeug),
    and without a context of its own urllib3 loads the system's CA store for every one: 20 ms
    a request, most of this test's time."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the runtime's self-signed certificate
        super().init_poolmanager(*args, ssl_context=context, **kwargs)


@dataclass
class Fuzzing:
    runtime: Runtime
    seeds: Seeds
    session: requests.Session
    bad_auth_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    """Per operation, how many of its cases were resent with wrong credentials."""


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzing]:
    runtime = start_runtime(Path(tmp_path_factory.mktemp("fuzz")), env={"ADMIN_KEY": ADMIN_KEY})
    try:
        with httpx.Client(base_url=runtime.admin_url, verify=False, timeout=30,
                          headers={"Authorization": f"ADMIN {ADMIN_KEY}"}) as http:
            seeds = Seeds(http=http)
            seeds.ensure()
            revoked = seeds.create_key()
            assert http.post(f"/keys/{revoked['secret_name']}/revoke").status_code == 200
            seeds.revoked_key = revoked["api_key"]
            seeds.ensure()
            with requests.Session() as session:
                session.mount("https://", _OneTlsContext())
                # No proxy settings to look up for 127.0.0.1: requests scanned the environment
                # for them twice a request, 3 s of this test.
                session.trust_env = False
                yield Fuzzing(runtime, seeds, session)
    finally:
        assert runtime.stop() == 0


def assert_no_secret(fuzzing: Fuzzing, target: str, text: str, issued: str | None) -> None:
    assert ADMIN_KEY not in text, f"{target}: the admin key is in the response"
    leaked = set(API_KEY_SHAPE.findall(text)) - {issued}
    assert not leaked, f"{target}: an API key is in the response"
    for key in fuzzing.seeds.issued - {issued}:
        assert key not in text, f"{target}: an earlier API key is in the response"


def field_names(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(field_names(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(field_names(item) for item in value))
    return set()


def check_answer(fuzzing: Fuzzing, case: Case, status: int, text: str) -> None:
    target = case.operation.definition.raw["operationId"]
    assert status < 500, f"{target}: {status} {text}"
    try:
        body = json.loads(text) if text else None
    except ValueError:
        pytest.fail(f"{target}: {status} with a body that is not JSON: {text[:200]!r}")
    issued = body.get("api_key") if isinstance(body, dict) and target in ISSUING and status == 201 else None
    if issued is not None:
        fuzzing.seeds.issued.add(issued)
    elif target != "openapi":  # the document names the field; it is not a key
        assert "api_key" not in field_names(body), f"{target}: api_key in a {status} response"
    assert_no_secret(fuzzing, target, text, issued)
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        # Under /v1 the error is OpenAI's object; elsewhere our message.
        message = error.get("message") if isinstance(error, dict) else error
        assert isinstance(message, str) and message, f"{target}: {status} {text}"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@schema.parametrize()
def test_admin_api_keeps_its_contract(case: Case, fuzzing: Fuzzing) -> None:
    fuzzing.seeds.ensure()
    if case.path_parameters and case.path_parameters.get("secret_name") == SEEDED_KEY:
        case.path_parameters["secret_name"] = fuzzing.seeds.secret_name
    if case.query:
        # requests sends nothing for a parameter whose value is None, [] or {}, nor a name
        # werkzeug can read for an empty one: a negative case's extra parameter would be lost,
        # and the valid request that remains would count as "invalid data accepted".
        case.query = {name or "_": "" if value is None or value == [] or value == {} else value
                      for name, value in case.query.items()}
    response = case.call_and_validate(
        base_url=fuzzing.runtime.admin_url,
        session=fuzzing.session,
        headers={"Authorization": f"ADMIN {ADMIN_KEY}"},
        # The document gives shapes, not every rule: a non-zero duration, an expiry in the
        # future, expires_in or expires_at but not both, a grace of at most 30 days. Breaking
        # one is a documented 422 naming the field, so schema-valid data may be refused.
        # ignored_auth resends a served request without credentials and with a made-up one,
        # wanting anything but a 2xx: the check below does that for every case, not only served
        # ones, with eleven kinds of missing or wrong credentials, wanting a 401. Its probes
        # also went through a client of their own, loading the system's CA store each time: a
        # third of this test's time for nothing the check below does not.
        excluded_checks=[positive_data_acceptance, ignored_auth],
        verify=False,
    )
    check_answer(fuzzing, case, response.status_code, response.text)
    fuzzing.seeds.dirty |= case.operation.method.upper() in DESTRUCTIVE_METHODS and response.status_code < 300

    security = case.operation.definition.raw.get("security")
    # A method the path does not serve is a 405 whoever asks; credentials matter past routing.
    label = case.operation.label
    admin_only = security == [{"AdminKey": []}]
    wrong = [t for t in BAD_AUTH if admin_only or "{active}" not in t]
    if security and case.method.upper() == case.operation.method.upper() \
            and fuzzing.bad_auth_sent[label] < BAD_AUTH_ROUNDS * len(wrong):
        # The same request with missing or wrong credentials: 401, and nothing leaks.
        template = wrong[fuzzing.bad_auth_sent[label] % len(wrong)]
        fuzzing.bad_auth_sent[label] += 1
        header = template.format(admin=ADMIN_KEY, revoked=fuzzing.seeds.revoked_key, active=fuzzing.seeds.api_key)
        headers = {"Authorization": header} if header else {}
        denied = case.call(base_url=fuzzing.runtime.admin_url, session=fuzzing.session, headers=headers,
                           verify=False)
        check_answer(fuzzing, case, denied.status_code, denied.text)
        assert denied.status_code == 401, f"{header[:6]!r}: {denied.status_code} {denied.text}"


@pytest.mark.parametrize(
    "body",
    [
        '{{"key": "{key}", "unexpected": 1}}',
        '{{"key": ["{key}"]}}',
        '{{"key": "{key}{padding}"}}',
        '{{"key": "{key}"',
        '["{key}"]',
    ],
    ids=["extra-field", "wrong-type", "too-long", "malformed", "not-an-object"],
)
def test_a_refused_delete_by_value_never_echoes_the_key(fuzzing: Fuzzing, body: str) -> None:
    """The one request that carries a key in its body: refusing it must not quote it back."""
    fuzzing.seeds.ensure()
    key = fuzzing.seeds.api_key
    reply = fuzzing.seeds.http.request(
        "DELETE", "/delete_key", content=body.format(key=key, padding="x" * 600).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code in (400, 422), reply.text
    assert key not in reply.text and key[5:25] not in reply.text
    assert ADMIN_KEY not in reply.text
    # The key survived the refused request.
    listed = fuzzing.seeds.http.get(f"/teams/{TEAM}/keys").json()["keys"]
    assert fuzzing.seeds.secret_name in {k["secret_name"] for k in listed}


# -- what no schema describes ------------------------------------------------------------------

NUMBER_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" + "0" * 5000, "1e30", str(2**63 - 1),
                   str(2**63), str(-(2**63) - 1), str(2**70), str(-(2**70))]


def _nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a": ' * depth + "1" + "}" * depth


# A raw JSON value: nested up to 30,000 levels (the body cap allows that), a number JSON does not
# have or SQLite cannot store, or a far instant.
RAW_JSON = st.one_of(
    st.builds(_nested, st.integers(min_value=50, max_value=30_000), st.sampled_from(["list", "object"])),
    st.sampled_from(NUMBER_LITERALS),
    st.sampled_from(EDGE_INSTANTS).map(json.dumps),
    DATE_TIMES.map(json.dumps),
)
# The same in a query string or a path segment.
RAW_TEXT = st.one_of(
    st.sampled_from(NUMBER_LITERALS[3:] + ["-1", "0"]),
    st.sampled_from(EDGE_INSTANTS),
    DATE_TIMES,
    st.integers(min_value=1, max_value=60_000).map(lambda n: "x" * n),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
)
BODY_ROUTES = [route for route in ROUTES if route.request is not None]
QUERY_ROUTES = [route for route in ROUTES if route.query is not None]
PATH_ROUTES = [route for route in ROUTES if route.params]
# No shrinking: the server keeps what earlier examples did (teams, keys), so a replay may not
# fail the same way; the first failing request, as generated, is the report.
_HOSTILE = settings(max_examples=80, derandomize=True, deadline=None, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _send(fuzzing: Fuzzing, method: str, path: str, content: bytes | None = None) -> requests.Response:
    headers = {"Authorization": f"ADMIN {ADMIN_KEY}"}
    if content is not None:
        headers["Content-Type"] = "application/json"
    try:
        return fuzzing.session.request(method, fuzzing.runtime.admin_url + path, data=content, headers=headers,
                                       verify=False, timeout=30)
    except requests.exceptions.ConnectionError as exc:
        # A kept-alive connection the server closed at its idle timeout (MAAS_ADMIN_IDLE_TIMEOUT)
        # just as this request went out: what every HTTP client retries once, on a new
        # connection. A server that died fails the retry too.
        if "RemoteDisconnected" not in str(exc):
            raise
        return fuzzing.session.request(method, fuzzing.runtime.admin_url + path, data=content, headers=headers,
                                       verify=False, timeout=30)


def _path(route: Any, fuzzing: Fuzzing) -> str:
    values = {**SEED_VALUES, "secret_name": fuzzing.seeds.secret_name}
    return route.path.format(**{name: values[name] for name in route.params})


def _assert_refused_or_served(fuzzing: Fuzzing, route: Any, response: requests.Response) -> None:
    assert response.status_code < 500, f"{route.target}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], response.text[:300]
        assert "Value error" not in response.text and "function-after" not in response.text
    assert_no_secret(fuzzing, route.target, response.text, response.json().get("api_key")
                     if route.target in ISSUING and response.status_code == 201 else None)
    fuzzing.seeds.dirty |= response.status_code < 300 and route.method in DESTRUCTIVE_METHODS


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@_HOSTILE
@given(data=st.data())
def test_extremes_in_any_body_field_are_4xx(fuzzing: Fuzzing, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(BODY_ROUTES))
    fields = sorted(route.request.model_fields) + ["unexpected"]
    chosen = data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    values = [data.draw(RAW_JSON) for _ in chosen]
    content = "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in zip(chosen, values)) + "}"
    if data.draw(st.booleans()):
        content = values[0]  # the whole body
    fuzzing.seeds.ensure()  # after drawing: a replay must draw the same, whatever the server did
    response = _send(fuzzing, route.method, _path(route, fuzzing), content.encode())
    _assert_refused_or_served(fuzzing, route, response)
    assert response.status_code in (200, 201, 400, 404, 409, 413, 422), response.text[:300]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@_HOSTILE
@given(data=st.data())
def test_extremes_in_any_query_or_path_are_4xx(fuzzing: Fuzzing, data: st.DataObject) -> None:
    in_query = data.draw(st.booleans())
    route = data.draw(st.sampled_from(QUERY_ROUTES if in_query else PATH_ROUTES))
    names = sorted(route.query.model_fields) if in_query else list(route.params)
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=1 if not in_query else 3, unique=True))
    texts = {name: quote(data.draw(RAW_TEXT), safe="") for name in chosen}
    fuzzing.seeds.ensure()  # after drawing: a replay must draw the same, whatever the server did
    if in_query:
        path = f"{_path(route, fuzzing)}?" + "&".join(f"{name}={text}" for name, text in texts.items())
    else:
        values = {**SEED_VALUES, "secret_name": fuzzing.seeds.secret_name, **texts}
        path = route.path.format(**{param: values[param] for param in route.params})
    response = _send(fuzzing, route.method, path, b"{}" if route.request is not None else None)
    _assert_refused_or_served(fuzzing, route, response)
