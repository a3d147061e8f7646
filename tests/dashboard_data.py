"""A small, deterministic call ledger written straight into the public schema, for dashboard SQL tests.

It exercises every panel (webhooks, path errors, transfers, failed tools, interruptions, recordings…) even
where the traffic simulator has nothing of that kind. ``BASE`` is fixed, so runs are reproducible.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import asyncpg

from storage import rollup

__all__ = ["BASE", "CALLS", "fill_ledger", "fill_large_spans", "fill_rollups"]

BASE = datetime(2026, 1, 15, 10, 0, tzinfo=timezone.utc)
CALLS = 42

_SQL = r"""
WITH c AS (
  SELECT i, 'call-' || lpad(i::text, 4, '0') AS call_id, md5('trace' || i) AS trace_id,
         $1::timestamptz + make_interval(mins => 2 * i) AS t0
  FROM generate_series(1, {calls}) AS i
)
INSERT INTO calls (call_id, trace_ids, started_at, ended_at, last_seen_at, duration_s, status, status_reason,
                   direction, campaign, agent, framework, from_number, to_number, turn_count, interruption_count,
                   tool_call_count, error_count, cost_total, cost_stt, cost_llm, cost_tts, cost_telephony,
                   currency, summary, tags, extracted, recording_url, attributes, transferred)
SELECT call_id, ARRAY[trace_id], t0, t0 + interval '3 minutes', t0 + interval '3 minutes', 180,
       (ARRAY['completed','completed','failed','completed','declined','missed','active','queued','ringing',
              'completed'])[1 + i % 10],
       NULL,
       (ARRAY['inbound','outbound','web'])[1 + i % 3],
       CASE WHEN i % 2 = 0 THEN 'spring-renewals' END,
       CASE WHEN i % 3 = 0 THEN 'sales' ELSE 'receptionist' END,
       'native', '+1555' || lpad(i::text, 7, '0'), '+1666' || lpad(i::text, 7, '0'), 4,
       CASE WHEN i % 3 = 0 THEN 1 ELSE 0 END, CASE WHEN i % 2 = 0 THEN 1 ELSE 0 END, 0,
       0.05 + i * 0.001, 0.01, 0.02, 0.01, 0.01 + i * 0.001, 'USD',
       'Caller asked about order ' || i, ARRAY['order', 'support'],
       jsonb_build_object('order_id', i, 'resolved', i % 2 = 0),
       'https://recordings.example.com/' || call_id || '.mp3', '{{}}'::jsonb, i % 5 = 0
FROM c;

WITH c AS (
  SELECT i, 'call-' || lpad(i::text, 4, '0') AS call_id, $1::timestamptz + make_interval(mins => 2 * i) AS t0
  FROM generate_series(1, {calls}) AS i
)
INSERT INTO turns (call_id, turn_number, started_at, ended_at, user_text, agent_text, interrupted, user_stopped_at,
                   stt_final_at, llm_request_at, llm_first_token_at, tts_request_at, tts_first_audio_at,
                   agent_started_at, eou_ms, stt_ms, stt_to_llm_ms, llm_ttft_ms, llm_to_tts_ms, tts_ttfb_ms,
                   voice_to_voice_ms, reported_v2v_ms, llm_provider, llm_model, stt_provider, tts_provider,
                   input_tokens, output_tokens, agent)
SELECT call_id, n, t0 + make_interval(secs => 30 * n), t0 + make_interval(secs => 30 * n + 20),
       'user says ' || n, 'agent answers ' || n, (i % 3 = 0 AND n = 2),
       t0 + make_interval(secs => 30 * n + 3), NULL, NULL, NULL, NULL, NULL, NULL,
       120 + (i * 13 + n * 7) % 80, 200 + (i * 17 + n * 11) % 150, 5 + n, 300 + (i * 37 + n * 29) % 900,
       10 + n, 150 + (i * 19 + n * 5) % 200, 700 + (i * 53 + n * 31) % 1600, 690 + (i * 53 + n * 31) % 1600,
       'openai', CASE WHEN i % 2 = 0 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END, 'deepgram', 'cartesia',
       100 + n, 20 + n, CASE WHEN i % 3 = 0 THEN 'sales' ELSE 'receptionist' END
FROM c, generate_series(1, 4) AS n;

