"""`make bench`, the admin side at scale (issue 12, item 7).

Three data dirs, loaded in bulk with 1k, 10k and 100k keys (10 per team, one per user) and a
usage ledger of 10 one-minute bucket rows per user (at 100k: 1 million rows, 10 million
requests' counts). Each is served by its own real runtime (`python -m local serve`), all three
up at once, and the calls take turns between them, call by call: other jobs share this
machine's two cores and its load drifts by the minute, while the targets compare one scale
with another (measured one scale after the other, the same figures moved 1.1-1.7x with the
load). Measured over HTTPS with one kept-alive client per runtime: p50/p99 of the admin
lookups, writes and usage queries; then the gateway's p50 at concurrency 1, idle, while one
client issues admin writes as fast as it can, and while it issues reads. Then, on the 100k
data dir: cold start of one function target (its code laid out and compiled as the
Containerfile does) against a hello-world function, both under functions-framework, and a
gateway's RSS over 1 million requests (200k with --quick).

Targets: at 100k keys, each admin figure's p50 within 1.5x of its 1k figure; the gateway's p50
during admin writes within 1.5x of idle; cold start within 1.5x of hello-world; RSS within 10%
from after a 100k-request warm-up to the end. Every loop is bounded by a count and a time.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import loader
from shared.keymaterial import generate_admin_key, generate_api_key

ROOT = Path(__file__).resolve().parent.parent
STEPS = (1_000, 10_000, 100_000)
CALLS = 200  # per admin figure and scale
CALL_BUDGET_S = 40.0  # ...or fewer when one figure's calls at all scales take longer than this
MIN_CALLS = 10
WARM_UP_CALLS = 5
RATIO = 1.5  # the lookups', the gateway's and cold start's target
RSS_DRIFT = 0.10
GATEWAY_RUNS = 2  # rounds of idle / during writes / during reads at every scale
GATEWAY_SECONDS = 4
SETTLE_LIMIT_S = 60.0
COLD_RUNS = 9  # ~1 s each; the machine is shared, so the median needs a few
RSS_WARM_UP = 100_000
RSS_TOTAL, RSS_TOTAL_QUICK = 1_000_000, 200_000
RSS_BUDGET_S = 200.0
RSS_CONNECTIONS = 32
MODEL = "qwen3-0-6b-instruct"  # the default models file's simulator entry
_URL_LINE = re.compile(r"^\s+(admin API|gateway)\s+(\S+)", re.MULTILINE)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Stats:
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int

    def shown(self) -> str:
        return f"{self.p50_ms:.2f}/{self.p99_ms:.2f}"


@dataclass
class Site:
    """One data dir loaded to one scale, the runtime serving it, and what was measured there."""

    keys: int
    data_dir: Path
    runtime: Runtime | None = None
    client: httpx.Client | None = None
    pick_team: list[str] = field(default_factory=list)  # the teams and users calls ask for
    pick_user: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # handles of the keys create made
    admin: dict[str, Stats] = field(default_factory=dict)
    paged: bool = True
    gateway_idle_ms: float = 0.0
    gateway_writes_ms: float = 0.0
    gateway_reads_ms: float = 0.0  # not a target: tells sharing the machine from the writes
    writes_per_s: float = 0.0
    reads_per_s: float = 0.0
    busy_after_writes_s: float = 0.0  # the runtime's catching up once the writes stopped

    @property
    def teams(self) -> int:
        return self.keys // loader.KEYS_PER_TEAM

    @property
    def label(self) -> str:
        return f"{self.keys // 1000}k"

    def http(self) -> httpx.Client:
        assert self.client is not None
        return self.client


def _stats(samples_ms: list[float], errors: int) -> Stats:
    if not samples_ms:
        return Stats(float("nan"), float("nan"), 0, errors)
    ordered = sorted(samples_ms)
    p99_index = min(len(ordered) - 1, max(0, int(round(0.99 * len(ordered))) - 1))
    return Stats(statistics.median(ordered), ordered[p99_index], len(ordered), errors)


# -- the runtime ----------------------------------------------------------------------------


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    admin_url: str
    gateway_url: str

    def cpu_s(self) -> float:
        """CPU seconds the runtime's process has used, all its threads (the gateway's among them)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _clean_env() -> dict[str, str]:
    # The caller's own MAAS_* settings (a Redis URL, ports) must not leak into what is measured.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MAAS_") and k not in ("ADMIN_KEY", "PROMETHEUS_URL")}


