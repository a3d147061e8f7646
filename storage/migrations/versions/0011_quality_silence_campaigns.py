"""Telemetry quality, silence and barge-in, campaign funnels (design §10)

* ``turns.dead_air_ms``: the longest stretch inside the turn where neither side speaks (speaking spans and
  events); ``turns.barge_in_stop_ms``: the user starts speaking during agent speech → the agent's audio
  stops (NULL without a barge-in).
* ``calls.dead_air_total_s`` / ``calls.longest_silence_ms``: every / the longest stretch of the call where
  neither side speaks, between its first and last speech; ``calls.barge_in_count``: turns with a barge-in.
  NULL where the framework emits no speaking signal (docs/conventions.md says which do).
* view ``call_quality``: one row per call, one column per telemetry-quality finding (docs/dashboards.md).
  Every column is a subquery keyed by the call (its spans through ``callscope_call_spans``, its turns by the
  primary key): selecting some calls by time or id reads those calls' rows only.
* view ``campaign_funnel``: per campaign and UTC day, calls by outcome, cost and p95 voice-to-voice; the
  index ``calls_day_campaign_idx`` serves a filter on ``day``.

Revision ID: 0011_quality_silence_campaigns
Revises: 0006_turn_rollup
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_quality_silence_campaigns"
down_revision = "0006_turn_rollup"
branch_labels = None
depends_on = None

READER = "callscope_reader"

#: A child span starting this long before its parent counts as clock skew (frameworks backdate some children
#: by a few hundred ms: Pipecat's stt to the start of speech, LiveKit's user_speaking).
SKEW_TOLERANCE = "1 second"
#: An active call with no telemetry for this long has gone silent (the collector also flags it ``stale``
#: after its idle timeout).
SILENT_AFTER = "5 minutes"

CALL_QUALITY = f"""
CREATE OR REPLACE VIEW call_quality AS
SELECT q.*,
       q.turns_missing_stage + q.orphan_spans + q.spans_ending_before_start + q.clock_skew_spans
       + q.uncorrelated_log_records + q.gone_silent::int AS findings
