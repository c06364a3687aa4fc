"""The `counters` command line. Every command resolves its settings the same way as `serve`
(config file, COUNTERS_* env, embedded servers when no URL is set), so all reach the same
Redis and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from counters.core.config import Settings, load_settings
from counters.core.errors import Unavailable

if TYPE_CHECKING:
    from counters.engines.progress import DayProgress
    from counters.engines.rebuild import RebuildReport
    from counters.services import Services

# The backends are reached only through counters.services (the wiring). It is imported inside
# the commands that need it: it pulls in redis, asyncpg and the engines, which `--help` and
# `embedded status` do not need (0.25 s vs 1 s to start).


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
"""Every command (subcommands inherit it) takes -h as well as --help."""

EXIT_DISCREPANCIES = 2
"""`reconcile --exit-code` and `rebuild --exit-code`: rows differed (1 is an error)."""


def echo_json(value: object) -> None:
    """Writes value as one line of JSON on stdout (the only stdout line of a --json run)."""
    click.echo(msgspec.json.encode(value).decode())


def unknown_project(project: str) -> click.ClickException:
    """The one error every command gives for a project Postgres does not know (exit 1)."""
    return click.ClickException(f"unknown project {project!r}")


async def require_projects(services: Services, projects: Sequence[str]) -> None:
    """Raises `Error: unknown project 'x'` for the first project not known to Postgres,
    before anything is read or written for any of them."""
    for project in projects:
        if not await services.project_exists(project):
            raise unknown_project(project)


def _load(**overrides: Any) -> Settings:
    try:
        return load_settings(overrides={k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _settings(**overrides: Any) -> Settings:
    from counters.embedded import EmbeddedServerError
    from counters.services import resolve_settings

    try:
        return resolve_settings(_load(**overrides))
    except EmbeddedServerError as exc:  # e.g. the embedded extra is not installed
        raise click.ClickException(str(exc)) from exc


def _redact(url: str | None) -> str:
    """url with its password replaced by *** (for printing)."""
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return str(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="counters", prog_name="counters")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """counters: real-time counters on Redis with Postgres rollups."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Listen port (default 8000)."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="uvicorn workers."
)
@click.option("--no-persister", is_flag=True, help="Do not run the persister.")
def serve(host: str | None, port: int | None, workers: int, no_persister: bool) -> None:
    """Run the HTTP service (and, by default, the persister in a process of its own)."""
    import uvicorn

    from counters.cli.supervise import Supervised
    from counters.cli.worker import APP, listening_socket, reuseport_socket, uvicorn_options
    from counters.embedded.watchdog import Watchdog
    from counters.metrics import DeadProcessReaper, use_multiprocess_dir
    from counters.services import SETTINGS_ENV, encode_settings

    unresolved = _load(host=host, port=port)
    # every worker and the persister process write their metrics here; /metrics sums them
    metrics_dir = unresolved.resolved_data_dir() / "metrics" / f"serve-{unresolved.port}"
    try:
        use_multiprocess_dir(metrics_dir)
    except OSError as exc:  # a read-only data dir: a private temporary one
        import tempfile

        metrics_dir = Path(tempfile.mkdtemp(prefix="counters-metrics-"))
        click.echo(f"counters: metrics in {metrics_dir} ({exc})", err=True)
        use_multiprocess_dir(metrics_dir)
    settings = _settings(host=host, port=port)
    # with the embedded default, crashed embedded servers are restarted while serving
    watchdog = Watchdog(
        settings.resolved_data_dir(),
        redis_url=settings.redis_url if unresolved.redis_url is None else None,
        database_url=settings.database_url if unresolved.database_url is None else None,
    )
    if no_persister:
        settings = msgspec.structs.replace(settings, persister_enabled=False)
    own_process = settings.persister_enabled and settings.persister_process
    workers_settings = settings
    if own_process:  # the persister and the nightly reconcile run once, in that process
        workers_settings = msgspec.structs.replace(
            settings, persister_enabled=False, reconcile_enabled=False
        )
    persister_env = {**os.environ, SETTINGS_ENV: encode_settings(settings)}
    # The one channel to the workers: they decode these resolved settings and resolve nothing.
    os.environ[SETTINGS_ENV] = encode_settings(workers_settings)
    click.echo(f"counters: redis {_redact(settings.redis_url)}", err=True)
    click.echo(f"counters: postgres {_redact(settings.database_url)}", err=True)
    # Bound here, before anything starts: a busy or forbidden port is an error (exit 1), and
    # "listening" is printed only once the socket is bound. With several workers each binds
    # its own SO_REUSEPORT socket; this one (bound, not listening) only proves the port free.
    try:
        if workers > 1:
            sock = reuseport_socket(settings.host, settings.port, listen=False)
        else:
            sock = listening_socket(settings.host, settings.port)
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        raise click.ClickException(f"cannot listen on {where}: {exc}") from exc
    click.echo(f"counters: listening on http://{settings.host}:{settings.port}", err=True)
    if settings.statsd_listen is not None:  # bound by every worker (api/statsd.py)
        from counters.cli.worker import udp_probe

        try:
            udp_probe(settings.statsd_listen)
        except OSError as exc:
            raise click.ClickException(f"statsd_listen {settings.statsd_listen}: {exc}") from exc
        click.echo(f"counters: statsd on udp {settings.statsd_listen}", err=True)
    _raise_fd_limit(settings.max_connections * workers + 256)
    persister: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if own_process:
        persister = Supervised(
            "persister process",
            [sys.executable, "-m", "counters", "persist", "--serve-child", str(os.getpid())],
            persister_env,
        )
    # the live gauges (counters_processes) of a dead worker or persister process drop out
    with sock, watchdog, persister, DeadProcessReaper(str(metrics_dir)):
        if workers > 1:
            _serve_workers(workers)
        else:
            config = uvicorn.Config(
                APP, host=settings.host, port=settings.port, **uvicorn_options(settings)
            )
            uvicorn.Server(config).run(sockets=[sock])


