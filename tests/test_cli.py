"""The CLI on the embedded default: every command reaches the same Valkey and Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env["COUNTERS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "counters", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_commands_share_the_embedded_servers() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="counters-cli-"))
    data_dir.chmod(0o755)
    try:
        started = run(data_dir, "embedded", "start", "--json")  # starts both, returns
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["running"] is True
        first = run(data_dir, "keys", "create", "--project", "demo", "--scope", "ingest")
        assert first.returncode == 0, first.stderr
        key = first.stdout.strip().splitlines()[-1]
        assert key.startswith("ck_i_")
        second = run(data_dir, "keys", "create", "--project", "demo", "--scope", "read")
        assert second.returncode == 0, second.stderr
        status = run(data_dir, "embedded", "status", "--show-passwords")
        assert status.returncode == 0, status.stderr
        lines = dict(line.split(": ", 1) for line in status.stdout.strip().splitlines())
        assert lines["redis"].startswith("redis://:") and "@127.0.0.1:" in lines["redis"]
        assert lines["postgres"].startswith("postgresql://counters:")

        async def count_keys() -> int:
            conn = await asyncpg.connect(lines["postgres"])
            try:
                n: int = await conn.fetchval("SELECT count(*) FROM api_keys WHERE project='demo'")
                return n
            finally:
                await conn.close()

        assert asyncio.run(count_keys()) == 2
        bad = run(data_dir, "keys", "create", "--project", "Bad Name", "--scope", "read")
        assert bad.returncode != 0 and "project name" in bad.stderr
        stopped = run(data_dir, "embedded", "stop")
        assert "valkey" in stopped.stdout and "postgres" in stopped.stdout
        after = run(data_dir, "embedded", "status")
        assert "not running" in after.stdout and after.returncode == 3
    finally:
        run(data_dir, "embedded", "stop")
        shutil.rmtree(data_dir, ignore_errors=True)
