"""Storage engine v2: append-only spans and events, per-call derive claims, a quarantine for calls that fail.

Revision ID: 0005_storage_v2
Revises: 0004_dirty_calls

* ``dirty_calls.marked_at``: when a batch marked the call, so the derive backlog has an age (a metric).
  ``dirty_calls_call_idx``: a derive worker deletes the marks of the calls it claimed by call id.
* ``call_quarantine``: a call whose derivation failed (a value PostgreSQL refuses, a timeout, …), with the
  error, how often it failed and when it is tried again. Other calls never wait for it.
* ``resources``: each distinct OTLP resource once, keyed by a hash of its JSON; ``spans.resource_id`` points
  to it and ``spans.resource`` stays NULL for spans stored so (the views and functions below fill it in), so
  the resource is no longer written with every span.
* ``events.turn_number`` is now set when the event is stored where its span's turn is known then; spans and
  events are never updated to move them to another call: a span stored under its trace id before the span
  naming its call arrived stays as it is, and ``call_traces`` maps the trace to its call when calls are
  derived and when dashboards read a call's spans (``callscope_call_spans``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_storage_v2"
down_revision = "0004_dirty_calls"
branch_labels = None
depends_on = None

_SPAN_ROW = ("s.start_time, s.end_time, s.duration_ms, s.trace_id, s.span_id, s.parent_span_id, s.call_id, "
             "s.call_id_explicit, s.turn_number, s.stage, s.name, s.service_name, s.scope_name, s.kind, s.status_code, "
             "s.status_message, s.provider, s.model, s.ttfb_ms, s.input_tokens, s.output_tokens, s.framework, "
             "s.attributes, s.events, "
             "coalesce(s.resource, (SELECT r.attributes FROM resources r WHERE r.resource_id = s.resource_id)), "
             "s.facts, s.resource_id")
CALL_SPANS_FUNCTION = """
CREATE OR REPLACE FUNCTION callscope_call_spans(wanted text) RETURNS SETOF spans
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    -- the spans of one call: those stored under its id (minus rows of a trace id that since named another
    -- call), and those stored under the trace id of one of its traces before that trace named the call
    SELECT """ + _SPAN_ROW + """ FROM spans s
    WHERE s.call_id = wanted
      AND (s.call_id_explicit OR NOT EXISTS (
           SELECT 1 FROM call_traces k WHERE k.trace_id = s.trace_id AND k.call_id <> wanted))
    UNION ALL
    SELECT """ + _SPAN_ROW + """ FROM spans s
    WHERE s.trace_id = ANY (ARRAY(SELECT k.trace_id FROM call_traces k WHERE k.call_id = wanted))
      AND NOT s.call_id_explicit AND s.call_id <> wanted
$$
"""


_SPAN_COLUMNS = ("start_time, end_time, duration_ms, trace_id, span_id, parent_span_id, {call_id}, call_id_explicit, "
                 "turn_number, stage, name, service_name, scope_name, kind, status_code, status_message, provider, "
                 "model, ttfb_ms, input_tokens, output_tokens, framework, attributes, events, "
                 "coalesce(resource, (SELECT r.attributes FROM resources r WHERE r.resource_id = s.resource_id)) "
                 "AS resource, facts, resource_id")
_EVENT_COLUMNS = ("time, event_id, {call_id}, call_id_explicit, trace_id, span_id, category, event, level, message, "
                  "data, source, turn_number")
_RESOLVED = ("CASE WHEN {t}.call_id_explicit OR {t}.trace_id IS NULL THEN {t}.call_id ELSE coalesce("
             "(SELECT k.call_id FROM call_traces k WHERE k.trace_id = {t}.trace_id), {t}.call_id) END AS call_id")
# The same rows with the call they belong to now (their stored call_id may be the trace id they arrived under).
CALL_SPANS_VIEW = ("CREATE OR REPLACE VIEW call_spans AS SELECT "
                   + _SPAN_COLUMNS.format(call_id=_RESOLVED.format(t="s")) + " FROM spans s")
CALL_EVENTS_VIEW = ("CREATE OR REPLACE VIEW call_events AS SELECT "
                    + _EVENT_COLUMNS.format(call_id=_RESOLVED.format(t="e")) + " FROM events e")

CALL_EVENTS_FUNCTION = """
CREATE OR REPLACE FUNCTION callscope_call_events(wanted text) RETURNS SETOF events
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.* FROM events e
    WHERE e.call_id = wanted
      AND (e.call_id_explicit OR e.trace_id IS NULL OR NOT EXISTS (
           SELECT 1 FROM call_traces k WHERE k.trace_id = e.trace_id AND k.call_id <> wanted))
    UNION ALL
    SELECT e.* FROM events e
    WHERE e.trace_id = ANY (ARRAY(SELECT k.trace_id FROM call_traces k WHERE k.call_id = wanted))
      AND NOT e.call_id_explicit AND e.call_id <> wanted
$$
"""


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("resource_id", sa.Text(), primary_key=True),
        sa.Column("attributes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.add_column("spans", sa.Column("resource_id", sa.Text(), nullable=True))
    op.add_column("dirty_calls", sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False,
                                           server_default=sa.text("now()")))
    op.create_index("dirty_calls_call_idx", "dirty_calls", ["call_id"])
    op.create_table(
        "call_quarantine",
        sa.Column("call_id", sa.Text(), primary_key=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("call_quarantine_retry_idx", "call_quarantine", ["retry_at"])
    op.execute(CALL_SPANS_FUNCTION)
    op.execute(CALL_EVENTS_FUNCTION)
    op.execute(CALL_SPANS_VIEW)
    op.execute(CALL_EVENTS_VIEW)
    op.execute("GRANT EXECUTE ON FUNCTION callscope_call_spans(text), callscope_call_events(text) "
               "TO callscope_reader")
    op.execute("GRANT SELECT ON call_spans, call_events, resources TO callscope_reader")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS call_events")
    op.execute("DROP VIEW IF EXISTS call_spans")
    op.execute("DROP FUNCTION IF EXISTS callscope_call_events(text)")
    op.execute("DROP FUNCTION IF EXISTS callscope_call_spans(text)")
    op.drop_index("call_quarantine_retry_idx", table_name="call_quarantine")
    op.drop_table("call_quarantine")
    op.drop_index("dirty_calls_call_idx", table_name="dirty_calls")
    op.drop_column("dirty_calls", "marked_at")
    op.drop_column("spans", "resource_id")
    op.drop_table("resources")
