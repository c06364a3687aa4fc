"""CORS for the browser-facing routes (POST /v1/events and GET /v1/pixel.gif).

A preflight (`OPTIONS`) carries no key, so it cannot be checked per key: it is answered 204
for any origin. The actual request is: its response carries `Access-Control-Allow-Origin`
(the request's Origin, with `Vary: Origin`) only when the key allows that origin (a key with
no origin list allows any; a request whose key was not found gets it too, so a browser can
read the 401)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import current_notes

CORS_PATHS = frozenset({"/v1/events", "/v1/pixel.gif"})
ALLOW_METHODS = "POST, GET, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key"
EXPOSE_HEADERS = "Retry-After, RateLimit, RateLimit-Policy"
MAX_AGE = "86400"


def key_origins(found: object) -> tuple[str, ...] | None:
    """The origins a looked-up key allows (None: any). The key record carries no origin list
    yet; this is the one place that reads it (the keys work connects it)."""
    origins = getattr(found, "origins", None)
    return tuple(origins) if origins else None


def origin_allowed(origin: str, allowed: tuple[str, ...] | None) -> bool:
    """Whether a request from `origin` may read the answer (None allows every origin)."""
    if allowed is None:
        return True
    return origin.rstrip("/").lower() in {o.rstrip("/").lower() for o in allowed}


def _origin(scope: Scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k == b"origin":
            return str(v.decode("latin-1"))
    return None


class Cors:
    """Answers preflights on CORS_PATHS and adds the allow-origin fields to their answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in CORS_PATHS:
            await self.app(scope, receive, send)
            return
        origin = _origin(scope)
        if scope["method"] == "OPTIONS":
            await self._preflight(origin, send)
            return
        if origin is None:
            await self.app(scope, receive, send)
            return

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                notes = current_notes()
                allowed = notes.origins if notes is not None else None
                headers = list(message.get("headers", []))
                headers.append((b"vary", b"Origin"))
                if origin_allowed(origin, allowed):
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                    headers.append((b"access-control-expose-headers", EXPOSE_HEADERS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, cors_send)

    @staticmethod
    async def _preflight(origin: str | None, send: Send) -> None:
        headers = [
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        if origin is not None:
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
