"""`counters projects shards P [N]`: show or change how a project is split over Redis
keyspaces (counters/core/shards.py holds the rules)."""

from __future__ import annotations

import asyncio
import time

import click
import msgspec

from counters.core.errors import CountersError
from counters.core.shards import ShardPlan, shard_projects
from lua.keys import ProjectKeys


class ShardsReply(msgspec.Struct):
    """What `projects shards --json` prints."""

    project: str
    shards: int
    span: int
    ids_over: int
    ids_over_until: int | None
    keyspaces: list[str]


def _reply(project: str, plan: ShardPlan, prefix: str, now_ms: int) -> ShardsReply:
    return ShardsReply(
        project,
        plan.shards,
        plan.span,
        plan.ids_over(now_ms),
        plan.id_until_ms if now_ms < plan.id_until_ms else None,
        [ProjectKeys(prefix, p).base for p in shard_projects(project, plan.span)],
    )


@click.group("projects")
def projects() -> None:
    """Projects: how each is split over Redis keyspaces (shards)."""


@projects.command("shards")
@click.argument("project")
@click.argument("n", type=int, required=False)
@click.option(
    "--ids-now",
    is_flag=True,
    help="Route events with ids over N at once, without the dedupe window (only safe when no"
    " client will retry a batch sent before the change, e.g. a project that has no events).",
)
@click.option("--json", "as_json", is_flag=True, help="The plan as one JSON object.")
def projects_shards(project: str, n: int | None, ids_now: bool, as_json: bool) -> None:
    """Show PROJECT's shards, or split it into N (1-64) keyspaces {p:PROJECT}, {p:PROJECT:1},
    ... so one tenant's writes spread over a cluster's masters. Safe on a live project:
    every process follows within shard_refresh_seconds; shards never lose their data
    (reads cover every shard ever used), and events with ids keep their routing for the
    dedupe window, so a retry is still found as a duplicate."""
    from counters.cli import _settings
    from counters.services import key_backends
    from persist.shards import load_plan, set_shards

    settings = _settings()
    now_ms = int(time.time() * 1000)
    window_ms = int((settings.dedupe_window_seconds + 4 * settings.shard_refresh_seconds) * 1000)
    if ids_now:
        window_ms = 0

    async def go() -> ShardPlan:
        async with key_backends(settings) as (conn, _redis):
            if n is None:
                plan = await load_plan(conn, project)
                if plan is None:
                    raise ValueError(f"unknown project {project!r}")
                return plan
            return await set_shards(conn, project, n, now_ms, window_ms)

    try:
        plan = asyncio.run(go())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except CountersError as exc:
        raise click.ClickException(exc.message) from exc
    reply = _reply(project, plan, settings.key_prefix, now_ms)
    if as_json:
        click.echo(msgspec.json.encode(reply).decode())
        return
    click.echo(f"project {project}: {plan.shards} shard(s), {plan.span} holding data")
    if reply.ids_over_until is not None:
        click.echo(
            f"events with ids stay routed over {reply.ids_over} shard(s) until"
            f" {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(reply.ids_over_until / 1000))}"
            " (the dedupe window)"
        )
    for base in reply.keyspaces:
        click.echo(f"  {base}")
