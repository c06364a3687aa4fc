"""counters on a real 3-master Valkey Cluster (its own, started here): found by itself,
projects spread over the masters and read together, and a master killed and restarted
with nothing acknowledged lost.

The suite as a whole also runs against a cluster (COUNTERS_TEST_REDIS_CLUSTER=1; `make
test` runs the e2e and fault short forms that way too)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest
import pytest_asyncio
import uvloop
from redis.asyncio import Redis, RedisCluster

from counters.core.buckets import HOUR_MS, MINUTE_MS
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.shards import shard_project
from counters.embedded import (
    cluster_nodes,
    ensure_valkey_cluster,
    kill_cluster_node,
    stop_valkey_cluster,
)
from counters.harness.placement import shard_masters, spread_fraction, spread_project
from counters.services import resolve_settings
from lua import Scripts
from lua.client import REDIS_ERRORS, RedisClient, cluster_enabled, open_redis
from lua.keys import ProjectKeys
from persist.projects import create_key, ensure_project
from persist.shards import set_shards
from tests.support import T0, ApiClient, Harness, InProcessApp, project_api, wait_for

NOW = 1_776_000_000_000 - 1_776_000_000_000 % HOUR_MS + 30 * MINUTE_MS


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("cluster")
    ensure_valkey_cluster(data_dir)
    try:
        yield data_dir
    finally:
        stop_valkey_cluster(data_dir)


@pytest.fixture(scope="module")
def cluster_url(cluster_dir: Path) -> str:
    return ensure_valkey_cluster(cluster_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def credis(cluster_url: str) -> AsyncIterator[RedisClient]:
    client = open_redis(cluster_url)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def csettings(settings: Settings, cluster_url: str) -> Settings:
    return msgspec.structs.replace(settings, redis_url=cluster_url, redis_cluster="on")


def _master_of(redis: RedisClient, prefix: str, project: str) -> int:
    assert isinstance(redis, RedisCluster)
    return redis.get_node_from_key(ProjectKeys(prefix, project).watermarks).port


async def _projects_on_each_master(
    redis: RedisClient, pool: asyncpg.Pool, prefix: str
) -> list[str]:
    """One fresh project per master (names drawn until each master holds one)."""
    assert isinstance(redis, RedisCluster)
    by_port: dict[int, str] = {}
    while len(by_port) < len(redis.get_primaries()):
        name = "cl" + uuid.uuid4().hex[:10]
        by_port.setdefault(_master_of(redis, prefix, name), name)
    async with pool.acquire() as conn:
        for name in by_port.values():
            await ensure_project(conn, name)
    return list(by_port.values())


def test_a_cluster_is_found_by_itself(cluster_url: str, settings: Settings) -> None:
    assert cluster_enabled(cluster_url) is True
    resolved = resolve_settings(
        msgspec.structs.replace(settings, redis_url=cluster_url, redis_cluster="auto")
    )
    assert resolved.redis_cluster == "on"
    if not cluster_enabled(settings.redis_url or ""):
        plain = resolve_settings(msgspec.structs.replace(settings, redis_cluster="auto"))
        assert plain.redis_cluster == "off"
    assert cluster_enabled("redis://127.0.0.1:9/0", timeout=0.5) is None


async def test_projects_on_three_masters_read_as_one(
    csettings: Settings, credis: RedisClient, pool: asyncpg.Pool
) -> None:
    projects = await _projects_on_each_master(credis, pool, csettings.key_prefix)
    assert len(projects) == 3
    async with pool.acquire() as conn:
        ingest = [await create_key(conn, p, "ingest") for p in projects]
        both = await create_key(conn, projects, "read")
    s = msgspec.structs.replace(csettings, max_event_age_days=200, raw_retention_days=400)
    base = NOW - 2 * HOUR_MS
    async with InProcessApp(s, ManualClock(NOW)) as app:
        for k, project in enumerate(projects):
            events = [
                {"name": "pv", "ts": base + i * 7_000, "uid": f"u{i}", "value": 1.5}
                for i in range(100 * (k + 1))
            ]
            await ApiClient(app, project, ingest[k], both).post(events)
        await app.persist(projects[0])  # one project's history in Postgres, the others hot
        assert app.client is not None
        params = {
            "project": projects,
            "name": "pv",
            "precision": "1h",
            "from": str(base),
            "to": str(base + 2 * HOUR_MS),
        }
        auth = {"Authorization": f"Bearer {both}"}
        counts = (await app.client.get("/v1/series", params=params, headers=auth)).json()
        assert [s["total"] for s in counts["series"]] == [100, 200, 300]
        assert [p["total"] for p in counts["union"]] == [600], counts
        sums = (
            await app.client.get("/v1/series", params={**params, "measure": "sum"}, headers=auth)
        ).json()
        assert [s["total"] for s in sums["series"]] == [150.0, 300.0, 450.0]
        uniq = (
            await app.client.get(
                "/v1/series", params={**params, "measure": "uniques"}, headers=auth
            )
        ).json()
        assert all(
            abs(s["total"] - n) <= 5 for s, n in zip(uniq["series"], (100, 200, 300), strict=True)
        )
        # each project's uids are keyed by its own secret, so u0..u99 of the three are
        # different people: the union of the sketches of three masters holds all 600
        assert len(uniq["union"]) == 1 and abs(uniq["union"][0]["total"] - 600) <= 12, uniq


async def test_a_master_killed_and_restarted_loses_nothing_acknowledged(
    csettings: Settings, credis: RedisClient, pool: asyncpg.Pool, cluster_dir: Path
) -> None:
    victim, bystander, _ = await _projects_on_each_master(credis, pool, csettings.key_prefix)
    scripts = Scripts(credis)
    durable = msgspec.structs.replace(csettings, durable_ack=True)
    hv = Harness.build(durable, credis, pool, scripts, victim)
    hb = Harness.build(durable, credis, pool, scripts, bystander)
    index = next(
        n.index
        for n in cluster_nodes(cluster_dir)
        if n.port == _master_of(credis, csettings.key_prefix, victim)
    )
    acked = {victim: 0, bystander: 0}

    async def post(h: Harness, n: int) -> bool:
        ts = h.clock.now_ms() - 1000
        try:
            reply = await h.ingest(*[{"name": "click", "ts": ts} for _ in range(n)])
        except Unavailable:
            return False
        acked[h.project] += reply.accepted
        return True

    assert await post(hv, 5) and await post(hb, 5)
    kill_cluster_node(cluster_dir, index)
    # the victim's master is down: its writes answer 503 (nothing applied), the other
    # masters' projects go on
    assert not await post(hv, 3)
    assert await post(hb, 4)
    # the persister sits the victim out (one master's outage is that project's) and goes
    # on with the bystander, whose master is up
    with pytest.raises(Unavailable) as down:
        await hv.persist()
    assert hv.persister._own_outage(down.value)
    await hb.persist()
    await asyncio.to_thread(ensure_valkey_cluster, cluster_dir)

    async def posted() -> bool:
        return await post(hv, 7)

    await wait_for(posted, bool, timeout=20, what="writes to the restarted master")
    assert acked[victim] == 12 and acked[bystander] == 9
    minute = T0 - 1000 - (T0 - 1000) % MINUTE_MS
    for h in (hv, hb):
        h.clock.advance(HOUR_MS)
        await h.persist()
        await h.persist()
        assert await h.total("click", minute, minute + MINUTE_MS) == acked[h.project]


def test_shards_spread_over_the_masters_by_their_hash_tags(credis: RedisClient) -> None:
    """A shard's slot is its hash tag's ({p:P}, {p:P:1}, {p:P:2}), so where 3 shards sit
    depends on the name: on 3 masters (a third of the slots each) for about 27% of names
    (more than the 2/9 of independent slots: the CRC16 of `P:1` and `P:2` differ by the
    same bits whatever P is) and all on one master for about 5%. A split spreads the load
    over the masters only for a name chosen to (counters.harness.placement)."""
    assert isinstance(credis, RedisCluster)
    names = [f"p{i}" for i in range(3000)]
    assert 0.22 < spread_fraction(credis, names, 3) < 0.32  # 0.267 on the embedded map
    alone = sum(len(set(shard_masters(credis, n, 3))) == 1 for n in names) / len(names)
    assert 0.02 < alone < 0.09  # 0.046
    name = spread_project(credis, "p", 3)
    assert sorted(shard_masters(credis, name, 3)) == sorted(n.port for n in credis.get_primaries())


async def test_a_split_project_loses_one_master_only_for_its_shard(
    csettings: Settings, credis: RedisClient, pool: asyncpg.Pool, cluster_dir: Path
) -> None:
    """A project split into 3 shards on the 3 masters: with one master killed, the batches
    routed (round robin) to its shard answer 503 and the others are accepted; reads answer
    503 rather than a part of the total; after its restart nothing acknowledged is lost,
    shard by shard."""
    assert isinstance(credis, RedisCluster)
    project = spread_project(credis, "cs" + uuid.uuid4().hex[:8] + "n", 3)
    ports = shard_masters(credis, project, 3)
    s = msgspec.structs.replace(csettings, durable_ack=True, max_event_age_days=30)
    acked = [0, 0, 0]
    async with project_api(s, pool, "", NOW, name=project) as c:
        assert c.app.client is not None
        async with pool.acquire() as conn:
            await set_shards(conn, project, 3, NOW, 0)
        await c.app.state["services"].shards.refresh()
        turn = 0

        async def post(n: int) -> int:
            """One batch without ids (the router's next shard in turn); its status."""
            nonlocal turn
            shard, turn = turn % 3, turn + 1
            events = [{"name": "click", "ts": NOW - 1000, "uid": f"u{i}"} for i in range(n)]
            r = await c.app.client.post(  # type: ignore[union-attr]
                "/v1/events", content=msgspec.json.encode(events), headers=c.ingest_h
            )
            if r.status_code == 200:
                acked[shard] += r.json()["accepted"]
            else:
                assert r.json()["error"]["code"] == "redis_unavailable", r.text
            return r.status_code

        assert [await post(10 + k) for k in range(3)] == [200, 200, 200]
        index = next(n.index for n in cluster_nodes(cluster_dir) if n.port == ports[1])
        kill_cluster_node(cluster_dir, index)
        assert [await post(20 + k) for k in range(3)] == [200, 503, 200]
        assert [await post(30 + k) for k in range(3)] == [200, 503, 200]
        r = await c.app.client.get(
            f"/v1/projects/{project}/total",
            params={"name": "click", "excluding_current": "false", "from": str(NOW - HOUR_MS)},
            headers=c.read_h,
        )
        assert r.status_code == 503, r.text
        assert acked == [10 + 20 + 30, 11, 12 + 22 + 32]
        await c.app.persist(project)  # shard 0's master is up: its persister goes on
        await asyncio.to_thread(ensure_valkey_cluster, cluster_dir)

        async def a_round() -> bool:
            return [await post(1) for _ in range(3)] == [200, 200, 200]

        await wait_for(a_round, bool, timeout=20, what="every shard accepting again")
        c.app.clock.advance(HOUR_MS)
        for _ in range(2):
            for k in range(3):
                await c.app.persist(shard_project(project, k))
        total = await c.get(
            "total", name="click", excluding_current="false", **{"from": str(NOW - HOUR_MS)}
        )
        assert total["value"] == sum(acked), (total, acked)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT project, count(*) AS n FROM raw_events WHERE project = ANY($1::text[])"
            " GROUP BY project",
            [shard_project(project, k) for k in range(3)],
        )
    assert {r["project"]: r["n"] for r in rows} == {
        shard_project(project, k): acked[k] for k in range(3)
    }

    async def module_client_back() -> bool:
        # the module's client held a connection to the killed process: its first call there
        # fails, then it connects to the restarted one
        try:
            return bool(await credis.ping(target_nodes=RedisCluster.PRIMARIES))  # type: ignore[call-arg]
        except REDIS_ERRORS:
            return False

    await wait_for(module_client_back, bool, timeout=20, what="the module's client reconnected")


