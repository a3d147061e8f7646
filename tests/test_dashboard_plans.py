"""Plans without statistics: on a large, never-analyzed database (autovacuum off, fresh tables), every panel,
variable and alert query of the Calls, Latency and Events dashboards, rendered like Grafana for 1 h, 24 h and
30 days, reads the big tables and the rollups through indexes (no Seq Scan)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any, AsyncIterator

import asyncpg
import pytest
import yaml

import dashboard_data
from conftest import drop_database, new_database, url_for
from dashboards.common import DASHBOARD_UIDS
from dashboards.generate import DashboardOptions, render_provisioning
from bench.grafana_emulator import render, variables_from_dashboard
from storage import rollup
from storage.schema import PLAIN_POSTGRESQL_ONLY

FILES = render_provisioning(DashboardOptions())
BOARDS = {json.loads(t)["uid"]: json.loads(t) for rel, t in FILES.items() if rel.endswith(".json")}
RULES = [r for g in yaml.safe_load(FILES["alerting/callscope-rules.yaml"])["groups"] for r in g["rules"]]
BIG = ("calls", "turns", "spans", "events", "tool_calls", "turn_latency_1m", "turn_latency_1h", "call_status_1h",
       "turn_latency_breakdown_1h", "stage_latency_1m", "latency_stage_1h", "event_counts_1m", "event_counts_1h")
CALLS = 50_000

async def _seq_scanned(conn: asyncpg.Connection, plan: str) -> set[str]:
    return await dashboard_data.seq_scanned(conn, plan, set(BIG) | {"latency_stage_1m"})

DAYS = 4

_FILL = [
    f"""INSERT INTO calls (call_id, started_at, ended_at, last_seen_at, status, direction, campaign, agent,
                        duration_s, cost_total, cost_stt, cost_llm, cost_tts, cost_telephony, turn_count)
    SELECT 'p' || i, $1::timestamptz + i * interval '{DAYS} days' / {CALLS},
           $1::timestamptz + i * interval '{DAYS} days' / {CALLS} + interval '3 minutes',
           $1::timestamptz + i * interval '{DAYS} days' / {CALLS} + interval '3 minutes',
           (ARRAY['completed', 'failed', 'missed', 'declined', 'active'])[1 + i % 5],
           (ARRAY['inbound', 'outbound', 'web'])[1 + i % 3], (ARRAY['renewals', 'promo', NULL])[1 + i % 3],
           (ARRAY['sarah', 'max', 'ivy'])[1 + i % 3], 180, 0.1, 0.01, 0.02, 0.03, 0.04, 4
    FROM generate_series(1, {CALLS}) AS i""",
    f"""INSERT INTO turns (call_id, turn_number, started_at, agent, llm_model, llm_provider, stt_provider,
                        tts_provider, voice_to_voice_ms, stt_ms, llm_ttft_ms, tts_ttfb_ms, user_text, agent_text)
    SELECT 'p' || i, n, $1::timestamptz + i * interval '{DAYS} days' / {CALLS} + n * interval '20 seconds',
           (ARRAY['sarah', 'max', 'ivy'])[1 + i % 3], (ARRAY['gpt-4o', 'gpt-4o-mini', 'llama'])[1 + i / 3 % 3],
           'openai', 'deepgram', 'cartesia', 600 + i % 1500, 150 + i % 200, 300 + i % 900, 100 + i % 300,
           'hello', 'hi'
    FROM generate_series(1, {CALLS}) AS i, generate_series(1, 4) AS n""",
    f"""INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, call_id, turn_number, stage, name,
                        provider, model, ttfb_ms, attributes)
    SELECT $1::timestamptz + i * interval '{DAYS} days' / {CALLS} + n * interval '10 seconds',
           $1::timestamptz + i * interval '{DAYS} days' / {CALLS} + n * interval '10 seconds' + interval '1 second',
           1000, md5('t' || i), left(md5(i || '-' || n), 16), 'p' || i, n, (ARRAY['stt', 'llm', 'tts', 'turn'])[1 + n % 4],
           'span', 'openai', 'gpt-4o', 100 + n, '{{}}'::jsonb
    FROM generate_series(1, {CALLS}) AS i, generate_series(1, 4) AS n""",
    f"""INSERT INTO events (time, event_id, call_id, category, event, level, source)
    SELECT $1::timestamptz + i * interval '{DAYS} days' / {CALLS} + n * interval '10 seconds', md5(i || 'e' || n),
           'p' || i, (ARRAY['webhook', 'agent', 'path', 'transfer'])[1 + n % 4],
           (ARRAY['webhook.sent', 'agent.message_sent', 'path.error', 'transfer.completed'])[1 + n % 4],
           'INFO', 'log'
    FROM generate_series(1, {CALLS}) AS i, generate_series(1, 4) AS n""",
    f"""INSERT INTO tool_calls (call_id, turn_number, tool_call_id, tool_name, started_at, is_error)
    SELECT 'p' || i, 1, 'tc' || i, 'lookup', $1::timestamptz + i * interval '{DAYS} days' / {CALLS}, i % 10 = 0
    FROM generate_series(1, {CALLS}) AS i""",
]


@pytest.fixture(scope="module")
async def unanalyzed(template_database: str) -> AsyncIterator[tuple[asyncpg.Connection, datetime]]:
    name = await new_database(template_database, prefix="callscope_plans")
    conn = await asyncpg.connect(url_for(name))
    start = await conn.fetchval("SELECT date_trunc('hour', now()) - interval '%s days'" % DAYS)
    for statement in _FILL:
        await conn.execute(statement, start)
    # the deriver's way (and the refresh's own plans must not need statistics either: it runs here on
    # never-analyzed tables, one index range scan per bucket)
    for mark in rollup.MARK_ALL_BUCKETS:
        await conn.execute(mark)
    await rollup.drain_rollups(conn, 5000)
    # TimescaleDB's way for the continuous aggregates: their refresh policies, run as its scheduler runs them
    # (the real-time part then reads only the spans after the last refresh)
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        for job in await conn.fetch("SELECT job_id FROM timescaledb_information.jobs "
                                    "WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY job_id"):
            await conn.execute(f"CALL run_job({int(job[0])})")
    # where TimescaleDB keeps the stage rollups, they are continuous aggregates, not tables (migration 0007)
    tables = [t for t in BIG if await conn.fetchval("SELECT relkind = 'r' FROM pg_class WHERE oid = to_regclass($1)",
                                                    t) or t not in PLAIN_POSTGRESQL_ONLY]
    never = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY($1) AND last_analyze IS NULL "
        "AND last_autoanalyze IS NULL", tables)
    assert never == len(tables), "the tables must never have been analyzed"
    chunks = await conn.fetchval("SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE '\\_hyper\\_%' "
                                 "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)")
    assert chunks == 0, "nor their chunks"
    await conn.execute("SET jit = off")  # the reader role's setting
    yield conn, start + timedelta(days=DAYS)
    await conn.close()
    await drop_database(name)


def _queries() -> list[Any]:
    cases = []
    for key in ("calls", "latency", "events", "quality", "campaigns"):
        board = BOARDS[DASHBOARD_UIDS[key]]
        for top in board["panels"]:
            for panel in [top, *top.get("panels", [])]:
                for target in panel.get("targets", []):
                    cases.append(pytest.param(board, target["rawSql"], id=f"{key}:{panel['title']}"))
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                cases.append(pytest.param(board, v["query"], id=f"{key}:variable {v['name']}"))
    for rule in RULES:
        cases.append(pytest.param(None, rule["data"][0]["model"]["rawSql"], id=f"alert:{rule['uid']}"))
    return cases


@pytest.mark.parametrize(("board", "sql"), _queries())
async def test_queries_select_by_index_without_statistics(unanalyzed: tuple[asyncpg.Connection, datetime],
                                                          board: dict[str, Any] | None, sql: str) -> None:
    conn, now = unanalyzed
    variables = variables_from_dashboard(board) if board else {}
    for span in (timedelta(hours=1), timedelta(hours=24), timedelta(days=30)):
        rendered = render(sql, variables=variables, frm=now - span, to=now, interval=timedelta(minutes=1))
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + rendered))
        scanned = await _seq_scanned(conn, plan)
        assert not scanned, f"{span}: sequential scan of {scanned}\n{plan}"


async def test_the_latency_rollup_is_read_only_within_the_range(
        unanalyzed: tuple[asyncpg.Connection, datetime]) -> None:
    conn, now = unanalyzed
    board = BOARDS[DASHBOARD_UIDS["latency"]]
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
    sql = next(p for p in panels if p["title"] == "p95 Voice-to-voice")["targets"][0]["rawSql"]
    filtered = {"agent": ["sarah"], "model": ["llama"]}
    for span in (timedelta(days=3), timedelta(days=30)):
        # every variable "All": the pre-merged rows; agent and model both filtered: every dimension set
        for values, index in (({}, "turn_latency_breakdown_1h_breakdown_bucket_idx"),
                              (filtered, "turn_latency_1h_bucket_idx")):
            rendered = render(sql, variables=variables_from_dashboard(board, values), frm=now - span, to=now)
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (FORMAT TEXT) " + rendered))
            assert re.search(rf"(Index Scan using|Bitmap Index Scan on) {index}", plan), plan
            scanned = re.findall(r"Scan(?: using \w+)? on (\w+)", plan)
            assert "turns" not in scanned, plan
            assert ("turn_latency_1h" in scanned) == (index == "turn_latency_1h_bucket_idx"), plan
    rendered = render(sql, variables=variables_from_dashboard(board), frm=now - timedelta(hours=24), to=now)
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + rendered))
    assert "turns_started_at_idx" in plan and "turn_latency_1h" not in plan, plan


async def test_the_refreshes_read_by_index_without_statistics(unanalyzed: tuple[asyncpg.Connection, datetime]) -> None:
    """Each refresh statement reads one bucket's rows through an index per bucket, whatever the estimates."""
    conn, now = unanalyzed
    minutes = f"ARRAY[date_bin('1 minute', '{now.isoformat()}'::timestamptz - interval '1 day', {rollup._ORIGIN})]"
    hours = minutes.replace("1 minute", "1 hour")
    statements = {
        "stage minutes": rollup._STAGE_MINUTE_ROWS, "stage hours": rollup._STAGE_HOUR_ROWS,
        "event minutes": rollup._EVENT_MINUTE_ROWS, "event hours": rollup._EVENT_HOUR_ROWS,
        "breakdown hours": rollup._breakdown_rows("hours"),
    }
    for routine in (rollup._REFRESH_TURN_ROUTINE, rollup._REFRESH_STAGE_ROUTINE, rollup._REFRESH_EVENT_ROUTINE):
        for line in routine.splitlines():
            if line.strip().startswith("DELETE FROM"):
                statements[line.strip()] = line.strip().rstrip(";")
    if not await conn.fetchval("SELECT to_regclass('stage_latency_1m') IS NOT NULL"):
        # TimescaleDB keeps the stage rollups (continuous aggregates): the stage refresh only consumes its marks
        statements = {name: sql for name, sql in statements.items()
                      if "stage_latency_1m" not in sql and "INSERT INTO latency_stage_1h" not in sql
                      and not name.startswith("DELETE FROM latency_stage_1h")}
    for name, sql in statements.items():
        for variable, value in (("minutes", minutes), ("hours", hours)):
            sql = sql.replace(f"unnest({variable})", f"unnest({value})").replace(f"ANY({variable})", f"ANY({value})")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
        scanned = await _seq_scanned(conn, plan)
        assert not scanned, f"{name}: {scanned}\n{plan}"
    # callscope_event_seen_before's lookups, planned as the function plans them (generic parameters): the call's
    # own rows and its traces' rows, never a range of events_time_idx
    body = rollup._EVENT_SEEN_BEFORE.split("$$")[1]
    for name, arg in (("of_call", "$1"), ("of_category", "$2"), ("of_event", "$3"), ("of_level", "$4"),
                      ("before_time", "$5")):
        body = body.replace(name, arg)
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE seen(text, text, text, text, timestamptz) AS {body}")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN EXECUTE seen('p7', 'webhook', 'webhook.sent', 'INFO', now())"))
        await conn.execute("DEALLOCATE seen")
    assert "events_call_idx" in plan and "events_trace_idx" in plan and "events_time_idx" not in plan, plan
    assert not await _seq_scanned(conn, plan), plan


