"""Fault injection: a load driver and a chaos loop against a real service, persisters, Valkey
and Postgres, then a verification of the invariants of docs/ARCHITECTURE.md against the
driver's log of acknowledged events. Short form: tests/test_faults.py; long form:
`python -m bench.faults`."""

from counters.harness.faults.scenario import FaultConfig, Report, run_faults, run_kill_redis_default

__all__ = ["FaultConfig", "Report", "run_faults", "run_kill_redis_default"]
