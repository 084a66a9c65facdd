"""The admin API's roles attacked by a signed-in user who wants more, and by a misconfigured
deployment: each test states a promise (README "People: sign-in and roles", shared/access.py)
and tries to break it. A promise found broken is fixed where the fix was small, or marked
`xfail(strict=True)` with the bug in one line.

What was tried, and what came of it:

- A team admin on their own team: PATCH its limits and caps, DELETE it, create teams, promote
  themselves to a role that is not one, become a platform admin (held).
- A team admin on another team: add themselves, change or remove its members, issue a key
  there, list its keys, members, usage and audit; revoke, rotate, delete (by handle and by
  value) another team's key; a 403 for a team that exists and one that does not alike (held).
- A member: promote themselves, choose `role`/`user_id` in POST /me/keys, read another user's
  or team's keys and usage, a lifetime past max_key_lifetime through /me/keys `expires_at` and
  through rotation (held).
- max_keys_per_user: parallel POST /me/keys on a store that answers slowly (a cluster's) went
  past the cap (FIXED: shared/keys.py counts and issues under a per-(team, user) lock; within
  one process, not across pods); rotating one old key again and again while it is in its grace
  made a live key each time, four with a cap of one (FIXED: a key already rotated is refused;
  its successor is the one to rotate).
- A removed member: their keys stop at the gateway, no new key, no rotation (held); a removal
  landing between /me/keys' membership check and its write leaves them a member again with a
  new key (FIXED: a stored member's self-service key is written only while they are one,
  Store.create_key(member_only=True), and makes no membership).
- Groups (MAAS_TEAM_GROUP_PATTERN): empty team ids, case, path-like and long names, a huge
  list, non-strings (held); `maas-t1-admins` when a team `t1-admins` exists makes admins of t1
  (FIXED: admins have their own pattern, MAAS_TEAM_ADMIN_GROUP_PATTERN, and patterns a group could
  fit both of are refused); a group-only admin who minted a key stayed a stored admin after the
  group was gone (FIXED: a self-service key takes the stored role, never a group's).
- Identity confusion: an OIDC user whose subject is `admin` (the admin key's subject) is no
  platform admin and inherits nothing; an API key is no admin credential; a JWT is no API key
  at the gateway (held); but once the admin key is given a membership (to mint itself keys under
  /me, as user id `admin`), a person the provider names `admin` is that member and holds those
  keys (FIXED: the admin key's subject is no user id, and it mints itself no key). In a cluster with OIDC on, a ServiceAccount's token (a JWT naming the
  cluster's issuer) never reached the TokenReview: "wrong issuer" (FIXED: shared/signin.py sends
  a JWT to the OIDC verifier only when it names that issuer, once Kubernetes sign-in is on).
- Token tricks through the admin API: `jku`/`x5u`/`jwk` headers naming an attacker's key or
  server (nothing fetched), a kid that is a path, `nbf` far ahead, `exp` as a string, a token
  larger than any real one: all 401, none echoed (held).
- Provider text: an email claim that is no address made POST /me/keys a 500 (FIXED:
  shared/membership.py gives such a key no email); an email with a newline, or a 5,000
  character subject, was stored raw as the audit actor (FIXED: cleaned and cut like the path;
  bounded); the actor is `oidc:<email>`, so a user whose provider lets them claim another's
  address was audited as that person (FIXED: the actor is the subject).
- Audit changes: a rotation's and a role change's recorded changes hold no key material (held).
- Floods: tokens with random kids refresh the JWKS at most once (held); refused Kubernetes
  tokens are cached (5 s) in a bounded cache (held); distinct random tokens still cost one
  TokenReview each (no rate limit is promised, none exists).
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr

from functions._context import install_context, reset_context
from local.gateway.auth import KeyCache
from shared.context import Context, build_context
from shared.errors import NotFound, Unauthorized
from shared.settings import Settings
from tests.admin_client import DirectClient, Reply
from tests.oidc_provider import OidcProvider, oidc_provider  # noqa: F401

GROUPS = "/maas/{team_id}"
ADMIN_GROUPS = "/maas/{team_id}/admins"


@dataclass
class World:
    """Teams t1 (alice member with a key, tara admin) and t2 (bob member with a key); pat is a
    platform admin by group. Tokens are minted per test from the module's provider."""

    api: DirectClient
    ctx: Context
    provider: OidcProvider
    alice_key: str
    alice_api_key: str
    bob_key: str
    bob_api_key: str

    def bearer(self, sub: str, **claims: Any) -> str:
        return f"Bearer {self.provider.token(sub=sub, **claims)}"

    def as_(self, sub: str, method: str, path: str, body: Any = None, **claims: Any) -> Reply:
        return self.api.call(method, path, json=body, auth=self.bearer(sub, **claims))

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        return self.api.call(method, path, json=body)


