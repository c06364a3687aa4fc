"""Postgres errors of a read, sorted into the client's and the backend's: a read whose shape
Postgres refuses (too complex, a value out of range, over its statement timeout) is a 400
saying how to narrow it; anything else is an outage (503)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from counters.core.errors import BadRequest
from persist.db import Conn, postgres_unavailable

READ_TIMEOUT_SECONDS = 10.0
"""Longest one read statement may run in Postgres before it is cancelled (a 400)."""

SHAPE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.ProgramLimitExceededError,  # 54xxx: statement too complex, stack depth, columns
    asyncpg.DataError,  # 22xxx: a value out of range for its type
)
"""What Postgres raises for a query too big or out of range: the request's fault."""


def is_statement_timeout(exc: BaseException) -> bool:
    """Whether Postgres cancelled the statement for its statement_timeout (not a shutdown
    or an operator's pg_cancel_backend)."""
    return isinstance(exc, asyncpg.QueryCanceledError) and "statement timeout" in str(exc)


async def statement_timeout(conn: Conn, seconds: float) -> None:
    """Bounds every statement of the current transaction (SET LOCAL: gone at its end)."""
    await conn.execute(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}")


@contextlib.contextmanager
def read_postgres(timeout_hint: str = "narrow the read") -> Iterator[None]:
    """`with read_postgres(): await conn...` for a read: a statement timeout or a query
    shape Postgres refuses becomes a 400 (code read_too_large, saying `timeout_hint`),
    any other Postgres failure a 503 naming postgres."""
    with postgres_unavailable():
        try:
            yield
        except asyncpg.QueryCanceledError as exc:
            if not is_statement_timeout(exc):
                raise
            raise BadRequest(
                f"this read ran past its time limit in Postgres: {timeout_hint}",
                code="read_too_large",
            ) from exc
        except SHAPE_ERRORS as exc:
            raise BadRequest(
                f"Postgres refused this read as too large or out of range: {timeout_hint}"
                f" ({type(exc).__name__})",
                code="read_too_large",
            ) from exc
