"""The StatsD / DogStatsD UDP listener of `counters serve` (setting statsd_listen).

Each worker binds the address with SO_REUSEPORT, so the kernel spreads datagrams over the
workers (by source address and port: one client socket always reaches the same worker).
A datagram is only queued when it arrives (datagram_received does no parsing); one task
per worker parses the queue in slices that give the event loop back every couple of
milliseconds, coalesces the lines of many datagrams into batches of up to BATCH_EVENTS
events per project, and hands each batch to a GroupCommitter built as the pixel's is
(api/pixel.build_committer): the project's events-per-second rate limit, uid hashing and
one ingest script call per batch, i.e. the same validation (counters/core/statsd.py calls
models.validate_events), caps and group commit as HTTP ingest.

UDP has no answer: every line not counted is counted in counters_statsd_rejected_total
{reason} (and logged, at most one WARNING per reason every LOG_EVERY seconds). With
MAX_IN_FLIGHT batches waiting on Redis, datagrams queue; past MAX_QUEUE_BYTES they are
dropped unread (queue_full), so a flood or an outage never grows memory without bound.
The projects of the settings are created in Postgres on their first line."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from api.group_commit import GroupCommitter, Hit
from api.pixel import build_committer
from api.state import AppState
from counters.core.config import parse_listen
from counters.core.errors import CountersError
from counters.core.models import RawEvent
from counters.core.statsd import PARSE_REASONS, StatsdRefusal, StatsdRules, line_events
from persist.db import PG_ERRORS
from persist.projects import ensure_project

log = logging.getLogger("counters.statsd")

BATCH_EVENTS = 1_000
"""Events (at most max_batch_events) after which the listener stops adding lines to a
batch; a counter line's events are never split."""
MAX_IN_FLIGHT = 4
"""Batches of one worker being applied at once."""
MAX_QUEUE_BYTES = 8 * 1024 * 1024
"""Datagram bytes one worker holds unparsed; past it new datagrams are dropped."""
SLICE_SECONDS = 0.002
"""Longest the parser holds the event loop before letting other tasks run."""
RECEIVE_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF asked for (the kernel caps it at net.core.rmem_max)."""
LOG_EVERY = 10.0
APPLY_REASONS = (
    "rate_limited",
    "name_cap",
    "event_name_cap",
    "dim_name_cap",
    "batch_too_complex",
    "redis_unavailable",
    "postgres_unavailable",
    "backlog_full",
    "queue_full",
    "internal",
)
"""Why a parsed line can still go uncounted (a refusal of the batch it was in)."""
REASONS = PARSE_REASONS + APPLY_REASONS

Line = tuple[str, list[RawEvent]]
"""A line's text (for the log) and its events."""


def statsd_socket(address: str) -> socket.socket:
    """A non-blocking UDP socket bound to `host:port` with SO_REUSEPORT (every worker binds
    the same address) and a large receive buffer; OSError naming the address when the
    address cannot be bound."""
    host, port = parse_listen(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:  # pragma: no cover - refused by the kernel: the default buffer
            pass
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"statsd_listen {address}: {exc.strerror}") from exc
    return sock


def _backend_reason(exc: BaseException) -> str:
    if isinstance(exc, (RedisError, RedisClusterException)):
        return "redis_unavailable"
    if isinstance(exc, PG_ERRORS):
        return "postgres_unavailable"
    return "internal"


