"""What the services' storage back-ends share: choosing one, and PostgreSQL migrations.

A service's ``--database`` is either a SQLite file path (the embedded
default) or a ``postgresql://`` URL. Each back-end keeps its schema as a list
of numbered migrations, applied on start and recorded in ``schema_version``;
a shipped migration is never edited, only followed by a new one.

On PostgreSQL several processes may start at once (a relay's ingest and its
frontends); :func:`migrate_postgres` holds a transaction-scoped advisory lock
so exactly one applies each migration and the others see it done.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import sqlite3

    import asyncpg

__all__ = [
    "POSTGRES_SCHEMES",
    "is_postgres_url",
    "migrate_sqlite",
    "migrate_postgres",
    "postgres_schema_version",
    "redact_url",
]

log = logging.getLogger(__name__)

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def is_postgres_url(value: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) connection URL."""
    return isinstance(value, str) and value.startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def migrate_sqlite(conn: sqlite3.Connection, migrations: Sequence[str], label: str = "database") -> int:
    """Bring a SQLite database (autocommit connection) up to ``len(migrations)``.

    ``migrations[i]`` takes the schema from version ``i`` to ``i + 1``; each
    runs in one ``BEGIN IMMEDIATE`` transaction with its version bump. A
    database newer than this roost is refused rather than touched.
    """
    latest = len(migrations)
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    current = row[0] if row else 0
    if current > latest:
        raise RuntimeError(f"{label} schema {current} is newer than this roost ({latest})")
    for number in range(current, latest):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (number + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return latest


def _lock_key(name: str) -> int:
    return zlib.crc32(f"roost-migrate:{name}".encode()) - 2**31


async def postgres_schema_version(conn: asyncpg.Connection, name: str) -> int:
    """The highest migration of ``name`` applied (0 when none)."""
    exists = await conn.fetchval("SELECT to_regclass('roost_schema_version') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval(
        "SELECT coalesce(max(version), 0) FROM roost_schema_version WHERE component = $1", name
    )
    return int(value)


async def migrate_postgres(
    conn: asyncpg.Connection, name: str, migrations: Sequence[tuple[int, str]]
) -> int:
    """Apply the migrations of component ``name`` not applied yet; the version reached.

    Each migration runs in its own transaction together with its
    ``roost_schema_version`` row. Several components (the relay, the feed
    generator, the directory) may share one database: versions are per
    component.
    """
    async with conn.transaction():
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide: serialise it.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(""))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS roost_schema_version ("
            " component TEXT NOT NULL, version INTEGER NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
    reached = 0
    for version, script in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(name))
            done = await conn.fetchval(
                "SELECT 1 FROM roost_schema_version WHERE component = $1 AND version = $2",
                name, version,
            )
            if not done:
                await conn.execute(script)
                await conn.execute(
                    "INSERT INTO roost_schema_version (component, version) VALUES ($1, $2)",
                    name, version,
                )
                log.info("postgres schema migrated component=%s version=%d", name, version)
        reached = version
    return reached