@pytest.fixture
def world(tmp_path: Path, admin_key: str, oidc_provider: OidcProvider) -> Iterator[Any]:  # noqa: F811
    made: list[Context] = []

    def make(**overrides: Any) -> World:
        options: dict[str, Any] = {"admin_groups_list": "platform-admins", **overrides}
        settings = Settings(admin_key=SecretStr(admin_key), data_dir=tmp_path / f"w{len(made)}",
                            oidc_audience="maas", oidc_issuer=oidc_provider.issuer, **options)
        ctx = build_context(settings)
        made.append(ctx)
        install_context(ctx)
        api = DirectClient(admin_key)
        for team in ("t1", "t2"):
            assert api.call("POST", "/teams", json={"team_id": team, "token_limit": 1000,
                                                    "time_window": "1h"}).status == 201
        alice = api.call("POST", "/teams/t1/keys", json={"user_id": "alice", "user_email": "alice@example.com"}).body
        bob = api.call("POST", "/teams/t2/keys", json={"user_id": "bob"}).body
        assert api.call("POST", "/teams/t1/members", json={"user_id": "tara", "role": "admin"}).status == 201
        return World(api, ctx, oidc_provider, alice["secret_name"], alice["api_key"], bob["secret_name"],
                     bob["api_key"])

    yield make
    reset_context()  # closes the one installed last
    for ctx in made[:-1]:
        ctx.close()


def _refused(reply: Reply) -> None:
    assert reply.status == 403, (reply.status, reply.text)
    assert reply.body["error"].startswith("this needs "), reply.body


def _active(world: World, team_id: str, user_id: str) -> list[str]:
    now = world.ctx.clock()
    return [key.secret_name for key in world.ctx.store.list_keys(team_id=team_id, user_id=user_id)
            if key.status == "active" and (key.expires_at is None or key.expires_at > now)]


# -- a team admin ---------------------------------------------------------------------------------


def test_a_team_admin_cannot_change_their_teams_limits_caps_or_existence(world: Any) -> None:
    w: World = world()
    before = w.admin("GET", "/teams/t1").body
    for body in ({"token_limit": 10**9}, {"max_keys_per_user": 1000}, {"max_keys_per_user": None},
                 {"max_key_lifetime": "3650d"}, {"time_window": "1s"}, {"team_name": "mine"}):
        _refused(w.as_("tara", "PATCH", "/teams/t1", body))
    _refused(w.as_("tara", "DELETE", "/teams/t1"))
    _refused(w.as_("tara", "POST", "/teams", {"team_id": "t9", "token_limit": 1, "time_window": "1h"}))
    _refused(w.as_("tara", "GET", "/teams"))
    after = w.admin("GET", "/teams/t1").body
    assert {k: v for k, v in after.items() if k != "users"} == {k: v for k, v in before.items() if k != "users"}
    # No role above admin to give oneself, and none that makes a platform admin.
    for role in ("platform", "owner", "Admin", "platform-admin"):
        reply = w.as_("tara", "PATCH", "/teams/t1/members/tara", {"role": role})
        assert reply.status == 422, reply.text
    assert w.as_("tara", "GET", "/me").body["platform_admin"] is False


