"""Every admin endpoint's success and failure paths, through the function targets directly
and over real HTTPS against `python -m local serve`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.context import Context
from shared.keymaterial import KEY_PREFIX, generate_admin_key
from tests.admin_client import AdminClient, DirectClient, HttpClient
from tests.runtime import Runtime, start_runtime

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def module_admin_key() -> str:
    return generate_admin_key()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, module_admin_key: str) -> Iterator[Runtime]:
    running = start_runtime(tmp_path_factory.mktemp("runtime"), env={"ADMIN_KEY": module_admin_key})
    yield running
    assert running.stop() == 0
    # Nothing the runtime printed or logged may contain the admin key or any API key.
    assert module_admin_key not in running.text
    assert not re.search(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{20,}}", running.text)


@pytest.fixture(params=["direct", "http", "kubernetes"])
def api(request: pytest.FixtureRequest, module_admin_key: str, tmp_path: Path) -> Iterator[AdminClient]:
    """The same endpoint tests: into the function targets on SQLite, over HTTPS against the
    local runtime, and into the function targets on the Kubernetes store (the API double, with
    the Kuadrant policies synced after every team change, as in a cluster)."""
    from pydantic import SecretStr

    from functions._context import install_context
    from shared.context import Context, build_context
    from shared.settings import Settings

    if request.param == "direct":
        install_context(build_context(Settings(admin_key=SecretStr(module_admin_key), data_dir=tmp_path)))
        yield DirectClient(module_admin_key)
    elif request.param == "kubernetes":
        from shared.kubeapply import policy_syncer
        from shared.store.kube import KubernetesStore
        from tests.kube_double import running_double

        settings = Settings(admin_key=SecretStr(module_admin_key), store="kubernetes", namespace="llm")
        with running_double() as (_, client):
            store = KubernetesStore(client, namespace="llm", key_selector=settings.key_selector)
            install_context(Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings)))
            yield DirectClient(module_admin_key)
    else:
        yield HttpClient(module_admin_key, request.getfixturevalue("runtime").admin_url)


def unique(prefix: str = "team") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_team(api: AdminClient, team_id: str, **fields: object) -> dict:
    body = {"team_id": team_id, "team_name": "Test Team", "policy": "test-tokens",
            "token_limit": 100000, "time_window": "1h", **fields}
    reply = api.call("POST", "/teams", json=body)
    assert reply.status == 201, reply.text
    return reply.body


def make_key(api: AdminClient, team_id: str, user_id: str, **fields: object) -> dict:
    reply = api.call("POST", f"/teams/{team_id}/keys",
                     json={"user_id": user_id, "user_email": f"{user_id}@test.com", **fields})
    assert reply.status == 201, reply.text
    return reply.body


# -- teams -------------------------------------------------------------------------------


def test_create_team_answers_the_team(api: AdminClient) -> None:
    team_id = unique()
    body = make_team(api, team_id)
    assert body == {
        "team_id": team_id, "team_name": "Test Team", "description": "", "policy": "test-tokens",
        "token_limit": 100000, "time_window": "1h", "limit_scope": "user",
        "created_at": body["created_at"], "key_count": 0, "user_count": 0, "max_keys_per_user": None, "max_key_lifetime": None,
        # The short form is the team's one rate.
        "limits": [{"name": "tokens", "limit": 100000, "window": "1h", "unit": "tokens", "scope": "user",
                    "model": None}],
    }
    assert TIMESTAMP.match(body["created_at"])


def test_create_team_defaults_and_day_windows(api: AdminClient) -> None:
    team_id = unique()
    reply = api.call("POST", "/teams", json={"team_id": team_id, "time_window": "7d", "limit_scope": "team"})
    assert reply.status == 201, reply.text
    assert (reply.body["team_name"], reply.body["policy"]) == (team_id, team_id)
    assert (reply.body["time_window"], reply.body["limit_scope"]) == ("168h", "team")


def test_duplicate_team_is_409(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    reply = api.call("POST", "/teams", json={"team_id": team_id})
    assert reply.status == 409
    assert team_id in reply.body["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("team_id", "Bad_Team"),
        ("team_id", "-leading"),
        ("team_id", "x" * 64),
        ("policy", "Not A Label"),
        ("token_limit", 0),
        ("token_limit", -5),
        ("token_limit", "100"),
        ("token_limit", 1.5),
        ("token_limit", True),
        ("time_window", "1 hour"),
        ("time_window", "0h"),
        ("time_window", "123456h"),
        ("limit_scope", "org"),
        ("description", "x" * 2000),
        ("surprise", "unknown fields are rejected"),
    ],
)
def test_invalid_team_fields_are_422_naming_the_field(api: AdminClient, field: str, value: object) -> None:
    body = {"team_id": unique(), field: value}
    reply = api.call("POST", "/teams", json=body)
    assert reply.status == 422, reply.text
    assert field in reply.body["error"]
    assert [d["field"] for d in reply.body["details"]] == [field]


def test_missing_team_id_is_422(api: AdminClient) -> None:
    reply = api.call("POST", "/teams", json={"team_name": "x"})
    assert reply.status == 422
    assert reply.body["details"][0]["field"] == "team_id"


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"team"', b"\xff\xfe"])
def test_malformed_bodies_are_400(api: AdminClient, content: bytes) -> None:
    reply = api.call("POST", "/teams", content=content, headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply.text
    assert "error" in reply.body


def test_oversized_body_is_413(api: AdminClient) -> None:
    reply = api.call("POST", "/teams", json={"team_id": unique(), "description": "x" * 100_000})
    assert reply.status == 413
    assert "exceeds" in reply.body["error"]


def test_list_teams_counts_keys_and_users(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    make_key(api, team_id, "alice")
    make_key(api, team_id, "alice")
    make_key(api, team_id, "bob")
    reply = api.call("GET", "/teams")
    assert reply.status == 200
    assert reply.body["total_teams"] == len(reply.body["teams"])
    listed = {t["team_id"]: t for t in reply.body["teams"]}
    assert listed[team_id]["key_count"] == 3
    assert listed[team_id]["user_count"] == 2
    assert set(listed[team_id]) >= {"created_at", "description", "key_count", "policy", "team_id",
                                    "team_name", "user_count"}


def test_get_team_details_keys_and_users(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    first = make_key(api, team_id, "mittens")
    second = make_key(api, team_id, "testuser")
    reply = api.call("GET", f"/teams/{team_id}")
    assert reply.status == 200
    body = reply.body
    assert body["keys"] == sorted([first["secret_name"], second["secret_name"]])
    assert (body["key_count"], body["user_count"]) == (2, 2)
    assert body["users"][0] == {
        "user_id": "mittens", "user_email": "mittens@test.com", "role": "member", "team_id": team_id,
        "team_name": "Test Team", "joined_at": first["created_at"], "policy": "test-tokens",
    }
    assert [u["user_id"] for u in body["users"]] == ["mittens", "testuser"]


def test_unknown_team_is_404(api: AdminClient) -> None:
    for method, path in (("GET", "/teams/ghost"), ("DELETE", "/teams/ghost"), ("GET", "/teams/ghost/keys")):
        reply = api.call(method, path)
        assert reply.status == 404, (method, path)
        assert "ghost" in reply.body["error"]
    assert api.call("PATCH", "/teams/ghost", json={"token_limit": 5}).status == 404
    assert api.call("POST", "/teams/ghost/keys", json={"user_id": "alice"}).status == 404


def test_bad_team_id_in_path_is_422(api: AdminClient) -> None:
    reply = api.call("GET", "/teams/Not_A_Label")
    assert reply.status == 422
    assert reply.body["details"][0]["field"] == "team_id"


def test_patch_is_partial(api: AdminClient) -> None:
    team_id = unique()
    created = make_team(api, team_id, description="before")
    reply = api.call("PATCH", f"/teams/{team_id}", json={"token_limit": 20, "time_window": "1m"})
    assert reply.status == 200, reply.text
    # The short form edits the team's one rate too.
    assert reply.body == {**created, "token_limit": 20, "time_window": "1m",
                          "limits": [{**created["limits"][0], "limit": 20, "window": "1m"}]}
    assert api.call("GET", f"/teams/{team_id}").body["description"] == "before"


def test_patch_is_atomic(api: AdminClient) -> None:
    team_id = unique()
    created = make_team(api, team_id)
    reply = api.call("PATCH", f"/teams/{team_id}", json={"token_limit": 5, "time_window": "soon"})
    assert reply.status == 422
    assert reply.body["details"][0]["field"] == "time_window"
    after = api.call("GET", f"/teams/{team_id}").body
    assert (after["token_limit"], after["time_window"]) == (created["token_limit"], created["time_window"])


@pytest.mark.parametrize("body", [{}, {"description": None}, {"team_id": "renamed"}, {"token_limit": 0}])
def test_bad_patches_are_422(api: AdminClient, body: dict) -> None:
    team_id = unique()
    make_team(api, team_id)
    reply = api.call("PATCH", f"/teams/{team_id}", json=body)
    assert reply.status == 422, reply.text


def test_delete_team_cascades_to_keys(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    keys = sorted(make_key(api, team_id, user)["secret_name"] for user in ("alice", "bob"))
    reply = api.call("DELETE", f"/teams/{team_id}")
    assert reply.status == 200
    assert reply.body["keys_deleted"] == 2
    assert reply.body["deleted_keys"] == keys
    assert api.call("GET", f"/teams/{team_id}").status == 404
    assert all(k["team_id"] != team_id for k in api.call("GET", "/users/alice/keys").body["keys"])
    for name in keys:
        assert api.call("DELETE", f"/keys/{name}").status == 404


# -- keys --------------------------------------------------------------------------------


def test_create_key_shows_the_key_once(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    created = make_key(api, team_id, "test-user")
    assert created["api_key"].startswith(KEY_PREFIX)
    assert len(created["api_key"]) >= len(KEY_PREFIX) + 43  # 256 bits, base64url
    assert re.match(rf"^apikey-test-user-{team_id}-[0-9a-f]{{8}}$", created["secret_name"])
    assert (created["status"], created["role"], created["policy"]) == ("active", "member", "test-tokens")
    for method, path in (("GET", f"/teams/{team_id}"), ("GET", f"/teams/{team_id}/keys"),
                         ("GET", "/users/test-user/keys"), ("GET", "/teams")):
        assert created["api_key"] not in api.call(method, path).text


def test_key_response_is_compact_json_for_the_quickstart(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    reply = api.call("POST", f"/teams/{team_id}/keys", json={"user_id": "u1", "user_email": "u1@test.com"})
    found = re.search(r'"api_key":"([^"]*)"', reply.text)
    assert found is not None and found.group(1) == reply.body["api_key"]


def test_every_json_answer_ends_with_a_newline(api: AdminClient) -> None:
    # Without it a terminal's prompt, or the next curl's output, runs on after the JSON.
    team_id = unique()
    answers = [
        api.call("POST", "/teams", json={"team_id": team_id, "team_name": "T", "token_limit": 10}),
        api.call("POST", f"/teams/{team_id}/keys", json={"user_id": "u1", "user_email": "u1@test.com"}),
        api.call("GET", "/teams"), api.call("GET", f"/teams/{team_id}/keys"),
        api.call("GET", "/nope"), api.call("PUT", "/teams"), api.call("POST", "/teams", content=b"{"),
        api.call("GET", "/health", auth=None), api.call("GET", "/teams", auth=None),
        api.call("DELETE", f"/teams/{team_id}"),
    ]
    for reply in answers:
        assert reply.text.endswith("}\n"), (reply.status, reply.text[-40:])
        assert reply.text.count("\n") == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", ""), ("user_id", "has space"), ("user_id", "x" * 64), ("user_id", ".dot"),
     ("user_email", "not-an-email"), ("models", "qwen"), ("models", ["a,b"]), ("role", "owner"),
     ("api_key", "no smuggling")],
)
def test_invalid_key_fields_are_422(api: AdminClient, field: str, value: object) -> None:
    team_id = unique()
    make_team(api, team_id)
    body = {"user_id": "alice", field: value}
    reply = api.call("POST", f"/teams/{team_id}/keys", json=body)
    assert reply.status == 422, reply.text
    assert reply.body["details"][0]["field"].split(".")[0] == field


def test_user_ids_that_are_not_dns_names_still_make_valid_handles(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    created = make_key(api, team_id, "Jane.Doe_2")
    assert re.match(rf"^apikey-jane-doe-2-{team_id}-[0-9a-f]{{8}}$", created["secret_name"])
    assert created["user_id"] == "Jane.Doe_2"


def test_list_team_keys(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    a = make_key(api, team_id, "mittens", models=["qwen3-0-6b-instruct", "vllm-simulator"])
    make_key(api, team_id, "testuser")
    reply = api.call("GET", f"/teams/{team_id}/keys")
    assert reply.status == 200
    body = reply.body
    assert (body["team_id"], body["team_name"], body["policy"]) == (team_id, "Test Team", "test-tokens")
    assert (body["total_keys"], body["total_users"]) == (2, 2)
    first = next(k for k in body["keys"] if k["secret_name"] == a["secret_name"])
    assert {k: first[k] for k in ("created_at", "models_allowed", "policy", "role", "status", "user_email",
                                  "user_id")} == {
        "created_at": a["created_at"], "models_allowed": "qwen3-0-6b-instruct,vllm-simulator",
        "policy": "test-tokens", "role": "member", "status": "active", "user_email": "mittens@test.com",
        "user_id": "mittens",
    }
    assert [u["user_id"] for u in body["users"]] == ["mittens", "testuser"]


def test_list_user_keys_across_teams(api: AdminClient) -> None:
    user = unique("user")
    teams = sorted(unique() for _ in range(2))
    for team_id in teams:
        make_team(api, team_id)
        make_key(api, team_id, user)
    reply = api.call("GET", f"/users/{user}/keys")
    assert reply.status == 200
    assert reply.body["user_id"] == user
    assert reply.body["total_keys"] == 2
    assert sorted(k["team_id"] for k in reply.body["keys"]) == teams
    assert {k["team_name"] for k in reply.body["keys"]} == {"Test Team"}
    empty = api.call("GET", f"/users/{unique('nobody')}/keys")
    assert (empty.status, empty.body["total_keys"], empty.body["keys"]) == (200, 0, [])


def test_delete_key_by_handle(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    created = make_key(api, team_id, "alice")
    reply = api.call("DELETE", f"/keys/{created['secret_name']}")
    assert reply.status == 200
    assert reply.body["secret_name"] == created["secret_name"]
    assert api.call("DELETE", f"/keys/{created['secret_name']}").status == 404
    assert api.call("GET", f"/teams/{team_id}").body["key_count"] == 0


def test_legacy_delete_by_key_value(api: AdminClient) -> None:
    team_id = unique()
    make_team(api, team_id)
    created = make_key(api, team_id, "alice")
    reply = api.call("DELETE", "/delete_key", json={"key": created["api_key"]})
    assert reply.status == 200, reply.text
    assert reply.body["secret_name"] == created["secret_name"]
    assert created["api_key"] not in reply.text
    again = api.call("DELETE", "/delete_key", json={"key": created["api_key"]})
    assert again.status == 404
    assert created["api_key"] not in again.text
    assert api.call("DELETE", "/delete_key", json={}).status == 422


# -- auth, routing, meta -----------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, "ADMIN wrong-key", "ADMIN", "Basic abc", "APIKEY {key}", "ADMIN{key}", "{key}"],
)
def test_admin_endpoints_refuse_bad_credentials(api: AdminClient, auth: str | None) -> None:
    header = None if auth is None else auth.format(key=api.admin_key)
    for method, path in (("GET", "/teams"), ("POST", "/teams"), ("DELETE", "/delete_key")):
        reply = api.call(method, path, auth=header, json={"team_id": unique()} if method == "POST" else None)
        assert reply.status == 401, (auth, method, path, reply.text)
        assert api.admin_key not in reply.text


def test_bearer_and_any_case_scheme_work(api: AdminClient) -> None:
    assert api.call("GET", "/teams", auth=f"Bearer {api.admin_key}").status == 200
    assert api.call("GET", "/teams", auth=f"admin {api.admin_key}").status == 200


def test_health_needs_no_credentials(api: AdminClient) -> None:
    reply = api.call("GET", "/health", auth=None)
    assert reply.status == 200
    assert reply.body["status"] == "healthy"


def test_unknown_path_is_404_and_wrong_method_405(api: AdminClient) -> None:
    assert api.call("GET", "/nope").status == 404
    assert api.call("GET", "/teams/a/b/c").status == 404
    reply = api.call("PUT", "/teams")
    assert reply.status == 405
    assert "PUT" in reply.body["error"]


def test_openapi_covers_every_route(api: AdminClient) -> None:
    from shared.routes import ROUTES

    reply = api.call("GET", "/openapi.json", auth=None)
    assert reply.status == 200
    document = reply.body
    assert document["openapi"].startswith("3.1")
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.target
        assert str(route.success_status) in operation["responses"]
    refs = re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', reply.text)
    assert refs and set(refs) <= set(document["components"]["schemas"])


def test_no_admin_key_configured_means_no_admin_access(tmp_path: Path) -> None:
    from functions._context import install_context
    from shared.context import build_context
    from shared.settings import Settings

    install_context(build_context(Settings(data_dir=tmp_path)))
    client = DirectClient("")
    for header in (None, "ADMIN ", "ADMIN anything", "Bearer "):
        reply = client.call("GET", "/teams", auth=header)
        assert reply.status == 401
    assert "no admin key" in client.call("GET", "/teams", auth="ADMIN x").body["error"]


def test_direct_context_fixture_is_sqlite(ctx: Context) -> None:
    assert ctx.settings.store == "embedded"
    assert ctx.settings.database_path.parent.exists()
