"""compose.yaml wires the services the way the code reads its settings, keeps its secrets
out of the file, and every service has a healthcheck and a restart policy; the Dockerfile
runs as a non-root user, listens on 0.0.0.0 and checks /healthz. Checked statically (there
is no Docker daemon here); the image is built only where a daemon answers."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from counters.core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"POSTGRES_PASSWORD": "pg-secret-1", "REDIS_PASSWORD": "redis-secret-2"}
_VAR = re.compile(r"\$\{(\w+)(?::\?([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}` / `${VAR:?message}` substitution (a missing required variable is
    an error, as compose makes it) and `$$` -> `$`."""

    def one(match: re.Match[str]) -> str:
        name, required = match.group(1), match.group(2)
        if name not in env and required is not None:
            raise KeyError(f"{name}: {required}")
        return env.get(name, "")

    return _VAR.sub(one, text).replace("$$", "$")


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    text = (ROOT / "compose.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(interpolate(text, SECRETS if env is None else env))
    return data


def test_services_present() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "counters"}
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "--appendonly yes" in " ".join(services["redis"]["command"])


def test_service_env_names_are_real_settings() -> None:
    env = compose()["services"]["counters"]["environment"]
    fields = {"COUNTERS_" + f.upper() for f in Settings.__struct_fields__}
    assert set(env) <= fields, set(env) - fields
    settings = load_settings(env={k: str(v) for k, v in env.items()})
    assert settings.redis_url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
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
    assert pg["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert '--requirepass "$REDIS_PASSWORD"' in " ".join(services["redis"]["command"])
    assert set(services["counters"]["depends_on"]) == {"redis", "postgres"}


def test_no_secret_is_in_the_file() -> None:
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for value in (
        raw["postgres"]["environment"]["POSTGRES_PASSWORD"],
        raw["redis"]["environment"]["REDIS_PASSWORD"],
    ):
        assert _VAR.fullmatch(value) and ":?" in value, value  # required, from outside
    for name in ("COUNTERS_REDIS_URL", "COUNTERS_DATABASE_URL"):
        password = re.search(r"://[^:/@]*:([^@]*)@", raw["counters"]["environment"][name])
        assert password is not None and _VAR.fullmatch(password.group(1)), name
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose(env={"REDIS_PASSWORD": "x"})  # compose refuses to start without it
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and ".env" in (ROOT / ".dockerignore").read_text().split()


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped"), name
        assert service["healthcheck"]["test"], name
    check = " ".join(services["counters"]["healthcheck"]["test"])
    port = services["counters"]["environment"]["COUNTERS_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in check


def _dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_dockerfile_runs_unprivileged_on_all_interfaces_with_a_healthcheck() -> None:
    lines = _dockerfile()
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = " ".join(ln for ln in lines if ln.startswith("ENV "))
    assert "COUNTERS_HOST=0.0.0.0" in env
    (health,) = [ln for ln in lines if ln.startswith("HEALTHCHECK ")]
    assert "/healthz" in health and "CMD" in health
    installs = [ln for ln in lines if "pip install" in ln]
    assert installs and all("embedded" not in ln and "[dev" not in ln for ln in installs)
    assert lines[-1].startswith("CMD") and "serve" in lines[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".counters", ".git"} <= set(ignored)


def _daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    return probe.returncode == 0


def test_image_builds_and_runs_as_non_root() -> None:
    if not _daemon():
        pytest.skip("no Docker daemon answers `docker info`: the Dockerfile is checked statically")
    tag = f"counters-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=900
    )
    assert build.returncode == 0, build.stderr
    try:
        run = subprocess.run(
            ["docker", "run", "--rm", tag, "sh", "-c", "id -u && counters --version"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        uid, version = run.stdout.split("\n", 1)
        assert uid != "0" and version.startswith("counters, version")
        bare = subprocess.run(
            ["docker", "run", "--rm", tag, "counters", "migrate"],
            capture_output=True,
            text=True,
            timeout=120,
        )  # no URLs and no embedded extra in the image: a clear message, exit 1
        assert bare.returncode == 1 and "counters[embedded]" in bare.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