def test_a_team_admin_has_no_say_in_another_team(world: Any) -> None:
    w: World = world()
    for method, path, body in (
        ("GET", "/teams/t2", None),
        ("POST", "/teams/t2/members", {"user_id": "tara", "role": "admin"}),
        ("PATCH", "/teams/t2/members/bob", {"role": "admin"}),
        ("DELETE", "/teams/t2/members/bob", None),
        ("POST", "/teams/t2/keys", {"user_id": "tara"}),
        ("POST", "/teams/t2/keys", {"user_id": "bob"}),
        ("GET", "/teams/t2/keys", None),
        ("GET", "/teams/t2/members", None),
        ("GET", "/teams/t2/usage", None),
        ("GET", "/audit?team_id=t2", None),
        ("GET", "/users/bob/keys", None),
        ("GET", "/users/bob/usage", None),
    ):
        _refused(w.as_("tara", method, path, body))
    assert [m.user_id for m in w.ctx.store.list_members(team_id="t2")] == ["bob"]


def test_a_team_admin_cannot_touch_another_teams_keys(world: Any) -> None:
    w: World = world()
    for method, path, body in (
        ("POST", f"/keys/{w.bob_key}/revoke", None),
        ("POST", f"/keys/{w.bob_key}/rotate", {"grace_period": "1h"}),
        ("DELETE", f"/keys/{w.bob_key}", None),
        ("DELETE", "/delete_key", {"key": w.bob_api_key}),
    ):
        reply = w.as_("tara", method, path, body)
        _refused(reply)
        assert w.bob_api_key not in reply.text
    assert _active(w, "t2", "bob") == [w.bob_key]


def test_a_forbidden_team_does_not_say_whether_it_exists(world: Any) -> None:
    w: World = world()
    real, made_up = w.as_("tara", "GET", "/teams/t2/members"), w.as_("tara", "GET", "/teams/nosuch/members")
    assert (real.status, made_up.status) == (403, 403)
    assert real.body["error"].replace("t2", "X") == made_up.body["error"].replace("nosuch", "X")


# -- a member ---------------------------------------------------------------------------------------


def test_a_member_cannot_promote_themselves_or_choose_a_role_or_holder(world: Any) -> None:
    w: World = world()
    _refused(w.as_("alice", "PATCH", "/teams/t1/members/alice", {"role": "admin"}))
    _refused(w.as_("alice", "POST", "/teams/t1/members", {"user_id": "alice2", "role": "admin"}))
    _refused(w.as_("alice", "POST", "/teams/t1/keys", {"user_id": "alice", "role": "admin"}))
    for extra in ({"role": "admin"}, {"user_id": "bob"}, {"user_email": "bob@example.com"}):
        reply = w.as_("alice", "POST", "/me/keys", {"team_id": "t1", **extra})
        assert reply.status == 422, reply.text
    mine = w.as_("alice", "POST", "/me/keys", {"team_id": "t1"}).body
    assert (mine["role"], mine["user_id"]) == ("member", "alice")
    assert w.ctx.store.get_member(team_id="t1", user_id="alice").role == "member"
    # Nor a key in a team she is not in.
    _refused(w.as_("alice", "POST", "/me/keys", {"team_id": "t2"}))


def test_a_member_sees_only_their_own_keys_and_usage(world: Any) -> None:
    w: World = world()
    for path in ("/users/bob/keys", "/users/bob/usage", "/users/tara/keys", "/teams/t1/usage", "/teams/t1/keys",
                 "/teams/t2/usage", "/audit?team_id=t1"):
        _refused(w.as_("alice", "GET", path))
    # A team admin sees the team's usage, not a member's usage across teams.
    _refused(w.as_("tara", "GET", "/users/alice/usage"))
    listed = w.as_("alice", "GET", "/me/keys").body
    assert {key["user_id"] for key in listed["keys"]} == {"alice"}


