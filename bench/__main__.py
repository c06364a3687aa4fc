"""`python -m bench <scenario> [options]`: every benchmark behind one entry point.

Scenarios: quick, ingest, workers, pixel, reads, freshness, memory, fuzz, faults, rebuild,
cluster, backfill, sustained, all.
`--quick` makes each one short. Results are appended to bench/RESULTS.md."""

from __future__ import annotations

import importlib
import sys

SCENARIOS = (
    "ingest",
    "workers",
    "pixel",
    "reads",
    "freshness",
    "memory",
    "fuzz",
    "rebuild",
    "cluster",
    "backfill",
    "sustained",
)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    name, rest = args[0], args[1:]
    names = SCENARIOS if name == "all" else (name,)
    for scenario in names:
        module = importlib.import_module(f"bench.{scenario}")
        print(f"== bench {scenario} {' '.join(rest)}", flush=True)
        module.main(rest)


if __name__ == "__main__":
    main()