def start_runtime(data_dir: Path, admin_key: str, log: Path, timeout_s: float = 180.0) -> Runtime:
    env = {**_clean_env(), "MAAS_DATA_DIR": str(data_dir), "ADMIN_KEY": admin_key, "MAAS_ADMIN_PORT": "0",
           "MAAS_GATEWAY_PORT": "0", "MAAS_METRICS_PORT": "0", "MAAS_SIMULATOR_PORT": "0",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    # Output to a file, not a pipe this process reads: reading the access log line by line
    # would take a core from the runtime being measured.
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "local", "serve"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Press Ctrl-C" in text:
            urls = dict(_URL_LINE.findall(text.rsplit("MaaS key manager", 1)[-1]))
            return Runtime(process, urls["admin API"], urls["gateway"])
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    sys.exit(f"bench: the runtime did not start (log tail):\n{tail}")


def _verify(data_dir: Path) -> ssl.SSLContext | bool:
    """Trust the runtime's own certificate (local/tls.py: a self-signed one for 127.0.0.1)."""
    path = data_dir / "tls" / "cert.pem"
    if path.exists():
        return ssl.create_default_context(cafile=str(path))
    return False  # nothing to pin: still TLS, unverified (bench only)


def admin_client(runtime: Runtime, data_dir: Path, admin_key: str) -> httpx.Client:
    return httpx.Client(base_url=runtime.admin_url, verify=_verify(data_dir), timeout=120.0,
                        headers={"Authorization": f"Bearer {admin_key}"})


# -- admin figures ------------------------------------------------------------------------


Call = Callable[[Site, int], httpx.Response]


def _series(sites: list[Site], call: Call, expect: int, calls: int) -> dict[int, Stats]:
    """`calls` timed calls per site (fewer if all of them pass CALL_BUDGET_S), after a few
    untimed ones. The sites take turns call by call: this machine's load drifts (other jobs
    share its two cores), and what the targets compare is one scale against another."""
    for site in sites:
        for i in range(WARM_UP_CALLS):
            call(site, -1 - i)
    samples: dict[int, list[float]] = {site.keys: [] for site in sites}
    errors = dict.fromkeys(samples, 0)
    started = time.monotonic()
    for i in range(calls):
        for site in sites:
            t0 = time.perf_counter()
            response = call(site, i)
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code == expect:
                samples[site.keys].append(elapsed)
            else:
                errors[site.keys] += 1
        if i + 1 >= MIN_CALLS and time.monotonic() - started > CALL_BUDGET_S:
            break
    return {keys: _stats(samples[keys], errors[keys]) for keys in samples}


def _list_teams_url(client: httpx.Client) -> tuple[str, bool]:
    """The list-teams URL to measure, and whether the API pages it (issue 12 adds `limit`)."""
    response = client.get("/teams", params={"limit": 100})
    if response.status_code == 200:
        body = response.json()
        if "next_cursor" in body and len(body.get("teams", [])) <= 100:
            return "/teams?limit=100", True
    return "/teams", False


def _create(site: Site, i: int) -> httpx.Response:
    response = site.http().post(f"/teams/{site.pick_team[i]}/keys", json={"user_id": f"bench-{i + 10}"})
    if response.status_code == 201:
        site.created.append(response.json()["secret_name"])  # the handle; the key itself is dropped
    return response


def _revoke(site: Site, i: int) -> httpx.Response:
    # The keys create made, in order: the warm-up revokes the warm-up's (i = -1..-5).
    return site.http().post(f"/keys/{site.created[i + WARM_UP_CALLS]}/revoke")


def measure_admin(sites: list[Site], rng: random.Random, say: Say) -> None:
    for site in sites:
        site.pick_team = [loader.team_id(rng.randrange(site.teams)) for _ in range(CALLS + WARM_UP_CALLS)]
        site.pick_user = [loader.user_id(rng.randrange(site.keys)) for _ in range(CALLS + WARM_UP_CALLS)]
    teams_url, paged = _list_teams_url(sites[0].http())
    for site in sites:
        site.paged = paged
    if not paged:
        say("    GET /teams?limit=100 is not paged yet: measuring GET /teams, every team in one response")
    figures: list[tuple[str, Call, int]] = [
        ("get team", lambda site, i: site.http().get(f"/teams/{site.pick_team[i]}"), 200),
        ("team keys", lambda site, i: site.http().get(f"/teams/{site.pick_team[i]}/keys"), 200),
        ("user keys", lambda site, i: site.http().get(f"/users/{site.pick_user[i]}/keys"), 200),
        ("list teams", lambda site, i: site.http().get(teams_url), 200),
        ("create key", _create, 201),
        ("revoke key", _revoke, 200),
        ("team usage 24h", lambda site, i: site.http().get(f"/teams/{site.pick_team[i]}/usage",
                                                            params={"window": "24h"}), 200),
        ("user usage 24h", lambda site, i: site.http().get(f"/users/{site.pick_user[i]}/usage",
                                                            params={"window": "24h"}), 200),
    ]
    for name, call, expect in figures:
        calls = CALLS
        if name == "revoke key":  # as many as create made
            calls = min(len(site.created) for site in sites) - WARM_UP_CALLS
        found = _series(sites, call, expect, max(0, calls))
        shown = []
        for site in sites:
            stats = site.admin[name] = found[site.keys]
            errors = f", {stats.errors} unexpected statuses" if stats.errors else ""
            shown.append(f"{site.label} {stats.shown()}{errors}")
        label = name if name != "list teams" or paged else "list teams (unpaged)"
        say(f"    {label:<22} p50/p99 ms: {'   '.join(shown)}   ({found[sites[0].keys].calls} calls each)")


# -- the gateway while admins write ---------------------------------------------------------


def _admin_writes(client: httpx.Client, teams: int, stop: threading.Event, done: list[int]) -> None:
    """Create a key, PATCH a team's limit, revoke the key: in a loop, until `stop`."""
    rng = random.Random(7)
    i = 0
    while not stop.is_set() and i < 1_000_000:
        team = loader.team_id(rng.randrange(teams))
        response = client.post(f"/teams/{team}/keys", json={"user_id": f"writer-{i}"})
        # Two values, both far above anything a run spends, so no request is ever refused.
        client.patch(f"/teams/{loader.team_id(rng.randrange(teams))}",
                     json={"token_limit": loader.TOKEN_LIMIT + i % 2})
        if response.status_code == 201:
            client.post(f"/keys/{response.json()['secret_name']}/revoke")
        done[0] += 3
        i += 1


def _admin_reads(client: httpx.Client, teams: int, stop: threading.Event, done: list[int]) -> None:
    """GET a team in a loop, until `stop`: admin traffic that changes nothing, to tell the cost
    of admin requests as such from the cost of the writes."""
    rng = random.Random(8)
    while not stop.is_set() and done[0] < 1_000_000:
        client.get(f"/teams/{loader.team_id(rng.randrange(teams))}")
        done[0] += 1


def _until_idle(runtime: Runtime, limit_s: float = SETTLE_LIMIT_S) -> float:
    """Seconds until the runtime's process uses under a tenth of a core (at most `limit_s`):
    work queued by the writes must not spill into the next measurement."""
    t0 = time.monotonic()
    last = runtime.cpu_s()
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.25)
        now = runtime.cpu_s()
        if now - last < 0.025:
            return max(0.0, time.monotonic() - t0 - 0.25)
        last = now
    return limit_s


