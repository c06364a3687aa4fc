"""Group commit for the pixel: concurrent hits of one project join one batch, and the batch
pays once for what each hit would have paid alone (the rate-limit charges of its keys and
of the project's events, in one script call; the uid hashing; the ingest script call).

A batch is a list of Hit records plus ONE future its waiters share (no future per request):
the batch writes each hit's outcome into its record, then completes the future. At most one
batch per project is collecting at a time, and up to `max_in_flight` are being applied."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from counters.core.errors import CountersError, Invalid
from counters.core.models import RawEvent
from counters.engines.ratelimit import Decision
from counters.engines.shards import ShardedIngestor

MAX_BATCHES_IN_FLIGHT = 4
"""Script calls one project may have in flight at once: while some wait on Redis, the next
batch is already collecting."""

RATE_LIMITED = "rate_limited"
"""The refusal of a hit over its key's rate limit (TooManyRequests' code)."""


class Hit:
    """One request's share of a batch. The request sets event (None: refused before the
    batch, it only joins to be charged to its key), bucket (the key's rate-limit bucket id,
    None: not charged) and refusal (why it was refused before the batch); the batch sets
    decision (the key charge), refusal `rate_limited` when the key is over its limit (it
    takes precedence over any earlier refusal) and error (what applying the event raised)."""

    __slots__ = ("bucket", "decision", "error", "event", "refusal")

    def __init__(
        self, event: RawEvent | None, bucket: str | None = None, refusal: str | None = None
    ) -> None:
        self.event = event
        self.bucket = bucket
        self.refusal = refusal
        self.decision: Decision | None = None
        self.error: BaseException | None = None


ChargeHits = Callable[[str, list[Hit]], Awaitable[None]]
"""Charges the hits of one batch (before anything is applied) to their keys' buckets and
the events of those that pass to the project's: sets each charged hit's decision, refusal
`rate_limited` on those over their key's limit, and raises (a CountersError, after marking
the hits) when the project's events bucket refused the batch's events."""
HashUids = Callable[[str, Sequence[RawEvent]], Awaitable[list[RawEvent]]]
"""The events with their uids replaced by the project's keyed hash, in the same order."""


class _BatchDone(asyncio.Future[None]):
    """The future a batch's waiters share. Cancelling one waiter (its request task) must not
    cancel it for the others, so cancel() is refused: a cancelled waiter is cancelled when
    the batch completes (the batch itself always completes)."""

    def cancel(self, msg: object = None) -> bool:
        return False


class _Batch:
    __slots__ = ("done", "hits")

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.done = _BatchDone(loop=asyncio.get_running_loop())


class GroupCommitter:
    """Joins concurrent hits of one project into batches: at most one batch is collecting at
    a time, and up to max_in_flight are being applied."""

    def __init__(
        self,
        ingestor: ShardedIngestor,
        max_in_flight: int = MAX_BATCHES_IN_FLIGHT,
        *,
        charge: ChargeHits | None = None,
        hash_uids: HashUids | None = None,
        counted: Callable[[str, int], None] | None = None,
    ) -> None:
        """charge: the rate-limit charge of a batch's hits, before anything is applied
        (what it raises goes to every hit still carrying an event); counted(project, n):
        told how many hits of a batch were counted."""
        self._ingestor = ingestor
        self._charge = charge
        self._hash_uids = hash_uids
        self._counted = counted
        self._max = max_in_flight
        self._pending: dict[str, _Batch] = {}
        self._collecting: set[str] = set()
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, project: str, event: RawEvent) -> None:
        """Returns once the event is counted (or raises what its batch raised)."""
        hit = Hit(event)
        await self.join(project, hit)
        if hit.error is not None:
            raise hit.error

    async def join(self, project: str, hit: Hit) -> None:
        """Adds the hit to the project's collecting batch and returns once that batch is
        done; the hit's fields then say what happened to it. Never raises what the batch
        raised (that is hit.error)."""
        batch = self._collecting_batch(project)
        batch.hits.append(hit)
        self._start(project)
        await batch.done

    async def join_many(self, project: str, hits: Sequence[Hit]) -> None:
        """join for several hits at once (the StatsD listener's coalesced datagrams): they
        go into the project's collecting batch together, with one wait for all of them."""
        batch = self._collecting_batch(project)
        batch.hits.extend(hits)
        self._start(project)
        await batch.done

    def _collecting_batch(self, project: str) -> _Batch:
        batch = self._pending.get(project)
        if batch is None:
            batch = self._pending[project] = _Batch()
        return batch

    def _start(self, project: str) -> None:
        """Starts a flush of the project's collecting batch unless one is collecting it or
        max_in_flight batches are being applied (a running flush takes it up next)."""
        in_flight = self._in_flight.get(project, 0)
        if project not in self._collecting and in_flight < self._max:
            self._collecting.add(project)
            self._in_flight[project] = in_flight + 1
            task = asyncio.create_task(self._flush(project))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, project: str) -> None:
        """Collects one batch, applies it, and goes on with what piled up meanwhile if no
        other batch is collecting it."""
        try:
            while True:
                await asyncio.sleep(0)  # let requests already parsed join this batch
                batch = self._pending.pop(project, None)
                self._collecting.discard(project)
                if batch is not None:
                    await self._apply(project, batch)
                if project not in self._pending or project in self._collecting:
                    return
                self._collecting.add(project)
        finally:
            left = self._in_flight[project] - 1
            if left:
                self._in_flight[project] = left
            else:
                del self._in_flight[project]

    async def _apply(self, project: str, batch: _Batch) -> None:
        """Charges, hashes and applies the batch's live events in one go; every hit's record
        is filled in and the batch's future completed, whatever happens."""
        hits = batch.hits
        targets = hits
        try:
            refusal: CountersError | None = None
            if self._charge is not None:
                try:
                    await self._charge(project, hits)
                except CountersError as exc:
                    refusal = exc
            live = [h for h in hits if h.event is not None and h.refusal is None]
            targets = live
            if live:
                if refusal is not None:
                    raise refusal
                events = [h.event for h in live if h.event is not None]
                if self._hash_uids is not None:
                    events = await self._hash_uids(project, events)
                refused: list[RawEvent] = []
                await self._ingestor.apply(project, events, refused=refused)
                if refused:  # over a name cap: refused alone, the rest is counted
                    over = {id(ev) for ev in refused}
                    for hit, ev in zip(live, events, strict=True):
                        if id(ev) in over:
                            hit.error = Invalid("over a per-day name cap", code="name_cap")
                if self._counted is not None:
                    self._counted(project, len(live) - len(refused))
        except BaseException as exc:  # noqa: BLE001 - handed to every hit it concerns
            for hit in targets:
                hit.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            batch.done.set_result(None)
