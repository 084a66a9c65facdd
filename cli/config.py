"""Where `maas` keeps who you are signed in as, and which server and certificate it talks to.

Credentials live in `$XDG_CONFIG_HOME/maas/credentials.json` (else `~/.config/maas/`): the
directory 0700, the file 0600, written whole and renamed into place so that a crash never
leaves half a file. They are kept per server URL and sent only to the URL they were given for:
pointing MAAS_URL elsewhere never hands one server's admin key to another.

A profile (`--profile NAME`, MAAS_PROFILE) is a named sign-in with its server, kept beside them:
`prod` as an admin and `prod-me` as a member of the same server, or `staging` and `prod` without
retyping URLs. A profile's credential, too, goes only to its own URL.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cli.exitcodes import CliError, ExitCode

DEFAULT_URL = "https://127.0.0.1:8443"
DIR_MODE = 0o700
FILE_MODE = 0o600
_FILE_NAME = "credentials.json"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

Method = Literal["admin-key", "token", "oidc"]


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "maas"


def credentials_path() -> Path:
    return config_dir() / _FILE_NAME


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"not a server URL: {url!r}", ExitCode.USAGE,
                       hint="give one like https://keys.example.com or https://127.0.0.1:8443")
    return url


def profile_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise CliError(f"not a profile name: {name!r}", ExitCode.USAGE,
                       hint="letters, digits, '.', '_' and '-', starting with a letter or digit, e.g. prod or staging-admin")
    return name


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK


def local_certificate() -> Path | None:
    """The certificate `make run` / `maas serve` made in its data dir, if this folder has one."""
    cert = Path(os.environ.get("MAAS_DATA_DIR") or ".maas") / "tls" / "cert.pem"
    return cert.resolve() if cert.is_file() else None


def local_admin_key_file() -> Path | None:
    path = Path(os.environ.get("MAAS_DATA_DIR") or ".maas") / "admin-key"
    return path if path.is_file() else None


@dataclass
class Credential:
    """One server's sign-in. `secret` is what goes after `Bearer`; nothing prints it."""

    url: str
    method: Method
    secret: str = field(repr=False)
    ca: str | None = None
    insecure: bool = False
    # OIDC sign-in (device or browser): what refreshing the token needs.
    refresh_token: str | None = field(default=None, repr=False)
    token_endpoint: str | None = None
    client_id: str | None = None
    issuer: str | None = None
    issuer_ca: str | None = None
    """The CA given with --ca-file at login, trusted for the provider besides the system's."""
    expires_at: float | None = None

    def expired(self, *, leeway: float = 30.0) -> bool:
        return self.expires_at is not None and time.time() + leeway >= self.expires_at

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credential:
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass
class CredentialStore:
    current: str | None = None
    servers: dict[str, Credential] = field(default_factory=dict)
    profiles: dict[str, Credential] = field(default_factory=dict)

    @classmethod
    def load(cls) -> CredentialStore:
        path = credentials_path()
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", ExitCode.USAGE) from None
        _tighten(path)
        try:
            data = json.loads(raw)
            servers = {url: Credential.from_json(entry) for url, entry in data.get("servers", {}).items()}
            # Files written before profiles have none.
            profiles = {name: Credential.from_json(entry) for name, entry in data.get("profiles", {}).items()}
        except (ValueError, TypeError, AttributeError):
            raise CliError(f"{path} is not a credentials file maas wrote", ExitCode.USAGE,
                           hint=f"remove it (rm {path}) and run `maas login` again") from None
        return cls(current=data.get("current"), servers=servers, profiles=profiles)

    def get(self, url: str) -> Credential | None:
        return self.servers.get(url)

    def put(self, credential: Credential, *, profile: str | None = None) -> None:
        """Keep a sign-in: under its profile, or as its server's (then the current server)."""
        if profile is not None:
            self.profiles[profile] = credential
        else:
            self.servers[credential.url] = credential
            self.current = credential.url
        self.save()

    def remove(self, url: str) -> bool:
        found = self.servers.pop(url, None) is not None
        if self.current == url:
            self.current = next(iter(self.servers), None)
        self.save()
        return found

    def remove_profile(self, name: str) -> bool:
        found = self.profiles.pop(name, None) is not None
        self.save()
        return found

    def save(self) -> None:
        data = {"current": self.current, "servers": {url: asdict(c) for url, c in self.servers.items()},
                "profiles": {name: asdict(c) for name, c in self.profiles.items()}}
        write_private(credentials_path(), json.dumps(data, indent=2) + "\n")


def private_dir(directory: Path) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode passes through the umask, and an older directory may be looser: it is ours.
    if stat.S_IMODE(directory.stat().st_mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)


def write_private(path: Path, text: str) -> None:
    """Replace `path`, in maas's own 0700 directory, with `text`: 0600 from its first byte (a file
    created looser and chmod-ed after would be readable for a moment)."""
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    # O_EXCL: never write into a file someone else put there first, or through their symlink.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _tighten(path: Path) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, FILE_MODE)
    except OSError:
        pass
