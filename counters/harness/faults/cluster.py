"""The system under fault: a private Valkey and Postgres (separate data dirs, so each can be
stopped, killed and restarted on its own), one `counters serve --no-persister` process and
one or more `counters persist` processes, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import redis as sync_redis

from counters import embedded
from counters.core.shards import shard_projects
from counters.harness.servers import Backends, close_sync, free_port
from counters.harness.service import cli, create_key, service_env
from lua.keys import ProjectKeys

T = TypeVar("T")
Log = Callable[[str], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pid_alive(pid: int) -> bool:
    """pid exists and is not a zombie (a killed daemon may linger unreaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def wait_sync(accept: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Polls accept() until it holds; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while not accept():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def poll_until(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 0.05,
) -> tuple[bool, T | None]:
    """Polls probe until accept(result); (False, last result) after timeout. Exceptions of the
    probe (a backend down) count as not yet."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = await probe()
            if accept(last):
                return True, last
        except Exception:  # noqa: BLE001 - a probe failing is "not yet"
            pass
        if time.monotonic() > deadline:
            return False, last
        await asyncio.sleep(interval)


def remote_ports(pid: int) -> set[int]:
    """Remote ports of the established TCP connections of pid (from /proc)."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and fields[9] in inodes:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"({path} unreadable: {exc})"


class Proc:
    """One `python -m counters ...` process; knows whether its death was planned."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "counters", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> int | None:
        """Exit code when the process ended (None while it runs or before its first start)."""
        return None if self.proc is None else self.proc.poll()

    def send(self, sig: signal.Signals) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (after SIGCONT, in case it is stopped), then kill -9 after timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.wait(30)


class Cluster:
    """Servers, service and persisters of one fault run, in one temporary directory."""

    def __init__(
        self,
        *,
        durable_ack: bool,
        grace_seconds: int = 1,
        persisters: int = 2,
        crosstabs: str = "source:country",
        keep: bool = False,
        redis_cluster: bool = False,
        shards: int = 1,
        log: Log = print,
    ) -> None:
        self.durable_ack = durable_ack
        self.redis_cluster = redis_cluster
        self.shards = shards
        self.valkey_target = ""
        """The stored project (shard) whose master the Valkey faults hit ("": the project)."""
        self.grace_seconds = grace_seconds
        self.n_persisters = persisters
        self.crosstabs = crosstabs
        self.keep = keep
        self.log = log
        self.root = Path(tempfile.mkdtemp(prefix="counters-faults-", dir="/tmp"))
        self.root.chmod(0o755)
        self.vdir = self.root / "valkey"
        self.pdir = self.root / "pg"
        self.work = self.root / "work"
        for d in (self.vdir, self.pdir, self.work):
            d.mkdir(mode=0o755)
            d.chmod(0o755)
        self.redis_url = ""
        self.database_url = ""
        self.prefix = "flt" + uuid.uuid4().hex[:6]
        self.project = "f" + uuid.uuid4().hex[:10]
        self.env: dict[str, str] = {}
        self.ingest_key = ""
        self.read_key = ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service: Proc | None = None
        self.persisters: list[Proc] = []
        self._commands: dict[str, bool] = {}

    @property
    def stored(self) -> list[str]:
        """The stored names of the project's shards (itself alone when not split)."""
        return shard_projects(self.project, self.shards)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Servers, keys, the service (healthy) and the persisters."""
        self.redis_url = self._ensure_valkey()
        self.database_url = embedded.ensure_postgres(self.pdir)
        self.env = service_env(
            Backends(self.redis_url, self.database_url, self.prefix, None),
            self.work,
            COUNTERS_GRACE_SECONDS=str(self.grace_seconds),
            COUNTERS_PERSIST_INTERVAL_SECONDS="0.2",
            COUNTERS_DURABLE_ACK="1" if self.durable_ack else "0",
            COUNTERS_CROSSTABS=self.crosstabs,
        )
        self.ingest_key = create_key(self.env, self.project, "ingest")
        self.read_key = create_key(self.env, self.project, "read")
        if self.shards > 1:  # a new project: its ids may be split at once
            cli(self.env, "projects", "shards", self.project, str(self.shards), "--ids-now")
        self.service = Proc(
            "service",
            ["serve", "--port", str(self.port), "--no-persister"],
            self.env,
            self.work / "service.log",
        )
        self.start_service()
        for i in range(self.n_persisters):
            p = Proc(f"persister-{i}", ["persist"], self.env, self.work / f"persister-{i}.log")
            p.start()
            self.persisters.append(p)
        self.log(
            f"cluster: {self.root} valkey{' cluster' if self.redis_cluster else ''}"
            f" {self.redis_url} postgres {self.database_url} "
            f"service {self.url} project {self.project} shards={self.shards}"
            f" durable_ack={self.durable_ack} "
            f"persisters={self.n_persisters}"
        )

    def start_service(self, timeout: float = 60.0) -> None:
        """(Re)starts the service; returns once /healthz answers 200."""
        assert self.service is not None
        self.service.start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.service.running():
                raise AssertionError(f"service exited:\n{log_tail(self.service.log_path)}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"service not healthy:\n{log_tail(self.service.log_path)}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stops every process and server of the run; removes the directory unless keep."""
        errors: list[str] = []
        for p in [*self.persisters, *([self.service] if self.service else [])]:
            try:
                p.stop()
            except Exception as exc:  # noqa: BLE001 - clean up as much as possible
                errors.append(f"{p.name}: {exc}")
        for d in (self.vdir, self.pdir):
            try:
                embedded.stop_embedded(d)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{d}: {exc}")
                self._kill_valkey_quietly()
        if self.keep:
            self.log(f"cluster: kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            self.log("cluster: clean-up problems: " + "; ".join(errors))

    def _kill_valkey_quietly(self) -> None:
        pid = self.valkey_pid()
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def persister_ready(self, p: Proc) -> bool:
        """The persister runs and is connected to both Valkey and Postgres (it has begun its
        passes); a dead one counts as ready (the monitor deals with it)."""
        if not p.running() or p.pid is None:
            return True
        ports = {
            int(u.rsplit(":", 1)[1].split("/")[0]) for u in (self.redis_url, self.database_url)
        }
        if self.redis_cluster:  # it talks to the master of the project's slot
            master = int(json.loads((self.valkey_dir() / "state.json").read_text())["port"])
            ports = {int(self.database_url.rsplit(":", 1)[1].split("/")[0]), master}
        return ports <= remote_ports(p.pid)

    # -- faults ---------------------------------------------------------------------------

    def _ensure_valkey(self) -> str:
        if self.redis_cluster:
            return embedded.ensure_valkey_cluster(self.vdir)
        return embedded.ensure_valkey(self.vdir)

    def valkey_dir(self) -> Path:
        """The data dir of the Valkey that holds the project: the one server, or the
        cluster master that serves the slot of the project (of valkey_target, a shard)."""
        if not self.redis_cluster:
            return self.vdir / "valkey"
        keys = ProjectKeys(self.prefix, self.valkey_target or self.project)
        client = sync_redis.RedisCluster.from_url(self.redis_url)
        try:
            port = client.get_node_from_key(keys.watermarks).port  # type: ignore[no-untyped-call]
        finally:
            close_sync(client)
        for node in embedded.cluster_nodes(self.vdir):
            if node.port == port:
                return self.vdir / "valkey-cluster" / f"node{node.index}"
        raise AssertionError(f"no running cluster node on port {port}")

    def valkey_pid(self) -> int | None:
        try:
            return int((self.valkey_dir() / "valkey.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_valkey(self) -> int:
        """kill -9 of the Valkey server; returns once the process is gone."""
        pid = self.valkey_pid()
        assert pid is not None and pid_alive(pid), "no running Valkey to kill"
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        assert "valkey" in comm, f"pid {pid} is {comm!r}, not Valkey"
        os.kill(pid, signal.SIGKILL)
        wait_sync(lambda: not pid_alive(pid), timeout=30, what=f"Valkey pid {pid} to die")
        return pid

    def wipe_valkey(self) -> int:
        """kill -9 of Valkey, then its AOF (and any RDB file) deleted: the restarted server
        is empty, like a failover to a replica without persistence. Returns the old pid."""
        data = self.valkey_dir()
        pid = self.kill_valkey()
        shutil.rmtree(data / "appendonlydir", ignore_errors=True)
        for f in [*data.glob("*.aof"), *data.glob("*.rdb")]:
            f.unlink(missing_ok=True)
        self.start_valkey()
        return pid

    def start_valkey(self) -> None:
        url = self._ensure_valkey()
        assert url == self.redis_url, f"Valkey came back on {url}, not {self.redis_url}"

    def stop_postgres(self) -> None:
        assert embedded.stop_embedded(self.pdir) == ["postgres"]

    def start_postgres(self) -> None:
        url = embedded.ensure_postgres(self.pdir)
        assert url == self.database_url, f"Postgres came back on {url}"

    # -- the CLI --------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "counters", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def has_command(self, name: str) -> bool:
        """Whether `counters <name>` exists (rebuild and reconcile are being written)."""
        if name not in self._commands:
            self._commands[name] = self.cli(name, "--help", timeout=120).returncode == 0
        return self._commands[name]
