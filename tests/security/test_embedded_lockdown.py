"""Issue 11, found 8: any local user owned the embedded servers (trust auth as superuser,
Valkey without a password, COPY ... FROM PROGRAM).  Now: passwords in a 0600 file, the
service a non-superuser role; and `serve` restarts a crashed embedded server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis

from counters import embedded
from counters.embedded import postgres, process
from counters.harness.servers import Backends
from counters.harness.service import Service, create_key, service_env
from tests.support import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
OTHER_UID = 54321  # no account: neither us nor `nobody` (who owns PGDATA)
LEGACY_COMMIT = "3661dfb"  # the last code with trust auth and no Valkey password


def _base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="counters-lockdown-"))
    base.chmod(0o755)  # `nobody` (Postgres, when root) must traverse it
    return base


def _cleanup(data_dir: Path, base: Path) -> None:
    marker = data_dir / "pg-location.json"
    relocated = json.loads(marker.read_text())["base"] if marker.exists() else None
    try:
        embedded.stop_embedded(data_dir)
    finally:
        for path in (base, *([Path(relocated)] if relocated else [])):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def locked() -> Iterator[tuple[Path, str, str]]:
    """A data dir with both embedded servers running: (data_dir, redis_url, postgres_url)."""
    base = _base()
    data_dir = base / "data"
    try:
        yield data_dir, embedded.ensure_valkey(data_dir), embedded.ensure_postgres(data_dir)
    finally:
        _cleanup(data_dir, base)


def _pg(url: str, *queries: str) -> list[object]:
    async def run() -> list[object]:
        conn = await asyncpg.connect(url)
        try:
            return [await conn.fetchval(q) for q in queries]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_secrets_file_is_private_and_holds_the_passwords(locked: tuple[Path, str, str]) -> None:
    data_dir, redis_url, pg_url = locked
    path = data_dir / "secrets.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert data_dir.stat().st_mode & 0o066 == 0  # not listable by others
    assert (data_dir / "valkey").stat().st_mode & 0o777 == 0o700  # the AOF
    stored = json.loads(path.read_text())
    assert urlsplit(redis_url).password == stored["valkey_password"]
    assert urlsplit(pg_url).password == stored["postgres_password"]
    assert len(set(stored.values())) == 3 and all(len(v) >= 32 for v in stored.values())
    hba = (postgres._pg_paths(data_dir, None, decide=False).pgdata / "pg_hba.conf").read_text()
    lines = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert lines and all(line[-1] == "scram-sha-256" for line in lines)


def test_passwords_never_on_a_command_line(locked: tuple[Path, str, str]) -> None:
    """Every local user can read /proc/*/cmdline."""
    stored = json.loads((locked[0] / "secrets.json").read_text())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        for secret in stored.values():
            assert secret not in cmdline, f"a password is in the argv of pid {entry.name}"


def test_service_role_is_no_superuser_and_cannot_run_programs(
    locked: tuple[Path, str, str],
) -> None:
    _, _, pg_url = locked
    assert urlsplit(pg_url).username == "counters"
    assert _pg(
        pg_url,
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles"
        " WHERE rolname = current_user",
        "SELECT current_database()",
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    ) == [False, "counters", "counters"]

    async def attacks() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        refused = []
        try:
            await conn.execute("CREATE TEMP TABLE loot (line text)")
            for sql in (
                "COPY loot FROM PROGRAM 'id'",
                "COPY loot FROM '/etc/passwd'",
                "CREATE ROLE intruder SUPERUSER LOGIN",
                "CREATE DATABASE intruder",
                "ALTER ROLE postgres PASSWORD 'x'",
            ):
                try:
                    await conn.execute(sql)
                except asyncpg.InsufficientPrivilegeError:
                    refused.append(sql)
        finally:
            await conn.close()
        return refused

    assert len(asyncio.run(attacks())) == 5


_INTRUDER = r"""
import json, socket, struct, sys
pg_port, valkey_port = int(sys.argv[1]), int(sys.argv[2])
secrets, socket_dir = sys.argv[3], sys.argv[4]
out = {}
try:
    open(secrets).read()
    out["secrets"] = "read"
except OSError as exc:
    out["secrets"] = type(exc).__name__

def pg_auth(user, db):
    # StartupMessage, protocol 3.0; the first reply says which authentication is required
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0"
    body += db.encode() + b"\0\0"
    with socket.create_connection(("127.0.0.1", pg_port), timeout=5) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        head = s.recv(9)
        if head[:1] == b"R":
            code = struct.unpack("!I", head[5:9])[0]
            return {0: "ok", 3: "cleartext", 5: "md5", 10: "sasl"}.get(code, "other")
        return "error"
out["pg"] = [pg_auth(u, d) for u, d in (("postgres", "postgres"), ("counters", "counters"))]
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(socket_dir + "/.s.PGSQL.%d" % pg_port)
    out["pg_socket"] = "connected"
except OSError as exc:
    out["pg_socket"] = type(exc).__name__

def resp(*args):
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", valkey_port), timeout=5) as s:
        s.sendall(payload)
        return s.makefile("rb").readline().decode().strip()
commands = ((b"PING",), (b"INFO",), (b"KEYS", b"*"), (b"SET", b"x", b"y"),
            (b"CONFIG", b"GET", b"requirepass"), (b"EVAL", b"return 1", b"0"), (b"AUTH", b"guess"))
out["valkey"] = [resp(*c) for c in commands]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another uid")
def test_other_local_user_gets_nothing(locked: tuple[Path, str, str]) -> None:
    data_dir, redis_url, pg_url = locked
    paths = postgres._pg_paths(data_dir, None, decide=False)
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    proc = subprocess.run(
        [
            python,
            "-I",
            "-c",
            _INTRUDER,
            str(urlsplit(pg_url).port),
            str(urlsplit(redis_url).port),
            str(data_dir / "secrets.json"),
            str(paths.socket_dir),
        ],
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["secrets"] == "PermissionError"
    assert seen["pg"] == ["sasl", "sasl"]  # a password is required, for the superuser too
    assert seen["pg_socket"] in ("PermissionError", "FileNotFoundError")
    assert all(r.startswith("-NOAUTH") for r in seen["valkey"][:-1]), seen["valkey"]
    assert seen["valkey"][-1].startswith("-WRONGPASS"), seen["valkey"]
    if shutil.which("psql"):  # a real client, without the password: refused
        psql = subprocess.run(
            ["psql", "-w", "-h", "127.0.0.1", "-p", str(urlsplit(pg_url).port), "-U",
             "postgres", "-d", "postgres", "-c", "SELECT 1"],
            user=OTHER_UID, group=OTHER_UID, extra_groups=[], cwd="/",
            capture_output=True, text=True, timeout=30, check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin")},
        )  # fmt: skip
        assert psql.returncode != 0 and "password" in psql.stderr, psql.stderr


def test_status_authenticates_and_cli_redacts(locked: tuple[Path, str, str]) -> None:
    data_dir, redis_url, pg_url = locked
    assert embedded.embedded_status(data_dir) == {"redis": redis_url, "postgres": pg_url}
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env["COUNTERS_DATA_DIR"] = str(data_dir)
    out = subprocess.run(
        [sys.executable, "-m", "counters", "embedded", "status"],
        env=env, capture_output=True, text=True, timeout=60, check=True, cwd=REPO_ROOT,
    ).stdout  # fmt: skip
    assert f"127.0.0.1:{urlsplit(redis_url).port}" in out and "***" in out
    assert urlsplit(redis_url).password not in out and urlsplit(pg_url).password not in out


def _legacy_package(dest: Path) -> bool:
    """The `counters` package of LEGACY_COMMIT under dest; False if git cannot give it."""
    proc = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", LEGACY_COMMIT, "counters"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        return False
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return True


def test_legacy_data_dir_is_locked_down_in_place(tmp_path: Path) -> None:
    """A data dir made by the old code (trust, tables in `postgres`, Valkey without a
    password, still running): the next start secures it and keeps every row and key."""
    if not _legacy_package(tmp_path / "old"):
        pytest.skip(f"git cannot give commit {LEGACY_COMMIT} (shallow clone?)")
    base = _base()
    data_dir = base / "data"
    try:
        code = (
            "import sys; from pathlib import Path; "
            "from counters.embedded import ensure_valkey, ensure_postgres; "
            "d = Path(sys.argv[1]); print(ensure_valkey(d)); print(ensure_postgres(d))"
        )
        old = subprocess.run(
            [sys.executable, "-c", code, str(data_dir)], cwd=tmp_path / "old",
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout.split()  # fmt: skip
        old_redis, old_pg = old
        assert urlsplit(old_pg).password is None  # trust, as before
        with redis.Redis.from_url(old_redis) as client:
            client.set("kept", "yes")
        _pg(
            old_pg,
            "CREATE TABLE legacy (id serial PRIMARY KEY, x int)",
            "INSERT INTO legacy (x) VALUES (42)",
            "CREATE VIEW legacy_v AS SELECT x FROM legacy",
        )

        new_redis = embedded.ensure_valkey(data_dir)
        with redis.Redis.from_url(new_redis, decode_responses=True) as client:
            assert client.get("kept") == "yes"
        with redis.Redis.from_url(old_redis) as client, pytest.raises(redis.AuthenticationError):
            client.ping()

        new_pg = embedded.ensure_postgres(data_dir)
        assert _pg(
            new_pg,
            "SELECT x FROM legacy_v",
            "INSERT INTO legacy (x) VALUES (43) RETURNING id",
            "ALTER TABLE legacy ADD COLUMN y int",  # owner: migrations keep working
            "SELECT count(*) FROM legacy",
        ) == [42, 2, None, 2]
        with pytest.raises((asyncpg.PostgresError, OSError)):
            _pg(old_pg, "SELECT 1")
        assert embedded.ensure_postgres(data_dir) == new_pg  # secured once, then reused
    finally:
        _cleanup(data_dir, base)


def test_serve_restarts_crashed_embedded_servers(tmp_path: Path) -> None:
    """kill -9 of the embedded Valkey, then of Postgres, under `counters serve` with the
    embedded default: each is back by itself and the service counts again."""
    base = _base()
    data_dir = base / "data"
    env = service_env(Backends("", "", "wd" + uuid.uuid4().hex[:6], None), data_dir)
    del env["COUNTERS_REDIS_URL"], env["COUNTERS_DATABASE_URL"]  # the embedded default
    svc = Service(env, tmp_path / "service.log", cwd=REPO_ROOT)
    try:
        svc.start(timeout=120)
        project = "wd" + uuid.uuid4().hex[:6]
        ingest = {"Authorization": "Bearer " + create_key(env, project, "ingest")}
        read = {"Authorization": "Bearer " + create_key(env, project, "read")}
        pg_paths = postgres._pg_paths(data_dir, None, decide=False)

        def valkey_pid() -> int | None:
            try:
                return int((data_dir / "valkey" / "valkey.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        def pg_pid() -> int | None:
            info = postgres._postmaster_info(pg_paths.pgdata)
            return info[0] if info else None

        async def recovers(pid_of: object, old: int) -> None:
            async with httpx.AsyncClient(base_url=svc.url, timeout=5) as c:

                async def probe() -> tuple[int | None, int]:
                    new = pid_of()  # type: ignore[operator]
                    try:
                        status = (await c.get("/healthz")).status_code
                    except httpx.HTTPError:
                        status = 0
                    return new, status

                await wait_for(
                    probe,
                    lambda r: r[0] not in (None, old) and process.pid_alive(r[0]) and r[1] == 200,
                    timeout=20,
                    interval=0.1,
                    what="a new server and /healthz 200",
                )

        for pid_of in (valkey_pid, pg_pid):
            old = pid_of()
            assert old is not None
            os.kill(old, signal.SIGKILL)
            asyncio.run(recovers(pid_of, old))

        total = f"/v1/projects/{project}/total?name=click&grain=minute&excluding_current=false"
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            r = c.post("/v1/events", json=[{"name": "click"}], headers=ingest)
            assert r.status_code == 200, r.text
            assert c.get(total, headers=read).json()["value"] == 1
    finally:
        svc.stop()
        _cleanup(data_dir, base)
    log = (tmp_path / "service.log").read_text()
    assert "restarted" in log, log[-3000:]
