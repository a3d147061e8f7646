-- Derive, 4 of 6 — calls and their status: one calls row per call from its spans' facts, its events, its
-- turns and tool calls. Status follows design §4 (a stated status wins, then SIP codes, then the session span).
-- Cost is cost.sql's (next): this file writes every column of the row but the cost columns.

-- name: delete_vanished_calls
-- A call whose rows all moved to another call id (its trace named its call later) disappears.
DELETE FROM calls c
WHERE c.call_id = ANY($1::text[]) AND c.tenant IS NOT DISTINCT FROM $2
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
        (array_agg(facts->'tags' ORDER BY end_time DESC) FILTER (WHERE facts ? 'tags'))[1] AS tags,
        (array_agg(facts->'extracted' ORDER BY end_time DESC) FILTER (WHERE facts ? 'extracted'))[1] AS extracted,
        (array_agg(callscope_int(facts->>'sip_code') ORDER BY end_time DESC) FILTER (WHERE facts ? 'sip_code'))[1] AS sip_code,
        callscope_us_ts(max(callscope_float(facts->>'session_end_us'))) AS session_end,
        (array_agg(facts->>'session_error' ORDER BY end_time DESC) FILTER (WHERE facts ? 'session_error'))[1] AS session_error,
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
                          AND source <> 'derived') AS terminal_at,
        bool_or(event IN ('transfer.completed', 'tool.transfer.completed', 'transfer.human_answered'))
            AS transfer_event
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
            FILTER (WHERE status IN ('queued', 'ringing', 'active')))[1] AS live,
        (array_agg(status ORDER BY at DESC, status))[1] AS latest,
        max(at) AS latest_at
    FROM said GROUP BY call_id
), tu AS (
    SELECT call_id, count(*) AS turns, count(*) FILTER (WHERE interrupted) AS interruptions,
           count(barge_in_stop_ms) AS barge_ins
    FROM turns WHERE call_id = ANY($1::text[]) AND tenant IS NOT DISTINCT FROM $2 GROUP BY call_id
), cgap AS (
    SELECT call_id, side,
           extract(epoch FROM s - max(e) OVER (PARTITION BY call_id ORDER BY s, e
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) * 1000 AS gap_ms
    FROM derive_speech
), sil AS (
    -- stretches where neither side speaks, between the call's first and last speech (both sides known)
    SELECT call_id, coalesce(sum(greatest(gap_ms, 0)), 0) / 1000 AS dead_air_total_s,
           greatest(coalesce(max(gap_ms), 0), 0) AS longest_silence_ms
    FROM cgap GROUP BY call_id
    HAVING bool_or(side = 'user') AND bool_or(side = 'agent')
), tc AS (
    -- transferred (campaign funnels): a successful tool call whose name says transfer, or a transfer event
    SELECT call_id, count(*) AS tools,
           bool_or(NOT is_error AND tool_name ILIKE '%transfer%') AS transfer_tool
    FROM tool_calls WHERE call_id = ANY($1::text[]) AND tenant IS NOT DISTINCT FROM $2
    GROUP BY call_id
), base AS (
    SELECT ids.call_id, sp.trace_ids,
        least(sp.first_at, ev.first_at) AS started_at,
        greatest(sp.last_at, ev.last_at) AS last_seen_at,
        coalesce(sp.sip_code, ev.sip_code) AS sip_code,
        sp.session_end, sp.session_error, ev.terminal_at, st.terminal, st.live, st.latest, st.latest_at,
        coalesce(sp.direction, ev.direction) AS direction,
        coalesce(sp.campaign, ev.campaign) AS campaign,
        coalesce(sp.agent, ev.agent) AS agent,
        sp.framework, sil.dead_air_total_s, sil.longest_silence_ms,
        CASE WHEN sil.call_id IS NOT NULL THEN coalesce(tu.barge_ins, 0) END AS barge_in_count,
        coalesce(sp.from_number, ev.from_number) AS from_number,
        coalesce(sp.to_number, ev.to_number) AS to_number,
        coalesce(tu.turns, 0) AS turn_count, coalesce(tu.interruptions, 0) AS interruption_count,
        coalesce(tc.tools, 0) AS tool_call_count,
        coalesce(tc.transfer_tool, false) OR coalesce(ev.transfer_event, false) AS transferred,
        (coalesce(sp.error_spans, 0) + coalesce(ev.error_events, 0))::int AS error_count,
        sp.summary, sp.tags, sp.extracted, sp.recording_url, sp.session_attributes,
        coalesce(sp.status_reason, ev.status_reason) AS status_reason
    FROM ids
    LEFT JOIN sp ON sp.call_id = ids.call_id
    LEFT JOIN ev ON ev.call_id = ids.call_id
    LEFT JOIN st ON st.call_id = ids.call_id
    LEFT JOIN tu ON tu.call_id = ids.call_id
    LEFT JOIN tc ON tc.call_id = ids.call_id
    LEFT JOIN sil ON sil.call_id = ids.call_id
    WHERE sp.call_id IS NOT NULL OR ev.call_id IS NOT NULL
), decided AS (
    SELECT base.*,
        coalesce(
            terminal,
            CASE WHEN sip_code IN (486, 600, 603) THEN 'declined'
                 WHEN sip_code IN (408, 480, 487) THEN 'missed'
                 WHEN sip_code >= 400 THEN 'failed' END,
            -- an explicit queued / ringing, said last and by the time the session ended, wins over
            -- "ended → completed" (design §4) for a call that had no conversation
            CASE WHEN latest IN ('queued', 'ringing') AND turn_count = 0
                      AND latest_at <= coalesce(session_end, latest_at) + interval '1 second' THEN latest END,
            CASE WHEN session_end IS NOT NULL THEN
                 CASE WHEN session_error IS NOT NULL THEN 'failed' ELSE 'completed' END END,
            live, 'active') AS status
    FROM base
), ended AS (
    SELECT decided.*,
        CASE WHEN status IN ('completed', 'failed', 'declined', 'missed')
             THEN coalesce(session_end, terminal_at, last_seen_at) END AS ended_at
    FROM decided
)
INSERT INTO calls AS c (call_id, tenant, trace_ids, started_at, ended_at, last_seen_at, duration_s, status,
    status_reason, direction, campaign, agent, framework, from_number, to_number, turn_count,
    interruption_count, tool_call_count, error_count, summary, tags, extracted, recording_url, attributes, dead_air_total_s,
    longest_silence_ms, barge_in_count, transferred, updated_at)
SELECT call_id, $2, coalesce(trace_ids, '{}'), started_at, ended_at, last_seen_at,
    extract(epoch FROM ended_at - started_at),
    status,
    coalesce(status_reason,
             CASE WHEN status = 'failed' AND session_error IS NOT NULL THEN session_error END,
             CASE WHEN sip_code >= 400 AND status IN ('failed', 'declined', 'missed') THEN 'SIP ' || sip_code END),
    direction, campaign, agent, framework, from_number, to_number, turn_count, interruption_count,
    tool_call_count, error_count, summary,
    CASE WHEN jsonb_typeof(tags) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(tags)) END,
    extracted, recording_url, session_attributes, dead_air_total_s, longest_silence_ms, barge_in_count, transferred, now()
