"""`maas serve`: the whole platform on this machine, exactly what `make run` runs
(`python -m local serve`), in the foreground until Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path

import typer

_PROJECT = Path(__file__).resolve().parent.parent
_MODELS_FILE = Path("config") / "models.local.yaml"


def serve() -> None:
    """Serve the admin API (TLS), the gateway and the model simulator here, as `make run` does.

    The data (teams, keys, usage, the admin key, the TLS certificate) is kept in $MAAS_DATA_DIR,
    .maas in this folder by default; `python -m local --help` lists every setting.

    Examples:
      maas serve
      MAAS_ADMIN_PORT=9443 MAAS_DATA_DIR=/tmp/maas maas serve
    """
    # make run starts in the project folder, where the default models file is; from any other
    # folder the same file is meant, unless MAAS_MODELS_FILE names another.
    if "MAAS_MODELS_FILE" not in os.environ and not _MODELS_FILE.is_file():
        os.environ["MAAS_MODELS_FILE"] = str(_PROJECT / _MODELS_FILE)
    from local.__main__ import main as local_main

    raise typer.Exit(local_main(["serve"]))