def test_a_lifetime_past_the_teams_cap_gets_in_by_no_door(world: Any) -> None:
    w: World = world()
    forever = w.admin("POST", "/teams/t1/keys", {"user_id": "alice"}).body  # made before the cap: no expiry
    assert w.admin("PATCH", "/teams/t1", {"max_key_lifetime": "30d"}).status == 200
    far = "2999-01-01T00:00:00Z"
    assert w.as_("alice", "POST", "/me/keys", {"team_id": "t1", "expires_at": far}).status == 422
    assert w.as_("tara", "POST", "/teams/t1/keys", {"user_id": "carl", "expires_at": far}).status == 422
    assert w.as_("alice", "POST", f"/keys/{w.alice_key}/rotate", {"expires_at": far}).status == 422
    # Rotating a key that never expired gives a successor that does, within the cap.
    rotated = w.as_("alice", "POST", f"/keys/{forever['secret_name']}/rotate", {})
    assert rotated.status == 201, rotated.text
    expires = w.ctx.store.get_key(secret_name=rotated.body["secret_name"]).expires_at
    assert expires is not None and (expires - w.ctx.clock()).days <= 30


# -- max_keys_per_user -----------------------------------------------------------------------------


def test_parallel_self_service_requests_do_not_pass_max_keys_per_user(world: Any) -> None:
    w: World = world()
    assert w.admin("PATCH", "/teams/t2", {"max_keys_per_user": 2}).status == 200
    # A store that answers in tens of milliseconds, as the Kubernetes API does: the window
    # between counting the keys and writing the new one is open that long.
    store = w.ctx.store
    list_keys = store.list_keys

    def slow_list_keys(**kwargs: Any) -> Any:
        found = list_keys(**kwargs)
        time.sleep(0.05)
        return found

    store.list_keys = slow_list_keys  # type: ignore[method-assign]
    token = w.bearer("bob")
    statuses: list[int] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        statuses.append(w.api.call("POST", "/me/keys", json={"team_id": "t2"}, auth=token).status)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.list_keys = list_keys  # type: ignore[method-assign]
    assert sorted(statuses) == [201] + [409] * 7, statuses  # bob held one already
    assert len(_active(w, "t2", "bob")) == 2


def test_rotating_one_key_again_and_again_does_not_pass_max_keys_per_user(world: Any) -> None:
    w: World = world()
    assert w.admin("PATCH", "/teams/t1", {"max_keys_per_user": 1}).status == 200
    first = w.as_("alice", "POST", f"/keys/{w.alice_key}/rotate", {"grace_period": "1d"})
    assert first.status == 201, first.text
    again = w.as_("alice", "POST", f"/keys/{w.alice_key}/rotate", {"grace_period": "1d"})
    assert again.status == 409 and first.body["secret_name"] in again.body["error"], again.text
    # The old key in its grace and its one successor: a rotation's overlap, no more.
    assert len(_active(w, "t1", "alice")) == 2
    assert w.as_("alice", "POST", f"/keys/{first.body['secret_name']}/rotate", {}).status == 201


# -- a removed member ------------------------------------------------------------------------------


def test_a_removed_member_keeps_no_key_and_gets_no_new_one(world: Any) -> None:
    w: World = world()
    graced = w.as_("alice", "POST", f"/keys/{w.alice_key}/rotate", {"grace_period": "1d"}).body
    assert w.as_("tara", "DELETE", "/teams/t1/members/alice").status == 200
    assert _active(w, "t1", "alice") == []
    gateway = KeyCache(w.ctx.store)
    for api_key in (w.alice_api_key, graced["api_key"]):
        with pytest.raises(Unauthorized):
            gateway.authenticate(f"Bearer {api_key}")
    _refused(w.as_("alice", "POST", "/me/keys", {"team_id": "t1"}))
    assert w.as_("alice", "POST", f"/keys/{graced['secret_name']}/rotate", {}).status == 409
    with pytest.raises(NotFound):
        w.ctx.store.get_member(team_id="t1", user_id="alice")


