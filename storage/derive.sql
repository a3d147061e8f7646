-- Storage: recompute the derived rows (turn numbers, turns, calls, tool-call/event turn links) of the calls a
-- derive worker claimed, from what is stored. $1 = text[] of call ids. Every statement is a pure function of the
-- stored spans and events, so the result does not depend on arrival order or on repeated batches.
--
-- Work is bounded by the claimed calls' own rows: load_spans / load_events copy them (through indexes) into
-- per-connection temporary tables, every later statement reads those, and the stored tables are written only
-- where a derived value really changed (turn numbers, turns, the call row), so a call derived again without new
-- data writes nothing. A span stored under its trace id before the span naming its call arrived is found through
-- call_traces; stored rows are never moved.
--
-- Values are read from jsonb with the callscope_* casts (storage/deriver.py), which give NULL for a value the
-- column cannot hold instead of failing the call.
--
-- Span facts (spans.facts, written by the mappers; times are epoch microseconds): storage/facts.py declares
-- every key, who writes it and which statement here reads it (tests/test_facts.py keeps the three in step).

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
    WHERE s1.call_id = ids.call_id
      AND (s1.call_id_explicit OR NOT EXISTS (
           SELECT 1 FROM call_traces k WHERE k.trace_id = s1.trace_id AND k.call_id <> ids.call_id))
    UNION ALL
    -- the call's traces as an array: each lookup then goes through an index whatever the planner estimates
    SELECT s2.* FROM spans s2
    WHERE s2.trace_id = ANY (ARRAY(SELECT k.trace_id FROM call_traces k WHERE k.call_id = ids.call_id))
      AND NOT s2.call_id_explicit AND s2.call_id <> ids.call_id
) s;

-- name: load_events
INSERT INTO derive_events (call_id, time, event_id, trace_id, span_id, event, level, message, data, source,
                           turn_number, stored_turn_number)
SELECT ids.call_id, e.time, e.event_id, e.trace_id, e.span_id, e.event, e.level, e.message, e.data, e.source,
       e.turn_number, e.turn_number
FROM unnest($1::text[]) AS ids(call_id)
CROSS JOIN LATERAL (
    SELECT * FROM events e1
    WHERE e1.call_id = ids.call_id
      AND (e1.call_id_explicit OR e1.trace_id IS NULL OR NOT EXISTS (
           SELECT 1 FROM call_traces k WHERE k.trace_id = e1.trace_id AND k.call_id <> ids.call_id))
    UNION ALL
    SELECT e2.* FROM events e2
    WHERE e2.trace_id = ANY (ARRAY(SELECT k.trace_id FROM call_traces k WHERE k.call_id = ids.call_id))
      AND NOT e2.call_id_explicit AND e2.call_id <> ids.call_id
) e;

-- name: number_implicit_turns
-- Turn spans whose convention has no turn index (e.g. GenAI invoke_agent) are numbered by start time.
-- Sibling user / agent turn spans (facts turn_role, LiveKit user_turn + agent_turn) share one number: an
-- agent turn joins the latest user turn that started before it and either carries the same turn_pair_key
-- (the user's transcript, within 30 s) or ended at most 2 s before the agent turn started (preemptive
-- generation starts the agent turn before the user turn ends). An agent turn with no such user turn
-- (greeting, generate_reply) is a turn of its own. Any span may ask for a number with turn_seq.
WITH seq AS (
    SELECT call_id, trace_id, span_id, start_time, end_time, facts->>'turn_role' AS role,
           facts->>'turn_pair_key' AS pair_key
    FROM derive_spans
    WHERE callscope_bool(facts->>'turn_seq')
), grouped AS (
    -- A join on call_id (hash join, pairs within one call) rather than a LATERAL subquery per span:
    -- the latter rescans every turn span of the batch for each one (quadratic in the batch).
    SELECT DISTINCT ON (a.trace_id, a.span_id, a.start_time)
           a.call_id, a.trace_id, a.span_id, a.start_time,
           coalesce(u.start_time, a.start_time) AS group_start, coalesce(u.span_id, a.span_id) AS group_span
    FROM seq a
    LEFT JOIN seq u
      ON a.role = 'agent' AND u.role = 'user' AND u.call_id = a.call_id AND u.start_time <= a.start_time
     AND ((a.pair_key IS NOT NULL AND u.pair_key = a.pair_key
           AND u.end_time >= a.start_time - interval '30 seconds')
          OR u.end_time >= a.start_time - interval '2 seconds')
    ORDER BY a.trace_id, a.span_id, a.start_time,
             (a.pair_key IS NOT NULL AND u.pair_key IS NOT DISTINCT FROM a.pair_key) DESC,
             u.start_time DESC NULLS LAST, u.span_id
), n AS (
    SELECT trace_id, span_id, start_time,
           dense_rank() OVER (PARTITION BY call_id ORDER BY group_start, group_span)::int AS turn_number
    FROM grouped
)
UPDATE derive_spans s SET turn_number = n.turn_number
FROM n
WHERE s.trace_id = n.trace_id AND s.span_id = n.span_id
  AND s.start_time = n.start_time AND s.turn_number IS DISTINCT FROM n.turn_number;

-- name: inherit_turn_numbers
-- A span without its own turn index belongs to the turn of its nearest ancestor turn span. Spans already
-- placed under an explicitly numbered turn keep their number (it cannot change); calls with start-time
-- numbered turns are walked in full, since a late earlier turn renumbers the rest.
WITH RECURSIVE s AS (
    SELECT call_id, trace_id, span_id, parent_span_id, start_time, turn_number,
           (stage = 'turn' OR coalesce(callscope_bool(facts->>'turn_explicit'), false)
            OR coalesce(callscope_bool(facts->>'turn_seq'), false)) AS anchored,
           coalesce(callscope_bool(facts->>'turn_seq'), false) AS numbered_by_time
    FROM derive_spans
), renumbered AS (
    SELECT DISTINCT call_id FROM s WHERE numbered_by_time
), walk AS (
    SELECT trace_id, span_id, start_time, parent_span_id AS cursor, NULL::int AS found, 0 AS depth
    FROM s
    WHERE NOT anchored AND (turn_number IS NULL OR call_id IN (SELECT call_id FROM renumbered))
    UNION ALL
    SELECT w.trace_id, w.span_id, w.start_time, p.parent_span_id,
           CASE WHEN p.anchored THEN p.turn_number END, w.depth + 1
    FROM walk w JOIN s p ON p.trace_id = w.trace_id AND p.span_id = w.cursor
    WHERE w.found IS NULL AND w.depth < 64
), resolved AS (
    SELECT trace_id, span_id, start_time, max(found) AS turn_number
    FROM walk GROUP BY trace_id, span_id, start_time
)
UPDATE derive_spans sp SET turn_number = r.turn_number
FROM resolved r
WHERE sp.trace_id = r.trace_id AND sp.span_id = r.span_id
  AND sp.start_time = r.start_time AND sp.turn_number IS DISTINCT FROM r.turn_number;

-- name: store_turn_numbers
-- Only the spans whose turn really changed are written. A stored table is never joined to a work table here:
-- its rows are found one by one from the work table (LATERAL, by identity index) and written by row id (a TID
-- scan), and the new value is looked up in the work table's index. PL/pgSQL keeps a statement's first plan for
-- the session, and a join planned when the work table looked small can read a whole index when it is not.
UPDATE spans s
SET turn_number = (SELECT d.turn_number FROM derive_spans d
                   WHERE d.trace_id = s.trace_id AND d.span_id = s.span_id AND d.start_time = s.start_time)
WHERE s.ctid = ANY (ARRAY(
    SELECT found.row_id FROM derive_spans d
    CROSS JOIN LATERAL (SELECT ctid AS row_id FROM spans
                        WHERE trace_id = d.trace_id AND span_id = d.span_id AND start_time = d.start_time) found
    WHERE d.turn_number IS DISTINCT FROM d.stored_turn_number));

-- name: adopt_tool_calls
-- Tool calls stored under a trace id before their trace named its call join that call (tool_calls is keyed by
-- call, and a tool call is small and rare next to spans).
WITH moved AS (
    DELETE FROM tool_calls t
    WHERE t.trace_id = ANY (ARRAY(SELECT c.trace_id FROM call_traces c WHERE c.call_id = ANY ($1::text[])))
      AND NOT t.call_id_explicit
      AND t.call_id <> (SELECT k.call_id FROM call_traces k WHERE k.trace_id = t.trace_id)
    RETURNING t.*, (SELECT k.call_id FROM call_traces k WHERE k.trace_id = t.trace_id) AS new_call_id
)
INSERT INTO tool_calls (call_id, turn_number, tool_call_id, tool_name, started_at, ended_at, duration_ms,
                        arguments, result, is_error, error, span_id, trace_id, call_id_explicit)
SELECT new_call_id, turn_number, tool_call_id, tool_name, started_at, ended_at, duration_ms, arguments,
       result, is_error, error, span_id, trace_id, call_id_explicit FROM moved
ON CONFLICT (call_id, tool_call_id) DO NOTHING;

-- name: link_tool_calls
UPDATE tool_calls t SET turn_number = s.turn_number
FROM derive_spans s
WHERE t.call_id = ANY($1::text[]) AND s.call_id = t.call_id AND s.trace_id = t.trace_id
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
    WHERE t2.call_id = ANY($1::text[]) AND t2.started_at IS NULL AND t2.ended_at IS NOT NULL
      AND t2.turn_number IS NOT NULL
) x
WHERE t.call_id = ANY($1::text[]) AND t.call_id = x.call_id AND t.tool_call_id = x.tool_call_id
  AND x.started_at IS NOT NULL;

-- name: link_events
-- An event takes its span's turn. Most are stored with it already (the span's turn was known when both were
-- mapped); only the others are written.
UPDATE derive_events e SET turn_number = s.turn_number
FROM derive_spans s
WHERE e.span_id IS NOT NULL AND s.trace_id = e.trace_id AND s.span_id = e.span_id AND s.call_id = e.call_id
  AND e.turn_number IS DISTINCT FROM s.turn_number;

-- name: store_event_turns
UPDATE events e
SET turn_number = (SELECT d.turn_number FROM derive_events d WHERE d.event_id = e.event_id AND d.time = e.time)
WHERE e.ctid = ANY (ARRAY(
    SELECT found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT ctid AS row_id FROM events WHERE event_id = d.event_id AND time = d.time) found
    WHERE d.turn_number IS DISTINCT FROM d.stored_turn_number));

-- name: delete_vanished_turns
DELETE FROM turns t
WHERE t.call_id = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM derive_spans s
                  WHERE s.call_id = t.call_id AND s.turn_number = t.turn_number AND s.facts IS NOT NULL);

