"""The schemathesis command the suite (short form) and bench (long form) run against a real
service: every check, one key, a fixed seed."""

from __future__ import annotations

import sys
from pathlib import Path


def schemathesis_command(
    url: str, key: str, *, max_examples: int, max_time: float, seed: int, report_dir: Path
) -> list[str]:
    """`st run` over the service's /openapi.json with every check but
    positive_data_acceptance (the ingest window is relative to now, which no schema can
    express), at most max_examples per operation and max_time seconds in all."""
    return [
        str(Path(sys.executable).parent / "st"),
        "run",
        url + "/openapi.json",
        "-H",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(int(max_time)),
        "--seed",
        str(seed),
        "--warnings",
        "off",
        "--report-dir",
        str(report_dir),
    ]