WITH c AS (
  SELECT i, 'call-' || lpad(i::text, 4, '0') AS call_id, md5('trace' || i) AS trace_id,
         $1::timestamptz + make_interval(mins => 2 * i) AS t0
  FROM generate_series(1, {calls}) AS i
), s AS (
  SELECT c.*, 0 AS n, 'session' AS stage, 'session' AS name, NULL::text AS parent, 0 AS off_ms, 180000 AS dur_ms
  FROM c
  UNION ALL
  SELECT c.*, n, st.stage, st.stage, 'session', 30000 * n + st.off, st.dur
  FROM c, generate_series(1, 4) AS n,
       (VALUES ('stt', 3000, 250), ('llm', 3300, 900), ('tts', 4300, 400)) AS st(stage, off, dur)
  UNION ALL
  SELECT c.*, 2, 'tool', 'tool:lookup_order', 'llm', 63400, 300 FROM c WHERE i % 2 = 0
)
INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, parent_span_id, call_id, turn_number, stage,
                   name, service_name, scope_name, kind, status_code, status_message, provider, model, ttfb_ms,
                   input_tokens, output_tokens, framework, attributes, events, resource)
SELECT t0 + make_interval(secs => off_ms / 1000.0), t0 + make_interval(secs => (off_ms + dur_ms) / 1000.0), dur_ms,
       trace_id, left(md5(call_id || stage || n), 16),
       CASE WHEN parent = 'session' THEN left(md5(call_id || 'session' || 0), 16)
            WHEN parent = 'llm' THEN left(md5(call_id || 'llm' || n), 16) END,
       call_id, NULLIF(n, 0), stage, name, 'voice-agent', 'callscope.test', 1,
       CASE WHEN stage = 'tool' AND i % 4 = 0 THEN 2 ELSE 1 END, NULL,
       CASE stage WHEN 'stt' THEN 'deepgram' WHEN 'llm' THEN 'openai' WHEN 'tts' THEN 'cartesia' END,
       CASE stage WHEN 'llm' THEN CASE WHEN i % 2 = 0 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END
                  WHEN 'tts' THEN 'sonic' WHEN 'stt' THEN 'nova-2' END,
       CASE WHEN stage IN ('stt', 'llm', 'tts') THEN 100 + (i * 37 + n * 11) % 700 END,
       NULL, NULL, 'native',
       jsonb_build_object('call.id', call_id, 'gen_ai.request.model', 'gpt-4o', 'turn', n),
       CASE WHEN stage = 'llm' THEN jsonb_build_array(jsonb_build_object(
              'name', 'first_token',
              'time_unix_nano', ((extract(epoch FROM t0) * 1000 + off_ms + 300) * 1000000)::bigint,
              'attributes', jsonb_build_object('tokens', 1))) END,
       jsonb_build_object('service.name', 'voice-agent', 'deployment.environment', 'test')
FROM s;

WITH c AS (
  SELECT i, 'call-' || lpad(i::text, 4, '0') AS call_id, $1::timestamptz + make_interval(mins => 2 * i) AS t0
  FROM generate_series(1, {calls}) AS i
)
INSERT INTO tool_calls (call_id, turn_number, tool_call_id, tool_name, started_at, ended_at, duration_ms, arguments,
                        result, is_error, error, span_id)
SELECT call_id, 2, 'tc-' || i, 'lookup_order', t0 + interval '63.4 seconds', t0 + interval '63.7 seconds', 300,
       '{{"order_id": ' || i || '}}', CASE WHEN i % 4 = 0 THEN NULL ELSE '{{"status": "shipped"}}' END,
       i % 4 = 0, CASE WHEN i % 4 = 0 THEN 'HTTP 502 from orders API' END,
       left(md5(call_id || 'tool' || 2), 16)
FROM c WHERE i % 2 = 0;

