"""Child processes of `counters serve`, each kept running by a thread of serve's main
process: the persister process (one `counters persist --serve-child`, off the ingest
workers' cores) and, with --workers N > 1, the N HTTP workers (api/worker.py, each on its
own SO_REUSEPORT socket)."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from types import TracebackType

log = logging.getLogger("counters.serve")

CHECK_EVERY = 0.25
"""Seconds between two looks at the children."""
QUICK_DEATH = 5.0
"""A child that dies sooner than this after its start is restarted after a growing delay."""
MAX_RESTART_DELAY = 10.0
STOP_TIMEOUT = 15.0


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.delay = 0.0
        self.due = 0.0
        """When a dead child is started again (monotonic)."""


class Supervised:
    """While entered, keeps `count` children of one command running on the given
    environment. A child that exits with a non-zero status or a signal (crash, OOM,
    kill -9) is started again, after a growing delay (up to MAX_RESTART_DELAY) if it keeps
    dying within QUICK_DEATH of its start; one that exits 0 (asked to stop) is started again
    only with restart_clean. Leaving stops them all (SIGTERM, then SIGKILL after
    STOP_TIMEOUT)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        *,
        count: int = 1,
        restart_clean: bool = False,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.restart_clean = restart_clean
        self.restarts = 0
        self._children = [_Child(i) for i in range(count)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)

    @property
    def pids(self) -> list[int]:
        """The pids of the children started last (running or not)."""
        return [c.proc.pid for c in self._children if c.proc is not None]

    def _start(self, child: _Child) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            child.proc = subprocess.Popen(self.args, env=self.env)
            child.started = time.monotonic()
            log.info("%s %d started (pid %d)", self.name, child.index, child.proc.pid)

    def _check(self, child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is None:
            return
        now = time.monotonic()
        if child.due:  # dead, waiting for its restart
            if now >= child.due:
                child.due = 0.0
                self.restarts += 1
                self._start(child)
            return
        clean = proc.returncode == 0
        if clean and not self.restart_clean:
            log.info("%s %d (pid %d) exited", self.name, child.index, proc.pid)
            child.proc = None
            return
        quick = now - child.started < QUICK_DEATH
        child.delay = min(max(child.delay * 2, 0.5), MAX_RESTART_DELAY) if quick else 0.0
        if clean:  # asked to stop (a signal to the whole group?): serve may be stopping too
            child.delay = max(child.delay, 1.0)
        log.warning(
            "%s %d (pid %d) exited with status %s; restarting it in %g s",
            self.name,
            child.index,
            proc.pid,
            proc.returncode,
            child.delay,
        )
        child.due = now + child.delay
        self._check(child)  # at once when there is no delay

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_EVERY):
            for child in self._children:
                self._check(child)

    def __enter__(self) -> Supervised:
        for child in self._children:
            self._start(child)
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
        running = [c.proc for c in self._children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