def _serve_workers(workers: int) -> None:
    """Runs `workers` HTTP worker processes (counters/cli/worker.py: each on its own
    SO_REUSEPORT socket), restarting any that dies, until SIGTERM or SIGINT (the caller
    holds a bound probe socket on the port meanwhile)."""
    import threading

    from counters.cli.supervise import Supervised

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    args = [sys.executable, "-m", "counters.cli.worker", str(os.getpid())]
    with Supervised("worker", args, dict(os.environ), count=workers, restart_clean=True):
        while not stop.wait(0.5):
            pass


def _raise_fd_limit(needed: int) -> None:
    """Raises the soft limit on open files to the hard one, and warns when even that is
    below needed (max_connections x workers + headroom for backends and /healthz)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        click.echo(
            f"counters: warning: the open-files limit ({soft}) is below max_connections x "
            f"workers + 256 ({needed}); lower COUNTERS_MAX_CONNECTIONS or raise `ulimit -n`",
            err=True,
        )


@contextlib.asynccontextmanager
async def _services(settings: Settings, *, wait: bool = False) -> AsyncIterator[Services]:
    """open_services for a command (a small pool); with wait=True, waits for Postgres to
    accept connections instead of failing, else exits with "postgres unavailable: ..."."""
    from counters.core.clock import SystemClock
    from counters.services import open_services

    async with contextlib.AsyncExitStack() as stack:
        try:
            services = await stack.enter_async_context(
                open_services(settings, SystemClock(), pool_max_size=4, wait_for_postgres=wait)
            )
        except Unavailable as exc:  # only opening is mapped; a failure later is not hidden
            raise click.ClickException(exc.message) from exc
        yield services


@main.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this process's /metrics on this port (on the service host).",
)
@click.option("--serve-child", "parent", type=int, default=None, hidden=True)
def persist(metrics_port: int | None, parent: int | None) -> None:
    """Run the persister alone (several may run; they split projects safely)."""
    from counters.services import SETTINGS_ENV, decode_settings

    # --serve-child PID: the persister process of `counters serve` (pid PID), on the settings
    # it resolved; it also runs the nightly reconcile and exits when serve is gone
    settings = decode_settings(os.environ[SETTINGS_ENV]) if parent is not None else _settings()

    async def watch_parent(stop: asyncio.Event) -> None:
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        stop.set()

    async def run() -> None:
        from counters.core.clock import SystemClock
        from counters.metrics import MetricsServer
        from counters.services import open_services

        # serve's child starts with the backends down, as the workers do (lazy: it backs off
        # and retries until they answer); alone, it waits for Postgres first
        opened = (
            open_services(settings, SystemClock(), lazy=True)
            if parent is not None
            else _services(settings, wait=True)
        )
        async with opened as services:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            with contextlib.ExitStack() as stack:
                if metrics_port is not None:
                    try:
                        server = MetricsServer(
                            services.metrics, settings.host, metrics_port, settings.metrics_token
                        )
                    except OSError as exc:
                        raise click.ClickException(f"--metrics-port {metrics_port}: {exc}") from exc
                    stack.enter_context(server.running())
                    click.echo(
                        f"counters: metrics on http://{settings.host}:{server.port}/metrics",
                        err=True,
                    )
                if parent is None:
                    await services.persister.run(stop)
                else:
                    await asyncio.gather(services.run_background(stop), watch_parent(stop))

    asyncio.run(run())


def _tracker(label: str, plan: dict[int, int]) -> DayProgress:
    """Progress of one run against its planned raw events per UTC day: a bar with events/s
    and ETA on a terminal, plain lines otherwise (never above 100 %)."""
    from counters.cli.report import BarDisplay, LineDisplay
    from counters.core.clock import SystemClock
    from counters.engines.progress import DayProgress

    if sys.stderr.isatty():
        return DayProgress(plan, SystemClock(), BarDisplay(label))
    display = LineDisplay(label, lambda line: click.echo(line, err=True))
    return DayProgress(plan, SystemClock(), display)


def _nice_option(default: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The --nice option of rebuild and reconcile (None when not given)."""
    return click.option(
        "--nice",
        type=click.IntRange(0, 19),
        default=None,
        help="Niceness of the run and (Postgres on this machine) its Postgres backends;"
        f" default: {default}.",
    )


