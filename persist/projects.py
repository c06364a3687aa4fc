"""Projects and API keys. Only a sha256 of each key is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

from persist.db import Conn
from persist.schema import API_KEYS_TABLE, KEY_PROJECTS_TABLE, PROJECTS_TABLE, STATE_TABLE

SCOPES = ("ingest", "read", "admin")
PROJECT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")


def hash_key(key: str) -> bytes:
    """Digest stored for a key."""
    return hashlib.sha256(key.encode()).digest()


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
    """Creates the project(s) if needed and a new random key; returns the key (shown once).
    A read key may cover several projects; an ingest or admin key covers exactly one."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    projects = list(dict.fromkeys([project] if isinstance(project, str) else project))
    if not projects:
        raise ValueError("a key needs a project")
    if len(projects) > 1 and scope != "read":
        raise ValueError("only read keys may cover several projects")
    for p in projects:
        await ensure_project(conn, p)
    key = f"ck_{scope[0]}_{secrets.token_urlsafe(24)}"
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO {API_KEYS_TABLE} (key_hash, project, scope) VALUES ($1, $2, $3)",
            hash_key(key),
            projects[0],
            scope,
        )
        for p in projects[1:]:
            await conn.execute(
                f"INSERT INTO {KEY_PROJECTS_TABLE} (key_hash, project) VALUES ($1, $2)",
                hash_key(key),
                p,
            )
    return key


async def lookup_key(conn: Conn, key: str) -> tuple[tuple[str, ...], str] | None:
    """(projects, scope) of a key (its own project first), or None when unknown."""
    digest = hash_key(key)
    row = await conn.fetchrow(
        f"SELECT project, scope FROM {API_KEYS_TABLE} WHERE key_hash = $1", digest
    )
    if row is None:
        return None
    extra = await conn.fetch(
        f"SELECT project FROM {KEY_PROJECTS_TABLE} WHERE key_hash = $1 ORDER BY project", digest
    )
    return (row["project"], *(r["project"] for r in extra)), row["scope"]


async def project_exists(conn: Conn, project: str) -> bool:
    """Whether the project has been created."""
    return bool(await conn.fetchval(f"SELECT 1 FROM {PROJECTS_TABLE} WHERE project = $1", project))


async def list_projects(conn: Conn) -> list[str]:
    """Every project, sorted."""
    return [
        r["project"] for r in await conn.fetch(f"SELECT project FROM {PROJECTS_TABLE} ORDER BY 1")
    ]
