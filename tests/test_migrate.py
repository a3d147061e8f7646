"""Migrations: the public schema of design §3, idempotence, plain PostgreSQL and TimescaleDB modes."""

from __future__ import annotations

import asyncpg
import pytest

from storage.catalogue import CATALOGUE
from storage.migrate import migrate, shipped_revisions
from storage.schema import PLAIN_POSTGRESQL_ONLY, metadata
from tests.conftest import drop_database, url_for

# design.md §3: the contract users and dashboards query.
CONTRACT = {
    "calls": "call_id trace_ids started_at ended_at last_seen_at duration_s status status_reason direction campaign "
             "agent framework from_number to_number turn_count interruption_count tool_call_count error_count "
             "cost_total cost_stt cost_llm cost_tts cost_telephony currency summary tags extracted recording_url "
             "attributes",
    "turns": "call_id turn_number started_at ended_at user_text agent_text interrupted user_stopped_at stt_final_at "
             "llm_request_at llm_first_token_at tts_request_at tts_first_audio_at agent_started_at eou_ms stt_ms "
             "stt_to_llm_ms llm_ttft_ms llm_to_tts_ms tts_ttfb_ms voice_to_voice_ms reported_v2v_ms llm_provider "
             "llm_model stt_provider tts_provider input_tokens output_tokens",
    "spans": "start_time end_time duration_ms trace_id span_id parent_span_id call_id turn_number stage name "
             "service_name scope_name kind status_code status_message provider model ttfb_ms input_tokens "
             "output_tokens attributes events resource",
    "tool_calls": "call_id turn_number tool_call_id tool_name started_at ended_at duration_ms arguments result "
                  "is_error error span_id",
    "events": "time call_id trace_id span_id category event level message data source",
    "event_types": "event display_name category default_level description",
}


