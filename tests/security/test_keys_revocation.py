"""Revocation (issue 11, found 7; build 4): a revoked key is refused by every worker
within a second, and stays refused while Postgres is down, while a known key keeps
working and an unknown key is a 503 (never accepted)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from counters import embedded
from counters.harness.servers import Backends, create_database
from counters.harness.service import Service, cli, service_env
from tests.support import wait_for


def new_key(env: dict[str, str], project: str, scope: str) -> dict[str, str]:
    out = cli(env, "keys", "create", "--project", project, "--scope", scope, "--json")
    record: dict[str, str] = msgspec.json.decode(out.strip().splitlines()[-1])
    return record


def post(url: str, key: str) -> int:
    """One event on a fresh connection (so requests spread over the workers)."""
    r = httpx.post(
        url + "/v1/events", json=[{"name": "a"}], headers={"Authorization": f"Bearer {key}"}
    )
    return r.status_code


def refused_everywhere(url: str, key: str, tries: int = 12) -> bool:
    return all(post(url, key) == 401 for _ in range(tries))


def seconds_until_refused(url: str, key: str, since: float) -> float:
    """Seconds from `since` to the start of the first probe whose requests (spread over the
    workers) were all refused: the revocation was in force everywhere by then. (Measured at
    the probe's start, so a slow machine does not count the probe's own time.)"""

    async def probe() -> float | None:
        began = time.monotonic()
        return began if refused_everywhere(url, key) else None

    began = asyncio.run(wait_for(probe, lambda t: t is not None, timeout=5.0, what="refusal"))
    assert began is not None
    return began - since


@pytest.fixture(scope="module")
def two_workers(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("keys2w")
    svc = Service(service_env(backends, workdir), workdir / "service.log", ["--workers", "2"])
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def test_revoked_key_refused_by_every_worker_within_a_second(two_workers: Service) -> None:
    svc = two_workers
    project = "kr" + uuid.uuid4().hex[:8]
    key = new_key(svc.env, project, "ingest")
    keep = new_key(svc.env, project, "ingest")
    for _ in range(12):  # every worker has both keys cached
        assert post(svc.url, key["key"]) == 200
        assert post(svc.url, keep["key"]) == 200
    cli(svc.env, "keys", "revoke", key["id"])
    revoked_at = time.monotonic()

    assert seconds_until_refused(svc.url, key["key"], revoked_at) <= 1.0
    assert post(svc.url, keep["key"]) == 200
    listed = msgspec.json.decode(cli(svc.env, "keys", "list", "--project", project, "--json"))
    assert {k["id"]: k["revoked_at"] for k in listed}[key["id"]] is not None


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[tuple[Path, str]]:
    pdir = Path(tempfile.mkdtemp(prefix="counters-keys-p-"))
    pdir.chmod(0o755)
    try:
        server_url = embedded.ensure_postgres(pdir)
        yield pdir, create_database(server_url, "keys")
    finally:
        embedded.stop_embedded(pdir)
        shutil.rmtree(pdir, ignore_errors=True)


def test_revocation_holds_while_postgres_is_down(
    private_postgres: tuple[Path, str], backends: Backends, tmp_path: Path
) -> None:
    pdir, database_url = private_postgres
    own = Backends(backends.redis_url, database_url, "kr" + uuid.uuid4().hex[:6], None)
    # a short cache TTL: during the outage every entry is past it (the stale path)
    env = service_env(own, tmp_path, COUNTERS_KEY_CACHE_SECONDS="0.2")
    svc = Service(env, tmp_path / "service.log", ["--workers", "2"])
    project = "kp" + uuid.uuid4().hex[:6]
    doomed = new_key(env, project, "ingest")
    later = new_key(env, project, "ingest")
    keep = new_key(env, project, "ingest")
    unknown = new_key(env, project, "ingest")  # never used: no worker knows it
    svc.start()
    try:
        for _ in range(12):
            for k in (doomed, later, keep):
                assert post(svc.url, k["key"]) == 200
        cli(env, "keys", "revoke", doomed["id"])
        assert seconds_until_refused(svc.url, doomed["key"], time.monotonic()) <= 1.0

        embedded.stop_embedded(pdir)  # Postgres down
        # `keys revoke` while Postgres is down writes the Redis change log alone, which
        # every worker honours
        proc = subprocess.run(
            [sys.executable, "-m", "counters", "keys", "revoke", later["id"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and "Redis only" in proc.stderr, proc.stderr

        assert seconds_until_refused(svc.url, later["key"], time.monotonic()) <= 1.0
        deadline = time.monotonic() + 1.0  # past the cache TTL: still refused
        while time.monotonic() < deadline:
            assert post(svc.url, doomed["key"]) == 401
            assert post(svc.url, later["key"]) == 401
            assert post(svc.url, keep["key"]) == 200  # a known key works through the outage
        for _ in range(4):
            assert post(svc.url, unknown["key"]) == 503  # never accepted unseen

        # Postgres back, a freshly started service: the Redis-only revocation still holds
        embedded.ensure_postgres(pdir)
        svc.stop()
        svc.start()
        assert post(svc.url, later["key"]) == 401 and post(svc.url, doomed["key"]) == 401
        assert post(svc.url, keep["key"]) == 200 and post(svc.url, unknown["key"]) == 200
    finally:
        svc.stop()
        embedded.ensure_postgres(pdir)
