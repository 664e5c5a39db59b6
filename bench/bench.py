"""The gateway's own benchmark: throughput and added latency, as ratios in one run.

    python bench/bench.py [--duration 10] [--connections 8,32]
                          [--transports aiohttp,httpcore] [--json out.json]
                          [--redis-url redis://…] [--no-access-log]

It starts a trivial, very fast upstream (`bench/fast_upstream.py`), then for each case
(direct to the upstream; through the gateway with each upstream transport) runs `wrk`
at each connection count, plus a sequential keep-alive client for the added latency.
Every number is compared with the direct case measured on the same machine in the same
run, because absolute req/s on a shared 2-core box mean little; ratios travel.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import httpx

HERE = Path(__file__).resolve().parent
BENCH_PATH = "/api/v1/free/bench"  # weight 0: identified and routed, no store call
METERED_PATH = "/api/v1/metered"   # weight 1: one debit script per request
METERED_TARGET = 0.90              # SPEC §9: metered throughput >= 90% of proxy only
TRANSPORTS = ("aiohttp", "httpcore")
READY_TIMEOUT_S = 20.0
SEQUENTIAL_WARMUP = 200  # requests before the sequential samples: pools, caches, JIT-less paths
ADDED_LATENCY_TARGET_MS = 1.0  # SPEC §9: median added latency for sequential requests

RULES_TEMPLATE = """\
version: 1
upstreams:
  bench: {{url: "http://127.0.0.1:{port}", timeout: 30s}}
routes:
  - {{prefix: /api/v1/, upstream: bench}}
identity:
  api_key_headers: [X-Api-Key, Authorization]
  trusted_proxies: [127.0.0.1/32]
meters:
  fcu: {{usd_per_unit: 0.000002}}
