"""compose.yaml wires the services the way the code reads its settings (no Docker here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from counters.core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_services_present() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "counters"}
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "--appendonly" in services["redis"]["command"]


def test_service_env_names_are_real_settings() -> None:
    env = compose()["services"]["counters"]["environment"]
    fields = {"COUNTERS_" + f.upper() for f in Settings.__struct_fields__}
    assert set(env) <= fields, set(env) - fields
    settings = load_settings(env={k: str(v) for k, v in env.items()})
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.database_url is not None and "@postgres:5432/" in settings.database_url
    assert settings.host == "0.0.0.0"


def test_ports_and_credentials_match() -> None:
    services = compose()["services"]
    env = services["counters"]["environment"]
    port = load_settings(env={k: str(v) for k, v in env.items()}).port
    assert services["counters"]["ports"] == [f"{port}:{port}"]
    pg = services["postgres"]["environment"]
    url = env["COUNTERS_DATABASE_URL"]
    assert url == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg['POSTGRES_DB']}"
    )
    assert set(services["counters"]["depends_on"]) == {"redis", "postgres"}
