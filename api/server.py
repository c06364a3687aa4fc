"""uvicorn's httptools protocol with the limits uvicorn lacks: a header read timeout (408),
a maximum request head (431), a per-worker connection cap (503), and JSON bodies for the
server's own errors (uvicorn's 400 and 503 are text/plain).

`counters serve` passes `http="api.server:CountersHttpProtocol"` (an import string, so it
works with several workers); the limits come from the resolved settings every worker reads
(COUNTERS_RESOLVED_SETTINGS), else the defaults."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from counters.core.config import Settings

log = logging.getLogger("counters.server")


class HttpLimits(msgspec.Struct, frozen=True):
    """The connection-level limits one worker applies."""

    header_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        """header_timeout_seconds, max_header_bytes and max_connections of the settings."""
        return cls(
            settings.header_timeout_seconds, settings.max_header_bytes, settings.max_connections
        )


@functools.cache
def _env_limits(channel: str | None) -> HttpLimits:
    if channel is None:
        return HttpLimits.from_settings(Settings())
    from counters.services import decode_settings

    return HttpLimits.from_settings(decode_settings(channel))


def current_limits() -> HttpLimits:
    """The limits of this worker: from COUNTERS_RESOLVED_SETTINGS, else the defaults."""
    from counters.services import SETTINGS_ENV

    return _env_limits(os.environ.get(SETTINGS_ENV))


def error_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body that closes the connection."""
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n",
            *([b"retry-after: 1\r\n"] if status == 503 else []),
            b"\r\n",
            body,
        ]
    )


class _Reject(Exception):
    """Raised from a parser callback to stop parsing a request that was answered."""


class CountersHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus the limits of HttpLimits; one instance per connection.

    - header timeout: from the connection's start (or a request's first byte on a kept-alive
      connection) to the end of the request head; past it 408 and close (slowloris);
    - head size: more than max_header_bytes before the head ends is a 431 and close (the
      parser would otherwise buffer any amount);
    - connections: past max_connections open in this worker, a new connection gets a 503 and
      is closed at once, so idle sockets cannot exhaust the file descriptors;
    - uvicorn's own 400 (malformed request) is JSON."""

    limits: HttpLimits | None = None
    """Set on a subclass to override current_limits() (tests)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.limits or current_limits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._head_bytes = 0
        self._rejected = False

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            log.warning(
                "connection limit reached (%d open); refusing a connection",
                len(self.connections) - 1,
            )
            self._reject(503, "too_many_connections", "the server has too many open connections")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self._limits.header_timeout, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined head stalled while a response is being written: no 408 in the
            # middle of it; the connection closes once that response is complete
            self.cycle.keep_alive = False
            self._rejected = True
            return
        if not self.transport.is_closing():
            log.info("closing a connection whose request head did not arrive in time")
            self._reject(
                408,
                "request_timeout",
                f"the request head did not arrive within {self._limits.header_timeout:g} s",
            )

    def _reject(self, status: int, code: str, message: str) -> None:
        self._rejected = True
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(error_response(status, code, message))
            self.transport.close()

    # -- parsing ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        self._unset_keepalive_if_required()
        if self._awaiting_head:
            self._head_bytes += len(data)
            self._arm_head_timer()
        try:
            self.parser.feed_data(data)
        except _Reject:
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__cause__ or exc.__context__, _Reject) or self._rejected:
                return
            log.info("invalid HTTP request received")
            self._reject(400, "bad_request", "invalid HTTP request")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._awaiting_head and self._head_bytes > self._limits.max_header_bytes:
            self._too_large()

    def _too_large(self) -> None:
        self._reject(
            431,
            "headers_too_large",
            f"the request head is over {self._limits.max_header_bytes} bytes",
        )

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400, as JSON."""
        self._reject(400, "bad_request", msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True

    def on_headers_complete(self) -> None:
        if self._rejected:
            raise _Reject
        self._awaiting_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self._limits.max_header_bytes:
            self._too_large()
            raise _Reject
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            raise _Reject
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            raise _Reject
        super().on_message_complete()
        self._awaiting_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the keep-alive timer now runs; the head timer starts with the next request's bytes
