"""The per-project uid hashers, each built once from the project's secret in Postgres and
kept for the life of the process (a secret never changes)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from counters.core.errors import NotFound
from counters.core.models import RawEvent
from counters.core.uid import UidHasher, has_uids
from persist.secrets import uid_secret


class UidSecrets:
    """project -> UidHasher, read from Postgres on first use (one read per project at a
    time, however many requests ask at once)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._hashers: dict[str, UidHasher] = {}
        self._loading: dict[str, asyncio.Future[UidHasher]] = {}

    async def hasher(self, project: str) -> UidHasher:
        """The project's hasher. Raises Unavailable("postgres") when it is not cached yet and
        Postgres does not answer (nothing may be stored unhashed), NotFound when the project
        does not exist."""
        found = self._hashers.get(project)
        if found is not None:
            return found
        loading = self._loading.get(project)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[UidHasher] = asyncio.get_running_loop().create_future()
        self._loading[project] = future
        try:
            secret = await uid_secret(self._pool, project)
            if secret is None:
                raise NotFound(f"unknown project {project!r}", code="unknown_project")
            hasher = self._hashers[project] = UidHasher(secret)
            future.set_result(hasher)
            return hasher
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters (if any) get it, nobody else logs it
            raise
        finally:
            del self._loading[project]

    async def hash_events(self, project: str, events: Sequence[RawEvent]) -> list[RawEvent]:
        """The events with their uids replaced by the project's keyed hash, ready to store;
        Postgres is asked only when some event has a uid and the secret is not cached."""
        if not has_uids(events):
            return list(events)
        return (await self.hasher(project)).events(events)
