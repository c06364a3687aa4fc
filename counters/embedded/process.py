"""Process, file and lock helpers shared by the embedded servers: flock around
check-and-start, pid and /proc checks, free ports, log tails, JSON state files and
running a command (optionally as `nobody`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"

POLL_INTERVAL = 0.02
STOP_DEADLINE = 60.0
LOCK_DEADLINE = 120.0
LOG_TAIL_LINES = 25


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started, reused or stopped."""


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on lock_path (serialises processes sharing a data dir)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_DEADLINE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"timed out after {LOCK_DEADLINE:.0f}s waiting for lock {lock_path}"
                    ) from None
                time.sleep(POLL_INTERVAL)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def absolute(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"(log {path} is empty)"


def server_error(what: str, log: Path | None = None, output: str = "") -> EmbeddedServerError:
    parts = [what]
    if output.strip():
        parts.append(f"--- command output ---\n{output.strip()}")
    if log is not None:
        parts.append(f"--- tail of {log} ---\n{log_tail(log)}")
    return EmbeddedServerError("\n".join(parts))


def read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, object]) -> None:
    """Atomically replace path with the JSON encoding of data."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def json_int(data: dict[str, object], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (daemons get reparented; zombies may linger)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs: trust kill(0)
    # A zombie thread-group leader may still have threads exiting (holding the process's
    # sockets and files): the process is gone only once every task is a zombie.
    try:
        tasks = [proc / "stat", *(task / "stat" for task in (proc / "task").iterdir())]
    except OSError:
        tasks = [proc / "stat"]
    for task_stat in tasks:
        try:
            text = task_stat.read_text()
        except OSError:
            continue
        # the state letter follows the parenthesised command name
        if text.rpartition(")")[2].split()[:1] not in (["Z"], ["X"]):
            return True
    return False


def process_names(pid: int) -> str | None:
    """comm + cmdline of pid, or None when procfs is unavailable."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    return comm + " " + cmdline.decode("utf-8", errors="replace")


def wait_gone(pid: int, deadline: float) -> bool:
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int | None) -> int:
    """The previously used port if it is still free (stable URLs), else a fresh free one."""
    if preferred is not None and 0 < preferred < 65536 and port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    run_as: RunAs | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run cmd with output captured via a temp file (daemons may keep pipes open); input,
    if given, is written to its stdin (secrets go there, never into argv)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            proc = subprocess.run(
                list(cmd),
                stdin=None if input is not None else subprocess.DEVNULL,
                input=input,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                env=env,
                cwd="/",
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        except subprocess.TimeoutExpired as exc:
            out.seek(0)
            raise server_error(
                f"command timed out after {timeout:.0f}s: {shlex.join(cmd)}", output=out.read()
            ) from exc
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
        out.seek(0)
        proc.stdout = out.read()
    return proc


def _stopped_marker(data_dir: Path, name: str) -> Path:
    return data_dir / f".{name}.stopped"


def mark_stopped(data_dir: Path, name: str) -> None:
    """Record that server name was stopped on purpose (the serve watchdog leaves it down)."""
    _stopped_marker(data_dir, name).touch()


def clear_stopped(data_dir: Path, name: str) -> None:
    """Forget a deliberate stop of server name (it is being started again)."""
    _stopped_marker(data_dir, name).unlink(missing_ok=True)


def stopped_on_purpose(data_dir: Path, name: str) -> bool:
    """True if server name was last stopped by stop_embedded (not crashed)."""
    return _stopped_marker(data_dir, name).exists()


def log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