def _nice_main_thread(nice: int) -> int:
    """Lowers this command's main thread to niceness `nice` (the threads it starts inherit
    it) and, when the command leads its own session (cron, systemd, `setsid`), its
    scheduler autogroup too: with autogroups on (Linux's default) a thread's niceness only
    ranks it within its session, and a session competes as a whole. Returns nice for the
    run's Postgres backends."""
    from persist.nice import nice_this_thread

    nice_this_thread(nice)
    if nice > 0 and os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(nice))
    return nice


def _ms(text: str, option: str) -> int:
    from counters.core.buckets import parse_ts

    try:
        return parse_ts(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


@main.command()
@click.option("--project", required=True, help="Project to rebuild.")
@click.option("--name", default=None, help="Only this event name.")
@click.option("--from", "from_", required=True, help="Start (RFC 3339 or epoch ms).")
@click.option("--to", "to", required=True, help="End, exclusive (RFC 3339 or epoch ms).")
@click.option("--dry-run", is_flag=True, help="Only print the buckets that differ.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option(
    "--exit-code",
    is_flag=True,
    help=f"Exit {EXIT_DISCREPANCIES} when any bucket differed (1 stays an error).",
)
@_nice_option("0 (full speed)")
def rebuild(
    project: str,
    name: str | None,
    from_: str,
    to: str,
    dry_run: bool,
    as_json: bool,
    exit_code: bool,
    nice: int | None,
) -> None:
    """Recompute rollups of [from, to) (whole UTC days) from the raw log in Postgres, while
    ingest keeps running. Idempotent; --dry-run changes nothing."""
    from counters.engines.reconcile import describe
    from counters.engines.shard_runs import planned_shard_days, run_shards, stored_names

    start, end = _ms(from_, "--from"), _ms(to, "--to")
    if start >= end:
        raise click.BadParameter("--from must be before --to", param_hint="--from")
    settings = _settings()
    nice = _nice_main_thread(nice or 0)

    async def run() -> RebuildReport:
        async with _services(settings) as services:
            await require_projects(services, [project])
            from counters.engines.deadletter import DeadLetters, range_warning

            names = await stored_names(services.pool, project)  # every shard, one project
            letters = await DeadLetters(services.pool).overlapping(project, start, end)
            warning = range_warning(letters, project, "a rebuild recomputes their days")
            if warning:  # the project's and its shards' dead letters
                click.echo(warning, err=True)
            plan = await planned_shard_days(services.pool, names, start, end, name)
            with _tracker(f"rebuild {project}", plan) as progress:
                return await run_shards(
                    services.rebuilder,
                    project,
                    names,
                    start,
                    end,
                    name=name,
                    write=not dry_run,
                    progress=progress,
                    nice=nice,
                )

    report = asyncio.run(run())
    days = len(report.days_differing)
    if as_json:
        echo_json({**msgspec.structs.asdict(report), "dry_run": dry_run, "differing_days": days})
    else:
        done = (
            f"would rewrite {days} day(s)" if dry_run else f"rewrote {report.written_days} day(s)"
        )
        click.echo(
            f"rebuild {project}: {report.events} events, {report.rows} rollup rows,"
            f" {report.discrepancies} differ; {done}"
        )
        for diff in report.diffs:
            click.echo("  " + describe(diff))
        click.echo(f"discrepancies: {report.discrepancies}")
    if exit_code and report.discrepancies:
        sys.exit(EXIT_DISCREPANCIES)


@main.command()
@click.option(
    "--days", type=click.IntRange(min=1), default=7, show_default=True, help="Window to check."
)
@click.option("--project", "projects", multiple=True, help="Only these projects.")
@click.option("--dry-run", is_flag=True, help="Report without correcting.")
@click.option("--json", "as_json", is_flag=True, help="The reports as one JSON object.")
@click.option(
    "--exit-code",
    is_flag=True,
    help=f"Exit {EXIT_DISCREPANCIES} when any row differed (fixed or not; 1 stays an error).",
)
@_nice_option("the setting reconcile_nice (10)")
def reconcile(
    days: int,
    projects: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    exit_code: bool,
    nice: int | None,
) -> None:
    """Compare every rollup of the last N days with the raw log, report and fix differences."""
    from counters.engines.reconcile import reconcile_projects

    settings = _settings()
    nice = _nice_main_thread(settings.reconcile_nice if nice is None else nice)
    reports: list[RebuildReport] = []

    async def run() -> int:
        async with _services(settings) as services:
            await require_projects(services, projects)
            names = list(projects) or await services.list_projects()
            return await reconcile_projects(
                services.rebuilder,
                names,
                now_ms=services.clock.now_ms(),
                days=days,
                write=not dry_run,
                echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo,
                progress_for=lambda project, plan: _tracker(f"reconcile {project}", plan),
                on_report=reports.append,
                nice=nice,
            )

    total = asyncio.run(run())
    if as_json:
        echo_json(
            {
                "dry_run": dry_run,
                "days": days,
                "discrepancies": total,
                "projects": [msgspec.structs.asdict(r) for r in reports],
            }
        )
    if exit_code and total:
        sys.exit(EXIT_DISCREPANCIES)


@main.command()
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"applied": [...]}.')
def migrate(as_json: bool) -> None:
    """Apply pending database migrations."""
    from counters.services import migrate_database

    applied = asyncio.run(migrate_database(_settings()))
    if as_json:
        echo_json({"applied": applied})
    else:
        click.echo("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


@main.group()
def embedded() -> None:
    """The embedded Valkey and Postgres (and an optional Valkey Cluster) under the data dir."""


EXIT_DOWN = 3
"""`embedded status`: a server is not running (as `systemctl status` and LSB init scripts)."""


def _print_status(status: dict[str, str | None], show: bool, as_json: bool) -> None:
    """Each server's URL (password as *** unless show), as lines or one JSON object."""
    shown = {name: (url if show else _redact(url)) if url else None for name, url in status.items()}
    if as_json:
        echo_json({"running": all(shown.values()), **shown})
        return
    for name, url in shown.items():
        click.echo(f"{name}: {url or 'not running'}")


@embedded.command("status")
@click.option("--show-passwords", is_flag=True, help="Print the URLs with their passwords.")
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"running", "redis", …}.')
def embedded_status(show_passwords: bool, as_json: bool) -> None:
    """Print the URL of each embedded server that is running (passwords as *** unless
    --show-passwords; they are in <data_dir>/secrets.json). Exits 3 when one is not."""
    from counters import embedded as emb

    data_dir = _load().resolved_data_dir()
    status = emb.embedded_status(data_dir)
    _print_status(status, show_passwords, as_json)
    if not emb.secrets_path(data_dir).exists():
        click.echo(f"(no {emb.secrets_path(data_dir)}: nothing was started here yet)", err=True)
    if not all(status.values()):
        sys.exit(EXIT_DOWN)


