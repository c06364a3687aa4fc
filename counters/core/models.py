"""Wire and storage models (msgspec) and event validation."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated

import msgspec

from counters.core.buckets import DAY_MS, parse_ts
from counters.core.config import Settings
from counters.core.errors import Invalid

NAME_PATTERN = "^[a-z0-9_.-]{1,64}\\Z"
DIM_NAME_PATTERN = "^[a-z0-9_]{1,32}\\Z"
DIM_VALUE_PATTERN = "^[^\\x00-\\x1f\\x7f]{1,256}\\Z"
MAX_DIMS = 16
MAX_DIM_VALUE_BYTES = 256
MAX_ABS_VALUE = 1e9
"""Largest |value|: in millionths it stays exact as a float and a bucket's sum fits 64 bits."""
VALUE_SCALE = 1_000_000
"""Sums are kept as integer millionths: exact, order-independent, reproducible by rebuild."""

EventName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
DimName = Annotated[str, msgspec.Meta(pattern=DIM_NAME_PATTERN)]
DimValue = Annotated[str, msgspec.Meta(pattern=DIM_VALUE_PATTERN)]
Dims = Annotated[dict[DimName, DimValue], msgspec.Meta(max_length=MAX_DIMS)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Uid = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Value = Annotated[float, msgspec.Meta(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One event as a client sends it."""

    name: EventName
    ts: str | int | None = None
    id: EventId | None = None
    dims: Dims = msgspec.field(default_factory=dict)
    value: Value | None = None
    uid: Uid | None = None


class EventWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """EventIn as the ingest path decodes it: the same fields and types, with the string,
    length and range rules left to validate_events, which checks each distinct string once
    (msgspec's per-string regex was a third of the ingest path's Python time)."""

    name: str
    ts: str | int | None = None
    id: str | None = None
    dims: dict[str, str] = msgspec.field(default_factory=dict)
    value: float | None = None
    uid: str | None = None


class RawEvent(msgspec.Struct, array_like=True, frozen=True):
    """One accepted event as the raw log holds it (Redis stream, then Postgres)."""

    name: str
    ts: int
    """Event time, epoch ms."""
    id: str | None
    dims: dict[str, str]
    value: int
    """Value in millionths (0 when absent)."""
    uid: str | None
    received: int
    """Arrival time, epoch ms."""


class IngestReply(msgspec.Struct, omit_defaults=True):
    accepted: int
    duplicates: int
    replayed: bool = False
    """True when this is the stored reply of an earlier request with the same
    Idempotency-Key (nothing was counted this time)."""


batch_decoder = msgspec.json.Decoder(list[EventWire])
event_decoder = msgspec.json.Decoder(EventWire)
raw_encoder = msgspec.msgpack.Encoder()
"""Encodes a list of RawEvent as one raw-log stream entry (decode_raw_batch reads it)."""
_raw_batch_decoder = msgspec.msgpack.Decoder(list[RawEvent])


def decode_raw_batch(data: bytes) -> list[RawEvent]:
    """The events of one raw-log stream entry (raw_encoder.encode of a list of RawEvent)."""
    return _raw_batch_decoder.decode(data)


def to_micros(value: float | None) -> int:
    """Value in integer millionths, rounded half to even."""
    return 0 if value is None else round(value * VALUE_SCALE)


class EventLimits(msgspec.Struct, frozen=True):
    """How far from now an event's time may be; validate_events refuses events outside."""

    max_age_ms: int
    """Events older than now - max_age_ms are refused (ts_too_old)."""
    max_future_ms: int
    """Events later than now + max_future_ms are refused (ts_in_future)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLimits:
        """The limits the service applies (max_event_age_days, max_future_seconds)."""
        return cls(
            max_age_ms=settings.max_event_age_days * DAY_MS,
            max_future_ms=settings.max_future_seconds * 1000,
        )


class _Checked:
    """Strings already known to match one pattern (bounded: cleared when full)."""

    __slots__ = ("pattern", "seen", "limit")

    def __init__(self, pattern: str, limit: int = 100_000) -> None:
        self.pattern = re.compile(pattern)
        self.seen: set[str] = set()
        self.limit = limit

    def ok(self, text: str) -> bool:
        if text in self.seen:
            return True
        if self.pattern.match(text) is None:
            return False
        if len(self.seen) >= self.limit:
            self.seen.clear()
        self.seen.add(text)
        return True


_NAMES = _Checked(NAME_PATTERN, 10_000)
_DIM_NAMES = _Checked(DIM_NAME_PATTERN, 10_000)
_DIM_VALUES = _Checked(DIM_VALUE_PATTERN)


def _bad(index: int, field: str, problem: str) -> Invalid:
    return Invalid(f"$[{index}].{field}: {problem}")


def _check_strings(index: int, ev: EventIn | EventWire) -> None:
    """The per-string rules EventIn's schema states; raises Invalid naming the field."""
    if not _NAMES.ok(ev.name):
        raise _bad(index, "name", f"must match {NAME_PATTERN}")
    dims = ev.dims
    if len(dims) > MAX_DIMS:
        raise _bad(index, "dims", f"{len(dims)} dims; at most {MAX_DIMS}")
    for key, val in dims.items():
        if not _DIM_NAMES.ok(key):
            raise _bad(index, f"dims.{key}", f"dim names must match {DIM_NAME_PATTERN}")
        if not _DIM_VALUES.ok(val):
            if len(val) <= 256 and val:
                problem = "no control characters allowed"
            else:
                problem = "must be 1 to 256 characters"
            raise _bad(index, f"dims.{key}", problem)
    event_id = ev.id
    if event_id is not None and not 1 <= len(event_id) <= 128:
        raise _bad(index, "id", "must be 1 to 128 characters")
    uid = ev.uid
    if uid is not None and not 1 <= len(uid) <= 256:
        raise _bad(index, "uid", "must be 1 to 256 characters")
    value = ev.value
    if value is not None and not (math.isfinite(value) and abs(value) <= MAX_ABS_VALUE):
        raise _bad(index, "value", f"must be a number from -{MAX_ABS_VALUE:g} to {MAX_ABS_VALUE:g}")


def validate_events(
    events: Sequence[EventIn | EventWire],
    *,
    now_ms: int,
    limits: EventLimits,
) -> list[RawEvent]:
    """Checks every rule of EventIn's schema and what a schema cannot say (timestamps
    within limits of now_ms, byte lengths), and returns the events as they will be stored.
    Raises Invalid naming the first bad event's index and field."""
    max_age_ms = limits.max_age_ms
    max_future_ms = limits.max_future_ms
    oldest = now_ms - max_age_ms
    newest = now_ms + max_future_ms
    micros = to_micros
    out: list[RawEvent] = []
    append = out.append
    for index, ev in enumerate(events):
        _check_strings(index, ev)
        ts = ev.ts
        if ts is None:
            ts_ms = now_ms
        elif type(ts) is int:
            ts_ms = ts
        else:
            try:
                ts_ms = parse_ts(ts)
            except ValueError as exc:
                raise Invalid(f"$[{index}].ts: {exc}", code="invalid_ts") from exc
        if ts_ms < oldest:
            raise Invalid(
                f"$[{index}].ts: older than max_event_age ({max_age_ms // DAY_MS} days)",
                code="ts_too_old",
            )
        if ts_ms > newest:
            raise Invalid(
                f"$[{index}].ts: more than {max_future_ms // 1000} s in the future",
                code="ts_in_future",
            )
        dims = ev.dims
        for key, val in dims.items():
            if len(val) > 64 and len(val.encode()) > MAX_DIM_VALUE_BYTES:
                raise Invalid(
                    f"$[{index}].dims.{key}: longer than {MAX_DIM_VALUE_BYTES} bytes",
                    code="dim_too_long",
                )
        append(RawEvent(ev.name, ts_ms, ev.id, dims, micros(ev.value), ev.uid, now_ms))
    return out
