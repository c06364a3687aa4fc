"""Reading hot buckets from Redis atomically with sealing (lua/read_hot.lua): one hot
(grain, bucket) is its own hash plus, for an hour or a day, its minutes not merged yet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from redis.exceptions import NoScriptError

from counters.core.buckets import Grain
from lua import Scripts
from lua.keys import ProjectKeys, bucket_ref

T = TypeVar("T")


class HotCell(msgspec.Struct):
    """One hot (grain, bucket) as Redis holds it: its own hash and, for an hour or a day,
    the hashes of its minutes not merged into it yet (see lua/read_hot.lua)."""

    minutes: list[int]
    hashes: list[Any]
    """HMGET replies (field mode) or field->value dicts (whole hashes), own hash first."""


def _hot_args(
    keys: ProjectKeys, fields: Sequence[str] | None, cells: Sequence[tuple[Grain, int]]
) -> tuple[list[str], list[Any]]:
    args: list[Any] = [keys.base, len(fields or ()), *(fields or ())]
    args += [bucket_ref(g, b) for g, b in cells]
    return [keys.watermarks, keys.dirty(Grain.minute)], args


async def read_hot(
    scripts: Scripts,
    keys: ProjectKeys,
    fields: Sequence[str] | None,
    cells: Sequence[tuple[Grain, int]],
) -> list[HotCell]:
    """The hot cells' hashes (the given fields, or whole hashes for None), read atomically
    with respect to sealing, so every hot event is counted exactly once."""
    script_keys, args = _hot_args(keys, fields, cells)
    reply = await scripts.read_hot(keys=script_keys, args=args)
    return hot_cells(reply, whole=fields is None)


def queue_read_hot(
    pipe: Any,
    scripts: Scripts,
    keys: ProjectKeys,
    fields: Sequence[str] | None,
    cells: Sequence[tuple[Grain, int]],
) -> None:
    """read_hot queued on a pipeline as a bare EVALSHA (redis-py would add a SCRIPT EXISTS
    round trip to each pipeline holding a Script, and its cluster pipeline refuses the
    evalsha method but not the command); run the pipeline under
    with_scripts_loaded, and decode the reply with hot_cells()."""
    script_keys, args = _hot_args(keys, fields, cells)
    pipe.execute_command("EVALSHA", scripts.read_hot.sha, len(script_keys), *script_keys, *args)


async def with_scripts_loaded(scripts: Scripts, attempt: Callable[[], Awaitable[T]]) -> T:
    """Runs attempt; if Redis had forgotten read_hot.lua (a restart, SCRIPT FLUSH), loads
    it and runs attempt once more."""
    try:
        return await attempt()
    except NoScriptError:
        await scripts.read_hot.registered_client.script_load(scripts.read_hot.script)
        return await attempt()


def hot_cells(reply: Sequence[Any], *, whole: bool) -> list[HotCell]:
    """Decodes read_hot.lua's reply."""
    out = []
    for entry in reply:
        minutes = [int(m) for m in entry[0]]
        hashes = [dict(zip(h[::2], h[1::2], strict=True)) if whole else h for h in entry[1:]]
        out.append(HotCell(minutes, hashes))
    return out
