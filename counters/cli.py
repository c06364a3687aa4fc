"""The `counters` command line. Every command resolves its settings the same way as `serve`
(config file, COUNTERS_* env, embedded servers when no URL is set), so all reach the same
Redis and Postgres."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import click

from counters.config import Settings, load_settings


def _settings(**overrides: Any) -> Settings:
    from counters.backends import resolve_settings

    try:
        settings = load_settings(overrides={k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    return resolve_settings(settings)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """counters: real-time counters on Redis with Postgres rollups."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default 8000).")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn workers.")
@click.option("--no-persister", is_flag=True, help="Do not run the persister in-process.")
def serve(host: str | None, port: int | None, workers: int, no_persister: bool) -> None:
    """Run the HTTP service (and, by default, the persister)."""
    import uvicorn

    settings = _settings(host=host, port=port)
    os.environ["COUNTERS_REDIS_URL"] = settings.redis_url or ""
    os.environ["COUNTERS_DATABASE_URL"] = settings.database_url or ""
    if no_persister:
        os.environ["COUNTERS_PERSISTER_ENABLED"] = "false"
    click.echo(f"counters: redis {settings.redis_url}", err=True)
    click.echo(f"counters: postgres {settings.database_url}", err=True)
    click.echo(f"counters: listening on http://{settings.host}:{settings.port}", err=True)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


@main.command()
def persist() -> None:
    """Run the persister alone (several may run; they split projects safely)."""
    from counters.backends import open_redis
    from counters.clock import SystemClock
    from counters.metrics import Metrics
    from lua import Scripts
    from persist.db import create_pool
    from persist.persister import Persister

    settings = _settings()

    async def run() -> None:
        assert settings.redis_url and settings.database_url
        redis = open_redis(settings.redis_url)
        pool = await create_pool(settings.database_url, max_size=4)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Persister(pool, redis, Scripts(redis), settings, SystemClock(), Metrics()).run(
                stop
            )
        finally:
            await pool.close()
            await redis.aclose()

    asyncio.run(run())


@main.command()
def migrate() -> None:
    """Apply pending database migrations."""
    import asyncpg

    from persist.db import migrate as do_migrate

    settings = _settings()

    async def run() -> list[str]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await do_migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    click.echo("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--project", required=True, help="Project the key belongs to (created if new).")
@click.option(
    "--scope",
    type=click.Choice(["ingest", "read", "admin"]),
    required=True,
    help="ingest: write events; read: read counters; admin: both.",
)
def keys_create(project: str, scope: str) -> None:
    """Create a key; it is printed once, on the last line (only its hash is stored)."""
    import asyncpg

    from persist.db import migrate as do_migrate
    from persist.projects import create_key

    settings = _settings()

    async def run() -> str:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await do_migrate(conn)
            return await create_key(conn, project, scope)
        finally:
            await conn.close()

    try:
        key = asyncio.run(run())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created {scope} key for project {project}:", err=True)
    click.echo(key)


@main.group()
def embedded() -> None:
    """The embedded Valkey and Postgres under the data dir."""


@embedded.command("status")
def embedded_status() -> None:
    """Print the URL of each embedded server that is running."""
    from counters import embedded as emb

    settings = load_settings()
    for name, url in emb.embedded_status(settings.resolved_data_dir()).items():
        click.echo(f"{name}: {url or 'not running'}")


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop the embedded servers (data is kept)."""
    from counters import embedded as emb

    stopped = emb.stop_embedded(load_settings().resolved_data_dir())
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