CAMPAIGN_PANELS = [pytest.param(target["rawSql"], id=panel["title"])
                   for top in BOARDS[DASHBOARD_UIDS["campaigns"]]["panels"]
                   for panel in [top, *top.get("panels", [])] for target in panel.get("targets", [])]


@pytest.mark.parametrize("sql", CAMPAIGN_PANELS)
async def test_campaign_panels_with_a_selected_campaign_select_by_index(
        unanalyzed: tuple[asyncpg.Connection, datetime], sql: str) -> None:
    """The other branches of the Campaigns panels (a campaign selected: every dimension set of the turn rollup,
    the calls of that campaign)."""
    conn, now = unanalyzed
    board = BOARDS[DASHBOARD_UIDS["campaigns"]]
    for span in (timedelta(hours=1), timedelta(hours=24), timedelta(days=30)):
        rendered = render(sql, variables=variables_from_dashboard(board, {"campaign": ["spring", "winter"]}),
                          frm=now - span, to=now, interval=timedelta(minutes=1))
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + rendered))
        scanned = await _seq_scanned(conn, plan)
        assert not scanned, f"{span}: sequential scan of {scanned}\n{plan}"


async def test_the_transferred_backfill_finds_calls_and_events_by_index(
        unanalyzed: tuple[asyncpg.Connection, datetime]) -> None:
    """Migration 0015's backfill: the transfer events through events_event_time_idx, the calls by primary key and
    updated by address (the tool calls are read once: no index serves a name containing "transfer")."""
    import importlib

    conn, _ = unanalyzed
    backfill = importlib.import_module("storage.migrations.versions.0015_campaign_rollup").BACKFILL_TRANSFERRED
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + backfill))
    assert not {"calls", "events"} & await dashboard_data.seq_scanned(conn, plan, {"calls", "events"}), plan
    assert "events_event_time_idx" in plan and "Tid Scan on calls" in plan and "calls_pkey" in plan, plan
