"""A reader that can only read (issue 9 item 4), on a real database, as a LOGIN role with a password made here.

The role is a member of ``callscope_reader`` (its privileges) with the reader's role settings and a connection
limit of its own (storage/reader.py ``role_state_sql``), so that tests running in parallel never change the
password or limit of the shared, cluster-wide ``callscope_reader``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
import yaml

from bench.grafana_emulator import render, variables_from_dashboard
from collector.server import Collector
from collector.simulate import generate_calls
from dashboards.generate import DashboardOptions, render_provisioning
from dashboards.options import SSL_MODES
from storage import reader
from storage.migrate import migrate, shipped_revisions
from storage.rollup import refresh_rollups
from storage.routines import VERSIONED_ROUTINES, routine_name
from tests.conftest import ADMIN_URL, collector_settings, url_for
from tests.otlp_client import GrpcClient

PASSWORD = "reader-test-" + uuid.uuid4().hex[:8]
LIMIT = 3
DEADLINE_S = 120.0     # a wait that never ends fails here instead of hanging the suite (no timing is asserted)

FILES = render_provisioning(DashboardOptions())
BOARDS = [json.loads(text) for rel, text in FILES.items() if rel.endswith(".json")]
RULES = [r for g in yaml.safe_load(FILES["alerting/callscope-rules.yaml"])["groups"] for r in g["rules"]]

# Every advisory lock key the code ever used (releases up to routines v1): migrate, the rates, the four rollup
# refreshes, and the deriver's per-call two-key locks (namespace "call", hashtext(call id)).
OLD_MIGRATE_KEY = 0x63616C6C73636F70
OLD_KEYS = (OLD_MIGRATE_KEY, OLD_MIGRATE_KEY + 1, OLD_MIGRATE_KEY + 2,
            7063720869421651558, 7063720869421651559, 7063720869421651560, 7063720869421651561)
OLD_CALL_NAMESPACE = 0x63616C6C


def _queries() -> list[tuple[str, dict[str, Any] | None, str]]:
    """(name, board, rawSql) of every panel target, query variable and alert rule the generator writes."""
    found = []
    for board in BOARDS:
        for top in board["panels"]:
            for panel in [top, *top.get("panels", [])]:
                for target in panel.get("targets", []):
                    found.append((f"{board['uid']}: {panel['title']}", board, target["rawSql"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                found.append((f"{board['uid']}: variable {variable['name']}", board, variable["query"]))
    for rule in RULES:
        found.append((f"alert {rule['uid']}", None, rule["data"][0]["model"]["rawSql"]))
    return found


def _rendered() -> list[tuple[str, str]]:
    now = datetime.now(timezone.utc)
    return [(name, render(sql, variables=variables_from_dashboard(board) if board else {}, frm=now - timedelta(hours=6),
                          to=now, interval=timedelta(minutes=1)))
            for name, board, sql in _queries()]


async def _relations(admin: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await admin.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relkind IN ('r', 'v', 'm', 'p', 'f')")}


@pytest_asyncio.fixture
async def reader_role(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """(role, url): a LOGIN role made for this test with the reader's privileges, settings and a limit of 3."""
    role = f"callscope_rt_{uuid.uuid4().hex[:10]}"
    # as every database gets its schema: a clone of the template has a fresh database ACL (TEMPORARY for
    # PUBLIC again), and migrate applies the reader's privileges on every run
    await migrate(database_url)
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(reader.role_state_sql(role, connection_limit=LIMIT))
        await admin.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        await admin.execute(f"GRANT {reader.READER} TO {role}")
    finally:
        await admin.close()
    url = database_url.replace("://postgres@", f"://{role}:{PASSWORD}@", 1)
    try:
        yield role, url
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await admin.close()


# --- what a reader reads ---------------------------------------------------------------------------------------------

