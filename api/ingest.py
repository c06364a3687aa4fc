"""POST /v1/events: a JSON array (or NDJSON) of events, counted all or nothing."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.common import Access, app_state, authorize_key, bearer_key, json_response
from api.idempotency import REPLAYED_HEADER, idempotency_of
from api.limits import charge_events
from api.scope import check_batch, check_names, check_origin
from api.state import AppState
from counters.core.errors import BadRequest, Invalid, PayloadTooLarge, RequestTimeout
from counters.core.jsonkeys import explain, may_have_duplicates
from counters.core.models import (
    EventWire,
    IngestReply,
    batch_decoder,
    event_decoder,
    validate_events,
)
from counters.engines.ingest import Idempotency

log = logging.getLogger("counters.ingest")


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request body; 413 as soon as it is longer than limit bytes, 408 when the next
    chunk takes longer than timeout seconds to arrive. A client that disconnects mid-body
    is logged at INFO and answered 400 `client_disconnected` (nobody reads it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no body data for {timeout:g} s; send the body without pausing"
            ) from exc
        except ClientDisconnect as exc:
            log.info("client disconnected mid-body on %s after %d bytes", request.url.path, size)
            raise BadRequest("client disconnected mid-body", code="client_disconnected") from exc
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid(exc: msgspec.ValidationError, offset: int | None = None) -> Invalid:
    text = str(exc)
    if offset is not None:
        text = text.replace("`$", f"`$[{offset}]", 1)
    return Invalid(text)


class _SlowPath(Exception):
    """The body needs core.jsonkeys.explain (decode_events with slow=False)."""


SLOW_INLINE_BYTES = 65_536
"""Bodies up to this size get the slow exact pass on the event loop; larger ones in a
thread (the json module on 5 MB holds the loop for tens of ms)."""


def _explain(body: bytes, ndjson: bool, slow: bool) -> Invalid | None:
    if not slow:
        raise _SlowPath
    return explain(body, ndjson=ndjson)


def _malformed(
    body: bytes, ndjson: bool, slow: bool, exc: msgspec.DecodeError, where: str = ""
) -> Invalid | BadRequest:
    """422 naming the field when the body is JSON with a bad string (invalid UTF-8, a lone
    surrogate), else 400 malformed JSON."""
    found = _explain(body, ndjson, slow)
    if found is not None:
        return found
    return BadRequest(f"{where}malformed JSON: {exc}", code="malformed_json")


def _decode(body: bytes, ndjson: bool, slow: bool) -> list[EventWire]:
    if ndjson:
        events: list[EventWire] = []
        for index, line in enumerate(body.splitlines()):
            if not line.strip():
                continue
            try:
                events.append(event_decoder.decode(line))
            except msgspec.ValidationError as exc:
                raise _invalid(exc, index) from exc
            except msgspec.DecodeError as exc:
                raise _malformed(body, ndjson, slow, exc, f"line {index + 1}: ") from exc
        return events
    try:
        if body.lstrip()[:1] == b"{":
            return [event_decoder.decode(body)]
        return batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise _malformed(body, ndjson, slow, exc) from exc


def decode_events(body: bytes, content_type: str, *, slow: bool = True) -> list[EventWire]:
    """Events of a JSON array, a single JSON object or NDJSON; 400 for malformed input,
    422 naming the event index and field for a wrong value, a duplicate key
    (`duplicate_key`) or a string that is not valid UTF-8 (`invalid_string`). With
    slow=False, raises _SlowPath where the slow exact pass would run."""
    if not body.strip():
        raise BadRequest("empty body: send a JSON array of events", code="empty_body")
    ndjson = "ndjson" in content_type or "jsonlines" in content_type
    events = _decode(body, ndjson, slow)
    if may_have_duplicates(body, events):
        found = _explain(body, ndjson, slow)
        if found is not None:
            raise found
    return events


async def decode_events_off_loop(body: bytes, content_type: str) -> list[EventWire]:
    """decode_events, with the slow exact pass (a duplicate key, a bad string) of a body
    over SLOW_INLINE_BYTES run in a thread so it never holds the event loop."""
    try:
        return decode_events(body, content_type, slow=len(body) <= SLOW_INLINE_BYTES)
    except _SlowPath:
        return await asyncio.to_thread(decode_events, body, content_type)


async def post_events(request: Request) -> Response:
    """Counts a batch; replies {"accepted", "duplicates"}. The key comes from
    `Authorization: Bearer`, else from `?key=` (navigator.sendBeacon cannot set headers).
    With an Idempotency-Key seen before: the original reply with "replayed": true and
    Idempotency-Replayed: true."""
    state = app_state(request)
    settings = state.settings
    key = bearer_key(request) or request.query_params.get("key")
    access = await authorize_key(state, key, scope="ingest")
    check_origin(access.key, request)
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    idempotency = idempotency_of(request, body)
    events = await decode_events_off_loop(body, request.headers.get("content-type", ""))
    reply = await count_events(state, access, events, idempotency)
    if reply.replayed:
        return json_response(reply, headers={REPLAYED_HEADER: "true"})
    return json_response(reply)


async def count_events(
    state: AppState, access: Access, events: list[EventWire], idempotency: Idempotency | None
) -> IngestReply:
    """The one ingest path after decoding (POST /v1/events and the SDK routes): the key's
    batch and name checks, the batch cap, validation, the event rate limit, uid hashing and
    the all-or-nothing apply; counts accepted events and duplicates in the metrics."""
    settings = state.settings
    project = access.project
    check_batch(access.key, len(events))
    check_names(access.key, (e.name for e in events))
    if len(events) > settings.max_batch_events:
        raise PayloadTooLarge(
            f"{len(events)} events in one batch; the limit is {settings.max_batch_events}",
            code="too_many_events",
        )
    raw = validate_events(events, now_ms=state.clock.now_ms(), limits=state.limits)
    await charge_events(state, project, len(raw))
    raw = await state.services.hash_uids(project, raw)  # no plain uid is ever stored
    reply = await state.ingestor.apply(project, raw, idempotency=idempotency)
    if reply.replayed:
        return reply
    label = state.metrics.project(project)
    state.metrics.events_accepted.labels(label).inc(reply.accepted)
    state.metrics.ingest_batch_size.observe(len(raw))
    if reply.duplicates:
        state.metrics.duplicates.labels(label).inc(reply.duplicates)
    return reply
