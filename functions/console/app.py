"""The console's pages: one handler per page of shared.routes.PAGES, rendered on the server.

Every page that shows or changes something gets it from the API's targets, called in-process as
the person signed in (functions.console.api), so what they may see and do is exactly what the API
lets them; a refusal shows the API's message as it is, with its status. Forms post back here with
the session's CSRF token; an action answers with a redirect to the page it came from (so a reload
does not repeat it), except a new key, which is shown once in the answer to the post that made it
and is kept nowhere.

Tables page (and, when short enough, sort) on the server (functions.console.tables): the browser
gets one page of rows. A few pages are views of another page's path (`?view=`, VIEWS_OF): the
routing table has no path of their own for them.
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
from urllib.parse import urlencode, urlsplit

import flask
import jinja2

from functions._context import context
from functions.console import api, charts
from functions.console.limitsview import (
    SCOPES,
    MyBudget,
    limits_of_lines,
    my_budget,
    rate_lines,
    rate_words,
    reset_words,
)
from functions.console.oidcflow import OidcClient, new_request, token_nonce
from functions.console.ranges import (
    Range,
    RangeProblem,
    parse_instant,
    parse_range,
    rfc3339,
)
from functions.console.sessions import COOKIE, SESSIONS, Session
from functions.console.tables import (
    PAGE_SIZE,
    Column,
    Table,
    api_table,
    whole_table,
)
from functions.console.usagedata import my_series, overview_of, team_series, top_series
from shared import audit
from shared.access import Caller, authorize
from shared.auth import is_admin
from shared.context import Context
from shared.errors import BackendUnavailable, MaasError, MethodNotAllowed, NotFound
from shared.ratespec import SpecError
from shared.routes import CONSOLE, PAGES, ROUTES, Route, resolve, route_for
from shared.signin import ADMIN_KEY_IDENTITY, SignedIn
from shared.store import Team

log = logging.getLogger("maas.console")

HERE = Path(__file__).resolve().parent
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
# A console link as the pages write them: nothing else may reach a redirect's Location.
_LOCAL_LINK = re.compile(r"^/console/[A-Za-z0-9._~/?=&%-]*$")
# Pages anyone may open; every other page needs a signed-in session.
OPEN = {("GET", "/"), ("GET", "/console/signin"), ("POST", "/console/signin"), ("GET", "/console/signin/oidc"),
        ("GET", "/console/oidc/callback"), ("GET", "/console/static/{name}")}
# Scripts from this origin only; pygal's SVG carries its own <style>, hence inline styles. Forms
# post here only, and the sign-out's redirect may go on to the identity provider's end-session
# endpoint (Chromium checks form-action on a form's redirects too): `{sign_out}` is its origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'{sign_out}; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the callback's URL holds the provider's code
    "X-Frame-Options": "DENY",
}
# Pages that are views of another page's path: the routing table (shared.routes.PAGES) has no
# path of their own for them, so they are `?view=` of the page they belong to.
VIEWS_OF: dict[str, tuple[str, ...]] = {
    "/console/teams": ("overview", "audit"),
    "/console/teams/{team_id}": ("usage", "audit"),
}
# The overview's top teams and users: one table page of each (its chart names the usagedata.TOP
# largest of these; GET /usage's series_total makes its "others" exact all the same).
OVERVIEW_TOP = PAGE_SIZE
# GET /audit's filters, for the form: the function targets (and the console's sign-ins).
AUDIT_ACTIONS = tuple(sorted({route.target for route in ROUTES} | {CONSOLE}))
AUDIT_OUTCOMES = (("", "any"), ("success", "success (2xx)"), ("failure", "failure (any other)"),
                  ("400", "400"), ("401", "401"), ("403", "403"), ("404", "404"), ("409", "409"),
                  ("413", "413"), ("422", "422"), ("429", "429"), ("503", "503"))
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
_templates.filters["resets"] = reset_words
_templates.filters["rate_words"] = rate_words
_templates.globals["scopes"] = SCOPES
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

    @property
    def view(self) -> str:
        """Which view of this page's path the query asks for ("" for the page itself)."""
        asked = self.request.args.get("view", "") if self.request.method == "GET" else ""
        return asked if asked in VIEWS_OF.get(self.route.path, ()) else ""

    @property
    def current(self) -> str:
        """This page as the navigation's links name it."""
        return self.request.path + (f"?view={self.view}" if self.view else "")

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
        links += [("Overview", "/console/teams?view=overview"), ("Teams", "/console/teams"),
                  ("Audit log", "/console/teams?view=audit")]
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
        current=page.current,
        # Where an action on this page comes back to: the page as it is shown, its tables' pages too.
        back_here=page.request.full_path.rstrip("?") if page.request.method == "GET" else page.request.path,
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
    provider = _end_session_url(page) if signed is not None and signed.identity.method == "oidc" else None
    return redirect(provider or "/console/signin?signed_out=1")


