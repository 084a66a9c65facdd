"""Every function target of the one image. `FUNCTION_TARGET` (or --target) picks one.

    functions-framework --source=main.py --target=create_team

A target's module is imported when the target is first looked up (`main.create_team`, which is
how functions-framework and the local runtime find them), not when main.py is: a Knative
Service runs one target, and importing every module of functions/ (the console's, the
cleanup's CloudEvents, email validation...) for it was most of a cold start (issue 12).

Importing it cleans every log record of the process (shared.logsafety): nothing key-shaped and
no raw control character reaches a log, whichever server runs the functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from shared import logsafety

# Records are cleaned where they are made, so this covers the handlers the server adds later.
logsafety.install()

# Each module of functions/ and the targets it defines: a new target is a name in its module's
# line (tests/test_functions_framework.py checks this table against shared/routes.py).
_MODULES: dict[str, tuple[str, ...]] = {
    "functions.cleanup": ("cleanup",),
    "functions.console": ("console",),
    "functions.keys": ("create_key", "delete_key", "delete_key_legacy", "list_team_keys", "list_user_keys"),
    "functions.lifecycle": ("list_audit", "revoke_key", "rotate_key"),
    "functions.limits": ("explain_limits", "simulate_limits"),
    "functions.me": ("create_my_key", "list_my_keys", "my_usage", "whoami"),
    "functions.members": ("add_member", "list_members", "remove_member", "update_member"),
    "functions.meta": ("health", "openapi"),
    "functions.models": ("list_models", "list_openai_models"),
    "functions.teams": ("create_team", "delete_team", "get_team", "list_teams", "update_team"),
    "functions.usage": ("platform_usage", "team_usage", "user_usage"),
}
_MODULE_OF: dict[str, str] = {target: module for module, targets in _MODULES.items() for target in targets}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Callable[..., Any]:
    """A target, its module imported on this first lookup (PEP 562: only names not yet defined
    here get this far). functions-framework looks its target up inside the app it is building,
    so a module's import-time hook on that app (functions/cleanup.py) still finds it."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    target: Callable[..., Any] = getattr(importlib.import_module(module), name)
    globals()[name] = target  # later lookups are plain ones
    return target


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
