"""Wire and storage models (msgspec) and event validation."""

from __future__ import annotations

from typing import Annotated

import msgspec

from counters.buckets import parse_ts
from counters.errors import Invalid

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


class IngestReply(msgspec.Struct):
    accepted: int
    duplicates: int


batch_decoder = msgspec.json.Decoder(list[EventIn])
event_decoder = msgspec.json.Decoder(EventIn)
raw_encoder = msgspec.msgpack.Encoder()
raw_decoder = msgspec.msgpack.Decoder(RawEvent)


def to_micros(value: float | None) -> int:
    """Value in integer millionths, rounded half to even."""
    return 0 if value is None else round(value * VALUE_SCALE)


def validate_events(
    events: list[EventIn], *, now_ms: int, max_age_ms: int, max_future_ms: int
) -> list[RawEvent]:
    """Checks what msgspec cannot (timestamps, byte lengths) and returns the events as they
    will be stored. Raises Invalid naming the first bad event's index and field."""
    oldest = now_ms - max_age_ms
    newest = now_ms + max_future_ms
    out: list[RawEvent] = []
    append = out.append
    for index, ev in enumerate(events):
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
                f"$[{index}].ts: older than max_event_age ({max_age_ms // 86_400_000} days)",
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
        value = ev.value
        append(
            RawEvent(
                ev.name,
                ts_ms,
                ev.id,
                dims,
                0 if value is None else round(value * VALUE_SCALE),
                ev.uid,
                now_ms,
            )
        )
    return out
