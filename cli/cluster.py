"""`maas cluster-check`: tools/cluster_check.py (also `make cluster-check`) under the maas name:
a live cluster's prerequisites, then the quickstart through its gateway. Its options are its own,
passed through as they are."""

from __future__ import annotations

import typer

# Every argument goes to tools.cluster_check, --help included: it documents its own options.
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def cluster_check(ctx: typer.Context) -> None:
    """Check a cluster against docs/DEPLOY.md, then run the quickstart through it (--help: its options).

    Examples:
      maas cluster-check --help
      maas cluster-check --no-e2e --json
    """
    from tools.cluster_check import main as check

    raise typer.Exit(check(list(ctx.args)))
