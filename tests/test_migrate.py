"""Migrations: the public schema of design §3, idempotence, plain PostgreSQL and TimescaleDB modes."""

from __future__ import annotations

import asyncpg
import pytest

from storage.catalogue import CATALOGUE
from storage.migrate import migrate
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
    # the SQLAlchemy schema and the migrations agree; on TimescaleDB the continuous aggregate latency_stage_1h
    # (a view with the table's columns) takes the place of both plain-PostgreSQL stage tables
    timescale = first.mode == "timescaledb"
    for table in metadata.sorted_tables:
        if timescale and table.name == "stage_latency_1m":
            assert table.name not in after, "no deriver-kept stage minutes where TimescaleDB keeps them"
            continue
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


async def test_hypertables_compression_and_retention_with_timescaledb():
    if not await _timescaledb_available():
        pytest.skip("TimescaleDB is not installed in this PostgreSQL (not packaged for this machine); "
                    "the plain-PostgreSQL path is tested instead")
    url = url_for("callscope_migrate_tsdb")
    await drop_database("callscope_migrate_tsdb")
    try:
        report = await migrate(url, retention_days=7, compress_after_days=1)
        first_jobs = await _policy_jobs(url)
        await migrate(url, retention_days=7, compress_after_days=1)
        second_jobs = await _policy_jobs(url)
        connection = await asyncpg.connect(url)
        hypertables = {r[0] for r in await connection.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE compression_enabled")}
        jobs = await connection.fetch(
            "SELECT hypertable_name, proc_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
        rollup = await connection.fetchval(
            "SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = 'latency_stage_1m'")
        hourly = await connection.fetchrow(
            "SELECT materialized_only, (SELECT count(*) FROM timescaledb_information.jobs j "
            "WHERE j.proc_name = 'policy_refresh_continuous_aggregate' "
            # the job names the continuous aggregate (TimescaleDB 2.28) or its materialization table (older)
            "AND j.hypertable_name IN (a.view_name, a.materialization_hypertable_name)) AS policies "
            "FROM timescaledb_information.continuous_aggregates a WHERE view_name = 'latency_stage_1h'")
        stage_table = await connection.fetchval("SELECT to_regclass('stage_latency_1m') IS NOT NULL")
        await connection.close()
        await migrate(url, retention_days=9, compress_after_days=0)   # changed settings take effect
        changed_jobs = await _policy_jobs(url)
    finally:
        await drop_database("callscope_migrate_tsdb")
    assert report.mode == "timescaledb"
    assert {"spans", "events"} <= hypertables
    procs = {(r["hypertable_name"], r["proc_name"]) for r in jobs}
    for table in ("spans", "events"):
        assert (table, "policy_compression") in procs and (table, "policy_retention") in procs
    assert rollup is False, "latency_stage_1m is a real-time continuous aggregate"
    assert hourly is not None and hourly["materialized_only"] is False and hourly["policies"] == 1, \
        "latency_stage_1h is a real-time continuous aggregate on latency_stage_1m with a refresh policy"
    assert not stage_table, "no deriver-kept stage minutes where TimescaleDB keeps them"
    assert first_jobs == second_jobs, "migrating again keeps the same policy jobs"
    assert {key[1] for key in changed_jobs} == {"policy_retention"}
    for table in ("spans", "events"):
        assert changed_jobs[(table, "policy_retention")][1] == "9 days"


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
