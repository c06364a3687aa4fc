"""Rollups and the field encoding that names one dims tuple of one rollup of one event name.

A rollup is a sorted tuple of dimension names: () is the total, ("country",) one dimension,
("country", "source") a cross-tab. A *field* is `name US rollup US v1 US v2 ...` where rollup
is the dim names joined by commas and v1.. the values in that order (US = \\x1f, which names
and values may not contain).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

US = "\x1f"
"""Unit separator between the parts of a field (names and values may not contain it)."""

Rollup = tuple[str, ...]


def rollup_id(rollup: Rollup) -> str:
    """Stable text id of a rollup: dim names joined by commas ('' for the total)."""
    return ",".join(rollup)


def parse_rollup_id(text: str) -> Rollup:
    """Inverse of rollup_id."""
    return tuple(text.split(",")) if text else ()


def encode_field(name: str, rollup: Rollup, values: Iterable[str]) -> str:
    """Field for one event name, rollup and its dims values (in rollup order)."""
    return US.join((name, ",".join(rollup), *values))


def decode_field(field: str) -> tuple[str, Rollup, tuple[str, ...]]:
    """Inverse of encode_field: (name, rollup, values)."""
    parts = field.split(US)
    return parts[0], parse_rollup_id(parts[1]), tuple(parts[2:])


def field_prefix(name: str, rollup: Rollup) -> str:
    """The start every field of this name and rollup shares (values follow it)."""
    return US.join((name, rollup_id(rollup), ""))


def field_values(field: str, prefix: str) -> tuple[str, ...] | None:
    """The values of a field that starts with field_prefix(...), else None."""
    if not field.startswith(prefix):
        return None
    return tuple(field[len(prefix) :].split(US))


def single_dim_values(fields: Iterable[str]) -> set[tuple[str, str]]:
    """Every (dim, value) that a single-dim field among these names (the total and
    cross-tab fields are skipped; the same pair under several event names appears once)."""
    out: set[tuple[str, str]] = set()
    for rest in {f[f.index(US) + 1 :] for f in fields}:
        dim, _, value = rest.partition(US)
        if dim and "," not in dim:
            out.add((dim, value))
    return out


def fields_for(name: str, dims: Mapping[str, str], crosstabs: Iterable[Rollup]) -> list[str]:
    """Every field one event contributes to: the total, one per dim, and each configured
    cross-tab whose dims the event has."""
    out = [name + US]
    prefix = name + US
    for dim in sorted(dims):
        out.append(prefix + dim + US + dims[dim])
    for tab in crosstabs:
        if all(d in dims for d in tab):
            out.append(prefix + ",".join(tab) + US + US.join(dims[d] for d in tab))
    return out


def rollup_for_filters(dims: Iterable[str]) -> Rollup:
    """The rollup that answers a read filtered on exactly these dims."""
    return tuple(sorted(set(dims)))


def available_rollups(crosstabs: Iterable[Rollup]) -> set[Rollup]:
    """Multi-dim rollups configured; single-dim and total rollups always exist."""
    return {tuple(sorted(t)) for t in crosstabs}


def is_stored(rollup: Rollup, crosstabs: Iterable[Rollup]) -> bool:
    """Whether rollups are kept for this rollup: the total and single dims always, a
    cross-tab only when configured (else reads of it come from the raw log)."""
    return len(rollup) <= 1 or rollup in available_rollups(crosstabs)


OTHER = "__other__"
"""The value standing for every dim value past the cardinality cap, and the name of the
rest of a breakdown."""

NONE = "__none__"
"""The name of a breakdown's series for the events lacking a grouped dim (so the top tuples,
__other__ and __none__ add up to the total)."""
