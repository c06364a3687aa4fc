"""StatsD / DogStatsD lines as events (pure: no I/O).

A line is `<name>:<value>[:<value>...]|<type>[|@<rate>][|#<k>:<v>,...][|T<epoch s>]`
(DogStatsD's `|c:<container>`, `|e:<external>`, `|card:<cardinality>` and any other field
are ignored). What it becomes:

- `c`: round(sum(values) / rate) events of value 1 (count and sum both that number);
- `s`: one event per value, the value as its uid (uniques);
- `ms`, `h`, `d`: one event per value, with that value (count and sum: means work; there
  are no percentiles); a sample rate is not applied to them;
- `g`, DogStatsD events (`_e{...}`) and service checks (`_sc|...`): refused.

The name is the event name, normalised (lowercase; each run of characters outside
`[a-z0-9_.-]` becomes one `_`; at most 64 characters): `MyApp.Page Views` is
`myapp.page_views`. Tags are dims: the key normalised the same way into `[a-z0-9_]`, at
most 32 characters (`http.method:GET` is dim `http_method` = `GET`); the value as sent,
checked as every dim value is. The tag `project:<p>` picks the project instead of being
a dim. A line that cannot become valid events is refused whole (StatsdRefusal, with a
reason from REASONS), as one bad event refuses an HTTP batch."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass

from counters.core.errors import Invalid
from counters.core.models import (
    EventLimits,
    EventWire,
    RawEvent,
    normalize_dim_name,
    normalize_name,
    validate_events,
)

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
TYPES = frozenset({"c", "s", "ms", "h", "d"})
PROJECT_TAG = "project"

PARSE_REASONS = (
    "malformed",
    "gauge",
    "unsupported_type",
    "invalid_value",
    "invalid_rate",
    "invalid_timestamp",
    "invalid_name",
    "invalid_tag",
    "invalid_project",
    "project_not_allowed",
    "no_project",
    "negative_counter",
    "too_many_events",
    "invalid_string",
    "invalid",
    "ts_too_old",
    "ts_in_future",
    "dim_too_long",
)
"""Why a line can be refused before it reaches Redis (the validation codes of
models.validate_events included)."""


class StatsdRefusal(Exception):
    """A line that is not counted: reason (one of PARSE_REASONS) and what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class StatsdRules:
    """Where lines go: the project of lines without a project tag (None: they are
    refused no_project), the projects a tag may name, and the most events one `c` line
    may stand for (more is too_many_events)."""

    default_project: str | None
    allowed: frozenset[str]
    max_counter_events: int

    @classmethod
    def of(
        cls, default: str | None, others: Collection[str], max_counter_events: int
    ) -> StatsdRules:
        """The rules of the settings statsd_project, statsd_projects (the default project is
        always allowed) and max_batch_events."""
        allowed = frozenset(others) | ({default} if default else set())
        return cls(default, allowed, max_counter_events)


@dataclass(frozen=True)
class StatsdLine:
    """One parsed line: the normalised event name, the type, the values as sent, the
    sample rate, the dims (tags without the project tag), the project tag (None: absent)
    and the `|T` time in epoch ms (None: arrival time)."""

    name: str
    kind: str
    values: tuple[str, ...]
    rate: float
    dims: dict[str, str]
    project: str | None
    ts_ms: int | None


