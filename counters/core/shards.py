"""Hot-tenant shards: the pure rules (docs/ARCHITECTURE.md "Shards").

A project P split into N shards keeps shard 0 under its own name and keyspace `{p:P}`;
shard s > 0 is the internal project `P:s` with its own keyspace `{p:P:s}`, raw stream,
watermarks, late generations and Postgres rows. (User project names cannot hold `:`, so an
internal name never clashes with one.) Every shard is persisted, restored and rebuilt as
a project of its own; reads of P merge its shards (counts and sums add, sketches unite).

Routing, so that a batch stays all-or-nothing where it can and dedupe holds:

- a batch with no event ids goes whole to one shard (round robin over `shards`);
- a batch with an Idempotency-Key goes whole to the shard its key hashes to;
- otherwise each event with an id goes to the shard its (name, id) hashes to, over
  `id_shards` while a change of N is younger than the dedupe window (so a retry meets the
  marker its first try left), then over `shards`; events without an id ride with the
  shard applied last (only once every other part is applied).

`span` is every shard that may hold data (the most N ever set): reads, rebuild and
reconcile cover all of them, so lowering N loses nothing.
"""

from __future__ import annotations

import msgspec

SHARD_SEPARATOR = ":"
MAX_SHARDS = 64
"""Most shards one project may be split into."""


class ShardPlan(msgspec.Struct, frozen=True):
    """How one project is split. The default (one shard) is every project never split."""

    shards: int = 1
    """N: shards new batches spread over."""
    span: int = 1
    """Shards that may hold data (the most N ever set): reads cover all of them."""
    id_shards: int = 1
    """N that events with ids are routed over until id_until_ms (the N before a change)."""
    id_until_ms: int = 0
    """Epoch ms until which id_shards holds for events with ids (0: shards does)."""

    def ids_over(self, now_ms: int) -> int:
        """How many shards events with ids are routed over at now_ms."""
        return self.id_shards if now_ms < self.id_until_ms else self.shards

    @property
    def split(self) -> bool:
        """Whether more than one shard may hold data."""
        return self.span > 1


SINGLE = ShardPlan()


def shard_project(project: str, shard: int) -> str:
    """The project name shard `shard` of `project` is stored under (shard 0: itself)."""
    return project if shard == 0 else f"{project}{SHARD_SEPARATOR}{shard}"


def shard_projects(project: str, span: int) -> list[str]:
    """Every shard's project name, shard 0 first."""
    return [shard_project(project, s) for s in range(max(1, span))]


def home_of(name: str) -> tuple[str, int]:
    """(project, shard) of a stored project name (a user project is its own shard 0)."""
    base, sep, shard = name.rpartition(SHARD_SEPARATOR)
    if sep and shard.isdigit() and base:
        return base, int(shard)
    return name, 0


def token_shard(token: str, n: int) -> int:
    """The shard (of n) a hex token (event_id_token, idempotency_token) routes to: the same
    for the same token and n in every process."""
    return int(token[:8], 16) % n if n > 1 else 0


def next_plan(old: ShardPlan, n: int, now_ms: int, window_ms: int) -> ShardPlan:
    """The plan after setting N to n at now_ms: the span never shrinks, and events with ids
    keep the routing in effect now for window_ms (the dedupe window plus the time every
    process takes to see the change), so no retry lands on a shard without its marker."""
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, not {n}")
    in_effect = old.ids_over(now_ms)
    span = max(old.span, n)
    if in_effect == n or window_ms <= 0:
        return ShardPlan(n, span, n, 0)
    return ShardPlan(n, span, in_effect, now_ms + window_ms)