async def test_the_reader_reads_every_public_relation_and_no_internal_one(database_url: str, reader_role) -> None:
    role, url = reader_role
    admin = await asyncpg.connect(database_url)
    connection = await asyncpg.connect(url)
    try:
        relations = await _relations(admin)
        public = set(reader.READER_RELATIONS) & relations
        assert set(reader.PUBLIC_TABLES) | set(reader.DASHBOARD_ROLLUPS) <= public
        for name in sorted(public):
            await connection.fetch(f"SELECT * FROM {name} LIMIT 1")
        internal = relations - public
        assert {"dirty_calls", "call_quarantine", "alembic_version", "api_keys", "tenants", "telephony_rates",
                "turn_rollup_dirty", "call_rollup_dirty", "stage_rollup_dirty", "event_rollup_dirty",
                "derive_locks", "callscope_migrate_lock"} <= internal
        for name in sorted(internal):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetch(f"SELECT 1 FROM {name} LIMIT 1")
            assert not await admin.fetchval("SELECT has_table_privilege($1, $2, 'SELECT')", role, name), name
    finally:
        await connection.close()
        await admin.close()


async def test_every_dashboard_and_alert_query_runs_as_the_reader_and_reads_only_granted_relations(
        database_url: str, reader_role) -> None:
    _, url = reader_role
    admin = await asyncpg.connect(database_url)
    connection = await asyncpg.connect(url)
    try:
        relations = await _relations(admin)
        read: set[str] = set()
        failed = []
        rendered = _rendered()
        assert len(rendered) > 50
        for name, sql in rendered:
            read |= set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_][a-z0-9_]*)", sql, re.IGNORECASE)) & relations
            try:
                await connection.fetch(sql)
            except asyncpg.PostgresError as exc:
                failed.append(f"{name}: {exc}")
        assert not failed, "\n".join(failed)
        # the list of granted rollups is what the dashboards read, and they read nothing internal
        assert read <= set(reader.READER_RELATIONS), read - set(reader.READER_RELATIONS)
        assert set(reader.DASHBOARD_ROLLUPS) <= read, set(reader.DASHBOARD_ROLLUPS) - read
        # every function a query calls is the read API (or PostgreSQL's)
        called = {f for _, sql in rendered for f in re.findall(r"\b(callscope_[a-z0-9_]+)\s*\(", sql)}
        assert called <= set(reader.READER_FUNCTIONS), called - set(reader.READER_FUNCTIONS)
    finally:
        await connection.close()
        await admin.close()


# --- what a reader cannot do -----------------------------------------------------------------------------------------