def _end_session_url(page: Page) -> str | None:
    """RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0), when the provider advertises
    an end_session_endpoint: else signing out here would leave the provider's session, and the
    next "Sign in" would be let through without a password. The request names the client, not an
    ID token (`id_token_hint`): the session keeps no token, since the API would take it as a
    credential. The provider sends the browser back to the sign-in page, a URI to register with
    it like the callback. A provider that cannot be reached: signed out here all the same."""
    if page.ctx.settings.oidc_issuer is None:
        return None
    client = _oidc_client(page.ctx)
    try:
        endpoint = client.endpoints().end_session
    except MaasError as exc:
        log.warning("sign-out: the identity provider's session is left as it is: %s", exc.message)
        return None
    if endpoint is None:
        return None
    base = page.ctx.settings.console_url or page.request.host_url.rstrip("/")
    query = urlencode({"client_id": client.client_id, "post_logout_redirect_uri": f"{base}/console/signin?signed_out=1"})
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


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


# The key tables' columns: the API pages keys by handle, so that is their sort at any size.
MY_KEY_COLUMNS = (Column("alias", "Alias"), Column("team_id", "Team"), Column("secret_name", "Handle"),
                  Column("status", "Status"), Column("models_allowed", "Models"), Column("created_at", "Created"),
                  Column("expires_at", "Expires"), Column("last_used_at", "Last used"))
TEAM_KEY_COLUMNS = (Column("user_id", "User"), Column("alias", "Alias"), Column("secret_name", "Handle"),
                    Column("status", "Status"), Column("models_allowed", "Models"), Column("created_at", "Created"),
                    Column("expires_at", "Expires"), Column("last_used_at", "Last used"))
MEMBER_COLUMNS = (Column("user_id", "User"), Column("user_email", "Email"), Column("role", "Role"),
                  Column("joined_at", "Joined"))
TEAM_COLUMNS = (Column("team_id", "Team id"), Column("team_name", "Name"), Column("token_limit", "Limit", numeric=True),
                Column("limit_scope", "Counted for"), Column("key_count", "Keys", numeric=True),
                Column("user_count", "Users with keys", numeric=True), Column("created_at", "Created"))


def _listing(page: Page, name: str, target: str, columns: tuple[Column, ...], *, items: str, total: str,
             id_column: str, noun: str, base: str, params: Mapping[str, str] | None = None) -> Table | api.Answer:
    """An API listing as a table paged (and, when short enough, sorted) on the server."""
    def fetch(limit: int, cursor: str | None) -> api.Answer:
        return page.api(target, params=dict(params or {}), query={"limit": str(limit), "cursor": cursor})

    args = page.request.args if page.request.method == "GET" else {}
    return api_table(name, columns, fetch, items=items, total=total, id_column=id_column, args=dict(args), base=base,
                     noun=noun)


