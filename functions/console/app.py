"""The console's pages: one handler per page of shared.routes.PAGES, rendered on the server.

Every page that shows or changes something gets it from the API's targets, called in-process as
the person signed in (functions.console.api), so what they may see and do is exactly what the API
lets them; a refusal shows the API's message as it is, with its status. Forms post back here with
the session's CSRF token; an action answers with a redirect to the page it came from (so a reload
does not repeat it), except a new key, which is shown once in the answer to the post that made it
and is kept nowhere.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import flask
import jinja2

from functions._context import context
from functions.console import api, charts
from functions.console.oidcflow import OidcClient, new_request, token_nonce
from functions.console.sessions import COOKIE, SESSIONS, Session
from shared import audit
from shared.access import Caller, authorize
from shared.auth import is_admin
from shared.context import Context
from shared.durations import window_ms
from shared.errors import BackendUnavailable, MaasError, MethodNotAllowed, NotFound
from shared.routes import CONSOLE, PAGES, Route, resolve, route_for
from shared.signin import ADMIN_KEY_IDENTITY, SignedIn
from shared.store import Team

log = logging.getLogger("maas.console")

HERE = Path(__file__).resolve().parent
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
PAGE_SIZE = 25
# A console link as the pages write them: nothing else may reach a redirect's Location.
_LOCAL_LINK = re.compile(r"^/console/[A-Za-z0-9._~/?=&%-]*$")
# Pages anyone may open; every other page needs a signed-in session.
OPEN = {("GET", "/"), ("GET", "/console/signin"), ("POST", "/console/signin"), ("GET", "/console/signin/oidc"),
        ("GET", "/console/oidc/callback"), ("GET", "/console/static/{name}")}
# Scripts from this origin only; pygal's SVG carries its own <style>, hence inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the callback's URL holds the provider's code
    "X-Frame-Options": "DENY",
}
USAGE_WINDOWS: dict[str, tuple[timedelta, int, str]] = {
    # window -> (length, bucket seconds, label format)
    "24h": (timedelta(hours=24), 3600, "%H:%M"),
    "7d": (timedelta(days=7), 6 * 3600, "%a %H:%M"),
    "30d": (timedelta(days=30), 86400, "%b %d"),
}
EXPIRIES = (("", "Never (or the team's longest lifetime)"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"),
            ("90d", "90 days"), ("365d", "1 year"))
GRACES = (("0s", "old key: revoke now"), ("1h", "old key: keep 1 hour"), ("24h", "old key: keep 1 day"))

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
    trim_blocks=True, lstrip_blocks=True,
)


def _when(value: str | None) -> str:
    if not value:
        return "—"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_templates.filters["when"] = _when
_templates.filters["number"] = lambda value: f"{value:,}" if isinstance(value, int) else ("—" if value is None else value)

_oidc: list[OidcClient] = []


def _oidc_client(ctx: Context) -> OidcClient:
    if not _oidc:
        _oidc.append(OidcClient(ctx.settings))
    return _oidc[0]


# -- a request in hand -------------------------------------------------------------------------


@dataclass
class Page:
    request: flask.Request
    ctx: Context
    route: Route
    params: dict[str, str]
    session: Session | None
    session_id: str | None
    cookie: str | None = None  # a new session's id, set on the answer
    end_cookie: bool = False
    _me: api.Answer | None = field(default=None, repr=False)

    @property
    def signed(self) -> SignedIn:
        assert self.session is not None and self.session.signed is not None, "a page that signs in"
        return self.session.signed

    @property
    def caller(self) -> Caller:
        signed = self.signed
        return Caller.of(signed, self.ctx.settings)

    def api(self, target: str, **kwargs: Any) -> api.Answer:
        return api.call(target, self.signed, remote_addr=self.request.remote_addr, **kwargs)

    def me(self) -> dict[str, Any]:
        """Who the API says the caller is (GET /me): the navigation's teams and roles."""
        if self._me is None:
            self._me = self.api("whoami")
        if not self._me.ok:
            raise _Refused(self._me)
        return dict(self._me.body)

    def form(self, name: str) -> str:
        return self.request.form.get(name, "").strip()

    def back(self, default: str) -> str:
        """Where an action returns: a console page named by the form, never another site."""
        given = self.request.form.get("back", "")
        try:
            route, _ = resolve("GET", given.partition("?")[0], PAGES)
        except MaasError:
            return default
        return given if route.path != "/" and _LOCAL_LINK.match(given) else default

    def anonymous_session(self) -> Session:
        if self.session is None:
            self.session_id, self.session = SESSIONS.start(self.ctx.clock())
            self.cookie = self.session_id
        return self.session


