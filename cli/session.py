"""The server a command talks to and the credentials it sends, from the flags, the environment
and what `maas login` saved.

The server: `--url` typed on the command line; else the profile's (`--profile`, MAAS_PROFILE),
if one is chosen; else MAAS_URL; else the last server signed in to; else
https://127.0.0.1:8443 (what `make run` serves). A profile's URL wins over MAAS_URL, which a
shell may have exported for another server, but a typed --url that differs from it is refused:
the profile's credential goes to its own server only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from cli.client import Api, trust_for
from cli.config import DEFAULT_URL, Credential, CredentialStore, normalize_url
from cli.exitcodes import CliError, ExitCode


def _sign_in(command: str) -> str:
    """A hint to sign in: `command --admin-key` whole, to paste; the other ways after it."""
    return f"`{command} --admin-key` (or sign in with --issuer/--client-id, or --token)"


@dataclass
class Session:
    url_flag: str | None = None
    url_typed: bool = False
    """url_flag came from --url on the command line, not from MAAS_URL."""
    profile: str | None = None
    ca: Path | None = None
    insecure: bool = False

    def store(self) -> CredentialStore:
        return CredentialStore.load()

    def url(self, store: CredentialStore | None = None, *, profile: str | None = None, login: bool = False) -> str:
        """The server (module docstring). At login, a typed --url may re-point a profile."""
        store = store if store is not None else self.store()
        typed = normalize_url(self.url_flag) if self.url_flag and self.url_typed else None
        name = profile or self.profile
        saved = store.profiles.get(name) if name else None
        if saved is not None:
            if typed is not None and typed != saved.url and not login:
                raise CliError(f"profile {name} is for {saved.url}, not {typed}", ExitCode.USAGE,
                               hint=f"leave out --url, or sign in to {typed} under another profile: "
                                    f"maas login --profile NAME --url {typed}")
            if typed is None:
                return saved.url
        if self.url_flag:
            return normalize_url(self.url_flag)
        return store.current or DEFAULT_URL

    def credential(self, store: CredentialStore, target: str) -> Credential:
        if self.profile is not None:
            credential = store.profiles.get(self.profile)
            if credential is None:
                raise CliError(f"no profile {self.profile}", ExitCode.NOT_SIGNED_IN,
                               hint=f"sign in under it: {_sign_in(f'maas login --profile {self.profile} --url URL')}")
            return credential
        credential = store.get(target)
        if credential is None:
            raise CliError(f"not signed in to {target}", ExitCode.NOT_SIGNED_IN,
                           hint=f"run {_sign_in(f'maas login --url {target}')}")
        return credential

    def api(self) -> Api:
        store = self.store()
        target = self.url(store)
        credential = self.credential(store, target)
        trust = trust_for(target, ca=self.ca, insecure=self.insecure, saved=credential)
        return Api(target, trust, credential=credential, store=store, profile=self.profile)


def session(ctx: typer.Context) -> Session:
    """The root command's options, wherever in the tree the command is."""
    root = ctx.find_root()
    if not isinstance(root.obj, Session):
        root.obj = Session()
    return root.obj
