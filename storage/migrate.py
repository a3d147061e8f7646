"""Storage: schema migrations (Alembic), TimescaleDB detection and policies, the event catalogue seed, the
versioned routines, the telephony rates — and the check ``callscope serve`` makes before it starts.

Schema and code change only through ``callscope migrate`` (``migrate`` here). It is idempotent: running it
twice changes nothing, and a lock on ``callscope_migrate_lock`` keeps two runs (two Jobs, two operators) one after
the other (a table lock, not an advisory lock: any role can take an advisory lock, a reader included). It
installs this release's routines next to the previous release's (storage/routines.py), so collectors of the
previous release keep working while it runs and until they are replaced.

``callscope serve`` changes nothing in the schema: ``check_schema`` refuses a database whose revision it does
not run on (older: run migrate; newer, without this release's routines: upgrade the collector).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from storage.catalogue import CATALOGUE
from storage.errors import SchemaMismatch
from storage.reader import DEFAULT_CONNECTION_LIMIT, READER, function_privileges_sql, privileges_sql, role_state_sql
from storage.routines import ROUTINE_VERSION, VERSIONED_ROUTINES, routine_name, versioned_sql
from storage.schema import HYPERTABLES

__all__ = ["migrate", "install_routines", "apply_reader_lockdown", "MigrationReport", "timescaledb_active",
           "sqlalchemy_url", "ensure_database", "check_schema", "SchemaState", "shipped_revisions",
           "installed_routine_versions", "store_telephony_rates", "routine_sql", "routine_fingerprint"]

log = logging.getLogger("callscope.storage")
_MIGRATIONS = Path(__file__).with_name("migrations")
# No advisory locks (a reader can take any of them and hold it; storage/reader.py): migrate runs serialize on
# this table, which must exist before the first migration (0012 declares the same table).
_MIGRATE_LOCK_TABLE = "callscope_migrate_lock"
_CREATE_MIGRATE_LOCK = f"CREATE TABLE IF NOT EXISTS {_MIGRATE_LOCK_TABLE} (id smallint PRIMARY KEY)"


@dataclass(frozen=True)
class MigrationReport:
    mode: str               # "timescaledb" or "postgresql"
    revision: str
    timescaledb_version: str | None
    created_database: bool
    routine_version: int = ROUTINE_VERSION
    routine_versions: tuple[int, ...] = ()      # installed after this run, newest first
    rates_changed: bool = False


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


# Sessions of reader roles (callscope_reader and its members) that the migration's backend waits for: a reader
# query holding ACCESS SHARE would otherwise keep an ALTER TABLE waiting, and every write queued behind it.
_BLOCKING_READERS = f"""
SELECT a.pid, a.usename, pg_terminate_backend(a.pid) AS ended
FROM pg_stat_activity a, pg_roles r
WHERE r.rolname = '{READER}' AND a.pid = ANY (pg_blocking_pids($1)) AND a.usename <> current_user
  AND pg_has_role(a.usename, r.oid, 'MEMBER')
"""


async def _end_blocking_readers(database_url: str, pid: int, interval_s: float = 0.5) -> None:
    """Until cancelled: end every reader session that blocks backend ``pid`` (the migration), and log it.

    Grafana retries a panel whose query was cut off; ingest would not retry an Export stuck behind a migration.
    Ending another role's session needs a superuser, membership of that role or ``pg_signal_backend``."""
    connection = await asyncpg.connect(database_url)
    warned = False
    try:
        while True:
            try:
                for row in await connection.fetch(_BLOCKING_READERS, pid):
                    log.warning("migrate.reader_session_ended", extra={"pid": row["pid"], "role": row["usename"],
                                                                       "ended": row["ended"]})
            except asyncpg.PostgresError as exc:   # not allowed to end them (or a role vanished): say so once
                if not warned:
                    log.warning("migrate.reader_blocks", extra={"error": str(exc), "fix": "grant pg_signal_backend "
                                                                "to the role that migrates"})
                    warned = True
            await asyncio.sleep(interval_s)
    finally:
        await connection.close()


async def _upgrade(database_url: str) -> str:
    from sqlalchemy import text

    engine = create_async_engine(sqlalchemy_url(database_url))
    config = _alembic_config(database_url)
    try:
        async with engine.begin() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar()
            watchdog = asyncio.create_task(_end_blocking_readers(database_url, int(pid)))

            def run(sync_connection) -> None:  # type: ignore[no-untyped-def]
                config.attributes["connection"] = sync_connection
                command.upgrade(config, "head")
            try:
                await connection.run_sync(run)
            finally:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
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
        # TimescaleDB compresses no table with row-level security, and since 0013_tenants every tenant's rows are
        # policed (0013 decompressed what was compressed): retention only
        policed = await connection.fetchval("SELECT relrowsecurity FROM pg_class WHERE oid = $1::regclass", table)
        if policed and compress_after_days > 0:
            log.warning("storage.compression_unavailable",
                        extra={"table": table, "compress_after_days": compress_after_days,
                               "reason": "TimescaleDB does not compress tables with row-level security"})
        compress_after_days_here = 0 if policed else compress_after_days
        if not compressed and not policed:
            await connection.execute(
                f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment}', "
                f"timescaledb.compress_orderby = '{column} DESC')")
        if not await _policy_is(connection, table, "policy_compression", "compress_after", compress_after_days_here):
            await connection.execute("SELECT remove_compression_policy($1::regclass, if_exists => true)", table)
            if compress_after_days_here > 0:
                await connection.execute(
                    "SELECT add_compression_policy($1::regclass, make_interval(days => $2))", table,
                    compress_after_days_here)
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