async def _columns(connection: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await connection.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
    columns: dict[str, set[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    return columns


async def test_migrate_twice_is_a_noop_and_creates_the_contract():
    url = url_for("callscope_migrate_twice")
    await drop_database("callscope_migrate_twice")
    try:
        first = await migrate(url)
        connection = await asyncpg.connect(url)
        before = await _columns(connection)
        indexes_before = await connection.fetchval("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
        second = await migrate(url)
        after = await _columns(connection)
        indexes_after = await connection.fetchval("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
        catalogue = await connection.fetchval("SELECT count(*) FROM event_types")
        await connection.close()
    finally:
        await drop_database("callscope_migrate_twice")
    assert first.created_database and not second.created_database
    assert first.revision == second.revision
    assert before == after and indexes_before == indexes_after
    assert catalogue == len(CATALOGUE)
    for table, names in CONTRACT.items():
        assert set(names.split()) <= after[table], table
    # the SQLAlchemy schema and the migrations agree
    for table in metadata.sorted_tables:
        assert {c.name for c in table.columns} <= after[table.name], table.name


async def test_plain_postgresql_mode_is_reported(database_url):
    connection = await asyncpg.connect(database_url)
    has_timescale = await connection.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
    await connection.close()
    report = await migrate(database_url)
    assert report.mode == ("timescaledb" if has_timescale else "postgresql")
    assert (report.timescaledb_version is None) == (not has_timescale)


async def _timescaledb_available() -> bool:
    connection = await asyncpg.connect(url_for("postgres"))
    try:
        return bool(await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') "
            "AND current_setting('shared_preload_libraries') LIKE '%timescaledb%'"))
    finally:
        await connection.close()


async def _policy_jobs(url: str) -> dict[tuple[str, str], tuple[int, str]]:
    """(hypertable, proc) → (job id, its interval) of the compression and retention policies."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT hypertable_name, proc_name, job_id, "
            "coalesce(config ->> 'compress_after', config ->> 'drop_after') AS after "
            "FROM timescaledb_information.jobs WHERE proc_name IN ('policy_compression', 'policy_retention')")
    finally:
        await connection.close()
    return {(r["hypertable_name"], r["proc_name"]): (r["job_id"], r["after"]) for r in rows}


async def _require_timescaledb() -> None:
    if not await _timescaledb_available():
        pytest.skip("TimescaleDB is not installed in this PostgreSQL (not packaged for this machine); "
                    "the plain-PostgreSQL path is tested instead")


async def test_hypertables_and_retention_with_timescaledb():
    """spans and events are hypertables with retention; since 0013_tenants they have row-level security, which
    TimescaleDB does not compress, so there is no compression policy; the stage rollups are the deriver's tables
    (continuous aggregates cannot have row-level security)."""
    await _require_timescaledb()
    url = url_for("callscope_migrate_tsdb")
    await drop_database("callscope_migrate_tsdb")
    try:
        report = await migrate(url, retention_days=7, compress_after_days=1)
        first_jobs = await _policy_jobs(url)
        await migrate(url, retention_days=7, compress_after_days=1)
        second_jobs = await _policy_jobs(url)
        connection = await asyncpg.connect(url)
        hypertables = {r[0]: r[1] for r in await connection.fetch(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables")}
        policed = {r[0] for r in await connection.fetch(
            "SELECT relname FROM pg_class WHERE relname IN ('spans', 'events') AND relrowsecurity")}
        aggregates = await connection.fetchval("SELECT count(*) FROM timescaledb_information.continuous_aggregates")
        stage_tables = await connection.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname IN ('stage_latency_1m', 'latency_stage_1h') AND relkind = 'r'")
        await connection.close()
        await migrate(url, retention_days=9, compress_after_days=0)   # changed settings take effect
        changed_jobs = await _policy_jobs(url)
    finally:
        await drop_database("callscope_migrate_tsdb")
    assert report.mode == "timescaledb"
    assert hypertables == {"spans": False, "events": False} and policed == {"spans", "events"}
    assert set(first_jobs) == {("spans", "policy_retention"), ("events", "policy_retention")}
    assert aggregates == 0 and stage_tables == 2
    assert first_jobs == second_jobs, "migrating again keeps the same policy jobs"
    assert {key[1] for key in changed_jobs} == {"policy_retention"}
    for table in ("spans", "events"):
        assert first_jobs[(table, "policy_retention")][1] == "7 days"
        assert changed_jobs[(table, "policy_retention")][1] == "9 days"


async def test_upgrade_of_a_compressed_timescaledb_database_to_tenants():
    """A database of the release before tenants (continuous aggregates, compressed chunks) upgrades: 0013
    decompresses, turns compression off and polices the rows; no span or event is lost."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.migrate import _alembic_config, _apply_timescale_policies, sqlalchemy_url

    await _require_timescaledb()
    url = url_for("callscope_migrate_tsdb_up")
    await drop_database("callscope_migrate_tsdb_up")
    try:
        await migrate(url)
        engine = create_async_engine(sqlalchemy_url(url))
        config = _alembic_config(url)
        try:
            async with engine.begin() as connection:
                def down(sync_connection) -> None:  # type: ignore[no-untyped-def]
                    config.attributes["connection"] = sync_connection
                    command.downgrade(config, "0012_reader_lockdown")
                await connection.run_sync(down)
        finally:
            await engine.dispose()
        connection = await asyncpg.connect(url)
        # that release's policies; a year, so that TimescaleDB's scheduler leaves the chunks below to this test
        await _apply_timescale_policies(connection, retention_days=0, compress_after_days=365)
        await connection.execute(
            """INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, call_id, stage, name, attributes)
               SELECT now() - make_interval(days => d), now() - make_interval(days => d), 5, 't' || d, 's' || d,
                      'c' || d, 'llm', 'llm', '{}' FROM generate_series(0, 9) d""")
        await connection.execute(
            """INSERT INTO events (time, event_id, call_id, category, event, level, source)
               SELECT now() - make_interval(days => d), 'e' || d, 'c' || d, 'agent', 'agent.message_sent', 'INFO',
                      'log' FROM generate_series(0, 9) d""")
        await connection.execute(
            "SELECT compress_chunk(c) FROM show_chunks('spans', older_than => interval '3 days') c "
            "UNION ALL SELECT compress_chunk(c) FROM show_chunks('events', older_than => interval '3 days') c")
        compressed = await connection.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE is_compressed")
        await connection.close()
        report = await migrate(url)
        connection = await asyncpg.connect(url)
        counts = await connection.fetchrow("SELECT (SELECT count(*) FROM spans) AS spans, "
                                           "(SELECT count(*) FROM events) AS events")
        enabled = await connection.fetchval("SELECT count(*) FROM timescaledb_information.hypertables "
                                            "WHERE compression_enabled")
        policed = await connection.fetchval("SELECT count(*) FROM pg_class WHERE relname IN ('spans', 'events') "
                                            "AND relrowsecurity")
        tenants = await connection.fetchval("SELECT count(*) FROM spans WHERE tenant = 'default'")
        await connection.close()
    finally:
        await drop_database("callscope_migrate_tsdb_up")
    assert compressed >= 12
    assert report.revision == shipped_revisions()[0]
    assert (counts["spans"], counts["events"]) == (10, 10) and tenants == 10
    assert enabled == 0 and policed == 2


async def test_downgrade_to_base_and_upgrade_again():
    """Every migration's downgrade runs on this server (continuous aggregate or plain view alike)."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.migrate import _alembic_config, sqlalchemy_url

    url = url_for("callscope_migrate_down")
    await drop_database("callscope_migrate_down")
    try:
        first = await migrate(url)
        engine = create_async_engine(sqlalchemy_url(url))
        config = _alembic_config(url)
        try:
            async with engine.begin() as connection:
                def down(sync_connection) -> None:  # type: ignore[no-untyped-def]
                    config.attributes["connection"] = sync_connection
                    command.downgrade(config, "base")
                await connection.run_sync(down)
        finally:
            await engine.dispose()
        connection = await asyncpg.connect(url)
        left = {r[0] for r in await connection.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p')")}
        await connection.close()
        again = await migrate(url)
    finally:
        await drop_database("callscope_migrate_down")
    assert left <= {"alembic_version"}, left
    assert again.revision == first.revision and again.mode == first.mode


async def test_schema_code_and_migrations_agree(database_url):
    """Every table and column of storage/schema.py exists after migrating, and every migrated table is in
    schema.py (views and the latency rollup of 0002 aside)."""
    connection = await asyncpg.connect(database_url)
    try:
        columns = await _columns(connection)
        tables = {r[0] for r in await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        stage_tables = await connection.fetchval("SELECT to_regclass('stage_latency_1m') IS NOT NULL")
    finally:
        await connection.close()
    # continuous aggregates take the place of the plain-PostgreSQL stage tables on TimescaleDB
    skipped = () if stage_tables else PLAIN_POSTGRESQL_ONLY
    declared = {table.name: {c.name for c in table.columns} for table in metadata.sorted_tables
                if table.name not in skipped}
    assert tables - {"alembic_version"} == set(declared)
    for name, names in declared.items():
        assert names == columns[name], name


async def test_0015_backfills_transferred_and_marks_every_call_hour():
    """Calls stored before 0015: a successful transfer tool call or a transfer event (stored under the call, or
    under a trace that names the call) sets calls.transferred; a failed transfer tool, another tenant's call of
    the same id and other events do not; every call hour is marked for the refresh."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.migrate import _alembic_config, sqlalchemy_url

    name = "callscope_migrate_0015"
    url = url_for(name)
    await drop_database(name)
    try:
        await migrate(url)
        engine = create_async_engine(sqlalchemy_url(url))
        config = _alembic_config(url)

        async def run(step, target: str) -> None:  # type: ignore[no-untyped-def]
            async with engine.begin() as connection:
                def go(sync_connection) -> None:  # type: ignore[no-untyped-def]
                    config.attributes["connection"] = sync_connection
                    step(config, target)
                await connection.run_sync(go)
        try:
            await run(command.downgrade, "0013_tenants")
            connection = await asyncpg.connect(url)
            await connection.execute(
                """INSERT INTO calls (call_id, tenant, started_at, status) VALUES
                   ('tool', 'default', '2026-01-15 10:05+00', 'completed'),
                   ('failed-tool', 'default', '2026-01-15 10:10+00', 'completed'),
                   ('event', 'default', '2026-01-15 11:05+00', 'completed'),
                   ('by-trace', 'default', '2026-01-15 12:05+00', 'completed'),
                   ('plain', 'default', '2026-01-15 12:06+00', 'completed'),
                   ('tool', 'other', '2026-01-15 13:05+00', 'completed')""")
            await connection.execute(
                """INSERT INTO tool_calls (call_id, tenant, tool_call_id, tool_name, is_error) VALUES
                   ('tool', 'default', 't1', 'transfer_call', false),
                   ('failed-tool', 'default', 't2', 'transfer_call', true),
                   ('plain', 'default', 't3', 'get_weather', false),
                   ('tool', 'other', 't4', 'lookup', false)""")
            await connection.execute("INSERT INTO call_traces (trace_id, call_id, tenant) VALUES ('tr1', 'by-trace', 'default')")
            await connection.execute(
                """INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, category, event, level,
                                       source, tenant) VALUES
                   ('2026-01-15 11:06+00', 'e1', 'event', true, NULL, 'transfer', 'transfer.completed', 'INFO',
                    'log', 'default'),
                   ('2026-01-15 12:07+00', 'e2', 'tr1', false, 'tr1', 'transfer', 'transfer.human_answered', 'INFO',
                    'log', 'default'),
                   ('2026-01-15 12:08+00', 'e3', 'plain', true, NULL, 'call_tool', 'tool.transfer.failed', 'ERROR',
                    'log', 'default')""")
            await connection.execute("DELETE FROM call_rollup_dirty")
            await connection.close()
            await run(command.upgrade, "head")
        finally:
            await engine.dispose()
        connection = await asyncpg.connect(url)
        try:
            rows = await connection.fetch("SELECT call_id, tenant, transferred FROM calls ORDER BY 1, 2")
            hours = await connection.fetch("SELECT DISTINCT bucket FROM call_rollup_dirty ORDER BY 1")
        finally:
            await connection.close()
    finally:
        await drop_database(name)
    assert {(r["call_id"], r["tenant"]): r["transferred"] for r in rows} == {
        ("by-trace", "default"): True, ("event", "default"): True, ("failed-tool", "default"): False,
        ("plain", "default"): False, ("tool", "default"): True, ("tool", "other"): False}
    assert [h[0].hour for h in hours] == [10, 11, 12, 13]