Load = Callable[[httpx.Client, int, threading.Event, list[int]], None]


def measure_gateway(sites: list[Site], api_key: str, say: Say) -> None:
    """The gateway's p50 at c=1 at each scale: idle, during admin writes, during admin reads;
    GATEWAY_RUNS rounds, each visiting every scale, medians reported."""
    from bench.__main__ import _LUA, _ensure_wrk, _wrk  # the gateway bench's wrk runner

    wrk = _ensure_wrk()
    body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 5}}'
    with tempfile.TemporaryDirectory(prefix="maas-bench-lua-") as scratch:
        script = Path(scratch) / "post.lua"
        script.write_text(_LUA)

        def run(site: Site, seconds: int) -> float:
            assert site.runtime is not None
            result = _wrk(wrk, script, f"{site.runtime.gateway_url}/v1/chat/completions", connections=1,
                          seconds=seconds, body=body, auth=f"APIKEY {api_key}")
            if result.errors:
                say(f"    ({result.errors} gateway errors in a run at {site.label})")
            return result.p50_ms

        def run_during(site: Site, load: Load) -> tuple[float, float]:
            """The gateway's p50 while `load` runs in a thread; and the load's calls per second."""
            stop, done = threading.Event(), [0]
            thread = threading.Thread(target=load, args=(site.http(), site.teams, stop, done), daemon=True)
            t0 = time.monotonic()
            thread.start()
            p50 = run(site, GATEWAY_SECONDS)
            stop.set()
            thread.join(60)
            return p50, done[0] / (time.monotonic() - t0)

        seen: dict[int, dict[str, list[float]]] = {site.keys: {} for site in sites}
        for site in sites:
            run(site, 1)  # warm-up
        for round_ in range(GATEWAY_RUNS):
            for site in sites:
                assert site.runtime is not None
                figures = seen[site.keys]
                _until_idle(site.runtime)
                figures.setdefault("idle", []).append(run(site, GATEWAY_SECONDS))
                p50, rate = run_during(site, _admin_writes)
                figures.setdefault("writes", []).append(p50)
                figures.setdefault("write_rate", []).append(rate)
                busy = _until_idle(site.runtime)
                figures.setdefault("busy", []).append(busy)
                p50, rate = run_during(site, _admin_reads)
                figures.setdefault("reads", []).append(p50)
                figures.setdefault("read_rate", []).append(rate)
                say(f"    round {round_ + 1}/{GATEWAY_RUNS}, {site.label}: idle {figures['idle'][-1]:.2f} ms, "
                    f"during writes {figures['writes'][-1]:.2f} ms ({figures['write_rate'][-1]:.0f}/s; then "
                    f"{busy:.1f} s to idle), during reads {p50:.2f} ms ({rate:.0f}/s)")
    for site in sites:
        figures = {name: statistics.median(values) for name, values in seen[site.keys].items()}
        site.gateway_idle_ms, site.gateway_writes_ms = figures["idle"], figures["writes"]
        site.gateway_reads_ms, site.busy_after_writes_s = figures["reads"], figures["busy"]
        site.writes_per_s, site.reads_per_s = figures["write_rate"], figures["read_rate"]