class _Refused(Exception):
    """An API answer that ends the page: shown as the API gave it."""

    def __init__(self, answer: api.Answer, title: str = "That did not work") -> None:
        super().__init__(answer.error)
        self.answer, self.title = answer, title


def _nav(page: Page) -> dict[str, Any]:
    if page.session is None or page.session.signed is None:
        return {"me": None, "links": []}
    me = page.me()
    links = [("My keys", "/console/keys"), ("My usage", "/console/usage"), ("Models", "/console/models")]
    if me["platform_admin"]:
        links.append(("Teams", "/console/teams"))
    for team in me["teams"]:
        if team["role"] == "admin" and not me["platform_admin"]:
            links.append((f"Team {team['team_id']}", f"/console/teams/{team['team_id']}"))
    return {"me": me, "links": links}


def render(page: Page, template: str, *, status: int = 200, **values: Any) -> flask.Response:
    session = page.session
    html = _templates.get_template(template).render(
        csrf=session.csrf if session is not None else "",
        flashes=session.take_flashes() if session is not None else [],
        path=page.request.path,
        **_nav(page),
        **values,
    )
    return flask.Response(html, status=status, mimetype="text/html")


def redirect(location: str, status: int = 303) -> flask.Response:
    return flask.Response("", status=status, headers={"Location": location})


def problem(page: Page, status: int, title: str, message: str, *, details: list[dict[str, Any]] | None = None,
            back: str | None = None) -> flask.Response:
    try:
        return render(page, "error.html", status=status, title=title, message=message, details=details or [],
                      back=back)
    except _Refused:
        # The navigation itself was refused (the session's person can no longer be read).
        page.session = None
        return render(page, "error.html", status=status, title=title, message=message, details=details or [],
                      back=back)


def refused(page: Page, answer: api.Answer, title: str = "That did not work", back: str | None = None) -> flask.Response:
    details = answer.body.get("details") if isinstance(answer.body, dict) else None
    return problem(page, answer.status, title, answer.error, details=details if isinstance(details, list) else None,
                   back=back)


# -- sign-in and out ---------------------------------------------------------------------------


def home(page: Page) -> flask.Response:
    signed_in = page.session is not None and page.session.signed is not None
    return redirect("/console/keys" if signed_in else "/console/signin")


def signin_form(page: Page, *, status: int = 200, error: str | None = None) -> flask.Response:
    if page.session is not None and page.session.signed is not None:
        return redirect("/console/keys")
    page.anonymous_session()
    settings = page.ctx.settings
    return render(page, "signin.html", status=status, title="Sign in", error=error,
                  admin_key_enabled=settings.admin_key is not None, oidc_enabled=settings.oidc_issuer is not None,
                  signed_out=page.request.args.get("signed_out") == "1")


def _signed_in(page: Page, signed: SignedIn) -> flask.Response:
    """A new session for who signed in (a new id: the anonymous one is dropped), then My keys."""
    SESSIONS.end(page.session_id)
    ttl = timedelta(seconds=page.ctx.settings.console_session_ttl_s)
    page.session_id, page.session = SESSIONS.start(page.ctx.clock(), signed=signed, ttl=ttl)
    page.cookie = page.session_id
    _audit_sign(page, signed, 303)
    return redirect("/console/keys")


def _audit_sign(page: Page, signed: SignedIn | None, status: int) -> None:
    """Sign-ins and sign-outs in the audit log as the console's (the target's) actions; a refused
    one is counted and sampled like any request without valid credentials."""
    try:
        audit.record_request(page.ctx, signed.identity.actor if signed else audit.ANONYMOUS, audit.Action(
            action=CONSOLE, method=page.request.method, path=page.request.path, outcome=status))
    except Exception:  # noqa: BLE001 - auditing must never fail the sign-in it records
        log.exception("audit failed for the console's %s", page.request.path)