def test_a_removal_racing_a_self_service_key_still_removes(world: Any) -> None:
    w: World = world()
    store = w.ctx.store
    get_member = store.get_member

    def removed_right_after_the_check(**kwargs: Any) -> Any:
        found = get_member(**kwargs)
        store.get_member = get_member  # type: ignore[method-assign]
        store.delete_member(team_id="t1", user_id="alice")  # the team admin's DELETE lands now
        return found

    store.get_member = removed_right_after_the_check  # type: ignore[method-assign]
    w.as_("alice", "POST", "/me/keys", {"team_id": "t1"})
    store.get_member = get_member  # type: ignore[method-assign]
    assert _active(w, "t1", "alice") == []
    with pytest.raises(NotFound):
        store.get_member(team_id="t1", user_id="alice")


# -- groups ----------------------------------------------------------------------------------------


def test_group_names_that_name_no_team_give_nothing(world: Any) -> None:
    w: World = world(team_group_pattern=GROUPS, team_admin_group_pattern=ADMIN_GROUPS)
    tricks = ["/maas/", "/maas//admins", "/maas/T1", "/MAAS/t1", "/maas/t1 ", " /maas/t1", "/maas/../t1",
              "/maas/t2/../t1", "/maas/t1\n", "/maas/t1/admins/", "/maas/t1/ADMINS", "/maas/" + "a" * 300, "/maas/*",
              "t1", "t1/admins", "/maas/t1.x", "/maas/t1:admins"]
    me = w.as_("gale", "GET", "/me", groups=tricks)
    assert me.status == 200 and me.body["teams"] == [], me.text
    _refused(w.as_("gale", "GET", "/teams/t1/members", groups=tricks))
    _refused(w.as_("gale", "POST", "/me/keys", {"team_id": "t1"}, groups=tricks))
    for bad in ([1, 2], [None], [["/maas/t1"]], [{"name": "/maas/t1"}], "/maas/t1", {"/maas/t1": True}):
        reply = w.as_("gale", "GET", "/me", claims={"groups": bad})
        assert reply.status == 401 and "groups" in reply.body["error"], reply.text


def test_a_huge_groups_claim_is_answered_promptly(world: Any) -> None:
    w: World = world(team_group_pattern=GROUPS, team_admin_group_pattern=ADMIN_GROUPS)
    groups = [f"/maas/g{n}" for n in range(900)] + ["/maas/t1"]
    token = w.bearer("gale", groups=groups)
    started = time.monotonic()
    me = w.api.call("GET", "/me", auth=token)
    assert me.status == 200 and [t["team_id"] for t in me.body["teams"]] == ["t1"], me.text[:300]
    assert w.api.call("GET", "/teams/t1/members", auth=token).status == 403
    assert time.monotonic() - started < 3.0


def test_the_member_group_of_a_team_named_like_an_admin_group_makes_no_admins(world: Any) -> None:
    # Patterns a group could fit both of are refused at start (team ids may end in -admins) ...
    with pytest.raises(ValueError, match="fit both"):
        Settings(team_group_pattern="maas-{team_id}", team_admin_group_pattern="maas-{team_id}-admins")
    # ... and with patterns apart, team t1-admins' member group makes no admins of t1.
    w: World = world(team_group_pattern=GROUPS, team_admin_group_pattern=ADMIN_GROUPS)
    assert w.admin("POST", "/teams", {"team_id": "t1-admins", "token_limit": 10, "time_window": "1h"}).status == 201
    assert w.as_("gus", "GET", "/teams/t1/members", groups=["/maas/t1-admins"]).status == 403
    assert w.as_("gus", "GET", "/teams/t1-admins/members", groups=["/maas/t1-admins"]).status == 403
    assert w.as_("gus", "GET", "/teams/t1/members", groups=["/maas/t1/admins"]).status == 200


def test_a_group_only_admin_is_no_admin_once_the_group_is_gone(world: Any) -> None:
    w: World = world(team_group_pattern=GROUPS, team_admin_group_pattern=ADMIN_GROUPS)
    minted = w.as_("gina", "POST", "/me/keys", {"team_id": "t2"}, groups=["/maas/t2/admins"])
    assert minted.status == 201, minted.text
    # Her key made her a member (as any key does), with the stored role, not the group's.
    assert w.as_("gina", "GET", "/me", groups=[]).body["teams"] == [{"team_id": "t2", "team_name": "t2", "role": "member"}]
    _refused(w.as_("gina", "GET", "/teams/t2/members", groups=[]))


