"""The local runtime as a user runs it: a real process, real HTTPS, real SQLite on disk."""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.keymaterial import generate_admin_key
from tests.lenient_backend import LenientBackend
from tests.runtime import Runtime, start_runtime
from tests.waiting import eventually


def client(url: str, admin_key: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=False, timeout=30,
                        headers={"Authorization": f"ADMIN {admin_key}"})


@dataclass
class Shared:
    runtime: Runtime
    data_dir: Path
    admin_key: str


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One runtime for the tests that only need one running (a start is 2 to 3 s); those about
    starting, stopping and restarting start their own."""
    data_dir, admin_key = tmp_path_factory.mktemp("shared"), generate_admin_key()
    runtime = start_runtime(data_dir, env={"ADMIN_KEY": admin_key})
    try:
        yield Shared(runtime, data_dir, admin_key)
    finally:
        assert runtime.stop() == 0


def test_twenty_racing_creates_of_one_team_have_one_winner(shared: Shared) -> None:
    statuses: list[int] = []
    barrier = threading.Barrier(20)

    def create() -> None:
        with client(shared.runtime.admin_url, shared.admin_key) as http:
            barrier.wait()
            statuses.append(http.post("/teams", json={"team_id": "racing"}).status_code)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [409] * 19


def test_a_restart_on_the_same_data_dir_loses_nothing(tmp_path: Path) -> None:
    admin_key = generate_admin_key()
    first = start_runtime(tmp_path, env={"ADMIN_KEY": admin_key})
    with client(first.admin_url, admin_key) as http:
        assert http.post("/teams", json={"team_id": "kept", "token_limit": 7}).status_code == 201
        key = http.post("/teams/kept/keys", json={"user_id": "alice"}).json()
        before = http.get("/teams/kept").json()
    assert first.stop() == 0
    assert "stopped." in first.text

    second = start_runtime(tmp_path, env={"ADMIN_KEY": admin_key})
    try:
        with client(second.admin_url, admin_key) as http:
            assert http.get("/teams/kept").json() == before
            reply = http.request("DELETE", "/delete_key", json={"key": key["api_key"]})
            assert reply.status_code == 200
            assert reply.json()["secret_name"] == key["secret_name"]
    finally:
        assert second.stop() == 0


def test_generated_admin_key_is_kept_private_and_never_written_to_a_log(tmp_path: Path) -> None:
    first = start_runtime(tmp_path)  # its output is a pipe, as with nohup or a service manager
    key_file = tmp_path / "admin-key"
    admin_key = key_file.read_text().strip()
    try:
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert admin_key not in first.text and "maas_admin_" not in first.text
        assert f"generated into {key_file} (0600; not shown" in first.text
        with client(first.admin_url, admin_key) as http:
            assert http.get("/teams").status_code == 200
            assert http.get("/teams", headers={"Authorization": "ADMIN nope"}).status_code == 401
    finally:
        assert first.stop() == 0
    second = start_runtime(tmp_path)
    try:
        assert admin_key not in second.text
        assert str(key_file) in second.text
    finally:
        assert second.stop() == 0


def test_a_terminal_is_shown_the_generated_admin_key_once(tmp_path: Path) -> None:
    import pty
    import select
    import signal
    import subprocess
    import sys
    import time

    from tests.runtime import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "ADMIN_KEY"}
    env.update({"MAAS_DATA_DIR": str(tmp_path), "MAAS_ADMIN_PORT": "0", "MAAS_GATEWAY_PORT": "0",
                "MAAS_SIMULATOR_PORT": "0", "PYTHONUNBUFFERED": "1"})
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "local", "serve"], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Press Ctrl-C" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(controller, 65536)
                except OSError:
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        os.close(controller)
    admin_key = (tmp_path / "admin-key").read_text().strip()
    assert seen.decode().count(admin_key) == 1, seen.decode()


def test_admin_api_is_tls_with_a_certificate_for_loopback(shared: Shared) -> None:
    assert shared.runtime.admin_url.startswith("https://127.0.0.1:")
    cert = shared.data_dir / "tls" / "cert.pem"
    with httpx.Client(verify=str(cert)) as http:
        assert http.get(shared.runtime.admin_url + "/health").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(shared.runtime.admin_url + "/health")  # default trust store: self-signed refused


def test_bad_configuration_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.runtime import ROOT

    env = {**os.environ, "MAAS_ADMIN_PORT": "not-a-port", "MAAS_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "local", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "MAAS_ADMIN_PORT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("admin_key", ["REPLACE-ME-with-a-random-admin-key", "short-key"])
def test_placeholder_or_weak_admin_key_is_refused_without_echoing_it(tmp_path: Path, admin_key: str) -> None:
    import subprocess
    import sys

    from tests.runtime import ROOT

    env = {**os.environ, "ADMIN_KEY": admin_key, "MAAS_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "local", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "ADMIN_KEY" in done.stderr
    assert admin_key not in done.stderr + done.stdout


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.runtime import ROOT

    first = start_runtime(tmp_path / "first", env={"ADMIN_KEY": generate_admin_key()})
    try:
        busy = first.admin_url.rsplit(":", 1)[1]
        env = {**os.environ, "MAAS_DATA_DIR": str(tmp_path / "second"), "MAAS_ADMIN_PORT": busy,
               "MAAS_GATEWAY_PORT": "0", "MAAS_SIMULATOR_PORT": "0", "ADMIN_KEY": generate_admin_key()}
        done = subprocess.run([sys.executable, "-m", "local", "serve"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert "admin API cannot listen" in done.stderr and "MAAS_ADMIN_PORT" in done.stderr
        assert "Traceback" not in done.stderr
        # Both wrong: the models file is named first, since fixing the port would only reveal it.
        both = subprocess.run([sys.executable, "-m", "local", "serve"], cwd=ROOT,
                              env={**env, "MAAS_MODELS_FILE": str(tmp_path / "missing.yaml")},
                              capture_output=True, text=True, timeout=30)
        assert both.returncode == 1 and both.stderr.startswith("error: models file ")
    finally:
        assert first.stop() == 0


# -- the models file -------------------------------------------------------------------------

_BAD_MODELS_FILES = {
    "missing": None,
    "bad-yaml": "models: [\n  - name: q\n",
    "no-url": "models:\n  - name: q\n",
    "no-v1": "models:\n  - name: q\n    url: http://127.0.0.1:9/api\n",
    "duplicate": "models:\n  - name: q\n    url: http://127.0.0.1:9/v1\n  - name: q\n    url: http://127.0.0.1:9/v1\n",
}


@pytest.mark.parametrize("case", list(_BAD_MODELS_FILES))
def test_a_bad_models_file_is_one_line_naming_the_file_and_the_fix(tmp_path: Path, case: str) -> None:
    import subprocess
    import sys

    from tests.runtime import ROOT

    path = tmp_path / "models.yaml"
    text = _BAD_MODELS_FILES[case]
    if text is not None:
        path.write_text(text)
    env = {**os.environ, "MAAS_DATA_DIR": str(tmp_path / "data"), "MAAS_MODELS_FILE": str(path),
           "MAAS_ADMIN_PORT": "0", "MAAS_GATEWAY_PORT": "0", "MAAS_SIMULATOR_PORT": "0",
           "ADMIN_KEY": generate_admin_key()}
    done = subprocess.run([sys.executable, "-m", "local", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: models file {path}: ") and "MAAS_MODELS_FILE" in line
    assert "Press Ctrl-C" not in done.stdout


def _models_yaml(*entries: tuple[str, str | None]) -> str:
    text = "models:\n"
    for name, upstream in entries:
        text += f"  - name: {name}\n    url: http://127.0.0.1:{{simulator_port}}/v1\n"
        if upstream is not None:
            text += f"    upstream_model: {upstream}\n"
    return text


def test_the_runtime_follows_edits_to_the_models_file(tmp_path: Path) -> None:
    import signal
    import time

    admin_key = generate_admin_key()
    models = tmp_path / "models.yaml"
    models.write_text(_models_yaml(("qwen3-0-6b-instruct", None)))
    runtime = start_runtime(tmp_path / "data", env={"ADMIN_KEY": admin_key, "MAAS_MODELS_FILE": str(models)})

    try:
        assert f"  models      {models} (1 model; edits are picked up within a second, no restart)" in runtime.text
        with client(runtime.admin_url, admin_key) as admin, \
                httpx.Client(base_url=runtime.urls["gateway"], timeout=30) as gateway:
            assert admin.post("/teams", json={"team_id": "t"}).status_code == 201
            api_key = admin.post("/teams/t/keys", json={"user_id": "u"}).json()["api_key"]
            gateway.headers["Authorization"] = f"APIKEY {api_key}"

            def listings() -> tuple[list[str], list[str], list[str]]:
                return ([m["name"] for m in admin.get("/models").json()["models"]],
                        [m["id"] for m in admin.get("/v1/models").json()["data"]],
                        [m["id"] for m in gateway.get("/v1/models").json()["data"]])

            def chat(model: str) -> httpx.Response:
                return gateway.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5})

            one = ["qwen3-0-6b-instruct"]
            assert listings() == (one, one, one)
            assert chat("renamed").status_code == 404

            # A new model the simulator knows under another name; the client sees its own.
            models.write_text(_models_yaml(("qwen3-0-6b-instruct", None), ("renamed", "vllm-simulator")))
            runtime.process.send_signal(signal.SIGHUP)  # checks now; and must not stop the process
            two = ["qwen3-0-6b-instruct", "renamed"]
            assert eventually(lambda: listings() == (two, two, two)), listings()
            reply = chat("renamed")
            assert reply.status_code == 200 and reply.json()["model"] == "renamed"
            tokens = reply.json()["usage"]["total_tokens"]
            assert eventually(lambda: {m["model"]: m["token_usage"] for m in admin.get("/teams/t/usage").json()[
                "model_breakdown"]} == {"renamed": tokens})  # counted under the client's name

            models.write_text("models: [\n  - name: broken\n")  # a bad edit: the last good table stays
            assert eventually(lambda: f"models file {models}: not valid YAML" in runtime.text)
            time.sleep(1.5)
            [warning] = [line for line in runtime.output if "still serving the previous" in line]  # one line
            assert f"models file {models}: not valid YAML at line 2" in warning and "Traceback" not in runtime.text
            assert listings() == (two, two, two) and chat("renamed").status_code == 200

            models.write_text(_models_yaml(("vllm-simulator", None)))  # fixed: picked up again
            assert eventually(lambda: listings() == (["vllm-simulator"],) * 3), listings()
            assert chat("renamed").status_code == 404 and chat("vllm-simulator").status_code == 200
    finally:
        assert runtime.stop() == 0
    assert "Traceback" not in runtime.text and api_key not in runtime.text


def test_a_stop_lets_the_calls_in_flight_finish_and_says_so(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) with a stream in flight: the gateway refuses new work, says what it
    waits for, and the stream ends whole before the process does."""
    backend = LenientBackend(token_delay_s=0.02)  # 200 tokens: 4 s of streaming
    backend.start()
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - name: slow\n    url: {backend.url}\n")
    admin_key = generate_admin_key()
    runtime = start_runtime(tmp_path / "data", env={"ADMIN_KEY": admin_key, "MAAS_MODELS_FILE": str(models)})
    try:
        with client(runtime.admin_url, admin_key) as admin:
            assert admin.post("/teams", json={"team_id": "t"}).status_code == 201
            api_key = admin.post("/teams/t/keys", json={"user_id": "u"}).json()["api_key"]
        body = {"model": "slow", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 200, "stream": True}
        with httpx.Client(base_url=runtime.urls["gateway"], timeout=30) as gateway, gateway.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"APIKEY {api_key}"}
        ) as response:
            chunks = response.iter_raw()
            got = next(chunks)
            runtime.process.send_signal(signal.SIGTERM)
            got += b"".join(chunks)  # raises unless the stream ends whole
        assert got.count(b"data: {") == 200 and got.endswith(b"data: [DONE]\n\n")
        assert runtime.process.wait(timeout=20) == 0
        assert "  gateway: waiting up to 10 s for 1 call in flight" in runtime.text, runtime.text
    finally:
        runtime.stop()
        backend.stop()
    assert "Traceback" not in runtime.text and api_key not in runtime.text