def signin_admin_key(page: Page) -> flask.Response:
    settings = page.ctx.settings
    if settings.admin_key is None:
        return signin_form(page, status=401, error="Sign-in with the admin key is off: no admin key is configured.")
    if not is_admin(settings, page.request.form.get("admin_key", "")):
        _audit_sign(page, None, 401)
        return signin_form(page, status=401, error="That is not the admin key.")
    return _signed_in(page, SignedIn(ADMIN_KEY_IDENTITY, platform_admin=True))


def _redirect_uri(page: Page) -> str:
    base = page.ctx.settings.console_url or page.request.host_url.rstrip("/")
    return f"{base}/console/oidc/callback"


def signin_oidc(page: Page) -> flask.Response:
    if page.ctx.settings.oidc_issuer is None:
        return problem(page, 404, "No identity provider", "Sign-in with an identity provider is not configured "
                       "(MAAS_OIDC_ISSUER).", back="/console/signin")
    session = page.anonymous_session()
    pending = new_request(_redirect_uri(page))
    try:
        location = _oidc_client(page.ctx).authorization_url(pending)
    except BackendUnavailable as exc:
        return problem(page, exc.status, "The identity provider cannot be reached", exc.message, back="/console/signin")
    session.pending = pending
    return redirect(location)


def oidc_callback(page: Page) -> flask.Response:
    session = page.session
    pending = session.pending if session is not None else None
    state = page.request.args.get("state", "")
    if session is None or pending is None or not _same(state, pending.state):
        return problem(page, 400, "Sign-in not recognised", "This sign-in was not started in this browser, or took "
                       "longer than 15 minutes: start again.", back="/console/signin")
    session.pending = None  # one answer per request
    args = page.request.args
    if args.get("error"):
        text = " ".join((args.get("error_description") or args.get("error", "")).split())[:300]
        return problem(page, 401, "The identity provider refused the sign-in", text, back="/console/signin")
    code = args.get("code")
    if not code:
        return problem(page, 400, "Sign-in not recognised", "The identity provider sent no code.", back="/console/signin")
    try:
        id_token = _oidc_client(page.ctx).exchange(code, pending)
        signed = page.ctx.signin().sign_in(f"Bearer {id_token}")
    except MaasError as exc:
        _audit_sign(page, None, exc.status)
        return problem(page, exc.status, "Sign-in failed", exc.message, back="/console/signin")
    nonce = token_nonce(id_token)
    if signed.identity.method != "oidc" or nonce is None or not _same(nonce, pending.nonce):
        _audit_sign(page, None, 401)
        return problem(page, 401, "Sign-in failed", "The ID token is not the answer to this browser's sign-in "
                       "(its nonce differs).", back="/console/signin")
    return _signed_in(page, signed)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def signout(page: Page) -> flask.Response:
    signed = page.session.signed if page.session is not None else None
    SESSIONS.end(page.session_id)
    page.session, page.end_cookie = None, True
    if signed is not None:
        _audit_sign(page, signed, 303)
    return redirect("/console/signin?signed_out=1")


# -- keys --------------------------------------------------------------------------------------


def _models(page: Page) -> tuple[list[str], str | None]:
    """The model names for the key forms, or why they cannot be listed. The `models` rule: anyone
    signed in sees every model (GET /models), so the catalog is read as that route reads it."""
    authorize(route_for("list_models").access, page.caller, page.ctx.store, params={}, query={})
    try:
        return [model.name for model in page.ctx.catalog().list_models()], None
    except (MaasError, ValueError) as exc:
        return [], getattr(exc, "message", str(exc))


def _key_body(page: Page, **fixed: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**fixed, "alias": page.form("alias"), "models": page.request.form.getlist("models")}
    if page.form("expires_in"):
        body["expires_in"] = page.form("expires_in")
    return body


def my_keys(page: Page, *, status: int = 200, error: api.Answer | None = None) -> flask.Response:
    me = page.me()
    listing = page.api("list_my_keys", query={"limit": str(PAGE_SIZE), "cursor": page.request.args.get("cursor")})
    if not listing.ok:
        return refused(page, listing)
    models, models_problem = _models(page) if me["teams"] else ([], None)
    return render(page, "keys.html", status=status, title="My keys", listing=listing.body, teams=me["teams"],
                  models=models, models_problem=models_problem, expiries=EXPIRIES, graces=GRACES, error=error,
                  form=page.request.form if error else {})