FROM ended
ON CONFLICT (call_id, tenant) DO UPDATE SET
    trace_ids = EXCLUDED.trace_ids, started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
    last_seen_at = EXCLUDED.last_seen_at, duration_s = EXCLUDED.duration_s, status = EXCLUDED.status,
    status_reason = EXCLUDED.status_reason, direction = EXCLUDED.direction, campaign = EXCLUDED.campaign,
    agent = EXCLUDED.agent, framework = EXCLUDED.framework, from_number = EXCLUDED.from_number,
    to_number = EXCLUDED.to_number, turn_count = EXCLUDED.turn_count,
    interruption_count = EXCLUDED.interruption_count, tool_call_count = EXCLUDED.tool_call_count,
    error_count = EXCLUDED.error_count, summary = EXCLUDED.summary, tags = EXCLUDED.tags,
    extracted = EXCLUDED.extracted, recording_url = EXCLUDED.recording_url,
    attributes = EXCLUDED.attributes, dead_air_total_s = EXCLUDED.dead_air_total_s,
    longest_silence_ms = EXCLUDED.longest_silence_ms, barge_in_count = EXCLUDED.barge_in_count,
    transferred = EXCLUDED.transferred, updated_at = now(), stale = false
WHERE (c.trace_ids, c.started_at, c.ended_at, c.last_seen_at, c.duration_s, c.status, c.status_reason,
       c.direction, c.campaign, c.agent, c.framework, c.from_number, c.to_number, c.turn_count,
       c.interruption_count, c.tool_call_count, c.error_count, c.summary, c.tags, c.extracted, c.recording_url, c.attributes,
       c.dead_air_total_s, c.longest_silence_ms, c.barge_in_count, c.transferred)
      IS DISTINCT FROM
      (EXCLUDED.trace_ids, EXCLUDED.started_at, EXCLUDED.ended_at, EXCLUDED.last_seen_at, EXCLUDED.duration_s,
       EXCLUDED.status, EXCLUDED.status_reason, EXCLUDED.direction, EXCLUDED.campaign, EXCLUDED.agent,
       EXCLUDED.framework, EXCLUDED.from_number, EXCLUDED.to_number, EXCLUDED.turn_count,
       EXCLUDED.interruption_count, EXCLUDED.tool_call_count, EXCLUDED.error_count, EXCLUDED.summary, EXCLUDED.tags, EXCLUDED.extracted, EXCLUDED.recording_url, EXCLUDED.attributes,
       EXCLUDED.dead_air_total_s, EXCLUDED.longest_silence_ms, EXCLUDED.barge_in_count, EXCLUDED.transferred);

-- name: copy_agent_to_turns
UPDATE turns t SET agent = (SELECT c.agent FROM calls c WHERE c.call_id = t.call_id AND c.tenant = t.tenant)
WHERE t.call_id = ANY($1::text[]) AND t.tenant IS NOT DISTINCT FROM $2
  AND t.agent IS DISTINCT FROM (SELECT c.agent FROM calls c WHERE c.call_id = t.call_id AND c.tenant = t.tenant);
