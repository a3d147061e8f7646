-- Write: the staged rows of one batch become stored rows, in one round trip (storage/writer.py COPYs the batch
-- into the per-connection staging tables stage_spans / stage_events / stage_tools, then calls this routine in
-- the same transaction; each round trip also waits for the event loop, which is busy decoding the next
-- requests).
--
-- Every statement is an insert: nothing stored is rewritten. A row without a call id of its own is stored
-- under the call its trace is known to belong to (call_traces), else under its trace id, and stays there;
-- derivation and the dashboards reach such rows through call_traces. Seq scans and JIT are off inside the
-- routine because fresh tables and chunks have no statistics (autovacuum may be off): every lookup must go
-- through an index whatever the estimates (tests/test_storage_plans.py plans each -- name: block).
--
-- The column lists are the fields of storage/records.py in COPY order (tests/test_storage_plans.py checks
-- that they stay the same).
--
-- A batch may hold several tenants' rows (design §9: the API key decided each row's tenant). Every lookup and
-- every key pairs the tenant with the id, so a trace, span or call id of one tenant never reaches another's.
CREATE OR REPLACE FUNCTION callscope_write_staged(
    OUT span_count bigint, OUT event_count bigint, OUT tool_count bigint, OUT calls_touched int,
    OUT touched text[], OUT touched_tenants text[])
LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off
AS $routine$
#variable_conflict use_column
DECLARE
    learned_traces text[];
    learned_calls text[];
    learned_tenants text[];
    span_calls text[];
    span_tenants text[];
    event_calls text[];
    event_tenants text[];
    tool_calls_touched text[];
    tool_tenants text[];
