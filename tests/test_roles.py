"""Every role against every endpoint, signed in through a real OpenID Connect provider process.

EXPECTED states, for each function target, which roles may call it; a route added without a
line here fails `test_every_route_has_a_stated_rule`. Each (route, role) runs on a fresh store:
team t1 with alice (member, holding a key) and tara (admin), team t2 with bob (member).
A role allowed gets an answer that is neither 401 nor 403; one refused gets 403 naming the role
needed when signed in, 401 without an admin-API credential (no header, or an API key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from functions._context import install_context, reset_context
from shared.access import RULES
from shared.context import build_context
from shared.routes import ROUTES
from shared.settings import Settings
from tests.admin_client import DirectClient
from tests.oidc_provider import OidcProvider, oidc_provider  # noqa: F401

ROLES = ("anonymous", "api_key", "outsider", "member", "team_admin", "platform", "admin_key")
SIGNED_IN = {"outsider", "member", "team_admin", "platform", "admin_key"}
PLATFORM = {"platform", "admin_key"}
BY_RULE: dict[str, set[str]] = {
    "public": set(ROLES),
    "platform": PLATFORM,
    "team": PLATFORM | {"team_admin"},
    "team_query": PLATFORM | {"team_admin"},
    "user": PLATFORM | {"member"},  # the path names alice, who is the member
    "key": PLATFORM | {"team_admin", "member"},  # alice's key: its holder and her team's admin
    "signed_in": SIGNED_IN,
    "models": SIGNED_IN | {"api_key"},
}


@dataclass(frozen=True)
class Example:
    """One request to a route, and the rule it is stated to have."""

    rule: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    # Who the handler then lets through, where it asks more than the rule (a membership).
    allowed: frozenset[str] | None = None


KEY = "{alice_key}"  # the handle of alice's key, filled in per case
EXPECTED: dict[str, Example] = {
    "health": Example("public", "GET", "/health"),
    "openapi": Example("public", "GET", "/openapi.json"),
    "create_team": Example("platform", "POST", "/teams", {"team_id": "t9", "token_limit": 10, "time_window": "1h"}),
    "list_teams": Example("platform", "GET", "/teams"),
    "get_team": Example("team", "GET", "/teams/t1"),
    "update_team": Example("platform", "PATCH", "/teams/t1", {"token_limit": 5}),
    "delete_team": Example("platform", "DELETE", "/teams/t1"),
    "create_key": Example("team", "POST", "/teams/t1/keys", {"user_id": "carl"}),
    "list_team_keys": Example("team", "GET", "/teams/t1/keys"),
    "list_members": Example("team", "GET", "/teams/t1/members"),
    "add_member": Example("team", "POST", "/teams/t1/members", {"user_id": "dora", "role": "member"}),
    "update_member": Example("team", "PATCH", "/teams/t1/members/alice", {"role": "admin"}),
    "remove_member": Example("team", "DELETE", "/teams/t1/members/alice"),
    "whoami": Example("signed_in", "GET", "/me"),
    "list_my_keys": Example("signed_in", "GET", "/me/keys"),
    "create_my_key": Example("signed_in", "POST", "/me/keys", {"team_id": "t1"},
                             allowed=frozenset({"member", "team_admin"})),
    "my_usage": Example("signed_in", "GET", "/me/usage"),
    "list_user_keys": Example("user", "GET", "/users/alice/keys"),
    "delete_key": Example("key", "DELETE", f"/keys/{KEY}"),
    "delete_key_legacy": Example("key", "DELETE", "/delete_key", {"key": "{alice_api_key}"}),
    "revoke_key": Example("key", "POST", f"/keys/{KEY}/revoke"),
    "rotate_key": Example("key", "POST", f"/keys/{KEY}/rotate"),
    "list_audit": Example("team_query", "GET", "/audit?team_id=t1"),
    "user_usage": Example("user", "GET", "/users/alice/usage"),
    "team_usage": Example("team", "GET", "/teams/t1/usage"),
    "platform_usage": Example("platform", "GET", "/usage"),
    "explain_limits": Example("team", "GET", "/teams/t1/limits/explain?user_id=alice"),
    "simulate_limits": Example("team", "POST", "/teams/t1/limits/simulate",
                               {"limits": [{"name": "tokens", "limit": 10, "window": "1h"}]}),
    "list_models": Example("models", "GET", "/models"),
    "list_openai_models": Example("models", "GET", "/v1/models"),
}


def test_every_route_has_a_stated_rule() -> None:
    routes = {route.target: route for route in ROUTES}
    assert set(EXPECTED) == set(routes), "state the rule of every route here"
    for target, example in EXPECTED.items():
        assert routes[target].access == example.rule, target
        assert routes[target].method == example.method, target
    assert set(BY_RULE) == set(RULES)


@pytest.fixture(scope="module")
def tokens(oidc_provider: OidcProvider) -> dict[str, str]:  # noqa: F811
    return {
        "outsider": oidc_provider.token(sub="olga", email="olga@example.com"),
        "member": oidc_provider.token(sub="alice", email="alice@example.com"),
        "team_admin": oidc_provider.token(sub="tara", email="tara@example.com", groups=["staff"]),
        "platform": oidc_provider.token(sub="pat", email="pat@example.com", groups=["platform-admins"]),
    }


@dataclass
class World:
    api: DirectClient
    admin_key: str
    alice_key: str
    alice_api_key: str


@pytest.fixture
def fresh_world(tmp_path: Path, admin_key: str, oidc_provider: OidcProvider) -> Iterator[Any]:  # noqa: F811
    contexts = []

    def make(name: str) -> World:
        settings = Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / name,
                            oidc_audience="maas", oidc_issuer=oidc_provider.issuer,
                            admin_groups_list="platform-admins")
        ctx = build_context(settings)
        contexts.append(ctx)
        install_context(ctx)
        api = DirectClient(admin_key)
        assert api.call("POST", "/teams", json={"team_id": "t1", "token_limit": 1000, "time_window": "1h"}).status == 201
        assert api.call("POST", "/teams", json={"team_id": "t2", "token_limit": 1000, "time_window": "1h"}).status == 201
        alice = api.call("POST", "/teams/t1/keys", json={"user_id": "alice"}).body
        assert api.call("POST", "/teams/t1/members", json={"user_id": "tara", "role": "admin"}).status == 201
        assert api.call("POST", "/teams/t2/keys", json={"user_id": "bob"}).status == 201
        return World(api, admin_key, alice["secret_name"], alice["api_key"])

    yield make
    reset_context()  # closes the one installed last
    for ctx in contexts[:-1]:
        ctx.close()


def _auth(role: str, world: World, tokens: dict[str, str]) -> str | None:
    if role == "anonymous":
        return None
    if role == "api_key":
        return f"Bearer {world.alice_api_key}"
    if role == "admin_key":
        return f"Bearer {world.admin_key}"
    return f"Bearer {tokens[role]}"


CASES = [(target, role) for target in sorted(EXPECTED) for role in ROLES]


@pytest.mark.parametrize(("target", "role"), CASES, ids=[f"{t}-{r}" for t, r in CASES])
def test_each_role_gets_what_its_rule_says(target: str, role: str, fresh_world: Any, tokens: dict[str, str]) -> None:
    world: World = fresh_world(f"{target}-{role}")
    example = EXPECTED[target]
    path = example.path.replace(KEY, world.alice_key)
    body = None if example.body is None else json.loads(
        json.dumps(example.body).replace("{alice_api_key}", world.alice_api_key))
    reply = world.api.call(example.method, path, json=body, auth=_auth(role, world, tokens))
    allowed = BY_RULE[example.rule] if example.allowed is None else example.allowed
    if role in allowed:
        assert reply.status not in (401, 403), (reply.status, reply.text)
    elif role in SIGNED_IN:
        assert reply.status == 403, (reply.status, reply.text)
        assert reply.body["error"].startswith("this needs "), reply.body
    else:
        assert reply.status == 401, (reply.status, reply.text)


# -- the team's caps, for admins and self-service alike ---------------------------------------------


@pytest.mark.parametrize("who", ["admin_key", "member"])
def test_max_keys_per_user_holds_for_admins_and_self_service(who: str, fresh_world: Any,
                                                            tokens: dict[str, str]) -> None:
    world: World = fresh_world(f"cap-{who}")
    assert world.api.call("PATCH", "/teams/t1", json={"max_keys_per_user": 2}).body["max_keys_per_user"] == 2
    if who == "admin_key":
        def issue() -> Any:
            return world.api.call("POST", "/teams/t1/keys", json={"user_id": "alice"})
    else:
        def issue() -> Any:
            return world.api.call("POST", "/me/keys", json={"team_id": "t1"}, auth=f"Bearer {tokens['member']}")
    assert issue().status == 201  # alice now holds 2
    refused = issue()
    assert refused.status == 409 and "max_keys_per_user" in refused.body["error"], refused.text
    # A revoked key no longer counts; clearing the cap lifts it.
    assert world.api.call("POST", f"/keys/{world.alice_key}/revoke").status == 200
    assert issue().status == 201
    assert world.api.call("PATCH", "/teams/t1", json={"max_keys_per_user": None}).body["max_keys_per_user"] is None
    assert issue().status == 201


def test_max_key_lifetime_caps_and_defaults_every_new_key(fresh_world: Any, tokens: dict[str, str]) -> None:
    world: World = fresh_world("lifetime")
    assert world.api.call("PATCH", "/teams/t1", json={"max_key_lifetime": "30d"}).status == 200
    too_long = world.api.call("POST", "/teams/t1/keys", json={"user_id": "carl", "expires_in": "31d"})
    assert too_long.status == 422 and "max_key_lifetime" in too_long.body["error"], too_long.text
    mine = world.api.call("POST", "/me/keys", json={"team_id": "t1", "expires_in": "90d"},
                          auth=f"Bearer {tokens['member']}")
    assert mine.status == 422, mine.text
    defaulted = world.api.call("POST", "/me/keys", json={"team_id": "t1"}, auth=f"Bearer {tokens['member']}").body
    assert defaulted["expires_at"] is not None
    rotated = world.api.call("POST", f"/keys/{world.alice_key}/rotate", json={"expires_in": "60d"},
                             auth=f"Bearer {tokens['member']}")
    assert rotated.status == 422, rotated.text


def test_removing_a_member_revokes_their_keys_there(fresh_world: Any,
                                                                    tokens: dict[str, str]) -> None:
    world: World = fresh_world("remove")
    removed = world.api.call("DELETE", "/teams/t1/members/alice", auth=f"Bearer {tokens['team_admin']}")
    assert removed.status == 200, removed.text
    assert removed.body["revoked_keys"] == [world.alice_key]
    assert world.api.call("GET", "/v1/models", auth=f"Bearer {world.alice_api_key}").status == 401
    me = world.api.call("GET", "/me", auth=f"Bearer {tokens['member']}").body
    assert me["teams"] == [] and me["user_id"] == "alice" and me["signed_in_with"] == "oidc"


def test_whoami_names_teams_roles_and_platform_admin(fresh_world: Any, tokens: dict[str, str]) -> None:
    world: World = fresh_world("whoami")
    tara = world.api.call("GET", "/me", auth=f"Bearer {tokens['team_admin']}").body
    assert tara["teams"] == [{"team_id": "t1", "team_name": "t1", "role": "admin"}]
    assert tara["platform_admin"] is False and tara["user_email"] == "tara@example.com"
    pat = world.api.call("GET", "/me", auth=f"Bearer {tokens['platform']}").body
    assert pat["platform_admin"] is True and pat["groups"] == ["platform-admins"]
    admin = world.api.call("GET", "/me").body
    assert admin["signed_in_with"] == "admin-key" and admin["teams"] == []


def test_groups_named_for_a_team_make_members_and_admins(tmp_path: Path, admin_key: str,
                                                      oidc_provider: OidcProvider) -> None:  # noqa: F811
    settings = Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / "groups", oidc_audience="maas",
                        oidc_issuer=oidc_provider.issuer, team_group_pattern="/maas/{team_id}",
                        team_admin_group_pattern="/maas/{team_id}/admins")
    install_context(build_context(settings))
    try:
        api = DirectClient(admin_key)
        for team in ("t1", "t2"):
            assert api.call("POST", "/teams", json={"team_id": team, "token_limit": 10, "time_window": "1h"}).status == 201
        gail = f"Bearer {oidc_provider.token(sub='gail', groups=['/maas/t1', '/maas/t2/admins', '/maas/ghost', 'other'])}"
        me = api.call("GET", "/me", auth=gail).body
        assert me["teams"] == [{"team_id": "t1", "team_name": "t1", "role": "member"},
                               {"team_id": "t2", "team_name": "t2", "role": "admin"}]
        assert api.call("GET", "/teams/t2/members", auth=gail).status == 200  # admin of t2
        assert api.call("GET", "/teams/t1/members", auth=gail).status == 403  # member of t1 only
        assert api.call("POST", "/me/keys", json={"team_id": "t1"}, auth=gail).status == 201
        assert api.call("POST", "/me/keys", json={"team_id": "ghost"}, auth=gail).status == 404
    finally:
        reset_context()


@pytest.mark.parametrize("bad", ["expired", "wrong-audience", "unsigned", "tampered", "unknown-key"])
def test_a_bad_token_is_401_on_every_signed_in_route(bad: str, fresh_world: Any, oidc_provider: OidcProvider) -> None:  # noqa: F811
    world: World = fresh_world(f"bad-{bad}")
    if bad == "expired":
        token = oidc_provider.token(sub="pat", groups=["platform-admins"], expires_in=-3600)
    elif bad == "wrong-audience":
        token = oidc_provider.token(sub="pat", groups=["platform-admins"], aud="someone-else")
    elif bad == "unknown-key":
        token = oidc_provider.token(sub="pat", groups=["platform-admins"], unpublished_key=True)
    else:
        import base64

        def part(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        good = oidc_provider.token(sub="alice")
        head, _, signature = good.split(".")
        claims = {"sub": "pat", "aud": "maas", "iss": oidc_provider.issuer, "groups": ["platform-admins"],
                  "exp": 4_000_000_000}
        token = (f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}." if bad == "unsigned"
                 else f"{head}.{part(claims)}.{signature}")
    for target, example in EXPECTED.items():
        if example.rule in ("public",):
            continue
        path = example.path.replace(KEY, world.alice_key)
        reply = world.api.call(example.method, path, json=example.body, auth=f"Bearer {token}")
        assert reply.status == 401, (target, reply.status, reply.text)
        assert token not in reply.text
        assert WHY[bad] in reply.text.lower(), reply.text


WHY = {"expired": "expired", "wrong-audience": "audience", "unsigned": "algorithm", "tampered": "signature",
       "unknown-key": "key"}
