"""The server a command talks to and the credentials it sends, from the flags, the environment
and what `maas login` saved: `--url` over MAAS_URL over the last server signed in to over
https://127.0.0.1:8443 (what `make run` serves)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from cli.client import Api, trust_for
from cli.config import DEFAULT_URL, CredentialStore, normalize_url
from cli.exitcodes import CliError, ExitCode


@dataclass
class Session:
    url_flag: str | None = None
    ca: Path | None = None
    insecure: bool = False

    def store(self) -> CredentialStore:
        return CredentialStore.load()

    def url(self, store: CredentialStore | None = None) -> str:
        if self.url_flag:
            return normalize_url(self.url_flag)
        store = store if store is not None else self.store()
        return store.current or DEFAULT_URL

    def api(self) -> Api:
        store = self.store()
        target = self.url(store)
        credential = store.get(target)
        if credential is None:
            raise CliError(f"not signed in to {target}", ExitCode.NOT_SIGNED_IN,
                           hint=f"run `maas login --url {target} --admin-key` (or --issuer/--client-id, or --token)")
        trust = trust_for(target, ca=self.ca, insecure=self.insecure, saved=credential)
        return Api(target, trust, credential=credential, store=store)


def session(ctx: typer.Context) -> Session:
    """The root command's options, wherever in the tree the command is."""
    root = ctx.find_root()
    if not isinstance(root.obj, Session):
        root.obj = Session()
    return root.obj