weights:
  default: {{meter: fcu, units: 1}}
  rules:
    - {{method: GET, path: /api/v1/free/**, units: 0}}
plans:
  bench: {{throughput: [{{limit: 1000000000, window: 60s}}], quota: {{fcu: 1000000000000}}}}
defaults: {{user_plan: bench}}
enforce: true
store_failure: closed
"""


def _side_medians(rounds: list[tuple[float, float]] | None) -> tuple[float, float] | None:
    """The median of each side of paired rounds (baseline, case); None without rounds."""
    if not rounds:
        return None
    return (statistics.median(b for b, _ in rounds), statistics.median(m for _, m in rounds))


class BenchError(Exception):
    """The benchmark could not run (a process failed to start, wrk printed nonsense…)."""


# wrk prints times with the unit that keeps the number small (see wrk's units.c).
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PCT_RE = re.compile(r"^\s+(50|75|90|99)%\s+" + _TIME + r"\s*$", re.M)
_REQUESTS_RE = re.compile(r"^\s+(\d+) requests in ", re.M)
_SOCKET_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured; latencies in milliseconds."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int = 0  # wrk counts statuses >= 400 here, despite the label
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk(text: str) -> WrkResult:
    """Parse `wrk --latency` output. Raises BenchError if it is not a finished run."""
    rps = _RPS_RE.search(text)
    requests = _REQUESTS_RE.search(text)
    percentiles = {m.group(1): float(m.group(2)) * _TIME_UNITS_MS[m.group(3)]
                   for m in _PCT_RE.finditer(text)}
    if rps is None or requests is None or not {"50", "99"} <= percentiles.keys():
        first = text.strip().splitlines()[:1]
        raise BenchError(f"not wrk --latency output: {first[0] if first else '(empty)'}")
    socket_errors: dict[str, int] = {}
    if sock := _SOCKET_RE.search(text):
        socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                 map(int, sock.groups()), strict=True))
    non_2xx = _NON2XX_RE.search(text)
    return WrkResult(
        requests_per_s=float(rps.group(1)), p50_ms=percentiles["50"],
        p99_ms=percentiles["99"], requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0, socket_errors=socket_errors)


@dataclass(frozen=True)
class Case:
    """One thing to measure.

    `url` and header values are templates: `{upstream}` and `{gateway}` are the base
    URLs, `{api_key}` the key created for this gateway process (each gateway gets its own,
    since the embedded store lives inside it). `env` is None for "no gateway at all",
    otherwise the extra environment of the gateway process started for this case.
    """

    name: str
    url: str
    headers: Mapping[str, str]
    env: Mapping[str, str] | None
    # Metered vs proxy only: measured on the *same* gateway process, alternating short
    # rounds of this case's URL and `baseline_url`, so machine noise hits both alike.
    baseline: str | None = None
    baseline_url: str | None = None
    count_store: bool = False     # count Redis commands per request during its runs

    @property
    def needs_gateway(self) -> bool:
        return self.env is not None


DIRECT = Case("direct", "{upstream}" + BENCH_PATH, {}, None)


def default_cases(transports: Sequence[str]) -> list[Case]:
    """Direct first (the baseline every ratio divides by), then one gateway per transport."""
    key = {"X-Api-Key": "{api_key}"}
    cases = [DIRECT]
    for t in transports:
        env = {"GATEWAY_UPSTREAM_TRANSPORT": t}
        cases.append(Case(f"gateway-{t}", "{gateway}" + BENCH_PATH, key, env))
        if t == transports[0]:
            # The same gateway configuration on a weighted route: metering on vs off.
            cases.append(Case(f"gateway-{t}-metered", "{gateway}" + METERED_PATH, key, env,
                              baseline=f"gateway-{t}", baseline_url="{gateway}" + BENCH_PATH,
                              count_store=True))
    return cases


class Processes:
    """Every subprocess the benchmark starts, each in its own process group.

    Own groups mean a Ctrl-C in the terminal reaches only us, and `close()` (called from
    a `finally`) takes down each child with whatever it spawned, on any exit path.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              stdout: IO[bytes] | int | None = None,
              stderr: IO[bytes] | int | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(args), env=dict(env) if env is not None else None,
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL it if it has not gone within `grace_s`."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def free_port() -> int:
    """A port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_upstream(procs: Processes) -> int:
    """Start bench/fast_upstream.py; return its port once it says READY."""
    proc = procs.start([sys.executable, str(HERE / "fast_upstream.py"), "0"],
                       stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(READY_TIMEOUT_S):
            raise BenchError("the fast upstream did not start")
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        raise BenchError(f"the fast upstream said {line!r} instead of READY")
    return int(line.split()[1])


@dataclass(frozen=True)
class RunningGateway:
    proc: subprocess.Popen[bytes]
    url: str
    admin_url: str
    api_key: str
    log_path: Path


def start_gateway(procs: Processes, rules_path: Path, env: Mapping[str, str],
                  log_path: Path, access_log: bool) -> RunningGateway:
    """Start `gateway serve`, wait for /readyz, and create an API key through the admin API."""
    port, admin_port = free_port(), free_port()
    token = secrets.token_urlsafe(24)
    gw_env = {**env, "GATEWAY_ADMIN_TOKEN": token}
    args = [sys.executable, "-m", "gateway", "serve", "--rules", str(rules_path),
            "--host", "127.0.0.1", "--port", str(port),
            "--admin-host", "127.0.0.1", "--admin-port", str(admin_port)]
    if not access_log:
        args.append("--no-access-log")
    # The log goes to a file, not a pipe: nobody reads a pipe during a run, and a full
    # pipe would stall the gateway on its access log.
    with log_path.open("wb") as log:
        proc = procs.start(args, env=gw_env, stdout=log, stderr=subprocess.STDOUT)
    admin_url = f"http://127.0.0.1:{admin_port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the gateway exited with {proc.returncode}:\n"
                                 + _tail(log_path))
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{admin_url}/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"the gateway was not ready within {READY_TIMEOUT_S:.0f} s:\n"
                                 + _tail(log_path))
            time.sleep(0.1)
        r = client.post(f"{admin_url}/admin/keys", json={"user": "bench"},
                        headers={"Authorization": f"Bearer {token}"})
        if r.status_code not in (200, 201) or "key" not in r.json():
            raise BenchError(f"creating an API key failed: {r.status_code} {r.text}")
        api_key = r.json()["key"]
    return RunningGateway(proc, f"http://127.0.0.1:{port}", admin_url, api_key, log_path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Commands the gateway sends itself (everything else in commandstats ran inside a script).
TOP_LEVEL_COMMANDS = frozenset({"hello", "ping", "hgetall", "script|load", "script", "select",
                                "auth", "client|setinfo"})


def start_redis(procs: Processes) -> str:
    """A throwaway redis-server on a free port (no persistence) for the metered cases."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server), "
                         "or pass --store embedded / --redis-url")
    port = free_port()
    procs.start([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise BenchError("redis-server did not start")


def command_calls(redis_url: str) -> dict[str, int]:
    """Calls per Redis command so far (INFO commandstats), without INFO itself."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
            if name != "cmdstat_info"}


def run_wrk(procs: Processes, url: str, headers: Mapping[str, str], connections: int,
            duration_s: float) -> WrkResult:
    """One wrk run with one thread: on 2 cores wrk takes one, the gateway the other."""
    # wrk takes whole seconds only ("-d1.5s" is a usage error).
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(round(duration_s), 1)}s", "--latency",
            "--timeout", "5s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    proc = procs.start([*args, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=duration_s + 30)
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {out.decode(errors='replace')}")
    return parse_wrk(out.decode())


def sequential_latencies_ms(url: str, headers: Mapping[str, str], n: int) -> list[float]:
    """`n` requests one after another on one keep-alive connection, each timed."""
    parts = httpx.URL(url)
    assert parts.port is not None
    conn = http.client.HTTPConnection(parts.host, parts.port, timeout=10)
    path = parts.raw_path.decode()
    out: list[float] = []
    try:
        for i in range(SEQUENTIAL_WARMUP + n):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=dict(headers))
            resp = conn.getresponse()
            resp.read()
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.status != 200:
                raise BenchError(f"sequential request to {url} got {resp.status}")
            if i >= SEQUENTIAL_WARMUP:
                out.append(elapsed)
    finally:
        conn.close()
    return out


@dataclass(frozen=True)
class Run:
    case: str
    connections: int
    result: WrkResult


@dataclass(frozen=True)
class Sequential:
    case: str
    samples_ms: list[float]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.samples_ms, n=100)[98]


@dataclass
class Report:
    runs: list[Run] = field(default_factory=list)
    sequential: list[Sequential] = field(default_factory=list)
    # (case, connections) -> {redis command: calls per request} during the measured run
    store_calls: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    # (case, connections) -> [(baseline req/s, case req/s)] per alternating round
    paired: dict[tuple[str, int], list[tuple[float, float]]] = field(default_factory=dict)
    # (case, connections) -> [(baseline, case)] gateway CPU µs per request, per round
    paired_cpu: dict[tuple[str, int], list[tuple[float, float]]] = field(
        default_factory=dict)
    # (case, connections) -> [(baseline, case)] share of one core the gateway was busy
    # (CPU seconds per second of the run): below 1, it waited with nothing to do
    paired_busy: dict[tuple[str, int], list[tuple[float, float]]] = field(
        default_factory=dict)
    # (case, connections) -> [((reads, writes) baseline, (reads, writes) case)] system
    # calls of the gateway per request, per round
    paired_syscalls: dict[tuple[str, int], list[tuple[tuple[float, float],
                                                      tuple[float, float]]]] = field(
        default_factory=dict)

    def paired_ratio(self, case: str, connections: int) -> float | None:
        rounds = self.paired.get((case, connections))
        if not rounds:
            return None
        return statistics.median(mine / base for base, mine in rounds if base)

    def paired_spread(self, case: str, connections: int) -> tuple[float, float] | None:
        """The lowest and highest ratio of one round: how much the machine moved."""
        ratios = [mine / base for base, mine in self.paired.get((case, connections), [])
                  if base]
        return (min(ratios), max(ratios)) if ratios else None

    def paired_cpu_us(self, case: str, connections: int) -> tuple[float, float] | None:
        """Median gateway CPU (user + system) per request: baseline, case."""
        return _side_medians(self.paired_cpu.get((case, connections)))

    def paired_busy_share(self, case: str, connections: int) -> tuple[float, float] | None:
        """Median share of one core the gateway was busy: baseline, case."""
        return _side_medians(self.paired_busy.get((case, connections)))

    def paired_syscalls_per_request(self, case: str, connections: int
                                    ) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Mean gateway reads and writes per request: baseline, case."""
        rounds = self.paired_syscalls.get((case, connections))
        if not rounds:
            return None

        def mean(side: int, kind: int) -> float:
            return statistics.mean(r[side][kind] for r in rounds)
        return (mean(0, 0), mean(0, 1)), (mean(1, 0), mean(1, 1))

    def rps(self, case: str, connections: int) -> float | None:
        for r in self.runs:
            if r.case == case and r.connections == connections:
                return r.result.requests_per_s
        return None

    def ratio(self, case: str, connections: int, baseline: str = DIRECT.name) -> float | None:
        mine, base = self.rps(case, connections), self.rps(baseline, connections)
        return mine / base if mine is not None and base else None

    def median_ms(self, case: str) -> float | None:
        return next((s.p50_ms for s in self.sequential if s.case == case), None)

    def added_ms(self, case: str, baseline: str = DIRECT.name) -> float | None:
        """Median latency added over the baseline, sequential requests (SPEC §9)."""
        mine, base = self.median_ms(case), self.median_ms(baseline)
        return mine - base if mine is not None and base is not None else None

    def flagged(self) -> list[Run]:
        return [r for r in self.runs if r.result.errors]


def measure(procs: Processes, cases: Sequence[Case], args: argparse.Namespace,
            workdir: Path, upstream_port: int, report: Report) -> None:
    """Run every case, gateway processes started and stopped in turn, into `report`."""
    rules_path = workdir / "rules.yaml"
    rules_path.write_text(RULES_TEMPLATE.format(port=upstream_port))
    base_env = dict(os.environ)
    # The default is the embedded store even if the shell exports a Redis URL: a
    # benchmark must say what it measured.
    base_env.pop("GATEWAY_REDIS_URL", None)
    redis_url = args.redis_url
    if redis_url is None and args.store == "redis":
        redis_url = start_redis(procs)
    if redis_url:
        base_env["GATEWAY_REDIS_URL"] = redis_url
    base_env["GATEWAY_DRAIN_TIMEOUT_S"] = "2"  # stop quickly between cases
    for case in cases:
        gateway: RunningGateway | None = None
        if case.env is not None:
            log_path = workdir / f"{case.name}.log"
            print(f"· starting gateway for {case.name} (log: {log_path})", file=sys.stderr)
            gateway = start_gateway(procs, rules_path, {**base_env, **case.env}, log_path,
                                    access_log=args.access_log)
        values = {"upstream": f"http://127.0.0.1:{upstream_port}",
                  "gateway": gateway.url if gateway else "",
                  "api_key": gateway.api_key if gateway else ""}
        url = case.url.format(**values)
        headers = {k: v.format(**values) for k, v in case.headers.items()}
        try:
            for c in args.connections:
                print(f"· {case.name}: {c} connections, {args.warmup:g} s warm-up + "
                      f"{args.duration:g} s", file=sys.stderr)
                if args.warmup > 0:
                    run_wrk(procs, url, headers, c, args.warmup)
                counting = case.count_store and redis_url is not None
                before = command_calls(redis_url) if counting and redis_url else {}
                if case.baseline_url is not None:
                    assert gateway is not None
                    result = measure_paired(procs, case, case.baseline_url.format(**values),
                                            url, headers, c, args, report, gateway.proc.pid)
                else:
                    result = run_wrk(procs, url, headers, c, args.duration)
                report.runs.append(Run(case.name, c, result))
                if counting and redis_url and result.requests:
                    after = command_calls(redis_url)
                    report.store_calls[(case.name, c)] = {
                        cmd: (n - before.get(cmd, 0)) / result.requests
                        for cmd, n in after.items() if n - before.get(cmd, 0) > 0}
            if args.sequential > 0:
                print(f"· {case.name}: {args.sequential} sequential requests", file=sys.stderr)
                samples = sequential_latencies_ms(url, headers, args.sequential)
                report.sequential.append(Sequential(case.name, samples))
        finally:
            if gateway is not None:
                procs.stop(gateway.proc)


PAIRED_ROUNDS = 6


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process has used (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def syscalls(pid: int) -> tuple[int, int] | None:
    """Read and write system calls a process has made (Linux /proc), None where
    unreadable: a debit's share of a write to Redis says how well commands coalesce."""
    try:
        io = dict(line.split(": ", 1)
                  for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(io["syscr"]), int(io["syscw"])
    except (OSError, ValueError, KeyError):
        return None


def measure_paired(procs: Processes, case: Case, baseline_url: str, url: str,
                   headers: Mapping[str, str], connections: int, args: argparse.Namespace,
                   report: Report, gateway_pid: int) -> WrkResult:
    """Alternate baseline and case on one gateway; returns the case's last round."""
    assert case.baseline is not None
    round_s = max(args.duration / args.paired_rounds, 1.0)
    rounds = report.paired.setdefault((case.name, connections), [])
    cpu_rounds = report.paired_cpu.setdefault((case.name, connections), [])
    call_rounds = report.paired_syscalls.setdefault((case.name, connections), [])
    busy_rounds = report.paired_busy.setdefault((case.name, connections), [])
    result: WrkResult | None = None
    total = 0

    def timed(target: str) -> tuple[WrkResult, float | None, tuple[float, float] | None]:
        before, calls_before = cpu_seconds(gateway_pid), syscalls(gateway_pid)
        run = run_wrk(procs, target, headers, connections, round_s)
        after, calls_after = cpu_seconds(gateway_pid), syscalls(gateway_pid)
        n = run.requests
        cpu = None if before is None or after is None or not n else (after - before) * 1e6 / n
        calls = None if calls_before is None or calls_after is None or not n else (
            (calls_after[0] - calls_before[0]) / n, (calls_after[1] - calls_before[1]) / n)
        return run, cpu, calls

    def busy(cpu_us: float, run: WrkResult) -> float:
        return cpu_us * run.requests_per_s / 1e6

    for i in range(args.paired_rounds):
        # Which goes first alternates too: a machine getting slower (or faster) during
        # a pair does not always favour the same side.
        if i % 2 == 0:
            base, base_cpu, base_calls = timed(baseline_url)
            result, cpu, calls = timed(url)
        else:
            result, cpu, calls = timed(url)
            base, base_cpu, base_calls = timed(baseline_url)
        if base.errors or result.errors:
            return result if result.errors else base
        rounds.append((base.requests_per_s, result.requests_per_s))
        if base_cpu is not None and cpu is not None:
            cpu_rounds.append((base_cpu, cpu))
            busy_rounds.append((busy(base_cpu, base), busy(cpu, result)))
        if base_calls is not None and calls is not None:
            call_rounds.append((base_calls, calls))
        total += result.requests
    assert result is not None
    # Latencies of the last round; requests and req/s over all of this case's rounds (the
    # Redis command counts cover every round, so they are divided by all its requests).
    return replace(result, requests=total,
                   requests_per_s=statistics.mean(mine for _, mine in rounds))


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def print_report(report: Report, cases: Sequence[Case], out: IO[str]) -> None:
    header = (f"{'case':<22} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'errors':>7} {'vs direct':>9}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in report.runs:
        flag = " !" if r.result.errors else ""
        print(f"{r.case:<22} {r.connections:>5} {r.result.requests_per_s:>10.0f} "
              f"{_fmt_ms(r.result.p50_ms):>8} {_fmt_ms(r.result.p99_ms):>8} "
              f"{r.result.errors:>7} {_fmt_ratio(report.ratio(r.case, r.connections)):>9}{flag}",
              file=out)
    if report.sequential:
        print(file=out)
        print(f"{'sequential (1 conn)':<22} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'added p50 ms':>13}", file=out)
        for s in report.sequential:
            added = report.added_ms(s.case)
            print(f"{s.case:<22} {len(s.samples_ms):>5} {_fmt_ms(s.p50_ms):>8} "
                  f"{_fmt_ms(s.p99_ms):>8} "
                  f"{'-' if s.case == DIRECT.name or added is None else f'{added:.3f}':>13}",
                  file=out)
    print(file=out)
    for case in cases:
        if not case.needs_gateway:
            continue
        ratios = ", ".join(
            f"{_fmt_ratio(report.ratio(case.name, r.connections))} at {r.connections} conns"
            for r in report.runs if r.case == case.name)
        added = report.added_ms(case.name)
        if not ratios and added is None:
            continue  # interrupted before this case ran
        latency = "" if added is None else (
            f"; added median latency {added:.3f} ms "
            f"({'within' if added <= ADDED_LATENCY_TARGET_MS else 'OVER'} the "
            f"{ADDED_LATENCY_TARGET_MS:g} ms target)")
        print(f"{case.name}: gateway/direct throughput {ratios}{latency}", file=out)
    # Metering on vs off in the same configuration (SPEC §9: >= 90%), and what it cost
    # in Redis: the common path is one round trip per request.
    for case in cases:
        if case.baseline is None:
            continue
        paired = [(r.connections, report.paired_ratio(case.name, r.connections))
                  for r in report.runs if r.case == case.name]
        if not paired:
            continue
        # Three decimals: at two, 0.897 would read "0.90 ... BELOW the 90% target".
        text = ", ".join(f"{'-' if x is None else f'{x:.3f}'} at {c} conns" for c, x in paired)
        ok = all(x is not None and x >= METERED_TARGET for _, x in paired)
        rounds = max(len(report.paired.get((case.name, c), [])) for c, _ in paired)
        print(f"{case.name} vs {case.baseline} (same process, median of {rounds} "
              f"alternating rounds): {text} "
              f"({'meets' if ok else 'BELOW'} the {METERED_TARGET:.0%} target)", file=out)
        for c, _ in paired:
            spread = report.paired_spread(case.name, c)
            cpu = report.paired_cpu_us(case.name, c)
            if spread is None:
                continue
            line = f"  at {c} conns: rounds from {spread[0]:.2f} to {spread[1]:.2f}"
            if cpu is not None:
                line += (f"; gateway CPU per request {cpu[0]:.0f} µs {case.baseline}, "
                         f"{cpu[1]:.0f} µs {case.name} (ratio {cpu[0] / cpu[1]:.2f})")
            print(line, file=out)
            share = report.paired_busy_share(case.name, c)
            if share is not None:
                # Throughput ratio = CPU-per-request ratio x busy ratio: this says how much
                # of a gap is waiting (on Redis, with nothing else to do) rather than work.
                print(f"  at {c} conns: gateway busy {share[0]:.0%} of a core "
                      f"{case.baseline}, {share[1]:.0%} {case.name}", file=out)
            per_request = report.paired_syscalls_per_request(case.name, c)
            if per_request is not None:
                (br, bw), (mr, mw) = per_request
                print(f"  at {c} conns: gateway reads + writes per request {br:.2f} + "
                      f"{bw:.2f} {case.baseline}, {mr:.2f} + {mw:.2f} {case.name}", file=out)
        for (name, c), calls in sorted(report.store_calls.items()):
            if name == case.name:
                detail = ", ".join(f"{cmd} {n:.2f}" for cmd, n in sorted(calls.items()))
                trips = calls.get("evalsha", 0.0) + sum(
                    n for cmd, n in calls.items() if cmd in TOP_LEVEL_COMMANDS)
                print(f"  Redis round trips per request at {c} conns: {trips:.2f}; commands "
                      f"Redis ran (incl. inside the script): {detail}", file=out)
    # The transports against each other: the figure that chooses the default (SPEC §9).
    gateways = [c.name for c in cases if c.needs_gateway and c.baseline is None]
    for other in gateways[1:]:
        ratios = ", ".join(
            f"{_fmt_ratio(report.ratio(gateways[0], r.connections, baseline=other))}x "
            f"at {r.connections} conns" for r in report.runs
            if r.case == other and report.rps(gateways[0], r.connections) is not None)
        if not ratios:
            continue
        print(f"{gateways[0]} vs {other} throughput: {ratios}", file=out)
    for r in report.flagged():
        print(f"! {r.case} at {r.connections} conns had {r.result.errors} errors "
              f"(non-2xx {r.result.non_2xx}, socket {r.result.socket_errors}): "
              "its numbers are not a valid measurement", file=out)


def report_json(report: Report, cases: Sequence[Case], args: argparse.Namespace
                ) -> dict[str, Any]:
    return {
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "wrk": shutil.which("wrk")},
        "config": {"duration_s": args.duration, "warmup_s": args.warmup,
                   "connections": args.connections, "transports": args.transports,
                   "sequential": args.sequential, "threads": 1,
                   "store": "redis" if args.redis_url or args.store == "redis"
                   else "embedded",
                   "access_log": args.access_log, "path": BENCH_PATH},
        "runs": [{"case": r.case, "connections": r.connections,
                  **asdict(r.result), "errors": r.result.errors,
                  "flagged": bool(r.result.errors),
                  "ratio_vs_direct": report.ratio(r.case, r.connections)}
                 for r in report.runs],
        "sequential": [{"case": s.case, "n": len(s.samples_ms), "p50_ms": s.p50_ms,
                        "p99_ms": s.p99_ms, "added_p50_ms": report.added_ms(s.case)}
                       for s in report.sequential],
        "added_latency_target_ms": ADDED_LATENCY_TARGET_MS,
        "metered": [{"case": c.name, "baseline": c.baseline, "connections": r.connections,
                     "ratio": report.paired_ratio(c.name, r.connections),
                     "rounds": report.paired.get((c.name, r.connections)),
                     "gateway_cpu_us_per_request": report.paired_cpu.get((c.name,
                                                                        r.connections)),
                     "gateway_busy_share": report.paired_busy.get((c.name, r.connections)),
                     "gateway_syscalls_per_request": report.paired_syscalls.get(
                         (c.name, r.connections)),
                     "redis_commands_per_request": report.store_calls.get((c.name,
                                                                           r.connections))}
                    for c in cases if c.baseline for r in report.runs if r.case == c.name],
        "metered_target": METERED_TARGET,
    }


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("connection counts must be positive")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _transports(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = set(names) - set(TRANSPORTS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"transports are {', '.join(TRANSPORTS)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    p.add_argument("--connections", type=_int_list, default=[8, 32],
                   help="comma-separated connection counts (default 8,32)")
    p.add_argument("--transports", type=_transports, default=list(TRANSPORTS),
                   help="gateway upstream transports to compare (default aiohttp,httpcore)")
    p.add_argument("--paired-rounds", type=_positive_int, default=PAIRED_ROUNDS,
                   help="alternating proxy-only/metered rounds that share --duration")
    p.add_argument("--sequential", type=int, default=2000,
                   help="sequential requests for the added-latency figure (0: skip)")
    p.add_argument("--store", choices=["redis", "embedded"], default="redis",
                   help="redis (default): a redis-server the bench starts; embedded: the "
                        "gateway's in-process store")
    p.add_argument("--redis-url", default=None,
                   help="use this Redis instead of starting one")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="run the gateway with --no-access-log")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    # SIGTERM becomes SystemExit, so the `finally` below still stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    cases = default_cases(args.transports)
    report = Report()
    procs = Processes()
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
            upstream_port = start_upstream(procs)
            try:
                measure(procs, cases, args, Path(tmp), upstream_port, report)
            finally:
                procs.close()  # before the temporary directory (their logs) goes away
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("bench: interrupted; partial results below", file=sys.stderr)
        status = 130
    finally:
        procs.close()
    if not report.runs and not report.sequential:
        return status or 1
    print(file=sys.stderr)
    print_report(report, cases, sys.stdout)
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report, cases, args), indent=2) + "\n")
    return status or (1 if report.flagged() else 0)


if __name__ == "__main__":
    raise SystemExit(main())