async def _node_ids(redis: RedisClient, url: str) -> dict[int, tuple[Redis, str]]:
    """port -> (a plain client of that master, its node id)."""
    assert isinstance(redis, RedisCluster)
    password = urlsplit(url).password
    out: dict[int, tuple[Redis, str]] = {}
    for node in redis.get_primaries():
        client = Redis(host=node.host, port=node.port, password=password)
        out[node.port] = (client, (await client.execute_command("CLUSTER", "MYID")).decode())
    return out


async def test_a_batch_during_a_resharding_is_refused_whole(
    csettings: Settings, credis: RedisClient, pool: asyncpg.Pool, cluster_url: str
) -> None:
    """While the project's slot is MIGRATING to another master, a batch whose keys are not
    all on the source is refused as a whole (its keys are declared, so Valkey answers ASK,
    then TRYAGAIN at the target); nothing of it is applied, so the same batch sent again
    once the slot is stable counts once. (Undeclared, the script ran on the source and died
    at its first key missing there, the minute's uid sketch, after adding the counts: the
    503'd batch had been counted, and its retry counted it again.)"""
    assert isinstance(credis, RedisCluster)
    (project,) = (await _projects_on_each_master(credis, pool, csettings.key_prefix))[:1]
    h = Harness.build(csettings, credis, pool, Scripts(credis), project)
    ts = h.clock.now_ms() - 1000
    assert (await h.ingest({"name": "pv", "ts": ts, "id": "a"})).accepted == 1
    slot = credis.keyslot(h.keys.watermarks)
    source_port = _master_of(credis, csettings.key_prefix, project)
    nodes = await _node_ids(credis, cluster_url)
    source, source_id = nodes[source_port]
    target, target_id = next(v for p, v in nodes.items() if p != source_port)
    # the minute's hash exists on the source, its uid sketch does not
    batch = [{"name": "pv", "ts": ts, "uid": "u"} for i in range(3)]
    try:
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        with pytest.raises(Unavailable):
            await h.ingest(*batch)
        # the persister leaves the project alone until the slot is stable
        with pytest.raises(Unavailable, match="being resharded"):
            await h.persist()
    finally:
        await source.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        await target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        for client, _ in nodes.values():
            await client.aclose()
    assert (await h.ingest(*batch)).accepted == 3
    assert await h.total("pv", T0 - 10 * MINUTE_MS, T0 + MINUTE_MS) == 4
    h.clock.advance(HOUR_MS)
    await h.persist()
    assert await h.total("pv", T0 - 10 * MINUTE_MS, T0 + MINUTE_MS) == 4