class StatsdListener(asyncio.DatagramProtocol):
    """Receives datagrams, counts their lines through the group committer, and counts
    every line it does not count in statsd_rejected{reason}."""

    def __init__(self, state: AppState, committer: GroupCommitter) -> None:
        settings = state.settings
        self._state = state
        self._committer = committer
        self._rules = StatsdRules.of(
            settings.statsd_project, settings.statsd_projects, settings.max_batch_events
        )
        self._batch_events = max(1, min(BATCH_EVENTS, settings.max_batch_events))
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ensured: set[str] = set()
        self._logged: dict[str, float] = {}
        self._transport: asyncio.BaseTransport | None = None
        self._runner: asyncio.Task[None] | None = None
        metrics = state.metrics
        for reason in REASONS:  # every series exists from the start, at 0
            metrics.statsd_rejected.labels(reason)

    # -- receiving (no parsing here: the loop only queues) ---------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's is no asyncio.DatagramTransport subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._queued_bytes + len(data) > MAX_QUEUE_BYTES:
            self._refuse("queue_full", "", "the listener's queue is full; datagram dropped")
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._wake.set()

    def error_received(self, exc: Exception) -> None:  # pragma: no cover - ICMP errors
        log.debug("statsd socket error: %s", exc)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, address: str) -> None:
        """Binds the address (OSError when it cannot) and starts the parsing task."""
        sock = statsd_socket(address)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._runner = asyncio.create_task(self._run())
        log.info("statsd: listening on udp %s", address)

    async def close(self, timeout: float = 5.0) -> None:
        """Stops receiving, drops what is still queued, and waits (up to timeout seconds)
        for the batches being applied."""
        if self._transport is not None:
            self._transport.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # -- parsing and batching --------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batches: dict[str, list[Line]] = {}
                n = 0
                started = loop.time()
                while self._queue and n < self._batch_events:
                    data = self._queue.popleft()
                    self._queued_bytes -= len(data)
                    added, started = await self._parse(data, batches, started)
                    n += added
                for project, lines in batches.items():
                    await self._slots.acquire()
                    task = asyncio.create_task(self._commit(project, lines))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(0)

    async def _parse(
        self, data: bytes, batches: dict[str, list[Line]], started: float
    ) -> tuple[int, float]:
        """Adds the datagram's countable lines to batches (by project), refuses the rest,
        and lets other tasks run whenever it has held the loop SLICE_SECONDS since started
        (a 64 KB datagram is up to ~100 ms of parsing); returns the number of events added
        and when the current slice started."""
        state = self._state
        loop = asyncio.get_running_loop()
        now_ms = state.clock.now_ms()
        added = seen = 0
        for i, raw in enumerate(data.split(b"\n")):
            if i & 31 == 31 and loop.time() - started > SLICE_SECONDS:
                await asyncio.sleep(0)  # datagrams and requests get their turn
                started = loop.time()
            raw = raw.strip(b" \t\r")
            if not raw:
                continue
            seen += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._refuse("invalid_string", repr(raw[:200]), "the line is not UTF-8")
                continue
            try:
                project, events = line_events(text, self._rules, now_ms=now_ms, limits=state.limits)
            except StatsdRefusal as exc:
                self._refuse(exc.reason, text, exc.message)
                continue
            if events:
                batches.setdefault(project, []).append((text, events))
                added += len(events)
        if seen:
            state.metrics.statsd_lines.inc(seen)
        return added, started

    # -- applying --------------------------------------------------------------------------
    async def _commit(self, project: str, lines: list[Line]) -> None:
        try:
            try:
                await self._ensure(project)
            except Exception as exc:  # noqa: BLE001 - counted as the batch's refusal
                reason = exc.code if isinstance(exc, CountersError) else _backend_reason(exc)
                for text, _ in lines:
                    self._refuse(reason, text, f"project {project!r} not ready: {exc}")
                return
            await self._apply(project, lines)
        except Exception:  # pragma: no cover - a bug: logged, the batch's lines are lost
            log.exception("statsd: a batch of %d lines failed", len(lines))
            for text, _ in lines:
                self._refuse("internal", text, "unexpected error")
        finally:
            self._slots.release()

    async def _ensure(self, project: str) -> None:
        """The project exists in Postgres (once per worker and project)."""
        if project in self._ensured:
            return
        async with self._state.pool.acquire() as conn:
            await ensure_project(conn, project)
        self._ensured.add(project)

    async def _apply(self, project: str, lines: list[Line]) -> None:
        """Counts the lines in one group-committed batch; a batch refused as too complex
        for one script is split in halves and each tried again (each half is charged to
        the rate limit again)."""
        hits: list[Hit] = []
        spans: list[tuple[int, int]] = []
        for _, events in lines:
            start = len(hits)
            hits.extend(Hit(ev) for ev in events)
            spans.append((start, len(hits)))
        await self._committer.join_many(project, hits)
        again: list[Line] = []
        for line, (start, end) in zip(lines, spans, strict=True):
            outcome = next((o for o in map(self._outcome, hits[start:end]) if o is not None), None)
            if outcome is None:
                continue
            reason, message = outcome
            if reason == "batch_too_complex" and len(lines) > 1:
                again.append(line)
            else:
                self._refuse(reason, line[0], message)
        if again:
            half = len(again) // 2
            await self._apply(project, again[:half])
            await self._apply(project, again[half:])

    @staticmethod
    def _outcome(hit: Hit) -> tuple[str, str] | None:
        """(reason, message) when the hit was not counted, else None."""
        if hit.refusal is not None:
            return hit.refusal, hit.refusal
        error = hit.error
        if error is None:
            return None
        if isinstance(error, CountersError):
            return error.code, error.message
        return _backend_reason(error), f"{type(error).__name__}: {error}"

    def _refuse(self, reason: str, text: str, message: str) -> None:
        """Counts one line (or dropped datagram) not counted, and logs it (at most one
        WARNING per reason every LOG_EVERY seconds, the others at DEBUG)."""
        self._state.metrics.statsd_rejected.labels(reason).inc()
        now = time.monotonic()
        shown = text if len(text) <= 200 else text[:200] + "..."
        if now - self._logged.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._logged[reason] = now
            log.warning("statsd: line not counted (%s): %s: %r", reason, message, shown)
        else:
            log.debug("statsd: line not counted (%s): %s: %r", reason, message, shown)


async def start_statsd(state: AppState) -> StatsdListener | None:
    """The listener of the settings' statsd_listen, bound and running (None when the
    setting is unset); OSError when the address cannot be bound."""
    address = state.settings.statsd_listen
    if address is None:
        return None
    listener = StatsdListener(state, build_committer(state))
    await listener.start(address)
    return listener
