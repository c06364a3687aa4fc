"""Helpers for running counters against real servers, shared by tests/ and bench/ (and
the fault suite in `faults/`). Outside the runtime layers: no runtime module imports it."""