async def test_ingest_declares_every_key_it_creates(
    csettings: Settings, credis: RedisClient, pool: asyncpg.Pool, cluster_url: str
) -> None:
    """Hot, late (over several days, with uids, ids and an idempotency key) and backfilled
    batches: every key a call creates in the project's slot is one it declared."""
    assert isinstance(credis, RedisCluster)
    (project,) = (await _projects_on_each_master(credis, pool, csettings.key_prefix))[:1]
    s = msgspec.structs.replace(csettings, dim_cardinality_cap=100, event_name_cap=50)
    h = Harness.build(s, credis, pool, Scripts(credis), project)
    declared: set[str] = set()
    call = h.ingestor._call

    async def spy(keys: ProjectKeys, args: list[object], names: list[str]) -> object:
        declared.update(names)
        return await call(keys, args, names)

    h.ingestor._call = spy  # type: ignore[method-assign]
    slot = credis.keyslot(h.keys.watermarks)
    node = credis.get_node_from_key(h.keys.watermarks)

    async def slot_keys() -> set[str]:
        found = await credis.execute_command(
            "CLUSTER", "GETKEYSINSLOT", slot, 100_000, target_nodes=node
        )
        return {k.decode() for k in found if k.decode().startswith(h.keys.base)}

    now = h.clock.now_ms()
    await h.ingest(*[{"name": "pv", "ts": now - 1000, "uid": f"u{i}"} for i in range(5)])
    h.clock.advance(HOUR_MS)
    await h.persist()
    before = await slot_keys()
    now = h.clock.now_ms()
    late = [
        {
            "name": "pv" if i % 2 else "buy",
            "ts": now - (i * 7_919_000) % (20 * 86_400_000) - 120_000,
            "uid": f"u{i % 40}",
            "id": f"e{i}",
            "value": 1.25,
            "dims": {"country": f"c{i % 5}"},
        }
        for i in range(300)
    ]
    await h.ingest(*late[:150])
    await h.ingest(*late[150:], {"name": "pv", "ts": now - 500, "uid": "hot"})
    created = await slot_keys() - before - {h.keys.watermarks, h.keys.raw}
    assert created and created <= declared, sorted(created - declared)[:10]