def routine_sql() -> tuple[str, ...]:
    """This release's routine definitions, unversioned (storage/routines.py renames them when installing)."""
    from storage.deriver import DERIVE_ROUTINE, SAFE_CASTS
    from storage.rollup import ROLLUP_ROUTINES
    from storage.writer import WRITE_ROUTINE

    return (SAFE_CASTS, WRITE_ROUTINE, DERIVE_ROUTINE, *ROLLUP_ROUTINES)


def routine_fingerprint() -> str:
    """sha256 (first 16 hex digits) of ``routine_sql()``: ``ROUTINE_FINGERPRINT`` records it per version."""
    return hashlib.sha256("\n".join(routine_sql()).encode()).hexdigest()[:16]


_ROUTINE_NAME = re.compile(r"^(" + "|".join(VERSIONED_ROUTINES) + r")(?:_v([0-9]+))?$")


async def _versioned_functions(connection: asyncpg.Connection) -> list[tuple[int, str, str]]:
    """(version, name, regprocedure) of every versioned routine in the current schema (bare names: version 0)."""
    rows = await connection.fetch(
        "SELECT p.proname, p.oid::regprocedure::text AS signature FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema() AND p.proname LIKE 'callscope\\_%'")
    found = []
    for row in rows:
        match = _ROUTINE_NAME.match(row["proname"])
        if match:
            found.append((int(match.group(2) or 0), match.group(1), row["signature"]))
    return found


async def installed_routine_versions(connection: asyncpg.Connection) -> tuple[int, ...]:
    """The routine versions whose every routine is installed, newest first."""
    names: dict[int, set[str]] = {}
    for version, name, _ in await _versioned_functions(connection):
        names.setdefault(version, set()).add(name)
    return tuple(sorted((v for v, present in names.items() if present >= set(VERSIONED_ROUTINES)), reverse=True))


async def install_routines(connection: asyncpg.Connection, version: int = ROUTINE_VERSION) -> tuple[int, ...]:
    """Create this release's routines under their ``version`` names, keep the previous version's (collectors of
    the previous release still call them) and drop older ones; return the versions installed afterwards.

    Creating functions under new names never touches the ones running collectors call, so this is safe while
    collectors of either release write."""
    for sql in routine_sql():
        await connection.execute(versioned_sql(sql, version))
    for found_version, name, signature in await _versioned_functions(connection):
        if found_version < version - 1:
            await connection.execute(f"DROP FUNCTION IF EXISTS {signature}")
            log.info("storage.routine_dropped", extra={"routine": name, "version": found_version})
    # functions are executable by PUBLIC unless revoked: only the owner runs the routines, a reader the read API
    if await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", READER):
        await connection.execute(function_privileges_sql(READER))
    return await installed_routine_versions(connection)


async def store_telephony_rates(connection: asyncpg.Connection, rows: list[tuple[str, float, str]],
                                price_version: str) -> bool:
    """Make ``telephony_rates`` hold ``rows`` ((direction, per_minute, currency), read by storage/derive/calls.sql);
    write only when its content differs, and return whether it did. Under a lock, so that collectors starting
    together write once."""
    wanted = sorted((direction, float(rate), currency, price_version) for direction, rate, currency in rows)
    read = "SELECT direction, per_minute, currency, price_version FROM telephony_rates ORDER BY direction"
    if [tuple(row) for row in await connection.fetch(read)] == wanted:
        return False
    async with connection.transaction():
        # self-exclusive, lets the deriver read the rates; a reader has no privilege on the table
        await connection.execute("LOCK TABLE telephony_rates IN SHARE ROW EXCLUSIVE MODE")
        if [tuple(row) for row in await connection.fetch(read)] == wanted:
            return False
        await connection.execute("DELETE FROM telephony_rates")
        await connection.executemany(
            "INSERT INTO telephony_rates (direction, per_minute, currency, price_version) VALUES ($1, $2, $3, $4)",
            wanted)
    return True


@lru_cache(maxsize=1)
def shipped_revisions() -> tuple[str, frozenset[str]]:
    """(newest revision, every revision) of the migrations shipped with this release."""
    from alembic.script import ScriptDirectory

    directory = ScriptDirectory(str(_MIGRATIONS))
    return str(directory.get_current_head()), frozenset(script.revision for script in directory.walk_revisions())


@dataclass(frozen=True)
class SchemaState:
    revision: str
    head: str                        # this release's newest revision
    routine_versions: tuple[int, ...]
    newer: bool                      # migrated by a newer release that kept this release's routines


