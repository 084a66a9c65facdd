"""`maas limits`, `--limit` on team and key create, and `maas policy render` for teams with several
rates, against the real local runtime (`python -m local serve`, one for the module), as
tests/test_cli.py drives it: explain and `limits me` must agree with the gateway's 429s, and the
rendered policies with what the cluster's sync computes from the store itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli.exitcodes import CliError, ExitCode
from cli.limits import parse_spec, spec_text
from shared.store.sqlite import SqliteStore
from tests.runtime import Runtime
from tests.test_cli import Maas, Ran, chat, runtime, signed_in_maas  # noqa: F401

MODEL = "qwen3-0-6b-instruct"


@pytest.fixture(scope="module")
def admin(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Maas:  # noqa: F811
    return signed_in_maas(runtime, tmp_path_factory.mktemp("config"))


@pytest.fixture
def store(admin: Maas) -> Iterator[SqliteStore]:
    opened = SqliteStore(admin.data_dir / "maas.db")
    try:
        yield opened
    finally:
        opened.close()


def _ok(ran: Ran) -> str:
    assert ran.code == 0, ran.err
    return ran.out


def test_a_spec_is_the_apis_rate_and_reads_back() -> None:
    assert parse_spec("rpm=requests:60/1m,scope=team,model=m") == {
        "name": "rpm", "limit": 60, "window": "1m", "unit": "requests", "scope": "team", "model": "m"}
    assert parse_spec("tokens=20000/1m") == {"name": "tokens", "limit": 20000, "window": "1m", "unit": "tokens"}
    for text in ("rpm=requests:60/1m,scope=team,model=m", "tokens=20000/1m"):
        assert spec_text(parse_spec(text)) == text
    assert spec_text(parse_spec("tokens=tokens:20000/1m")) == "tokens=20000/1m"  # the default unit, unsaid
    for wrong in ("rpm", "rpm=requests:60", "rpm=calls:60/1m", "rpm=many/1m", "rpm=60/1m,scope=all",
                  "rpm=60/1m,colour=red", "rpm=60/1m,model=a,model=b"):
        with pytest.raises(CliError) as raised:
            parse_spec(wrong)
        assert raised.value.code is ExitCode.USAGE and "NAME=" in raised.value.line()
    with pytest.raises(CliError):
        parse_spec("rpm=60/1m,scope=team", for_key=True)  # a key's rates are the key's


def test_policy_render_of_several_rates_and_keys_is_the_cluster_syncs(admin: Maas, store: SqliteStore) -> None:
    from shared.policies import generate_policies, policy_warnings
    from shared.settings import Settings

    _ok(admin("team", "create", "rates-a", "--limit", "tokens=20000/1m", "--limit", "daily=1000000/24h",
              "--limit", "rpm=requests:60/1m", "--limit", f"big=10000/1h,model={MODEL},scope=team"))
    _ok(admin("team", "create", "rates-b", "--limit", "per-hour=5000/1h,scope=team", "--limit", "rpm=requests:5/1m"))
    _ok(admin("team", "create", "rates-c", "--token-limit", "777", "--time-window", "10m"))
    created = json.loads(_ok(admin("key", "create", "rates-a", "bot", "--limit", "key-rpm=requests:10/1m",
                                   "--limit", f"key-big=500/1h,model={MODEL}", "--max-concurrent", "2", "--json")))
    assert [spec_text(rate) for rate in created["limits"]] == ["key-rpm=requests:10/1m", f"key-big=500/1h,model={MODEL}"]
    assert created["max_concurrent"] == 2
    # A rotated key in its grace period: its expiry is part of the AuthPolicy's revision, which
    # the render reads from a listing (whole seconds) and the sync from the store (microseconds).
    plain = json.loads(_ok(admin("key", "create", "rates-b", "carol", "--json")))
    _ok(admin("key", "rotate", plain["secret_name"], "--grace-period", "1h", "--json"))
    assert [key.secret_name for key in store.list_keys(in_grace=True)] == [plain["secret_name"]]

    ran = admin("policy", "render")
    documents = list(yaml.safe_load_all(_ok(ran)))
    models = [model["name"] for model in admin("models", "--json").json()["models"]]
    assert documents == generate_policies(store.list_teams(), Settings(), keys_in_grace=store.list_keys(in_grace=True),
                                          models=models, keys=store.list_keys(with_rates=True))
    assert [d["kind"] for d in documents] == ["AuthPolicy", "TokenRateLimitPolicy", "RateLimitPolicy", "TelemetryPolicy"]
    # The warnings of what a cluster cannot do, on stderr, and nothing of them in the YAML.
    warnings = policy_warnings(store.list_teams(), store.list_keys())
    assert warnings and all(f"warning: {line}" in ran.err for line in warnings)
    assert "max_concurrent" in ran.err and "warning" not in ran.out


def test_team_limits_flags_show_and_errors(admin: Maas) -> None:
    team = json.loads(_ok(admin("team", "create", "flags", "--limit", "tokens=1000/1h", "--limit",
                                "rpm=requests:3/1m", "--json")))
    assert [spec_text(rate) for rate in team["limits"]] == ["tokens=1000/1h", "rpm=requests:3/1m"]
    shown = _ok(admin("limits", "show", "flags"))
    assert "rpm" in shown and "requests" in shown
    assert "rpm" in _ok(admin("team", "show", "flags"))  # several rates: their table under the fields
    # The short form edits the primary rate and keeps the others.
    updated = admin("team", "update", "flags", "--token-limit", "2000", "--json").json()
    assert [spec_text(rate) for rate in updated["limits"]] == ["tokens=2000/1h", "rpm=requests:3/1m"]
    replaced = admin("team", "update", "flags", "--limit", "tokens=50/1m", "--json").json()
    assert [rate["name"] for rate in replaced["limits"]] == ["tokens"]
    both = admin("team", "update", "flags", "--limit", "tokens=50/1m", "--token-limit", "5")
    assert both.code == ExitCode.USAGE and len(both.err.strip().splitlines()) == 1
    bad = admin("team", "create", "flags-bad", "--limit", "rpm=requests:60")
    assert bad.code == ExitCode.USAGE and "NAME=[UNIT:]LIMIT/WINDOW" in bad.err
    no_primary = admin("team", "create", "flags-bad", "--limit", "rpm=requests:60/1m")
    assert no_primary.code == ExitCode.API_ERROR and len(no_primary.err.strip().splitlines()) == 1
    assert admin("limits", "show", "no-such-team").code == ExitCode.NOT_FOUND
    assert admin("limits", "explain", "flags").code == ExitCode.USAGE  # whose?


def test_explain_and_me_say_what_the_gateway_then_does(admin: Maas, runtime: Runtime) -> None:  # noqa: F811
    _ok(admin("team", "create", "explained", "--limit", "tokens=100000/1h", "--limit", "rpm=requests:3/1m"))
    key = _ok(admin("key", "create", "explained", "alice", "-q")).strip()
    printed_since = len(admin.seen)
    gateway = {"MAAS_GATEWAY_URL": runtime.urls["gateway"], "API_KEY": key}
    fresh = _ok(admin("limits", "explain", "explained", "--user", "alice"))
    assert "a call would be admitted now" in fresh
    assert all(chat(runtime, key).status_code == 200 for _ in range(2))
    table = _ok(admin("limits", "explain", "explained", "--user", "alice", "--model", MODEL))
    (rpm,) = [line for line in table.splitlines() if line.startswith("rpm")]
    assert "3/1m" in rpm and "<- binds" in rpm and f"a call to {MODEL} would be admitted now" in table
    assert chat(runtime, key).status_code == 200
    spent = admin("limits", "explain", "explained", "--user", "alice", "--json").json()
    assert spent["admitted_now"] is False and spent["binding"] == "rpm"
    assert "limit 'rpm' is spent, for " in _ok(admin("limits", "explain", "explained", "--user", "alice"))
    refused = chat(runtime, key)
    assert refused.status_code == 429 and refused.json()["error"]["limit"]["name"] == spent["binding"]

    mine = _ok(admin("limits", "me", **gateway))
    assert "alice" in mine and "limit 'rpm' is spent" in mine
    (line,) = [line for line in mine.splitlines() if line.startswith("rpm")]
    assert "<- binds" in line
    me = admin("limits", "me", "-o", "yaml", **gateway)
    assert {s["name"]: s["spent"] for s in yaml.safe_load(_ok(me))["limits"]} == {"tokens": 3 * 53, "rpm": 3}
    piped = admin("limits", "me", "--json", input=key, MAAS_GATEWAY_URL=runtime.urls["gateway"])
    assert piped.json()["user_id"] == "alice"
    wrong = admin("limits", "me", MAAS_GATEWAY_URL=runtime.urls["gateway"], API_KEY="maas_" + "x" * 40)
    assert wrong.code == ExitCode.NOT_SIGNED_IN and "check API_KEY" in wrong.err
    assert not any(key in seen for seen in admin.seen[printed_since:])  # shown once, by key create -q


def test_simulate_replays_the_recorded_calls(admin: Maas, runtime: Runtime) -> None:  # noqa: F811
    _ok(admin("team", "create", "replayed", "--token-limit", "1000000", "--time-window", "1h"))
    key = _ok(admin("key", "create", "replayed", "bob", "-q")).strip()
    assert all(chat(runtime, key).status_code == 200 for _ in range(4))
    proposed = ("-l", "tokens=100000/1h", "-l", "hourly=requests:3/1h")
    answer = admin("limits", "simulate", "replayed", *proposed, "--window", "1h", "--json").json()
    assert (answer["requests"], answer["refused_requests"], answer["refused_by"]) == (4, 1, {"hourly": 1})
    assert [rate["name"] for rate in answer["limits"]] == ["tokens", "hourly"]
    table = _ok(admin("limits", "simulate", "replayed", *proposed))
    (row,) = [line for line in table.splitlines() if line.startswith("bob")]
    assert row.split()[:5] == ["bob", "4", str(4 * 53), "1", "53"] and "hourly 1" in row
    assert admin("limits", "simulate", "replayed").code == ExitCode.USAGE
    ranged = admin("limits", "simulate", "replayed", *proposed, "--start", "2026-01-01T00:00:00Z",
                   "--end", "2026-01-02T00:00:00Z", "--json").json()
    assert ranged["requests"] == 0 and ranged["start"] == "2026-01-01T00:00:00Z"


def test_maas_offers_no_completion_options_of_typers_own(admin: Maas, tmp_path: Path) -> None:
    top = admin("--help")
    assert top.code == 0 and "--install-completion" not in top.out and "--show-completion" not in top.out
    assert admin("completion", "bash").code == 0
