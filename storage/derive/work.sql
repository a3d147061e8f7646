-- Derive, 1 of 6 — the work tables: the claimed calls' spans and events, copied through indexes.
--
-- A derive round recomputes the derived rows of the calls a worker claimed ($1 = text[] of call ids, all of the
-- tenant $2: a call is identified by its tenant and its id, design §9) from what is stored. Every statement that
-- reads or writes a stored table names the tenant; the work tables hold that tenant's rows only. Every statement is a pure function of the stored spans and events, so the result does not depend
-- on arrival order or on repeated batches. Work is bounded by the claimed calls' own rows: load_spans /
-- load_events copy them into per-connection temporary tables, every later statement reads those, and the
-- stored tables are written only where a derived value really changed (turn numbers, turns, the call row), so
-- a call derived again without new data writes nothing. A span stored under its trace id before the span
-- naming its call arrived is found through call_traces; stored rows are never moved.
--
-- Values are read from jsonb with the callscope_* casts (storage/deriver.py), which give NULL for a value the
-- column cannot hold instead of failing the call. Span facts (spans.facts, written by the mappers; times are
-- epoch microseconds): storage/facts.py declares every key, who writes it and which statement reads it
-- (tests/test_facts.py keeps the three in step). storage/deriver.py loads the files in this order: work,
-- turns, tool_calls, calls, cost, events.

-- name: load_spans
-- A call's spans: those stored under its id (minus rows of a trace id whose trace has since named another
-- call), and those stored under the id of one of its traces before that trace named the call.
INSERT INTO derive_spans (call_id, trace_id, span_id, start_time, end_time, parent_span_id, stage, status_code,
                          framework, input_tokens, output_tokens, facts, session_attributes, turn_number,
                          stored_turn_number)
SELECT ids.call_id, s.trace_id, s.span_id, s.start_time, s.end_time, s.parent_span_id, s.stage, s.status_code,
       s.framework, s.input_tokens, s.output_tokens, s.facts,
       CASE WHEN s.stage = 'session' THEN s.attributes END, s.turn_number, s.turn_number
FROM unnest($1::text[]) AS ids(call_id)
CROSS JOIN LATERAL (
    SELECT * FROM spans s1
    WHERE s1.call_id = ids.call_id AND s1.tenant IS NOT DISTINCT FROM $2
      -- a scalar subquery with LIMIT: NOT EXISTS may be planned as a hashed scan of all of call_traces
      AND (s1.call_id_explicit OR (
           SELECT 1 FROM call_traces k
           WHERE k.trace_id = s1.trace_id AND k.tenant IS NOT DISTINCT FROM $2 AND k.call_id <> ids.call_id
           LIMIT 1) IS NULL)
    UNION ALL
    -- one lookup per trace id of the call (equality: the index, whatever the planner estimates; OFFSET 0 keeps
    -- it a lookup per trace). "trace_id = ANY (ARRAY(...))" is estimated at a few per cent of the table without
    -- statistics and planned as a sequential scan of every span, once per call.
    SELECT s2.* FROM call_traces k
    CROSS JOIN LATERAL (
        SELECT * FROM spans s3
        WHERE s3.trace_id = k.trace_id
          AND s3.tenant IS NOT DISTINCT FROM $2 AND NOT s3.call_id_explicit AND s3.call_id <> ids.call_id
        OFFSET 0) s2
    WHERE k.call_id = ids.call_id AND k.tenant IS NOT DISTINCT FROM $2
) s;

-- name: load_events
INSERT INTO derive_events (call_id, time, event_id, trace_id, span_id, event, level, message, data, source,
                           turn_number, stored_turn_number)
SELECT ids.call_id, e.time, e.event_id, e.trace_id, e.span_id, e.event, e.level, e.message, e.data, e.source,
       e.turn_number, e.turn_number
FROM unnest($1::text[]) AS ids(call_id)
CROSS JOIN LATERAL (
    SELECT * FROM events e1
    WHERE e1.call_id = ids.call_id AND e1.tenant IS NOT DISTINCT FROM $2
      AND (e1.call_id_explicit OR e1.trace_id IS NULL OR (
           SELECT 1 FROM call_traces k
           WHERE k.trace_id = e1.trace_id AND k.tenant IS NOT DISTINCT FROM $2 AND k.call_id <> ids.call_id
           LIMIT 1) IS NULL)
    UNION ALL
    SELECT e2.* FROM call_traces k
    CROSS JOIN LATERAL (
        SELECT * FROM events e3
        WHERE e3.trace_id = k.trace_id
          AND e3.tenant IS NOT DISTINCT FROM $2 AND NOT e3.call_id_explicit AND e3.call_id <> ids.call_id
        OFFSET 0) e2
    WHERE k.call_id = ids.call_id AND k.tenant IS NOT DISTINCT FROM $2
) e;