@embedded.command("start")
@click.option("--show-passwords", is_flag=True, help="Print the URLs with their passwords.")
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"running", "redis", …}.')
def embedded_start(show_passwords: bool, as_json: bool) -> None:
    """Start (or reuse) the embedded Valkey and Postgres under the data dir and return; they
    run in the background until `counters embedded stop` (as `serve` starts them)."""
    from counters import embedded as emb

    data_dir = _load().resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        emb.require_embedded()
        status: dict[str, str | None] = {
            "redis": emb.ensure_valkey(data_dir),
            "postgres": emb.ensure_postgres(data_dir),
        }
    except emb.EmbeddedServerError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_status(status, show_passwords, as_json)


@embedded.command("cluster")
@click.option("--masters", type=int, default=3, show_default=True, help="Cluster masters.")
@click.option("--show-password", is_flag=True, help="Print the URL with its password.")
def embedded_cluster(masters: int, show_password: bool) -> None:
    """Start (or reuse) a local Valkey Cluster of --masters masters on 127.0.0.1 under the
    data dir and print a node's URL: point COUNTERS_REDIS_URL at it (any node will do)."""
    from counters import embedded as emb

    if masters < 1:
        raise click.BadParameter("a cluster needs at least one master", param_hint="--masters")
    data_dir = _load().resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        url = emb.ensure_valkey_cluster(data_dir, masters)
    except emb.EmbeddedServerError as exc:
        raise click.ClickException(str(exc)) from exc
    for node in emb.cluster_nodes(data_dir):
        click.echo(f"node {node.index}: 127.0.0.1:{node.port} (pid {node.pid})", err=True)
    click.echo(url if show_password else _redact(url))


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop the embedded servers (data is kept)."""
    from counters import embedded as emb

    stopped = emb.stop_embedded(_load().resolved_data_dir())
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


from counters.cli.deadletter import deadletter  # noqa: E402 (needs main defined above)
from counters.cli.keys import keys  # noqa: E402  (registers on main)
from counters.cli.links import links  # noqa: E402
from counters.cli.projects import projects  # noqa: E402

main.add_command(deadletter)
main.add_command(keys)
main.add_command(links)
main.add_command(projects)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
