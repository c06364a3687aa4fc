"""A real `counters serve` process for end-to-end tests: the shared harness, re-exported
for the test modules."""

from counters.harness.servers import free_port
from counters.harness.service import Service, cli, create_key, service_env

__all__ = ["Service", "cli", "create_key", "free_port", "service_env"]
