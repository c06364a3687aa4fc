"""One fault run, end to end: servers, driver and chaos together, then the verification.
Used by tests/test_faults.py (short form) and bench/faults.py (long form, and the default-
mode kill -9 loss measurement)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from counters.core.buckets import MINUTE_MS
from counters.harness.faults.chaos import ALL_KINDS, Chaos
from counters.harness.faults.cluster import Cluster, Log
from counters.harness.faults.driver import Driver, DriverConfig
from counters.harness.faults.findings import Findings
from counters.harness.faults.verify import verify


@dataclass
class FaultConfig:
    events: int = 30_000
    faults: int = 8
    seed: int | None = None
    clients: int = 8
    rate: float | None = 800.0
    persisters: int = 2
    kinds: tuple[str, ...] = ALL_KINDS
    durable_ack: bool = True
    grace_seconds: int = 1
    crosstabs: str = "source:country"
    uids: int = 5000
    late_fraction: float = 0.15
    check_resends: bool = True
    drain_timeout: float = 180.0
    keep: bool = False
    full_checks: bool = True
    max_losses: int | None = None
    """At most this many redis_loss faults (None: as the weights fall)."""
    redis_cluster: bool = False
    """Run on a 3-master embedded Valkey Cluster (the Valkey faults hit the master that
    holds the project's slot)."""
    shards: int = 1
    """Split the project into this many shards before the run (`counters projects shards
    P N --ids-now`): every check then covers all of them."""
    log: Log = print


@dataclass
class Report:
    seed: int
    events_acked: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    findings: Findings = field(default_factory=Findings)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Fault kinds left out because their command does not exist yet."""
    driver_stats: Counter[str] = field(default_factory=Counter)
    timeline: list[str] = field(default_factory=list)
    seconds: float = 0.0
    drive_seconds: float = 0.0

    @property
    def lost(self) -> int:
        return max(self.findings.lost, self.findings.raw_missing)

    @property
    def double(self) -> int:
        return max(self.findings.double, self.findings.raw_repeated)

    def all_failures(self) -> list[str]:
        return self.failures + self.findings.failures

    def loss_line(self) -> str:
        """What the Redis total losses cost, exactly (empty without one)."""
        f = self.findings
        if not f.losses:
            return ""
        return (
            f" redis_loss: at risk={f.at_risk} lost with Redis={f.lost_to_loss}"
            f" (re-sent and counted again {f.reaccepted}; uncounted until the rebuild"
            f" {f.uncounted}, rebuild rewrote {f.repaired} buckets, day in progress short"
            f" {f.in_progress_short})"
        )

    def summary_line(self) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.faults.items())) or "none"
        return (
            f"faults summary: events acknowledged={self.events_acked} faults=[{kinds}]"
            f" lost={self.lost} double-counted={self.double}{self.loss_line()}"
            f" failures={len(self.all_failures())} seed={self.seed}"
            f" duration={self.seconds:.0f}s (driving {self.drive_seconds:.0f}s,"
            f" drain {self.findings.drain_seconds:.1f}s)"
        )

    def details(self) -> str:
        s = self.driver_stats
        keys = sorted(k for k in s if k not in ("violations",))
        lines = [
            "driver: " + ", ".join(f"{k}={s[k]}" for k in keys),
            *self.timeline,
            *("note: " + n for n in self.notes + self.findings.notes),
            *("FAILURE: " + _clip(x) for x in self.all_failures()),
        ]
        return "\n".join(lines)


def _clip(text: str, lines: int = 25) -> str:
    """First and last lines of a long failure (log tails, tracebacks)."""
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return "\n".join(
        [*parts[:5], f"  [... {len(parts) - lines} lines ...]", *parts[-(lines - 5) :]]
    )


def _seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(1 << 32)


async def run_faults(cfg: FaultConfig) -> Report:
    """Drive cfg.events events through the service while the chaos loop injects cfg.faults
    faults, then verify everything. Never raises for a finding: it is in the report."""
    log = cfg.log
    report = Report(seed=_seed(cfg.seed))
    log(f"faults: seed {report.seed} (re-run with --seed {report.seed})")
    master = random.Random(report.seed)
    drive_rng = random.Random(master.getrandbits(64))
    chaos_rng = random.Random(master.getrandbits(64))
    began = time.monotonic()
    cluster = Cluster(
        durable_ack=cfg.durable_ack,
        grace_seconds=cfg.grace_seconds,
        persisters=cfg.persisters,
        crosstabs=cfg.crosstabs,
        keep=cfg.keep,
        redis_cluster=cfg.redis_cluster,
        shards=cfg.shards,
        log=log,
    )
    try:
        await asyncio.to_thread(cluster.start)
        kinds = tuple(cfg.kinds)
        if "rebuild" in kinds and not await asyncio.to_thread(cluster.has_command, "rebuild"):
            report.skipped.append("rebuild")
            report.notes.append("`counters rebuild` does not exist yet: rebuild faults skipped")
            log("faults: note: " + report.notes[-1])
            kinds = tuple(k for k in kinds if k != "rebuild")
        driver = Driver(
            cluster.url,
            cluster.ingest_key,
            cluster.read_key,
            cluster.project,
            DriverConfig(
                events=cfg.events,
                clients=cfg.clients,
                rate=cfg.rate,
                uids=cfg.uids,
                late_fraction=cfg.late_fraction,
                check_resends=cfg.check_resends,
            ),
            drive_rng,
            uuid.uuid4().hex[:8],
            log,
        )
        caps = {} if cfg.max_losses is None else {"redis_loss": cfg.max_losses}
        chaos = Chaos(cluster, driver, chaos_rng, cfg.faults, kinds, log, caps)
        t0 = time.time_ns() // 1_000_000
        range_start = t0 - int(driver.cfg.late_max_s * 1000) - 2 * MINUTE_MS
        range_start -= range_start % MINUTE_MS
        stop = asyncio.Event()
        monitor = asyncio.create_task(chaos.monitor(stop))
        reader = asyncio.create_task(driver.reader(range_start, stop))
        drive = asyncio.create_task(driver.run())
        drive_began = time.monotonic()
        expected = cfg.events / cfg.rate if cfg.rate else cfg.events / 1000
        try:
            await chaos.run()
            await asyncio.wait_for(asyncio.shield(drive), timeout=3 * expected + 300)
        except TimeoutError:
            report.failures.append(
                f"the driver did not get every batch acknowledged within {3 * expected + 300:.0f}s"
                f" ({driver.acked_events} of {cfg.events} acknowledged)"
            )
            log("faults: FAILURE " + report.failures[-1])
        finally:
            report.drive_seconds = time.monotonic() - drive_began
            stop.set()
            drive.cancel()
            await asyncio.gather(drive, monitor, reader, return_exceptions=True)
            report.faults = chaos.counts
            report.failures.extend(chaos.failures)
            report.timeline = chaos.timeline
        for v in driver.violations:
            report.failures.append("driver: " + v)
        report.driver_stats = driver.stats
        report.notes.append(driver.latency_summary())
        report.events_acked = driver.acked_events
        log(
            f"faults: driving done in {report.drive_seconds:.1f}s: {driver.acked_events} events"
            f" acknowledged, faults {dict(chaos.counts)}"
        )
        for p in cluster.persisters:
            if not p.running():
                p.start()
        report.findings = await verify(
            cluster,
            driver.acked,
            range_start,
            log,
            drain_timeout=cfg.drain_timeout,
            full=cfg.full_checks,
            losses=chaos.losses,
            spans=driver.spans,
            reaccepted=driver.reaccepted,
        )
    finally:
        await asyncio.to_thread(cluster.close)
        report.seconds = time.monotonic() - began
    log(report.details())
    log(report.summary_line())
    return report


@dataclass
class LossReport:
    seed: int
    events_acked: int
    lost_raw: int
    lost_counted: int
    double: int
    timeline: list[str]
    failures: list[str]

    def line(self) -> str:
        return (
            f"kill -9 Valkey, durable_ack off (appendfsync everysec): {self.events_acked} events"
            f" acknowledged, lost from the raw log {self.lost_raw}, lost from the counts"
            f" {self.lost_counted}, double-counted {self.double}, seed {self.seed}"
        )


async def run_kill_redis_default(
    *, seconds: float = 20.0, rate: float = 2000.0, seed: int | None = None, log: Log = print
) -> LossReport:
    """Steady traffic at `rate` events/s for `seconds` while Valkey (appendfsync everysec, no
    durable acknowledgement) is killed with SIGKILL once and restarted: how many events that
    got a 2xx are gone afterwards?"""
    cfg = FaultConfig(
        events=int(seconds * rate),
        faults=1,
        seed=seed,
        rate=rate,
        persisters=1,
        kinds=("valkey",),
        durable_ack=False,
        late_fraction=0.0,
        check_resends=False,
        full_checks=False,
        log=log,
    )
    report = await run_faults(cfg)
    f = report.findings
    return LossReport(
        report.seed,
        report.events_acked,
        f.raw_missing,
        f.lost,
        max(f.double, f.raw_repeated),
        report.timeline,
        report.all_failures(),
    )
