"""A batched read's body -> its queries (pure, no I/O): the shape checked, each query's
parameters merged over the common ones, and a list value turned into the parameter
repeated, so every query can go through the same parse_read as a single GET route.

    {"common": {"from": "...", "precision": "1h"},
     "queries": [{"id": "c", "kind": "series", "name": ["click", "signup"]},
                 {"id": "cat", "kind": "catalog"}]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from counters.core.errors import BadRequest

MAX_QUERIES = 50
"""Queries one batch may carry."""
MAX_ID_CHARS = 64
KINDS = ("series", "total", "catalog")
"""series and total answer what GET /series and /total answer; catalog what GET /catalog does."""
QUERY_FIELDS = ("id", "kind")
"""The keys of a query that are not read parameters."""
BATCH_FIELDS = ("common", "queries")

_decoder = msgspec.json.Decoder()


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_parameter")


class Params(Mapping[str, str]):
    """Read parameters as a query string carries them: a key may repeat; `[]` and get give
    its last value (as Starlette's QueryParams do), getlist every value, multi_items every
    (key, value) pair in order, which is all parse_read asks of its parameters."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._items = tuple(items)
        self._last = dict(self._items)

    def __getitem__(self, key: str) -> str:
        return self._last[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._last)

    def __len__(self) -> int:
        return len(self._last)

    def getlist(self, key: str) -> list[str]:
        """Every value of key, in order (empty when absent)."""
        return [v for k, v in self._items if k == key]

    def multi_items(self) -> list[tuple[str, str]]:
        """Every (key, value) pair, repeated keys included, in order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Params({list(self._items)!r})"


@dataclasses.dataclass(frozen=True)
class BatchQuery:
    """One query of a batch: its id, its kind and its merged read parameters."""

    index: int
    id: str
    kind: str
    params: Params

    @property
    def where(self) -> str:
        """How errors name the query: `queries[2] (id "b.click.source")`."""
        return where(self.index, self.id)


class BatchReply(msgspec.Struct):
    """`{"results": {<id>: <the single route's JSON reply>, ...}}`, in the queries' order."""

    results: dict[str, Any]


def where(index: int, query_id: str | None = None) -> str:
    """`queries[<index>]`, with ` (id "<id>")` when the id is known."""
    if query_id is None:
        return f"queries[{index}]"
    return f"queries[{index}] (id {msgspec.json.encode(query_id).decode()})"


def decode_batch(data: bytes | str) -> Any:
    """The JSON of a batch (a POST body or the GET `q` parameter); 400 malformed_json."""
    if not data.strip():
        raise BadRequest(
            'the batch is empty: send {"common": {...}, "queries": [...]}', code="malformed_json"
        )
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON in the batch: {exc}", code="malformed_json") from exc


def _values(raw: Any, context: str, key: str) -> list[str]:
    """A parameter's values: a string is one, a list of strings the parameter repeated."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return list(raw)
    raise _bad(f"{context}: parameter {key!r} must be a string or a list of strings")


def _param_object(raw: Any, context: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise _bad(f"{context}: must be an object of read parameters")
    return {key: _values(value, context, key) for key, value in raw.items()}


def _query_id(raw: dict[str, Any], index: int, seen: dict[str, int]) -> str:
    query_id = raw.get("id")
    if not isinstance(query_id, str) or not 1 <= len(query_id) <= MAX_ID_CHARS:
        raise _bad(f"{where(index)}: id is required: a string of 1..{MAX_ID_CHARS} characters")
    if query_id in seen:
        raise _bad(
            f"{where(index, query_id)}: duplicate id (also queries[{seen[query_id]}]);"
            " ids must be unique"
        )
    seen[query_id] = index
    return query_id


def _kind(raw: dict[str, Any], context: str) -> str:
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _bad(f"{context}: kind must be one of {', '.join(KINDS)}")
    assert isinstance(kind, str)
    return kind


def _check_format(params: Mapping[str, list[str]], context: str) -> None:
    if any(v != "json" for v in params.get("format", [])):
        raise _bad(f"{context}: format must be json inside a batch (read long or csv singly)")


def merged(common: Mapping[str, list[str]], own: Mapping[str, list[str]]) -> Params:
    """common's parameters overridden key by key by the query's own (an empty list drops
    a common parameter), each list value spread as the parameter repeated."""
    both = {**common, **own}
    return Params([(key, v) for key, values in both.items() for v in values])


def parse_batch(body: Any) -> list[BatchQuery]:
    """The queries of a decoded batch, in order: 1..MAX_QUERIES of them, unique ids of
    1..MAX_ID_CHARS characters, a known kind, parameters that are strings or lists of
    strings, format json if given; catalog takes no parameters of its own. A 400 names
    the first bad query (`queries[2] (id "x"): ...`); the read parameters themselves are
    parse_read's to check."""
    if not isinstance(body, dict):
        raise _bad('a batch is a JSON object: {"common": {...}, "queries": [...]}')
    unknown = [k for k in body if k not in BATCH_FIELDS]
    if unknown:
        raise _bad(f"unknown batch field {unknown[0]!r} (a batch has common and queries)")
    common = _param_object(body.get("common", {}), "common")
    for key in QUERY_FIELDS:
        if key in common:
            raise _bad(f"common: {key!r} belongs to each query, not to common")
    _check_format(common, "common")
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries:
        raise _bad(f"queries is required: a list of 1..{MAX_QUERIES} queries")
    if len(queries) > MAX_QUERIES:
        raise _bad(f"at most {MAX_QUERIES} queries per batch (got {len(queries)})")
    seen: dict[str, int] = {}
    out: list[BatchQuery] = []
    for index, raw in enumerate(queries):
        if not isinstance(raw, dict):
            raise _bad(f"{where(index)}: must be an object with id, kind and read parameters")
        query_id = _query_id(raw, index, seen)
        context = where(index, query_id)
        kind = _kind(raw, context)
        own = _param_object({k: v for k, v in raw.items() if k not in QUERY_FIELDS}, context)
        if kind == "catalog":
            if own:
                raise _bad(f"{context}: catalog takes no parameters (got {next(iter(own))!r})")
            out.append(BatchQuery(index, query_id, kind, Params([])))
            continue
        _check_format(own, context)
        out.append(BatchQuery(index, query_id, kind, merged(common, own)))
    return out