# -- identity confusion ----------------------------------------------------------------------------


def test_an_oidc_user_named_admin_is_not_the_admin_key(world: Any) -> None:
    w: World = world()
    me = w.as_("admin", "GET", "/me").body
    assert (me["user_id"], me["signed_in_with"], me["platform_admin"], me["teams"]) == ("admin", "oidc", False, [])
    _refused(w.as_("admin", "GET", "/teams"))
    _refused(w.as_("admin", "GET", "/teams/t1"))
    _refused(w.as_("admin", "GET", "/audit?team_id=t1"))
    # The admin key's own identity is no member anywhere, so there is nothing under "admin" to
    # inherit: /me/keys with the admin key makes no key (and no membership) for user "admin".
    assert w.admin("POST", "/me/keys", {"team_id": "t1"}).status == 403
    assert w.ctx.store.list_members(user_id="admin") == []
    w.as_("admin", "GET", "/me/keys")
    actors = {entry["actor"] for entry in w.admin("GET", "/audit?action=list_my_keys").body["entries"]}
    assert actors == {"oidc:admin"}
    # A groups claim naming the platform-admin group as a near miss gives nothing either.
    for groups in (["Platform-Admins"], ["platform-admins "], [" platform-admins"], ["platform-admins,x"]):
        assert w.as_("admin", "GET", "/me", groups=groups).body["platform_admin"] is False


def test_a_person_named_admin_gets_nothing_made_for_the_admin_key(world: Any) -> None:
    w: World = world()
    # The admin key is no user: its subject can be nobody's user id, it mints itself no key, and
    # a membership someone gives user `admin` is that person's, nothing of the admin key's.
    me = w.admin("GET", "/me").body
    assert me["signed_in_with"] == "admin-key" and me["user_id"] != "admin" and me["teams"] == []
    refused = w.admin("POST", "/me/keys", {"team_id": "t1"})
    assert refused.status == 403 and "admin key is no user" in refused.body["error"], refused.text
    assert w.admin("POST", "/teams/t1/members", {"user_id": "admin", "role": "member"}).status == 201
    assert w.admin("GET", "/me").body["teams"] == []
    assert [t["team_id"] for t in w.as_("admin", "GET", "/me").body["teams"]] == ["t1"]
    _refused(w.as_("admin", "GET", "/teams/t1/members"))


def test_keys_and_tokens_do_not_stand_in_for_each_other(world: Any) -> None:
    w: World = world()
    for scheme in ("Bearer", "ADMIN"):
        reply = w.api.call("GET", "/me", auth=f"{scheme} {w.alice_api_key}")
        assert reply.status == 401 and w.alice_api_key not in reply.text, reply.text
    token = w.provider.token(sub="pat", groups=["platform-admins"])
    with pytest.raises(Unauthorized):
        KeyCache(w.ctx.store).authenticate(f"Bearer {token}")


# -- token tricks ----------------------------------------------------------------------------------


