"""Schemathesis against a real service, long form: at least --cases generated test cases over
every operation of /openapi.json, with every check (no 5xx, responses match the schema,
errors are JSON ...). `make test` runs the short form (tests/test_openapi.py, 15 examples per
operation); this one runs in `make bench` and `python -m bench faults`.

    .venv/bin/python -m bench fuzz [--cases 10000] [--seed 1] [--no-append]

The service runs on private servers (or COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL) with the
rate limits off: the fuzzer sends thousands of requests a second on one key, which the
limits would rightly refuse with 429 (that path has its own tests)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import busy_warning, load_now, log, md_table, report, stack
from counters.harness.fuzz import schemathesis_command

_CASES = re.compile(r"(\d+)\s+generated")


def operations(url: str) -> int:
    """Operations the served document lists."""
    import httpx

    doc = httpx.get(url + "/openapi.json", timeout=10).json()
    return sum(len(item) for item in doc["paths"].values())


def run_schemathesis(
    url: str, key: str, *, cases: int, seed: int, report_dir: Path, max_time: float
) -> tuple[int, int, str]:
    """Runs `st run` with enough examples per operation for `cases` in all; returns (exit
    code, test cases generated, the tail of its output)."""
    per_operation = max(15, -(-cases // max(1, operations(url))))
    cmd = schemathesis_command(
        url, key, max_examples=per_operation, max_time=max_time, seed=seed, report_dir=report_dir
    )
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=max_time + 600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out = proc.stdout + proc.stderr
    found = [int(m) for m in _CASES.findall(out)]
    return proc.returncode, (found[-1] if found else 0), out[-3000:]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="test cases to generate, at least")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-time", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument("--quick", action="store_true", help="1,000 cases")
    p.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    args = p.parse_args(argv)
    cases = 1_000 if args.quick else args.cases
    load = load_now()
    with stack() as s:
        svc = s.service(
            "fuzz",
            env={
                "COUNTERS_RATE_LIMIT_INGEST": "0",
                "COUNTERS_RATE_LIMIT_READ": "0",
                "COUNTERS_RATE_LIMIT_PROJECT_EVENTS": "0",
            },
        )
        key = svc.key("fz" + uuid.uuid4().hex[:6], "admin")
        log(f"schemathesis: at least {cases} cases against {svc.url}")
        started = time.monotonic()
        code, generated, tail = run_schemathesis(
            svc.url, key, cases=cases, seed=args.seed, report_dir=s.work, max_time=args.max_time
        )
        seconds = time.monotonic() - started
    verdict = "no failures" if code == 0 else f"FAILED (exit code {code})"
    body = "\n\n".join(
        x
        for x in (
            busy_warning(),
            md_table(
                ["test cases generated", "seconds", "result"],
                [[f"{generated:,}", f"{seconds:.0f}", verdict]],
            ),
            "```\n" + tail.strip()[-1500:] + "\n```" if code != 0 else "",
        )
        if x
    )
    report(
        "Schemathesis, long form",
        "bench",
        ["fuzz", *argv],
        body,
        append=not args.no_append,
        load_at_start=load,
    )
    if code != 0 or generated < cases:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
