-- Derive, 2 of 6 — turns: which turn every span belongs to, who spoke when (speech intervals, for dead air
-- and barge-in), then one turns row per turn number from the facts of its spans (texts, the latency chain,
-- providers, tokens).

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
-- OFFSET 0 keeps each lookup a lookup: the tenant filter must not turn the plan around (a scan of the stored
-- table with the work table inside).
WITH found_rows AS MATERIALIZED (
    SELECT found.rel, found.row_id FROM derive_spans d
    CROSS JOIN LATERAL (SELECT tableoid AS rel, ctid AS row_id FROM spans
                        WHERE trace_id = d.trace_id AND span_id = d.span_id AND start_time = d.start_time
                          AND tenant IS NOT DISTINCT FROM $2 OFFSET 0) found
    WHERE d.turn_number IS DISTINCT FROM d.stored_turn_number
)
UPDATE spans s
SET turn_number = (SELECT d.turn_number FROM derive_spans d
                   WHERE d.trace_id = s.trace_id AND d.span_id = s.span_id AND d.start_time = s.start_time)
WHERE s.ctid = ANY (ARRAY(SELECT row_id FROM found_rows))
  -- a ctid names a row of one chunk: on a hypertable, another chunk's row has the same ctid
  AND s.tableoid::text || ':' || s.ctid::text = ANY (ARRAY(SELECT rel::text || ':' || row_id::text
                                                            FROM found_rows));

-- name: collect_speech
-- Who spoke when, for dead air and barge-in (design §10): each speaking span is an interval of its side;
-- a turn whose agent speech is known only by its first audio and the moment its audio stopped (Pipecat)
-- gets that interval.
INSERT INTO derive_speech (call_id, turn_number, side, s, e)
SELECT call_id, turn_number, facts->>'speech_side',
       callscope_us_ts(callscope_float(facts->>'speech_start_us')),
       callscope_us_ts(callscope_float(facts->>'speech_end_us'))
FROM derive_spans
WHERE facts->>'speech_side' IN ('user', 'agent')
  AND callscope_float(facts->>'speech_end_us') >= callscope_float(facts->>'speech_start_us')
UNION ALL
SELECT call_id, turn_number, 'agent',
       callscope_us_ts(min(coalesce(callscope_float(facts->>'agent_started_us'),
                                    callscope_float(facts->>'tts_first_audio_us')))),
       callscope_us_ts(max(callscope_float(facts->>'agent_speech_end_us')))
FROM derive_spans
WHERE turn_number IS NOT NULL
GROUP BY call_id, turn_number
HAVING NOT coalesce(bool_or(facts->>'speech_side' = 'agent'), false)
   AND max(callscope_float(facts->>'agent_speech_end_us'))
       >= min(coalesce(callscope_float(facts->>'agent_started_us'), callscope_float(facts->>'tts_first_audio_us')));