def my_keys(page: Page, *, status: int = 200, error: api.Answer | None = None) -> flask.Response:
    me = page.me()
    listing = _listing(page, "keys", "list_my_keys", MY_KEY_COLUMNS, items="keys", total="total_keys",
                       id_column="secret_name", noun="keys", base="/console/keys")
    if isinstance(listing, api.Answer):
        return refused(page, listing)
    models, models_problem = _models(page) if me["teams"] else ([], None)
    return render(page, "keys.html", status=status, title="My keys", listing=listing, teams=me["teams"],
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


USAGE_COLUMNS = (Column("token_usage", "Tokens", numeric=True), Column("authorized_calls", "Calls", numeric=True),
                 Column("limited_calls", "Refused (429)", numeric=True))
MODEL_USAGE_COLUMNS = (Column("model", "Model"), *USAGE_COLUMNS)
TEAM_USER_COLUMNS = (Column("user_id", "User"), Column("user_email", "Email"), *USAGE_COLUMNS)


def _usage_range(page: Page) -> tuple[Range, str | None]:
    return parse_range(page.request.args, page.ctx.clock())


def _range_refused(page: Page, answer: api.Answer) -> bool:
    """Whether a usage answer ends the page: a refusal of the person (401, 403, 404) does; one of
    the range (its start, end or step) is shown on the page beside its form, as the API said it."""
    return not answer.ok and answer.status in (401, 403, 404)


def _bucket_rows(rng: Range, series: Mapping[str, list[int]]) -> list[list[Any]]:
    """The chart's numbers as table rows: a bucket's label, then one number a series."""
    return [[label, *(series[name][i] for name in series)] for i, label in enumerate(rng.labels())]


def my_usage(page: Page) -> flask.Response:
    me = page.me()
    rng, range_problem = _usage_range(page)
    answer = page.api("my_usage", query=rng.query())
    if _range_refused(page, answer):
        return refused(page, answer)
    tokens_by_model: dict[str, list[int]] = {}
    calls_by_model: dict[str, list[int]] = {}
    if answer.ok:
        # The series is about the caller alone, under my_usage's rule (signed_in): GET /me/usage
        # has no series of its own, so the usage source is read as that route reads it.
        caller = page.caller
        authorize(route_for("my_usage").access, caller, page.ctx.store, params={}, query={})
        points = page.ctx.usage().series(start=rng.start, end=rng.end, step_s=rng.step_s, user_id=caller.user_id)
        tokens_by_model, calls_by_model = my_series(points, rng)
    labels = rng.labels()
    body = answer.body if answer.ok else None
    models = whole_table("models", MODEL_USAGE_COLUMNS, body["model_breakdown"] if body else [],
                         args=page.request.args, base="/console/usage", default_sort="token_usage",
                         default_order="desc")
    budgets = [_budget(page, team, page.ctx.clock()) for team in me["teams"]]
    return render(
        page, "usage.html", title="My usage", usage=body, error=None if answer.ok else answer, rng=rng,
        range_problem=range_problem, base="/console/usage", hidden={},
        tokens_chart=charts.over_time(labels, tokens_by_model, f"My tokens per {rng.step_words}, by model"),
        calls_chart=charts.over_time(labels, calls_by_model, f"My calls per {rng.step_words}, by model"),
        token_rows=_bucket_rows(rng, tokens_by_model), call_rows=_bucket_rows(rng, calls_by_model),
        token_models=list(tokens_by_model), call_models=list(calls_by_model), models=models,
        budgets=[b for b in budgets if b])


def _budget(page: Page, my_team: Mapping[str, Any], now: datetime) -> MyBudget | None:
    """Every limit of a team the API just named the caller a member of, about the caller alone.
    Explain's route is a team admin's, so it is not asked: its answer about the caller is what
    GET /v1/me shows them with a key, read under the same membership check as for minting keys
    there (Caller.role_in)."""
    caller = page.caller
    if caller.role_in(page.ctx.store, my_team["team_id"]) is None:
        return None
    try:
        team: Team = page.ctx.store.get_team(team_id=my_team["team_id"])
    except NotFound:
        return None
    return my_budget(page.ctx, team, caller.user_id, now)


# -- teams -------------------------------------------------------------------------------------


def teams_page(page: Page, *, status: int = 200, error: api.Answer | None = None) -> flask.Response:
    if page.view == "overview":
        return overview_page(page)
    if page.view == "audit":
        return audit_page(page, team=None)
    page.me()
    listing = _listing(page, "teams", "list_teams", TEAM_COLUMNS, items="teams", total="total_teams",
                       id_column="team_id", noun="teams", base="/console/teams")
    if isinstance(listing, api.Answer):
        return refused(page, listing, "Teams are for platform admins")
    return render(page, "teams.html", status=status, title="Teams", listing=listing, error=error,
                  form=page.request.form if error else {})


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
              error_form: str | None = None, simulated: api.Answer | None = None) -> flask.Response:
    team_id = page.params["team_id"]
    me = page.me()
    team = page.api("get_team", params={"team_id": team_id})
    if not team.ok:
        return refused(page, team)
    if page.view == "usage":
        return team_usage_page(page, team.body)
    if page.view == "audit":
        return audit_page(page, team=team.body)
    here = f"/console/teams/{team_id}"
    members = _listing(page, "members", "list_members", MEMBER_COLUMNS, items="members", total="total_members",
                       id_column="user_id", noun="members", base=here, params={"team_id": team_id})
    if isinstance(members, api.Answer):
        return refused(page, members)
    keys = _listing(page, "keys", "list_team_keys", TEAM_KEY_COLUMNS, items="keys", total="total_keys",
                    id_column="secret_name", noun="keys", base=here, params={"team_id": team_id})
    if isinstance(keys, api.Answer):
        return refused(page, keys)
    models, models_problem = _models(page)
    asked = {"user_id": page.request.args.get("explain_user", "").strip(),
             "model": page.request.args.get("explain_model", "").strip()}
    explained = page.api("explain_limits", params={"team_id": team_id}, query=asked) if asked["user_id"] else None
    # A rate may name a model the catalog no longer lists: explain can still be asked about it.
    rate_models = {str(rate["model"]) for rate in team.body["limits"] if rate.get("model")}
    return render(page, "team.html", status=status, title=f"Team {team_id}", team=team.body, members=members,
                  keys=keys, platform=me["platform_admin"], models=models, models_problem=models_problem,
                  expiries=EXPIRIES, graces=GRACES, error=error, error_form=error_form,
                  form=page.request.form if error or simulated else {}, rate_lines=rate_lines(team.body["limits"]),
                  asked=asked, explained=explained, explain_models=sorted(set(models) | rate_models),
                  explain_users=[m["user_id"] for m in members.extra["members"]] if members.whole else None,
                  simulated=simulated)


