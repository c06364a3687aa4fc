"""A real `counters serve` process (uvicorn) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import Backends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service_env(backends: Backends, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment that points the CLI and the service at the test backends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env.update(
        COUNTERS_REDIS_URL=backends.redis_url,
        COUNTERS_DATABASE_URL=backends.database_url,
        COUNTERS_KEY_PREFIX=backends.prefix,
        COUNTERS_DATA_DIR=str(data_dir),
        COUNTERS_GRACE_SECONDS="1",
        COUNTERS_PERSIST_INTERVAL_SECONDS="0.2",
        COUNTERS_CROSSTABS="source:country",
    )
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str) -> str:
    """Runs `counters <args>`; returns stdout (fails the test on a non-zero exit)."""
    proc = subprocess.run(
        [sys.executable, "-m", "counters", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def create_key(env: dict[str, str], project: str, scope: str) -> str:
    """A new key, read from the last line the CLI prints."""
    return (
        cli(env, "keys", "create", "--project", project, "--scope", scope).strip().splitlines()[-1]
    )


class Service:
    """Starts, stops and restarts one service process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Returns once /healthz answers 200."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "counters", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"service not healthy: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then wait for a clean exit (kill after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
