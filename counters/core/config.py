"""Settings: one frozen struct built from defaults, an optional TOML file and COUNTERS_* env."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service, the persister and the CLI need to agree on."""

    redis_url: str | None = None
    """Redis/Valkey URL; None starts the embedded Valkey under data_dir."""
    redis_cluster: Literal["auto", "on", "off"] = "auto"
    """Whether redis_url is a Redis Cluster node: auto asks the server (INFO cluster) once
    when the settings are resolved; on/off skip the question."""
    database_url: str | None = None
    """Postgres URL; None starts the embedded Postgres under data_dir."""
    data_dir: str = ".counters"
    host: str = "127.0.0.1"
    port: int = 8000
    key_prefix: str = "ctr"
    """Every Redis key starts with this, so several deployments can share one Redis."""
    crosstabs: tuple[tuple[str, ...], ...] = ()
    """Extra rollups over several dims, e.g. (("country", "source"),)."""
    grace_seconds: float = 30.0
    """A bucket is closed (and may be persisted) this long after its end."""
    persist_interval_seconds: float = 1.0
    persister_enabled: bool = True
    """Whether `counters serve` runs the persister."""
    persister_process: bool = True
    """Whether `counters serve` runs the persister (and the nightly reconcile) in one
    process of its own, restarted when it dies, instead of in every worker."""
    keep_after_copy_seconds: int = 600
    """How long Redis keeps a bucket after Postgres has it (in-flight reads may still need it)."""
    dedupe_window_seconds: int = 3600
    max_batch_events: int = 10_000
    max_body_bytes: int = 5 * 1024 * 1024
    max_event_age_days: int = 30
    max_future_seconds: int = 300
    raw_backlog_cap: int = 2_000_000
    """Raw-log entries Redis may hold before ingest answers 503."""
    raw_retention_days: int = 90
    """Raw-log partitions wholly older than this are dropped."""
    minute_retention_days: int = 14
    """Minute rollups older than this are deleted (hour and day rollups are kept forever)."""
    reconcile_enabled: bool = True
    """Whether `counters serve` reconciles the recent window nightly."""
    reconcile_at: str = "03:30"
    """UTC time of day (HH:MM) of the nightly reconcile."""
    reconcile_days: int = 7
    reconcile_nice: int = 10
    """Niceness (0-19) the reconcile runs at, nightly and `counters reconcile` (whose
    --nice overrides it): its compute thread and, where Postgres runs on the same machine
    and the OS allows, its Postgres backends, so ingest beside it keeps the CPU (0: no
    change)."""
    dim_cardinality_cap: int = 10_000
    """Distinct values one dim may take per project per UTC day; the rest count as
    __other__ (0 = no cap)."""
    durable_ack: bool = False
    """Answer 2xx only once the batch is on disk (WAITAOF, or a server with appendfsync
    always); a kill -9 of Redis then loses nothing acknowledged."""
    key_cache_seconds: float = 10.0
    """How long the API trusts a looked-up API key without asking Postgres again."""
    shard_refresh_seconds: float = 2.0
    """How long a process routes and reads by the shard plans it read from Postgres before
    reading them again (`counters projects shards` takes effect within it)."""
    read_cache_entries: int = 4_096
    """Reads whose Postgres part (rows below the watermarks) each worker keeps in memory,
    least recently used first out (0 = no cache); see read_cache_bytes."""
    read_cache_bytes: int = 64 * 1024 * 1024
    """Most bytes (estimated: 16 per bucket plus the sketches) the read cache holds per
    worker; past it, the least recently used entries go."""

    # -- issue 11: limits and security (each documented in README "Security") -------------
    max_points: int = 100_000
    """Most points one read reply may hold (names x series x buckets); more is a 400."""
    raw_row_budget: int = 5_000_000
    """Most raw-log rows one read may scan (reads no rollup covers); more is a 400."""
    event_name_cap: int = 1_000
    """Distinct event names per project per UTC day; a batch adding more is a 422 (0 = off)."""
    dim_name_cap: int = 100
    """Distinct dim names per project per UTC day; a batch adding more is a 422 (0 = off)."""
    max_batch_groups: int = 4_000
    """Most work one ingest script may do, in groups (one (minute, rollup field) group; an
    event id, a dim value or a name to check counts as one, a uid as a quarter, a sealed
    minute's group as three); a batch over it is a 413 asking to split it (measured: keeps
    every ingest script at about 50 ms or less on the reference machine; 0 = off)."""
    rate_limit_ingest: float = 1_000.0
    """Requests per second per ingest/pixel key (burst: 2 s worth; 0 = off)."""
    rate_limit_read: float = 100.0
    """Requests per second per read/admin key on the read routes (burst: 2 s worth; 0 = off)."""
    rate_limit_project_events: float = 100_000.0
    """Events per second per project over all its keys (burst: 2 s worth; 0 = off)."""
    deadletter_after_attempts: int = 3
    """Failed copies of one raw-log entry before it moves to the dead-letter table."""
    metrics_token: str | None = None
    """When set, /metrics and /healthz details need `Authorization: Bearer <token>`."""
    metrics_project_labels: bool = False
    """Whether metrics carry project names as labels (off: no project names in /metrics)."""
    header_timeout_seconds: float = 10.0
    """A request's headers must arrive within this; else the connection is closed (408)."""
    body_timeout_seconds: float = 30.0
    """Longest wait for the next chunk of a request body; then 408."""
    keepalive_timeout_seconds: float = 5.0
    """Idle keep-alive connections are closed after this."""
    max_header_bytes: int = 65_536
    """Largest request head (request line and headers); more is a 431."""
    max_connections: int = 1_000
    """Open connections per worker; past it new requests get 503 (never fd exhaustion)."""
    link_uid_cookie: bool = True
    """Whether GET /r/<id> sets a first-party `counters_uid` cookie (HttpOnly, SameSite=Lax,
    path /r/) when the browser has none, so clicks count uniques; off: clicks carry no uid
    unless the browser already has the cookie."""

    # -- issue 14: StatsD / DogStatsD over UDP (README "Send from existing clients") -------
    statsd_listen: str | None = None
    """`host:port` (`[v6]:port`) on which `counters serve` receives StatsD / DogStatsD
    datagrams (every worker binds it with SO_REUSEPORT); None: no UDP listener."""
    statsd_project: str | None = None
    """The project StatsD lines count in when they carry no `project:<p>` tag."""
    statsd_projects: tuple[str, ...] = ()
    """Other projects a DogStatsD tag `project:<p>` may pick (env: comma-separated)."""

    def resolved_data_dir(self) -> Path:
        """Absolute data directory."""
        return Path(self.data_dir).expanduser().resolve()


