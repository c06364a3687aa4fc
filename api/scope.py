"""What a key's scope allows beyond its project: a pixel key writes single events only,
optionally only from its allowed origins and only its allowed event names."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request

from counters.core.errors import Forbidden
from counters.core.keys import KeyInfo, normalize_origin

ORIGIN_REFUSED = "origin_not_allowed"
NAME_REFUSED = "name_not_allowed"
BATCH_REFUSED = "pixel_key_single_event"
PIXEL_REASON = {ORIGIN_REFUSED: "origin", NAME_REFUSED: "name"}
"""The rejected{reason} the pixel counts for each refusal code."""


def request_origin(request: Request) -> str | None:
    """The request's origin: the `Origin` header, else the origin of the `Referer`
    (normalised scheme://host[:port]); None when neither names an http(s) origin."""
    return origin_of(request.headers.get("origin"), request.headers.get("referer"))


def origin_of(origin: str | None, referer: str | None) -> str | None:
    """The origin an `Origin` header (else a `Referer`) names, normalised as in
    request_origin; None when neither names an http(s) origin."""
    if origin:
        return normalize_origin(origin)
    return normalize_origin(referer) if referer else None


def check_origin(key: KeyInfo, request: Request) -> None:
    """403 origin_not_allowed when the key has allowed origins and the request comes from
    none of them (or names no origin at all)."""
    if key.origins:
        check_origin_of(key, request.headers.get("origin"), request.headers.get("referer"))


def check_origin_of(key: KeyInfo, origin_header: str | None, referer: str | None) -> None:
    """check_origin on the raw `Origin` and `Referer` header values (the pixel's lean route
    reads them from the ASGI scope, without a Request)."""
    if not key.origins:
        return
    origin = origin_of(origin_header, referer)
    if origin is None or origin not in key.origins:
        raise Forbidden(
            f"origin {origin or '(none)'} is not allowed for this key", code=ORIGIN_REFUSED
        )


def check_batch(key: KeyInfo, count: int) -> None:
    """403 pixel_key_single_event when a pixel key sends more than one event."""
    if key.scope == "pixel" and count > 1:
        raise Forbidden(
            f"a pixel key sends one event per request, not {count}; use an ingest key for batches",
            code=BATCH_REFUSED,
        )


def check_names(key: KeyInfo, names: Iterable[str]) -> None:
    """403 name_not_allowed when the key has allowed names and an event has another."""
    if not key.names:
        return
    for name in names:
        if name not in key.names:
            raise Forbidden(f"event name {name!r} is not allowed for this key", code=NAME_REFUSED)