async def check_schema(connection: asyncpg.Connection, *, routine_version: int = ROUTINE_VERSION) -> SchemaState:
    """What ``serve`` checks before it starts; raises ``SchemaMismatch`` (one line: what is wrong, what to run).

    Runs on: this release's revision with its routines installed, or a newer revision whose migrate kept this
    release's routines (a rolling upgrade in progress). Not on an older revision, an empty database, or a newer
    one without its routines."""
    head, known = shipped_revisions()
    exists = await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    current = await connection.fetchval("SELECT version_num FROM alembic_version") if exists else None
    if current is None:
        raise SchemaMismatch("the database has no Callscope schema yet: run `callscope migrate` first "
                             "(serve does not create or change the schema)")
    versions = await installed_routine_versions(connection)
    own = routine_version in versions
    wanted = f"{routine_name(VERSIONED_ROUTINES[0], routine_version)} …"
    if current in known and current != head:
        raise SchemaMismatch(f"the database schema is at revision {current}, older than this collector's {head}: "
                             f"run `callscope migrate` of this release first")
    if current not in known:
        if not own:
            raise SchemaMismatch(
                f"this collector is older than the database: schema revision {current} is newer than its {head} "
                f"and its routines (version {routine_version}: {wanted}) are no longer installed; "
                f"upgrade the collector")
        return SchemaState(revision=current, head=head, routine_versions=versions, newer=True)
    if not own and versions and max(versions) > routine_version:
        raise SchemaMismatch(
            f"this collector is older than the database: its routines (version {routine_version}: {wanted}) are no "
            f"longer installed, only version {', '.join(map(str, versions))}; upgrade the collector")
    if not own:
        raise SchemaMismatch(f"the database has no routines of version {routine_version} ({wanted}), which this "
                             f"collector calls: run `callscope migrate` of this release first")
    return SchemaState(revision=current, head=head, routine_versions=versions, newer=False)


async def _lock_migrations(database_url: str) -> asyncpg.Connection:
    """A connection holding ``callscope_migrate_lock`` (EXCLUSIVE) in an open transaction: close it to release.

    The table is created first when missing (a fresh database; two first runs may race to create it)."""
    connection = await asyncpg.connect(database_url, server_settings={"idle_in_transaction_session_timeout": "0"})
    try:
        for _ in range(20):
            if await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", _MIGRATE_LOCK_TABLE):
                break
            try:
                await connection.execute(_CREATE_MIGRATE_LOCK)
            except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
                continue   # another run created it at the same moment
        await connection.execute("BEGIN")
        await connection.execute(f"LOCK TABLE {_MIGRATE_LOCK_TABLE} IN EXCLUSIVE MODE")
    except BaseException:
        await connection.close()
        raise
    return connection


async def apply_reader_lockdown(connection: asyncpg.Connection, *,
                                connection_limit: int = DEFAULT_CONNECTION_LIMIT) -> None:
    """The reader role's settings and connection limit (cluster-wide) and its privileges in this database
    (storage/reader.py); ``migrate`` applies them on every run, so a changed limit takes effect."""
    await connection.execute(role_state_sql(READER, connection_limit=connection_limit))
    await connection.execute(privileges_sql(READER))


async def migrate(database_url: str, *, retention_days: int = 30, compress_after_days: int = 2,
                  telephony_rates: tuple[list[tuple[str, float, str]], str] | None = None,
                  reader_connection_limit: int = DEFAULT_CONNECTION_LIMIT) -> MigrationReport:
    """Bring the database to the newest schema and this release's routines; log once which storage mode is
    active. ``telephony_rates``: (rows, price version) of the price table, stored when they differ.
    ``reader_connection_limit``: the reader role's connection limit."""
    created = await ensure_database(database_url)
    lock = await _lock_migrations(database_url)
    try:
        connection = await asyncpg.connect(database_url)
        try:
            revision = await _upgrade(database_url)
            version = await timescaledb_active(connection)
            if version:
                await _apply_timescale_policies(connection, retention_days=retention_days,
                                                compress_after_days=compress_after_days)
            await _seed_catalogue(connection)
            routine_versions = await install_routines(connection)
            await apply_reader_lockdown(connection, connection_limit=reader_connection_limit)
            rates_changed = False
            if telephony_rates is not None:
                rates_changed = await store_telephony_rates(connection, *telephony_rates)
        finally:
            await connection.close()
    finally:
        await lock.close()   # ends its transaction: the lock is released
    mode = "timescaledb" if version else "postgresql"
    if version:
        log.info("storage.mode", extra={"mode": mode, "timescaledb": version, "revision": revision,
                                         "retention_days": retention_days,
                                         "compress_after_days": compress_after_days})
    else:
        log.info("storage.mode", extra={"mode": mode, "revision": revision,
                                         "note": "TimescaleDB not available: plain tables, no compression "
                                                 "or retention policies"})
    return MigrationReport(mode=mode, revision=revision, timescaledb_version=version, created_database=created,
                           routine_versions=routine_versions, rates_changed=rates_changed)