-- name: upsert_turns
-- Written only where a turn changed; agent comes from the call row (copy_agent_to_turns fixes a new call's).
WITH f AS (
    SELECT call_id, turn_number, stage, start_time, end_time, facts, input_tokens, output_tokens
    FROM derive_spans
    WHERE turn_number IS NOT NULL AND facts IS NOT NULL
), t AS (
    SELECT call_id, turn_number,
        callscope_us_ts(min(callscope_float(facts->>'turn_start_us'))) AS turn_start,
        callscope_us_ts(max(callscope_float(facts->>'turn_end_us'))) AS turn_end,
        min(start_time) AS first_start, max(end_time) AS last_end,
        callscope_us_ts(min(callscope_float(facts->>'user_stopped_us'))) AS user_stopped_at,
        callscope_us_ts(min(callscope_float(facts->>'eou_us'))) AS eou_at,
        max(callscope_float(facts->>'eou_ms')) AS eou_ms,
        callscope_us_ts(max(callscope_float(facts->>'stt_final_us'))) AS stt_final_at,
        callscope_us_ts(min(callscope_float(facts->>'llm_request_us'))) AS llm_request_at,
        callscope_us_ts(min(callscope_float(facts->>'llm_first_token_us'))) AS llm_first_token_at,
        callscope_us_ts(min(callscope_float(facts->>'tts_request_us'))) AS tts_request_at,
        callscope_us_ts(min(callscope_float(facts->>'tts_first_audio_us'))) AS tts_first_audio_at,
        callscope_us_ts(min(callscope_float(facts->>'agent_started_us'))) AS agent_started_at,
        max(facts->>'user_text') FILTER (WHERE stage = 'turn') AS turn_user_text,
        string_agg(facts->>'user_text', ' ' ORDER BY start_time) FILTER (WHERE stage <> 'turn') AS stage_user_text,
        (array_agg(facts->>'prompt_text' ORDER BY start_time) FILTER (WHERE facts ? 'prompt_text'))[1] AS prompt_text,
        max(facts->>'agent_text') FILTER (WHERE stage = 'turn') AS turn_agent_text,
        string_agg(facts->>'agent_text', ' ' ORDER BY start_time) FILTER (WHERE stage <> 'turn') AS spoken_text,
        string_agg(facts->>'llm_text', ' ' ORDER BY start_time) AS llm_text,
        coalesce(bool_or(callscope_bool(facts->>'interrupted')), false) AS interrupted,
        max(callscope_float(facts->>'reported_v2v_ms')) AS reported_v2v_ms,
        (array_agg(facts->>'llm_provider' ORDER BY start_time) FILTER (WHERE facts ? 'llm_provider'))[1] AS llm_provider,
        (array_agg(facts->>'llm_model' ORDER BY start_time) FILTER (WHERE facts ? 'llm_model'))[1] AS llm_model,
        (array_agg(facts->>'stt_provider' ORDER BY start_time) FILTER (WHERE facts ? 'stt_provider'))[1] AS stt_provider,
        (array_agg(facts->>'tts_provider' ORDER BY start_time) FILTER (WHERE facts ? 'tts_provider'))[1] AS tts_provider,
        callscope_int4(sum(input_tokens) FILTER (WHERE stage = 'llm')) AS input_tokens,
        callscope_int4(sum(output_tokens) FILTER (WHERE stage = 'llm')) AS output_tokens
    FROM f GROUP BY call_id, turn_number
), m AS (
    SELECT t.*, coalesce(agent_started_at, tts_first_audio_at) AS agent_audio_at FROM t
)
INSERT INTO turns (call_id, turn_number, started_at, ended_at, user_text, agent_text, interrupted,
    user_stopped_at, stt_final_at, llm_request_at, llm_first_token_at, tts_request_at, tts_first_audio_at,
    agent_started_at, eou_ms, stt_ms, stt_to_llm_ms, llm_ttft_ms, llm_to_tts_ms, tts_ttfb_ms,
    voice_to_voice_ms, reported_v2v_ms, llm_provider, llm_model, stt_provider, tts_provider,
    input_tokens, output_tokens, agent)
SELECT m.call_id, turn_number,
    coalesce(turn_start, first_start), coalesce(turn_end, last_end),
    coalesce(turn_user_text, stage_user_text, prompt_text), coalesce(turn_agent_text, spoken_text, llm_text),
    interrupted,
    user_stopped_at, stt_final_at, llm_request_at, llm_first_token_at, tts_request_at, tts_first_audio_at,
    agent_audio_at,
    coalesce(eou_ms, extract(epoch FROM eou_at - user_stopped_at) * 1000),
    extract(epoch FROM stt_final_at - user_stopped_at) * 1000,
    extract(epoch FROM llm_request_at - stt_final_at) * 1000,
    extract(epoch FROM llm_first_token_at - llm_request_at) * 1000,
    extract(epoch FROM tts_request_at - llm_first_token_at) * 1000,
    extract(epoch FROM tts_first_audio_at - tts_request_at) * 1000,
    extract(epoch FROM agent_audio_at - user_stopped_at) * 1000,
    reported_v2v_ms, llm_provider, llm_model, stt_provider, tts_provider, input_tokens, output_tokens,
    (SELECT c.agent FROM calls c WHERE c.call_id = m.call_id)
FROM m
ON CONFLICT (call_id, turn_number) DO UPDATE SET
    started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, user_text = EXCLUDED.user_text,
    agent_text = EXCLUDED.agent_text, interrupted = EXCLUDED.interrupted,
    user_stopped_at = EXCLUDED.user_stopped_at, stt_final_at = EXCLUDED.stt_final_at,
    llm_request_at = EXCLUDED.llm_request_at, llm_first_token_at = EXCLUDED.llm_first_token_at,
    tts_request_at = EXCLUDED.tts_request_at, tts_first_audio_at = EXCLUDED.tts_first_audio_at,
    agent_started_at = EXCLUDED.agent_started_at, eou_ms = EXCLUDED.eou_ms, stt_ms = EXCLUDED.stt_ms,
    stt_to_llm_ms = EXCLUDED.stt_to_llm_ms, llm_ttft_ms = EXCLUDED.llm_ttft_ms,
    llm_to_tts_ms = EXCLUDED.llm_to_tts_ms, tts_ttfb_ms = EXCLUDED.tts_ttfb_ms,
    voice_to_voice_ms = EXCLUDED.voice_to_voice_ms, reported_v2v_ms = EXCLUDED.reported_v2v_ms,
    llm_provider = EXCLUDED.llm_provider, llm_model = EXCLUDED.llm_model,
    stt_provider = EXCLUDED.stt_provider, tts_provider = EXCLUDED.tts_provider,
    input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens
WHERE (turns.started_at, turns.ended_at, turns.user_text, turns.agent_text, turns.interrupted,
       turns.user_stopped_at, turns.stt_final_at, turns.llm_request_at, turns.llm_first_token_at,
       turns.tts_request_at, turns.tts_first_audio_at, turns.agent_started_at, turns.eou_ms, turns.stt_ms,
       turns.stt_to_llm_ms, turns.llm_ttft_ms, turns.llm_to_tts_ms, turns.tts_ttfb_ms, turns.voice_to_voice_ms,
       turns.reported_v2v_ms, turns.llm_provider, turns.llm_model, turns.stt_provider, turns.tts_provider,
       turns.input_tokens, turns.output_tokens)
      IS DISTINCT FROM
      (EXCLUDED.started_at, EXCLUDED.ended_at, EXCLUDED.user_text, EXCLUDED.agent_text, EXCLUDED.interrupted,
       EXCLUDED.user_stopped_at, EXCLUDED.stt_final_at, EXCLUDED.llm_request_at, EXCLUDED.llm_first_token_at,
       EXCLUDED.tts_request_at, EXCLUDED.tts_first_audio_at, EXCLUDED.agent_started_at, EXCLUDED.eou_ms,
       EXCLUDED.stt_ms, EXCLUDED.stt_to_llm_ms, EXCLUDED.llm_ttft_ms, EXCLUDED.llm_to_tts_ms,
       EXCLUDED.tts_ttfb_ms, EXCLUDED.voice_to_voice_ms, EXCLUDED.reported_v2v_ms, EXCLUDED.llm_provider,
       EXCLUDED.llm_model, EXCLUDED.stt_provider, EXCLUDED.tts_provider, EXCLUDED.input_tokens,
       EXCLUDED.output_tokens);

-- name: delete_vanished_calls
-- A call whose rows all moved to another call id (its trace named its call later) disappears.
DELETE FROM calls c
WHERE c.call_id = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM derive_spans s WHERE s.call_id = c.call_id)
  AND NOT EXISTS (SELECT 1 FROM derive_events e WHERE e.call_id = c.call_id);

-- name: upsert_calls
WITH ids AS (
    SELECT DISTINCT unnest($1::text[]) AS call_id
), sp AS (
    SELECT call_id,
        min(start_time) AS first_at, max(end_time) AS last_at,
        array_agg(DISTINCT trace_id ORDER BY trace_id) AS trace_ids,
        count(*) FILTER (WHERE status_code = 2) AS error_spans,
        (array_agg(facts->>'direction' ORDER BY end_time DESC) FILTER (WHERE facts ? 'direction'))[1] AS direction,
        (array_agg(facts->>'campaign' ORDER BY end_time DESC) FILTER (WHERE facts ? 'campaign'))[1] AS campaign,
        (array_agg(facts->>'agent' ORDER BY end_time DESC) FILTER (WHERE facts ? 'agent'))[1] AS agent,
        (array_agg(facts->>'status_reason' ORDER BY end_time DESC) FILTER (WHERE facts ? 'status_reason'))[1] AS status_reason,
        (array_agg(facts->>'from_number' ORDER BY end_time DESC) FILTER (WHERE facts ? 'from_number'))[1] AS from_number,
        (array_agg(facts->>'to_number' ORDER BY end_time DESC) FILTER (WHERE facts ? 'to_number'))[1] AS to_number,
        (array_agg(facts->>'summary' ORDER BY end_time DESC) FILTER (WHERE facts ? 'summary'))[1] AS summary,
        (array_agg(facts->>'recording_url' ORDER BY end_time DESC) FILTER (WHERE facts ? 'recording_url'))[1] AS recording_url,
        (array_agg(facts->>'currency' ORDER BY end_time DESC) FILTER (WHERE facts ? 'currency'))[1] AS currency,
        (array_agg(facts->'tags' ORDER BY end_time DESC) FILTER (WHERE facts ? 'tags'))[1] AS tags,
        (array_agg(facts->'extracted' ORDER BY end_time DESC) FILTER (WHERE facts ? 'extracted'))[1] AS extracted,
        (array_agg(callscope_float(facts->>'cost_total') ORDER BY end_time DESC) FILTER (WHERE facts ? 'cost_total'))[1] AS cost_reported,
        (array_agg(callscope_int(facts->>'sip_code') ORDER BY end_time DESC) FILTER (WHERE facts ? 'sip_code'))[1] AS sip_code,
        callscope_us_ts(max(callscope_float(facts->>'session_end_us'))) AS session_end,
        (array_agg(facts->>'session_error' ORDER BY end_time DESC) FILTER (WHERE facts ? 'session_error'))[1] AS session_error,
        sum(callscope_float(facts->>'cost_stt') ORDER BY trace_id, span_id) AS cost_stt,
        sum(callscope_float(facts->>'cost_llm') ORDER BY trace_id, span_id) AS cost_llm,
        sum(callscope_float(facts->>'cost_tts') ORDER BY trace_id, span_id) AS cost_tts,
        mode() WITHIN GROUP (ORDER BY framework) FILTER (WHERE framework <> 'unknown') AS framework,
        (array_agg(session_attributes ORDER BY start_time) FILTER (WHERE stage = 'session'))[1] AS session_attributes
    FROM derive_spans GROUP BY call_id
), ev AS (
    SELECT call_id,
        min(time) AS first_at, max(time) AS last_at,
        count(*) FILTER (WHERE level IN ('ERROR', 'CRITICAL') AND source <> 'derived') AS error_events,
        (array_agg(data->>'call.direction' ORDER BY time DESC) FILTER (WHERE data ? 'call.direction'))[1] AS direction,
        (array_agg(data->>'call.campaign' ORDER BY time DESC) FILTER (WHERE data ? 'call.campaign'))[1] AS campaign,
        (array_agg(data->>'call.agent' ORDER BY time DESC) FILTER (WHERE data ? 'call.agent'))[1] AS agent,
        (array_agg(data->>'call.from' ORDER BY time DESC) FILTER (WHERE data ? 'call.from'))[1] AS from_number,
        (array_agg(data->>'call.to' ORDER BY time DESC) FILTER (WHERE data ? 'call.to'))[1] AS to_number,
        (array_agg(coalesce(data->>'call.status_reason', message) ORDER BY time DESC)
            FILTER (WHERE data ? 'call.status_reason'
                    OR (event IN ('call.failed', 'call.declined', 'call.missed') AND source <> 'derived')))[1] AS status_reason,
        (array_agg(callscope_int(data->>'sip.response.code') ORDER BY time DESC)
            FILTER (WHERE callscope_int(data->>'sip.response.code') IS NOT NULL))[1] AS sip_code,
        max(time) FILTER (WHERE event IN ('call.completed', 'call.failed', 'call.declined', 'call.missed')
                          AND source <> 'derived') AS terminal_at
    FROM derive_events GROUP BY call_id
), said AS (
    -- statuses stated explicitly: call.status attributes and lifecycle events (design §4: these win)
    SELECT call_id, end_time AS at, facts->>'status' AS status
    FROM derive_spans WHERE facts ? 'status'
    UNION ALL
    SELECT call_id, time, lower(data->>'call.status')
    FROM derive_events WHERE data ? 'call.status'
    UNION ALL
    SELECT call_id, time, CASE event
        WHEN 'call.queued' THEN 'queued' WHEN 'call.ringing' THEN 'ringing' WHEN 'call.answered' THEN 'active'
        WHEN 'call.completed' THEN 'completed' WHEN 'call.failed' THEN 'failed'
        WHEN 'call.declined' THEN 'declined' WHEN 'call.missed' THEN 'missed' END
    FROM derive_events
    WHERE source <> 'derived'
      AND event IN ('call.queued', 'call.ringing', 'call.answered', 'call.completed', 'call.failed',
                    'call.declined', 'call.missed')
), st AS (
    SELECT call_id,
        (array_agg(status ORDER BY at DESC, status)
            FILTER (WHERE status IN ('completed', 'failed', 'declined', 'missed')))[1] AS terminal,
        (array_agg(status ORDER BY at DESC, status)
            FILTER (WHERE status IN ('queued', 'ringing', 'active')))[1] AS live
    FROM said GROUP BY call_id
), tu AS (
    SELECT call_id, count(*) AS turns, count(*) FILTER (WHERE interrupted) AS interruptions
    FROM turns WHERE call_id = ANY($1::text[]) GROUP BY call_id
), tc AS (
    SELECT call_id, count(*) AS tools FROM tool_calls WHERE call_id = ANY($1::text[]) GROUP BY call_id
), base AS (
    SELECT ids.call_id, sp.trace_ids,
        least(sp.first_at, ev.first_at) AS started_at,
        greatest(sp.last_at, ev.last_at) AS last_seen_at,
        coalesce(sp.sip_code, ev.sip_code) AS sip_code,
        sp.session_end, sp.session_error, ev.terminal_at, st.terminal, st.live,
        coalesce(sp.direction, ev.direction) AS direction,
        coalesce(sp.campaign, ev.campaign) AS campaign,
        coalesce(sp.agent, ev.agent) AS agent,
        sp.framework,
        coalesce(sp.from_number, ev.from_number) AS from_number,
        coalesce(sp.to_number, ev.to_number) AS to_number,
        coalesce(tu.turns, 0) AS turn_count, coalesce(tu.interruptions, 0) AS interruption_count,
        coalesce(tc.tools, 0) AS tool_call_count,
        (coalesce(sp.error_spans, 0) + coalesce(ev.error_events, 0))::int AS error_count,
        sp.cost_reported, sp.cost_stt, sp.cost_llm, sp.cost_tts, sp.currency,
        sp.summary, sp.tags, sp.extracted, sp.recording_url, sp.session_attributes,
        coalesce(sp.status_reason, ev.status_reason) AS status_reason
    FROM ids
    LEFT JOIN sp ON sp.call_id = ids.call_id
    LEFT JOIN ev ON ev.call_id = ids.call_id
    LEFT JOIN st ON st.call_id = ids.call_id
    LEFT JOIN tu ON tu.call_id = ids.call_id
    LEFT JOIN tc ON tc.call_id = ids.call_id
    WHERE sp.call_id IS NOT NULL OR ev.call_id IS NOT NULL
), decided AS (
    SELECT base.*,
        coalesce(
            terminal,
            CASE WHEN sip_code IN (486, 600, 603) THEN 'declined'
                 WHEN sip_code IN (408, 480, 487) THEN 'missed'
                 WHEN sip_code >= 400 THEN 'failed' END,
            CASE WHEN session_end IS NOT NULL THEN
                 CASE WHEN session_error IS NOT NULL THEN 'failed' ELSE 'completed' END END,
            live, 'active') AS status
    FROM base
), ended AS (
    SELECT decided.*,
        CASE WHEN status IN ('completed', 'failed', 'declined', 'missed')
             THEN coalesce(session_end, terminal_at, last_seen_at) END AS ended_at
    FROM decided
), priced AS (
    -- telephony: the ended call's duration × its direction's rate (telephony_rates, filled from the price
    -- table at collector startup; a zero rate means no cost)
    SELECT ended.*,
        CASE WHEN ended.ended_at IS NOT NULL THEN
             extract(epoch FROM ended.ended_at - ended.started_at) / 60.0 * nullif(r.per_minute, 0)
        END AS cost_phone
    FROM ended LEFT JOIN telephony_rates r ON r.direction = ended.direction
)
INSERT INTO calls AS c (call_id, trace_ids, started_at, ended_at, last_seen_at, duration_s, status,
    status_reason, direction, campaign, agent, framework, from_number, to_number, turn_count,
    interruption_count, tool_call_count, error_count, cost_total, cost_stt, cost_llm, cost_tts,
    cost_telephony, currency, summary, tags, extracted, recording_url, attributes, updated_at)
SELECT call_id, coalesce(trace_ids, '{}'), started_at, ended_at, last_seen_at,
    extract(epoch FROM ended_at - started_at),
    status,
    coalesce(status_reason,
             CASE WHEN status = 'failed' AND session_error IS NOT NULL THEN session_error END,
             CASE WHEN sip_code >= 400 AND status IN ('failed', 'declined', 'missed') THEN 'SIP ' || sip_code END),
    direction, campaign, agent, framework, from_number, to_number, turn_count, interruption_count,
    tool_call_count, error_count,
    coalesce(cost_reported,
             CASE WHEN num_nonnulls(cost_stt, cost_llm, cost_tts, cost_phone) > 0 THEN
                  coalesce(cost_stt, 0) + coalesce(cost_llm, 0) + coalesce(cost_tts, 0) + coalesce(cost_phone, 0)
             END),
    cost_stt, cost_llm, cost_tts, cost_phone,
    CASE WHEN currency IS NOT NULL THEN currency
         WHEN num_nonnulls(cost_reported, cost_stt, cost_llm, cost_tts, cost_phone) > 0 THEN 'USD' END,
    summary,
    CASE WHEN jsonb_typeof(tags) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(tags)) END,
    extracted, recording_url, session_attributes, now()
FROM priced
ON CONFLICT (call_id) DO UPDATE SET
    trace_ids = EXCLUDED.trace_ids, started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
    last_seen_at = EXCLUDED.last_seen_at, duration_s = EXCLUDED.duration_s, status = EXCLUDED.status,
    status_reason = EXCLUDED.status_reason, direction = EXCLUDED.direction, campaign = EXCLUDED.campaign,
    agent = EXCLUDED.agent, framework = EXCLUDED.framework, from_number = EXCLUDED.from_number,
    to_number = EXCLUDED.to_number, turn_count = EXCLUDED.turn_count,
    interruption_count = EXCLUDED.interruption_count, tool_call_count = EXCLUDED.tool_call_count,
    error_count = EXCLUDED.error_count, cost_total = EXCLUDED.cost_total, cost_stt = EXCLUDED.cost_stt,
    cost_llm = EXCLUDED.cost_llm, cost_tts = EXCLUDED.cost_tts, cost_telephony = EXCLUDED.cost_telephony,
    currency = EXCLUDED.currency, summary = EXCLUDED.summary, tags = EXCLUDED.tags,
    extracted = EXCLUDED.extracted, recording_url = EXCLUDED.recording_url,
    attributes = EXCLUDED.attributes, updated_at = now(), stale = false
