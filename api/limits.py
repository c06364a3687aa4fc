"""Rate limits at the HTTP edge: charging a request's key and its project's events, the 429,
and the IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-10 syntax:
`RateLimit-Policy: "default";q=<quota>;w=<window s>` and
`RateLimit: "default";r=<remaining>;t=<s until full>`) on every answer the limiter saw.

The handler's decision reaches the response through RequestNotes, a per-request holder the
RateLimitHeaders middleware puts in a context variable (authorize cannot see the request)."""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.state import AppState
from counters.core.errors import TooManyRequests
from counters.engines.ratelimit import Decision, KeyLimit
from persist.projects import hash_key

POLICY = {"ingest": "default", "read": "default", "project_events": "events"}
"""Policy name each limit is advertised under (the key's own bucket is "default")."""


@dataclass
class RequestNotes:
    """What a handler learned about the request that its response headers need."""

    rate: Decision | None = None
    """The last rate-limit decision charged for the request."""
    origins: tuple[str, ...] | None = None
    """Origins the request's key allows (None: any, or no key seen)."""
    key_seen: bool = False
    """Whether a key was found for the request (authorize ran past the lookup)."""


_notes: contextvars.ContextVar[RequestNotes | None] = contextvars.ContextVar(
    "counters_request_notes", default=None
)


def current_notes() -> RequestNotes | None:
    """The notes of the request being handled (None outside RateLimitHeaders)."""
    return _notes.get()


def key_digest(key: str) -> str:
    """The bucket id of an API key: the first 16 hex of its sha256 (never the key)."""
    return hash_key(key).hex()[:16]


def limit_for(scope: str) -> KeyLimit:
    """Which per-key limit a request with this scope counts against: ingest (and pixel)
    requests the ingest limit, everything else (read, admin) the read limit."""
    return "ingest" if scope in ("ingest", "pixel") else "read"


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit (draft-10 syntax) for one decision: `t` is the seconds
    until the bucket is full again, or on a refusal the Retry-After value (the draft: both
    SHOULD name the same moment)."""
    name = POLICY[decision.limit]
    if decision.allowed:
        reset = math.ceil(decision.reset_ms / 1000)
    else:
        reset = retry_after_seconds(decision)
    return {
        "RateLimit-Policy": f'"{name}";q={decision.quota};w={decision.window}',
        "RateLimit": f'"{name}";r={decision.remaining};t={reset}',
    }


def retry_after_seconds(decision: Decision) -> int:
    """Whole seconds to wait before a refused request would pass (at least 1)."""
    return max(1, math.ceil(decision.retry_after_ms / 1000))


def _enforce(decision: Decision | None, what: str) -> None:
    if decision is None:
        return
    notes = _notes.get()
    if notes is not None and decision.limit != "project_events":
        notes.rate = decision  # successful answers advertise the key's own bucket
    if decision.allowed:
        return
    retry = retry_after_seconds(decision)
    raise TooManyRequests(
        f"{what}: retry in {retry} s",
        retry_after=retry,
        headers={"Retry-After": str(retry), **ratelimit_headers(decision)},
    )


async def charge_key(
    state: AppState,
    key: str,
    project: str,
    scope: str,
    origins: tuple[str, ...] | None = None,
) -> None:
    """Counts one request against the key's bucket (kept in its own project's slot) and
    notes the key's allowed origins for CORS; raises 429 rate_limited when over the limit."""
    notes = _notes.get()
    if notes is not None:
        notes.key_seen = True
        notes.origins = origins
    limit = limit_for(scope)
    decision = await state.services.limiter.charge(project, key_digest(key), limit)
    rate = state.services.limiter.rate(limit)
    _enforce(decision, f"this key is over its {limit} rate limit of {rate:g} requests/s")


async def charge_events(state: AppState, project: str, n: int) -> None:
    """Counts n events against the project's events-per-second bucket; raises 429
    rate_limited (nothing applied) when over it."""
    decision = await state.services.limiter.charge_events(project, n)
    enforce_events(state, project, decision)


def enforce_events(state: AppState, project: str, decision: Decision | None) -> None:
    """Raises 429 rate_limited when a charge of the project's events bucket was refused."""
    rate = state.services.limiter.rate("project_events")
    _enforce(decision, f"project {project!r} is over its rate limit of {rate:g} events/s")


class RateLimitHeaders:
    """Gives each HTTP request its RequestNotes and adds the RateLimit fields of the last
    decision to the response (unless the response already carries them, as a 429 does)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        notes = RequestNotes()
        token = _notes.set(notes)

        async def noted_send(message: Message) -> None:
            if message["type"] == "http.response.start" and notes.rate is not None:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"ratelimit" for k, _ in headers):
                    for k, v in ratelimit_headers(notes.rate).items():
                        headers.append((k.lower().encode(), v.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, noted_send)
        finally:
            _notes.reset(token)
