-- Derive, 6 of 6 — the call log: events take their span's turn, a turn's user message and the greeting are
-- derived from the turns, and a derived event the producer also sent itself is dropped.

-- name: link_events
-- An event takes its span's turn. Most are stored with it already (the span's turn was known when both were
-- mapped); only the others are written.
UPDATE derive_events e SET turn_number = s.turn_number
FROM derive_spans s
WHERE e.span_id IS NOT NULL AND s.trace_id = e.trace_id AND s.span_id = e.span_id AND s.call_id = e.call_id
  AND e.turn_number IS DISTINCT FROM s.turn_number;

-- name: store_event_turns
WITH found_rows AS MATERIALIZED (
    SELECT found.rel, found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT tableoid AS rel, ctid AS row_id FROM events
                        WHERE event_id = d.event_id AND time = d.time AND tenant IS NOT DISTINCT FROM $2 OFFSET 0) found
    WHERE d.turn_number IS DISTINCT FROM d.stored_turn_number
)
UPDATE events e
SET turn_number = (SELECT d.turn_number FROM derive_events d WHERE d.event_id = e.event_id AND d.time = e.time)
WHERE e.ctid = ANY (ARRAY(SELECT row_id FROM found_rows))
  -- a ctid names a row of one chunk: on a hypertable, another chunk's row has the same ctid
  AND e.tableoid::text || ':' || e.ctid::text = ANY (ARRAY(SELECT rel::text || ':' || row_id::text
                                                            FROM found_rows));

-- name: drop_changed_message_events
-- A turn whose user text no span reported as a final transcript (OpenInference's barge-in turn, a GenAI
-- invocation, …) gets its user.message_received from the turn (event id 'um-' + hash of call and turn):
-- such an event whose turn no longer needs it, or whose time or text changed, goes first.
WITH found_rows AS MATERIALIZED (
    SELECT found.rel, found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT tableoid AS rel, ctid AS row_id FROM events
                        WHERE event_id = d.event_id AND time = d.time AND tenant IS NOT DISTINCT FROM $2 OFFSET 0) found
    WHERE d.source = 'derived' AND d.event = 'user.message_received' AND d.event_id LIKE 'um-%'
      AND (NOT EXISTS (
          SELECT 1 FROM turns t
          WHERE t.call_id = d.call_id AND t.tenant IS NOT DISTINCT FROM $2 AND t.turn_number = d.turn_number AND t.user_text IS NOT NULL
            AND d.event_id = 'um-' || md5(t.call_id || '|' || t.turn_number)
            AND d.time = coalesce(t.stt_final_at, t.user_stopped_at, t.llm_request_at, t.started_at)
            AND d.message IS NOT DISTINCT FROM left(t.user_text, 500))
           OR EXISTS (SELECT 1 FROM derive_events o
                      WHERE o.call_id = d.call_id AND o.turn_number = d.turn_number
                        AND o.event = 'user.message_received' AND o.event_id NOT LIKE 'um-%'))
)
DELETE FROM events e
WHERE e.ctid = ANY (ARRAY(SELECT row_id FROM found_rows))
  -- a ctid names a row of one chunk: on a hypertable, another chunk's row has the same ctid
  AND e.tableoid::text || ':' || e.ctid::text = ANY (ARRAY(SELECT rel::text || ':' || row_id::text
                                                            FROM found_rows));

-- name: turn_message_events
INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, span_id, category, event, level,
                    message, data, source, turn_number, tenant)
SELECT coalesce(t.stt_final_at, t.user_stopped_at, t.llm_request_at, t.started_at),
       'um-' || md5(t.call_id || '|' || t.turn_number), t.call_id, true, NULL, NULL, 'user',
       'user.message_received', 'INFO', left(t.user_text, 500), jsonb_build_object('text', t.user_text),
       'derived', t.turn_number, t.tenant
FROM turns t
WHERE t.call_id = ANY ($1::text[]) AND t.tenant IS NOT DISTINCT FROM $2 AND t.user_text IS NOT NULL
  AND coalesce(t.stt_final_at, t.user_stopped_at, t.llm_request_at, t.started_at) IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM derive_events d
                  WHERE d.call_id = t.call_id AND d.turn_number = t.turn_number
                    AND d.event = 'user.message_received' AND d.event_id NOT LIKE 'um-%')