# -- cold start -----------------------------------------------------------------------------


_HELLO = '''import functions_framework


@functions_framework.http
def hello(request):
    return "ok"
'''


def _first_200(command: list[str], cwd: Path, env: dict[str, str], url: str, timeout_s: float = 60.0) -> float:
    """Seconds from spawning `command` to its first 200 at `url`."""
    t0 = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() - t0 < timeout_s:
                try:
                    if client.get(url).status_code == 200:
                        return time.perf_counter() - t0
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    sys.exit(f"bench: {' '.join(command)} exited with {process.returncode}")
                time.sleep(0.01)
        sys.exit(f"bench: {' '.join(command)} answered no 200 in {timeout_s:.0f} s")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# What the Containerfile copies of the function code (local/adminserver.py aside: the bench
# starts the target with functions-framework's own CLI, as the hello-world).
_IMAGE_CODE = ("main.py", "shared", "functions")


def image_code(into: Path) -> Path:
    """The function code laid out as in the image, with its bytecode made once as the
    Containerfile makes it: functions-framework's own modules were compiled when pip installed
    them, so without this the target alone would pay for compiling ~10k lines at every start
    wherever PYTHONDONTWRITEBYTECODE is set (as in the image)."""
    for name in _IMAGE_CODE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, into / name)
    subprocess.run([sys.executable, "-m", "compileall", "-q", *_IMAGE_CODE], cwd=into, check=True)
    return into