def create_my_key(page: Page) -> flask.Response:
    answer = page.api("create_my_key", body=_key_body(page, team_id=page.form("team_id")))
    if not answer.ok:
        return my_keys(page, status=answer.status, error=answer)
    return key_created(page, answer.body, back="/console/keys")


def key_created(page: Page, created: Mapping[str, Any], *, back: str, rotated: str | None = None) -> flask.Response:
    return render(page, "key_created.html", status=201, title="Your new key", created=created, back=back,
                  rotated=rotated)


def revoke_key(page: Page) -> flask.Response:
    secret_name = page.params["secret_name"]
    back = page.back("/console/keys")
    answer = page.api("revoke_key", params={"secret_name": secret_name})
    if not answer.ok:
        return refused(page, answer, "The key was not revoked", back=back)
    assert page.session is not None
    page.session.flash(f"Key {secret_name} revoked: the gateway refuses it from the next request on.")
    return redirect(back)


def delete_key(page: Page) -> flask.Response:
    secret_name = page.params["secret_name"]
    back = page.back("/console/keys")
    answer = page.api("delete_key", params={"secret_name": secret_name})
    if not answer.ok:
        return refused(page, answer, "The key was not deleted", back=back)
    assert page.session is not None
    page.session.flash(f"Key {secret_name} deleted: it no longer works, and is no longer listed.")
    return redirect(back)


def rotate_key(page: Page) -> flask.Response:
    secret_name = page.params["secret_name"]
    back = page.back("/console/keys")
    answer = page.api("rotate_key", params={"secret_name": secret_name},
                      body={"grace_period": page.form("grace_period") or "0s"})
    if not answer.ok:
        return refused(page, answer, "The key was not rotated", back=back)
    return key_created(page, answer.body, back=back, rotated=secret_name)


def models_page(page: Page) -> flask.Response:
    page.me()
    authorize(route_for("list_models").access, page.caller, page.ctx.store, params={}, query={})
    try:
        models = page.ctx.catalog().list_models()
    except MaasError as exc:
        return problem(page, exc.status, "The models cannot be listed", exc.message)
    return render(page, "models.html", title="Models", models=models)


# -- usage -------------------------------------------------------------------------------------


def _bucket_labels(start: datetime, count: int, step_s: int, fmt: str) -> list[str]:
    return [(start + timedelta(seconds=step_s * n)).strftime(fmt) for n in range(count)]


