"""`counters deadletter list|retry|drop`: the raw-log entries the persister moved aside
because Postgres refused their rows (counters/engines/deadletter.py does the work)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import msgspec

from counters.core.buckets import format_ts

T = TypeVar("T")


def _run(
    settings_overrides: dict[str, object],
    work: Callable[..., Awaitable[T]],
    project: str | None = None,
) -> T:
    """work(DeadLetters) on the command's backends; `Error: unknown project` first when
    project is given and Postgres does not know it."""
    from counters.cli import _services, _settings, require_projects
    from counters.engines.deadletter import DeadLetters

    settings = _settings(**settings_overrides)

    async def run() -> T:
        async with _services(settings) as services:
            await require_projects(services, [project] if project is not None else [])
            return await work(DeadLetters(services.pool))

    return asyncio.run(run())


def _chosen(letter_id: int | None, all_: bool, project: str | None) -> list[int] | None:
    """The ids asked for (None = every dead letter, of --project if given)."""
    if (letter_id is None) == (not all_):
        raise click.UsageError("give a dead letter ID or --all (with --project P to narrow)")
    return None if all_ else [letter_id]  # type: ignore[list-item]


@click.group("deadletter")
def deadletter() -> None:
    """Raw-log entries Postgres refused, moved aside bytes intact (counted, not in the raw
    log)."""


@deadletter.command("list")
@click.option("--project", default=None, help="Only this project.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deadletter_list(project: str | None, as_json: bool) -> None:
    """List the dead letters: id, project, stream id, events, attempts, error, first and
    last failure."""
    letters = _run({}, lambda d: d.entries(project=project), project)
    if as_json:
        for letter in letters:
            click.echo(msgspec.json.encode(letter).decode())
        return
    if not letters:
        click.echo("no dead letters")
        return
    for d in letters:
        click.echo(
            f"{d.id}\t{d.project}\t{d.stream_id}\t{d.events} events\t{d.attempts} attempts"
            f"\tfirst {format_ts(d.first_failed_at)}\tlast {format_ts(d.last_failed_at)}"
            f"\t{d.error}"
        )


@deadletter.command("retry")
@click.argument("letter_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --project).")
@click.option("--project", default=None, help="Only this project.")
@click.option(
    "--sanitize",
    is_flag=True,
    help="Replace what Postgres cannot store (NUL, lone surrogates) with U+FFFD first.",
)
def deadletter_retry(
    letter_id: int | None, all_: bool, project: str | None, sanitize: bool
) -> None:
    """Copy dead letters into the raw log again (after fixing the data or the schema); the
    events are already counted, so nothing is counted twice."""
    ids = _chosen(letter_id, all_, project)
    result = _run({}, lambda d: d.retry(ids=ids, project=project, sanitize=sanitize), project)
    click.echo(f"retried: {result.entries} entries, {result.events} events copied to the raw log")
    for failed_id, error in result.failed.items():
        click.echo(f"  {failed_id} still failing: {error}")
    if result.failed:
        raise SystemExit(1)


@deadletter.command("drop")
@click.argument("letter_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --project).")
@click.option("--project", default=None, help="Only this project.")
def deadletter_drop(letter_id: int | None, all_: bool, project: str | None) -> None:
    """Delete dead letters for good; prints how many events are thereby missing from the
    raw log (they stay counted in the rollups until a rebuild of their days)."""
    ids = _chosen(letter_id, all_, project)
    result = _run({}, lambda d: d.drop(ids=ids, project=project), project)
    click.echo(
        f"dropped: {result.entries} entries; {result.events} events are now missing from the"
        " raw log"
    )
