"""The usage and model endpoints over real HTTP, after quickstart traffic through the real gateway.

Admin API (AdminServer, plain HTTP on 127.0.0.1), gateway and simulator all run in this process
on free ports; a real Prometheus scrapes the gateway's /metrics (on its metrics port) every second. The usage bodies
must equal what the client saw, from the ledger and from Prometheus; with Prometheus stopped
the usage endpoints answer 503 naming it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from functions._context import install_context
from local.admin import AdminServer
from local.gateway.service import GatewayService
from local.simulator import SimulatorService
from shared.context import Context, build_context
from shared.keymaterial import generate_admin_key
from shared.settings import Settings
from tests.prometheus_harness import Prometheus, free_port, prometheus_binary

pytestmark = pytest.mark.timeout(90)

QWEN, SIM = "qwen3-0-6b-instruct", "vllm-simulator"


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_admin_key()


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorService]:
    service = SimulatorService(Settings(simulator_port=0))
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorService, admin_key: str) -> Settings:
    root = tmp_path_factory.mktemp("usage-endpoints")
    models = root / "models.yaml"
    token = simulator.token.get_secret_value()  # the simulator answers only what carries it
    models.write_text(
        "models:\n"
        f"  - {{name: {QWEN}, url: '{simulator.url}/v1', api_key: '{token}'}}\n"
        f"  - {{name: {SIM}, url: '{simulator.url}/v1', api_key: '{token}'}}\n"
        f"  - {{name: dead-model, url: 'http://127.0.0.1:{free_port()}/v1'}}\n",
        encoding="utf-8",
    )
    return Settings(admin_key=SecretStr(admin_key), data_dir=root / "data", models_file=models, gateway_port=0,
                    metrics_port=0, admin_port=0)


@pytest.fixture(scope="module")
def ctx(settings: Settings) -> Iterator[Context]:
    context = build_context(settings)
    yield context
    context.close()


@pytest.fixture(scope="module")
def gateway(settings: Settings, ctx: Context) -> Iterator[GatewayService]:
    service = GatewayService(settings, ctx.store)
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def admin_server(settings: Settings) -> Iterator[AdminServer]:
    server = AdminServer(host="127.0.0.1", port=0, tls_dir=None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def use(ctx: Context, tmp_path: Path) -> Iterator[Any]:
    """Install the module's Context, or one with other settings over the same store."""

    def install(**changes: Any) -> None:
        install_context(Context(settings=ctx.settings.model_copy(update=changes), store=ctx.store))

    install()
    yield install
    # The module's store outlives each test: leave a throwaway Context for the per-test reset
    # to close instead.
    install_context(build_context(Settings(data_dir=tmp_path / "throwaway")))


@pytest.fixture(scope="module")
def admin(admin_server: AdminServer, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=admin_server.url, headers={"Authorization": f"ADMIN {admin_key}"},
                      timeout=30, trust_env=False) as client:
        yield client


def _post(admin: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = admin.post(path, json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def traffic(admin_server: AdminServer, admin: httpx.Client, gateway: GatewayService, ctx: Context) -> dict[str, Any]:
    """Quickstart steps 1-5 for two teams; returns what the clients saw."""
    install_context(Context(settings=ctx.settings, store=ctx.store))
    _post(admin, "/teams", {"team_id": "test-team", "team_name": "Test Team", "policy": "test-tokens",
                            "token_limit": 100000, "time_window": "1h"})
    _post(admin, "/teams", {"team_id": "tiny", "team_name": "Tiny", "policy": "tiny-tokens",
                            "token_limit": 20, "time_window": "1m"})
    keys = {
        ("test-team", "test.user"): _post(admin, "/teams/test-team/keys",
                                          {"user_id": "test.user", "user_email": "test.user@test.com"}),
        ("test-team", "mittens"): _post(admin, "/teams/test-team/keys",
                                        {"user_id": "mittens", "user_email": "mittens@test.com",
                                         "models": [QWEN]}),
        ("tiny", "test.user"): _post(admin, "/teams/tiny/keys",
                                     {"user_id": "test.user", "user_email": "test.user@test.com"}),
    }
    seen: dict[tuple[str, str, str], list[int]] = {}
    calls = [
        ("test-team", "test.user", QWEN), ("test-team", "test.user", QWEN), ("test-team", "test.user", SIM),
        ("test-team", "mittens", QWEN), ("tiny", "test.user", QWEN), ("tiny", "test.user", QWEN),
        ("tiny", "test.user", SIM),
    ]
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        for team, user, model in calls:
            response = client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"APIKEY {keys[(team, user)]['api_key']}"},
                json={"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 30},
            )
            counts = seen.setdefault((team, user, model), [0, 0, 0])
            if response.status_code == 200:
                counts[0] += response.json()["usage"]["total_tokens"]
                counts[1] += 1
            else:
                assert response.status_code == 429, response.text
                counts[2] += 1
    assert sum(c[2] for c in seen.values()) >= 1, "the tiny team should have been limited"
    return {"seen": seen, "keys": keys}


def _user_totals(seen: dict[tuple[str, str, str], list[int]], user: str) -> tuple[int, int, int]:
    rows = [c for (_, u, _), c in seen.items() if u == user]
    return sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows)


