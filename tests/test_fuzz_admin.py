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
same requests every time.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from requests.adapters import HTTPAdapter
import schemathesis
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from shared.keymaterial import generate_admin_key
from shared.openapi import openapi_document
from tests.runtime import Runtime, start_runtime

ADMIN_KEY = generate_admin_key()
TEAM = "fuzz-team"
USER = "fuzz-user"
# A placeholder the generator may pick for {secret_name}; each case swaps in the live handle of
# the seeded key (which a previous case may have deleted or rotated away, so it changes).
SEEDED_KEY = "seeded-key-handle"
SEED_VALUES = {"team_id": TEAM, "user_id": USER, "secret_name": SEEDED_KEY}
EXAMPLES_PER_OPERATION = 40
# Anything shaped like an API key: `maas_` + 43 url-safe characters.
API_KEY_SHAPE = re.compile(r"maas_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
ISSUING = {"create_key", "rotate_key"}
# Deleting a team or key, revoking and rotating (POST /keys/.../*) may take a seed away.
DESTRUCTIVE_METHODS = {"DELETE", "POST"}
# Missing or wrong credentials, in turn. An active API key is wrong only where the admin key is
# required; {active} variants are skipped for operations that accept API keys.
BAD_AUTH = ("", "ADMIN ", "ADMIN wrong-admin-key-0123456789", "APIKEY {revoked}", "Bearer {revoked}",
            "Basic {admin}", "{admin}", "ADMIN {admin}x", "APIKEY {active}", "Bearer {active}", "ADMIN {active}")


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
    bad_auth: Iterator[str]


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
                yield Fuzzing(runtime, seeds, session, itertools.cycle(BAD_AUTH))
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
    response = case.call_and_validate(
        base_url=fuzzing.runtime.admin_url,
        session=fuzzing.session,
        headers={"Authorization": f"ADMIN {ADMIN_KEY}"},
        # The document gives shapes, not every rule: a non-zero duration, an expiry in the
        # future, expires_in or expires_at but not both, a grace of at most 30 days. Breaking
        # one is a documented 422 naming the field, so schema-valid data may be refused.
        excluded_checks=[positive_data_acceptance],
        verify=False,
    )
    check_answer(fuzzing, case, response.status_code, response.text)
    fuzzing.seeds.dirty |= case.operation.method.upper() in DESTRUCTIVE_METHODS and response.status_code < 300

    security = case.operation.definition.raw.get("security")
    # A method the path does not serve is a 405 whoever asks; credentials matter past routing.
    if security and case.method.upper() == case.operation.method.upper():
        # The same request with missing or wrong credentials: 401, and nothing leaks.
        admin_only = security == [{"AdminKey": []}]
        template = next(t for t in fuzzing.bad_auth if admin_only or "{active}" not in t)
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