FROM (
  SELECT c.call_id, c.started_at, c.last_seen_at, c.status, c.framework, c.agent, c.campaign,
    -- turns missing a stage (STT for a turn the user spoke in, LLM, TTS for a reply that was not cut off)
    -- that other turns of the call have
    coalesce((SELECT count(*) FILTER (
                  WHERE (x.stt_final_at IS NULL AND x.user_text IS NOT NULL AND x.any_stt)
                     OR (x.llm_request_at IS NULL AND x.any_llm)
                     OR (x.tts_request_at IS NULL AND NOT x.interrupted AND x.any_tts))
              FROM (SELECT t.stt_final_at, t.user_text, t.llm_request_at, t.tts_request_at, t.interrupted,
                           bool_or(t.stt_final_at IS NOT NULL) OVER () AS any_stt,
                           bool_or(t.llm_request_at IS NOT NULL) OVER () AS any_llm,
                           bool_or(t.tts_request_at IS NOT NULL) OVER () AS any_tts
                    FROM turns t WHERE t.call_id = c.call_id) x), 0)::int AS turns_missing_stage,
    -- spans whose parent never arrived
    (SELECT count(*) FROM callscope_call_spans(c.call_id) s
     WHERE s.parent_span_id IS NOT NULL
       -- a scalar subquery, not NOT EXISTS: an anti-join planned without statistics may read all spans
       AND (SELECT 1 FROM spans p WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id LIMIT 1) IS NULL
    )::int AS orphan_spans,
    (SELECT count(*) FROM callscope_call_spans(c.call_id) s WHERE s.end_time < s.start_time)::int
        AS spans_ending_before_start,
    -- children starting more than {SKEW_TOLERANCE} before their parent (clocks of two services disagree)
    (SELECT count(*) FROM callscope_call_spans(c.call_id) s
     WHERE s.parent_span_id IS NOT NULL
       AND s.start_time < (SELECT min(p.start_time) FROM spans p
                           WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id)
                          - interval '{SKEW_TOLERANCE}')::int AS clock_skew_spans,
    (SELECT max(extract(epoch FROM p.start_time - s.start_time) * 1000)
     FROM callscope_call_spans(c.call_id) s
     CROSS JOIN LATERAL (SELECT min(p1.start_time) AS start_time FROM spans p1
                         WHERE p1.trace_id = s.trace_id AND p1.span_id = s.parent_span_id) p
     WHERE s.parent_span_id IS NOT NULL AND p.start_time > s.start_time) AS max_child_lead_ms,
    (c.status = 'active' AND (c.stale OR c.last_seen_at < now() - interval '{SILENT_AFTER}')) AS gone_silent,
    CASE WHEN c.status = 'active' THEN extract(epoch FROM now() - c.last_seen_at) END AS silent_for_s,
    -- log records that name no call and whose trace has no span: nothing ties them to a conversation
    (SELECT count(*) FROM callscope_call_events(c.call_id) e
     WHERE e.source = 'log' AND NOT e.call_id_explicit
       AND (SELECT 1 FROM spans s WHERE s.trace_id = e.trace_id LIMIT 1) IS NULL)::int AS uncorrelated_log_records
  FROM calls c
) q
"""

CAMPAIGN_FUNNEL = """
CREATE OR REPLACE VIEW campaign_funnel AS
SELECT (c.started_at AT TIME ZONE 'UTC')::date AS day,
       c.campaign,
       count(*)::int AS calls,
       (count(*) FILTER (WHERE c.status = 'queued'))::int AS queued,
       (count(*) FILTER (WHERE c.status = 'ringing'))::int AS ringing,
       -- answered: the call reached a conversation (it is live or completed, or it has turns)
       (count(*) FILTER (WHERE c.status IN ('active', 'completed') OR c.turn_count > 0))::int AS answered,
       (count(*) FILTER (WHERE c.status = 'completed'))::int AS completed,
       (count(*) FILTER (WHERE c.status = 'failed'))::int AS failed,
       (count(*) FILTER (WHERE c.status = 'declined'))::int AS declined,
       (count(*) FILTER (WHERE c.status = 'missed'))::int AS missed,
       -- scalar subqueries with LIMIT (not EXISTS, which may become a hashed scan of the whole table)
       (count(*) FILTER (WHERE (
            SELECT 1 FROM tool_calls tc
            WHERE tc.call_id = c.call_id AND NOT tc.is_error AND tc.tool_name ILIKE '%transfer%' LIMIT 1) IS NOT NULL
         OR (
            SELECT 1 FROM callscope_call_events(c.call_id) e
            WHERE e.event IN ('transfer.completed', 'tool.transfer.completed', 'transfer.human_answered')
            LIMIT 1) IS NOT NULL))::int AS transferred,
       sum(c.cost_total) AS cost,
       (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY t.voice_to_voice_ms)
        FROM turns t WHERE t.call_id = ANY (array_agg(c.call_id))) AS p95_voice_to_voice_ms
FROM calls c
WHERE c.started_at IS NOT NULL
GROUP BY 1, 2
"""


def upgrade() -> None:
    op.add_column("turns", sa.Column("dead_air_ms", sa.Float(), nullable=True))
    op.add_column("turns", sa.Column("barge_in_stop_ms", sa.Float(), nullable=True))
    op.add_column("calls", sa.Column("dead_air_total_s", sa.Float(), nullable=True))
    op.add_column("calls", sa.Column("longest_silence_ms", sa.Float(), nullable=True))
    op.add_column("calls", sa.Column("barge_in_count", sa.Integer(), nullable=True))
    op.execute("CREATE INDEX calls_day_campaign_idx ON calls (((started_at AT TIME ZONE 'UTC')::date), campaign)")
    op.execute(CALL_QUALITY)
    op.execute(CAMPAIGN_FUNNEL)
    op.execute(f"GRANT SELECT ON call_quality, campaign_funnel TO {READER}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS campaign_funnel")
    op.execute("DROP VIEW IF EXISTS call_quality")
    op.execute("DROP INDEX IF EXISTS calls_day_campaign_idx")
    for table, column in (("calls", "barge_in_count"), ("calls", "longest_silence_ms"),
                          ("calls", "dead_air_total_s"), ("turns", "barge_in_stop_ms"), ("turns", "dead_air_ms")):
        op.drop_column(table, column)
