"""`maas`, the command line, against the real local runtime (`python -m local serve`, one per
module): the whole quickstart with maas alone, exit codes, --json and -o yaml, paging, deletes
that ask, bulk import that resumes after a kill, completion scripts, and that no secret is shown
but the new key, once.

Most commands run in this process through typer's CliRunner (the same command tree the console
script runs, a tenth of the time); what needs the installed script or a real process (a kill,
a terminal-less stdin, `maas serve`) runs `.venv/bin/maas`.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tests.local_servers import free_port
from tests.runtime import ROOT, Runtime, start_runtime

MAAS = Path(sys.executable).parent / "maas"
"""The console script `make venv` installs (`pip install -e .`)."""
MODEL = "qwen3-0-6b-instruct"


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@dataclass
class Maas:
    """`maas` with a config dir of its own, pointed at one server. Every output is kept, for the
    checks that no secret was printed."""

    config: Path
    url: str
    data_dir: Path
    seen: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    """Variables every run of this maas gets (MAAS_CA_FILE, say)."""

    def env(self, **extra: str) -> dict[str, str]:
        return {"XDG_CONFIG_HOME": str(self.config), "MAAS_URL": self.url, "MAAS_DATA_DIR": str(self.data_dir),
                "COLUMNS": "200", **self.settings, **extra}

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Ran:
        result = CliRunner().invoke(app, list(args), input=input, env=self.env(**env), catch_exceptions=False)
        ran = Ran(result.exit_code, result.stdout, result.stderr)
        self.seen += [ran.out, ran.err]
        return ran

    def environment(self, **extra: str) -> dict[str, str]:
        """This process's environment less the product's settings, plus this maas's."""
        environment = {name: value for name, value in os.environ.items() if not name.startswith("MAAS_")}
        environment.pop("ADMIN_KEY", None)
        return {**environment, **self.env(**extra)}

    def process(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([str(MAAS), *args], env=self.environment(**(env or {})), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def on_a_terminal(self, *args: str, typed: str) -> tuple[int, str]:
        """The installed script on a pseudo-terminal, `typed` typed ahead: (exit code, screen)."""
        master, slave = os.openpty()
        process = subprocess.Popen([str(MAAS), *args], env=self.environment(), stdin=slave, stdout=slave,
                                   stderr=slave, close_fds=True)
        os.close(slave)
        os.write(master, typed.encode())
        screen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            screen += chunk
        os.close(master)
        text = screen.decode(errors="replace")
        self.seen.append(text)
        return process.wait(timeout=30), text

    def run(self, *args: str, timeout: float = 30, **env: str) -> Ran:
        process = self.process(*args, env=env)
        out, err = process.communicate(timeout=timeout)
        self.seen += [out, err]
        return Ran(process.returncode, out, err)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    running = start_runtime(tmp_path_factory.mktemp("runtime") / ".maas")
    try:
        yield running
    finally:
        assert running.stop() == 0


def _data_dir_of(runtime: Runtime) -> Path:
    found = [line for line in runtime.output if line.startswith("MaaS key manager")]
    assert found, runtime.text
    return Path(found[0].split("embedded store in ")[1].strip().rstrip("/"))


def admin_key_of(runtime: Runtime) -> str:
    return (_data_dir_of(runtime) / "admin-key").read_text().strip()


def signed_in_maas(runtime: Runtime, config: Path) -> Maas:
    maas = Maas(config, runtime.admin_url, _data_dir_of(runtime))
    ran = maas("login", "--admin-key", input=admin_key_of(runtime))
    assert ran.code == 0, ran.err
    return maas


@pytest.fixture(scope="module")
def admin(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Maas:
    return signed_in_maas(runtime, tmp_path_factory.mktemp("config"))


def chat(runtime: Runtime, api_key: str) -> httpx.Response:
    return httpx.post(f"{runtime.urls['gateway']}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"APIKEY {api_key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50})


def test_the_quickstart_with_maas_alone(runtime: Runtime, tmp_path: Path) -> None:
    maas = Maas(tmp_path / "config", runtime.admin_url, _data_dir_of(runtime))
    admin_key = admin_key_of(runtime)
    assert maas("team", "list").code == 3, "not signed in yet"
    # As in the project folder after `make run`: maas finds the admin key and certificate in the
    # data dir (MAAS_DATA_DIR, else ./.maas) by itself.
    login = maas("login", "--admin-key")
    assert login.code == 0, login.err
    assert "as the admin key;" in login.out
    assert maas("whoami", "--json").json()["signed_in_with"] == "admin-key"

    team = maas("team", "create", "test-team", "--name", "Test Team", "--policy", "test-tokens",
                "--token-limit", "100000", "--time-window", "1h", "--json").json()
    assert team["team_id"] == "test-team" and team["token_limit"] == 100000 and team["time_window"] == "1h"

    created = maas("key", "create", "test-team", "test-user", "--email", "test-user@test.com")
    assert created.code == 0, created.err
    api_key = next(line.split(": ", 1)[1] for line in created.out.splitlines() if line.startswith("api key: "))
    assert api_key.startswith("maas_") and "only time the key is shown" in created.err
    first = chat(runtime, api_key)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 20

    tightened = maas("team", "update", "test-team", "--token-limit", "20", "--time-window", "1m", "--json").json()
    assert (tightened["token_limit"], tightened["time_window"]) == (20, "1m")
    assert chat(runtime, api_key).status_code == 429

    assert MODEL in {model["name"] for model in maas("models", "--json").json()["models"]}
    assert "test-team" in maas("team", "list").out
    shown = maas("team", "show", "test-team", "--json").json()
    assert shown["key_count"] == 1 and [u["user_id"] for u in shown["users"]] == ["test-user"]
    (listed,) = maas("key", "list", "--team", "test-team", "--json").json()["keys"]
    handle = listed["secret_name"]
    assert [k["secret_name"] for k in maas("key", "list", "--user", "test-user", "--json").json()["keys"]] == [handle]
    assert handle in maas("key", "list", "--team", "test-team").out
    assert maas("key", "show", handle, "--json").json()["user_email"] == "test-user@test.com"

    user_usage = maas("usage", "user", "test-user", "--json").json()
    assert user_usage["total_token_usage"] == first.json()["usage"]["total_tokens"]
    assert user_usage["total_limited_calls"] == 1
    by_model = maas("usage", "team", "test-team", "--by", "model")
    assert by_model.code == 0 and MODEL in by_model.out
    assert maas("usage", "team", "test-team", "--window", "1h", "--json").json()["total_authorized_calls"] == 1
    platform = maas("usage", "platform", "--top", "1000", "--json").json()
    (row,) = [team for team in platform["team_breakdown"] if team["team_id"] == "test-team"]
    assert (row["token_usage"], row["limited_calls"], row["users"]) == (user_usage["total_token_usage"], 1, 1)
    assert platform["total_token_usage"] >= row["token_usage"]
    by_user = maas("usage", "platform", "--by", "user", "--window", "1h")
    assert by_user.code == 0 and "test-user" in by_user.out and "TEAMS" in by_user.out

    revoked = maas("key", "revoke", handle, "--json").json()
    assert revoked["status"] == "revoked"
    assert chat(runtime, api_key).status_code == 401
    assert maas("key", "delete", handle, "--yes").code == 0
    assert maas("key", "show", handle, "--team", "test-team").code == 5
    deleted = maas("team", "delete", "test-team", "--yes", "--json").json()
    assert deleted["team_id"] == "test-team"
    assert maas("team", "show", "test-team").code == 5

    # The new key was shown once, by `key create`; the admin key never.
    assert sum(text.count(api_key) for text in maas.seen) == 1
    assert not any(admin_key in text for text in maas.seen)
    config_file = tmp_path / "config" / "maas" / "credentials.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_file.parent.stat().st_mode) == 0o700
    assert api_key not in config_file.read_text()


def test_the_readmes_maas_session_runs_as_written(runtime: Runtime, tmp_path: Path) -> None:
    from tests.test_readme import fences, section

    serve, session = fences(section("Command line"), "bash")
    assert serve.startswith("maas serve")
    gateway = runtime.urls["gateway"].removeprefix("http://")
    # Only the ports and folders differ from the README: tests take free ones.
    script = "\n".join(["set -euo pipefail", session.replace("127.0.0.1:8000", gateway)])
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MAAS_")}
    environment.pop("ADMIN_KEY", None)
    environment.update(MAAS_URL=runtime.admin_url, MAAS_DATA_DIR=str(_data_dir_of(runtime)),
                       XDG_CONFIG_HOME=str(tmp_path / "config"))
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"total_tokens"' in done.stdout and "Deleted team test-team" in done.stdout
    assert "qwen3-0-6b-instruct" in done.stdout and "test-user" in done.stdout
    assert not re.search(r"maas_[A-Za-z0-9_-]{20}", done.stdout + done.stderr), "a key was printed"


def test_exit_codes_say_what_went_wrong(admin: Maas, runtime: Runtime, tmp_path: Path) -> None:
    assert admin("team", "create", "codes").code == 0
    conflict = admin("team", "create", "codes")
    assert conflict.code == 6 and "already exists" in conflict.err and conflict.err.count("\n") == 1
    assert admin("team", "show", "no-such-team").code == 5
    assert admin("key", "revoke", "apikey-nobody-codes-00000000").code == 5
    invalid = admin("team", "create", "Not_A_Label")
    assert invalid.code == 1 and "(422)" in invalid.err
    assert admin("team", "create").code == 2, "a missing argument"
    assert admin("team", "list", "--bogus").code == 2
    assert admin("usage", "user", "u", "--by", "user").code == 2

    stranger = Maas(tmp_path / "stranger", runtime.admin_url, admin.data_dir)
    assert stranger("team", "list").code == 3
    refused = stranger("login", "--token", input="not-a-token")
    assert refused.code == 3 and "(401)" in refused.err
    assert not (tmp_path / "stranger" / "maas" / "credentials.json").exists(), "a refused credential is not kept"

    closed = f"https://127.0.0.1:{free_port()}"
    unreachable = stranger("login", "--url", closed, "--admin-key", ADMIN_KEY=admin_key_of(runtime))
    assert unreachable.code == 7 and "cannot reach" in unreachable.err
    # No other server gets the credentials kept for this one.
    assert admin("team", "list", MAAS_URL=closed).code == 3


class _BadGateway(http.server.BaseHTTPRequestHandler):
    """A proxy whose backend is gone, as an ingress answers then: 502 and an HTML page."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        page = b"<html><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>\n"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        return


def test_a_server_failing_is_exit_7_in_one_line(tmp_path: Path) -> None:
    """Real 5xx answers: the runtime's 503 when its Prometheus is down, and a proxy's HTML 502."""
    runtime = start_runtime(tmp_path / "runtime" / ".maas", env={
        "MAAS_USAGE": "prometheus", "PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}", "MAAS_PROMETHEUS_TIMEOUT": "1"})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    serving.start()
    try:
        maas = signed_in_maas(runtime, tmp_path / "config")
        assert maas("team", "create", "failing").code == 0
        for command in (["usage", "team", "failing"], ["usage", "team", "failing", "--json"]):
            failed = maas(*command)
            assert failed.code == 7, failed
            assert failed.err.count("\n") == 1 and failed.err.startswith("maas: Prometheus at http://127.0.0.1:")
            assert "(503): the server failed, not your request" in failed.err and failed.out == ""

        behind_proxy = f"http://127.0.0.1:{proxy.server_address[1]}"
        login = maas("login", "--url", behind_proxy, "--admin-key", ADMIN_KEY=admin_key_of(runtime))
        assert login.code == 7 and login.err == "maas: Bad Gateway (502): the server failed, not your request: " \
            "try again later, or ask its operator (its log says why)\n"
        assert behind_proxy not in json.loads((tmp_path / "config" / "maas" / "credentials.json").read_text())["servers"]
    finally:
        proxy.shutdown()
        proxy.server_close()
        assert runtime.stop() == 0


def test_tls_is_checked_and_make_runs_certificate_trusted_on_loopback(admin: Maas, tmp_path: Path) -> None:
    elsewhere = Maas(tmp_path / "config", admin.url, tmp_path / "no-data-here")
    unverified = elsewhere("login", "--admin-key", ADMIN_KEY=(admin.data_dir / "admin-key").read_text())
    assert unverified.code == 7 and "certificate" in unverified.err and "--ca" in unverified.err
    cert = admin.data_dir / "tls" / "cert.pem"
    assert elsewhere("--ca", str(cert), "login", "--admin-key",
                     ADMIN_KEY=(admin.data_dir / "admin-key").read_text()).code == 0
    # The certificate trusted at login is kept (as a path) for the next commands, from any folder.
    assert elsewhere("whoami").code == 0


def test_profiles_keep_a_sign_in_with_its_server(runtime: Runtime, tmp_path: Path) -> None:
    maas = Maas(tmp_path / "config", runtime.admin_url, _data_dir_of(runtime))
    admin_key = admin_key_of(runtime)
    signed = maas("login", "--profile", "ops", "--admin-key", input=admin_key)
    assert signed.code == 0 and "as profile ops" in signed.out, signed.err
    assert maas("team", "list").code == 3, "a profile is used when named, and is not the current server"
    assert maas("--profile", "ops", "team", "list").code == 0
    assert maas("team", "list", MAAS_PROFILE="ops").code == 0
    assert maas("-p", "ops", "whoami", "--json").json()["signed_in_with"] == "admin-key"
    assert re.search(r"^profile +ops", maas("-p", "ops", "whoami").out, re.M)

    closed = f"https://127.0.0.1:{free_port()}"
    # An exported MAAS_URL is another server's: the profile's own URL wins over it ...
    assert maas("-p", "ops", "team", "list", MAAS_URL=closed).code == 0
    # ... and a typed --url that differs is refused, never given the profile's credential.
    typed = maas("--url", closed, "-p", "ops", "team", "list")
    assert typed.code == 2 and f"profile ops is for {runtime.admin_url}, not {closed}" in typed.err

    assert maas("login", "-p", "ops-2", "--admin-key", input=admin_key).code == 0
    offered = subprocess.run([str(MAAS)], capture_output=True, text=True, timeout=30, env=maas.environment(
        _MAAS_COMPLETE="complete_bash", COMP_WORDS="maas --profile o", COMP_CWORD="2"))
    assert offered.stdout.split() == ["ops", "ops-2"], offered.stderr
    listed = maas("profile", "list", "--json").json()["profiles"]
    assert [(p["name"], p["url"], p["method"]) for p in listed] == [
        ("ops", runtime.admin_url, "admin-key"), ("ops-2", runtime.admin_url, "admin-key")]
    assert "ops-2 *" in maas("-p", "ops-2", "profile", "list").out

    missing = maas("-p", "nope", "team", "list")
    assert missing.code == 3 and "maas login --profile nope" in missing.err and missing.err.count("\n") == 1
    assert maas("-p", "../etc", "team", "list").code == 2

    config_file = tmp_path / "config" / "maas" / "credentials.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert set(json.loads(config_file.read_text())["profiles"]) == {"ops", "ops-2"}
    assert maas("logout", "--profile", "ops").code == 0
    assert maas("-p", "ops", "team", "list").code == 3 and maas("-p", "ops-2", "team", "list").code == 0
    assert not any(admin_key in text for text in maas.seen)


def test_json_and_yaml_are_the_apis_answer(admin: Maas) -> None:
    admin("team", "create", "shapes", "--token-limit", "500")
    as_json = admin("team", "show", "shapes", "--json").json()
    as_yaml = admin("team", "show", "shapes", "-o", "yaml")
    assert as_yaml.code == 0 and yaml.safe_load(as_yaml.out) == as_json
    assert admin("team", "show", "shapes", "-o", "json").json() == as_json
    assert set(as_json) >= {"team_id", "token_limit", "keys", "users"}


def test_listings_follow_next_cursor(admin: Maas) -> None:
    for number in range(5):
        assert admin("team", "create", f"page-{number}").code == 0
    first = admin("team", "list", "--limit", "2", "--json").json()
    assert len(first["teams"]) == 2 and first["next_cursor"]
    assert "--cursor" in admin("team", "list", "--limit", "2").err
    second = admin("team", "list", "--limit", "2", "--cursor", first["next_cursor"], "--json").json()
    assert not {t["team_id"] for t in first["teams"]} & {t["team_id"] for t in second["teams"]}
    everything = admin("team", "list", "--limit", "2", "--all", "--json").json()
    assert len(everything["teams"]) == everything["total_teams"] >= 5 and everything["next_cursor"] is None
    assert {f"page-{n}" for n in range(5)} <= {t["team_id"] for t in everything["teams"]}


def test_deletes_ask_and_refuse_without_a_terminal(admin: Maas) -> None:
    admin("team", "create", "keep-me")
    refused = admin.run("team", "delete", "keep-me")  # a real process, stdin not a terminal
    assert refused.code == 2 and "--yes" in refused.err
    assert admin("team", "show", "keep-me").code == 0
    assert admin("member", "add", "keep-me", "alice").code == 0
    assert admin("member", "remove", "keep-me", "alice").code == 2
    assert admin("member", "remove", "keep-me", "alice", "--yes").code == 0
    code, screen = admin.on_a_terminal("team", "delete", "keep-me", typed="n\n")
    assert code == 1 and "Delete team keep-me and its 0 key(s)? [y/N]" in screen and "you said no" in screen
    assert admin("team", "show", "keep-me").code == 0
    code, screen = admin.on_a_terminal("team", "delete", "keep-me", typed="y\n")
    assert code == 0 and "Deleted team keep-me" in screen
    assert admin("team", "show", "keep-me").code == 5


def typed_on_a_terminal(command: list[str], env: dict[str, str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """The installed script on a pseudo-terminal, each answer typed once its prompt is on the
    screen (typed ahead, the terminal would echo it before maas hides it): (exit code, screen).
    Gives up, saying what was on the screen, after 30 s."""
    master, slave = os.openpty()
    process = subprocess.Popen([str(MAAS), *command], env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            screen += chunk
            if pending and pending[0][0].encode() in screen.rsplit(b"\n", 1)[-1]:
                os.write(master, pending.pop(0)[1].encode())
        else:
            process.kill()
            raise AssertionError(f"maas still running after 30s; the screen: {screen.decode(errors='replace')!r}")
    finally:
        os.close(master)
    return process.wait(timeout=30), screen.decode(errors="replace")


def test_a_key_is_deleted_by_its_value_read_from_stdin_never_argv(admin: Maas) -> None:
    admin("team", "create", "leaky")
    first = admin("key", "create", "leaky", "lee", "--json").json()
    second = admin("key", "create", "leaky", "lou", "--json").json()

    refused = admin("key", "delete", "--value-stdin", input=first["api_key"] + "\n")
    assert refused.code == 2 and "--yes" in refused.err, "a pipe cannot confirm"
    deleted = admin("key", "delete", "--value-stdin", "--yes", input=first["api_key"] + "\n")
    assert deleted.code == 0, deleted.err
    assert deleted.out.strip() == f"Deleted {first['secret_name']} (user lee, team leaky)"
    assert admin("key", "show", first["secret_name"], "--team", "leaky").code == 5
    again = admin("key", "delete", "--value-stdin", "--yes", "--json", input=first["api_key"])
    assert again.code == 5 and "no key matches" in again.err
    assert admin("key", "delete", "--value-stdin", "--yes", input="").code == 2
    assert admin("key", "delete", second["secret_name"], "--value-stdin", "--yes", input=second["api_key"]).code == 2
    assert admin("key", "delete", "--yes").code == 2
    in_argv = admin("key", "delete", second["api_key"], "--yes")
    assert in_argv.code == 2 and "--value-stdin" in in_argv.err, "a key given as a handle is not sent"

    # Typed on a terminal: hidden as it is typed, then confirmed there.
    code, screen = typed_on_a_terminal(["key", "delete", "--value-stdin"], admin.environment(),
                                       # The space after the colon is getpass's own prompt,
                                       # written once it has turned the echo off.
                                       [("API key: ", second["api_key"] + "\n"), ("[y/N]", "y\n")])
    admin.seen.append(screen)
    assert code == 0 and f"Deleted {second['secret_name']}" in screen, screen
    assert admin("key", "show", second["secret_name"], "--team", "leaky").code == 5
    # Each key was shown once, by the create that made it; no delete printed it.
    assert [sum(text.count(key["api_key"]) for text in admin.seen) for key in (first, second)] == [1, 1]


def test_members_and_key_lifecycle(admin: Maas) -> None:
    admin("team", "create", "crew")
    added = admin("member", "add", "crew", "tara", "--role", "admin", "--email", "tara@example.com", "--json").json()
    assert added["role"] == "admin"
    assert admin("member", "update", "crew", "tara", "--role", "member", "--json").json()["role"] == "member"
    assert [m["user_id"] for m in admin("member", "list", "crew", "--json").json()["members"]] == ["tara"]
    created = admin("key", "create", "crew", "tara", "--alias", "laptop", "--model", MODEL, "--expires-in", "30d",
                    "--json").json()
    assert created["alias"] == "laptop" and created["expires_at"] and MODEL in created["models_allowed"]
    rotated = admin("key", "rotate", created["secret_name"], "--grace-period", "1h", "--json").json()
    assert rotated["api_key"] != created["api_key"] and rotated["secret_name"] != created["secret_name"]
    old = admin("key", "show", created["secret_name"], "--json").json()
    assert old["replaced_by"] == rotated["secret_name"] and old["status"] == "active"
    quiet = admin("key", "create", "crew", "quinn", "-q")
    assert quiet.code == 0 and quiet.out.startswith("maas_") and quiet.out.count("\n") == 1


def test_audit_lists_what_admins_did(admin: Maas) -> None:
    admin("team", "create", "audited")
    entries = admin("audit", "--team", "audited", "--action", "create_team", "--json").json()["entries"]
    assert [(e["action"], e["team_id"], e["outcome"]) for e in entries] == [("create_team", "audited", 201)]
    assert "create_team" in admin("audit", "--team", "audited").out


def test_policy_render_is_what_the_cluster_sync_writes(admin: Maas) -> None:
    from shared.policies import generate_policies
    from shared.settings import Settings

    admin("team", "create", "rendered", "--token-limit", "777", "--time-window", "10m")
    ran = admin("policy", "render")
    assert ran.code == 0, ran.err
    documents = list(yaml.safe_load_all(ran.out))
    assert [d["kind"] for d in documents] == ["AuthPolicy", "TokenRateLimitPolicy", "TelemetryPolicy"]
    limits = json.dumps(documents[1]["spec"])
    assert "777" in limits
    assert documents[2] == generate_policies([], Settings(), models=[
        m["name"] for m in admin("models", "--json").json()["models"]])[-1]


def write_users(path: Path, count: int) -> list[str]:
    users = [f"user-{number:03d}" for number in range(count)]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "user_email", "alias", "models", "expires_in"])
        for user in users:
            writer.writerow([user, f"{user}@example.com", "bulk", MODEL, "30d"])
    return users


def saved_keys(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as keys:
        return list(csv.DictReader(keys))


def team_key_count(admin: Maas, team: str) -> int:
    return int(admin("team", "show", team, "--json").json()["key_count"])


def test_key_import_resumes_after_a_kill_without_duplicating_keys(admin: Maas, tmp_path: Path) -> None:
    admin("team", "create", "bulk")
    users = write_users(tmp_path / "users.csv", 30)
    out = tmp_path / "keys.csv"
    assert team_key_count(admin, "bulk") == 0
    importing = admin.process("key", "import", str(tmp_path / "users.csv"), "--team", "bulk", "--out", str(out))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(saved_keys(out)) < 8):
        time.sleep(0.01)
    importing.send_signal(signal.SIGKILL)
    importing.communicate(timeout=10)
    partial = saved_keys(out)
    made = team_key_count(admin, "bulk")
    assert 8 <= len(partial) < len(users), "killed midway"
    assert made in (len(partial), len(partial) + 1), "at most the key in flight was not saved"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    resumed = admin.run("key", "import", str(tmp_path / "users.csv"), "--team", "bulk", "--out", str(out))
    assert resumed.code == 0, resumed.err
    final = saved_keys(out)
    assert sorted(row["user_id"] for row in final) == users
    assert final[:len(partial)] == partial, "what was saved stays as it was"
    listed = admin("key", "list", "--team", "bulk", "--all", "--json").json()["keys"]
    assert len(listed) == len(users) == team_key_count(admin, "bulk")
    assert {k["secret_name"] for k in listed} == {row["secret_name"] for row in final}
    assert all(k["alias"] == "bulk" and k["models_allowed"] == MODEL and k["expires_at"] for k in listed)
    # The keys are in the file, never on the terminal.
    assert not any(row["api_key"] in resumed.out + resumed.err for row in final)
    assert not (tmp_path / "keys.csv.progress").exists()
    again = admin.run("key", "import", str(tmp_path / "users.csv"), "--team", "bulk", "--out", str(out))
    assert again.code == 0 and "made 0 key(s)" in again.err and team_key_count(admin, "bulk") == len(users)


def test_key_import_replaces_a_key_whose_secret_an_interruption_lost(admin: Maas, tmp_path: Path) -> None:
    """The moment a kill can hit between the API making a key and its line reaching the file,
    set up as that kill leaves it: the user noted as pending, a key made, no line."""
    admin("team", "create", "lost")
    write_users(tmp_path / "users.csv", 3)
    out = tmp_path / "keys.jsonl"
    server_time = httpx.get(f"{admin.url}/health", verify=str(admin.data_dir / "tls" / "cert.pem")).headers["Date"]
    from email.utils import parsedate_to_datetime

    (tmp_path / "keys.jsonl.progress").write_text(json.dumps(
        {"pending": "user-000", "since": parsedate_to_datetime(server_time).isoformat()}) + "\n")
    orphan = admin("key", "create", "lost", "user-000", "--json").json()["secret_name"]
    ran = admin("key", "import", str(tmp_path / "users.csv"), "--team", "lost", "--out", str(out))
    assert ran.code == 0, ran.err
    assert f"deleted {orphan}" in ran.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == ["user-000", "user-001", "user-002"]
    handles = {k["secret_name"] for k in admin("key", "list", "--team", "lost", "--json").json()["keys"]}
    assert handles == {line["secret_name"] for line in lines} and orphan not in handles


def test_key_import_checks_its_file_and_keeps_going_past_a_bad_row(admin: Maas, tmp_path: Path) -> None:
    admin("team", "create", "rows")
    (tmp_path / "typo.csv").write_text("user_id,emial\nann,ann@example.com\n")
    assert admin("key", "import", str(tmp_path / "typo.csv"), "--team", "rows", "--out", str(tmp_path / "k")).code == 2
    (tmp_path / "twice.csv").write_text("user_id\nann\nann\n")
    assert admin("key", "import", str(tmp_path / "twice.csv"), "--team", "rows", "--out", str(tmp_path / "k")).code == 2
    (tmp_path / "users.csv").write_text("user_id,user_email\nann,ann@example.com\nbob,not-an-email\ncid,\n")
    assert admin("key", "import", str(tmp_path / "users.csv"), "--team", "rows").code == 2, "the keys would go nowhere"
    ran = admin("key", "import", str(tmp_path / "users.csv"), "--team", "rows", "--out", str(tmp_path / "keys.csv"))
    assert ran.code == 1 and "line 3 (bob)" in ran.err
    assert [row["user_id"] for row in saved_keys(tmp_path / "keys.csv")] == ["ann", "cid"]
    shown = admin("key", "import", str(tmp_path / "users.csv"), "--team", "rows", "--show", "--format", "jsonl")
    assert shown.code == 1 and {json.loads(line)["user_id"] for line in shown.out.splitlines()} == {"ann", "cid"}


def test_every_command_has_help_with_an_example() -> None:
    from cli.main import app as tree
    from typer.main import get_command

    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, child in getattr(command, "commands", {}).items():
            yield from walk(child, [*path, name])

    root = get_command(tree)
    paths = list(walk(root, []))
    assert len(paths) > 30
    for path in paths:
        if path == ["cluster-check"]:
            continue  # its --help is tools/cluster_check.py's own, checked below
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        result = CliRunner().invoke(tree, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        # Groups too (maas team --help), and the examples set off as a block, as written.
        lines = result.stdout.splitlines()
        assert " Examples:" in [line.rstrip() for line in lines], f"maas {' '.join(path)} --help shows no example"
        example = lines[[line.rstrip() for line in lines].index(" Examples:") + 1]
        assert re.match(r"^ {3}\S", example), f"maas {' '.join(path)} --help: examples not indented: {example!r}"
        assert "<bool>" not in result.stdout and "<str>" not in result.stdout, path
    top = CliRunner().invoke(tree, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "Exit codes:" in top and all(f"  {code}  " in top for code in range(8))


def test_the_installed_script_and_its_completion_scripts() -> None:
    helped = subprocess.run([str(MAAS), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "Exit codes:" in helped.stdout
    checked = CliRunner().invoke(app, ["cluster-check", "--help"])
    assert checked.exit_code == 0 and "--no-e2e" in checked.stdout, "tools/cluster_check.py's own options"
    scripts = {shell: CliRunner().invoke(app, ["completion", shell]) for shell in ("bash", "zsh", "fish")}
    assert all(ran.exit_code == 0 for ran in scripts.values())
    assert "complete -o default -F" in scripts["bash"].stdout and "_MAAS_COMPLETE=complete_bash" in scripts["bash"].stdout
    assert "compdef" in scripts["zsh"].stdout and "complete --command maas" in scripts["fish"].stdout
    # Bash takes the script, and Tab after `maas key cr` offers `create`, from the installed script.
    sourced = subprocess.run(["bash", "-c", f"source <({MAAS} completion bash) && complete -p maas"],
                             capture_output=True, text=True, timeout=30)
    assert sourced.returncode == 0 and "maas" in sourced.stdout, sourced.stderr
    offered = subprocess.run([str(MAAS)], capture_output=True, text=True, timeout=30, env={
        **os.environ, "_MAAS_COMPLETE": "complete_bash", "COMP_WORDS": "maas key cr", "COMP_CWORD": "2"})
    assert offered.stdout.split() == ["create"], offered.stderr


def test_maas_serve_is_make_run(tmp_path: Path) -> None:
    """From any folder: the same runtime, its data in ./.maas, the project's models file."""
    ports = {f"MAAS_{name}_PORT": "0" for name in ("ADMIN", "GATEWAY", "METRICS", "SIMULATOR")}
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MAAS_")}
    serving = subprocess.Popen([str(MAAS), "serve"], cwd=tmp_path, env={**environment, **ports, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert serving.stdout is not None
        lines = []
        for line in serving.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        assert any("admin API   https://127.0.0.1:" in line for line in lines), "".join(lines)
        assert any(str(ROOT / "config" / "models.local.yaml") in line for line in lines)
        assert (tmp_path / ".maas" / "admin-key").is_file()
    finally:
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(timeout=30) == 0


def test_the_command_line_loads_none_of_the_server() -> None:
    probe = ("import sys, cli.main, cli.policy, shared.policies; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('functions', 'local', 'tools', 'main', 'flask', 'kubernetes') or m.startswith('shared.store.s') "
             "or m == 'shared.store.kube')))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == []
