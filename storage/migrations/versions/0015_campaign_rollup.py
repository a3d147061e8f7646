"""Campaign funnels from the hourly call rollup: ``calls.transferred``, answered / transferred counts per hour

* ``calls.transferred boolean NOT NULL DEFAULT false``: the call was handed over, a successful tool call whose
  name contains "transfer" or a ``transfer.completed`` / ``tool.transfer.completed`` / ``transfer.human_answered``
  event among its events (as ``callscope_call_events`` resolves them). The derivation computes it with the rest
  of the call row (storage/derive/calls.sql); existing calls are backfilled here, set-based: the matching tool
  calls, the matching events (``events_event_time_idx``, the event resolved to its call like ``call_events``),
  then the calls found by primary key and updated by row address.
* ``call_status_1h.answered`` / ``call_status_1h.transferred``: per hour and dimension set, the calls that reached
  a conversation (live or completed, or with turns) and the transferred ones. The call refresh computes them
  (storage/rollup.py); every call hour is marked so that the refreshes recompute the existing rows.
* ``turn_latency_breakdown_1h`` gains the breakdown ``campaign`` (storage/rollup.py ``TURN_BREAKDOWNS``): the
  Campaigns dashboard's p95 and slowest turns read one pre-merged row per hour and campaign instead of every
  dimension set of ``turn_latency_1h``. Every hour ``turn_latency_1h`` holds is marked for the turn refresh.
* view ``campaign_funnel``: ``transferred`` reads the column (no per-call lookups of tool calls and events);
  ``p95_voice_to_voice_ms`` stays exact, over the turns of the group's calls, each call's turns looked up by
  key (``turn_pkey``) instead of ``call_id = ANY (array_agg(...))``, which without statistics is planned as a
  scan of every turn per group. The Campaigns dashboard reads the rollups, not this view (docs/dashboards.md).

Revision ID: 0015_campaign_rollup
Revises: 0013_tenants
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0015_campaign_rollup"
down_revision = "0013_tenants"
branch_labels = None
depends_on = None

READER = "callscope_reader"
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
INVOKER = "WITH (security_invoker = true)"

#: Events that mean the call was transferred (the view of migration 0011 and storage/derive/calls.sql).
TRANSFER_EVENTS = ("transfer.completed", "tool.transfer.completed", "transfer.human_answered")
_EVENT_LIST = ", ".join(f"'{e}'" for e in TRANSFER_EVENTS)

# The calls to mark: (call id, tenant) of every successful transfer tool call and of every transfer event, the
# event resolved to its call the way call_events does (its trace's call unless it names its call itself). Each
# event is found through events_event_time_idx (one equality per event name), each call by its primary key,
# and the rows are updated by address: no plan reads the calls table as a whole.
BACKFILL_TRANSFERRED = f"""
UPDATE calls c SET transferred = true
WHERE c.ctid = ANY (ARRAY(
    SELECT found.row_id
    FROM (
        SELECT tc.call_id, tc.tenant FROM tool_calls tc
        WHERE NOT tc.is_error AND tc.tool_name ILIKE '%transfer%'
        UNION
        SELECT CASE WHEN e.call_id_explicit OR e.trace_id IS NULL THEN e.call_id
                    ELSE coalesce((SELECT k.call_id FROM call_traces k
                                   WHERE k.trace_id = e.trace_id AND k.tenant = e.tenant), e.call_id) END,
               e.tenant
        FROM unnest(ARRAY[{_EVENT_LIST}]) AS w(event)
        CROSS JOIN LATERAL (SELECT * FROM events e1 WHERE e1.event = w.event OFFSET 0) e
    ) x
    CROSS JOIN LATERAL (SELECT c2.ctid AS row_id FROM calls c2
                        WHERE c2.call_id = x.call_id AND c2.tenant = x.tenant OFFSET 0) found))
  AND NOT c.transferred
"""

CAMPAIGN_FUNNEL = f"""
CREATE VIEW campaign_funnel {INVOKER} AS
SELECT (c.started_at AT TIME ZONE 'UTC')::date AS day,
       c.campaign,
       c.tenant,
       count(*)::int AS calls,
       (count(*) FILTER (WHERE c.status = 'queued'))::int AS queued,
       (count(*) FILTER (WHERE c.status = 'ringing'))::int AS ringing,
       -- answered: the call reached a conversation (it is live or completed, or it has turns)
       (count(*) FILTER (WHERE c.status IN ('active', 'completed') OR c.turn_count > 0))::int AS answered,
       (count(*) FILTER (WHERE c.status = 'completed'))::int AS completed,
       (count(*) FILTER (WHERE c.status = 'failed'))::int AS failed,
       (count(*) FILTER (WHERE c.status = 'declined'))::int AS declined,
       (count(*) FILTER (WHERE c.status = 'missed'))::int AS missed,
       (count(*) FILTER (WHERE c.transferred))::int AS transferred,
       sum(c.cost_total) AS cost,
       -- exact, over the turns of the group's calls: each call's turns by key (OFFSET 0 keeps it a lookup)
       (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY t.voice_to_voice_ms)
        FROM unnest(array_agg(c.call_id)) AS k(call_id)
        CROSS JOIN LATERAL (SELECT t1.voice_to_voice_ms FROM turns t1
                            WHERE t1.call_id = k.call_id AND t1.tenant = c.tenant OFFSET 0) t) AS p95_voice_to_voice_ms
FROM calls c
WHERE c.started_at IS NOT NULL
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.add_column("calls", sa.Column("transferred", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(BACKFILL_TRANSFERRED)
    op.add_column("call_status_1h", sa.Column("answered", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("call_status_1h", sa.Column("transferred", sa.Integer(), nullable=False, server_default="0"))
    op.execute("DROP VIEW IF EXISTS campaign_funnel")
    op.execute(CAMPAIGN_FUNNEL)
    op.execute(f"GRANT SELECT ON campaign_funnel TO {READER}")
    # the turn refreshes add the campaign breakdown rows of every hour turn_latency_1h holds (its first minute is
    # marked: the refresh recomputes that minute, its hour and the hour's breakdown rows, as 0007 did)
    op.execute("INSERT INTO turn_rollup_dirty (bucket) SELECT DISTINCT bucket FROM turn_latency_1h ORDER BY 1")
    # the call refreshes recompute every hour with the new counts
    op.execute("INSERT INTO call_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 hour', started_at, "
               f"{ORIGIN}) FROM calls WHERE started_at IS NOT NULL ORDER BY 1")


def downgrade() -> None:
    op.execute("DELETE FROM turn_latency_breakdown_1h WHERE breakdown = 'campaign'")
    op.execute("DROP VIEW IF EXISTS campaign_funnel")
    op.execute(importlib.import_module("storage.migrations.versions.0013_tenants")._campaign_funnel())
    op.execute(f"GRANT SELECT ON campaign_funnel TO {READER}")
    op.drop_column("call_status_1h", "transferred")
    op.drop_column("call_status_1h", "answered")
    op.drop_column("calls", "transferred")
