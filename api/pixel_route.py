"""GET and HEAD /v1/pixel.gif as a raw ASGI app, dispatched before Starlette's router and
middleware (api/app.py `CountersApp`): no Request or Response objects, no middleware send
wrappers, no per-request context variable. It adds itself exactly the fields the middleware
would have added (CORS, RateLimit, Server-Timing, in that order) and counts itself through
the one hook `Metrics.observe_request`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.cors import EXPOSE_HEADERS, origin_allowed
from api.limits import ratelimit_headers
from api.pixel import GIF, GIF_HEADERS, NOTHING_SEEN, count_hit
from api.state import AppState

PIXEL_PATH = "/v1/pixel.gif"
LEAN_METHODS = frozenset({"GET", "HEAD"})
"""The requests the lean route answers; the rest of the path's (OPTIONS preflight, a 405)
go through Starlette."""

ErrorReply = Callable[[Request, Exception], Awaitable[Response]]
"""The app's mapping of an unexpected exception to its JSON error answer (503 with
Retry-After for a backend error, 500 otherwise)."""

_GIF_HEAD: tuple[tuple[bytes, bytes], ...] = (
    *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in GIF_HEADERS.items()),
    (b"content-length", str(len(GIF)).encode()),
    (b"content-type", b"image/gif"),
)
"""The GIF answer's fields, as Starlette's Response(GIF, 200, GIF_HEADERS, "image/gif")."""
_EXPOSE = EXPOSE_HEADERS.encode()


def takes(scope: Scope) -> bool:
    """Whether the lean route answers this ASGI scope (an HTTP GET or HEAD of the pixel's
    path, served without a root path)."""
    return (
        scope["type"] == "http"
        and scope["path"] == PIXEL_PATH
        and scope["method"] in LEAN_METHODS
        and not scope.get("root_path")
    )


class PixelRoute:
    """The pixel's ASGI app: the GIF (or, for an unexpected failure, the app's JSON error
    answer) with the CORS fields when the request has an Origin (allow-origin only when the
    key allows it), the key's RateLimit fields when it was charged, and Server-Timing."""

    def __init__(self, error_reply: ErrorReply) -> None:
        self._error_reply = error_reply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        origin: str | None = None
        referer: str | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                if origin is None:
                    origin = value.decode("latin-1")
            elif name == b"referer" and referer is None:
                referer = value.decode("latin-1")
        method = scope["method"]
        status = 200
        body = GIF
        headers = list(_GIF_HEAD)
        state: AppState | None = None
        try:
            lifespan = scope["state"]
            state = lifespan["counters"]
            if method == "HEAD":
                seen = NOTHING_SEEN
            else:
                seen = await count_hit(
                    lifespan["counters"],
                    lifespan["pixel"],
                    scope.get("query_string", b""),
                    origin,
                    referer,
                )
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it
            response = await self._error_reply(Request(scope, receive), exc)
            status, body = response.status_code, bytes(response.body)
            headers = list(response.raw_headers)
            seen = NOTHING_SEEN
        if origin is not None:
            headers.append((b"vary", b"Origin"))
            if origin_allowed(origin, seen.origins):
                headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                headers.append((b"access-control-expose-headers", _EXPOSE))
        if seen.decision is not None:
            for k, v in ratelimit_headers(seen.decision).items():
                headers.append((k.lower().encode(), v.encode()))
        head = time.perf_counter() - started
        headers.append((b"server-timing", f"app;dur={head * 1000:.3f}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if state is not None:
            state.metrics.observe_request(PIXEL_PATH, method, status, head)
