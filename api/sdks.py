"""PostHog and Segment SDKs pointed at counters: their capture routes, their auth and their
error shapes, on the one ingest path of POST /v1/events (api/ingest.count_events)."""

from __future__ import annotations

import base64
import binascii
import gzip
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import Access, app_state, authorize_key, bearer_key, json_response
from api.idempotency import idempotency_of
from api.ingest import count_events, read_body
from api.scope import check_origin
from api.state import AppState
from counters.core.errors import (
    BadRequest,
    CountersError,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
)
from counters.core.sdkmap import Mapped, map_posthog, map_segment, posthog_events

SEGMENT_EVENT_BYTES = 32 * 1024
"""Segment's limit on one message (JSON bytes)."""
SEGMENT_BATCH_BYTES = 500 * 1024
"""Segment's limit on one batch request (JSON bytes, after decompression)."""

Handler = Callable[[Request], Awaitable[Response]]
Shape = Callable[[CountersError], dict[str, Any]]


def _posthog_error(exc: CountersError) -> dict[str, Any]:
    kind = {401: "authentication_error", 403: "authentication_error", 429: "throttled"}.get(
        exc.status, "validation_error" if exc.status < 500 else "server_error"
    )
    return {"type": kind, "code": exc.code, "detail": exc.message, "attr": None}


def _segment_error(exc: CountersError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message}


def _shaped(handler: Handler, shape: Shape) -> Handler:
    """The handler with its refusals answered in the SDK's error shape (same status and
    Retry-After / RateLimit headers as the rest of the API)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except CountersError as exc:
            state = getattr(request.state, "counters", None)
            if state is not None and 400 <= exc.status < 500:
                state.metrics.rejected.labels(exc.code).inc()
            headers: dict[str, str] | None = None
            if isinstance(exc, Unavailable):
                headers = {"Retry-After": str(exc.retry_after)}
            if isinstance(exc, TooManyRequests):
                headers = {"Retry-After": str(exc.retry_after), **exc.headers}
            return json_response(shape(exc), exc.status, headers)

    return endpoint


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """gzip / deflate bodies inflated to at most limit bytes (413 past it)."""
    try:
        if encoding == "gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            inflater = zlib.decompressobj()
        else:
            raise BadRequest(f"unsupported Content-Encoding {encoding!r}", code="bad_encoding")
        out = inflater.decompress(data, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise BadRequest(f"body is not valid {encoding}: {exc}", code="bad_encoding") from exc
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes")
    return out


async def _json_body(request: Request, state: AppState, gzip_param: bool = False) -> Any:
    limit = state.settings.max_body_bytes
    body = await read_body(request, limit, state.settings.body_timeout_seconds)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if gzip_param and not encoding:
        encoding = "gzip"
    if encoding and encoding != "identity":
        body = _decompress(body, encoding, limit)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = urllib.parse.parse_qs(body.decode("latin-1"))
        data = form.get("data", [""])[0]
        try:
            body = data.encode() if data.lstrip()[:1] in "[{" else base64.b64decode(data)
        except binascii.Error as exc:
            raise BadRequest("form field `data` is not base64 JSON", code="malformed_json") from exc
    if not body.strip():
        raise BadRequest("empty body", code="empty_body")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from exc


async def _count(
    request: Request, state: AppState, access: Access, mapped: Mapped, source: str, body: bytes
) -> None:
    metrics = state.metrics
    if mapped.dims_dropped:
        metrics.dims_dropped.labels(source).inc(mapped.dims_dropped)
    if mapped.ignored:
        metrics.sdk_ignored.labels(source).inc(mapped.ignored)
    if mapped.events:
        await count_events(state, access, mapped.events, idempotency_of(request, body))


async def _posthog(request: Request) -> Response:
    """POST /posthog/batch/, /posthog/capture/, /posthog/i/v0/e/: PostHog's capture body
    (gzip by Content-Encoding or `?compression=gzip-js`, or posthog-js's form `data=`);
    the project key is its `api_key` (or `token`). Replies {"status": 1} as PostHog."""
    state = app_state(request)
    gzip_param = request.query_params.get("compression") == "gzip-js"
    body = await _json_body(request, state, gzip_param)
    try:
        events, key = posthog_events(body)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_payload") from exc
    access = await authorize_key(state, key or bearer_key(request), scope="ingest")
    check_origin(access.key, request)
    await _count(request, state, access, map_posthog(events), "posthog", b"")
    return json_response({"status": 1})


def _basic_user(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(token.strip()).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def _segment(default_type: str, batch: bool) -> Handler:
    async def handler(request: Request) -> Response:
        state = app_state(request)
        body = await _json_body(request, state)
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object", code="invalid_request")
        key = _basic_user(request) or body.get("writeKey") or bearer_key(request)
        access = await authorize_key(state, key if isinstance(key, str) else None, scope="ingest")
        check_origin(access.key, request)
        messages = body.get("batch") if batch else [body]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("`batch` must be an array of message objects", code="invalid_request")
        total = 0
        for index, msg in enumerate(messages):
            size = len(msgspec.json.encode(msg))
            total += size
            if size > SEGMENT_EVENT_BYTES:
                raise BadRequest(
                    f"batch[{index}] is {size} bytes; a message is at most 32 KB",
                    code="message_too_large",
                )
        if total > SEGMENT_BATCH_BYTES:
            raise PayloadTooLarge(
                f"batch is {total} bytes; a batch is at most 500 KB", code="batch_too_large"
            )
        await _count(request, state, access, map_segment(messages, default_type), "segment", b"")
        return json_response({"success": True})

    return handler


posthog_capture = _shaped(_posthog, _posthog_error)
segment_batch = _shaped(_segment("track", batch=True), _segment_error)
segment_track = _shaped(_segment("track", batch=False), _segment_error)
segment_page = _shaped(_segment("page", batch=False), _segment_error)
segment_screen = _shaped(_segment("screen", batch=False), _segment_error)
segment_other = _shaped(_segment("identify", batch=False), _segment_error)