BEGIN
    -- name: learn_traces
    -- Traces that name their call (an explicit id on a span or log record): the first name a trace gets is
    -- kept. ON CONFLICT probes the primary key, so a trace named already costs no write.
    WITH named AS (
        SELECT tenant, trace_id, call_id, start_time AS at FROM stage_spans WHERE call_id_explicit
        UNION ALL
        SELECT tenant, trace_id, call_id, time FROM stage_events WHERE call_id_explicit AND trace_id IS NOT NULL
    ), first_named AS (
        SELECT DISTINCT ON (trace_id, tenant) tenant, trace_id, call_id FROM named
        ORDER BY trace_id, tenant, at, call_id
    ), learned AS (
        INSERT INTO call_traces (trace_id, tenant, call_id) SELECT trace_id, tenant, call_id FROM first_named
        ON CONFLICT (trace_id, tenant) DO NOTHING
        RETURNING trace_id, call_id, tenant
    )
    SELECT array_agg(trace_id), array_agg(call_id), array_agg(tenant)
    INTO learned_traces, learned_calls, learned_tenants FROM learned;

    -- name: store_resources
    -- Each distinct resource once: a batch has a few (one per SDK process), and a known one costs an index
    -- probe. A span's own resource column stays empty (insert_spans stores NULL there).
    INSERT INTO resources (resource_id, tenant, attributes)
    SELECT DISTINCT ON (resource_id, tenant) resource_id, tenant, resource FROM stage_spans
    WHERE resource_id IS NOT NULL
    ORDER BY resource_id, tenant
    ON CONFLICT (resource_id, tenant) DO NOTHING;

    -- name: insert_spans
    -- The call a staged row is stored under: its own explicit id, else its trace's call where that is known
    -- already, else its trace id (the same CASE in insert_events and upsert_tools). A correlated lookup, so the
    -- primary key of call_traces is used whatever the planner knows about the table. Rows stored already (a
    -- retry) are skipped.
    WITH ins AS (
        INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, parent_span_id, call_id,
                           call_id_explicit, turn_number, stage, name, service_name, scope_name, kind,
                           status_code, status_message, provider, model, ttfb_ms, input_tokens, output_tokens,
                           framework, attributes, events, resource, facts, resource_id, tenant)
        SELECT s.start_time, s.end_time, s.duration_ms, s.trace_id, s.span_id, s.parent_span_id,
               CASE WHEN s.call_id_explicit THEN s.call_id ELSE coalesce(
                   (SELECT ct.call_id FROM call_traces ct WHERE ct.trace_id = s.trace_id AND ct.tenant = s.tenant),
                   s.call_id) END,
               s.call_id_explicit, s.turn_number, s.stage, s.name, s.service_name, s.scope_name, s.kind,
               s.status_code, s.status_message, s.provider, s.model, s.ttfb_ms, s.input_tokens, s.output_tokens,
               s.framework, s.attributes, s.events, NULL, s.facts, s.resource_id, s.tenant
        FROM stage_spans s
        ON CONFLICT DO NOTHING
        RETURNING call_id, tenant
    ) SELECT count(*), array_agg(call_id), array_agg(tenant) INTO span_count, span_calls, span_tenants FROM ins;

    -- name: insert_events
    WITH ins AS (
        INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, span_id, category, event, level,
                            message, data, source, turn_number, tenant)
        SELECT s.time, s.event_id,
               CASE WHEN s.call_id_explicit THEN s.call_id ELSE coalesce(
                   (SELECT ct.call_id FROM call_traces ct WHERE ct.trace_id = s.trace_id AND ct.tenant = s.tenant),
                   s.call_id) END,
               s.call_id_explicit, s.trace_id, s.span_id, s.category, s.event, s.level, s.message, s.data,
               s.source, s.turn_number, s.tenant
        FROM stage_events s
        ON CONFLICT DO NOTHING
        RETURNING call_id, tenant
    ) SELECT count(*), array_agg(call_id), array_agg(tenant) INTO event_count, event_calls, event_tenants FROM ins;

    -- name: upsert_tools
    -- A tool call is assembled from several spans: the values it has keep, new ones fill the gaps.
    WITH resolved AS (
        SELECT DISTINCT ON (call_id, tenant, tool_call_id) * FROM (
            SELECT CASE WHEN s.call_id_explicit THEN s.call_id ELSE coalesce(
                       (SELECT ct.call_id FROM call_traces ct WHERE ct.trace_id = s.trace_id AND ct.tenant = s.tenant),
                       s.call_id) END AS call_id,
                   s.tenant, s.call_id_explicit, s.trace_id, s.tool_call_id, s.tool_name, s.started_at, s.ended_at,
                   s.duration_ms, s.arguments, s.result, s.is_error, s.error, s.span_id
            FROM stage_tools s
        ) r ORDER BY call_id, tenant, tool_call_id, is_error DESC, ended_at DESC NULLS LAST, span_id
    ), ins AS (
        INSERT INTO tool_calls AS t (call_id, call_id_explicit, trace_id, tool_call_id, tool_name, started_at,
                                     ended_at, duration_ms, arguments, result, is_error, error, span_id, tenant)
        SELECT call_id, call_id_explicit, trace_id, tool_call_id, tool_name, started_at, ended_at, duration_ms,
               arguments, result, is_error, error, span_id, tenant FROM resolved
        ON CONFLICT (call_id, tenant, tool_call_id) DO UPDATE SET
            tool_name = EXCLUDED.tool_name,
            started_at = coalesce(t.started_at, EXCLUDED.started_at),
            ended_at = coalesce(EXCLUDED.ended_at, t.ended_at),
            duration_ms = coalesce(EXCLUDED.duration_ms, t.duration_ms),
            arguments = coalesce(EXCLUDED.arguments, t.arguments),
            result = coalesce(EXCLUDED.result, t.result),
            is_error = t.is_error OR EXCLUDED.is_error,
            error = coalesce(EXCLUDED.error, t.error)
        WHERE (t.tool_name, t.started_at, t.ended_at, t.arguments, t.result, t.is_error, t.error)
              IS DISTINCT FROM
              (EXCLUDED.tool_name, coalesce(t.started_at, EXCLUDED.started_at), coalesce(EXCLUDED.ended_at, t.ended_at),
               coalesce(EXCLUDED.arguments, t.arguments), coalesce(EXCLUDED.result, t.result),
               t.is_error OR EXCLUDED.is_error, coalesce(EXCLUDED.error, t.error))
        RETURNING call_id, tenant
    ) SELECT count(*), array_agg(call_id), array_agg(tenant)
      INTO tool_count, tool_calls_touched, tool_tenants FROM ins;

    -- name: mark_calls
    -- Every call the batch touched gets a dirty_calls mark (a transactional outbox for storage/deriver.py). A
    -- trace that named its call for the first time marks both sides: the call gains the rows stored under the
    -- trace id, and the call keyed by that trace id disappears. touched / touched_tenants: the (call, tenant) pairs.
    SELECT array_agg(x.id ORDER BY x.id, x.tenant), array_agg(x.tenant ORDER BY x.id, x.tenant)
    INTO touched, touched_tenants
    FROM (SELECT DISTINCT u.id, u.tenant
          FROM unnest(coalesce(span_calls, '{}') || coalesce(event_calls, '{}') || coalesce(tool_calls_touched, '{}')
                      || coalesce(learned_calls, '{}') || coalesce(learned_traces, '{}'),
                      coalesce(span_tenants, '{}') || coalesce(event_tenants, '{}') || coalesce(tool_tenants, '{}')
                      || coalesce(learned_tenants, '{}') || coalesce(learned_tenants, '{}')) AS u(id, tenant)) x;
    IF touched IS NOT NULL THEN
        INSERT INTO dirty_calls (call_id, tenant) SELECT * FROM unnest(touched, touched_tenants);
    END IF;
    calls_touched := coalesce(cardinality(touched), 0);
END
$routine$
