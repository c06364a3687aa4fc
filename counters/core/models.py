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

FORBIDDEN_CHARS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ud800-\\udfff"
"""What no string of an event may hold (a regex character-class body): NUL and the C0
controls, DEL, the C1 controls (U+0080-U+009F, incl. NEL U+0085), the line and paragraph
separators U+2028/U+2029, and surrogates (a lone one cannot be encoded as UTF-8). Postgres
`text` refuses NUL; the others break logs, CSV exports and line-based tools."""
NAME_PATTERN = "^[a-z0-9_.-]{1,64}\\Z"
DIM_NAME_PATTERN = "^[a-z0-9_]{1,32}\\Z"
_NAME_OUTSIDE = re.compile(r"[^a-z0-9_.-]+")
_DIM_NAME_OUTSIDE = re.compile(r"[^a-z0-9_]+")


def normalize_name(raw: str) -> str:
    """The event name a foreign client's name becomes (StatsD, PostHog, Segment): lowercase,
    each run outside `[a-z0-9_.-]` one `_`, at most 64 characters (`Order Completed` ->
    `order_completed`); empty when raw is."""
    return _NAME_OUTSIDE.sub("_", raw.lower())[:64]


def normalize_dim_name(raw: str) -> str:
    """The dim name a foreign property or tag key becomes: lowercase, each run outside
    `[a-z0-9_]` one `_`, at most 32 characters."""
    return _DIM_NAME_OUTSIDE.sub("_", raw.lower())[:32]


DIM_VALUE_PATTERN = f"^[^{FORBIDDEN_CHARS}]{{1,256}}\\Z"
EVENT_ID_PATTERN = f"^[^{FORBIDDEN_CHARS}]{{1,128}}\\Z"
UID_PATTERN = f"^[^{FORBIDDEN_CHARS}]{{1,256}}\\Z"
_FORBIDDEN_RE = re.compile(f"[{FORBIDDEN_CHARS}]")
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
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=EVENT_ID_PATTERN)]
Uid = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=UID_PATTERN)]
Value = Annotated[float, msgspec.Meta(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


def is_clean_text(text: str) -> bool:
    """True when text holds none of FORBIDDEN_CHARS (the rule every string of an event and
    every read filter value follows; lengths are checked separately)."""
    return _FORBIDDEN_RE.search(text) is None


def forbidden_char(text: str) -> str | None:
    """The first forbidden character of text as `U+XXXX`, or None when it is clean."""
    found = _FORBIDDEN_RE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


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
_EVENT_ID_MATCH = re.compile(EVENT_ID_PATTERN).match
_UID_MATCH = re.compile(UID_PATTERN).match


def _bad(index: int, field: str, problem: str, code: str | None = None) -> Invalid:
    safe = field.encode("utf-8", "backslashreplace").decode()  # a dim name may hold anything
    return Invalid(f"$[{index}].{safe}: {problem}", code=code)


def _bad_text(index: int, field: str, text: str, most: int) -> Invalid:
    """Invalid for a string that failed its pattern: a forbidden character, else its length."""
    char = forbidden_char(text)
    if char is not None:
        return _bad(
            index,
            field,
            f"{char} is not allowed (no control characters, U+2028/U+2029 or surrogates)",
            "invalid_string",
        )
    return _bad(index, field, f"must be 1 to {most} characters")


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
            raise _bad_text(index, f"dims.{key}", val, 256)
    # id and uid are mostly distinct per event (no memo): an ASCII string is clean exactly
    # when it is printable (no C0, no DEL), a C-speed test; others go through the regex.
    event_id = ev.id
    if event_id is not None and not (
        event_id.isprintable() and 0 < len(event_id) <= 128
        if event_id.isascii()
        else _EVENT_ID_MATCH(event_id) is not None
    ):
        raise _bad_text(index, "id", event_id, 128)
    uid = ev.uid
    if uid is not None and not (
        uid.isprintable() and 0 < len(uid) <= 256 if uid.isascii() else _UID_MATCH(uid) is not None
    ):
        raise _bad_text(index, "uid", uid, 256)
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
