"""Restart crashed embedded servers: a thread of `counters serve` (embedded default only).

Every ``interval`` seconds it checks that the embedded Valkey and/or Postgres of the data
dir still have a live process (pidfile / postmaster.pid + /proc: no connection, no
password needed) and, if one died (kill -9, OOM), starts it again through
ensure_valkey / ensure_postgres: same data, same port when it is still free.  Meanwhile the
service answers 503 and reconnects by itself.  A server stopped on purpose
(``counters embedded stop``) is left down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from counters.embedded import postgres, process, valkey
from counters.embedded.secrets import read_secrets

log = logging.getLogger("counters.embedded.watchdog")

INTERVAL = 1.0


def _valkey_alive(data_dir: Path) -> bool:
    pid = valkey._read_pidfile(data_dir / "valkey" / "valkey.pid")
    return pid is not None and process.pid_alive(pid)


def _postgres_alive(data_dir: Path) -> bool:
    paths = postgres._pg_paths(data_dir, None, decide=False)
    info = postgres._postmaster_info(paths.pgdata)
    return info is not None and postgres._is_postmaster(info[0], paths.pgdata)


class Watchdog:
    """Keeps the watched embedded servers of data_dir running while it is entered."""

    def __init__(
        self,
        data_dir: Path,
        *,
        redis_url: str | None,
        database_url: str | None,
        interval: float = INTERVAL,
    ) -> None:
        """redis_url / database_url: the URL the service uses for an embedded server to
        watch (None: not embedded, not watched)."""
        self.data_dir = process.absolute(data_dir)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checks: list[tuple[str, Callable[[Path], bool], Callable[[Path], str], str]] = []
        if redis_url is not None:
            self._checks.append(("valkey", _valkey_alive, valkey.ensure_valkey, redis_url))
        if database_url is not None:
            self._checks.append(
                ("postgres", _postgres_alive, postgres.ensure_postgres, database_url)
            )

    def check_once(self) -> list[str]:
        """One round: restart every watched server whose process is gone (and that was not
        stopped on purpose); returns the names restarted.  Never raises."""
        restarted: list[str] = []
        for name, alive, ensure, url in self._checks:
            try:
                if alive(self.data_dir) or process.stopped_on_purpose(self.data_dir, name):
                    continue
                log.warning("embedded %s is not running: restarting it", name)
                new_url = ensure(self.data_dir)
                restarted.append(name)
                if new_url != url:
                    log.error(
                        "embedded %s came back on another port (the old one is taken); "
                        "restart `counters serve` to use it",
                        name,
                    )
                else:
                    log.warning("embedded %s restarted", name)
            except Exception:  # keep watching: the next round tries again
                log.exception("restarting embedded %s failed", name)
        return restarted

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_once()

    def __enter__(self) -> Watchdog:
        if self._checks and read_secrets(self.data_dir) is not None:
            self._thread = threading.Thread(target=self._run, name="embedded-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
