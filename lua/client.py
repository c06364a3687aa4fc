"""Opening the Redis client (the one place its kind, timeouts, retries and pool size are
chosen): a plain Redis/Valkey, or a Redis Cluster found by asking the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import traceback
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis as sync_redis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from counters.core.errors import unavailable

log = logging.getLogger("counters.redis")

RedisClient: TypeAlias = Redis | RedisCluster
"""What every Redis-using part is handed: one node, or a cluster routed by hash tag."""

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
"""What a Redis that is down, restarting or unreachable raises (answered with a 503); a
cluster's own failures (a slot not covered yet, topology not found) are not RedisErrors."""


SOCKET_TIMEOUT_SECONDS = 12.0
"""How long a call waits for Redis's reply. Longer than any script can run: ingest.lua is
kept under ~50 ms by max_batch_groups, and a script still running after Valkey's
busy-reply-threshold (lua-time-limit, 5 s) makes Valkey answer BUSY to the calls queued
behind it, so a call either gets its reply or an error before this. A timeout is then a
server that stopped answering, not a script that applied a batch after we gave up: a 503
for a script call means nothing was applied."""

MAX_CONNECTIONS = 256
"""Connections of the pool (per node, for a cluster)."""


def _no_retries() -> Retry:
    """A call that failed on the wire is never sent again by the client: a script whose
    reply was lost may have run, and sending it again would count its batch twice. The
    caller answers 503 ("nothing applied" holds because the scripts are all-or-nothing and
    clients retry with their Idempotency-Key or event ids). MOVED and ASK are still
    followed: a redirected command did not run."""
    return Retry(NoBackoff(), 0)


_TRANSPORT_DIRS = (Path(sync_redis.__file__).parent, Path(asyncio.__file__).parent)
UVLOOP_CLOSED = "the handler is closed"
"""What uvloop's transport raises (a RuntimeError) when written to after it was closed."""


def _closed_under_us(exc: BaseException) -> bool:
    """Whether exc is a connection torn down while this call used it, surfacing as a
    transport-internal error rather than a ConnectionError: `'NoneType' object has no
    attribute 'writelines'` when the cluster client closes a node's connections while
    another task is connecting on one; under uvloop the same race is `RuntimeError: unable
    to perform operation on <TCPTransport closed=True ...>; the handler is closed`;
    `'NoneType' object is not callable` comes from asyncio's transport after a peer reset
    (redis-py issue 4287). Only these errors, raised inside redis-py, asyncio or uvloop,
    count, so a bug of ours is never taken for an outage."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    where = Path(frames[-1].filename)
    if isinstance(exc, RuntimeError):
        return UVLOOP_CLOSED in str(exc) and where.parts[:1] == ("uvloop",)
    if isinstance(exc, AttributeError):
        if exc.obj is not None:
            return False
    elif not (isinstance(exc, TypeError) and "'NoneType'" in str(exc)):
        return False
    return any(where.is_relative_to(d) for d in _TRANSPORT_DIRS)


class ClosedAwareConnection(Connection):
    """A redis-py connection whose use after it was closed under the call is the
    ConnectionError it is (a 503 naming redis, handled like any dropped connection), not an
    AttributeError or TypeError escaping as a 500."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError, RuntimeError) as exc:
            if not _closed_under_us(exc):
                raise
            raise RedisConnectionError(
                f"connection to {self.host}:{self.port} closed while in use"
            ) from exc

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except (AttributeError, TypeError, RuntimeError) as exc:
            if not _closed_under_us(exc):
                raise
            raise RedisConnectionError(
                f"connection to {self.host}:{self.port} closed while in use"
            ) from exc


def _use_closed_aware(client: RedisCluster) -> RedisCluster:
    """Makes every node of a cluster client (those known now and those discovered later)
    open ClosedAwareConnections (RedisCluster fixes its connection class itself)."""
    kwargs = client.nodes_manager.connection_kwargs
    if kwargs.get("connection_class", Connection) is not Connection:
        return client  # TLS: keep redis-py's SSLConnection
    kwargs["connection_class"] = ClosedAwareConnection
    for node in [*client.startup_nodes, *client.nodes_manager.startup_nodes.values()]:
        node.connection_class = ClosedAwareConnection
    return client


def cluster_enabled(url: str, timeout: float = 2.0) -> bool | None:
    """Whether the server at url runs in cluster mode (`INFO cluster` says
    cluster_enabled:1); None when it cannot be asked (down, refused, wrong password)."""
    probe = sync_redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retries()
    )
    try:
        info = probe.info("cluster")
    except (RedisError, OSError):
        return None
    finally:
        probe.close()
    return str(info.get("cluster_enabled")) == "1"


def open_redis(url: str, cluster: bool | None = None) -> RedisClient:
    """An asyncio client that fails fast when the server is down (callers answer 503),
    waits for a script's reply longer than any script runs (SOCKET_TIMEOUT_SECONDS) and
    never resends a failed call. cluster: True for a RedisCluster (any node's URL; the
    others are discovered), False for one node, None to ask the server (a server that
    cannot be asked is taken as one node, with a warning)."""
    if cluster is None:
        found = cluster_enabled(url)
        if found is None:
            log.warning(
                "could not ask %s whether it is a cluster; using it as a single node"
                " (set COUNTERS_REDIS_CLUSTER=on for a cluster)",
                _redacted(url),
            )
        cluster = bool(found)
    if cluster:
        return _use_closed_aware(
            RedisCluster.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT_SECONDS,
                socket_connect_timeout=2,
                max_connections=MAX_CONNECTIONS,
                retry=_no_retries(),
                # a master that is down leaves its slots unserved; the other slots keep working
                require_full_coverage=False,
            )
        )
    options: dict[str, Any] = {}
    if urlsplit(url).scheme == "redis":  # rediss:// and unix:// keep their own class
        options["connection_class"] = ClosedAwareConnection
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=2,
        health_check_interval=15,
        max_connections=MAX_CONNECTIONS,
        retry=_no_retries(),
        **options,
    )


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def redis_unavailable() -> contextlib.AbstractContextManager[None]:
    """`with redis_unavailable(): await redis...`: a Redis failure becomes a 503 naming redis."""
    return unavailable("redis", REDIS_ERRORS)
