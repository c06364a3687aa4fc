"""Projects and API keys. Only a sha256 of each key is stored; each key also has a public
id (`k_...`), an optional expiry, a revocation time and, for pixel keys, allowed origins
and event names."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from counters.core.keys import SCOPES, KeyInfo, KeyRecord, NewKey
from persist.db import Conn
from persist.schema import API_KEYS_TABLE, KEY_PROJECTS_TABLE, PROJECTS_TABLE, STATE_TABLE

PROJECT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")

_COLUMNS = "id, project, scope, origins, names, expires_at, revoked_at"
_PROJECTS_OF = (
    f"array_prepend(k.project, coalesce((SELECT array_agg(x.project ORDER BY x.project) "
    f"FROM {KEY_PROJECTS_TABLE} x WHERE x.key_hash = k.key_hash), '{{}}'))"
)


def hash_key(key: str) -> bytes:
    """Digest stored for a key."""
    return hashlib.sha256(key.encode()).digest()


def new_key_id() -> str:
    """A fresh public key id: `k_` + 10 random url-safe characters."""
    return "k_" + secrets.token_urlsafe(8)[:10]


def iso(t: datetime | None) -> str | None:
    """RFC 3339 UTC text of a timestamp (None stays None)."""
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ms(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


async def ensure_project(conn: Conn, project: str) -> None:
    """The project and its persister state row exist afterwards."""
    if not PROJECT_PATTERN.match(project):
        raise ValueError(f"project name {project!r} must match {PROJECT_PATTERN.pattern}")
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO {PROJECTS_TABLE} (project) VALUES ($1) ON CONFLICT DO NOTHING", project
        )
        await conn.execute(
            f"INSERT INTO {STATE_TABLE} (project) VALUES ($1) ON CONFLICT DO NOTHING", project
        )


async def create_key(conn: Conn, project: str | list[str], scope: str) -> str:
    """Creates the project(s) if needed and a new key of this scope; returns the secret
    (shown once). See new_key for the options."""
    return (await new_key(conn, project, scope)).key


async def new_key(
    conn: Conn,
    project: str | list[str],
    scope: str,
    *,
    expires_in: int | None = None,
    origins: Sequence[str] = (),
    names: Sequence[str] = (),
    rotated_from: str | None = None,
    expires_at: datetime | None = None,
) -> NewKey:
    """Creates the project(s) if needed and a new random key; returns it with its secret
    (shown once). A read key may cover several projects; the others cover exactly one.
    Origins and names (already validated) are for pixel keys only. ValueError on bad input."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    projects = list(dict.fromkeys([project] if isinstance(project, str) else project))
    if not projects:
        raise ValueError("a key needs a project")
    if len(projects) > 1 and scope != "read":
        raise ValueError("only read keys may cover several projects")
    if (origins or names) and scope != "pixel":
        raise ValueError("allowed origins and names apply to pixel keys only")
    for p in projects:
        await ensure_project(conn, p)
    key = f"ck_{scope[0]}_{secrets.token_urlsafe(24)}"
    key_id = new_key_id()
    digest = hash_key(key)
    async with conn.transaction():
        expires = await conn.fetchval(
            f"INSERT INTO {API_KEYS_TABLE} (key_hash, id, project, scope, expires_at, origins,"
            " names, rotated_from) VALUES ($1, $2, $3, $4, coalesce($5, now() + $6 * interval"
            " '1 second'), $7, $8, $9) RETURNING expires_at",
            digest,
            key_id,
            projects[0],
            scope,
            expires_at,
            expires_in,
            list(dict.fromkeys(origins)),
            list(dict.fromkeys(names)),
            rotated_from,
        )
        for p in projects[1:]:
            await conn.execute(
                f"INSERT INTO {KEY_PROJECTS_TABLE} (key_hash, project) VALUES ($1, $2)",
                digest,
                p,
            )
    return NewKey(
        key_id,
        key,
        projects,
        scope,
        iso(expires),
        list(dict.fromkeys(origins)),
        list(dict.fromkeys(names)),
    )


