"""A real `counters serve` process (uvicorn) and the `counters` CLI as a subprocess, for
end-to-end tests, the fault suite and bench."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from counters.harness.servers import Backends, free_port


def service_env(backends: Backends, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment that points the CLI and the service at the backends (no other COUNTERS_*
    from the caller's environment), short grace and persist interval, extra on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env.update(
        COUNTERS_REDIS_URL=backends.redis_url,
        COUNTERS_DATABASE_URL=backends.database_url,
        COUNTERS_KEY_PREFIX=backends.prefix,
        COUNTERS_DATA_DIR=str(data_dir),
        COUNTERS_GRACE_SECONDS="1",
        COUNTERS_PERSIST_INTERVAL_SECONDS="0.2",
        COUNTERS_CROSSTABS="source:country",
        # the suite and bench burst thousands of requests per key: the limits stay on (their
        # cost is measured) but never bind; tests/security/test_limits_* set small ones
        COUNTERS_RATE_LIMIT_INGEST="1000000",
        COUNTERS_RATE_LIMIT_READ="1000000",
        COUNTERS_RATE_LIMIT_PROJECT_EVENTS="100000000",
    )
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs `counters <args>` in a subprocess with this environment; returns the finished
    process (exit code, stdout and stderr as text), whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "counters", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli(env: dict[str, str], *args: str) -> str:
    """Runs `counters <args>`; returns stdout (AssertionError with stderr on a non-zero
    exit)."""
    proc = run_cli(env, *args, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def create_key(env: dict[str, str], project: str, scope: str) -> str:
    """A new key, read from the last line the CLI prints."""
    return (
        cli(env, "keys", "create", "--project", project, "--scope", scope).strip().splitlines()[-1]
    )


class Service:
    """Starts, stops and restarts one `counters serve --port P [args]` process."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        args: Sequence[str] = (),
        *,
        cwd: Path | None = None,
        stop_timeout: float = 15.0,
    ) -> None:
        self.env = env
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The serve process (uvicorn's main process)."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0, *, healthy: bool = True) -> None:
        """Returns once /healthz answers 200 (with healthy=False: answers at all, e.g. 503
        while a backend is down); AssertionError with the log tail if the process exits or
        does not answer so past the timeout."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "counters", "serve", "--port", str(self.port), *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited: {self.log_path.read_text()[-2000:]}")
            try:
                status = httpx.get(self.url + "/healthz", timeout=5).status_code
                if status == 200 or not healthy:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"service not healthy: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then wait for a clean exit (kill after stop_timeout)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._stop_group(self.proc.pid)

    def _stop_group(self, pgid: int) -> None:
        """Waits until no process of serve's session is left (its persister process and
        workers, which serve stops on SIGTERM but which outlive a killed serve by up to a
        second): SIGTERM, then SIGKILL after stop_timeout. A leftover persister would go on
        persisting the test database with the real clock."""
        deadline = time.monotonic() + self.stop_timeout
        killed_at: float | None = None
        sig: signal.Signals | None = signal.SIGTERM
        while killed_at is None or time.monotonic() < killed_at + 5:
            try:
                os.killpg(pgid, sig or 0)
            except ProcessLookupError:
                return
            except PermissionError:  # pragma: no cover - not ours
                return
            sig = None
            if killed_at is None and time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.02)
