"""`make bench`: requests/s and p50/p99 through the gateway versus the same backend direct.

The backend is bench/backend.py (canned answers, far faster than the gateway); the load
generator is wrk (Debian package, installed here when missing), one thread, fixed durations.
Two gateways are measured: with the token counters in the process (the default) and in Redis
(MAAS_REDIS_URL, a local redis-server, installed when missing), each against the same backend.
Printed per case: direct and gateway numbers, throughput ratio, added p50 latency. Each side
is measured `--runs` times, alternating direct and gateway so that both see the same load
from whatever else runs on the machine, and the medians are reported.
The targets, on a 2-core machine: at concurrency 32 (non-streaming), gateway >= 25% of direct
throughput; at concurrency 1, added p50 <= 1 ms. The end of the output says whether each is
met. Each run's report is written to bench/results/ (ignored by git), the newest also as
bench/results/latest.md.
After the gateway, the admin side at scale (bench/admin.py: 100,000 keys, the admin API's
latencies, the gateway during admin writes, cold start, RSS); `--only gateway|admin` runs one,
`--only cold` the admin side's cold start alone (on its own 100k-key data dir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from shared.keymaterial import generate_api_key, key_sha256, secret_name_for
from shared.store.base import ApiKey, Team
from shared.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.25  # gateway / direct requests/s at c=32, non-streaming
TARGET_ADDED_P50_MS = 1.0  # at c=1
MODEL = "bench"
_LUA = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing the Debian package ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("wrk")
    if not found:
        sys.exit("make bench needs wrk (apt-get install wrk)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(*args: str, log: Path | None = None) -> subprocess.Popen[str]:
    # A gateway's access log goes to a file: tens of thousands of lines a second on a terminal
    # would measure the terminal.
    stderr = log.open("w") if log is not None else None
    process = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=stderr,
    )
    if stderr is not None:
        stderr.close()
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        sys.exit(f"bench: {' '.join(args)} did not start")
    return process


def _prepare_store(data_dir: Path, api_key: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data_dir / "maas.db")
    try:
        now = datetime.now(timezone.utc)
        store.create_team(team=Team("bench", "Bench", "", "bench", 2**53, "1h", "user", now))
        store.create_key(
            key=ApiKey(secret_name_for("bench", "bench"), key_sha256(api_key), "bench", "bench",
                       "bench@example.com", "member", "active", now),
            api_key=api_key,
        )
    finally:
        store.close()


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def _wrk(wrk: str, script: Path, url: str, *, connections: int, seconds: int, body: str, auth: str) -> Result:
    completed = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
        env={**os.environ, "BENCH_BODY": body, "BENCH_AUTH": auth},
    )
    out = completed.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Result(rps, p50, p99, errors)


def _median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
    )


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free port (Debian's package, installed when missing)."""
    subprocess.run(["bash", str(ROOT / "tools" / "ensure_redis.sh")], check=True)
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    sys.exit("bench: redis-server did not start")