WHERE (c.trace_ids, c.started_at, c.ended_at, c.last_seen_at, c.duration_s, c.status, c.status_reason,
       c.direction, c.campaign, c.agent, c.framework, c.from_number, c.to_number, c.turn_count,
       c.interruption_count, c.tool_call_count, c.error_count, c.cost_total, c.cost_stt, c.cost_llm, c.cost_tts,
       c.cost_telephony, c.currency, c.summary, c.tags, c.extracted, c.recording_url, c.attributes)
      IS DISTINCT FROM
      (EXCLUDED.trace_ids, EXCLUDED.started_at, EXCLUDED.ended_at, EXCLUDED.last_seen_at, EXCLUDED.duration_s,
       EXCLUDED.status, EXCLUDED.status_reason, EXCLUDED.direction, EXCLUDED.campaign, EXCLUDED.agent,
       EXCLUDED.framework, EXCLUDED.from_number, EXCLUDED.to_number, EXCLUDED.turn_count,
       EXCLUDED.interruption_count, EXCLUDED.tool_call_count, EXCLUDED.error_count, EXCLUDED.cost_total,
       EXCLUDED.cost_stt, EXCLUDED.cost_llm, EXCLUDED.cost_tts, EXCLUDED.cost_telephony, EXCLUDED.currency,
       EXCLUDED.summary, EXCLUDED.tags, EXCLUDED.extracted, EXCLUDED.recording_url, EXCLUDED.attributes);