def _poll(admin: httpx.Client, path: str, ok: Any, within_s: float = 10.0) -> httpx.Response:
    """The ledger is flushed every 0.5 s and Prometheus scrapes every 1 s: poll, bounded."""
    deadline = time.monotonic() + within_s
    while True:
        response = admin.get(path)
        if (response.status_code == 200 and ok(response.json())) or time.monotonic() > deadline:
            return response
        time.sleep(0.25)


def _check_bodies(admin: httpx.Client, seen: dict[tuple[str, str, str], list[int]]) -> dict[str, Any]:
    expected = _user_totals(seen, "test.user")
    response = _poll(admin, "/users/test.user/usage", lambda b: (
        b["total_token_usage"], b["total_authorized_calls"], b["total_limited_calls"]) == expected)
    assert response.status_code == 200, response.text
    user = response.json()
    assert (user["total_token_usage"], user["total_authorized_calls"], user["total_limited_calls"]) == expected
    assert [t["team_id"] for t in user["team_breakdown"]] == ["test-team", "tiny"]
    test_team = user["team_breakdown"][0]
    assert (test_team["team_name"], test_team["policy"]) == ("Test Team", "test-tokens")
    assert test_team["token_usage"] == seen[("test-team", "test.user", QWEN)][0] + seen[("test-team", "test.user", SIM)][0]
    assert test_team["limited_calls"] == 0
    assert user["team_breakdown"][1]["limited_calls"] == sum(c[2] for (t, _, _), c in seen.items() if t == "tiny")

    team = admin.get("/teams/test-team/usage").json()
    assert [u["user_id"] for u in team["user_breakdown"]] == ["mittens", "test.user"]
    assert team["user_breakdown"][0] == {
        "user_id": "mittens", "user_email": "mittens@test.com",
        "token_usage": seen[("test-team", "mittens", QWEN)][0], "authorized_calls": 1, "limited_calls": 0,
    }
    assert team["total_token_usage"] == sum(c[0] for (t, _, _), c in seen.items() if t == "test-team")
    by_model = {m["model"]: m["token_usage"] for m in team["model_breakdown"]}
    assert by_model == {
        QWEN: seen[("test-team", "test.user", QWEN)][0] + seen[("test-team", "mittens", QWEN)][0],
        SIM: seen[("test-team", "test.user", SIM)][0],
    }
    return {"user": user, "team": team}


def _more_bodies(admin: httpx.Client) -> dict[str, Any]:
    """The other users' and teams' all-time usage (read after _check_bodies has seen the traffic)."""
    bodies = {}
    for path in ("/users/mittens/usage", "/users/nobody/usage", "/teams/tiny/usage"):
        response = admin.get(path)
        assert response.status_code == 200, response.text
        bodies[" ".join(path.split("/")[1:3]).replace("users", "user").replace("teams", "team")] = response.json()
    return bodies


def test_usage_from_the_ledger_equals_what_clients_saw(traffic: dict[str, Any], admin: httpx.Client,
                                                        use: Any) -> None:
    use(usage="embedded")
    bodies = _check_bodies(admin, traffic["seen"])
    assert set(bodies["user"]) >= {"user_id", "total_token_usage", "total_authorized_calls", "total_limited_calls",
                                   "team_breakdown", "last_updated"}
    assert bodies["user"]["last_updated"].endswith("Z")
    nobody = admin.get("/users/nobody/usage").json()
    assert (nobody["total_token_usage"], nobody["team_breakdown"]) == (0, [])
    series = admin.get("/teams/test-team/usage", params={"window": "1h", "step": "10m"}).json()
    assert [s["user_id"] for s in series["series"]] == ["mittens", "test.user"]
    # Buckets start on the minute at or before now - 1h: 6 full ones and the current one.
    assert len(series["series"][0]["points"]) == 7
    assert sum(p["token_usage"] for p in series["series"][1]["points"]) == bodies["team"]["user_breakdown"][1]["token_usage"]
    # A user's series is per model, across their teams, and sums to their total over the range.
    mine = admin.get("/users/test.user/usage", params={"window": "1h", "step": "10m"}).json()
    assert mine["step_seconds"] == 600 and len(mine["series"]) >= 1
    assert all(len(model["points"]) == 7 for model in mine["series"])
    assert sum(p["token_usage"] for model in mine["series"] for p in model["points"]) == mine["total_token_usage"]
    assert admin.get("/users/test.user/usage", params={"step": "10m"}).json()["details"][0]["field"] == "step"


