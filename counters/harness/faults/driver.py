"""The load driver: concurrent clients posting batches with unique event ids, retrying every
batch that was not acknowledged (same ids) until it is, re-sending some acknowledged ones
(they must count nothing), and a reader checking that a read never misses an acknowledged
event nor shows one that was never sent. Only acknowledged events enter the ground truth."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from counters.harness.faults.cluster import Log, now_ms

NAMES = ("click", "view", "conversion")
NAME_WEIGHTS = (6, 3, 1)
DIMS: dict[str, tuple[str, ...]] = {
    "source": ("google", "bing", "mail"),
    "country": ("DE", "FR", "US", "BR"),
    "device": ("mobile", "desktop"),
}
OPTIONAL_DIM = "device"
"""Left out of some events, so rollups over it (and cross-tabs) see only part of them."""

Event = tuple[str, str, int, tuple[tuple[str, str], ...], int, str | None]
"""(id, name, ts ms, dims as sorted (name, value) pairs, value in millionths, uid)."""


@dataclass(frozen=True)
class Span:
    """One acknowledged batch: its events are Driver.acked[lo:hi]."""

    first_post: float
    """time.monotonic() when its first attempt was sent."""
    created_ms: int
    """Wall clock (epoch ms) when the batch was made (hot events are within 1.5 s of it)."""
    lo: int
    hi: int
    acked_ms: int = 0
    """Wall clock when it was acknowledged (every attempt that applied it came before)."""


_json = msgspec.json.Encoder()
RECENT = 40
"""Acknowledged batches remembered for re-sending right after a Redis total loss."""


@dataclass
class DriverConfig:
    events: int
    clients: int = 8
    batch_min: int = 50
    batch_max: int = 500
    rate: float | None = None
    """Events per second over all clients (None: as fast as acknowledgements come)."""
    late_fraction: float = 0.15
    late_min_s: float = 120
    late_max_s: float = 3600
    resend_fraction: float = 0.03
    """Share of acknowledged batches posted again later (must come back all duplicates)."""
    check_resends: bool = True
    inner_dup_fraction: float = 0.03
    """Share of batches holding one event twice (counted once, reported as duplicate)."""
    uids: int = 5000
    no_uid_fraction: float = 0.05
    no_value_fraction: float = 0.1
    retry_cap_s: float = 1.0


@dataclass
class Batch:
    seq: int
    events: list[Event]
    body: bytes
    total: int
    """Events in the body, counting an in-batch repeat twice."""
    created_ms: int = 0
    attempts: int = 0
    first_post: float = 0.0
    resend: bool = False
    due: float = 0.0


@dataclass
class Driver:
    url: str
    ingest_key: str
    read_key: str
    project: str
    cfg: DriverConfig
    rng: random.Random
    run_id: str
    log: Log = print
    acked: list[Event] = field(default_factory=list)
    acked_by_name: Counter[str] = field(default_factory=Counter)
    posted_by_name: Counter[str] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    generated: int = 0
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds from post to 2xx of every acknowledged first attempt."""
    spans: list[Span] = field(default_factory=list)
    """Every acknowledged batch, in acknowledgement order (indexes into acked)."""
    reaccepted: list[tuple[float, list[Event], int]] = field(default_factory=list)
    """Re-sends after a Redis total loss that were accepted again (their first copy was
    lost with Redis): (when the re-send was posted, its events, how many were accepted).
    The verifier checks that no more were accepted than were at risk."""
    losses: int = 0
    loss_done_at: float | None = None
    """While a Redis total loss is under way: inf; after one: when Redis was empty."""
    acked_since_loss: Counter[str] = field(default_factory=Counter)
    """Per name, acknowledged events first posted after the last loss (the reader's floor)."""
    _pending: deque[Batch] = field(default_factory=deque)
    _recent: deque[Batch] = field(default_factory=lambda: deque(maxlen=RECENT))
    _seq: int = 0
    _next_slot: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acked_events(self) -> int:
        return len(self.acked)

    def latency_summary(self) -> str:
        """Median, 99th percentile and max of the 2xx latency of first attempts."""
        if not self.latencies:
            return "no acknowledged first attempts"
        xs = sorted(self.latencies)
        p50, p99 = xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        return (
            f"ack latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
            f" max {xs[-1] * 1000:.0f} ms"
        )

    def violation(self, text: str) -> None:
        self.stats["violations"] += 1
        if len(self.violations) < 200:
            self.violations.append(text)
        self.log("driver: VIOLATION " + text)

    # -- events ---------------------------------------------------------------------------

    def _event(self, t: int) -> tuple[Event, dict[str, Any]]:
        rng = self.rng
        cfg = self.cfg
        self._seq += 1
        eid = f"{self.run_id}-{self._seq}"
        name = rng.choices(NAMES, NAME_WEIGHTS)[0]
        if rng.random() < cfg.late_fraction:
            ts = t - int(rng.uniform(cfg.late_min_s, cfg.late_max_s) * 1000)
        else:
            ts = t - rng.randrange(0, 1500)
        dims = {d: rng.choice(vs) for d, vs in DIMS.items()}
        if rng.random() < 0.2:
            del dims[OPTIONAL_DIM]
        body: dict[str, Any] = {"id": eid, "name": name, "ts": ts, "dims": dims}
        micros = 0
        if rng.random() >= cfg.no_value_fraction:
            cents = rng.randrange(-2_000, 100_000)
            value = cents / 100
            body["value"] = value
            micros = round(value * 1_000_000)
        uid = None
        if rng.random() >= cfg.no_uid_fraction:
            uid = f"u{rng.randrange(cfg.uids)}"
            body["uid"] = uid
        return (eid, name, ts, tuple(sorted(dims.items())), micros, uid), body

    def _make_batch(self, n: int) -> Batch:
        t = now_ms()
        events: list[Event] = []
        bodies: list[dict[str, Any]] = []
        for _ in range(n):
            ev, body = self._event(t)
            events.append(ev)
            bodies.append(body)
        if self.rng.random() < self.cfg.inner_dup_fraction:
            bodies.insert(self.rng.randrange(len(bodies) + 1), self.rng.choice(bodies))
        self.generated += n
        for ev in events:
            self.posted_by_name[ev[1]] += 1
        self.stats["batches"] += 1
        return Batch(self.stats["batches"], events, _json.encode(bodies), len(bodies), t)

    def begin_loss(self) -> None:
        """Redis is about to lose everything: acknowledged events may go (the reader's floor
        drops to what is acknowledged after the loss)."""
        self.losses += 1
        self.loss_done_at = float("inf")
        self.acked_since_loss.clear()

    def end_loss(self, done_at: float) -> None:
        """Redis is empty since done_at (monotonic): later batches must all survive. The last
        acknowledged batches are posted again at once: those Postgres held must come back
        all duplicates (dedupe survived), the others are counted again, once."""
        self.loss_done_at = done_at
        if not self.cfg.check_resends:
            return
        for b in self._recent:
            again = Batch(b.seq, b.events, b.body, b.total, b.created_ms, resend=True)
            self.stats["resends_after_loss"] += 1
            self._pending.append(again)
        self._recent.clear()

    # -- clients --------------------------------------------------------------------------

    async def run(self) -> None:
        """Posts cfg.events events (and every retry and re-send) with cfg.clients clients."""
        self._next_slot = time.monotonic()
        limits = httpx.Limits(max_connections=self.cfg.clients + 2)
        headers = {"Authorization": f"Bearer {self.ingest_key}"}
        async with httpx.AsyncClient(
            base_url=self.url, timeout=30, limits=limits, headers=headers
        ) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.cfg.clients)))
        self.done.set()

    def _due(self) -> Batch | None:
        now = time.monotonic()
        for _ in range(len(self._pending)):
            b = self._pending.popleft()
            if b.due <= now:
                return b
            self._pending.append(b)
        return None

    async def _pace(self, n: int) -> None:
        if not self.cfg.rate:
            return
        now = time.monotonic()
        self._next_slot = max(self._next_slot, now - 1.0)  # no catch-up burst after a stall
        slot = self._next_slot
        self._next_slot += n / self.cfg.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while True:
            batch = self._due()
            if batch is None:
                if self.generated < self.cfg.events:
                    n = self.rng.randint(self.cfg.batch_min, self.cfg.batch_max)
                    await self._pace(n)
                    if self.generated >= self.cfg.events:
                        continue
                    batch = self._make_batch(min(n, self.cfg.events - self.generated))
                elif self._pending:
                    await asyncio.sleep(0.02)
                    continue
                else:
                    return
            await self._post(client, batch)

    def _retry(self, batch: Batch, retry_after: str | None = None) -> None:
        self.stats["retries"] += 1
        cap = self.cfg.retry_cap_s
        if retry_after and retry_after.isdigit():
            cap = min(cap, float(retry_after))
        wait = self.rng.uniform(0.05, max(0.05, min(cap, 0.1 * 2 ** min(batch.attempts, 6))))
        batch.due = time.monotonic() + wait
        self._pending.append(batch)

    async def _post(self, client: httpx.AsyncClient, batch: Batch) -> None:
        batch.attempts += 1
        self.stats["posts"] += 1
        self.in_flight += 1
        began = time.monotonic()
        if batch.attempts == 1:
            batch.first_post = began
        try:
            r = await client.post(
                "/v1/events", content=batch.body, headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            self.in_flight -= 1
            self.stats["transport_errors"] += 1
            self.stats[f"transport:{type(exc).__name__}"] += 1
            self._retry(batch)
            return
        self.in_flight -= 1
        if r.status_code == 503:
            self.stats["http_503"] += 1
            try:
                self.stats["503:" + r.json()["error"]["code"]] += 1
            except (ValueError, KeyError, TypeError):
                pass
            self._retry(batch, r.headers.get("retry-after"))
            return
        if r.status_code >= 500:
            self.stats[f"http_{r.status_code}"] += 1
            self.violation(f"batch {batch.seq}: HTTP {r.status_code} {r.text[:300]}")
            self._retry(batch)
            return
        if r.status_code != 200:
            self.stats[f"http_{r.status_code}"] += 1
            self.violation(f"batch {batch.seq}: HTTP {r.status_code} {r.text[:300]} (dropped)")
            return
        reply = r.json()
        accepted, duplicates = int(reply["accepted"]), int(reply["duplicates"])
        unique = len(batch.events)
        if batch.resend:
            self.stats["resends_acked"] += 1
            if self.losses and accepted > 0 and accepted + duplicates == batch.total:
                # its first copy went with Redis before Postgres had it: counted again, once.
                # All of it, or (a split project: each shard's part is its own raw-log entry,
                # copied on its own) some; verify checks that every re-accepted event was at
                # risk at a loss (accepted <= the batch's events at risk)
                self.stats["resends_reaccepted"] += 1
                self.reaccepted.append((began, batch.events, accepted))
            elif accepted != 0 or duplicates != batch.total:
                self.violation(
                    f"re-sent batch {batch.seq} ({batch.total} events, acknowledged before)"
                    f" answered accepted={accepted} duplicates={duplicates}"
                )
            return
        if batch.attempts == 1:
            self.latencies.append(time.monotonic() - began)
            expect = (unique, batch.total - unique)
            if (accepted, duplicates) != expect:
                self.violation(
                    f"batch {batch.seq}: first post answered accepted={accepted}"
                    f" duplicates={duplicates}, expected {expect}"
                )
        else:
            self.stats["acked_after_retry"] += 1
            self.stats["dups_on_retry"] += duplicates - (batch.total - unique)
            if accepted + duplicates != batch.total or accepted > unique:
                self.violation(
                    f"batch {batch.seq}: retry {batch.attempts} answered accepted={accepted}"
                    f" duplicates={duplicates} for {batch.total} events ({unique} unique)"
                )
        self.stats["acked_batches"] += 1
        lo = len(self.acked)
        self.acked.extend(batch.events)
        self.spans.append(Span(batch.first_post, batch.created_ms, lo, len(self.acked), now_ms()))
        self._recent.append(batch)
        after_loss = self.loss_done_at is not None and batch.first_post > self.loss_done_at
        for ev in batch.events:
            self.acked_by_name[ev[1]] += 1
            if after_loss:
                self.acked_since_loss[ev[1]] += 1
        if self.cfg.check_resends and self.rng.random() < self.cfg.resend_fraction:
            again = Batch(
                batch.seq, batch.events, batch.body, batch.total, batch.created_ms, resend=True
            )
            again.due = time.monotonic() + self.rng.uniform(0, 2)
            self.stats["resends"] += 1
            self._pending.append(again)

    # -- the reader -----------------------------------------------------------------------

    async def reader(self, start_ms: int, stop: asyncio.Event, interval: float = 0.25) -> None:
        """Invariant 2 while faults happen: a total read over the whole range is never below
        the events acknowledged before it was sent (once Redis lost everything: acknowledged
        and first posted after the loss), nor above the events ever posted."""
        headers = {"Authorization": f"Bearer {self.read_key}"}
        async with httpx.AsyncClient(base_url=self.url, timeout=30, headers=headers) as client:
            i = 0
            while not stop.is_set():
                name = NAMES[i % len(NAMES)]
                i += 1
                losses = self.losses
                lower = (self.acked_since_loss if losses else self.acked_by_name)[name]
                params = {
                    "name": name,
                    "grain": "minute",
                    "from": str(start_ms),
                    "excluding_current": "false",
                }
                try:
                    r = await client.get(f"/v1/projects/{self.project}/total", params=params)
                except httpx.TransportError:
                    self.stats["reads_failed"] += 1
                    r = None
                if r is not None and r.status_code == 200:
                    self.stats["reads_ok"] += 1
                    value = r.json()["value"]
                    upper = self.posted_by_name[name]
                    if losses != self.losses:
                        lower = 0  # Redis was lost while the read was under way
                    if not lower <= value <= upper:
                        self.violation(
                            f"read of {name} total = {value}; {lower} acknowledged before the"
                            f" read, {upper} ever posted"
                        )
                elif r is not None:
                    self.stats[f"reads_{r.status_code}"] += 1
                    if r.status_code != 503:
                        self.violation(f"read answered HTTP {r.status_code}: {r.text[:300]}")
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