async def _denied(connection: asyncpg.Connection, sql: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await connection.execute(sql)


async def test_the_reader_cannot_write_create_or_run_routines_even_with_read_only_off(
        database_url: str, reader_role) -> None:
    role, url = reader_role
    admin = await asyncpg.connect(database_url)
    connection = await asyncpg.connect(url)
    timescale_management: tuple[str, ...] = ()
    if await admin.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        timescale_management = (
            "SELECT add_job('pg_sleep'::regproc, '1 second')",   # a job of its own, in the policies' workers
            "SELECT drop_chunks('spans', older_than => now())",
            "SELECT remove_retention_policy('events')",
            "SELECT add_retention_policy('spans', interval '1 day')",
            "SELECT set_chunk_time_interval('spans', interval '1 hour')",
        )
    try:
        assert await connection.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await connection.execute("INSERT INTO event_types (event, display_name, category, default_level) "
                                     "VALUES ('x.y', 'x', 'x', 'INFO')")
        # a reader can turn its defaults off (user-settable); privileges still refuse everything
        await connection.execute("SET default_transaction_read_only = off")
        await connection.execute("SET statement_timeout = 0")
        assert await connection.fetchval("SHOW transaction_read_only") == "off"
        for sql in (
            "INSERT INTO calls (call_id) VALUES ('reader-was-here')",
            "INSERT INTO event_types (event, display_name, category, default_level) VALUES ('x.y', 'x', 'x', 'INFO')",
            "UPDATE calls SET status = 'failed'",
            "DELETE FROM spans",
            "TRUNCATE turns",
            "INSERT INTO dirty_calls (call_id) VALUES ('x')",
            "UPDATE api_keys SET revoked_at = now()",
            "CREATE TABLE mine (id int)",
            "CREATE VIEW mine AS SELECT 1",
            "CREATE SCHEMA mine",
            "CREATE TEMP TABLE mine (id int)",
            "CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "SELECT lo_create(0)",
            "SELECT lo_creat(-1)",
            "SELECT lo_from_bytea(0, '\\x00')",
            f"SELECT {routine_name('callscope_write_staged')}()",
            f"SELECT {routine_name('callscope_derive')}(ARRAY['x'], 'default')",
            *(f"SELECT {routine_name(name)}(10)" for name in VERSIONED_ROUTINES if name.startswith("callscope_refresh")),
            f"SELECT {routine_name('callscope_float')}('1')",
            # row and table locks the ingest paths take
            "SELECT * FROM derive_locks FOR UPDATE",
            "SELECT * FROM calls FOR UPDATE",
            "LOCK TABLE callscope_migrate_lock IN ACCESS SHARE MODE",
            "LOCK TABLE turn_rollup_dirty IN SHARE UPDATE EXCLUSIVE MODE",
            "LOCK TABLE telephony_rates IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE calls IN SHARE UPDATE EXCLUSIVE MODE",
            "LOCK TABLE spans IN EXCLUSIVE MODE",
            *timescale_management,
        ):
            async with connection.transaction():
                await _denied(connection, sql)
        assert await admin.fetchval("SELECT count(*) FROM calls WHERE call_id = 'reader-was-here'") == 0
        assert await admin.fetchval("SELECT count(*) FROM pg_largeobject_metadata") == 0
        # no CREATE on any schema, no TEMP on the database, through PUBLIC or otherwise
        creatable = await admin.fetch(
            "SELECT nspname FROM pg_namespace WHERE has_schema_privilege($1, oid, 'CREATE')", role)
        assert [r[0] for r in creatable] == []
        assert not await admin.fetchval("SELECT has_database_privilege($1, current_database(), 'TEMPORARY')", role)
        assert not await admin.fetchval("SELECT has_database_privilege($1, current_database(), 'CREATE')", role)
        # the only functions of the schema it may run are the read API (and an extension's, TimescaleDB's
        # time_bucket and the like: those that manage hypertables check ownership, and add_job is revoked)
        runnable = {r[0] for r in await admin.fetch(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace "
            "AND has_function_privilege($1, p.oid, 'EXECUTE') AND NOT EXISTS (SELECT 1 FROM pg_depend d "
            "WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')", role)}
        assert runnable and runnable <= set(reader.READER_FUNCTIONS), runnable
        assert not runnable & {routine_name(name) for name in VERSIONED_ROUTINES}
    finally:
        await connection.close()
        await admin.close()


async def test_the_connection_limit_holds(reader_role) -> None:
    _, url = reader_role
    held = [await asyncpg.connect(url) for _ in range(LIMIT)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncpg.connect(url)
    finally:
        for connection in held:
            await connection.close()


async def test_callscope_reader_has_the_settings_and_the_configured_limit(database_url: str) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        row = await admin.fetchrow("SELECT rolconfig, rolconnlimit FROM pg_roles WHERE rolname = $1", reader.READER)
        assert {f"{k}={v}" for k, v in reader.READER_SETTINGS.items()} <= set(row["rolconfig"])
        assert row["rolconnlimit"] == reader.DEFAULT_CONNECTION_LIMIT
    finally:
        await admin.close()


async def test_role_ddl_survives_concurrent_sessions(database_url: str) -> None:
    """Roles are cluster-wide: many sessions setting one role at once (parallel migrations) all succeed."""
    role = f"callscope_rt_{uuid.uuid4().hex[:10]}"
    connections = [await asyncpg.connect(database_url) for _ in range(6)]
    try:
        for _ in range(3):
            await asyncio.gather(*(c.execute(reader.role_state_sql(role, connection_limit=5 + i % 2, settings={
                "statement_timeout": f"{50 + i % 2}s", "jit": "off"})) for i, c in enumerate(connections)))
        await asyncio.gather(*(c.execute(reader.role_state_sql(role, connection_limit=7)) for c in connections))
        row = await connections[0].fetchrow("SELECT rolconfig, rolconnlimit FROM pg_roles WHERE rolname = $1", role)
        assert row["rolconnlimit"] == 7 and "statement_timeout=60s" in row["rolconfig"]
    finally:
        for connection in connections:
            await connection.close()
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await admin.close()


# --- nothing a reader holds stalls ingestion, derivation, refreshes, migrate or a collector's start -------------------

async def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.1)
    try:
        await asyncio.wait_for(poll(), DEADLINE_S)
    except asyncio.TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def test_a_reader_holding_every_advisory_lock_and_open_snapshots_stalls_nothing(
        database_url: str, reader_role) -> None:
    _, url = reader_role
    calls = generate_calls(12, seed=11)
    ids = [call.call_id for call in calls]
    locker = await asyncpg.connect(url)
    snapshot = await asyncpg.connect(url)
    admin = await asyncpg.connect(database_url)
    try:
        await locker.execute("SET statement_timeout = 0")
        for key in OLD_KEYS:
            assert await locker.fetchval("SELECT pg_try_advisory_lock($1)", key)
        await locker.execute("SELECT pg_advisory_lock($1::int, hashtext(id)) FROM unnest($2::text[]) AS id",
                             OLD_CALL_NAMESPACE, ids + [f"trace-{i}" for i in range(20)])
        rng = random.Random(5)
        for _ in range(200):
            await locker.execute("SELECT pg_try_advisory_lock($1)", rng.randrange(-2**63, 2**63))
            await locker.execute("SELECT pg_try_advisory_lock($1, $2)", rng.randrange(-2**31, 2**31),
                                 rng.randrange(-2**31, 2**31))
        held = await admin.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                    "AND pid = $1", await locker.fetchval("SELECT pg_backend_pid()"))
        assert held >= len(OLD_KEYS) + len(ids) + 200
        # a dashboard's open transaction: ACCESS SHARE on the public tables and a snapshot, kept open
        await snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        for name in reader.PUBLIC_TABLES + reader.DASHBOARD_ROLLUPS:
            await snapshot.fetch(f"SELECT * FROM {name} LIMIT 1")

        # a collector starts (migrating, storing its rates), ingests, derives and refreshes the rollups
        running = Collector(collector_settings(database_url, derive_interval_ms=50), run_migrations=True)
        await asyncio.wait_for(running.start(), DEADLINE_S)
        try:
            client = GrpcClient(running.grpc.port)
            try:
                for call in calls:
                    for request in (*call.trace_requests, *call.log_requests):
                        await client.send(request)
            finally:
                await client.close()

            async def derived() -> bool:
                done = await admin.fetchval("SELECT count(*) FROM calls WHERE call_id = ANY($1::text[])", ids)
                return done == len(ids) and await admin.fetchval("SELECT count(*) FROM dirty_calls") == 0
            await _wait_for(derived, "the derive workers derived every call")
            await asyncio.wait_for(running.settle(), DEADLINE_S)
        finally:
            await asyncio.wait_for(running.close(grace_s=1), DEADLINE_S)
        async with admin.transaction():
            await asyncio.wait_for(refresh_rollups(admin), DEADLINE_S)
        queued = await admin.fetchval("SELECT (SELECT count(*) FROM turn_rollup_dirty) + (SELECT count(*) FROM "
                                      "call_rollup_dirty) + (SELECT count(*) FROM stage_rollup_dirty) + "
                                      "(SELECT count(*) FROM event_rollup_dirty)")
        assert queued == 0
        assert await admin.fetchval("SELECT sum(calls) FROM call_status_1h") == len(ids)
        # migrate, twice at once (they serialize on their table lock), with new rates to store
        reports = await asyncio.wait_for(asyncio.gather(
            migrate(database_url, telephony_rates=([("inbound", 0.5, "USD")], "reader-test")),
            migrate(database_url, telephony_rates=([("inbound", 0.5, "USD")], "reader-test"))), DEADLINE_S)
        assert sorted(r.rates_changed for r in reports) == [False, True]
        # the reader's snapshot still answers, and saw none of it
        assert await snapshot.fetchval("SELECT count(*) FROM calls WHERE call_id = ANY($1::text[])", ids) == 0
    finally:
        await snapshot.close()
        await locker.close()
        await admin.close()


