"""Postgres plumbing: an asyncpg pool with jsonb codecs, and numbered .sql migrations.

Migrations are plain numbered files (001_init.sql, 002_...) per service, applied in
order at start-up under an advisory lock, each file in a transaction of its own with its
row in schema_migrations, so several replicas starting together apply each file exactly
once and a failing file leaves the ones before it applied. A migration tool (alembic) would add a
second model of the schema that the raw-SQL stores never use.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"

# The database cannot be reached (down, restarting, the network): an outage, not a bug.
# Consumers wait it out; the HTTP API answers 503.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)
_MIGRATION_LOCK = 0x656D6275646F  # "embudo": one lock id for every service's migrations


def _encode_json(value: object) -> str:
    # Pre-serialised JSON (the outbox stores envelopes it already encoded) passes through.
    return value if isinstance(value, str) else json.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_encode_json, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, search_path: str | None = None
) -> asyncpg.Pool:
    """`search_path`: the schema the pool's statements mean (a rebuild writes next to the live one)."""
    server_settings = {"search_path": search_path} if search_path else None
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, server_settings=server_settings
    )


def migration_files(*folders: Path) -> list[tuple[str, Path]]:
    """(scope/version, path) in apply order: the shared tables first, then the service's."""
    files: list[tuple[str, Path]] = []
    for folder in folders:
        for path in sorted(folder.glob("[0-9][0-9][0-9]_*.sql")):
            files.append((f"{folder.parent.name}/{path.stem}", path))
    return files


async def apply_migrations(pool: asyncpg.Pool, service_migrations: Path) -> list[str]:
    """Apply what has not been applied yet; returns the names applied now."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, path in migration_files(SHARED_MIGRATIONS, service_migrations):
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now