ON CONFLICT DO NOTHING;

-- name: greeting_candidates
-- An agent turn before any user speech is the greeting (design §5 (c)); one derived event per call.
-- Per call, its turns in order through the primary key (never a scan of other calls' turns).
INSERT INTO derive_greetings
SELECT ids.call_id, coalesce(g.agent_started_at, g.started_at), g.turn_number, g.agent_text
FROM unnest($1::text[]) AS ids(call_id)
CROSS JOIN LATERAL (
    SELECT t.* FROM turns t
    WHERE t.call_id = ids.call_id AND t.tenant IS NOT DISTINCT FROM $2 AND (t.user_text IS NOT NULL OR t.agent_text IS NOT NULL)
    ORDER BY t.turn_number LIMIT 1
) g
WHERE g.user_text IS NULL AND g.started_at IS NOT NULL;

-- name: drop_changed_greeting_events
WITH found_rows AS MATERIALIZED (
    SELECT found.rel, found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT tableoid AS rel, ctid AS row_id FROM events
                        WHERE event_id = d.event_id AND time = d.time AND tenant IS NOT DISTINCT FROM $2 OFFSET 0) found
    WHERE d.event = 'agent.greeting_sent' AND d.source = 'derived' AND d.event_id = md5('greeting|' || d.call_id)
      AND NOT EXISTS (SELECT 1 FROM derive_greetings g
                      WHERE g.call_id = d.call_id AND g.time = d.time
                        AND g.turn_number IS NOT DISTINCT FROM d.turn_number
                        AND left(g.agent_text, 500) IS NOT DISTINCT FROM d.message)
)
DELETE FROM events e
WHERE e.ctid = ANY (ARRAY(SELECT row_id FROM found_rows))
  -- a ctid names a row of one chunk: on a hypertable, another chunk's row has the same ctid
  AND e.tableoid::text || ':' || e.ctid::text = ANY (ARRAY(SELECT rel::text || ':' || row_id::text
                                                            FROM found_rows));

-- name: greeting_events
INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, span_id, category, event, level,
                    message, data, source, turn_number, tenant)
SELECT g.time, md5('greeting|' || g.call_id), g.call_id, true, NULL, NULL, 'agent', 'agent.greeting_sent', 'INFO',
       left(g.agent_text, 500), jsonb_build_object('text', g.agent_text), 'derived', g.turn_number, $2
FROM derive_greetings g
WHERE NOT EXISTS (SELECT 1 FROM derive_events d
                  WHERE d.call_id = g.call_id AND d.event_id = md5('greeting|' || g.call_id) AND d.time = g.time
                    AND d.turn_number IS NOT DISTINCT FROM g.turn_number
                    AND d.message IS NOT DISTINCT FROM left(g.agent_text, 500))
ON CONFLICT DO NOTHING;

-- name: drop_shadowed_derived_events
-- A derived event repeats what the producer said itself (e.g. call.completed or agent.interrupted sent as a
-- log record too): the producer's own event wins, so the call log shows it once.
WITH found_rows AS MATERIALIZED (
    SELECT found.rel, found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT tableoid AS rel, ctid AS row_id FROM events
                        WHERE event_id = d.event_id AND time = d.time AND tenant IS NOT DISTINCT FROM $2 OFFSET 0) found
    WHERE d.source = 'derived'
      AND EXISTS (SELECT 1 FROM derive_events e
                  WHERE e.source <> 'derived' AND e.call_id = d.call_id AND e.event = d.event
                    AND e.turn_number IS NOT DISTINCT FROM d.turn_number)
)
DELETE FROM events x
WHERE x.ctid = ANY (ARRAY(SELECT row_id FROM found_rows))
  -- a ctid names a row of one chunk: on a hypertable, another chunk's row has the same ctid
  AND x.tableoid::text || ':' || x.ctid::text = ANY (ARRAY(SELECT rel::text || ':' || row_id::text
                                                            FROM found_rows));