# --- the data source's TLS mode --------------------------------------------------------------------------------------

def test_the_datasource_sslmode_is_a_generator_option() -> None:
    def source(**options: str) -> dict[str, Any]:
        files = render_provisioning(DashboardOptions(**options))
        return yaml.safe_load(files["datasources/callscope.yaml"])["datasources"][0]

    # compose: Grafana reads it from CALLSCOPE_READER_SSLMODE, which compose defaults to disable
    assert source()["jsonData"]["sslmode"] == "$CALLSCOPE_READER_SSLMODE"
    for mode in SSL_MODES:
        assert source(db_sslmode=mode)["jsonData"]["sslmode"] == mode
    verified = source(db_sslmode="verify-full", db_ssl_root_cert_file="/etc/grafana/pg-ca.crt")["jsonData"]
    assert verified["tlsConfigurationMethod"] == "file-path"
    assert verified["sslRootCertFile"] == "/etc/grafana/pg-ca.crt"
    assert "sslRootCertFile" not in source(db_sslmode="require")["jsonData"]
    with pytest.raises(ValueError, match="db_sslmode"):
        DashboardOptions(db_sslmode="verify_full")
    compose = yaml.safe_load(open("docker-compose.yml", encoding="utf-8"))
    assert compose["services"]["grafana"]["environment"]["CALLSCOPE_READER_SSLMODE"] == \
        "${CALLSCOPE_READER_SSLMODE:-disable}"


