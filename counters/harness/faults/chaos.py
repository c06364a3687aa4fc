"""The chaos loop: at random moments (seeded), kill -9 persisters (some while they drain a
backlog), restart Postgres, kill -9 Valkey, kill -9 the service, rebuild a range that is
still receiving events, and lose all of Redis (FLUSHALL, or kill -9 and a restart with the
AOF deleted) after recording the last persisted point (counters/harness/faults/loss.py).
A monitor notices any process that died on its own (a crash is a finding) and restarts it so
the run goes on."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from counters.core.buckets import MINUTE_MS, format_ts
from counters.harness.faults.cluster import Cluster, Log, Proc, log_tail, now_ms, poll_until
from counters.harness.faults.driver import Driver
from counters.harness.faults.loss import Loss, persisted_state, raw_ids
from lua.client import RedisClient, open_redis
from lua.keys import ProjectKeys

ALL_KINDS = ("persister", "valkey", "postgres", "rebuild", "service", "redis_loss")
WEIGHTS = {
    "persister": 4,
    "valkey": 3,
    "postgres": 2,
    "rebuild": 2,
    "service": 1,
    "redis_loss": 1,
}
PROCESS_KINDS = {"persister", "service"}
"""Faults that kill and restart our processes themselves (the monitor stands aside)."""


@dataclass
class Chaos:
    cluster: Cluster
    driver: Driver
    rng: random.Random
    n_faults: int
    kinds: tuple[str, ...]
    log: Log = print
    caps: dict[str, int] = field(default_factory=dict)
    """At most this many faults of a kind (e.g. one redis_loss in the short form)."""
    losses: list[Loss] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while processes are killed and restarted on purpose (the monitor stands aside)."""
    t0: float = field(default_factory=time.monotonic)

    def failure(self, text: str) -> None:
        self.failures.append(text)
        self.log("chaos: FAILURE " + text)

    def plan(self) -> list[tuple[int, str]]:
        """(acknowledged-events threshold, kind) for every fault: each kind at least once when
        there are enough faults, thresholds spread over 5..85% of the events."""
        kinds = list(self.kinds)
        if not kinds or self.n_faults <= 0:
            return []
        if self.n_faults >= len(kinds):
            picks = list(kinds)
            extra = [k for k in kinds if self.caps.get(k, self.n_faults) > 1]
            for _ in range(self.n_faults - len(kinds)):
                if not extra:
                    break
                k = self.rng.choices(extra, [WEIGHTS[x] for x in extra])[0]
                picks.append(k)
                if picks.count(k) >= self.caps.get(k, self.n_faults):
                    extra.remove(k)
        else:
            picks = self.rng.sample(kinds, self.n_faults)
        self.rng.shuffle(picks)
        total = self.driver.cfg.events
        thresholds = sorted(int(self.rng.uniform(0.05, 0.85) * total) for _ in picks)
        return list(zip(thresholds, picks, strict=True))

    async def run(self) -> None:
        plan = self.plan()
        self.log("chaos: plan " + ", ".join(f"{k}@{at}" for at, k in plan))
        for i, (at, kind) in enumerate(plan, 1):
            while self.driver.acked_events < at and not self.driver.done.is_set():
                await asyncio.sleep(0.05)
            started = time.monotonic()
            async with self.lock if kind in PROCESS_KINDS else contextlib.nullcontext():
                what = await getattr(self, "_" + kind)()
            self.counts[kind] += 1
            line = (
                f"[+{started - self.t0:6.1f}s] fault {i}/{len(plan)} {kind}: {what}"
                f" ({time.monotonic() - started:.1f}s, {self.driver.acked_events} acked)"
            )
            self.timeline.append(line)
            self.log("chaos: " + line)

    # -- the faults -----------------------------------------------------------------------

    def _kill(self, p: Proc) -> None:
        rc = p.exited()
        if rc is not None:
            self.failure(f"{p.name} had exited on its own (code {rc}):\n{log_tail(p.log_path)}")
        p.kill()

    async def _persister(self) -> str:
        procs = self.cluster.persisters
        if self.rng.random() < 0.5:
            victims = [self.rng.choice(procs)]
            what = f"kill -9 {victims[0].name}"
        else:
            what = await self._stall_then_resume(procs)
            victims = list(procs)
        for p in victims:
            self._kill(p)
        down = self.rng.uniform(0, 1.0)
        await asyncio.sleep(down)  # how long it stays dead (fault shape, not a wait)
        for p in victims:
            p.start()

        async def ready() -> bool:
            return all(self.cluster.persister_ready(p) for p in victims)

        # the next fault waits until they are up (a persister started while Postgres is down
        # exits at once, by design: its supervisor restarts it)
        up, _ = await poll_until(ready, bool, timeout=30)
        return f"{what}, restarted after {down:.2f}s{'' if up else ' (not up within 30s)'}"

    async def _stall_then_resume(self, procs: list[Proc]) -> str:
        """SIGSTOP every persister until a backlog builds, SIGCONT, and return as soon as one
        has committed something (it is draining), a few ms later: the caller kills them."""
        keys = ProjectKeys(self.cluster.prefix, self.cluster.project)
        redis: RedisClient = open_redis(self.cluster.redis_url)
        conn = await asyncpg.connect(self.cluster.database_url)
        try:

            async def rawn() -> int:
                return int(await redis.hget(keys.watermarks, "rawn") or 0)

            async def state() -> tuple[object, ...]:
                row = await conn.fetchrow(
                    "SELECT minute_until, late_applied, raw_stream_id, updated_at"
                    " FROM persist_state WHERE project = $1",
                    self.cluster.project,
                )
                return tuple(row) if row is not None else ()

            for p in procs:
                p.send(signal.SIGSTOP)
            before = await rawn()
            target = before + self.rng.randint(500, 4000)
            stalled = await poll_until(rawn, lambda n: n >= target, timeout=4)
            backlog = stalled[1]
            s0 = await state()
            for p in procs:
                p.send(signal.SIGCONT)
            moved, _ = await poll_until(state, lambda s: s != s0, timeout=10, interval=0.003)
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            return (
                f"stalled all persisters to a backlog of {backlog} raw events, resumed, kill -9"
                f" of all {'while draining' if moved else '(no commit seen within 10s)'}"
            )
        finally:
            for p in procs:
                p.send(signal.SIGCONT)
            await conn.close()
            await redis.aclose()

    async def _while_posting(self) -> str:
        """Half the time, waits (briefly) until a post is in flight and a little more, so the
        fault lands between a batch being applied and its acknowledgement."""
        if self.rng.random() < 0.5:
            return "at a random moment"

        async def in_flight() -> int:
            return self.driver.in_flight

        polled = await poll_until(in_flight, lambda n: n > 0, timeout=5, interval=0.002)
        hit, n = polled
        delay = self.rng.uniform(0, 0.2)
        await asyncio.sleep(delay)
        if not hit:
            return "(no post in flight within 5s)"
        return f"{delay * 1000:.0f} ms after {n} posts were in flight"

    async def _valkey(self) -> str:
        # of a split project on a cluster, the master of any of its shards
        shard = self.rng.choice(self.cluster.stored)
        self.cluster.valkey_target = shard
        try:
            when = await self._while_posting()
            pid = await asyncio.to_thread(self.cluster.kill_valkey)
            down = self.rng.uniform(0, 1.5)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.cluster.start_valkey)
        finally:
            self.cluster.valkey_target = ""
        of = f" (the master of shard {shard})" if len(self.cluster.stored) > 1 else ""
        return f"kill -9 Valkey pid {pid}{of} {when}, restarted after {down:.2f}s (AOF replayed)"

    async def _postgres(self) -> str:
        await asyncio.to_thread(self.cluster.stop_postgres)
        down = self.rng.uniform(0, 2.0)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.cluster.start_postgres)
        return f"Postgres stopped (fast) and restarted after {down:.2f}s"

    async def _service(self) -> str:
        svc = self.cluster.service
        assert svc is not None
        when = await self._while_posting()
        self._kill(svc)
        await asyncio.to_thread(self.cluster.start_service)
        return f"kill -9 of the service {when}, restarted"

    async def _rebuild(self) -> str:
        t = now_ms()
        start = t - t % MINUTE_MS - self.rng.randint(2, 55) * MINUTE_MS
        end = t - t % MINUTE_MS + MINUTE_MS
        args = ("--project", self.cluster.project, "--from", format_ts(start), "--to")
        to = format_ts(end) if self.rng.random() < 0.5 else str(end)
        began = time.monotonic()
        proc = await asyncio.to_thread(self.cluster.cli, "rebuild", *args, to)
        took = time.monotonic() - began
        if proc.returncode != 0:
            self.failure(
                f"rebuild --from {format_ts(start)} --to {to} exited {proc.returncode} after"
                f" {took:.1f}s:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        return f"rebuild {format_ts(start)}..{format_ts(end)} exit {proc.returncode} ({last})"

    async def _redis_loss(self) -> str:
        """All of Redis lost: FLUSHALL, or kill -9 and a restart with the AOF deleted. The
        persisted point is recorded around it (persist_state before, raw_events ids after)."""
        when = await self._while_posting()
        flush = self.rng.random() < 0.5

        async def state() -> dict[str, object]:
            return await persisted_state(self.cluster)

        _, before = await poll_until(state, lambda _: True, timeout=30)
        assert before is not None, "Postgres did not answer within 30s"
        self.driver.begin_loss()
        if flush:
            redis: RedisClient = open_redis(self.cluster.redis_url)
            try:
                await redis.flushall()
            finally:
                await redis.aclose()
            mode = "FLUSHALL"
        else:
            pid = await asyncio.to_thread(self.cluster.wipe_valkey)
            mode = f"kill -9 Valkey pid {pid}, AOF deleted, restarted empty"
        done = time.monotonic()
        self.driver.end_loss(done)

        async def ids() -> frozenset[str]:
            return await raw_ids(self.cluster)

        _, in_pg = await poll_until(ids, lambda _: True, timeout=30)
        assert in_pg is not None, "Postgres did not answer within 30s"
        _, after = await poll_until(state, lambda _: True, timeout=30)
        assert after is not None, "Postgres did not answer within 30s"
        loss = Loss(
            mode,
            done,
            max(int(str(before["minute_until"])), int(str(after["minute_until"]))),
            int(str(before["hour_until"])),
            int(str(before["day_until"])),
            int(str(before["late_applied"])),
            str(before["raw_stream_id"]),
            in_pg,
        )
        self.losses.append(loss)
        return (
            f"Redis total loss ({mode}) {when}; Postgres held minute_until"
            f" {format_ts(loss.minute_until)}, raw_stream_id {loss.raw_stream_id},"
            f" {len(in_pg)} raw events, of {self.driver.acked_events} acknowledged"
        )

    # -- the monitor ----------------------------------------------------------------------

    async def _restart_the_dead(self) -> None:
        for p in self.cluster.persisters:
            rc = p.exited()
            if rc is not None:
                self.failure(f"{p.name} exited on its own (code {rc}):\n{log_tail(p.log_path)}")
                p.start()
        svc = self.cluster.service
        if svc is not None and svc.exited() is not None:
            self.failure(
                f"the service exited on its own (code {svc.exited()}):\n{log_tail(svc.log_path)}"
            )
            await asyncio.to_thread(self.cluster.start_service)

    async def monitor(self, stop: asyncio.Event) -> None:
        """Restarts a process that died without the chaos loop killing it (and reports it)."""
        while not stop.is_set():
            if not self.lock.locked():
                async with self.lock:
                    await self._restart_the_dead()
            try:
                await asyncio.wait_for(stop.wait(), 0.3)
            except TimeoutError:
                pass