_LIST_FIELDS = {"crosstabs"}
_COMMA_LIST_FIELDS = {"statsd_projects"}
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
"""persist.projects.PROJECT_PATTERN (the core cannot import persist)."""


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port` as (host, port); ValueError when it is neither or
    the port is not 1-65535."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port with a port from 1 to 65535")
    return host, int(port)


def _check_statsd(settings: Settings) -> None:
    if settings.statsd_listen is not None:
        try:
            parse_listen(settings.statsd_listen)
        except ValueError as exc:
            raise ValueError(f"bad setting: statsd_listen: {exc}") from None
        if settings.statsd_project is None and not settings.statsd_projects:
            raise ValueError("bad setting: statsd_listen needs statsd_project (or statsd_projects)")
    names = ([settings.statsd_project] if settings.statsd_project else []) + list(
        settings.statsd_projects
    )
    for name in names:
        if not _PROJECT_NAME.match(name):
            raise ValueError(
                f"bad setting: statsd project {name!r} must match {_PROJECT_NAME.pattern}"
            )


def _parse_crosstabs(text: str) -> list[list[str]]:
    """`source:country,link:country` -> [["source","country"],["link","country"]]."""
    return [[d.strip() for d in grp.split(":") if d.strip()] for grp in text.split(",") if grp]


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults, then the TOML file ($COUNTERS_CONFIG or ./counters.toml), then COUNTERS_* env,
    then explicit overrides. Raises ValueError naming a bad setting."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    toml_path = env.get("COUNTERS_CONFIG") or (
        "counters.toml" if Path("counters.toml").exists() else None
    )
    if toml_path:
        with open(toml_path, "rb") as fh:
            raw.update(tomllib.load(fh))
    fields = set(Settings.__struct_fields__)
    for name in fields:
        value = env.get("COUNTERS_" + name.upper())
        if value is None or value == "":
            continue
        if name in _LIST_FIELDS:
            raw[name] = _parse_crosstabs(value)
        elif name in _COMMA_LIST_FIELDS:
            raw[name] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            raw[name] = value
    if overrides:
        raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad setting: {exc}") from exc
    crosstabs = tuple(
        dict.fromkeys(tuple(sorted(set(c))) for c in settings.crosstabs if len(set(c)) > 1)
    )
    if settings.raw_retention_days <= settings.max_event_age_days:
        raise ValueError("bad setting: raw_retention_days must exceed max_event_age_days")
    if not 1 <= settings.port <= 65535:
        raise ValueError(f"bad setting: port must be 1-65535, not {settings.port}")
    if settings.read_cache_entries < 0 or settings.read_cache_bytes < 0:
        raise ValueError("bad setting: read_cache_entries and read_cache_bytes must be >= 0")
    hh, _, mm = settings.reconcile_at.partition(":")
    if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        raise ValueError("bad setting: reconcile_at must be HH:MM (UTC)")
    if not 0 <= settings.reconcile_nice <= 19:
        raise ValueError("bad setting: reconcile_nice must be 0-19")
    if "{" in settings.key_prefix or "}" in settings.key_prefix:
        raise ValueError(
            "bad setting: key_prefix may not contain { or } (the hash tag is per project)"
        )
    _check_statsd(settings)
    return msgspec.structs.replace(settings, crosstabs=crosstabs)
