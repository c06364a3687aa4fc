"""The Redis scripts, shipped as package data and registered once per client."""

from __future__ import annotations

from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def read_script(name: str) -> str:
    """Text of lua/<name>.lua."""
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Every script, registered on one client (redis-py reloads them on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.ingest: AsyncScript = redis.register_script(read_script("ingest"))
        self.seal: AsyncScript = redis.register_script(read_script("seal"))
        self.restore: AsyncScript = redis.register_script(read_script("restore"))
        self.rotate_late: AsyncScript = redis.register_script(read_script("rotate_late"))
        self.trim_raw: AsyncScript = redis.register_script(read_script("trim_raw"))
        self.cut: AsyncScript = redis.register_script(read_script("cut"))
        self.read_hot: AsyncScript = redis.register_script(read_script("read_hot"))
