"""`maas login`, `maas logout`, `maas whoami`: who the other commands act as.

A credential is checked with `GET /me` before it is saved, so a typo is a 401 now rather than
at the next command. Secrets are read from the environment, a pipe or a hidden prompt, never from
the command line, where `ps` and the shell's history would keep them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import oidc, output
from cli.client import Api, trust_for
from cli.config import (
    Credential,
    Method,
    credentials_path,
    is_loopback,
    local_admin_key_file,
    normalize_url,
    profile_name,
)
from cli.exitcodes import CliError, ExitCode
from cli.output import Format, JsonOption, OutputOption
from cli.prompts import read_secret
from cli.session import session


def register(app: typer.Typer) -> None:
    app.command("login", rich_help_panel="Sign in")(login)
    app.command("logout", rich_help_panel="Sign in")(logout)
    app.command("whoami", rich_help_panel="Sign in")(whoami)


def _admin_key(url: str) -> str:
    given = os.environ.get("ADMIN_KEY", "").strip()
    if given:
        return given
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        if piped:
            return piped
    local = local_admin_key_file() if is_loopback(url) else None
    if local is not None:
        output.note(f"using the admin key in {local}")
        return local.read_text().strip()
    typed = read_secret("Admin key") if sys.stdin.isatty() else None
    if not typed:
        raise CliError("no admin key given", ExitCode.USAGE,
                       hint="set ADMIN_KEY, or pipe it in: maas login --admin-key < .maas/admin-key")
    return typed


def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", metavar="URL", help="The admin API to sign in to (else maas --url, the profile's, MAAS_URL, the default).")] = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", metavar="NAME", help="Keep this sign-in and its server under a name, for `maas --profile NAME ...` (MAAS_PROFILE) to use; as maas --profile.")] = None,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", metavar="FILE", exists=True, dir_okay=False, help="A private CA's certificate (PEM), as maas --ca-file (MAAS_CA_FILE): for the admin API and the identity provider; kept for the next commands.")] = None,
    admin_key: Annotated[bool, typer.Option("--admin-key", help="Sign in with the admin key: from ADMIN_KEY, a pipe, make run's .maas/admin-key (for 127.0.0.1), or a prompt.")] = False,
    token: Annotated[bool, typer.Option("--token", help="Sign in with a bearer token you have (OIDC or Kubernetes: `kubectl create token`), piped in or typed.")] = False,
    issuer: Annotated[str | None, typer.Option("--issuer", metavar="URL", help="Sign in with this OpenID Connect provider (its issuer URL): by its device sign-in if it offers one, else in a browser here.")] = None,
    client_id: Annotated[str | None, typer.Option("--client-id", metavar="ID", help="The client registered for the key manager at the provider (its tokens' audience).")] = None,
    device: Annotated[bool, typer.Option("--device", help="With --issuer: show a URL and a code to sign in with on any device (RFC 8628 device authorization).")] = False,
    browser: Annotated[bool, typer.Option("--browser", help="With --issuer: sign in in a browser on this machine, redirected to 127.0.0.1 (authorization code with PKCE).")] = False,
    scope: Annotated[str, typer.Option("--scope", metavar="SCOPES", help="Scopes to ask the provider for.")] = "openid profile email",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="--browser: loopback port for the redirect (0: any free one; some providers need a fixed one).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the URL to open (on another machine's browser if need be), open none.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Seconds to wait for the sign-in at the provider.")] = 300,
) -> None:
    """Sign in to a key manager, and keep the credentials for the next commands.

    One of: --admin-key (the bootstrap credential), --token (a token you already have), or
    --issuer with --client-id (a sign-in with your identity provider). With none and ADMIN_KEY
    set, the admin key. Credentials are kept per server in ~/.config/maas/credentials.json (0600)
    and never printed.

    With --issuer, maas uses the provider's device sign-in when its discovery document offers one
    (a URL and a code to enter there, from any device: fit for a shell on a server), else a
    browser sign-in on this machine (authorization code with PKCE, redirected to 127.0.0.1);
    --device or --browser chooses. A provider signed by a private CA needs --ca-file (MAAS_CA_FILE).

    Examples:
      maas login --admin-key < .maas/admin-key
      ADMIN_KEY=... maas login --url https://keys.example.com --admin-key
      maas login --issuer https://sso.example.com/realms/acme --client-id maas
      maas login --issuer https://sso.example.com --client-id maas --browser
      maas login --url https://keys.corp --ca-file corp-ca.pem \\
          --issuer https://sso.corp --client-id maas
      kubectl create token alice | maas login --token
      maas login --profile prod --url https://keys.example.com \\
          --issuer https://sso.example.com --client-id maas
    """
    state = session(ctx)
    store = state.store()
    name = profile_name(profile) if profile else state.profile
    target = normalize_url(url) if url else state.url(store, profile=name, login=True)
    chosen = [name for name, on in (("--admin-key", admin_key), ("--token", token), ("--issuer", issuer is not None)) if on]
    if len(chosen) > 1:
        raise CliError(f"choose one way to sign in, not {' and '.join(chosen)}", ExitCode.USAGE)
    if not chosen:
        if not os.environ.get("ADMIN_KEY"):
            raise CliError("say how to sign in", ExitCode.USAGE,
                           hint="--admin-key, --token, or --issuer URL --client-id ID (maas login --help)")
        admin_key = True
    if (issuer is None) != (client_id is None):
        raise CliError("--issuer and --client-id go together", ExitCode.USAGE)
    if device and browser:
        raise CliError("choose --device or --browser, not both", ExitCode.USAGE)
    if (device or browser) and issuer is None:
        raise CliError(f"{'--device' if device else '--browser'} is a way to sign in with --issuer", ExitCode.USAGE,
                       hint="add --issuer URL --client-id ID")
    given_ca = ca_file or state.ca
    trust = trust_for(target, ca=given_ca, insecure=state.insecure)
    # Keep the trust that worked, as an absolute path: later commands may run from any folder.
    ca = str(trust.ca.resolve()) if trust.ca is not None else None
    if issuer is not None and client_id is not None:
        # Only a CA given for it: make run's certificate (trusted for a loopback API) vouches for no provider.
        provider = oidc.discover(issuer, ca=str(given_ca.resolve()) if given_ca is not None else None)
        if provider.flow("device" if device else "browser" if browser else None) == "device":
            def show_code(page: str, code: str, complete: str | None) -> None:
                output.note(f"To sign in, open this page on any device and enter the code {code}:")
                output.note(f"  {page}")
                if complete:
                    output.note("Or open this URL, which has the code in it:")
                    output.note(f"  {complete}")
                output.note(f"Waiting up to {timeout:.0f}s for the sign-in ...")

            answer = oidc.device_login(provider, client_id, scope=scope, timeout=timeout,
                                       open_browser=not no_browser, show=show_code)
        else:
            def show(link: str) -> None:
                output.note(f"Open this URL in a browser to sign in (waiting up to {timeout:.0f}s):")
                output.note(f"  {link}")

            answer = oidc.browser_login(provider, client_id, scope=scope, port=port, timeout=timeout,
                                        open_browser=not no_browser, show=show)
        credential = oidc.credential_from(answer, url=target, provider=provider, client_id=client_id,
                                          ca=ca, insecure=trust.insecure)
    else:
        method: Method
        if admin_key:
            method, secret = "admin-key", _admin_key(target)
        else:
            method, secret = "token", read_secret("Token") or ""
            if not secret:
                raise CliError("no token given", ExitCode.USAGE, hint="pipe it in: maas login --token < token.txt")
        credential = Credential(url=target, method=method, secret=secret, ca=ca, insecure=trust.insecure)
    with Api(target, trust, credential=credential) as api:
        me = api.get("/me")  # a credential the server refuses is not kept
    if me.get("signed_in_with") == "admin-key":
        credential.method = "admin-key"  # the admin key given as --token is the admin key still
    store.put(credential, profile=name)
    who = "the admin key" if credential.method == "admin-key" else f"{me.get('user_id')} ({me.get('signed_in_with')})"
    kept = f"as profile {name} " if name else ""
    print(f"Signed in to {target} as {who}; credentials kept {kept}in {credentials_path()}")


def logout(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", metavar="URL", help="The server to sign out of (default: the current one).")] = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", metavar="NAME", help="Forget this profile (as maas --profile).")] = None,
    everywhere: Annotated[bool, typer.Option("--all", help="Forget the credentials of every server and profile.")] = False,
) -> None:
    """Forget the credentials kept for a server or a profile (nothing is revoked on the server).

    Examples:
      maas logout
      maas logout --profile staging
      maas logout --all
    """
    state = session(ctx)
    store = state.store()
    name = profile_name(profile) if profile else state.profile
    if everywhere:
        for name in list(store.profiles):
            store.remove_profile(name)
            print(f"Signed out of profile {name}")
        targets = list(store.servers)
    elif name is not None:
        if store.remove_profile(name):
            print(f"Signed out of profile {name}")
        else:
            output.note(f"no profile {name}")
        return
    else:
        targets = [normalize_url(url) if url else state.url(store)]
    for target in targets:
        if store.remove(target):
            print(f"Signed out of {target}")
        else:
            output.note(f"not signed in to {target}")


def whoami(ctx: typer.Context, out: OutputOption = Format.table, as_json: JsonOption = False) -> None:
    """Who you are signed in as: how, your groups, and your teams with your role in each.

    Examples:
      maas whoami
      maas whoami --json
    """
    state = session(ctx)
    with state.api() as api:
        me = api.get("/me")
        url = api.url

    def show(data: dict[str, Any]) -> None:
        output.details({**data, "url": url, "profile": state.profile}, [
            ("server", "url"), *([("profile", "profile")] if state.profile else []), ("user", "user_id"), ("email", "user_email"), ("signed in with", "signed_in_with"),
            ("platform admin", "platform_admin"), ("groups", "groups"),
        ])
        if data.get("teams"):
            print()
            output.table(data["teams"], [("TEAM", "team_id"), ("NAME", "team_name"), ("ROLE", "role")])

    output.emit(me, output.chosen(out, as_json), show)
