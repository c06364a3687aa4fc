"""Errors that map onto HTTP answers: each carries a status, a code and a message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class CountersError(Exception):
    """Base class: status is the HTTP status the API answers with."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(CountersError):
    status = 400
    code = "bad_request"


class Unauthorized(CountersError):
    status = 401
    code = "unauthorized"


class Forbidden(CountersError):
    status = 403
    code = "forbidden"


class NotFound(CountersError):
    status = 404
    code = "not_found"


class PayloadTooLarge(CountersError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(CountersError):
    status = 408
    code = "request_timeout"


class Conflict(CountersError):
    status = 409
    code = "conflict"


class TooManyRequests(CountersError):
    """Over a rate limit; headers carry Retry-After and the IETF RateLimit fields."""

    status = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers or {}


class HeadersTooLarge(CountersError):
    status = 431
    code = "headers_too_large"


class Invalid(CountersError):
    """One field of one event is wrong; nothing of the batch was applied."""

    status = 422
    code = "invalid"


class Unavailable(CountersError):
    """A backend (Redis or Postgres) cannot be reached; the client should retry."""

    status = 503
    code = "unavailable"

    def __init__(self, backend: str, message: str, *, retry_after: int = 1) -> None:
        super().__init__(f"{backend} unavailable: {message}", code=f"{backend}_unavailable")
        self.backend = backend
        self.retry_after = retry_after
        self.detail = message
        """What the log may say about the failure (as_unavailable: the raw error)."""


class BacklogFull(Unavailable):
    """The raw-log backlog in Redis is over its cap; ingest must wait for the persister."""

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__("backlog", message, retry_after=retry_after)
        self.code = "backlog_full"


def failure_kind(exc: BaseException) -> str:
    """What went wrong, in words that carry no address, credential or server text:
    "timed out", "connection failed" or "request failed"."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, TimeoutError) or "TimeoutError" in names:
        return "timed out"
    if isinstance(exc, ConnectionError | OSError) or names & {
        "ConnectionError",
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "CannotConnectNowError",
    }:
        return "connection failed"
    return "request failed"


def as_unavailable(backend: str, exc: BaseException) -> Unavailable:
    """The 503 a backend failure answers with (the one place a backend exception becomes an
    Unavailable): its message names the backend and the kind of failure only, e.g.
    "redis unavailable: connection failed", never an address or the server's raw error;
    those stay in `detail` for the log."""
    error = Unavailable(backend, failure_kind(exc))
    error.detail = f"{type(exc).__name__}: {exc}"
    return error


@contextlib.contextmanager
def unavailable(backend: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Inside the block, any of `errors` (what this backend's client raises when the server
    is down, restarting or unreachable) becomes Unavailable(backend), chained with `from`.
    Wrap each call to one backend, so a socket error is charged to the backend it came from.
    """
    try:
        yield
    except errors as exc:
        raise as_unavailable(backend, exc) from exc
