"""Tests for counters.embedded against real Valkey / Postgres processes (no mocks)."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from counters.embedded import (
    EmbeddedServerError,
    embedded_status,
    ensure_postgres,
    ensure_valkey,
    postgres,
    process,
    stop_embedded,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="relocation only applies to root")


def _make_base(mode: int) -> Path:
    base = Path(tempfile.mkdtemp(prefix="counters-embedded-test-"))
    base.chmod(mode)
    return base


def _cleanup(data_dir: Path, *extra: Path) -> None:
    marker = data_dir / "pg-location.json"
    relocated = json.loads(marker.read_text())["base"] if marker.exists() else None
    try:
        stop_embedded(data_dir)
    finally:
        for path in (*extra, *([Path(relocated)] if relocated else [])):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir that `nobody` can reach (tmp_path may sit under a mode-700 directory)."""
    base = _make_base(0o755)
    data = base / "data"
    yield data
    _cleanup(data, base)


@pytest.fixture
def unreachable_data_dir() -> Iterator[Path]:
    """A data dir below a mode-700 parent: `nobody` cannot traverse to it."""
    base = _make_base(0o700)
    data = base / "data"
    yield data
    _cleanup(data, base)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while process.pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


def _pg_fetchval(url: str, query: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def _pg_execute(url: str, query: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(query)
        finally:
            await conn.close()

    asyncio.run(run())


# --------------------------------------------------------------------------- Valkey


def test_valkey_start_ping_aof_and_reuse(data_dir: Path) -> None:
    url = ensure_valkey(data_dir)
    assert url.startswith("redis://:") and "@127.0.0.1:" in url and url.endswith("/0")
    with redis.Redis.from_url(url, decode_responses=True) as client:
        assert client.ping() is True
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("dir") == {"dir": str((data_dir / "valkey").resolve())}
    assert (data_dir / "valkey" / "appendonlydir").is_dir()

    started = time.monotonic()
    assert ensure_valkey(data_dir) == url
    assert time.monotonic() - started < 1.0
    assert embedded_status(data_dir)["redis"] == url


def test_valkey_restarts_after_kill9(data_dir: Path) -> None:
    url = ensure_valkey(data_dir)
    pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    assert embedded_status(data_dir)["redis"] is None

    url2 = ensure_valkey(data_dir)
    with redis.Redis.from_url(url2) as client:
        assert client.ping() is True
        assert client.info("server")["process_id"] != pid
    assert "@127.0.0.1:" in url2 and "@127.0.0.1:" in url


def test_concurrent_ensure_valkey_starts_one_server(data_dir: Path) -> None:
    code = "import sys; from pathlib import Path; from counters.embedded import ensure_valkey; "
    code += "print(ensure_valkey(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    assert len(set(outputs)) == 1 and outputs[0].startswith("redis://:")
    log = (data_dir / "valkey" / "valkey.log").read_text()
    assert log.count("Ready to accept connections") == 1


def test_valkey_start_failure_reports_log_tail(data_dir: Path) -> None:
    aof_dir = data_dir / "valkey" / "appendonlydir"
    aof_dir.mkdir(parents=True)
    (aof_dir / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    with pytest.raises(EmbeddedServerError) as excinfo:
        ensure_valkey(data_dir)
    message = str(excinfo.value)
    assert "Valkey" in message and "valkey.log" in message
    assert embedded_status(data_dir)["redis"] is None


# --------------------------------------------------------------------------- Postgres


def test_postgres_start_select_and_reuse(data_dir: Path) -> None:
    url = ensure_postgres(data_dir)
    assert url.startswith("postgresql://counters:") and url.endswith("/counters")
    assert urlsplit(url).hostname == "127.0.0.1"
    assert _pg_fetchval(url, "SELECT 1") == 1
    assert _pg_fetchval(url, "SHOW listen_addresses") == "127.0.0.1"
    assert _pg_fetchval(url, "SHOW server_encoding") == "UTF8"
    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == "18"
    assert not (data_dir / "pg-location.json").exists()

    started = time.monotonic()
    assert ensure_postgres(data_dir) == url
    assert time.monotonic() - started < 1.0
    assert embedded_status(data_dir)["postgres"] == url


def test_postgres_restarts_after_kill9(data_dir: Path) -> None:
    url = ensure_postgres(data_dir)
    _pg_execute(url, "CREATE TABLE survivor (x int); INSERT INTO survivor VALUES (42)")
    pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    assert embedded_status(data_dir)["postgres"] is None

    url2 = ensure_postgres(data_dir)  # stale postmaster.pid and socket locks are handled
    assert _pg_fetchval(url2, "SELECT x FROM survivor") == 42


def test_stop_embedded_stops_both_and_data_survives(data_dir: Path) -> None:
    redis_url = ensure_valkey(data_dir)
    pg_url = ensure_postgres(data_dir)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.set("kept", "yes")
    _pg_execute(pg_url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    assert embedded_status(data_dir) == {"redis": redis_url, "postgres": pg_url}

    assert sorted(stop_embedded(data_dir)) == ["postgres", "valkey"]
    assert not _answers(_port(redis_url))
    assert not _answers(_port(pg_url))
    assert embedded_status(data_dir) == {"redis": None, "postgres": None}
    assert stop_embedded(data_dir) == []

    with redis.Redis.from_url(ensure_valkey(data_dir), decode_responses=True) as client:
        assert client.get("kept") == "yes"  # SIGTERM shutdown flushed the AOF
    assert _pg_fetchval(ensure_postgres(data_dir), "SELECT x FROM kept") == 7


def test_status_and_stop_on_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert embedded_status(missing) == {"redis": None, "postgres": None}
    assert stop_embedded(missing) == []
    assert not missing.exists()


@needs_root
def test_postgres_relocates_data_of_unreachable_dir(unreachable_data_dir: Path) -> None:
    data_dir = unreachable_data_dir
    url = ensure_postgres(data_dir)
    assert _pg_fetchval(url, "SELECT 1") == 1

    marker = json.loads((data_dir / "pg-location.json").read_text())
    base = Path(marker["base"])
    assert base.name.startswith("counters-") and base.parent != data_dir.parent
    assert (base / "pg" / "PG_VERSION").exists()
    assert not (data_dir / "pg").exists()
    who = postgres._pg_run_as()
    assert who is not None and (base / "pg").stat().st_uid == who.uid
    assert oct((base / "pg").stat().st_mode & 0o777) == oct(0o700)
    assert data_dir.parent.stat().st_mode & 0o777 == 0o700  # never chmod-ed

    assert ensure_postgres(data_dir) == url
    assert embedded_status(data_dir)["postgres"] == url
    assert stop_embedded(data_dir) == ["postgres"]
    assert not _answers(_port(url))
    assert ensure_postgres(data_dir) == url  # restarts from the relocated data


@needs_root
def test_copied_install_runs_as_nobody() -> None:
    base = _make_base(0o755)
    try:
        dest = base / "pg-install"
        bin_dir = postgres._copy_pg_install(dest)
        assert postgres._copy_pg_install(dest) == bin_dir  # reused, not copied again
        for tool in ("initdb", "pg_ctl", "postgres"):
            proc = subprocess.run(
                [str(bin_dir / tool), "--version"],
                user="nobody",
                extra_groups=[],
                cwd="/",
                capture_output=True,
                text=True,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            assert "18." in proc.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
