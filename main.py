"""Every function target of the one image. `FUNCTION_TARGET` (or --target) picks one.

    functions-framework --source=main.py --target=create_team

Importing it cleans every log record of the process (shared.logsafety): nothing key-shaped and
no raw control character reaches a log, whichever server runs the functions.
"""

from functions.cleanup import cleanup
from functions.console import console
from functions.keys import create_key, delete_key, delete_key_legacy, list_team_keys, list_user_keys
from functions.lifecycle import list_audit, revoke_key, rotate_key
from functions.limits import explain_limits, simulate_limits
from functions.me import create_my_key, list_my_keys, my_usage, whoami
from functions.members import add_member, list_members, remove_member, update_member
from functions.meta import health, openapi
from functions.models import list_models, list_openai_models
from functions.teams import create_team, delete_team, get_team, list_teams, update_team
from functions.usage import team_usage, user_usage
from shared import logsafety

# Records are cleaned where they are made, so this covers the handlers the server adds later.
logsafety.install()

__all__ = [
    "add_member",
    "create_my_key",
    "list_members",
    "list_my_keys",
    "my_usage",
    "remove_member",
    "update_member",
    "whoami",
    "cleanup",
    "console",
    "create_key",
    "create_team",
    "delete_key",
    "delete_key_legacy",
    "delete_team",
    "explain_limits",
    "get_team",
    "health",
    "list_audit",
    "list_models",
    "list_openai_models",
    "list_team_keys",
    "list_teams",
    "list_user_keys",
    "openapi",
    "revoke_key",
    "rotate_key",
    "simulate_limits",
    "team_usage",
    "update_team",
    "user_usage",
]
