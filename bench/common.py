"""Helpers shared by the benchmark scenarios: private backends, the service as a real process,
scratch databases, wrk, CPU accounting, py-spy, and appending results to bench/RESULTS.md."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from counters.harness.servers import (
    Backends,
    Servers,
    create_database,
    drop_database,
    drop_prefix,
    start_servers,
    stop_servers,
)
from counters.harness.service import Service, create_key, service_env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def log(text: str) -> None:
    print(time.strftime("%H:%M:%S ") + text, file=sys.stderr, flush=True)


# -- machine and results ----------------------------------------------------------------------


def machine() -> str:
    """`2 cores, 23.4 GiB RAM, load 1.23 0.98 0.80` (nproc, MemTotal, os.getloadavg)."""
    cores = os.cpu_count() or 0
    with contextlib.suppress(OSError, FileNotFoundError):
        cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cores} cores, {mem_kib / 1024 / 1024:.1f} GiB RAM, load average {load}"


def command(module: str, argv: Sequence[str]) -> str:
    """The command line that reproduces this run, relative to the repository."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(ROOT)
    return " ".join([str(exe), "-m", module, *(shlex.quote(a) for a in argv)])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def report(
    title: str, module: str, argv: Sequence[str], body: str, *, append: bool, load_at_start: str
) -> None:
    """Prints a scenario's result and, when asked, appends it to RESULTS.md with the command
    that reproduces it."""
    print()
    print(body)
    if append:
        append_results(title, command(module, argv), body, load_at_start=load_at_start)


def append_results(
    title: str,
    cmd: str,
    body: str,
    *,
    load_at_start: str,
    path: Path = RESULTS,
) -> None:
    """Appends one section to RESULTS.md (never rewrites what is there)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"\n## {title}\n\n"
        f"Command: `{cmd}`  \n"
        f"Machine: {machine()} (at start: {load_at_start})  \n"
        f"Date: {now}\n\n"
        f"{body.rstrip()}\n"
    )
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n"):
        text = "\n" + text
    with path.open("a") as fh:
        fh.write(text)
    log(f"appended '{title}' to {path.relative_to(ROOT)}")


def load_now() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def busy_warning() -> str:
    """A sentence about other load on the machine when the run starts, if any."""
    one, five, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    if one >= 0.5 * cores:
        return (
            f"**The machine was busy**: load average {one:.2f} (1 min) / {five:.2f} (5 min) "
            f"on {cores} cores when this run started, i.e. other processes were competing "
            "for the CPU; absolute figures are low, and ratios of figures taken side by side "
            "in this run are the ones to read."
        )
    return ""


def fmt(x: float, digits: int = 0) -> str:
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


# -- backends ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """A Redis and a Postgres server: the COUNTERS_* URLs when set, else private embedded ones
    in a temporary directory (stopped and removed on close)."""

    redis_url: str
    server_url: str
    data_dir: Path | None
    work: Path
    owner_url: str | None = None
    databases: list[str] = field(default_factory=list)
    services: list[ServiceProc] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def database(self, label: str) -> str:
        """A new empty database on the server; returns its URL (dropped on close)."""
        name = f"bench_{label}_{uuid.uuid4().hex[:6]}"
        url = create_database(self.server_url, name, self.owner_url)
        self.databases.append(name)
        return url

    def service(
        self,
        label: str,
        *,
        database_url: str | None = None,
        workers: int = 1,
        persister: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServiceProc:
        """A started `counters serve` on its own database (unless given) and key prefix."""
        db = database_url or self.database(label)
        prefix = f"b{label}{uuid.uuid4().hex[:4]}"
        workdir = self.work / f"svc-{label}-{uuid.uuid4().hex[:4]}"
        workdir.mkdir(parents=True)
        extra = {
            "COUNTERS_CROSSTABS": "",
            "COUNTERS_GRACE_SECONDS": "30",
            "COUNTERS_PERSIST_INTERVAL_SECONDS": "1",
            "COUNTERS_RECONCILE_ENABLED": "false",
        }
        extra.update(env or {})
        full_env = service_env(Backends(self.redis_url, db, prefix, None), workdir, **extra)
        args = ["--workers", str(workers)]
        if not persister:
            args.append("--no-persister")
        svc = ServiceProc(full_env, workdir / "service.log", args, db, prefix)
        self.services.append(svc)
        svc.start()
        return svc

    def persister(self, svc: ServiceProc) -> subprocess.Popen[bytes]:
        """`counters persist` as its own process, on the service's settings (stopped on
        close)."""
        with open(svc.log_path.with_name("persist.log"), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "counters", "persist"],
                env=svc.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for svc in self.services:
            svc.stop()
        if self.data_dir is None:  # shared servers: remove what this run created
            for svc in self.services:
                with contextlib.suppress(Exception):
                    drop_prefix(self.redis_url, svc.prefix)
            for name in self.databases:
                with contextlib.suppress(Exception):
                    drop_database(self.server_url, name)
        else:
            with contextlib.suppress(Exception):
                stop_servers(Servers(self.redis_url, self.server_url, self.data_dir))
            shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    """Backends for one scenario run."""
    redis_url = os.environ.get("COUNTERS_REDIS_URL") or None
    server_url = os.environ.get("COUNTERS_DATABASE_URL") or None
    servers = start_servers(redis_url, server_url, tmp_prefix="counters-bench-", tmp_dir="/tmp")
    if servers.data_dir is not None:
        log(f"started private Valkey and Postgres under {servers.data_dir}")
    work = Path(tempfile.mkdtemp(prefix="counters-bench-work-", dir="/tmp"))
    s = Stack(servers.redis_url, servers.server_url, servers.data_dir, work, servers.owner_url)
    try:
        yield s
    finally:
        s.close()


class ServiceProc(Service):
    """`python -m counters serve --port P [args]` as a separate process (run from the
    repository root), with the database and key prefix it was given."""

    def __init__(
        self, env: dict[str, str], log_path: Path, args: Sequence[str], db: str, prefix: str
    ) -> None:
        super().__init__(env, log_path, args, cwd=ROOT, stop_timeout=20.0)
        self.database_url = db
        self.prefix = prefix

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)

    def key(self, project: str, scope: str) -> str:
        return create_key(self.env, project, scope)

    def metric(self, name: str) -> float:
        """Sum of every sample of one Prometheus metric on /metrics (0 when absent): of
        every worker and the persister process (one view since issue 13)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float, path: str = "/healthz"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not healthy in {timeout}s: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)