-- name: delete_vanished_turns
DELETE FROM turns t
WHERE t.call_id = ANY($1::text[]) AND t.tenant IS NOT DISTINCT FROM $2
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
    -- voice-to-voice from the best anchors the telemetry carries (docs/conventions.md, per framework): the
    -- agent's audio (else its first TTS byte, else the TTS request) after the user stopped (else the final
    -- transcript)
    SELECT t.*, coalesce(agent_started_at, tts_first_audio_at) AS agent_audio_at,
           extract(epoch FROM coalesce(agent_started_at, tts_first_audio_at, tts_request_at)
                              - coalesce(user_stopped_at, stt_final_at)) * 1000 AS v2v_anchored_ms
    FROM t
), gap AS (
    SELECT call_id, turn_number, side,
           extract(epoch FROM s - max(e) OVER (PARTITION BY call_id, turn_number ORDER BY s, e
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) * 1000 AS gap_ms
    FROM derive_speech WHERE turn_number IS NOT NULL
), dead AS (
    SELECT call_id, turn_number, greatest(coalesce(max(gap_ms), 0), 0) AS dead_air_ms,
           bool_or(side = 'user') AS user_spoke, bool_or(side = 'agent') AS agent_spoke
    FROM gap GROUP BY call_id, turn_number
), barge AS (
    -- a turn's agent speech and the first user speech that started inside it (the barge-in)
    SELECT a.call_id, a.turn_number, max(extract(epoch FROM a.e - u.s) * 1000) AS barge_in_stop_ms
    FROM derive_speech a
    JOIN derive_speech u ON u.call_id = a.call_id AND u.side = 'user' AND u.s > a.s AND u.s < a.e
    WHERE a.side = 'agent' AND a.turn_number IS NOT NULL
    GROUP BY a.call_id, a.turn_number
)
INSERT INTO turns (call_id, tenant, turn_number, started_at, ended_at, user_text, agent_text, interrupted,
    user_stopped_at, stt_final_at, llm_request_at, llm_first_token_at, tts_request_at, tts_first_audio_at,
    agent_started_at, eou_ms, stt_ms, stt_to_llm_ms, llm_ttft_ms, llm_to_tts_ms, tts_ttfb_ms,
    voice_to_voice_ms, reported_v2v_ms, llm_provider, llm_model, stt_provider, tts_provider,
    input_tokens, output_tokens, agent, dead_air_ms, barge_in_stop_ms)
SELECT m.call_id, $2, m.turn_number,
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
    CASE WHEN agent_audio_at IS NOT NULL AND user_stopped_at IS NOT NULL
         THEN extract(epoch FROM agent_audio_at - user_stopped_at) * 1000
         WHEN v2v_anchored_ms >= 0 THEN v2v_anchored_ms END,
    reported_v2v_ms, llm_provider, llm_model, stt_provider, tts_provider, input_tokens, output_tokens,
    (SELECT c.agent FROM calls c WHERE c.call_id = m.call_id AND c.tenant IS NOT DISTINCT FROM $2),
    -- NULL unless both sides' speech is known (a turn with no user part needs the agent's only)
    CASE WHEN d.agent_spoke AND (d.user_spoke OR (coalesce(turn_user_text, stage_user_text, prompt_text) IS NULL
                                                  AND user_stopped_at IS NULL AND stt_final_at IS NULL))
         THEN d.dead_air_ms END,
    CASE WHEN interrupted THEN b.barge_in_stop_ms END
FROM m
LEFT JOIN dead d ON d.call_id = m.call_id AND d.turn_number = m.turn_number
LEFT JOIN barge b ON b.call_id = m.call_id AND b.turn_number = m.turn_number
ON CONFLICT (call_id, tenant, turn_number) DO UPDATE SET
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
    input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
    dead_air_ms = EXCLUDED.dead_air_ms, barge_in_stop_ms = EXCLUDED.barge_in_stop_ms
WHERE (turns.started_at, turns.ended_at, turns.user_text, turns.agent_text, turns.interrupted,
       turns.user_stopped_at, turns.stt_final_at, turns.llm_request_at, turns.llm_first_token_at,
       turns.tts_request_at, turns.tts_first_audio_at, turns.agent_started_at, turns.eou_ms, turns.stt_ms,
       turns.stt_to_llm_ms, turns.llm_ttft_ms, turns.llm_to_tts_ms, turns.tts_ttfb_ms, turns.voice_to_voice_ms,
       turns.reported_v2v_ms, turns.llm_provider, turns.llm_model, turns.stt_provider, turns.tts_provider,
       turns.input_tokens, turns.output_tokens, turns.dead_air_ms, turns.barge_in_stop_ms)
      IS DISTINCT FROM
      (EXCLUDED.started_at, EXCLUDED.ended_at, EXCLUDED.user_text, EXCLUDED.agent_text, EXCLUDED.interrupted,
       EXCLUDED.user_stopped_at, EXCLUDED.stt_final_at, EXCLUDED.llm_request_at, EXCLUDED.llm_first_token_at,
       EXCLUDED.tts_request_at, EXCLUDED.tts_first_audio_at, EXCLUDED.agent_started_at, EXCLUDED.eou_ms,
       EXCLUDED.stt_ms, EXCLUDED.stt_to_llm_ms, EXCLUDED.llm_ttft_ms, EXCLUDED.llm_to_tts_ms,
       EXCLUDED.tts_ttfb_ms, EXCLUDED.voice_to_voice_ms, EXCLUDED.reported_v2v_ms, EXCLUDED.llm_provider,
       EXCLUDED.llm_model, EXCLUDED.stt_provider, EXCLUDED.tts_provider, EXCLUDED.input_tokens,
       EXCLUDED.output_tokens, EXCLUDED.dead_air_ms, EXCLUDED.barge_in_stop_ms);