def _verdicts(rows: dict[tuple[bool, int], tuple[Result, Result]]) -> list[str]:
    d, g = rows[(False, 32)]
    ratio = g.rps / d.rps
    lines = [
        f"c=32 plain throughput >= {TARGET_RATIO:.0%} of direct: {'met' if ratio >= TARGET_RATIO else 'NOT met'} ({ratio:.1%})"
    ]
    added = {stream: g.p50_ms - d.p50_ms for (stream, c), (d, g) in rows.items() if c == 1}
    worst = max(added.values())
    shown = ", ".join(f"{'stream' if stream else 'plain'} {value:.2f} ms" for stream, value in sorted(added.items()))
    lines.append(f"c=1 added p50 <= {TARGET_ADDED_P50_MS:g} ms: {'met' if worst <= TARGET_ADDED_P50_MS else 'NOT met'} ({shown})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="duration of each measured run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side and case (medians reported)")
    parser.add_argument("--only", choices=("gateway", "admin", "cold"),
                        help="one part: the gateway against a direct backend, the admin side at scale, or the "
                             "admin side's cold start alone")
    parser.add_argument("--quick", action="store_true", help="admin side: the gateway's RSS over 200k requests, not 1M")
    args = parser.parse_args()
    started = datetime.now(timezone.utc)
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    if args.only == "cold":
        from bench import admin

        admin.run_cold(say)
    if args.only in (None, "gateway"):
        _gateway_bench(args, say)
    if args.only in (None, "admin"):
        from bench import admin

        if out:
            say("")
        admin.run(say, quick=args.quick)
    _write_results(started, out)


def _gateway_bench(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    load_before = _load()
    wrk = _ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as scratch:
        tmp = Path(scratch)
        script = tmp / "post.lua"
        script.write_text(_LUA)
        backend_port, gateway_port, redis_gateway_port = _free_port(), _free_port(), _free_port()
        api_key = generate_api_key()
        # Two data dirs: in-process counters hold theirs alone (local/gateway/limits.py).
        _prepare_store(tmp / "data", api_key)
        _prepare_store(tmp / "data-redis", api_key)
        models = tmp / "models.yaml"
        models.write_text(f"models:\n  - name: {MODEL}\n    url: http://127.0.0.1:{backend_port}/v1\n")
        redis, redis_url = _redis()
        backend = _spawn("bench.backend", str(backend_port))
        gateway = _spawn("bench.gateway", str(tmp / "data"), str(gateway_port), str(models), log=tmp / "gateway.log")
        redis_gateway = _spawn("bench.gateway", str(tmp / "data-redis"), str(redis_gateway_port), str(models), redis_url,
                               log=tmp / "gateway-redis.log")
        try:
            targets = {
                "direct": (f"http://127.0.0.1:{backend_port}/v1/chat/completions", ""),
                "gateway": (f"http://127.0.0.1:{gateway_port}/v1/chat/completions", f"APIKEY {api_key}"),
                "redis": (f"http://127.0.0.1:{redis_gateway_port}/v1/chat/completions", f"APIKEY {api_key}"),
            }
            say(f"machine: {_machine()}")
            say(f"load: wrk, 1 thread, {args.seconds} s per run, median of {args.runs} alternating runs per side; "
                f"backend: bench/backend.py (canned replies); load average before: {load_before}")
            say("")
            header = f"{'case':<30}{'direct rps':>11}{'gw rps':>9}{'ratio':>7}{'direct p50/p99 ms':>19}{'gw p50/p99 ms':>16}{'added p50':>11}"
            say(header)
            say("-" * len(header))
            rows: dict[tuple[bool, int], tuple[Result, Result]] = {}
            redis_rows: dict[tuple[bool, int], tuple[Result, Result]] = {}
            for stream in (False, True):
                body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
                                   "max_tokens": 5, "stream": stream})
                for connections in (1, 32):
                    runs: dict[str, list[Result]] = {name: [] for name in targets}
                    for name, (url, auth) in targets.items():
                        _wrk(wrk, script, url, connections=connections, seconds=1, body=body, auth=auth)  # warm-up
                    for _ in range(args.runs):
                        for name, (url, auth) in targets.items():
                            runs[name].append(_wrk(wrk, script, url, connections=connections, seconds=args.seconds, body=body, auth=auth))
                    d = _median(runs["direct"])
                    for name, table, label in (("gateway", rows, ""), ("redis", redis_rows, ", Redis counters")):
                        g = _median(runs[name])
                        table[(stream, connections)] = (d, g)
                        case = f"{'stream' if stream else 'plain'}, c={connections}{label}"
                        errors = f"  ({g.errors + d.errors} errors)" if g.errors or d.errors else ""
                        say(
                            f"{case:<30}{d.rps:>11.0f}{g.rps:>9.0f}{g.rps / d.rps:>7.0%}"
                            f"{f'{d.p50_ms:.2f}/{d.p99_ms:.2f}':>19}{f'{g.p50_ms:.2f}/{g.p99_ms:.2f}':>16}"
                            f"{g.p50_ms - d.p50_ms:>9.2f}ms{errors}"
                        )
            say("")
            say(f"load average after: {_load()}")
            say("targets (in-process counters):")
            for line in _verdicts(rows):
                say(f"  {line}")
            say("with Redis counters (one round trip per admission, settlements sent behind the answer):")
            for line in _verdicts(redis_rows):
                say(f"  {line}")
            (d, g), (_, r) = rows[(False, 32)], redis_rows[(False, 32)]
            say(f"  Redis / in-process throughput at c=32 plain: {r.rps / g.rps:.0%}")
        finally:
            for process in (redis_gateway, gateway, backend, redis):  # type: ignore[assignment]
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                if process.stdout is not None:
                    process.stdout.close()


def _write_results(started: datetime, lines: list[str]) -> None:
    text = (
        "# `make bench` results\n\n"
        "Written by `python -m bench` (bench/__main__.py) at the end of a run; other jobs on the\n"
        "machine share its cores, so compare runs with their load averages in mind.\n\n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC\n\n"
        "```\n" + "\n".join(lines) + "\n```\n"
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    report = RESULTS_DIR / f"{started:%Y%m%dT%H%M%SZ}.md"
    report.write_text(text)
    (RESULTS_DIR / "latest.md").write_text(text)
    print(f"\nwritten to {report.relative_to(ROOT)} (and {RESULTS_DIR.relative_to(ROOT)}/latest.md)")


if __name__ == "__main__":
    main()
