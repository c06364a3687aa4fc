"""`python -m counters` is the `counters` command."""

from counters.cli import main

main()
