"""Storage: schema migrations (Alembic), TimescaleDB detection and policies, the event catalogue seed.

``migrate`` is idempotent: running it twice changes nothing. It takes an advisory lock so that several
collectors starting at once migrate one after the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from storage.catalogue import CATALOGUE
from storage.schema import HYPERTABLES

__all__ = ["migrate", "install_routines", "MigrationReport", "timescaledb_active", "sqlalchemy_url", "ensure_database"]

log = logging.getLogger("callscope.storage")
_MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x63616C6C73636F70  # "callscop"


@dataclass(frozen=True)
class MigrationReport:
    mode: str               # "timescaledb" or "postgresql"
    revision: str
    timescaledb_version: str | None
    created_database: bool


def sqlalchemy_url(database_url: str) -> str:
    """``postgresql://…`` (what users write) → the SQLAlchemy URL for asyncpg."""
    scheme, rest = database_url.split("://", 1)
    return "postgresql+asyncpg://" + rest if scheme in ("postgresql", "postgres") else database_url


async def ensure_database(database_url: str) -> bool:
    """Create the target database if it does not exist (a fresh PostgreSQL has only ``postgres``)."""
    try:
        connection = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(database_url)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        finally:
            await admin.close()
        log.info("storage.database_created", extra={"database": name})
        return True
    await connection.close()
    return False


async def timescaledb_active(connection: asyncpg.Connection) -> str | None:
    """The installed TimescaleDB version in this database, or None on plain PostgreSQL."""
    return await connection.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")


def _alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


async def _upgrade(database_url: str) -> str:
    engine = create_async_engine(sqlalchemy_url(database_url))
    config = _alembic_config(database_url)
    try:
        async with engine.begin() as connection:
            def run(sync_connection) -> None:  # type: ignore[no-untyped-def]
                config.attributes["connection"] = sync_connection
                command.upgrade(config, "head")
            await connection.run_sync(run)
            from sqlalchemy import text

            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    finally:
        await engine.dispose()
    return str(revision)


async def _policy_is(connection: asyncpg.Connection, table: str, proc: str, key: str, days: int) -> bool:
    """Whether ``table`` has exactly the wanted policy: one ``proc`` job with ``key`` = ``days`` (none if 0)."""
    intervals = [row[0] for row in await connection.fetch(
        "SELECT (config ->> $3)::interval = make_interval(days => $4) FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = current_schema() AND hypertable_name = $1 AND proc_name = $2",
        table, proc, key, days)]
    return intervals == ([True] if days > 0 else [])


async def _apply_timescale_policies(connection: asyncpg.Connection, *, retention_days: int,
                                    compress_after_days: int) -> None:
    """Compression and retention per hypertable; checked on every start so changed days take effect.

    A policy that already has the wanted interval is kept (same job, its run history and schedule intact), so
    migrating twice changes nothing.
    """
    for table, column in HYPERTABLES.items():
        segment = "call_id"
        compressed = await connection.fetchval(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = $1", table)
        if not compressed:
            await connection.execute(
                f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment}', "
                f"timescaledb.compress_orderby = '{column} DESC')")
        if not await _policy_is(connection, table, "policy_compression", "compress_after", compress_after_days):
            await connection.execute("SELECT remove_compression_policy($1::regclass, if_exists => true)", table)
            if compress_after_days > 0:
                await connection.execute(
                    "SELECT add_compression_policy($1::regclass, make_interval(days => $2))", table,
                    compress_after_days)
        if not await _policy_is(connection, table, "policy_retention", "drop_after", retention_days):
            await connection.execute("SELECT remove_retention_policy($1::regclass, if_exists => true)", table)
            if retention_days > 0:
                await connection.execute(
                    "SELECT add_retention_policy($1::regclass, make_interval(days => $2))", table, retention_days)


async def _seed_catalogue(connection: asyncpg.Connection) -> None:
    await connection.executemany(
        """INSERT INTO event_types (event, display_name, category, default_level, description)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (event) DO UPDATE SET display_name = EXCLUDED.display_name,
               category = EXCLUDED.category, default_level = EXCLUDED.default_level,
               description = EXCLUDED.description
           WHERE (event_types.display_name, event_types.category, event_types.default_level,
                  event_types.description) IS DISTINCT FROM
                 (EXCLUDED.display_name, EXCLUDED.category, EXCLUDED.default_level, EXCLUDED.description)""",
        [(e.event, e.display_name, e.category, e.default_level, e.description) for e in CATALOGUE],
    )


async def install_routines(connection: asyncpg.Connection) -> None:
    """(Re)create the write and derive routines from this version's SQL (they are code, not schema)."""
    from storage.deriver import DERIVE_ROUTINE, SAFE_CASTS
    from storage.rollup import ROLLUP_ROUTINES
    from storage.writer import WRITE_ROUTINE

    await connection.execute(SAFE_CASTS)
    await connection.execute(WRITE_ROUTINE)
    await connection.execute(DERIVE_ROUTINE)
    for routine in ROLLUP_ROUTINES:
        await connection.execute(routine)


async def migrate(database_url: str, *, retention_days: int = 30, compress_after_days: int = 2) -> MigrationReport:
    """Bring the database to the newest schema; log once which storage mode is active."""
    created = await ensure_database(database_url)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            revision = await _upgrade(database_url)
            version = await timescaledb_active(connection)
            if version:
                await _apply_timescale_policies(connection, retention_days=retention_days,
                                                compress_after_days=compress_after_days)
            await _seed_catalogue(connection)
            await install_routines(connection)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await connection.close()
    mode = "timescaledb" if version else "postgresql"
    if version:
        log.info("storage.mode", extra={"mode": mode, "timescaledb": version, "revision": revision,
                                         "retention_days": retention_days,
                                         "compress_after_days": compress_after_days})
    else:
        log.info("storage.mode", extra={"mode": mode, "revision": revision,
                                         "note": "TimescaleDB not available: plain tables, no compression "
                                                 "or retention policies"})
    return MigrationReport(mode=mode, revision=revision, timescaledb_version=version, created_database=created)
