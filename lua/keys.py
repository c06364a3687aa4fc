"""Every Redis key name counters uses, all inside the project's `{p:<project>}` hash tag.

Layout for prefix X and project P (the Lua scripts derive the names marked * from the
base `X:{p:P}:` with the same suffixes; tests/test_keys.py runs every script and checks
that each key it leaves in the slot is one parse_key names):

    X:{p:P}:wm                       hash   m/h/d: sealed-until (epoch ms) per grain; gen: late gen;
                                            rawn: raw events not in Postgres; rawlast: last raw id
    X:{p:P}:h:<g>:<bucket>         * hash   c<US>field -> count, s<US>field -> sum (micros)
    X:{p:P}:u:<g>:<bucket>:<field> * HLL    uids of one (field, grain, bucket)
    X:{p:P}:dirty:<g>              * zset   buckets of grain g with data not yet in Postgres
    X:{p:P}:raw                      stream the raw log, one entry (n, e) per accepted batch
    X:{p:P}:id:<hash>              * string dedupe marker of one (event name, event id):
                                            hash = event_id_token, expires after the dedupe window
    X:{p:P}:idem:<hash>            * string one Idempotency-Key (idempotency_token): body hash and
                                            the original reply, expires after the dedupe window
    X:{p:P}:names:<day>            * set    event names seen on one UTC day (event_name_cap)
    X:{p:P}:dimnames:<day>         * set    dim names seen on one UTC day (dim_name_cap)
    X:{p:P}:late:<gen>             * hash   <g>:<bucket>:c<US>field -> count delta (and s)
    X:{p:P}:late:<gen>:u:<g>:<bucket>:<field> * HLL  uids of late events
    X:{p:P}:late:<gen>:hll         * set    <g>:<bucket>:<field> of every late HLL in gen
    X:{p:P}:card:<dim>:<day>       * set    values of one dim seen on one UTC day (the cap)
    X:{p:P}:rl:key:<digest>          string token bucket (TAT, epoch us) of one API key; <digest> =
                                            the first 16 hex of sha256(key) (lua/ratelimit.lua)
    X:{p:P}:rl:events                string token bucket of the project's events per second
    X:{p:P}:tmp:<token>              HLL    short-lived copy of a Postgres HLL blob for a read
    X:{p:P}:restore:<token>:index    set    staged keys of one restore, as live-key suffixes
    X:{p:P}:restore:<token>:<suffix> hash/HLL  a staged h:<g>:<bucket> or u:<g>:<bucket>:<field>
                                            (lua/restore.lua moves it to X:{p:P}:<suffix>)

<g> is m, h or d; <bucket> the bucket start in epoch ms; <US> the unit separator \\x1f.
parse_key names any of these keys (the inverse of ProjectKeys); the parse_*_field
functions decode the hash fields and index members.
Ingest writes hot events to minute keys only; an hour's or day's h: and u: keys hold the
minutes sealed so far (lua/seal.lua merges them) plus events for minutes already sealed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

from counters.core.buckets import GRAIN_BY_SHORT, Grain
from counters.core.rollups import US

__all__ = [
    "US",
    "COUNT",
    "SUM",
    "BucketField",
    "bucket_ref",
    "KeyKind",
    "KeyName",
    "KeyRegistryKeys",
    "LinkKeys",
    "MeasureField",
    "ProjectKeys",
    "count_field",
    "event_id_token",
    "idempotency_token",
    "ingest_keys",
    "late_field",
    "late_hll_member",
    "parse_key",
    "parse_late_field",
    "parse_late_hll_member",
    "parse_measure_field",
    "restore_member",
    "sum_field",
]

Measure = Literal["c", "s"]
COUNT: Measure = "c"
"""Tag of a count field in a hot or late hash."""
SUM: Measure = "s"
"""Tag of a sum (micros) field in a hot or late hash."""


class ProjectKeys:
    """Key names for one project under one prefix."""

    __slots__ = ("base", "project")

    def __init__(self, prefix: str, project: str) -> None:
        self.project = project
        self.base = f"{prefix}:{{p:{project}}}:"

    @property
    def watermarks(self) -> str:
        """Hash of sealed-until per grain and the current late generation."""
        return self.base + "wm"

    @property
    def raw(self) -> str:
        """The raw-log stream."""
        return self.base + "raw"

    @property
    def history_version(self) -> str:
        """A random token, replaced whenever rollup rows below the Postgres watermarks are
        rewritten (rebuild, reconcile, restore): the in-process read caches of the
        Postgres part check it (counters/engines/read/history_cache.py)."""
        return self.base + "hv"

    def hot(self, grain: Grain, bucket: int) -> str:
        """Hash of count and sum fields of one (grain, bucket)."""
        return f"{self.base}h:{grain.short}:{bucket}"

    def hll(self, grain: Grain, bucket: int, field: str) -> str:
        """HyperLogLog of one (field, grain, bucket)."""
        return f"{self.base}u:{grain.short}:{bucket}:{field}"

    def dirty(self, grain: Grain) -> str:
        """Sorted set of buckets (score = bucket start) holding data not yet in Postgres."""
        return f"{self.base}dirty:{grain.short}"

    def event_id(self, name: str, event_id: str) -> str:
        """Dedupe marker of one event id of one event name (the id itself is hashed)."""
        return self.event_marker(event_id_token(name, event_id))

    def event_marker(self, token: str) -> str:
        """Dedupe marker named by its event_id_token."""
        return f"{self.base}id:{token}"

    def idempotency(self, token: str) -> str:
        """Marker of one Idempotency-Key, named by its idempotency_token."""
        return f"{self.base}idem:{token}"

    def event_names(self, day: int) -> str:
        """Set of the event names seen on one UTC day (for event_name_cap)."""
        return f"{self.base}names:{day}"

    def dim_names(self, day: int) -> str:
        """Set of the dim names seen on one UTC day (for dim_name_cap)."""
        return f"{self.base}dimnames:{day}"

    def late(self, gen: int) -> str:
        """Hash of late count/sum deltas of one generation."""
        return f"{self.base}late:{gen}"

    def late_hll(self, gen: int, grain: Grain, bucket: int, field: str) -> str:
        """HyperLogLog of late uids for one (field, grain, bucket) in one generation."""
        return f"{self.base}late:{gen}:u:{grain.short}:{bucket}:{field}"

    def late_hll_index(self, gen: int) -> str:
        """Set naming every late HLL of one generation as <g>:<bucket>:<field>."""
        return f"{self.base}late:{gen}:hll"

    def dim_values(self, dim: str, day: int) -> str:
        """Set of the values one dim took on one UTC day (for the cardinality cap)."""
        return f"{self.base}card:{dim}:{day}"

    def rate_key(self, digest: str) -> str:
        """Token bucket of one API key (digest: the first 16 hex of its sha256)."""
        return f"{self.base}rl:key:{digest}"

    @property
    def rate_events(self) -> str:
        """Token bucket of the project's events per second (over all its keys)."""
        return self.base + "rl:events"

    def tmp(self, token: str) -> str:
        """A short-lived scratch key in the project's slot."""
        return f"{self.base}tmp:{token}"

    def restore_base(self, token: str) -> str:
        """Prefix of one restore's staged keys: staged key = restore_base + restore_member."""
        return f"{self.base}restore:{token}:"

    def restore_index(self, token: str) -> str:
        """Set naming (by restore_member) every key one restore staged."""
        return f"{self.base}restore:{token}:index"

    def restore_hot(self, token: str, grain: Grain, bucket: int) -> str:
        """A restore's staged copy of hot(grain, bucket)."""
        return self.restore_base(token) + restore_member(grain, bucket)

    def restore_hll(self, token: str, grain: Grain, bucket: int, field: str) -> str:
        """A restore's staged copy of hll(grain, bucket, field)."""
        return self.restore_base(token) + restore_member(grain, bucket, field)


