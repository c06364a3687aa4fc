"""Duplicate JSON keys and bad strings in an events body, which msgspec cannot report.

msgspec keeps the last of duplicate keys (`{"name":"bad","name":"good"}` decodes as "good")
and refuses invalid UTF-8 or a lone surrogate escape without saying where.
may_have_duplicates is the cheap test run on every body; explain is the slow exact pass run
only when a body failed it, to name the event and field."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from counters.core.errors import Invalid
from counters.core.models import EventWire, forbidden_char


def members(events: Sequence[EventWire]) -> int:
    """A lower bound of the object members the decoded events came from: every field not at
    its default, plus every dim (exact unless a body spells a default out, `"ts": null`)."""
    total = 0
    for ev in events:
        dims = ev.dims
        total += (
            1
            + (ev.ts is not None)
            + (ev.id is not None)
            + (ev.value is not None)
            + (ev.uid is not None)
            + (len(dims) + 1 if dims else 0)
        )
    return total


def may_have_duplicates(body: bytes, events: Sequence[EventWire]) -> bool:
    """False only when the body (valid JSON that decoded to events) certainly has no
    duplicate key.

    In valid JSON a colon outside strings follows a key and nothing else, so the body's
    colons are its keys plus the colons inside its strings. Without a `\\u003a` escape every
    colon of a decoded string is a literal colon of the body, and a dropped duplicate only
    adds colons; so body colons <= members + colons of the decoded strings proves that no
    key was repeated. The decoded strings are counted in passes, cheapest first (RFC 3339
    `ts` strings are the common source of colons), stopping once the colons are accounted
    for. True sends the body to explain (exact, slow)."""
    budget = body.count(b":") - members(events)
    if budget <= 0:  # every key has its colon: keys <= colons <= members, no escape matters
        return False
    if _escaped_colon(body):
        return True
    for ev in events:
        ts = ev.ts
        if type(ts) is str:
            budget -= ts.count(":")
    if budget <= 0:
        return False
    for ev in events:
        budget -= ev.name.count(":")
        if ev.id is not None:
            budget -= ev.id.count(":")
        if ev.uid is not None:
            budget -= ev.uid.count(":")
        for key, value in ev.dims.items():
            budget -= key.count(":") + value.count(":")
    return budget > 0


def _escaped_colon(body: bytes) -> bool:
    # a one-byte search is a memchr: most bodies hold no backslash at all
    return b"\\" in body and (b"\\u003a" in body or b"\\u003A" in body)


class _Obj(dict[str, Any]):
    """A decoded JSON object that remembers its first repeated key."""

    duplicate: str | None = None


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _safe(text: str) -> str:
    """text as it can go into a JSON reply (a surrogate spelled `\\udXXX`)."""
    return text.encode("utf-8", "backslashreplace").decode()


def _strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """(path, text) of every string in value, keys included (a key at its own path)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{_safe(key)}" if path else _safe(key)
            yield child, key
            yield from _strings(item, child)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def _problem(index: int, event: Any) -> Invalid | None:
    if isinstance(event, _Obj):
        if event.duplicate is not None:
            return Invalid(
                f"$[{index}].{event.duplicate}: duplicate JSON key {event.duplicate!r}",
                code="duplicate_key",
            )
        dims = event.get("dims")
        if isinstance(dims, _Obj) and dims.duplicate is not None:
            return Invalid(
                f"$[{index}].dims.{dims.duplicate}: duplicate JSON key {dims.duplicate!r}",
                code="duplicate_key",
            )
    for path, text in _strings(event, ""):
        char = forbidden_char(text)
        if char is not None:
            what = "invalid UTF-8 or a lone surrogate" if char >= "U+D800" else char
            return Invalid(
                f"$[{index}]{'.' + path if path else ''}: {what} is not allowed in a string",
                code="invalid_string",
            )
    return None


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogateescape"), object_pairs_hook=_pairs)


def explain(body: bytes, *, ndjson: bool) -> Invalid | None:
    """The first duplicate key or bad string (forbidden character, lone surrogate, invalid
    UTF-8) of the body, as a 422 naming the event and field; None when there is none or the
    body is not JSON at all (the caller reports that). Slow (the standard json module): run
    it only for a body that failed the fast checks."""
    try:
        if ndjson:
            events = [_loads(line) for line in body.splitlines() if line.strip()]
        else:
            decoded = _loads(body)
            events = decoded if isinstance(decoded, list) else [decoded]
    except ValueError:
        return None
    for index, event in enumerate(events):
        found = _problem(index, event)
        if found is not None:
            return found
    return None