WITH c AS (
  SELECT i, 'call-' || lpad(i::text, 4, '0') AS call_id, md5('trace' || i) AS trace_id,
         $1::timestamptz + make_interval(mins => 2 * i) AS t0
  FROM generate_series(1, {calls}) AS i
), e AS (
  SELECT c.*, x.event, x.off_s, x.n FROM c, LATERAL (VALUES
      ('agent.initialized', 0, 0), ('agent.greeting_sent', 1, 0), ('call.recording_started', 1, 0),
      ('user.message_received', 33, 1), ('agent.message_sent', 35, 1),
      ('user.message_received', 63, 2), ('agent.message_sent', 65, 2),
      ('webhook.queued', 181, 0), ('webhook.sent', 182, 0),
      ('call.completed', 180, 0)) AS x(event, off_s, n)
  UNION ALL SELECT c.*, 'agent.interrupted', 66, 2 FROM c WHERE i % 3 = 0
  UNION ALL SELECT c.*, 'webhook.response_success', 183, 0 FROM c WHERE i % 5 <> 0
  UNION ALL SELECT c.*, x.event, x.off_s, 0 FROM c,
      (VALUES ('webhook.response_failed', 183), ('webhook.retry_exhausted', 190)) AS x(event, off_s)
      WHERE i % 5 = 0
  UNION ALL SELECT c.*, 'integration.invoked', 63, 2 FROM c WHERE i % 2 = 0
  UNION ALL SELECT c.*, 'integration.failed', 64, 2 FROM c WHERE i % 4 = 0
  UNION ALL SELECT c.*, 'path.error', 95, 3 FROM c WHERE i % 6 = 0
  UNION ALL SELECT c.*, x.event, x.off_s, 4 FROM c,
      (VALUES ('tool.transfer.invoked', 120), ('transfer.human_dialing', 121), ('transfer.human_answered', 125),
              ('transfer.completed', 126)) AS x(event, off_s)
      WHERE i % 7 = 0
  UNION ALL SELECT c.*, 'debug.note', 50, 1 FROM c WHERE i % 2 = 1
)
INSERT INTO events (time, event_id, call_id, trace_id, span_id, category, event, level, message, data, source,
                    turn_number)
SELECT e.t0 + make_interval(secs => e.off_s), md5(e.call_id || e.event || e.off_s), e.call_id, e.trace_id, NULL,
       coalesce(et.category, 'other'), e.event,
       coalesce(et.default_level, 'INFO'),
       CASE e.event WHEN 'integration.failed' THEN 'lookup_order failed: HTTP 502'
                    WHEN 'path.error' THEN 'node "billing" has no outgoing edge'
                    WHEN 'webhook.response_failed' THEN 'POST https://hooks.example.com returned 500'
                    ELSE NULL END,
       jsonb_build_object('turn', e.n, 'tool_name', 'lookup_order'),
       CASE WHEN e.event LIKE 'webhook.%' THEN 'log' ELSE 'derived' END, NULLIF(e.n, 0)
FROM e LEFT JOIN event_types et ON et.event = e.event;
"""


# Silence, barge-in and telemetry flaws for the Latency and Telemetry quality panels: dead air on every turn,
# a barge-in on the interrupted ones; call-0005 lost a span's parent, call-0006 has a span ending before it
# starts and a child starting 3 s before its parent, call-0007's turn 2 has no LLM stage while its others do,
# and a log record filed under call-0008 by a trace id that has no span.
_FLAWS = r"""
UPDATE turns SET dead_air_ms = 400 + (turn_number * 97) % 900,
                 barge_in_stop_ms = CASE WHEN interrupted THEN 250 + turn_number * 40 END;
UPDATE calls SET dead_air_total_s = 4.5, longest_silence_ms = 1800 + length(call_id) * 10,
                 barge_in_count = interruption_count;
UPDATE spans SET parent_span_id = 'feedfacefeedface' WHERE call_id = 'call-0005' AND stage = 'stt' AND turn_number = 1;
UPDATE spans SET end_time = start_time - interval '5 ms' WHERE call_id = 'call-0006' AND stage = 'tts'
  AND turn_number = 1;
UPDATE spans SET start_time = start_time - interval '3 minutes' WHERE call_id = 'call-0006' AND stage = 'stt'
  AND turn_number = 2;
UPDATE turns SET llm_request_at = started_at + interval '3 seconds' WHERE call_id = 'call-0007' AND turn_number <> 2;
INSERT INTO events (time, event_id, call_id, trace_id, category, event, level, message, source)
VALUES ($1::timestamptz + interval '17 minutes', md5('lost-log'), 'call-0008', md5('lost-trace'), 'other',
        'log', 'WARNING', 'retrying', 'log')