def ingest_keys(
    keys: ProjectKeys,
    gen: str,
    groups: Sequence[Sequence[Any]],
    ids: Sequence[str],
    idem: str,
    day_pairs: Iterable[tuple[str, Sequence[Sequence[str]]]],
    dim_values: Sequence[Sequence[str]],
    hot_from: int | None = None,
    *,
    cells: Sequence[Sequence[Any]] = (),
    late_cells: Sequence[Any] = (),
) -> list[str]:
    """Every key one lua/ingest.lua call may touch besides the watermarks and the raw log,
    for late generation gen: declared in its KEYS on a Redis Cluster, so that during a
    resharding of the project's slot the call as a whole is redirected (ASK) or refused
    (TRYAGAIN), never run on a node that holds only some of them. A superset: a group's
    minute may turn out hot (its hour and day then wait for seal.lua) or sealed (late).

    groups are ingest.lua's [minute, field, count, sum, uids]; day_pairs ("names",
    [[day, name], ...]) and ("dimnames", ...); dim_values [dim, day, value]. A group of a
    minute at or after hot_from gets its minute's keys only: the script refuses the call
    (HOTEDGE) unless every such minute, its hour and its day are unsealed. cells are the
    [grain, bucket, field, count, sum, uids] of buckets of sealed minutes (hot or late);
    late_cells ingest.lua's flat late array (its sketch members name late sketches)."""
    out: dict[str, None] = {}
    base = keys.base
    late = f"{base}late:{gen}"
    for grain in ("m", "h", "d"):
        out[f"{base}dirty:{grain}"] = None
    out[late] = None
    out[late + ":hll"] = None
    for group in groups:
        minute = int(group[0])
        field = group[1]
        uids = group[4]
        if hot_from is not None and minute >= hot_from:
            out[f"{base}h:m:{minute}"] = None
            if uids:
                out[f"{base}u:m:{minute}:{field}"] = None
            continue
        hour = minute - minute % Grain.hour.value
        day = minute - minute % Grain.day.value
        for grain, bucket in (("m", minute), ("h", hour), ("d", day)):
            out[f"{base}h:{grain}:{bucket}"] = None
            if uids:
                out[f"{base}u:{grain}:{bucket}:{field}"] = None
                out[f"{late}:u:{grain}:{bucket}:{field}"] = None
    for cell in cells:
        grain, bucket, field = cell[0], cell[1], cell[2]
        out[f"{base}h:{grain}:{bucket}"] = None
        if cell[5]:
            out[f"{base}u:{grain}:{bucket}:{field}"] = None
            out[f"{late}:u:{grain}:{bucket}:{field}"] = None
    i = 0
    while i < len(late_cells):  # count field, member, count, sum[, sum field], n, uids
        member = late_cells[i + 1]
        i += 4 if late_cells[i + 3] == 0 else 5
        n = late_cells[i]
        if n:
            out[f"{late}:u:{member}"] = None
        i += 1 + n
    for token in ids:
        out[f"{base}id:{token}"] = None
    if idem:
        out[f"{base}idem:{idem}"] = None
    for kind, pairs in day_pairs:
        for pair in pairs:
            out[f"{base}{kind}:{pair[0]}"] = None
    for dv in dim_values:
        out[f"{base}card:{dv[0]}:{dv[1]}"] = None
    return list(out)