async def _race_a_restart(cluster_url: str, cluster_dir: Path, prefix: str) -> None:
    client = open_redis(cluster_url)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    scripts = Scripts(client)
    keys = [ProjectKeys(prefix, f"race{i}").rate_events for i in range(6)]
    odd: list[BaseException] = []
    failed = 0
    done = asyncio.Event()

    async def call(key: str) -> None:
        nonlocal failed
        while not done.is_set():
            try:
                await scripts.ratelimit(keys=[key], args=["1000.0", 1000, 1, ""])
            except REDIS_ERRORS:
                failed += 1
                await asyncio.sleep(0.005)
            except Exception as exc:  # what must never happen
                odd.append(exc)
                await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(call(k)) for k in keys for _ in range(3)]
    try:
        for node in cluster_nodes(cluster_dir):
            before = failed

            async def failing(before: int = before) -> bool:
                return failed > before

            kill_cluster_node(cluster_dir, node.index)
            await wait_for(failing, bool, what="calls to the killed master failing")
            await asyncio.to_thread(ensure_valkey_cluster, cluster_dir)
    finally:
        done.set()
        await asyncio.gather(*tasks)
        await client.aclose()
    assert failed > 0
    assert not odd, [f"{type(e).__name__}: {e}" for e in odd[:3]]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
# redis-py can leave the socket of a connection torn down mid-race to the garbage collector
# (a ResourceWarning, raised as an unraisable-exception warning): its own cleanup, not a
# failure of the call; what this test asserts is the type every failed call raises
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_calls_racing_a_master_restart_fail_as_redis_errors(
    cluster_url: str, cluster_dir: Path, csettings: Settings, loop: str
) -> None:
    """Script calls from many tasks while each master in turn is killed and restarted:
    every failure is a Redis error (a 503), never a transport-internal error escaping as a
    500 (the cluster client closes a node's connections while another task is connecting
    on one: an AttributeError on asyncio's loop, a RuntimeError on uvloop's, which the
    service runs on; both seen as HTTP 500s in the fault short form on the cluster)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_race_a_restart(cluster_url, cluster_dir, csettings.key_prefix))


def test_a_none_dereference_of_ours_is_not_taken_for_an_outage() -> None:
    """Only None dereferences raised inside redis-py or asyncio become ConnectionErrors."""
    from lua.client import _closed_under_us

    try:
        None.writelines  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert not _closed_under_us(exc)
    try:
        raise AttributeError("'Thing' object has no attribute 'x'")
    except AttributeError as exc:
        assert not _closed_under_us(exc)