class _Counter(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bait() -> Iterator[str]:
    """A server the attacker's headers point at: nothing may ever ask it."""
    _Counter.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_token_header_and_claim_tricks_are_refused(world: Any, bait: str) -> None:
    w: World = world()
    with urllib.request.urlopen(f"{w.provider.url}/jwks", timeout=5) as answer:
        real_kid = json.loads(answer.read())["keys"][0]["kid"]
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    my_jwk = json.loads(RSAAlgorithm.to_jwk(mine.public_key()))
    claims = {"sub": "pat", "aud": "maas", "iss": w.provider.issuer, "groups": ["platform-admins"],
              "exp": int(time.time()) + 600}
    forged = {
        "jku": jwt.encode(claims, mine, "RS256", headers={"kid": "evil", "jku": f"{bait}/jwks"}),
        "x5u": jwt.encode(claims, mine, "RS256", headers={"kid": "evil", "x5u": f"{bait}/cert.pem"}),
        "jwk": jwt.encode(claims, mine, "RS256", headers={"kid": "evil", "jwk": {**my_jwk, "kid": "evil"}}),
        "real kid, own key": jwt.encode(claims, mine, "RS256", headers={"kid": real_kid, "jwk": my_jwk,
                                                                          "jku": f"{bait}/jwks"}),
        "kid path": w.provider.token(sub="pat", groups=["platform-admins"], header={"kid": "../../../etc/passwd"}),
        "kid url": w.provider.token(sub="pat", groups=["platform-admins"], header={"kid": f"{bait}/jwks"}),
        "nbf ahead": w.provider.token(sub="pat", groups=["platform-admins"], claims={"nbf": int(time.time()) + 86400}),
        "exp string": w.provider.token(sub="pat", groups=["platform-admins"], claims={"exp": "4000000000"}),
        "iat ahead": w.provider.token(sub="pat", groups=["platform-admins"], claims={"iat": int(time.time()) + 86400}),
        "huge": w.provider.token(sub="pat", groups=["platform-admins"], claims={"pad": "x" * 20000}),
        "other issuer": jwt.encode({**claims, "iss": bait}, mine, "RS256", headers={"kid": "evil"}),
        "unsigned, real kid": f"{_segment({'alg': 'none', 'kid': real_kid})}.{_segment(claims)}.",
    }
    for name, token in forged.items():
        for path in ("/me", "/teams"):
            reply = w.api.call("GET", path, auth=f"Bearer {token}")
            assert reply.status == 401, (name, reply.status, reply.text)
            assert token not in reply.text and token[:40] not in reply.text, name
    assert _Counter.hits == 0


def test_a_flood_of_random_kids_fetches_the_providers_keys_at_most_once(world: Any) -> None:
    w: World = world()
    assert w.as_("pat", "GET", "/teams", groups=["platform-admins"]).status == 200  # keys fetched
    fetched = w.provider.requests("/jwks")
    for _ in range(30):
        token = w.provider.token(sub="pat", groups=["platform-admins"], header={"kid": uuid.uuid4().hex})
        assert w.api.call("GET", "/teams", auth=f"Bearer {token}").status == 401
    assert w.provider.requests("/jwks") - fetched <= 1


# -- provider text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["not an address", "eve\n@example.com", "a@b@c", "x" * 400 + "@example.com"])
def test_an_email_claim_that_is_no_address_does_not_break_self_service(world: Any, email: str) -> None:
    w: World = world()
    reply = w.as_("alice", "POST", "/me/keys", {"team_id": "t1"}, email=email)
    assert reply.status == 201, reply.text
    assert reply.body["user_email"] == ""


def test_a_valid_email_claim_still_names_the_key(world: Any) -> None:
    w: World = world()
    reply = w.as_("alice", "POST", "/me/keys", {"team_id": "t1"}, email="alice@example.com")
    assert reply.status == 201 and reply.body["user_email"] == "alice@example.com", reply.text


def test_the_audit_actor_is_one_bounded_line(world: Any) -> None:
    w: World = world()
    w.as_("tara", "GET", "/teams/t1/members", email="tara\n2099-01-01 admin-key deleted t2@example.com")
    w.as_("t" * 5000, "GET", "/me/keys")
    actors = [entry["actor"] for entry in w.admin("GET", "/audit?limit=5").body["entries"]]
    assert all(actor.isprintable() and len(actor) <= 320 for actor in actors), [a[:80] for a in actors]


def test_the_audit_actor_names_the_user_not_a_claimed_address(world: Any) -> None:
    w: World = world()
    w.as_("tara", "GET", "/teams/t1/members", email="alice@example.com")
    w.as_("alice", "GET", "/me/keys", email="alice@example.com")
    entries = w.admin("GET", "/audit?limit=2").body["entries"]
    assert entries[0]["actor"] != entries[1]["actor"], entries


def test_recorded_changes_hold_no_key_material(world: Any) -> None:
    w: World = world()
    rotated = w.as_("alice", "POST", f"/keys/{w.alice_key}/rotate", {"grace_period": "1h"}).body
    assert w.as_("tara", "PATCH", "/teams/t1/members/alice", {"role": "admin"}).status == 200
    entries = w.as_("tara", "GET", "/audit?team_id=t1").body["entries"]
    text = json.dumps(entries)
    assert rotated["api_key"] not in text and w.alice_api_key not in text
    role_change = next(entry for entry in entries if entry["action"] == "update_member")
    assert role_change["changes"] == {"role": {"before": "member", "after": "admin"}}
    assert role_change["actor"] == "oidc:tara"


def test_a_team_admins_audit_is_their_teams_whatever_the_query(world: Any) -> None:
    w: World = world()
    w.admin("PATCH", "/teams/t2", {"token_limit": 5})
    for query in ("team_id=t1&team_id=t2", "team_id=t1&Team_id=t2"):
        reply = w.as_("tara", "GET", f"/audit?{query}")
        if reply.status == 200:
            assert {entry["team_id"] for entry in reply.body["entries"]} == {"t1"}, reply.body
        else:
            assert reply.status in (403, 422), reply.text
    for query in ("", "team_id=", "team_id=t2&team_id=t1", "TEAM_ID=t1", "team_id=T1", "team_id=t1%00"):
        reply = w.as_("tara", "GET", f"/audit?{query}")
        assert reply.status in (403, 422), (query, reply.status, reply.text)


# -- in a cluster: Kubernetes sign-in beside OIDC ----------------------------------------------------


def test_a_service_account_jwt_reaches_the_token_review_when_oidc_is_on(admin_key: str,
                                                                        oidc_provider: OidcProvider) -> None:  # noqa: F811
    from shared.store.kube import KubernetesStore
    from tests.kube_double import running_double

    settings = Settings(admin_key=SecretStr(admin_key), store="kubernetes", namespace="llm",
                        oidc_audience="maas", oidc_issuer=oidc_provider.issuer)
    robot = (f"{_segment({'alg': 'RS256', 'kid': 'cluster'})}."
             f"{_segment({'iss': 'https://kubernetes.default.svc', 'sub': 'system:serviceaccount:llm:ci'})}.c2ln")
    with running_double() as (double, client):
        double.add_token(robot, "system:serviceaccount:llm:ci", uid="uid-ci")
        install_context(Context(settings=settings, store=KubernetesStore(client, namespace="llm",
                                                                         key_selector=settings.key_selector)))
        try:
            api = DirectClient(admin_key)
            me = api.call("GET", "/me", auth=f"Bearer {robot}")
            assert me.status == 200 and me.body["signed_in_with"] == "kubernetes", me.text
            reviews = double.review_count()
            person = api.call("GET", "/me", auth=f"Bearer {oidc_provider.token(sub='alice')}")
            assert person.status == 200 and person.body["signed_in_with"] == "oidc", person.text
            # A forged token naming our issuer is the verifier's to refuse, never the cluster's.
            forged = f"{_segment({'alg': 'RS256', 'kid': 'x'})}.{_segment({'iss': oidc_provider.issuer})}.c2ln"
            assert api.call("GET", "/me", auth=f"Bearer {forged}").status == 401
            assert double.review_count() == reviews
        finally:
            reset_context()


def test_refused_cluster_tokens_are_cached_and_the_cache_is_bounded() -> None:
    from shared.kubeidentity import KubernetesReviewer
    from tests.kube_double import running_double

    with running_double() as (double, client):
        reviewer = KubernetesReviewer(client, namespace="llm", cache_entries=4)
        for _ in range(3):
            with pytest.raises(Unauthorized):
                reviewer.review("sha256~the-same-bad-token")
        assert double.review_count() == 1
        for n in range(20):
            with pytest.raises(Unauthorized):
                reviewer.review(f"sha256~random-{n}")
        assert double.review_count() == 21  # each new token costs a review: bounded memory, not calls
        assert len(reviewer._tokens) <= 4
