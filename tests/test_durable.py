"""durable_ack's WAITAOF must run on the script's own connection (and node).

With appendfsync no the server never fsyncs by itself, so a WAITAOF that really waits for
the batch's writes times out; one sent on another connection answers [1, 0] at once,
which is what a WAITAOF on a pooled connection proved before (nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from redis.asyncio import Redis, RedisCluster

from counters.core.errors import Unavailable
from counters.harness.servers import Backends
from lua.client import RedisClient
from tests.support import Harness

T0 = 1_776_000_000_000


@pytest_asyncio.fixture(loop_scope="session")
async def nodes(redis: RedisClient, backends: Backends) -> AsyncIterator[list[Redis]]:
    """A plain client per master (the one node, or each master of a cluster)."""
    if not isinstance(redis, RedisCluster):
        yield [redis]
        return
    await redis.initialize()
    password = urlsplit(backends.redis_url).password
    clients = [Redis(host=n.host, port=n.port, password=password) for n in redis.get_primaries()]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def no_fsync(nodes: list[Redis]) -> AsyncIterator[None]:
    """appendfsync no on every master for the test (restored after)."""
    info = await nodes[0].info("persistence")
    if not info.get("aof_enabled"):
        pytest.skip("this Redis runs without an AOF (WAITAOF needs appendonly yes)")
    before = [(await node.config_get("appendfsync"))["appendfsync"] for node in nodes]
    for node in nodes:
        await node.config_set("appendfsync", "no")
    try:
        yield
    finally:
        for node, value in zip(nodes, before, strict=True):
            await node.config_set("appendfsync", value)


async def test_durable_ack_refuses_a_batch_that_is_not_on_disk(
    harness: Harness, no_fsync: None
) -> None:
    durable = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        durable_ack=True,
    )
    ev = {"name": "click", "ts": harness.clock.now_ms() - 1000}
    with pytest.raises(Unavailable, match="not on disk"):
        await durable.ingest(ev)


async def test_a_waitaof_on_another_connection_proves_nothing(
    nodes: list[Redis], no_fsync: None, harness: Harness
) -> None:
    """Why the WAITAOF must share the script's connection: on a fresh one it says [1, 0]
    at once although the write before it is not on disk."""
    node = nodes[0]
    probe = harness.keys.tmp("durable-probe")
    if isinstance(harness.redis, RedisCluster):  # the master that holds the probe's slot
        await harness.redis.initialize()
        port = harness.redis.get_node_from_key(probe).port
        node = next(n for n in nodes if n.connection_pool.connection_kwargs["port"] == port)
    writer, other = node.client(), node.client()
    try:
        await writer.set(probe, "1", px=5000)
        assert list(await other.execute_command("WAITAOF", 1, 0, 200)) == [1, 0]
        assert list(await writer.execute_command("WAITAOF", 1, 0, 200)) == [0, 0]
    finally:
        await writer.aclose()
        await other.aclose()
