"""Lower CPU priority for background work (reconcile, rebuild): the calling thread, and the
Postgres backends, since a niced client alone leaves its backends, which do half the work,
competing with ingest's. Backends only where Postgres runs on this machine (the URL names a
loopback host or a Unix socket and the server pid is a local `postgres` process), and
everything only as far as the OS lets us."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from persist.db import Conn

_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def is_local(database_url: str) -> bool:
    """Whether the URL's server is on this machine (a loopback host or a Unix socket)."""
    parts = urlsplit(database_url)
    host = (parts.hostname or "").lower()
    if host in _LOCAL_HOSTS or host.startswith("/") or host.startswith("%2f"):
        return True
    return "host=/" in parts.query or "host=%2f" in parts.query.lower()


def nice_this_thread(nice: int) -> None:
    """The calling thread (alone, on Linux; threads it starts inherit it) at niceness
    `nice`; nothing when nice is 0 or the OS refuses."""
    if nice > 0:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("postgres")
    except OSError:
        return False


@contextlib.asynccontextmanager
async def niced_backend(conn: Conn, nice: int, *, local: bool) -> AsyncIterator[bool]:
    """Runs the block with conn's backend at niceness `nice` (yields whether it is): put
    back as it was afterwards, and when the OS will not let it be put back (raising
    priority needs CAP_SYS_NICE) the connection is closed instead, so a pool never hands
    out a niced backend. A no-op (yields False) when nice is 0, Postgres is not local, or
    the OS refuses."""
    pid = conn.get_server_pid() if nice > 0 and local else 0
    before = 0
    niced = False
    if pid and _is_postgres(pid):
        try:
            before = os.getpriority(os.PRIO_PROCESS, pid)
            if nice > before:
                os.setpriority(os.PRIO_PROCESS, pid, nice)
                niced = True
        except OSError:
            niced = False
    try:
        yield niced
    finally:
        if niced:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, before)
            except ProcessLookupError:
                pass  # the backend is gone (the connection died)
            except OSError:
                conn.terminate()  # a pool replaces a closed connection on release