def _form_rates(page: Page) -> list[dict[str, Any]] | api.Answer:
    """The form's rates as the API's `limits`, or why a line is none (a 422 that was not sent)."""
    try:
        return limits_of_lines(page.request.form.get("limits", ""))
    except SpecError as exc:
        return api.Answer(422, {"error": str(exc)}, source="console")


def simulate_limits(page: Page) -> flask.Response:
    """What-if: the team's recorded calls against the rates typed, over the range given (the
    API's default: the last 24 hours). It changes nothing, so its answer is the team's page."""
    limits = _form_rates(page)
    if isinstance(limits, api.Answer):
        return team_page(page, status=limits.status, simulated=limits)
    body: dict[str, Any] = {"limits": limits}
    for name in ("start", "end"):
        if page.form(name):
            body[name] = _instant_for_api(page.form(name))
    answer = page.api("simulate_limits", params={"team_id": page.params["team_id"]}, body=body)
    return team_page(page, status=200 if answer.ok else answer.status, simulated=answer)


def team_usage_page(page: Page, team: Mapping[str, Any]) -> flask.Response:
    """The team's usage over a chosen range: by user over time, by user and by model."""
    team_id = str(team["team_id"])
    here = f"/console/teams/{team_id}"
    rng, range_problem = _usage_range(page)
    answer = page.api("team_usage", params={"team_id": team_id}, query={**rng.query(), "step": rng.step_query})
    if _range_refused(page, answer):
        return refused(page, answer)
    body = answer.body if answer.ok else None
    by_user = top_series(team_series(body["series"], rng)) if body else {}
    totals = {m["model"]: m["token_usage"] for m in body["model_breakdown"]} if body else {}
    args = page.request.args
    users = whole_table("users", TEAM_USER_COLUMNS, body["user_breakdown"] if body else [], args=args, base=here,
                        default_sort="token_usage", default_order="desc")
    models = whole_table("models", MODEL_USAGE_COLUMNS, body["model_breakdown"] if body else [], args=args,
                         base=here, default_sort="token_usage", default_order="desc")
    return render(
        page, "team_usage.html", title=f"Team {team_id}: usage", team=team, usage=body,
        error=None if answer.ok else answer, rng=rng, range_problem=range_problem, base=here,
        hidden={"view": "usage"}, users=users, models=models,
        over_time=charts.over_time(rng.labels(), by_user, f"Team tokens per {rng.step_words}, by user"),
        rows=_bucket_rows(rng, by_user), row_names=list(by_user),
        by_model_chart=charts.totals(totals, "Team tokens by model") if totals else None)


