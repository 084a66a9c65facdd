"""The local runtime's admin key: from ADMIN_KEY, else kept 0600 in the data dir."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from shared.keymaterial import generate_admin_key
from shared.privatefiles import private_dir
from shared.settings import Settings

ADMIN_KEY_FILE = "admin-key"


def ensure_admin_key(settings: Settings) -> tuple[Settings, Path | None, bool]:
    """Settings with an admin key, the file holding it (None when from ADMIN_KEY), and
    whether it was just generated (so the caller prints it once)."""
    if settings.admin_key is not None:
        return settings, None, False
    path = settings.data_dir / ADMIN_KEY_FILE
    created = False
    if not path.exists():
        private_dir(settings.data_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_admin_key() + "\n")
        created = True
    os.chmod(path, 0o600)
    value = path.read_text().strip()
    if not value:
        raise SystemExit(f"{path} is empty: delete it to have a new admin key generated")
    return settings.model_copy(update={"admin_key": SecretStr(value)}), path, created
