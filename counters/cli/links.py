"""`counters links create|list|disable`: click-tracking links from the command line (the
logic is in counters.engines.links; these commands parse options and print)."""

from __future__ import annotations

import click
import msgspec

from counters.cli.keys import _run
from counters.core.links import DEFAULT_NAME, Link


def _line(link: Link) -> str:
    dims = ",".join(f"{k}={v}" for k, v in sorted(link.dims.items())) or "-"
    state = "active" if link.active else f"disabled {link.disabled_at}"
    return "\t".join([link.id, link.project, link.name, dims, state, link.target])


@click.group("links")
def links() -> None:
    """Click-tracking links: GET /r/<id> counts a click and redirects to the target."""


@links.command("create")
@click.option("--project", required=True, help="Project the clicks are counted in.")
@click.option("--target", required=True, help="Absolute http(s) URL to redirect to.")
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="Event name of a click.")
@click.option("--dim", "dims", multiple=True, help="k=v dim of every click (repeat).")
@click.option("--json", "as_json", is_flag=True, help="The link as one JSON object.")
def links_create(
    project: str, target: str, name: str, dims: tuple[str, ...], as_json: bool
) -> None:
    """Register a link; prints its id (its URL is <service>/r/<id>)."""
    from counters.engines.links import create_link

    link = _run(
        lambda conn, redis, prefix: create_link(
            conn, redis, prefix, project, target, name=name, dims=dims
        )
    )
    if as_json:
        click.echo(msgspec.json.encode(link).decode())
        return
    click.echo(f"link for project {project}: /r/{link.id} -> {link.target}", err=True)
    click.echo(link.id)


@links.command("list")
@click.option("--project", default=None, help="Only this project's links.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def links_list(project: str | None, as_json: bool) -> None:
    """List links (id, project, name, dims, state, target), oldest first."""
    from counters.engines.links import list_links

    found = _run(lambda conn, _r, _p: list_links(conn, project))
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    click.echo("id\tproject\tname\tdims\tstate\ttarget")
    for link in found:
        click.echo(_line(link))


@links.command("disable")
@click.argument("link_id")
@click.option("--json", "as_json", is_flag=True, help="The link as one JSON object.")
def links_disable(link_id: str, as_json: bool) -> None:
    """Disable a link: its URL answers 404 in every worker within about a second."""
    from counters.engines.links import disable_link

    link = _run(lambda conn, redis, prefix: disable_link(conn, redis, prefix, link_id))
    if as_json:
        click.echo(msgspec.json.encode(link).decode())
    else:
        click.echo(f"disabled {link.id}")