# -- CPU accounting ------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, its live children and the children it
    reaped (Postgres backends come and go)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        t = p.cpu_times()
        total += t.children_user + t.children_system  # children that have exited
    for q in procs:
        with contextlib.suppress(psutil.Error):
            t = q.cpu_times()
            total += t.user + t.system
    return total


def redis_cpu(redis_url: str) -> float:
    """CPU seconds the Redis server has used (INFO cpu, main thread and children)."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_url)
    try:
        info = r.info("cpu")
    finally:
        r.close()
    return float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))


def postgres_cpu(database_url: str) -> float:
    """CPU seconds of every process of the Postgres server (the postmaster and its children),
    when it runs on this machine; 0 when it cannot be seen."""
    import psutil

    async def backend_pid() -> int:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT pg_backend_pid()"))
        finally:
            await conn.close()

    global _PG_POSTMASTER
    if _PG_POSTMASTER is None:
        try:
            _PG_POSTMASTER = psutil.Process(asyncio.run(backend_pid())).ppid()
        except Exception:  # noqa: BLE001 - a remote server: no figure
            _PG_POSTMASTER = -1
    if _PG_POSTMASTER < 0:
        return 0.0
    return process_cpu(_PG_POSTMASTER)


_PG_POSTMASTER: int | None = None


@dataclass
class CpuMeter:
    """CPU seconds used by the service, Redis, Postgres and the load generator over a block."""

    service_pid: int | None
    redis_url: str
    database_url: str
    start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        out = {
            "redis": redis_cpu(self.redis_url),
            "postgres": postgres_cpu(self.database_url),
            "self": _own_cpu(),
        }
        if self.service_pid is not None:
            out["service"] = process_cpu(self.service_pid)
        return out

    def __enter__(self) -> CpuMeter:
        self.start = self._sample()
        self._children0 = _children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        self.used = {k: end[k] - self.start.get(k, 0.0) for k in end}
        self.used["loadgen"] = _children_cpu() - self._children0


def _own_cpu() -> float:
    """CPU of this process alone (threads included, children not)."""
    t = os.times()
    return t.user + t.system


def _children_cpu() -> float:
    """CPU of this process's reaped children (wrk)."""
    t = os.times()
    return t.children_user + t.children_system


# -- wrk ---------------------------------------------------------------------------------------

WRK_MISSING = (
    "wrk is not installed: it is the HTTP load generator of this scenario. Install it with "
    "`apt-get install -y wrk` (Debian package `wrk`) and run again."
)

_LUA_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def require_wrk() -> str:
    path = wrk_path()
    if path is None:
        print(WRK_MISSING, file=sys.stderr)
        raise SystemExit(2)
    return path


def _lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for ASCII


