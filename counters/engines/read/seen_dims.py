"""The dims a project has seen (its catalog), cached per project, so a bare `<dim>=` read
parameter can be told from a typo without a catalog read per request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from counters.core.errors import Unavailable
from counters.engines.read.catalog import read_catalog
from counters.engines.read.context import ReadContext
from counters.engines.read.parse import RESERVED, filter_dim

FRESH_MS = 60_000
"""A cached set is reused this long."""
MAX_PROJECTS = 10_000


def bare_dims(params: Mapping[str, str]) -> set[str]:
    """The parameters that are neither read parameters nor an explicit d.<dim> / d[<dim>]."""
    return {k for k in params if k not in RESERVED and not filter_dim(k)[1]}


class SeenDims:
    """One process's cache of the dims each project has seen (held by the app's state)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, frozenset[str]]] = {}

    async def _load(self, ctx: ReadContext, now_ms: int) -> frozenset[str]:
        catalog = await read_catalog(ctx, now_ms)
        dims = frozenset(d for n in catalog.names for d in n.dims)
        if len(self._cache) >= MAX_PROJECTS:
            self._cache.clear()
        self._cache[ctx.project] = (now_ms, dims)
        return dims

    async def get(
        self, ctx: ReadContext, now_ms: int, wanted: Iterable[str]
    ) -> frozenset[str] | None:
        """The project's seen dims, covering every wanted one when it has been seen: cached
        up to FRESH_MS, refreshed when a wanted dim is missing (a dim just ingested: only a
        read that would otherwise be refused pays for the refresh).
        None (check nothing) when no dim is wanted or the backends are down."""
        want = set(wanted)
        if not want:
            return None
        hit = self._cache.get(ctx.project)
        if hit is not None:
            at, dims = hit
            if now_ms - at < FRESH_MS and want <= dims:
                return dims
        try:
            return await self._load(ctx, now_ms)
        except Unavailable:
            return None if hit is None else hit[1]