_ENV_LINE = re.compile(r"^ENV ((?:.*\\\n)*.*)$", re.MULTILINE)


def image_environment() -> dict[str, str]:
    """The Containerfile's ENV, which both functions are started under: the image's settings
    of the interpreter (and of pydantic) are part of its cold start."""
    text = (ROOT / "Containerfile").read_text()
    pairs = " ".join(block.replace("\\\n", " ") for block in _ENV_LINE.findall(text)).split()
    return dict(pair.split("=", 1) for pair in pairs)


def measure_cold_start(data_dir: Path, admin_key: str, say: Say, label: str) -> tuple[float, float]:
    """Median seconds to first 200: the health target of main.py (the image's code, compiled
    as in the image), and a hello-world function."""
    from bench.__main__ import _free_port

    say(f"  cold start, median of {COLD_RUNS}: functions-framework --target=health (main.py as in the image, "
        f"bytecode included, on the {label}-key data dir) vs a hello-world function, both in the image's "
        f"ENV ...")

    framework = str(Path(sys.executable).parent / "functions-framework")
    base = {**_clean_env(), **image_environment(), "PYTHONPATH": str(ROOT)}
    health, hello = [], []
    with tempfile.TemporaryDirectory(prefix="maas-bench-hello-") as scratch:
        hello_dir = Path(scratch) / "hello"
        hello_dir.mkdir()
        (hello_dir / "hello.py").write_text(_HELLO)
        code = Path(scratch) / "app"
        code.mkdir()
        image_code(code)
        health_env = {**base, "PYTHONPATH": str(code), "MAAS_STORE": "embedded", "MAAS_DATA_DIR": str(data_dir),
                      "ADMIN_KEY": admin_key}
        for run in range(COLD_RUNS):  # alternating, so both see the same machine
            port = _free_port()
            health.append(_first_200([framework, "--target=health", "--source=main.py", f"--port={port}",
                                      "--host=127.0.0.1"], code, health_env, f"http://127.0.0.1:{port}/health"))
            port = _free_port()
            hello.append(_first_200([framework, "--target=hello", "--source=hello.py", f"--port={port}",
                                     "--host=127.0.0.1"], hello_dir, base, f"http://127.0.0.1:{port}/"))
            say(f"    run {run + 1}/{COLD_RUNS}: health {health[-1]:.2f} s, hello-world {hello[-1]:.2f} s")
    return statistics.median(health), statistics.median(hello)


# -- RSS over a million requests ------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Rss:
    warm_requests: int  # requests done when the warm-up sample was taken
    warm_kb: int
    requests: int
    end_kb: int
    errors: int