def _number(text: str, what: str) -> float:
    if _NUMBER.match(text) is None:
        raise StatsdRefusal("invalid_value", f"{what} {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise StatsdRefusal("invalid_value", f"{what} {text!r} is not finite")
    return value


def _tags(text: str) -> tuple[dict[str, str], str | None]:
    dims: dict[str, str] = {}
    project: str | None = None
    for tag in text.split(","):
        key, sep, value = tag.partition(":")
        if not sep or not key or not value:
            raise StatsdRefusal("invalid_tag", f"tag {tag!r} is not <key>:<value>")
        if key == PROJECT_TAG:
            if project is not None:
                raise StatsdRefusal("invalid_project", "more than one project tag")
            project = value
            continue
        name = normalize_dim_name(key)
        if not name.strip("_"):
            raise StatsdRefusal("invalid_tag", f"tag key {key!r} has no letter or digit")
        if name in dims:
            raise StatsdRefusal("invalid_tag", f"tag {name!r} appears twice")
        dims[name] = value
    return dims, project


def parse_line(line: str) -> StatsdLine:
    """The line's parts; raises StatsdRefusal (malformed, gauge, unsupported_type,
    invalid_value, invalid_rate, invalid_timestamp, invalid_name, invalid_tag,
    invalid_project) when it is not a counter, set, timer, histogram or distribution line."""
    if line.startswith("_e{") or line.startswith("_sc|"):
        raise StatsdRefusal("unsupported_type", "DogStatsD events and service checks")
    head, sep, rest = line.partition("|")
    raw_name, colon, joined = head.partition(":")
    if not sep or not colon or not raw_name or not joined:
        raise StatsdRefusal("malformed", "not <name>:<value>|<type>")
    fields = rest.split("|")
    kind = fields[0]
    if kind == "g":
        raise StatsdRefusal("gauge", "gauges are not counted (a gauge is not an event)")
    if kind not in TYPES:
        raise StatsdRefusal("unsupported_type", f"type {kind!r} is not c, s, ms, h or d")
    values = tuple(joined.split(":"))
    if any(not v for v in values):
        raise StatsdRefusal("malformed", "an empty value")
    rate = 1.0
    dims: dict[str, str] = {}
    project: str | None = None
    ts_ms: int | None = None
    for field in fields[1:]:
        if field.startswith("@"):
            rate = _number(field[1:], "sample rate")
            if not 0 < rate <= 1:
                raise StatsdRefusal("invalid_rate", f"sample rate {field[1:]!r} is not in (0, 1]")
        elif field.startswith("#"):
            dims, project = _tags(field[1:])
        elif field.startswith("T"):
            if not field[1:].isdigit() or not field[1:].isascii():
                raise StatsdRefusal("invalid_timestamp", f"{field!r} is not T<epoch seconds>")
            ts_ms = int(field[1:]) * 1000
    if project is not None and _PROJECT.match(project) is None:
        raise StatsdRefusal("invalid_project", f"project tag {project!r} is not a project name")
    name = normalize_name(raw_name)
    if not name.strip("_"):
        raise StatsdRefusal("invalid_name", f"name {raw_name!r} has no letter or digit")
    return StatsdLine(name, kind, values, rate, dims, project, ts_ms)


def project_of(line: StatsdLine, rules: StatsdRules) -> str:
    """The project the line counts in: its project tag when the rules allow it, else the
    default; raises StatsdRefusal project_not_allowed / no_project."""
    if line.project is None:
        if rules.default_project is None:
            raise StatsdRefusal("no_project", "no project tag and no statsd_project")
        return rules.default_project
    if line.project not in rules.allowed:
        raise StatsdRefusal(
            "project_not_allowed", f"project {line.project!r} is not in statsd_projects"
        )
    return line.project


def _wires(line: StatsdLine, rules: StatsdRules) -> tuple[list[EventWire], int]:
    """The distinct events of the line and how many times each counts (a counter's
    events are identical: one event, repeated)."""
    name, ts, dims = line.name, line.ts_ms, line.dims
    if line.kind == "s":
        return [EventWire(name, ts, dims=dims, uid=v) for v in line.values], 1
    numbers = [_number(v, "value") for v in line.values]
    if line.kind != "c":
        return [EventWire(name, ts, dims=dims, value=v) for v in numbers], 1
    total = sum(numbers) / line.rate
    if total < 0:
        raise StatsdRefusal("negative_counter", "a counter cannot go down")
    repeat = round(total)
    if repeat > rules.max_counter_events:
        raise StatsdRefusal(
            "too_many_events",
            f"{repeat} events in one counter line; the most is {rules.max_counter_events}",
        )
    return [EventWire(name, ts, dims=dims, value=1.0)], repeat


def line_events(
    text: str, rules: StatsdRules, *, now_ms: int, limits: EventLimits
) -> tuple[str, list[RawEvent]]:
    """The project and the events (as validate_events accepts them, the same rules as
    HTTP ingest) of one line; raises StatsdRefusal naming the reason. A counter of 0 is no
    events."""
    line = parse_line(text)
    project = project_of(line, rules)
    wires, repeat = _wires(line, rules)
    try:
        events = validate_events(wires, now_ms=now_ms, limits=limits)
    except Invalid as exc:
        raise StatsdRefusal(exc.code, exc.message) from exc
    if repeat != 1:
        events = events * repeat
    return project, events