"""


async def fill_ledger(conn: asyncpg.Connection, *, calls: int = CALLS, base: datetime = BASE) -> None:
    """Insert ``calls`` calls with turns, spans, tool calls and events (idempotent per empty database)."""
    for statement in _SQL.format(calls=int(calls)).split(";\n\n"):
        if statement.strip():
            await conn.execute(statement, base)
    for statement in _FLAWS.split(";\n"):
        if statement.strip():
            await conn.execute(statement, base) if "$1" in statement else await conn.execute(statement)
    await fill_rollups(conn)
    await conn.execute("ANALYZE")


async def fill_rollups(conn: asyncpg.Connection) -> None:
    """Mark every bucket and refresh, as the deriver would after writing these rows."""
    for mark in rollup.MARK_ALL_BUCKETS:
        await conn.execute(mark)
    await rollup.drain_rollups(conn, 5000)


async def fill_large_spans(conn: asyncpg.Connection, *, calls: int = 4000, spans_per_call: int = 50,
                           base: datetime = BASE - timedelta(days=10)) -> None:
    """~calls × spans_per_call spans (and their calls / events) for the query-plan test."""
    await conn.execute(
        """
        INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, parent_span_id, call_id,
                           turn_number, stage, name, service_name, kind, status_code, provider, model, ttfb_ms,
                           framework, attributes, resource)
        SELECT $1::timestamptz + make_interval(secs => c * 30 + s),
               $1::timestamptz + make_interval(secs => c * 30 + s + 1), 1000,
               md5('big' || c), left(md5('big' || c || '-' || s), 16), NULL, 'big-' || c, s / 5 + 1,
               (ARRAY['stt', 'llm', 'tts', 'tool', 'turn'])[1 + s % 5], 'span', 'voice-agent', 1, 1,
               'openai', 'gpt-4o', 100 + s, 'native', '{"k": 1}'::jsonb, '{"service.name": "a"}'::jsonb
        FROM generate_series(1, $2::int) AS c, generate_series(1, $3::int) AS s
        """,
        base, calls, spans_per_call,
    )
    await conn.execute(
        """
        INSERT INTO events (time, event_id, call_id, category, event, level, source)
        SELECT $1::timestamptz + make_interval(secs => c * 30 + s), md5('bigev' || c || '-' || s), 'big-' || c,
               'agent', 'agent.message_sent', 'INFO', 'derived'
        FROM generate_series(1, $2::int) AS c, generate_series(1, 10) AS s
        """,
        base, calls,
    )
    await conn.execute("ANALYZE")


# On TimescaleDB a plan scans chunks (_hyper_…_chunk), compressed chunks, and the materialization hypertable of
# a continuous aggregate: each is named after the relation it belongs to (latency_stage_1m / latency_stage_1h
# are continuous aggregates there, and stage_latency_1m does not exist).
_TIMESCALE_RELATIONS = """
SELECT ch.table_name AS part, coalesce(ca.user_view_name, parent.table_name, h.table_name) AS relation,
       coalesce(c.reltuples BETWEEN 0 AND 999, false) AS small
FROM _timescaledb_catalog.chunk ch
JOIN _timescaledb_catalog.hypertable h ON h.id = ch.hypertable_id
LEFT JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', ch.schema_name, ch.table_name))
LEFT JOIN _timescaledb_catalog.hypertable parent ON parent.compressed_hypertable_id = h.id
LEFT JOIN _timescaledb_catalog.continuous_agg ca ON ca.mat_hypertable_id = coalesce(parent.id, h.id)
UNION ALL
SELECT h.table_name, ca.user_view_name, false FROM _timescaledb_catalog.hypertable h
JOIN _timescaledb_catalog.continuous_agg ca ON ca.mat_hypertable_id = h.id"""


def _filtered(lines: list[str], at: int) -> bool:
    """Whether the plan node on ``lines[at]`` has a Filter (rows it reads and throws away)."""
    depth = len(lines[at]) - len(lines[at].lstrip())
    for line in lines[at + 1:]:
        if len(line) - len(line.lstrip()) <= depth or line.lstrip().startswith("->"):
            return False
        if line.lstrip().startswith("Filter:"):
            return True
    return False


async def seq_scanned(conn: asyncpg.Connection, plan: str, relations: set[str]) -> set[str]:
    """Which of ``relations`` a plan reads by sequential scan (a chunk counts as its hypertable or aggregate).

    A chunk read whole without a Filter is no such scan: TimescaleDB drops the conditions its time range
    already satisfies, so every row it reads is wanted (what an index range scan would read). Nor is a chunk
    its statistics show to be small (under 1000 rows): there a sequential scan is the cheaper plan; a chunk
    never analyzed (a fresh one) has no such figure and counts."""
    parts: dict[str, str] = {}
    small: set[str] = set()
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        rows = await conn.fetch(_TIMESCALE_RELATIONS)
        parts = {r["part"]: r["relation"] for r in rows}
        small = {r["part"] for r in rows if r["small"]}
    lines = plan.splitlines()
    scanned = set()
    for at, line in enumerate(lines):
        for name in re.findall(r"Seq Scan on (\w+)", line):
            if name not in parts or (_filtered(lines, at) and name not in small):
                scanned.add(parts.get(name, name))
    return scanned & relations