OVERVIEW_TEAM_COLUMNS = (Column("team_id", "Team"), Column("team_name", "Name"), *USAGE_COLUMNS,
                         Column("users", "Users with calls", numeric=True))
OVERVIEW_USER_COLUMNS = (Column("user_id", "User"), *USAGE_COLUMNS, Column("teams", "Teams", numeric=True))


def overview_page(page: Page) -> flask.Response:
    """The platform over a range: tokens per bucket by team, the top teams, users and models, and
    the calls refused for a limit, from one GET /usage."""
    page.me()
    rng, range_problem = _usage_range(page)
    answer = page.api("platform_usage", query={**rng.query(), "step": rng.step_query, "top": str(OVERVIEW_TOP)})
    if answer.status in (401, 403):
        return refused(page, answer, "The overview is for platform admins")
    error = None if answer.ok else answer  # the range, refused: the page shows the API's words
    summed = overview_of(answer.body if answer.ok else None, rng)
    args, base = page.request.args, "/console/teams"
    by_team = summed.tokens_by_team
    limited = {"refused (429)": summed.limited_by_bucket} if any(summed.limited_by_bucket) else {}
    return render(
        page, "overview.html", title="Overview", rng=rng, range_problem=range_problem, error=error, base=base,
        hidden={"view": "overview"}, summed=summed, top=OVERVIEW_TOP,
        tokens_chart=charts.over_time(rng.labels(), by_team, f"Tokens per {rng.step_words}, by team"),
        limited_chart=charts.over_time(rng.labels(), limited, f"Calls refused for a limit (429) per {rng.step_words}",
                                       empty="no refused calls"),
        rows=_bucket_rows(rng, by_team), row_names=list(by_team),
        teams=whole_table("teams", OVERVIEW_TEAM_COLUMNS, summed.teams, args=args, base=base,
                          default_sort="token_usage", default_order="desc"),
        users=whole_table("users", OVERVIEW_USER_COLUMNS, summed.users, args=args, base=base,
                          default_sort="token_usage", default_order="desc"),
        models=whole_table("models", MODEL_USAGE_COLUMNS, summed.models, args=args, base=base,
                           default_sort="token_usage", default_order="desc"))


