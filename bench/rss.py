"""`python -m bench.rss [--session] CMD ...`: runs CMD and then prints its peak RSS.

A child's ru_maxrss counts the memory it was forked with, so a benchmark that holds a large
dataset and times a CLI child straight from os.wait4 reports its own size. This launcher
is small: the child it forks (and execs into CMD) starts from it, and the peak it reports
is CMD's own. The last line on stderr is `peak_rss_kb=N`; the exit code is CMD's. With
--session CMD leads a session of its own, as a job run by cron or systemd does."""

from __future__ import annotations

import os
import sys

MARK = "peak_rss_kb="


def main() -> None:
    argv = sys.argv[1:]
    session = argv[:1] == ["--session"]
    if session:
        argv = argv[1:]
    pid = os.fork()
    if pid == 0:
        if session:
            os.setsid()
        os.execvp(argv[0], argv)
    _, status, usage = os.wait4(pid, 0)
    sys.stdout.flush()
    print(f"{MARK}{usage.ru_maxrss}", file=sys.stderr, flush=True)
    sys.exit(os.waitstatus_to_exitcode(status))


def parse(text: str) -> tuple[float, str]:
    """(peak RSS in MB, the output without the launcher's line) of a run's output."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(MARK):
            kb = int(lines[i][len(MARK) :])
            return kb / 1024, "\n".join(lines[:i] + lines[i + 1 :])
    return 0.0, text


if __name__ == "__main__":
    main()
