"""`counters keys create|list|revoke|rotate`: the key lifecycle from the command line. The
logic is in counters.engines.keys; these commands parse options and print."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click
import msgspec

from counters.core.errors import CountersError, Unavailable

if TYPE_CHECKING:
    import asyncpg

    from counters.core.keys import KeyRecord, NewKey
    from lua.client import RedisClient

T = TypeVar("T")


def _run(
    work: Callable[[asyncpg.Connection, RedisClient, str], Awaitable[T]], raw: bool = False
) -> T:
    """Runs work(conn, redis, key prefix) on the key backends; bad input and backend
    errors become a clean exit."""
    from counters.cli import _settings
    from counters.services import key_backends

    settings = _settings()

    async def go() -> T:
        async with key_backends(settings) as (conn, redis):
            return await work(conn, redis, settings.key_prefix)

    try:
        return asyncio.run(go())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except CountersError as exc:
        if raw and isinstance(exc, Unavailable):
            raise
        raise click.ClickException(exc.message) from exc


def _print_new(new: NewKey, as_json: bool, what: str) -> None:
    """The new secret on the last line: alone, or in the JSON object with --json."""
    click.echo(f"{what} {new.scope} key {new.id} for project {', '.join(new.projects)}:", err=True)
    click.echo(msgspec.json.encode(new).decode() if as_json else new.key)


@click.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option(
    "--project",
    "projects",
    required=True,
    multiple=True,
    help="Project the key belongs to (created if new); repeat for a read key over several.",
)
@click.option(
    "--scope",
    type=click.Choice(["ingest", "read", "admin", "pixel"]),
    required=True,
    help="ingest: write events; read: read counters; admin: both and manage keys;"
    " pixel: single events from browsers (public).",
)
@click.option("--expires", default=None, help="Lifetime: 30d, 12h, 15m or 3600s (default never).")
@click.option("--origin", "origins", multiple=True, help="Pixel keys: allowed origin (repeat).")
@click.option("--name", "names", multiple=True, help="Pixel keys: allowed event name (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Last line: the key as a JSON object.")
def keys_create(
    projects: tuple[str, ...],
    scope: str,
    expires: str | None,
    origins: tuple[str, ...],
    names: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a key; it is printed once, on the last line (only its hash is stored)."""
    from counters.engines.keys import create

    new = _run(
        lambda conn, _r, _p: create(
            conn, projects, scope, expires=expires, origins=origins, names=names
        )
    )
    _print_new(new, as_json, "created")


@keys.command("list")
@click.option("--project", default=None, help="Only keys covering this project.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def keys_list(project: str | None, as_json: bool) -> None:
    """List keys (id, projects, scope, times); never a secret."""
    from counters.engines.keys import list_keys

    async def listed(conn: asyncpg.Connection) -> list[KeyRecord]:
        from persist.projects import project_exists

        if project is not None and not await project_exists(conn, project):
            from counters.cli import unknown_project

            raise unknown_project(project)
        return await list_keys(conn, project)

    records: list[KeyRecord] = _run(lambda conn, _r, _p: listed(conn))
    if as_json:
        click.echo(msgspec.json.encode(records).decode())
        return
    click.echo("id\tscope\tprojects\tcreated_at\tlast_used_at\texpires_at\trevoked_at")
    for r in records:
        cells = [r.id, r.scope, ",".join(r.projects), r.created_at]
        cells += [r.last_used_at or "-", r.expires_at or "-", r.revoked_at or "-"]
        click.echo("\t".join(cells))


@keys.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"revoked": id}.')
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key by id: every running worker refuses it within a second."""
    from counters.cli import _settings
    from counters.core.keys import KEY_ID_PATTERN
    from counters.engines.keys import revoke

    try:
        _run(lambda conn, redis, prefix: revoke(conn, redis, prefix, key_id), raw=True)
    except Unavailable as exc:
        if exc.backend != "postgres" or not KEY_ID_PATTERN.match(key_id):
            raise click.ClickException(exc.message) from exc
        from counters.services import revoke_in_redis

        try:
            asyncio.run(revoke_in_redis(_settings(), key_id))
        except Unavailable as again:
            raise click.ClickException(again.message) from again
        click.echo(
            f"{exc.message}: {key_id} revoked in Redis only (every worker refuses it);"
            " run this command again once Postgres is back to record it there",
            err=True,
        )
    if as_json:
        click.echo(msgspec.json.encode({"revoked": key_id}).decode())
    else:
        click.echo(f"revoked {key_id}")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="How long the old secret keeps working (30d, 12h, 15m, 3600s).",
)
@click.option("--json", "as_json", is_flag=True, help="Last line: the new key as JSON.")
def keys_rotate(key_id: str, grace: str, as_json: bool) -> None:
    """A new secret for the key (new id); the old one works until the grace ends."""
    from counters.core.keys import parse_duration
    from counters.engines.keys import rotate

    try:
        seconds = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from exc
    new = _run(lambda conn, redis, prefix: rotate(conn, redis, prefix, key_id, seconds))
    _print_new(new, as_json, "rotated to")
