"""A realistic synthetic event stream for the benchmarks.

Five dims with Zipf-distributed values (weight of rank r is 1/r): 1,000 links, 50 sources,
200 countries, 5 device classes and 100 affiliates; three event names (click ~55%,
view ~35%, conversion ~10%, and only conversions carry a value); uids drawn uniformly out of
a configurable cardinality (0 = no uid); timestamps uniform over [end_ms - span_ms, end_ms).

    columns(n, ...)  -> Columns   one list per field (fast: random.choices with k=n)
    events(n, ...)   -> list[dict]  the JSON shape POST /v1/events takes
    json_batches(...) / raw_events(...)  helpers the scenarios share

Pure standard library (no numpy): a million events take about two seconds."""

from __future__ import annotations

import itertools
import random
import string
import time
from dataclasses import dataclass
from typing import Any

import msgspec

NAMES = ("click", "view", "conversion")
NAME_WEIGHTS = (55, 35, 10)
DEVICES = ("desktop", "mobile", "tablet", "tv", "bot")
LINKS = 1000
SOURCES = 50
COUNTRIES = 200
AFFILIATES = 100


def zipf_cum_weights(n: int, s: float = 1.0) -> list[float]:
    """Cumulative weights of ranks 1..n with weight 1/rank**s."""
    return list(itertools.accumulate(1.0 / (r**s) for r in range(1, n + 1)))


def _country_codes(n: int) -> list[str]:
    return [
        "".join(p) for p in itertools.islice(itertools.product(string.ascii_uppercase, repeat=2), n)
    ]


@dataclass(frozen=True)
class Vocabulary:
    """The values each dim can take, most frequent first."""

    links: tuple[str, ...] = tuple(f"lnk-{i:05d}" for i in range(LINKS))
    sources: tuple[str, ...] = tuple(f"src-{i:02d}" for i in range(SOURCES))
    countries: tuple[str, ...] = tuple(_country_codes(COUNTRIES))
    devices: tuple[str, ...] = DEVICES
    affiliates: tuple[str, ...] = tuple(f"aff-{i:03d}" for i in range(AFFILIATES))


VOCAB = Vocabulary()
DIM_NAMES = ("link", "source", "country", "device", "affiliate")


@dataclass
class Columns:
    """n events, one list per field (uids[i] None when there is no uid)."""

    names: list[str]
    ts: list[int]
    link: list[str]
    source: list[str]
    country: list[str]
    device: list[str]
    affiliate: list[str]
    uids: list[str | None]
    values: list[float | None]

    def __len__(self) -> int:
        return len(self.names)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def columns(
    n: int,
    *,
    span_ms: int = 3_600_000,
    end_ms: int | None = None,
    uids: int = 100_000,
    seed: int = 1,
    ordered: bool = False,
    zipf_s: float = 1.0,
) -> Columns:
    """n events as columns. ordered=True sorts them by time (events arriving in order)."""
    rng = random.Random(seed)
    end = now_ms() if end_ms is None else end_ms
    start = end - max(1, span_ms)

    def zipf(values: tuple[str, ...]) -> list[str]:
        return rng.choices(values, cum_weights=zipf_cum_weights(len(values), zipf_s), k=n)

    names = rng.choices(NAMES, weights=NAME_WEIGHTS, k=n)
    ts = [rng.randrange(start, end) for _ in range(n)]
    if ordered:
        ts.sort()
    links = zipf(VOCAB.links)
    sources = zipf(VOCAB.sources)
    countries = zipf(VOCAB.countries)
    devices = zipf(VOCAB.devices)
    affiliates = zipf(VOCAB.affiliates)
    uid_col: list[str | None]
    if uids > 0:
        uid_col = [f"u{rng.randrange(uids)}" for _ in range(n)]
    else:
        uid_col = [None] * n
    values: list[float | None] = [
        rng.randrange(100, 50_000) / 100 if name == "conversion" else None for name in names
    ]
    return Columns(names, ts, links, sources, countries, devices, affiliates, uid_col, values)


def to_dicts(
    cols: Columns, *, with_ts: bool = True, lo: int = 0, hi: int | None = None
) -> list[dict[str, Any]]:
    """Rows lo..hi of the columns as event dicts (no `ts` key when with_ts is False)."""
    hi = len(cols) if hi is None else hi
    out: list[dict[str, Any]] = []
    for i in range(lo, hi):
        ev: dict[str, Any] = {
            "name": cols.names[i],
            "dims": {
                "link": cols.link[i],
                "source": cols.source[i],
                "country": cols.country[i],
                "device": cols.device[i],
                "affiliate": cols.affiliate[i],
            },
        }
        if with_ts:
            ev["ts"] = cols.ts[i]
        uid = cols.uids[i]
        if uid is not None:
            ev["uid"] = uid
        value = cols.values[i]
        if value is not None:
            ev["value"] = value
        out.append(ev)
    return out


def events(
    n: int,
    *,
    span_ms: int = 3_600_000,
    end_ms: int | None = None,
    uids: int = 100_000,
    seed: int = 1,
    ordered: bool = False,
    with_ts: bool = True,
) -> list[dict[str, Any]]:
    """n events as the dicts POST /v1/events takes ({name, ts, dims, uid?, value?})."""
    cols = columns(n, span_ms=span_ms, end_ms=end_ms, uids=uids, seed=seed, ordered=ordered)
    return to_dicts(cols, with_ts=with_ts)


def json_batches(evs: list[dict[str, Any]], batch: int = 1000) -> list[bytes]:
    """The events as JSON array bodies of `batch` events each."""
    enc = msgspec.json.Encoder()
    return [enc.encode(evs[i : i + batch]) for i in range(0, len(evs), batch)]


def raw_events(evs: list[dict[str, Any]], *, at_ms: int | None = None) -> list[Any]:
    """The events validated exactly as the API does (events without `ts` count at at_ms)."""
    from counters.core.models import EventIn, EventLimits, validate_events

    decoded = [msgspec.convert(e, EventIn) for e in evs]
    return validate_events(
        decoded,
        now_ms=now_ms() if at_ms is None else at_ms,
        limits=EventLimits(max_age_ms=3650 * 86_400_000, max_future_ms=86_400_000),
    )


def pixel_paths(n: int, *, key: str, uids: int = 100_000, seed: int = 1) -> list[str]:
    """n distinct single-event pixel URLs (path + query, no ts: counted at arrival)."""
    from urllib.parse import urlencode

    cols = columns(n, uids=uids, seed=seed)
    out = []
    for ev in to_dicts(cols, with_ts=False):
        q: dict[str, Any] = {"key": key, "name": ev["name"]}
        for d, v in ev["dims"].items():
            q["d." + d] = v
        if "uid" in ev:
            q["uid"] = ev["uid"]
        if "value" in ev:
            q["value"] = ev["value"]
        out.append("/v1/pixel.gif?" + urlencode(q))
    return out


if __name__ == "__main__":  # a peek at the distribution
    import collections
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t = time.perf_counter()
    c = columns(n)
    dt = time.perf_counter() - t
    print(f"{n:,} events in {dt:.2f}s ({n / dt:,.0f}/s)")
    for col in ("names", "link", "source", "country", "device", "affiliate"):
        top = collections.Counter(getattr(c, col)).most_common(3)
        print(f"{col:10} distinct {len(set(getattr(c, col))):5}  top {top}")
