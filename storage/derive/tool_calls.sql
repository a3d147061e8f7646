-- Derive, 3 of 6 — tool calls: adopted by the call their trace named, linked to their turn, timed when they
-- were recovered from an LLM request.

-- name: adopt_tool_calls
-- Tool calls stored under a trace id before their trace named its call join that call (tool_calls is keyed by
-- call, and a tool call is small and rare next to spans).
WITH moved AS (
    DELETE FROM tool_calls t
    -- by row address, found one trace id at a time (tool_calls_trace_idx by equality: "trace_id = ANY (ARRAY(...))"
    -- would be planned as a sequential scan of every tool call without statistics)
    WHERE t.ctid = ANY (ARRAY(SELECT x.ctid FROM call_traces c
                              CROSS JOIN LATERAL (SELECT t2.ctid FROM tool_calls t2
                                                  WHERE t2.trace_id = c.trace_id OFFSET 0) x
                              WHERE c.call_id = ANY ($1::text[]) AND c.tenant IS NOT DISTINCT FROM $2))
      AND t.tenant IS NOT DISTINCT FROM $2 AND NOT t.call_id_explicit
      AND t.call_id <> (SELECT k.call_id FROM call_traces k WHERE k.trace_id = t.trace_id AND k.tenant IS NOT DISTINCT FROM $2)
    RETURNING t.*, (SELECT k.call_id FROM call_traces k WHERE k.trace_id = t.trace_id AND k.tenant IS NOT DISTINCT FROM $2)
                   AS new_call_id
)
INSERT INTO tool_calls (call_id, tenant, turn_number, tool_call_id, tool_name, started_at, ended_at, duration_ms,
                        arguments, result, is_error, error, span_id, trace_id, call_id_explicit)
SELECT new_call_id, tenant, turn_number, tool_call_id, tool_name, started_at, ended_at, duration_ms, arguments,
       result, is_error, error, span_id, trace_id, call_id_explicit FROM moved
ON CONFLICT (call_id, tenant, tool_call_id) DO NOTHING;

-- name: link_tool_calls
UPDATE tool_calls t SET turn_number = s.turn_number
FROM derive_spans s
WHERE t.call_id = ANY($1::text[]) AND t.tenant IS NOT DISTINCT FROM $2 AND s.call_id = t.call_id AND s.trace_id = t.trace_id
  AND s.span_id = t.span_id AND t.turn_number IS DISTINCT FROM s.turn_number;

-- name: time_recovered_tool_calls
-- A tool call recovered from an LLM request's input (Pipecat) has no start of its own: it began when the
-- LLM step that asked for it ended, the latest LLM span of its turn that ended before the tool call did.
UPDATE tool_calls t SET started_at = x.started_at,
       duration_ms = extract(epoch FROM t.ended_at - x.started_at) * 1000
FROM (
    SELECT t2.call_id, t2.tool_call_id,
           (SELECT max(s.end_time) FROM derive_spans s
            WHERE s.call_id = t2.call_id AND s.stage = 'llm' AND s.turn_number = t2.turn_number
              AND s.end_time <= t2.ended_at) AS started_at
    FROM tool_calls t2
    WHERE t2.call_id = ANY($1::text[]) AND t2.tenant IS NOT DISTINCT FROM $2 AND t2.started_at IS NULL AND t2.ended_at IS NOT NULL
      AND t2.turn_number IS NOT NULL
) x
WHERE t.call_id = ANY($1::text[]) AND t.tenant IS NOT DISTINCT FROM $2 AND t.call_id = x.call_id AND t.tool_call_id = x.tool_call_id
  AND x.started_at IS NOT NULL;