async def lookup_key(conn: Conn, key: str) -> KeyInfo | None:
    """The key as authorization sees it, or None when it is unknown or revoked. (An expired
    key is returned: the caller refuses it by KeyInfo.expired, also from its cache.)"""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, {_PROJECTS_OF} AS projects FROM {API_KEYS_TABLE} k"
        " WHERE key_hash = $1",
        hash_key(key),
    )
    if row is None or row["revoked_at"] is not None:
        return None
    return KeyInfo(
        row["id"],
        tuple(row["projects"]),
        row["scope"],
        tuple(row["origins"]),
        tuple(row["names"]),
        _ms(row["expires_at"]),
    )


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        row["id"],
        list(row["projects"]),
        row["scope"],
        iso(row["created_at"]) or "",
        iso(row["last_used_at"]),
        iso(row["expires_at"]),
        iso(row["revoked_at"]),
        list(row["origins"]),
        list(row["names"]),
    )


async def list_keys(conn: Conn, project: str | None = None) -> list[KeyRecord]:
    """Every key (or those covering the project), oldest first; never a secret or hash."""
    rows = await conn.fetch(
        f"SELECT * FROM (SELECT {_COLUMNS}, created_at, last_used_at, {_PROJECTS_OF} AS projects"
        f" FROM {API_KEYS_TABLE} k) s WHERE $1::text IS NULL OR $1 = ANY(projects)"
        " ORDER BY created_at, id",
        project,
    )
    return [_record(r) for r in rows]


async def get_key(conn: Conn, key_id: str) -> KeyRecord | None:
    """One key by its public id, or None."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, created_at, last_used_at, {_PROJECTS_OF} AS projects"
        f" FROM {API_KEYS_TABLE} k WHERE id = $1",
        key_id,
    )
    return None if row is None else _record(row)


async def mark_revoked(conn: Conn, key_id: str) -> bool:
    """Sets revoked_at (once); False when there is no key with this id."""
    status = await conn.execute(
        f"UPDATE {API_KEYS_TABLE} SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        key_id,
    )
    return status != "UPDATE 0"


async def rotate_key(conn: Conn, key_id: str, grace_seconds: int) -> tuple[NewKey, int]:
    """A new key with the same projects, scope, expiry, origins and names; the old one
    keeps working until now + grace (or its own earlier expiry). Returns the new key and the
    old key's new expiry (epoch ms). ValueError for an unknown or revoked id."""
    old = await get_key(conn, key_id)
    if old is None or old.revoked_at is not None:
        raise ValueError(f"no live key with id {key_id!r}")
    async with conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE {API_KEYS_TABLE} SET expires_at = least(coalesce(expires_at, 'infinity'),"
            " now() + $2 * interval '1 second') WHERE id = $1 RETURNING expires_at",
            key_id,
            grace_seconds,
        )
        if row is None:
            raise ValueError(f"no live key with id {key_id!r}")
        old_expiry = row["expires_at"]
        own_expiry = None if old.expires_at is None else datetime.fromisoformat(old.expires_at)
        new = await new_key(
            conn,
            old.projects,
            old.scope,
            origins=old.origins,
            names=old.names,
            rotated_from=key_id,
            expires_at=own_expiry,
        )
    return new, _ms(old_expiry) or 0


async def touch_keys(conn: Conn, key_ids: Sequence[str]) -> None:
    """last_used_at = now() for these keys (one statement for a whole batch)."""
    await conn.execute(
        f"UPDATE {API_KEYS_TABLE} SET last_used_at = now() WHERE id = ANY($1::text[])",
        list(key_ids),
    )


async def project_exists(conn: Conn, project: str) -> bool:
    """Whether the project has been created."""
    return bool(await conn.fetchval(f"SELECT 1 FROM {PROJECTS_TABLE} WHERE project = $1", project))


async def list_projects(conn: Conn, *, shards: bool = True) -> list[str]:
    """Every stored project, sorted: with shards=False only the projects themselves, not
    the rows of their shards s > 0 (counters/core/shards.py), which the persister and the
    nightly reconcile handle as projects of their own."""
    where = "" if shards else " WHERE shard_of IS NULL"
    return [
        r["project"]
        for r in await conn.fetch(f"SELECT project FROM {PROJECTS_TABLE}{where} ORDER BY 1")
    ]
