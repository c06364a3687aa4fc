"""One HTTP worker of `counters serve --workers N` (N > 1), run as
`python -m counters.cli.worker <serve pid>`: uvicorn with the service's options on a
listening socket of its own, bound with SO_REUSEPORT, so the kernel spreads new connections
evenly over the workers. (uvicorn's own workers share one socket, and whichever wakes first
takes a burst of connections: 8 keep-alive connections went 8/0 as often as 4/4.) The
worker stops when serve is gone."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

from counters.core.config import Settings

APP = "api.app:create_app_from_env"
"""The uvicorn factory every worker serves (settings from COUNTERS_RESOLVED_SETTINGS)."""


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of every worker (in-process with one worker, or this module)."""
    return {
        "factory": True,
        "loop": "uvloop",
        # header timeout, 431, connection cap and JSON errors (api/server.py)
        "http": "api.server:CountersHttpProtocol",
        "timeout_keep_alive": max(1, round(settings.keepalive_timeout_seconds)),
        "log_level": "warning",
        "access_log": False,
    }


def bound_socket(
    host: str, port: int, kind: socket.SocketKind, *, reuse_port: bool, listen: bool
) -> socket.socket:
    """A socket of kind bound to host:port (SO_REUSEADDR for TCP, SO_REUSEPORT when asked),
    listening when asked; OSError, with the socket closed, when it cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=kind, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def reuseport_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (and listening, unless told not
    to: a bound socket that does not listen takes no connections, so serve holds one to
    find a busy port before any worker starts). OSError when the port is taken."""
    return bound_socket(host, port, socket.SOCK_STREAM, reuse_port=True, listen=listen)


def udp_probe(address: str) -> None:
    """Binds `host:port` for UDP with SO_REUSEPORT, as every worker's StatsD listener does
    (api/statsd.py), and closes it at once (a bound socket would take a share of the
    datagrams); OSError when the address cannot be bound, so serve fails before any
    worker starts instead of restarting workers that cannot bind it."""
    from counters.core.config import parse_listen

    host, port = parse_listen(address)
    bound_socket(host, port, socket.SOCK_DGRAM, reuse_port=True, listen=False).close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port (SO_REUSEADDR, as uvicorn binds its own, not
    SO_REUSEPORT: a second `counters serve` on the port fails). OSError when the port is
    taken or may not be bound."""
    return bound_socket(host, port, socket.SOCK_STREAM, reuse_port=False, listen=True)


def main(argv: list[str]) -> None:
    """Serves until SIGTERM/SIGINT or until serve (pid argv[0]) is gone."""
    import uvicorn

    from counters.services import SETTINGS_ENV, decode_settings

    parent = int(argv[0])
    settings = decode_settings(os.environ[SETTINGS_ENV])
    sock = reuseport_socket(settings.host, settings.port)
    config = uvicorn.Config(
        APP, host=settings.host, port=settings.port, **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)

    def watch_parent() -> None:
        while os.getppid() == parent and not server.should_exit:
            time.sleep(1.0)
        server.should_exit = True

    threading.Thread(target=watch_parent, name="watch-serve", daemon=True).start()
    server.run(sockets=[sock])


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