def measure_rss(data_dir: Path, api_key: str, total: int, say: Say) -> Rss:
    """A gateway (bench/gateway.py) on the loaded data dir against the canned backend, under wrk
    at c=32: its RSS after RSS_WARM_UP requests and after `total`."""
    from bench.__main__ import _LUA, MODEL as BACKEND_MODEL, _ensure_wrk, _free_port, _spawn, _wrk

    wrk = _ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="maas-bench-rss-") as scratch:
        tmp = Path(scratch)
        script = tmp / "post.lua"
        script.write_text(_LUA)
        backend_port, gateway_port = _free_port(), _free_port()
        models = tmp / "models.yaml"
        models.write_text(f"models:\n  - name: {BACKEND_MODEL}\n    url: http://127.0.0.1:{backend_port}/v1\n")
        body = f'{{"model": "{BACKEND_MODEL}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 5}}'
        backend = _spawn("bench.backend", str(backend_port))
        # The access log stays on, as under `make run`, into nothing: a million lines on disk
        # would measure the disk.
        gateway = _spawn("bench.gateway", str(data_dir), str(gateway_port), str(models), log=Path(os.devnull))
        try:
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            done, errors, warm, rate, started = 0, 0, (0, 0), 5_000.0, time.monotonic()
            while done < total and time.monotonic() - started < RSS_BUDGET_S:
                # wrk runs for a time, not a count: size each run to end near the next mark.
                goal = total if warm[0] else RSS_WARM_UP
                seconds = max(1, min(10, math.ceil((goal - done) / rate)))
                result = _wrk(wrk, script, url, connections=RSS_CONNECTIONS, seconds=seconds, body=body,
                              auth=f"APIKEY {api_key}")
                done += int(result.rps * seconds)
                rate = max(result.rps, 100.0)
                rss = _rss_kb(gateway.pid)
                errors += result.errors
                failed = f", {result.errors} errors" if result.errors else ""
                say(f"    {done:>9,} requests ({result.rps:,.0f}/s{failed}): RSS {rss / 1024:.1f} MB")
                if not warm[0] and done >= RSS_WARM_UP:
                    warm = (done, rss)
            return Rss(warm[0], warm[1], done, _rss_kb(gateway.pid), errors)
        finally:
            for process in (gateway, backend):
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                if process.stdout is not None:
                    process.stdout.close()


# -- the whole run and its table ------------------------------------------------------------


# -- descriptors over many admin requests --------------------------------------------------------

FD_TOTAL, FD_TOTAL_QUICK = 100_000, 5_000
FD_SLACK = 5  # a connection or two the server is closing when counted


def _tree(pid: int) -> list[int]:
    """The runtime and its descendants (the admin API runs in a child process)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            pending.extend(int(child) for child in children.read_text().split())
    return found


def _descriptors(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in _tree(pid) if os.path.exists(f"/proc/{p}/fd"))


@dataclass
class Descriptors:
    requests: int = 0
    before: int = 0
    peak: int = 0
    after: int = 0
    unexpected: int = 0  # answers other than the kind's own status


def measure_descriptors(site: Site, admin_key: str, total: int, say: Say) -> Descriptors:
    """`total` admin requests of every kind (200, 401, 404, 400, 422, /health, /metrics), one in
    fifty on a fresh TLS connection, against the runtime's descriptors before and after."""
    runtime = site.runtime
    assert runtime is not None
    kinds: list[tuple[str, str, dict[str, str] | None, bytes | None, int]] = [
        ("GET", "/teams/team-00000", None, None, 200),
        ("GET", "/teams/no-such-team", None, None, 404),
        ("GET", "/teams", {"Authorization": "Bearer wrong"}, None, 401),
        ("POST", "/teams", None, b"{not json", 400),
        ("POST", "/teams", None, b'{"team_id": "Bad_Id"}', 422),
        ("GET", "/health", None, None, 200),
        ("GET", "/me", None, None, 200),
    ]
    result = Descriptors()
    verify = _verify(site.data_dir)
    fresh = lambda: httpx.Client(base_url=runtime.admin_url, verify=verify, timeout=60.0,  # noqa: E731
                                 headers={"Authorization": f"Bearer {admin_key}"})
    with fresh() as warm:
        for method, path, headers, body, _ in kinds * 3:
            warm.request(method, path, headers=headers, content=body)
    time.sleep(0.5)
    result.before = result.peak = _descriptors(runtime.process.pid)
    client = fresh()
    t0 = time.monotonic()
    try:
        for number in range(total):
            if number % 50 == 49:
                client.close()
                client = fresh()
            method, path, headers, body, expected = kinds[number % len(kinds)]
            if client.request(method, path, headers=headers, content=body).status_code != expected:
                result.unexpected += 1
            result.requests += 1
            if number % 5_000 == 0:
                result.peak = max(result.peak, _descriptors(runtime.process.pid))
                if number and number % 20_000 == 0:
                    say(f"    {number:,} requests, {time.monotonic() - t0:.0f} s ...")
    finally:
        client.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # closed connections leave the table a moment later
        result.after = _descriptors(runtime.process.pid)
        if result.after <= result.before + FD_SLACK:
            break
        time.sleep(0.5)
    return result


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _row(label: str, cells: list[str], target: str = "", result: str = "") -> str:
    return f"{label:<34}" + "".join(f"{cell:>15}" for cell in cells) + f"  {target:<24}{result}"