def my_usage(page: Page) -> flask.Response:
    window = page.request.args.get("window", "24h")
    if window not in USAGE_WINDOWS:
        window = "24h"
    me = page.me()
    answer = page.api("my_usage", query={"window": window})
    if not answer.ok:
        return refused(page, answer)
    # The series and budgets are about the caller alone, under my_usage's rule (signed_in).
    caller = page.caller
    authorize(route_for("my_usage").access, caller, page.ctx.store, params={}, query={})
    length, step_s, fmt = USAGE_WINDOWS[window]
    now = page.ctx.clock()
    end = datetime.fromtimestamp((now.timestamp() // step_s + 1) * step_s, timezone.utc)
    start = end - length
    count = int(length.total_seconds() // step_s)
    by_model: dict[str, list[int]] = {}
    source = page.ctx.usage()
    for point in source.series(start=start, end=end, step_s=step_s, user_id=caller.user_id):
        index = int((point.start - start).total_seconds() // step_s)
        if 0 <= index < count:
            by_model.setdefault(point.row.model, [0] * count)[index] += point.row.tokens
    labels = _bucket_labels(start, count, step_s, fmt)
    totals = {m["model"]: m["token_usage"] for m in answer.body["model_breakdown"]}
    over_time = charts.tokens_over_time(labels, dict(sorted(by_model.items())),
                                        f"My tokens per {'hour' if step_s == 3600 else 'bucket'}, by model")
    by_model_chart = charts.tokens_by_model(totals, "My tokens by model") if totals else None
    budgets = [_budget(page, team, now) for team in me["teams"]]
    return render(page, "usage.html", title="My usage", usage=answer.body, window=window, windows=list(USAGE_WINDOWS),
                  over_time=over_time, by_model_chart=by_model_chart, budgets=[b for b in budgets if b],
                  rows=list(zip(labels, *[by_model[m] for m in sorted(by_model)])), row_models=sorted(by_model))


def _budget(page: Page, my_team: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """A team's limit and what the ledger counted in its last window. The gateway's counter (its
    window opens at a first request, GET /v1/me with the key shows it) lives in the gateway's
    process, which the console cannot ask; the team is read for a team the API just named the
    caller a member of, and the same membership check as for minting keys there (Caller.role_in)."""
    caller = page.caller
    if caller.role_in(page.ctx.store, my_team["team_id"]) is None:
        return None
    try:
        team: Team = page.ctx.store.get_team(team_id=my_team["team_id"])
    except NotFound:
        return None
    length = timedelta(milliseconds=window_ms(team.time_window))
    who = {"team_id": team.team_id} if team.limit_scope == "team" else {"team_id": team.team_id,
                                                                        "user_id": caller.user_id}
    spent = sum(row.tokens for row in page.ctx.usage().totals(start=now - length, end=now, **who))
    return {"team_id": team.team_id, "team_name": team.team_name, "token_limit": team.token_limit,
            "time_window": team.time_window, "limit_scope": team.limit_scope, "spent": spent,
            "remaining": max(0, team.token_limit - spent)}


# -- teams -------------------------------------------------------------------------------------


def teams_page(page: Page, *, status: int = 200, error: api.Answer | None = None) -> flask.Response:
    page.me()
    cursor = page.request.args.get("cursor")
    listing = page.api("list_teams", query={"limit": str(PAGE_SIZE), "cursor": cursor})
    if not listing.ok:
        return refused(page, listing, "Teams are for platform admins")
    return render(page, "teams.html", status=status, title="Teams", listing=listing.body, cursor=cursor,
                  error=error, form=page.request.form if error else {}, page_size=PAGE_SIZE)


def _int_or_text(text: str) -> int | str:
    # A number the API reads as one; anything else it refuses with its own message.
    return int(text) if text.isdigit() else text


def _team_fields(page: Page) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("team_name", "time_window", "limit_scope", "description"):
        if name in page.request.form and (page.form(name) or name == "description"):
            body[name] = page.form(name)
    if page.form("token_limit"):
        body["token_limit"] = _int_or_text(page.form("token_limit"))
    for name in ("max_keys_per_user", "max_key_lifetime"):
        if name in page.request.form:
            value = page.form(name)
            body[name] = (_int_or_text(value) if name == "max_keys_per_user" else value) if value else None
    return body


def create_team(page: Page) -> flask.Response:
    body = {"team_id": page.form("team_id"), **{k: v for k, v in _team_fields(page).items() if v is not None}}
    answer = page.api("create_team", body=body)
    if not answer.ok:
        return teams_page(page, status=answer.status, error=answer)
    assert page.session is not None
    page.session.flash(f"Team {answer.body['team_id']} created.")
    return redirect(f"/console/teams/{answer.body['team_id']}")


def team_page(page: Page, *, status: int = 200, error: api.Answer | None = None,
              error_form: str | None = None) -> flask.Response:
    team_id = page.params["team_id"]
    me = page.me()
    team = page.api("get_team", params={"team_id": team_id})
    if not team.ok:
        return refused(page, team)
    args = page.request.args
    members = page.api("list_members", params={"team_id": team_id},
                       query={"limit": str(PAGE_SIZE), "cursor": args.get("members_cursor")})
    keys = page.api("list_team_keys", params={"team_id": team_id},
                    query={"limit": str(PAGE_SIZE), "cursor": args.get("keys_cursor")})
    window = args.get("window", "24h") if args.get("window") in USAGE_WINDOWS else "24h"
    usage = page.api("team_usage", params={"team_id": team_id}, query={"window": window})
    for answer in (members, keys, usage):
        if not answer.ok:
            return refused(page, answer)
    models, models_problem = _models(page)
    totals = {m["model"]: m["token_usage"] for m in usage.body["model_breakdown"]}
    return render(page, "team.html", status=status, title=f"Team {team_id}", team=team.body, members=members.body,
                  keys=keys.body, usage=usage.body, window=window, windows=list(USAGE_WINDOWS),
                  by_model_chart=charts.tokens_by_model(totals, "Team tokens by model") if totals else None,
                  platform=me["platform_admin"], models=models, models_problem=models_problem, expiries=EXPIRIES,
                  graces=GRACES, error=error, error_form=error_form, form=page.request.form if error else {},
                  args=args)


def update_team(page: Page) -> flask.Response:
    team_id = page.params["team_id"]
    answer = page.api("update_team", params={"team_id": team_id}, body=_team_fields(page))
    if not answer.ok:
        return team_page(page, status=answer.status, error=answer, error_form="limits")
    assert page.session is not None
    page.session.flash(f"Team {team_id} updated.")
    return redirect(f"/console/teams/{team_id}")


def delete_team_confirm(page: Page) -> flask.Response:
    team_id = page.params["team_id"]
    page.me()
    team = page.api("get_team", params={"team_id": team_id})
    if not team.ok:
        return refused(page, team)
    return render(page, "team_delete.html", title=f"Delete team {team_id}", team=team.body)


def delete_team(page: Page) -> flask.Response:
    team_id = page.params["team_id"]
    answer = page.api("delete_team", params={"team_id": team_id})
    if not answer.ok:
        return refused(page, answer, "The team was not deleted", back=f"/console/teams/{team_id}")
    assert page.session is not None
    page.session.flash(f"Team {team_id} deleted with its {answer.body['keys_deleted']} key(s).")
    return redirect("/console/teams")


def create_team_key(page: Page) -> flask.Response:
    team_id = page.params["team_id"]
    body = _key_body(page, user_id=page.form("user_id"))
    if page.form("user_email"):
        body["user_email"] = page.form("user_email")
    answer = page.api("create_key", params={"team_id": team_id}, body=body)
    if not answer.ok:
        return team_page(page, status=answer.status, error=answer, error_form="key")
    return key_created(page, answer.body, back=f"/console/teams/{team_id}")


def add_member(page: Page) -> flask.Response:
    team_id = page.params["team_id"]
    body = {"user_id": page.form("user_id"), "role": page.form("role") or "member"}
    if page.form("user_email"):
        body["user_email"] = page.form("user_email")
    answer = page.api("add_member", params={"team_id": team_id}, body=body)
    if not answer.ok:
        return team_page(page, status=answer.status, error=answer, error_form="member")
    assert page.session is not None
    page.session.flash(f"{answer.body['user_id']} is now a {answer.body['role']} of team {team_id}.")
    return redirect(f"/console/teams/{team_id}")


def update_member(page: Page) -> flask.Response:
    team_id, user_id = page.params["team_id"], page.params["user_id"]
    answer = page.api("update_member", params={"team_id": team_id, "user_id": user_id},
                      body={"role": page.form("role")})
    if not answer.ok:
        return refused(page, answer, "The role was not changed", back=f"/console/teams/{team_id}")
    assert page.session is not None
    page.session.flash(f"{user_id} is now a {answer.body['role']} of team {team_id}.")
    return redirect(f"/console/teams/{team_id}")


def remove_member(page: Page) -> flask.Response:
    team_id, user_id = page.params["team_id"], page.params["user_id"]
    answer = page.api("remove_member", params={"team_id": team_id, "user_id": user_id})
    if not answer.ok:
        return refused(page, answer, "The member was not removed", back=f"/console/teams/{team_id}")
    assert page.session is not None
    revoked = len(answer.body["revoked_keys"])
    page.session.flash(f"{user_id} removed from team {team_id}; {revoked} key(s) of theirs there revoked.")
    return redirect(f"/console/teams/{team_id}")


def static(page: Page) -> flask.Response:
    name = page.params["name"]
    if name not in STATIC:
        return problem(page, 404, "Not found", f"no such file: {name}")
    response = flask.Response((HERE / "static" / name).read_bytes(), mimetype=STATIC[name].split(";")[0])
    response.headers["Content-Type"] = STATIC[name]
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


VIEWS: dict[tuple[str, str], Callable[[Page], flask.Response]] = {
    ("GET", "/"): home,
    ("GET", "/console/signin"): signin_form,
    ("POST", "/console/signin"): signin_admin_key,
    ("GET", "/console/signin/oidc"): signin_oidc,
    ("GET", "/console/oidc/callback"): oidc_callback,
    ("POST", "/console/signout"): signout,
    ("GET", "/console/keys"): my_keys,
    ("POST", "/console/keys"): create_my_key,
    ("POST", "/console/keys/{secret_name}/revoke"): revoke_key,
    ("POST", "/console/keys/{secret_name}/rotate"): rotate_key,
    ("POST", "/console/keys/{secret_name}/delete"): delete_key,
    ("GET", "/console/models"): models_page,
    ("GET", "/console/usage"): my_usage,
    ("GET", "/console/teams"): teams_page,
    ("POST", "/console/teams"): create_team,
    ("GET", "/console/teams/{team_id}"): team_page,
    ("POST", "/console/teams/{team_id}"): update_team,
    ("GET", "/console/teams/{team_id}/delete"): delete_team_confirm,
    ("POST", "/console/teams/{team_id}/delete"): delete_team,
    ("POST", "/console/teams/{team_id}/keys"): create_team_key,
    ("POST", "/console/teams/{team_id}/members"): add_member,
    ("POST", "/console/teams/{team_id}/members/{user_id}"): update_member,
    ("POST", "/console/teams/{team_id}/members/{user_id}/remove"): remove_member,
    ("GET", "/console/static/{name}"): static,
}


# -- the target --------------------------------------------------------------------------------


def _bare(status: int, title: str, message: str, headers: Mapping[str, str] | None = None) -> flask.Response:
    html = _templates.get_template("error.html").render(
        csrf="", flashes=[], path="", me=None, links=[], title=title, message=message, details=[], back="/")
    return flask.Response(html, status=status, mimetype="text/html", headers=dict(headers or {}))


def serve(request: flask.Request) -> flask.Response:
    try:
        route, params = resolve(request.method, request.path, PAGES)
    except NotFound as exc:
        return _finish(_bare(404, "Not found", exc.message), None)
    except MethodNotAllowed as exc:
        return _finish(_bare(405, "Not allowed", exc.message, exc.headers), None)
    try:
        ctx = context()
        page = _page(request, ctx, route, params)
        response = _guarded(page)
    except MaasError as exc:
        return _finish(_bare(exc.status, "That did not work", exc.message), None)
    except Exception:  # noqa: BLE001 - the one place an unexpected error becomes a 500
        log.exception("unhandled error in the console's %s %s", request.method, route.path)
        return _finish(_bare(500, "Internal error", "internal error"), None)
    return _finish(response, page)


def _page(request: flask.Request, ctx: Context, route: Route, params: dict[str, str]) -> Page:
    session_id = request.cookies.get(COOKIE)
    session = SESSIONS.find(session_id, ctx.clock())
    return Page(request=request, ctx=ctx, route=route, params=params, session=session,
                session_id=session_id if session is not None else None)


def _guarded(page: Page) -> flask.Response:
    key = (page.route.method, page.route.path)
    request = page.request
    if request.method == "POST":
        limit = page.ctx.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return problem(page, 413, "Too large", f"request body exceeds {limit} bytes")
        if page.session is None:
            if key in OPEN:
                return signin_form(page, status=403, error="This form had expired: try again.")
            return problem(page, 401, "Signed out", "You are not signed in, or your session has expired: sign in "
                           "again.", back="/console/signin")
        if not page.session.csrf_matches(request.form.get("csrf")):
            return problem(page, 403, "Refused", "This form did not come from this console session (its CSRF "
                           "token is missing or wrong): reload the page and try again.")
    elif key not in OPEN and (page.session is None or page.session.signed is None):
        return redirect("/console/signin")
    if key not in OPEN and key != ("POST", "/console/signout") and (page.session is None or page.session.signed is None):
        return problem(page, 401, "Signed out", "Sign in first.", back="/console/signin")
    try:
        return VIEWS[key](page)
    except _Refused as exc:
        return refused(page, exc.answer, exc.title)


def _finish(response: flask.Response, page: Page | None) -> flask.Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not response.headers.get("Cache-Control"):
        # Pages show people's keys, teams and usage: never kept by a browser or a proxy.
        response.headers["Cache-Control"] = "no-store"
    if page is not None and page.cookie is not None and page.session is not None:
        max_age = int((page.session.expires - page.ctx.clock()).total_seconds())
        response.set_cookie(COOKIE, page.cookie, max_age=max_age, path="/", secure=True, httponly=True,
                            samesite="Lax")
    elif page is not None and page.end_cookie:
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response


def query_string(args: Mapping[str, str | None]) -> str:
    return urlencode({k: v for k, v in args.items() if v})


_templates.globals["qs"] = query_string
