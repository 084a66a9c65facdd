"""Every function target of the one image. `FUNCTION_TARGET` (or --target) picks one.

    functions-framework --source=main.py --target=create_team
"""

from functions.keys import create_key, delete_key, delete_key_legacy, list_team_keys, list_user_keys
from functions.meta import health, openapi
from functions.models import list_models, list_openai_models
from functions.teams import create_team, delete_team, get_team, list_teams, update_team
from functions.usage import team_usage, user_usage

__all__ = [
    "create_key",
    "create_team",
    "delete_key",
    "delete_key_legacy",
    "delete_team",
    "get_team",
    "health",
    "list_models",
    "list_openai_models",
    "list_team_keys",
    "list_teams",
    "list_user_keys",
    "openapi",
    "team_usage",
    "update_team",
    "user_usage",
]