def _table(sites: list[Site], cold: tuple[float, float], rss: Rss, rss_total: int,
           fds: Descriptors | None = None, fd_total: int = 0) -> list[str]:
    first, last = sites[0], sites[-1]
    head = _row("figure (p50/p99 ms)", [f"{site.label} keys" for site in sites], "target", "result")
    lines = [head, "-" * len(head)]
    for name in first.admin:
        label = f"{name} (unpaged)" if name == "list teams" and not last.paged else name
        ratio = last.admin[name].p50_ms / first.admin[name].p50_ms
        lines.append(_row(label, [site.admin[name].shown() for site in sites], f"p50 <= {RATIO:g}x 1k",
                          f"{_verdict(ratio <= RATIO)} ({ratio:.2f}x)"))
    lines.append(_row("gateway p50 idle, c=1", [f"{site.gateway_idle_ms:.2f}" for site in sites]))
    worst = max(site.gateway_writes_ms / site.gateway_idle_ms for site in sites)
    lines.append(_row("gateway p50 during admin writes", [f"{site.gateway_writes_ms:.2f}" for site in sites],
                      f"<= {RATIO:g}x idle", f"{_verdict(worst <= RATIO)} (worst {worst:.2f}x)"))
    lines.append(_row("  admin writes/s (one client)", [f"{site.writes_per_s:.0f}" for site in sites]))
    lines.append(_row("  runtime busy after writes, s", [f"{site.busy_after_writes_s:.1f}" for site in sites]))
    lines.append(_row("gateway p50 during admin reads", [f"{site.gateway_reads_ms:.2f}" for site in sites],
                      "(no target: GET team)"))
    blank = [""] * (len(sites) - 1)
    health, hello = cold
    lines.append(_row("cold start s: health / hello-world", [*blank, f"{health:.2f}/{hello:.2f}"],
                      f"<= {RATIO:g}x hello-world", f"{_verdict(health <= RATIO * hello)} ({health / hello:.2f}x)"))
    drift = (rss.end_kb - rss.warm_kb) / rss.warm_kb if rss.warm_kb else float("inf")
    ok = bool(rss.warm_kb) and rss.requests >= rss_total and abs(drift) <= RSS_DRIFT
    errors = f", {rss.errors} errors" if rss.errors else ""
    lines.append(_row(f"gateway RSS MB: {rss.warm_requests // 1000}k / {rss.requests // 1000}k req",
                      [*blank, f"{rss.warm_kb / 1024:.1f}/{rss.end_kb / 1024:.1f}"], f"within {RSS_DRIFT:.0%}",
                      f"{_verdict(ok)} ({drift:+.1%}{errors})"))
    if fds is not None:
        ok = fds.requests >= fd_total and fds.after <= fds.before + FD_SLACK and not fds.unexpected
        unexpected = f", {fds.unexpected} unexpected answers" if fds.unexpected else ""
        lines.append(_row(f"admin fds: before/peak/after {fds.requests // 1000}k req",
                          [*blank, f"{fds.before}/{fds.peak}/{fds.after}"], f"after <= before + {FD_SLACK}",
                          f"{_verdict(ok)}{unexpected}"))
    return [line.rstrip() for line in lines]


def _load_site(site: Site, api_key: str, rng: random.Random, say: Say) -> None:
    t0 = time.monotonic()
    say(f"  loading {site.keys:,} keys / {site.teams:,} teams / {site.keys * loader.ROWS_PER_KEY:,} ledger rows "
        f"({site.keys * loader.ROWS_PER_KEY * loader.REQUESTS_PER_ROW:,} requests' counts) in bulk ...")
    site.data_dir.mkdir(mode=0o700)
    loader.load_store(site.data_dir / "maas.db", 0, site.keys)
    # The one key the bench calls the gateway with: team 0's, through the store's own API.
    loader.add_key(site.data_dir / "maas.db", team_index=0, user="bench-gateway", api_key=api_key)
    loader.load_ledger(site.data_dir / "usage.db", 0, site.keys, rng)
    say(f"    loaded in {time.monotonic() - t0:.1f} s")