def test_usage_errors(traffic: dict[str, Any], admin: httpx.Client, use: Any) -> None:
    use(usage="embedded")
    missing = admin.get("/teams/no-such-team/usage")
    assert missing.status_code == 404 and "no-such-team" in missing.json()["error"]
    bad = admin.get("/users/test.user/usage", params={"window": "forever"})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "window"
    bad_start = admin.get("/users/test.user/usage", params={"start": "yesterday"})
    assert bad_start.status_code == 422 and "start" in bad_start.json()["error"]
    assert admin.get("/users/test.user/usage", headers={"Authorization": "ADMIN wrong"}).status_code == 401
    key = traffic["keys"][("test-team", "test.user")]["api_key"]
    assert admin.get("/users/test.user/usage", headers={"Authorization": f"APIKEY {key}"}).status_code == 401


def test_usage_from_prometheus_equals_the_ledger_then_503_when_it_stops(
    traffic: dict[str, Any], admin: httpx.Client, use: Any, gateway: GatewayService,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; run tools/ensure_prometheus.sh)")
    use(usage="embedded")
    from_ledger = {**_check_bodies(admin, traffic["seen"]), **_more_bodies(admin)}
    # Prometheus scrapes the metrics port; the model port has no /metrics.
    assert httpx.get(gateway.url + "/metrics").status_code == 404
    prometheus = Prometheus(binary, tmp_path_factory.mktemp("prom"), [gateway.metrics_url.removeprefix("http://")]).start()
    try:
        use(usage="prometheus", prometheus_url=prometheus.url, prometheus_timeout_s=2.0)
        from_prometheus = {**_check_bodies(admin, traffic["seen"]), **_more_bodies(admin)}
        assert from_prometheus["team tiny"]["total_limited_calls"] >= 1
        for body in (*from_ledger.values(), *from_prometheus.values()):
            body.pop("last_updated")
        # Limitador's call counters carry no model (the gateway's /metrics neither): Prometheus
        # knows a model's tokens, not its calls, and says so with null. Everything else (totals,
        # per team, per user, tokens per model) is exactly the ledger's.
        for name, body in from_prometheus.items():
            assert body["model_breakdown"] or name == "user nobody", name
            for entry in body["model_breakdown"]:
                assert (entry.pop("authorized_calls"), entry.pop("limited_calls")) == (None, None), name
        for body in from_ledger.values():
            for entry in body["model_breakdown"]:
                assert isinstance(entry.pop("authorized_calls"), int) and isinstance(entry.pop("limited_calls"), int)
        # For the same reason a model that had calls and no tokens (tiny's vllm-simulator call was
        # refused) is in the ledger's breakdown only.
        assert {"model": SIM, "token_usage": 0} in from_ledger["team tiny"]["model_breakdown"]
        for body in from_ledger.values():
            body["model_breakdown"] = [m for m in body["model_breakdown"] if m["token_usage"]]
        assert from_prometheus == from_ledger
    finally:
        prometheus.stop()
    started = time.monotonic()
    down = admin.get("/teams/test-team/usage")
    assert time.monotonic() - started < 2.5
    assert down.status_code == 503 and "Prometheus at http://127.0.0.1:" in down.json()["error"]
    assert admin.get("/users/test.user/usage").status_code == 503


def test_models_for_the_admin_and_for_a_key(traffic: dict[str, Any], admin: httpx.Client, use: Any,
                                            simulator: SimulatorService) -> None:
    use()
    models = admin.get("/models")
    assert models.status_code == 200, models.text
    assert models.json() == {"models": [
        {"name": "dead-model", "namespace": "local", "url": models.json()["models"][0]["url"], "ready": False},
        {"name": QWEN, "namespace": "local", "url": simulator.url, "ready": True},
        {"name": SIM, "namespace": "local", "url": simulator.url, "ready": True},
    ]}
    listing = admin.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["dead-model", QWEN, SIM]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in listing["data"])

    # mittens' key may use qwen only: that is all it sees; test.user's key sees everything.
    mittens = traffic["keys"][("test-team", "mittens")]["api_key"]
    mine = admin.get("/v1/models", headers={"Authorization": f"Bearer {mittens}"}).json()
    assert [m["id"] for m in mine["data"]] == [QWEN]
    assert [m["name"] for m in admin.get("/models", headers={"Authorization": f"APIKEY {mittens}"}).json()["models"]] == [QWEN]
    everyone = traffic["keys"][("test-team", "test.user")]["api_key"]
    assert len(admin.get("/v1/models", headers={"Authorization": f"APIKEY {everyone}"}).json()["data"]) == 3

    anonymous = admin.get("/v1/models", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    wrong = admin.get("/models", headers={"Authorization": "APIKEY not-a-key"})
    assert wrong.status_code == 401 and isinstance(wrong.json()["error"], str)
