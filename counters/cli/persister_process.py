"""The persister of `counters serve` in a process of its own: one `counters persist` child
(not one per worker, off the ingest workers' cores), restarted when it dies."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType

log = logging.getLogger("counters.serve")

CHECK_EVERY = 0.25
"""Seconds between two looks at the child."""
QUICK_DEATH = 5.0
"""A child that dies sooner than this after its start is restarted after a growing delay."""
MAX_RESTART_DELAY = 10.0
STOP_TIMEOUT = 15.0


class PersisterProcess:
    """While entered, keeps one `counters persist` child running on the given environment
    (its settings in COUNTERS_RESOLVED_SETTINGS). A child that exits with a non-zero status
    or a signal (crash, OOM, kill -9) is started again (its unfinished pass is re-run
    safely: the protocol is idempotent); one that exits 0 (asked to stop) is left down.
    Leaving stops the child (SIGTERM, then SIGKILL after STOP_TIMEOUT)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="persister-process", daemon=True)

    @property
    def pid(self) -> int | None:
        """The current child's pid (None before the first start)."""
        return self.proc.pid if self.proc is not None else None

    def _start(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            args = [sys.executable, "-m", "counters", "persist", "--serve-child", str(os.getpid())]
            self.proc = subprocess.Popen(args, env=self.env)
            log.info("persister process started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        started = time.monotonic()
        delay = 0.0
        while not self._stop.wait(CHECK_EVERY):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            if proc.returncode == 0:
                log.info("persister process %d exited", proc.pid)
                return
            lived = time.monotonic() - started
            delay = min(max(delay * 2, 0.5), MAX_RESTART_DELAY) if lived < QUICK_DEATH else 0.0
            log.warning(
                "persister process %d died (status %s); restarting it%s",
                proc.pid,
                proc.returncode,
                f" in {delay:g} s" if delay else "",
            )
            if self._stop.wait(delay):
                return
            self.restarts += 1
            started = time.monotonic()
            self._start()

    def __enter__(self) -> PersisterProcess:
        self._start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join(5)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