def run_cold(say: Say) -> None:
    """`--only cold`: the cold start alone, on a data dir loaded as the full run's biggest."""
    from bench.__main__ import _load, _machine

    rng = random.Random(12)
    admin_key, api_key = generate_admin_key(), generate_api_key()  # never printed
    say(f"machine: {_machine()}; load average before: {_load()}")
    with tempfile.TemporaryDirectory(prefix="maas-bench-cold-") as scratch:
        site = Site(STEPS[-1], Path(scratch) / f"data-{STEPS[-1]}")
        _load_site(site, api_key, rng, say)
        health, hello = measure_cold_start(site.data_dir, admin_key, say, site.label)
    say(f"  load average after: {_load()}")
    say("")
    say(_row("cold start s: health / hello-world", [f"{health:.2f}/{hello:.2f}"], f"<= {RATIO:g}x hello-world",
             f"{_verdict(health <= RATIO * hello)} ({health / hello:.2f}x)").rstrip())


def run(say: Say, *, quick: bool = False) -> None:
    from bench.__main__ import _load, _machine

    rng = random.Random(12)
    rss_total = RSS_TOTAL_QUICK if quick else RSS_TOTAL
    admin_key, api_key = generate_admin_key(), generate_api_key()  # never printed
    started = time.monotonic()
    say(f"machine: {_machine()}; load average before: {_load()}")
    say(f"admin side at scale: one data dir per scale, each served by its own `python -m local serve` on "
        f"127.0.0.1 (all up at once, taking turns call by call); admin API over HTTPS, one kept-alive client "
        f"per runtime, up to {CALLS} calls per figure and scale")
    with tempfile.TemporaryDirectory(prefix="maas-bench-admin-") as scratch, ExitStack() as running:
        tmp = Path(scratch)
        sites = [Site(keys, tmp / f"data-{keys}") for keys in STEPS]
        for site in sites:
            _load_site(site, api_key, rng, say)
        for site in sites:
            t0 = time.monotonic()
            site.runtime = start_runtime(site.data_dir, admin_key, tmp / f"runtime-{site.keys}.log")
            running.callback(site.runtime.stop)
            site.client = running.enter_context(admin_client(site.runtime, site.data_dir, admin_key))
            say(f"  runtime on {site.label} keys up in {time.monotonic() - t0:.1f} s")
        say("  admin API (p50/p99 per scale) ...")
        measure_admin(sites, rng, say)
        say(f"  gateway at c=1, {GATEWAY_SECONDS} s each: idle, during admin writes, during admin reads; "
            f"{GATEWAY_RUNS} rounds over the scales ...")
        measure_gateway(sites, api_key, say)
        fd_total = FD_TOTAL_QUICK if quick else FD_TOTAL
        say(f"  admin descriptors over {fd_total:,} requests of every kind on the {sites[-1].label}-key runtime ...")
        fds = measure_descriptors(sites[-1], admin_key, fd_total, say)
        running.close()  # the runtimes hold the data dirs' locks that the RSS gateway needs
        biggest = sites[-1]
        cold = measure_cold_start(biggest.data_dir, admin_key, say, biggest.label)
        say(f"  gateway RSS over {rss_total:,} requests (bench/gateway.py on the {biggest.label}-key data dir, "
            f"wrk c={RSS_CONNECTIONS}) ...")
        rss = measure_rss(biggest.data_dir, api_key, rss_total, say)
    say(f"  admin bench took {time.monotonic() - started:.0f} s; load average after: {_load()}")
    say("")
    for line in _table(sites, cold, rss, rss_total, fds, fd_total):
        say(line)
    if not sites[-1].paged:
        say("note: GET /teams?limit=100 was not paged (no next_cursor): measured unpaged")