def wrk_script(
    directory: Path,
    *,
    method: str,
    requests_file: Path,
    headers: dict[str, str] | None = None,
    delay_ms: float = 0.0,
) -> Path:
    """A wrk Lua script that cycles through pre-built requests. For POST, requests_file holds
    one body per line (path given by `path` header-less); for GET, one path per line."""
    hdrs = ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in (headers or {}).items())
    if method == "POST":
        build = (
            "  for line in io.lines(" + _lua_str(str(requests_file)) + ") do\n"
            "    reqs[#reqs + 1] = wrk.format('POST', '/v1/events', headers, line)\n"
            "  end\n"
        )
    else:
        build = (
            "  for line in io.lines(" + _lua_str(str(requests_file)) + ") do\n"
            "    reqs[#reqs + 1] = wrk.format('GET', line, headers)\n"
            "  end\n"
        )
    delay = f"function delay()\n  return {delay_ms}\nend\n" if delay_ms > 0 else ""
    text = (
        "local reqs = {}\n"
        "local i = 0\n"
        "local headers = {" + hdrs + "}\n"
        "function init(args)\n" + build + "  i = math.random(#reqs) - 1\nend\n"
        "function request()\n"
        "  i = i % #reqs + 1\n"
        "  return reqs[i]\n"
        "end\n" + delay + _LUA_DONE
    )
    path = directory / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    path.write_text(text)
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    status_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors

    @property
    def rate(self) -> float:
        """2xx responses per second."""
        return self.ok / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str,
    script: Path,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkResult:
    """One wrk run (bounded by -d; killed if it overruns by 30 s)."""
    cmd = [
        require_wrk(),
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    m = re.search(r"^BENCH (\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    d = json.loads(m.group(1))
    return WrkResult(
        requests=d["requests"],
        seconds=d["duration_us"] / 1e6,
        errors=d["connect"] + d["read"] + d["write"] + d["timeout"],
        status_errors=d["status"],
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        max_ms=d["max_us"] / 1000,
    )


def start_wrk(
    url: str, script: Path, *, seconds: float, connections: int, threads: int = 1
) -> subprocess.Popen[str]:
    """wrk in the background (for load under another measurement); bounded by -d."""
    cmd = [
        require_wrk(),
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(seconds))}s",
        "--timeout=10s",
        "-s",
        str(script),
        url,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(proc: subprocess.Popen[str], seconds: float) -> WrkResult:
    out, err = proc.communicate(timeout=seconds + 30)
    m = re.search(r"^BENCH (\{.*\})$", out, re.M)
    if m is None:
        raise RuntimeError(f"wrk failed: {out}\n{err}")
    d = json.loads(m.group(1))
    return WrkResult(
        d["requests"],
        d["duration_us"] / 1e6,
        d["connect"] + d["read"] + d["write"] + d["timeout"],
        d["status"],
        d["p50_us"] / 1000,
        d["p99_us"] / 1000,
        d["max_us"] / 1000,
    )


# -- profiling ---------------------------------------------------------------------------------


def py_spy_path() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record (raw folded stacks, non-blocking sampling) of pid and its children."""
    exe = py_spy_path()
    if exe is None:
        log("py-spy not found (pip install py-spy into .venv): no profile")
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        "200",
        "--duration",
        str(max(1, round(seconds))),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_name(frame: str) -> str:
    """`handler (api/ingest.py:80)` -> `handler (api/ingest.py)`: group lines of a function."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def _short(frame: str) -> str:
    frame = re.sub(r"/[^ ()]*/site-packages/", "", frame)
    return frame.replace(str(ROOT) + "/", "")


_ROOT_FRAMES = (
    "click/",
    "<frozen runpy>",
    "asyncio/runners.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "counters/cli/__init__.py",
    "counters/__main__.py",
    "uvloop/__init__.py",
)
"""Frames every sample goes through (the process entry and the event loop): left out of the
inclusive ranking."""
_PROJECT_DIRS = ("api/", "counters/", "persist/", "lua/")
"""The inclusive ranking lists the project's own functions only (the framework's middleware
chain holds every request and says nothing)."""


def redis_commandstats(redis_url: str) -> dict[str, tuple[int, int]]:
    """(calls, usec) per command since the server started (INFO commandstats)."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_url)
    try:
        stats = r.info("commandstats")
    finally:
        r.close()
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


def summarize_profile(
    path: Path, top: int = 15
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self-time, inclusive-time) shares of the hottest functions in a py-spy raw profile
    (idle time is not sampled); the inclusive ranking is over the project's own functions."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return [], []
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [
            _short(_frame_name(f)) for f in stack.split(";") if f and not f.startswith("process ")
        ]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            if f.split(" (", 1)[-1].startswith(_PROJECT_DIRS) and not any(
                r in f for r in _ROOT_FRAMES
            ):
                incl[f] += n
    if not total:
        return [], []
    return (
        [(f, n / total) for f, n in own.most_common(top)],
        [(f, n / total) for f, n in incl.most_common(top)],
    )


def profile_table(path: Path, top: int = 12) -> str:
    own, incl = summarize_profile(path, top)
    if not own:
        return "(no profile samples)"
    rows = [
        (f"`{a[0]}`", f"{a[1] * 100:.1f}%", f"`{b[0]}`", f"{b[1] * 100:.1f}%")
        for a, b in zip(own, incl, strict=False)
    ]
    return md_table(
        ["function (self time)", "share", "project function (inclusive)", "share"], rows
    )
