"""Events of the PostHog and Segment SDKs as counters events (pure mapping, no I/O).

Names are normalised (lowercase, runs outside `[a-z0-9_.-]` become `_`, 64 chars); string
properties become dims (names normalised the same way within `[a-z0-9_]`, 32 chars), bools
become the dims "true"/"false", other types are ignored; numeric revenue/value becomes the
value. Dims past MAX_DIMS or with a value counters cannot store are dropped and counted,
never a reason to lose the event."""

from __future__ import annotations

from typing import Any

from counters.core.models import (
    MAX_DIM_VALUE_BYTES,
    MAX_DIMS,
    EventWire,
    is_clean_text,
    normalize_dim_name,
    normalize_name,
)

POSTHOG_VALUE_KEYS = ("revenue", "$revenue", "value")
SEGMENT_VALUE_KEYS = ("revenue", "value")
POSTHOG_IGNORED = frozenset(
    {"$identify", "$create_alias", "$merge_dangerously", "$groupidentify", "$set", "$set_once"}
)
"""PostHog calls that describe people, not things that happened: not counted."""
SEGMENT_COUNTED = {"track": None, "page": "page", "screen": "screen"}
"""Segment message types counted (track: its `event`; page and screen: that name);
identify, group and alias are ignored."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class Mapped:
    """Events mapped from one SDK body, with what was dropped or ignored on the way."""

    def __init__(self) -> None:
        self.events: list[EventWire] = []
        self.dims_dropped = 0
        """Properties that would be dims but were past MAX_DIMS or not storable."""
        self.ignored = 0
        """Messages that are not events (identify, alias, ...)."""


def _dims(
    props: dict[str, Any], skip: tuple[str, ...], dollar: bool, out: Mapped
) -> dict[str, str]:
    dims: dict[str, str] = {}
    for key, raw in props.items():
        if key in skip or (not dollar and key.startswith("$")):
            continue
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, str):
            text = raw
        else:
            continue  # numbers, null, lists, objects: not dims
        name = normalize_dim_name(key)
        if (
            not name
            or not text
            or name in dims
            or len(dims) >= MAX_DIMS
            or len(text.encode()) > MAX_DIM_VALUE_BYTES
            or not is_clean_text(text)
        ):
            out.dims_dropped += 1
            continue
        dims[name] = text
    return dims


def _value(props: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if key in props:
            found = _number(props[key])
            if found is not None:
                return found
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    return str(value)


def _wire(name: str, ts: Any, id_: Any, dims: dict[str, str], value: Any, uid: Any) -> EventWire:
    stamp = ts if isinstance(ts, str | int) and not isinstance(ts, bool) else None
    return EventWire(normalize_name(name), stamp, _text(id_), dims, value, _text(uid))


def posthog_events(body: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The event objects of a PostHog capture body (`{"batch": [...]}`, a single event
    object or a JSON array) and the project key it carries (`api_key`, `token`, or the
    first event's `api_key`/`token`/`properties.token`), if any."""
    if isinstance(body, list):
        items, top = body, {}
    elif isinstance(body, dict):
        top = body
        items = body["batch"] if isinstance(body.get("batch"), list) else [body]
    else:
        raise ValueError("expected a JSON object or array")
    events = [e for e in items if isinstance(e, dict)]
    if len(events) != len(items):
        raise ValueError("every event must be a JSON object")
    key = top.get("api_key") or top.get("token")
    if not key and events:
        first = events[0]
        props = first.get("properties")
        token = props.get("token") if isinstance(props, dict) else None
        key = first.get("api_key") or first.get("token") or token
    return events, key if isinstance(key, str) else None


def map_posthog(events: list[dict[str, Any]]) -> Mapped:
    """counters events for PostHog events: event -> name, distinct_id -> uid, uuid -> id,
    timestamp -> ts, string properties without `$` -> dims, revenue/$revenue/value ->
    value. $identify, $set and the like are ignored."""
    out = Mapped()
    for ev in events:
        name = ev.get("event")
        if not isinstance(name, str):
            name = ""
        if name in POSTHOG_IGNORED:
            out.ignored += 1
            continue
        props = ev.get("properties")
        props = props if isinstance(props, dict) else {}
        uid = ev.get("distinct_id") or props.get("distinct_id") or props.get("$distinct_id")
        dims = _dims(props, ("distinct_id", "token", *POSTHOG_VALUE_KEYS), False, out)
        value = _value(props, POSTHOG_VALUE_KEYS)
        out.events.append(_wire(name, ev.get("timestamp"), ev.get("uuid"), dims, value, uid))
    return out


def map_segment(messages: list[dict[str, Any]], default_type: str = "track") -> Mapped:
    """counters events for Segment messages: track (`event`), page (`page`) and screen
    (`screen`) are counted, userId || anonymousId -> uid, messageId -> id,
    timestamp -> ts, string properties -> dims, properties.revenue || value -> value;
    identify, group and alias are ignored."""
    out = Mapped()
    for msg in messages:
        kind = msg.get("type", default_type)
        if kind not in SEGMENT_COUNTED:
            out.ignored += 1
            continue
        name = SEGMENT_COUNTED[kind] or msg.get("event")
        if not isinstance(name, str):
            name = ""
        props = msg.get("properties")
        props = props if isinstance(props, dict) else {}
        uid = msg.get("userId") or msg.get("anonymousId")
        dims = _dims(props, SEGMENT_VALUE_KEYS, True, out)
        value = _value(props, SEGMENT_VALUE_KEYS)
        ts = msg.get("timestamp") or msg.get("originalTimestamp")
        out.events.append(_wire(name, ts, msg.get("messageId"), dims, value, uid))
    return out