def _instant_for_api(text: str) -> str | None:
    """An instant typed into a form, as RFC 3339 for the API; text the console cannot read
    goes to the API as it is, so that its refusal (and its words) is what the page shows."""
    if not text:
        return None
    try:
        return rfc3339(parse_instant(text, "since"))
    except RangeProblem:
        return text


def audit_page(page: Page, *, team: Mapping[str, Any] | None) -> flask.Response:
    """The audit log (GET /audit), newest first, filtered and paged by the API: the whole log for
    a platform admin, one team's entries (its page's) for the team's admins."""
    me = page.me()
    args = page.request.args
    filters = {name: args.get(name, "").strip() for name in ("action", "outcome", "since", "until", "team_id")}
    if team is not None:
        filters["team_id"] = str(team["team_id"])
    base = f"/console/teams/{team['team_id']}" if team is not None else "/console/teams"
    if team is None and not me["platform_admin"]:
        # The whole log's page is a platform admin's: anyone else is asked for it as the API
        # would be without a team, so the refusal is the API's (a team admin has their team's page).
        return refused(page, page.api("list_audit", query={"limit": "1"}), "The audit log is for platform admins")
    answer = page.api("list_audit", query={
        "team_id": filters["team_id"], "action": filters["action"], "outcome": filters["outcome"],
        "since": _instant_for_api(filters["since"]), "until": _instant_for_api(filters["until"]),
        "limit": str(PAGE_SIZE), "cursor": args.get("cursor")})
    if not answer.ok and answer.status in (401, 403):
        return refused(page, answer, "The audit log is for admins")
    kept = {"view": "audit", **{k: v for k, v in filters.items() if v and not (team is not None and k == "team_id")}}
    return render(page, "audit.html", title="Audit log" if team is None else f"Team {team['team_id']}: audit log",
                  team=team, filters=filters, actions=AUDIT_ACTIONS, outcomes=AUDIT_OUTCOMES,
                  entries=answer.body["entries"] if answer.ok else [], error=None if answer.ok else answer,
                  next_cursor=answer.body["next_cursor"] if answer.ok else None, cursor=args.get("cursor"),
                  base=base, kept=kept, platform=me["platform_admin"])


def update_team(page: Page) -> flask.Response:
    team_id = page.params["team_id"]
    # Two forms post here: the list of rates, or the short form (which edits the primary rate);
    # the API takes one or the other, never both in one change.
    rates = "limits" in page.request.form
    limits = _form_rates(page) if rates else None
    if isinstance(limits, api.Answer):
        return team_page(page, status=limits.status, error=limits, error_form="rates")
    body = {"limits": limits} if rates else _team_fields(page)
    answer = page.api("update_team", params={"team_id": team_id}, body=body)
    if not answer.ok:
        return team_page(page, status=answer.status, error=answer, error_form="rates" if rates else "limits")
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
    ("POST", "/console/teams/{team_id}/limits/simulate"): simulate_limits,
    ("POST", "/console/teams/{team_id}/members"): add_member,
    ("POST", "/console/teams/{team_id}/members/{user_id}"): update_member,
    ("POST", "/console/teams/{team_id}/members/{user_id}/remove"): remove_member,
    ("GET", "/console/static/{name}"): static,
}


# -- the target --------------------------------------------------------------------------------


def _bare(status: int, title: str, message: str, headers: Mapping[str, str] | None = None) -> flask.Response:
    html = _templates.get_template("error.html").render(
        csrf="", flashes=[], path="", current="", back_here="/", me=None, links=[], title=title, message=message, details=[], back="/")
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
    end_session = _oidc[0].known_end_session() if _oidc else None
    response.headers.setdefault("Content-Security-Policy",
                                CSP.format(sign_out=f" {_origin(end_session)}" if end_session else ""))
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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def query_string(args: Mapping[str, str | None]) -> str:
    return urlencode({k: v for k, v in args.items() if v})


_templates.globals["qs"] = query_string
_templates.globals["page_size"] = PAGE_SIZE