async def test_doctor_says_when_the_reader_can_do_more_than_read(database_url: str) -> None:
    from collector.cli.doctor import _reader_privileges

    admin = await asyncpg.connect(database_url)
    try:
        await migrate(database_url)
        assert (await _reader_privileges(admin)).level == "ok"
        await admin.execute(f"GRANT SELECT ON dirty_calls TO {reader.READER}")
        await admin.execute(f"GRANT EXECUTE ON FUNCTION {routine_name('callscope_derive')}(text[], text) TO PUBLIC")
        check = await _reader_privileges(admin)
        assert check.level == "warn" and "dirty_calls" in check.message
        assert routine_name("callscope_derive") in check.message and "callscope migrate" in check.fix
        await migrate(database_url)
        assert (await _reader_privileges(admin)).level == "ok"
    finally:
        await admin.close()


async def test_a_reader_holding_a_table_cannot_stall_a_migration_that_alters_it(database_url: str, reader_role) -> None:
    """A migration waiting for ACCESS EXCLUSIVE queues every write behind it: migrate ends the reader sessions
    it waits for (Grafana retries the panel)."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.migrate import _alembic_config, shipped_revisions, sqlalchemy_url

    engine = create_async_engine(sqlalchemy_url(database_url))
    config = _alembic_config(database_url)
    try:
        async with engine.begin() as connection:
            def down(sync_connection) -> None:  # type: ignore[no-untyped-def]
                config.attributes["connection"] = sync_connection
                command.downgrade(config, "0006_turn_rollup")   # 0011 adds columns to calls and turns again
            await connection.run_sync(down)
    finally:
        await engine.dispose()
    _, url = reader_role
    holder = await asyncpg.connect(url)
    await holder.execute("SET statement_timeout = 0")
    await holder.execute("BEGIN")
    await holder.fetch("SELECT call_id FROM calls LIMIT 1")     # ACCESS SHARE on calls until the end
    admin = await asyncpg.connect(database_url)
    try:
        report = await asyncio.wait_for(migrate(database_url), DEADLINE_S)
        assert report.revision == shipped_revisions()[0]   # the head
        assert await admin.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_name = 'calls' "
                                    "AND column_name = 'dead_air_total_s'") == 1
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.AdminShutdownError)):
            await holder.fetch("SELECT 1")
    finally:
        await admin.close()
        await holder.close()