def _hash_hex(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def event_id_token(name: str, event_id: str) -> str:
    """What names the dedupe marker of (event name, event id): blake2b-128 hex of
    `name US id`. Dedupe is per (name, id), and no client id appears in a key name."""
    return _hash_hex(name + US + event_id)


def idempotency_token(key: str) -> str:
    """What names the marker of one Idempotency-Key header value (blake2b-128 hex)."""
    return _hash_hex(key)


def _is_token(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class MeasureField(NamedTuple):
    """A decoded hot-hash field: which measure, of which rollup field."""

    measure: Measure
    field: str


class BucketField(NamedTuple):
    """A decoded late-hash field or late-HLL index member: which (grain, bucket), and the
    rest (a hot-hash field for late hashes, a rollup field for the HLL index)."""

    grain: Grain
    bucket: int
    rest: str


def count_field(field: str) -> str:
    """Hash field holding the count of a rollup field."""
    return COUNT + US + field


def sum_field(field: str) -> str:
    """Hash field holding the sum (micros) of a rollup field."""
    return SUM + US + field


def parse_measure_field(text: str | bytes) -> MeasureField:
    """Inverse of count_field / sum_field."""
    s = text.decode() if isinstance(text, bytes) else text
    kind, _, field = s.partition(US)
    return MeasureField(COUNT if kind == COUNT else SUM, field)


def late_field(grain: Grain, bucket: int, measure_field: str) -> str:
    """Field of a late-delta hash: which bucket, then the hot-hash field name."""
    return f"{grain.short}:{bucket}:{measure_field}"


def bucket_ref(grain: Grain, bucket: int) -> str:
    """`<g>:<bucket>`: how a script argument names one (grain, bucket) (read_hot.lua's cells)."""
    return f"{grain.short}:{bucket}"


def late_hll_member(grain: Grain, bucket: int, field: str) -> str:
    """Member of a generation's late-HLL index naming one late HyperLogLog."""
    return f"{grain.short}:{bucket}:{field}"


def restore_member(grain: Grain, bucket: int, field: str | None = None) -> str:
    """A staged key's member of its restore index: the live key's name after the base,
    `h:<g>:<bucket>` (field None) or `u:<g>:<bucket>:<field>`."""
    if field is None:
        return f"h:{grain.short}:{bucket}"
    return f"u:{grain.short}:{bucket}:{field}"


def _bucket_field(text: str | bytes) -> BucketField:
    s = text.decode() if isinstance(text, bytes) else text
    grain_s, bucket_s, rest = s.split(":", 2)
    return BucketField(GRAIN_BY_SHORT[grain_s], int(bucket_s), rest)


def parse_late_field(text: str | bytes) -> BucketField:
    """Inverse of late_field: (grain, bucket, hot-hash field)."""
    return _bucket_field(text)


def parse_late_hll_member(text: str | bytes) -> BucketField:
    """Inverse of late_hll_member: (grain, bucket, rollup field)."""
    return _bucket_field(text)


KeyKind = Literal[
    "watermarks",
    "raw",
    "history_version",
    "hot",
    "hll",
    "dirty",
    "event_id",
    "idempotency",
    "event_names",
    "dim_names",
    "late",
    "late_hll",
    "late_hll_index",
    "dim_values",
    "tmp",
    "restore_index",
    "restore_hot",
    "restore_hll",
    "rate_key",
    "rate_events",
]
"""Which ProjectKeys method names a key (dim_values is the cardinality cap's card: set;
restore_* are a restore's staged keys, lua/restore.lua; event_names and dim_names the
per-day name caps' sets; rate_* are lua/ratelimit.lua's token buckets)."""


class KeyName(NamedTuple):
    """A decoded key: its kind and the arguments of the ProjectKeys method naming it."""

    kind: KeyKind
    prefix: str
    project: str
    grain: Grain | None = None
    bucket: int | None = None
    """Bucket start (epoch ms); for dim_values, event_names and dim_names, the UTC day's start."""
    field: str | None = None
    """Rollup field of an hll or late_hll key."""
    gen: int | None = None
    """Late generation of late, late_hll and late_hll_index keys."""
    name: str | None = None
    """The hash (event_id, idempotency), the dim (dim_values), the token (tmp, restore_*) or
    the key digest (rate_key)."""

    def key(self) -> str:
        """The key again, as ProjectKeys names it (parse_key(k).key() == k)."""
        keys = ProjectKeys(self.prefix, self.project)
        kind = self.kind
        if kind == "watermarks":
            return keys.watermarks
        if kind == "raw":
            return keys.raw
        if kind == "history_version":
            return keys.history_version
        if kind == "dirty":
            return keys.dirty(_some(self.grain))
        if kind == "hot":
            return keys.hot(_some(self.grain), _some(self.bucket))
        if kind == "hll":
            return keys.hll(_some(self.grain), _some(self.bucket), _some(self.field))
        if kind == "event_id":
            return keys.event_marker(_some(self.name))
        if kind == "idempotency":
            return keys.idempotency(_some(self.name))
        if kind == "event_names":
            return keys.event_names(_some(self.bucket))
        if kind == "dim_names":
            return keys.dim_names(_some(self.bucket))
        if kind == "late":
            return keys.late(_some(self.gen))
        if kind == "late_hll_index":
            return keys.late_hll_index(_some(self.gen))
        if kind == "late_hll":
            return keys.late_hll(
                _some(self.gen), _some(self.grain), _some(self.bucket), _some(self.field)
            )
        if kind == "dim_values":
            return keys.dim_values(_some(self.name), _some(self.bucket))
        if kind == "restore_index":
            return keys.restore_index(_some(self.name))
        if kind == "restore_hot":
            return keys.restore_hot(_some(self.name), _some(self.grain), _some(self.bucket))
        if kind == "restore_hll":
            return keys.restore_hll(
                _some(self.name), _some(self.grain), _some(self.bucket), _some(self.field)
            )
        if kind == "rate_key":
            return keys.rate_key(_some(self.name))
        if kind == "rate_events":
            return keys.rate_events
        return keys.tmp(_some(self.name))


T = TypeVar("T")


def _some(value: T | None) -> T:
    if value is None:
        raise ValueError("incomplete KeyName")
    return value


def _int(text: str) -> int:
    """A decimal integer written the way Python and Lua write one (no sign +, no spaces)."""
    value = int(text)
    if str(value) != text:
        raise ValueError(f"not a canonical integer: {text!r}")
    return value


def _grain_bucket(text: str) -> tuple[Grain, int, str]:
    """'<g>:<bucket>[:<rest>]' -> (grain, bucket, rest)."""
    grain_s, bucket_s, *rest = text.split(":", 2)
    return GRAIN_BY_SHORT[grain_s], _int(bucket_s), rest[0] if rest else ""


def parse_key(key: str | bytes) -> KeyName:
    """Names a key of the layout above (any prefix, any project); raises ValueError for a
    key counters does not name."""
    s = key.decode() if isinstance(key, bytes) else key
    start = s.find(":{p:")
    end = s.find("}:", start + 4)
    if start < 0 or end < 0:
        raise ValueError(f"not in a project's slot: {s!r}")
    prefix, project, rest = s[:start], s[start + 4 : end], s[end + 2 :]
    kind_s, sep, args = rest.partition(":")
    try:
        return _parse_rest(prefix, project, rest, kind_s, sep, args)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a counters key: {s!r}") from exc


def _parse_rest(prefix: str, project: str, rest: str, kind: str, sep: str, args: str) -> KeyName:
    if rest == "wm":
        return KeyName("watermarks", prefix, project)
    if rest == "raw":
        return KeyName("raw", prefix, project)
    if rest == "hv":
        return KeyName("history_version", prefix, project)
    if not sep:
        raise ValueError(rest)
    if kind == "h":
        grain, bucket, tail = _grain_bucket(args)
        if tail or args.count(":") != 1:
            raise ValueError(rest)
        return KeyName("hot", prefix, project, grain, bucket)
    if kind == "u":
        grain, bucket, field = _grain_bucket(args)
        return KeyName("hll", prefix, project, grain, bucket, field)
    if kind == "dirty":
        return KeyName("dirty", prefix, project, GRAIN_BY_SHORT[args])
    if kind in ("id", "idem"):
        if not _is_token(args):
            raise ValueError(rest)
        return KeyName("event_id" if kind == "id" else "idempotency", prefix, project, name=args)
    if kind == "names":
        return KeyName("event_names", prefix, project, bucket=_int(args))
    if kind == "dimnames":
        return KeyName("dim_names", prefix, project, bucket=_int(args))
    if kind == "tmp":
        return KeyName("tmp", prefix, project, name=args)
    if kind == "restore":
        return _parse_restore(prefix, project, args)
    if kind == "rl":
        if args == "events":
            return KeyName("rate_events", prefix, project)
        sub, _, digest = args.partition(":")
        if sub == "key" and digest and ":" not in digest:
            return KeyName("rate_key", prefix, project, name=digest)
        raise ValueError(rest)
    if kind == "card":
        dim, _, day = args.rpartition(":")
        if not dim:
            raise ValueError(rest)
        return KeyName("dim_values", prefix, project, bucket=_int(day), name=dim)
    if kind == "late":
        gen_s, _, tail = args.partition(":")
        gen = _int(gen_s)
        if args == gen_s:
            return KeyName("late", prefix, project, gen=gen)
        if tail == "hll":
            return KeyName("late_hll_index", prefix, project, gen=gen)
        if tail.startswith("u:"):
            grain, bucket, field = _grain_bucket(tail[2:])
            return KeyName("late_hll", prefix, project, grain, bucket, field, gen)
    raise ValueError(rest)


def _parse_restore(prefix: str, project: str, args: str) -> KeyName:
    token, _, member = args.partition(":")
    if not token:
        raise ValueError(args)
    if member == "index":
        return KeyName("restore_index", prefix, project, name=token)
    kind, _, tail = member.partition(":")
    grain, bucket, field = _grain_bucket(tail)
    if kind == "h" and not field and tail.count(":") == 1:
        return KeyName("restore_hot", prefix, project, grain, bucket, name=token)
    if kind == "u":
        return KeyName("restore_hll", prefix, project, grain, bucket, field, name=token)
    raise ValueError(args)


class KeyRegistryKeys:
    """The one set of global (not per-project) keys: API-key changes every worker must see
    within a second, in the `{keys}` hash tag (one slot, so both are written in one MULTI).

        X:{keys}:epoch    string  bumped on every key revocation or rotation
        X:{keys}:changes  zset    member "<key id>" (revoked) or "<key id>@<expires ms>"
                                  (new expiry, after a rotation); score = epoch ms written
    """

    __slots__ = ("base",)

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{{keys}}:"

    @property
    def epoch(self) -> str:
        """Counter bumped by each change; workers GET it to know whether to re-read."""
        return self.base + "epoch"

    @property
    def changes(self) -> str:
        """Sorted set of key changes, scored by the time they were written (epoch ms)."""
        return self.base + "changes"


class LinkKeys:
    """The global key of click-tracking links (counters/engines/links.py):

    X:{links}:version  string  bumped on every link created or disabled; each worker
                               GETs it a few times a second and reloads its links from
                               Postgres when it moved
    """

    __slots__ = ("version",)

    def __init__(self, prefix: str) -> None:
        self.version = f"{prefix}:{{links}}:version"
