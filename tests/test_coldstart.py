"""What a function target's process imports (issue 12: a cold start within 1.5x of a
hello-world function's, measured by `make bench ARGS="--only cold"`, never here).

Each target is loaded as functions-framework loads it (main.py, then the target looked up in
the app being built) and answers its first request, in a process of its own; the modules it
then holds are compared with what it needs. Importing main.py imports no target; a target
imports its own module of functions/ (the console also the API targets it calls in-process),
its module's routes' models, and neither pydantic-settings nor another module's schema module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import main
from shared.routes import CONSOLE, EVENT_TARGETS, ROUTES, route_for
from tests.runtime import ROOT

_SAMPLE = {"team_id": "some-team", "user_id": "some-user", "secret_name": "apikey-a-b-0011aabb"}

# What functions-framework does with --source=main.py --target=<target>, then one request.
_CHILD = """
import json, sys
import functions_framework
app = functions_framework.create_app(target=sys.argv[1], source="main.py")
app.test_client().get(sys.argv[2])
print(json.dumps(sorted(sys.modules)))
"""

# One target per module of functions/ (a module's targets share its imports), and the targets
# whose models are in the schema modules besides shared.schemas.
_TARGETS = sorted({targets[0] for targets in main._MODULES.values()} | {"team_usage", "list_models"})


def _modules_of(target: str, tmp_path: Path) -> set[str]:
    if target in EVENT_TARGETS:
        path = "/"
    elif target == CONSOLE:
        path = "/console/signin"
    else:
        path = route_for(target).path.format(**_SAMPLE)
    env = {**os.environ, "MAAS_DATA_DIR": str(tmp_path / target), "ADMIN_KEY": "k" * 40}
    env.pop("FUNCTION_TARGET", None)
    done = subprocess.run([sys.executable, "-c", _CHILD, target, path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    tmp_path = tmp_path_factory.mktemp("coldstart")
    return {target: _modules_of(target, tmp_path) for target in _TARGETS}


def test_importing_main_imports_no_target() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys, main; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    modules = set(json.loads(done.stdout))
    assert not {name for name in modules if name == "functions" or name.startswith("functions.")}
    assert "pydantic" not in modules, "main.py itself needs no models"


def test_a_target_imports_its_own_module_of_functions_only(imported: dict[str, set[str]]) -> None:
    for target, modules in imported.items():
        own = main._MODULE_OF[target]
        others = {name for name in modules if name.startswith("functions.")
                  and not name.startswith(("functions._", f"{own}.")) and name != own}
        if target == CONSOLE:  # its pages call these targets in-process (functions/console/api.py)
            others -= {"functions.keys", "functions.lifecycle", "functions.limits", "functions.me", "functions.members",
                       "functions.teams", "functions.usage"}
        assert own in modules and not others, (target, sorted(others))


def test_no_target_imports_pydantic_settings(imported: dict[str, set[str]]) -> None:
    for target, modules in imported.items():
        assert "pydantic_settings" not in modules, target


def test_a_target_imports_the_schema_modules_of_its_modules_models(imported: dict[str, set[str]]) -> None:
    optional = {"shared.schemas", "shared.usage.schemas", "shared.catalog.listing", "shared.health"}
    for target, modules in imported.items():
        if target in EVENT_TARGETS or target == CONSOLE:
            continue
        # A module's targets share its imports: my_usage's models come with create_my_key.
        routes = [route_for(name) for name in main._MODULES[main._MODULE_OF[target]]]
        own = {model.__module__ for route in routes for model in (route.request, route.response, route.query)
               if model is not None}
        assert own <= modules, target
        assert not (modules & optional) - own, (target, sorted((modules & optional) - own))
    assert "shared.usage.schemas" in imported["team_usage"] and "shared.catalog.listing" in imported["list_models"]
    assert "shared.health" in imported["health"]


def test_health_imports_no_key_handling_nor_cluster_client(imported: dict[str, set[str]]) -> None:
    # The lightest target: what the cold start bench starts. Email validation (key creates), JWT
    # (OIDC sign-in), the Kubernetes client (MAAS_STORE=kubernetes) and the admin models
    # (shared.schemas: a tenth of a cold start) are other targets' needs.
    assert not imported["health"] & {"email_validator", "jwt", "kubernetes", "shared.membership", "shared.oidc",
                                     "shared.schemas"}


def test_every_route_names_models_that_exist() -> None:
    # A model is imported when its route's field is first read: a name mistyped in shared/routes.py
    # fails here, not at the first request of the OpenAPI document.
    for route in ROUTES:
        for model in (route.request, route.response, route.query):
            assert model is None or issubclass(model, BaseModel), route.target


def test_the_bench_starts_functions_in_the_images_environment() -> None:
    from bench.admin import image_environment

    environment = image_environment()
    assert environment["PYDANTIC_DISABLE_PLUGINS"] == "1" and environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert environment["PORT"] == "8080", "the last line of the ENV block is read too"