-- name: copy_agent_to_turns
UPDATE turns t SET agent = (SELECT c.agent FROM calls c WHERE c.call_id = t.call_id)
WHERE t.call_id = ANY($1::text[])
  AND t.agent IS DISTINCT FROM (SELECT c.agent FROM calls c WHERE c.call_id = t.call_id);

-- name: greeting_candidates
-- An agent turn before any user speech is the greeting (design §5 (c)); one derived event per call.
-- Per call, its turns in order through the primary key (never a scan of other calls' turns).
INSERT INTO derive_greetings
SELECT ids.call_id, coalesce(g.agent_started_at, g.started_at), g.turn_number, g.agent_text
FROM unnest($1::text[]) AS ids(call_id)
CROSS JOIN LATERAL (
    SELECT t.* FROM turns t
    WHERE t.call_id = ids.call_id AND (t.user_text IS NOT NULL OR t.agent_text IS NOT NULL)
    ORDER BY t.turn_number LIMIT 1
) g
WHERE g.user_text IS NULL AND g.started_at IS NOT NULL;

-- name: drop_changed_greeting_events
DELETE FROM events e
WHERE e.ctid = ANY (ARRAY(
    SELECT found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT ctid AS row_id FROM events WHERE event_id = d.event_id AND time = d.time) found
    WHERE d.event = 'agent.greeting_sent' AND d.source = 'derived' AND d.event_id = md5('greeting|' || d.call_id)
      AND NOT EXISTS (SELECT 1 FROM derive_greetings g
                      WHERE g.call_id = d.call_id AND g.time = d.time
                        AND g.turn_number IS NOT DISTINCT FROM d.turn_number
                        AND left(g.agent_text, 500) IS NOT DISTINCT FROM d.message)));

-- name: greeting_events
INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, span_id, category, event, level,
                    message, data, source, turn_number)
SELECT g.time, md5('greeting|' || g.call_id), g.call_id, true, NULL, NULL, 'agent', 'agent.greeting_sent', 'INFO',
       left(g.agent_text, 500), jsonb_build_object('text', g.agent_text), 'derived', g.turn_number
FROM derive_greetings g
WHERE NOT EXISTS (SELECT 1 FROM derive_events d
                  WHERE d.call_id = g.call_id AND d.event_id = md5('greeting|' || g.call_id) AND d.time = g.time
                    AND d.turn_number IS NOT DISTINCT FROM g.turn_number
                    AND d.message IS NOT DISTINCT FROM left(g.agent_text, 500))
ON CONFLICT DO NOTHING;

-- name: drop_shadowed_derived_events
-- A derived event repeats what the producer said itself (e.g. call.completed or agent.interrupted sent as a
-- log record too): the producer's own event wins, so the call log shows it once.
DELETE FROM events x
WHERE x.ctid = ANY (ARRAY(
    SELECT found.row_id FROM derive_events d
    CROSS JOIN LATERAL (SELECT ctid AS row_id FROM events WHERE event_id = d.event_id AND time = d.time) found
    WHERE d.source = 'derived'
      AND EXISTS (SELECT 1 FROM derive_events e
                  WHERE e.source <> 'derived' AND e.call_id = d.call_id AND e.event = d.event
                    AND e.turn_number IS NOT DISTINCT FROM d.turn_number)));
