"""Grafana: the read-only role and the latency relations the dashboards and alerts read.

Revision ID: 0002_grafana
Revises: 0001_initial

* ``callscope_reader``: created NOLOGIN if missing (roles are cluster-wide, so a second database reuses it),
  granted SELECT on every table and view of ``public`` (now and later: default privileges), read-only
  transactions and a statement timeout. It gets LOGIN and a password only when ``CALLSCOPE_READER_PASSWORD``
  is set while migrating (the datasource provisioning reads the same variable).
* ``latency_turns`` (plain view, both backends): one row per turn with its call's agent / campaign / type.
* ``latency_stage_1m``: per minute, stage, provider and model, the count / avg / p50 / p95 / p99 of span TTFB
  and duration. On TimescaleDB (``spans`` is a hypertable) a real-time continuous aggregate with a refresh
  policy; on plain PostgreSQL a view of the same columns, backed by a partial expression index on spans
  (``spans_latency_bucket_idx``: the view's time filter is on the bucket expression, which the planner can
  only match against an index on that same expression).
  ``turns`` is not a hypertable, so it cannot feed a continuous aggregate: see docs/dashboards.md.
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from alembic import op

from storage.reader import password_sql, role_state_sql

revision = "0002_grafana"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

READER = "callscope_reader"
PASSWORD_ENV = "CALLSCOPE_READER_PASSWORD"

# Grouped latency of the stages that carry a time-to-first-byte figure. Columns are the contract of the
# dashboards' queries (dashboards/queries.py) whichever backend builds them.
_STAGE_SELECT = """
SELECT {bucket} AS bucket,
       stage,
       provider,
       model,
       count(*) AS samples,
       count(ttfb_ms) AS ttfb_samples,
       avg(ttfb_ms) AS avg_ttfb_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttfb_ms) AS p50_ttfb_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY ttfb_ms) AS p95_ttfb_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ttfb_ms) AS p99_ttfb_ms,
       avg(duration_ms) AS avg_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM spans
WHERE stage IN ('stt', 'llm', 'tts', 'tool')
GROUP BY 1, 2, 3, 4
"""
# date_bin(interval, timestamptz, timestamptz) is IMMUTABLE, so it can be indexed (date_trunc cannot).
_PG_BUCKET = "date_bin('1 minute', start_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')"

_LATENCY_TURNS = """
CREATE OR REPLACE VIEW latency_turns AS
SELECT t.started_at AS "time",
       t.call_id,
       t.turn_number,
       coalesce(t.agent, c.agent) AS agent,
       c.campaign,
       c.direction,
       t.llm_provider,
       t.llm_model,
       t.stt_provider,
       t.tts_provider,
       t.eou_ms,
       t.stt_ms,
       t.stt_to_llm_ms,
       t.llm_ttft_ms,
       t.llm_to_tts_ms,
       t.tts_ttfb_ms,
       t.voice_to_voice_ms,
       t.reported_v2v_ms,
       t.interrupted
FROM turns t
LEFT JOIN calls c ON c.call_id = t.call_id
"""



def _spans_is_hypertable(conn: sa.Connection) -> bool:
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is None:
        return False
    row = conn.execute(sa.text(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'spans'"
    )).first()
    return row is not None


def _create_plain_stage_view(conn: sa.Connection) -> None:
    conn.execute(sa.text(
        f"CREATE INDEX IF NOT EXISTS spans_latency_bucket_idx ON spans ({_PG_BUCKET}) "
        "WHERE stage IN ('stt', 'llm', 'tts', 'tool')"
    ))
    conn.execute(sa.text("CREATE OR REPLACE VIEW latency_stage_1m AS " + _STAGE_SELECT.format(bucket=_PG_BUCKET)))


def _create_continuous_aggregate(conn: sa.Connection) -> bool:
    """Real-time continuous aggregate (TimescaleDB >= 2.7 accepts ordered-set aggregates); False if refused."""
    savepoint = conn.begin_nested()
    try:
        conn.execute(sa.text(
            "CREATE MATERIALIZED VIEW latency_stage_1m "
            "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
            + _STAGE_SELECT.format(bucket="time_bucket(INTERVAL '1 minute', start_time)")
            + " WITH NO DATA"
        ))
        conn.execute(sa.text(
            "SELECT add_continuous_aggregate_policy('latency_stage_1m', "
            "start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute', "
            "schedule_interval => INTERVAL '1 minute')"
        ))
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        log.warning("latency_stage_1m: continuous aggregate refused (%s); using a plain view", exc.orig)
        return False
    savepoint.commit()
    return True


def upgrade() -> None:
    conn = op.get_bind()

    conn.execute(sa.text(_LATENCY_TURNS))
    if not (_spans_is_hypertable(conn) and _create_continuous_aggregate(conn)):
        _create_plain_stage_view(conn)

    # Roles are cluster-wide: parallel migrations of other databases may change this one at the same time
    # (storage/reader.py retries and skips what is already as wanted).
    conn.execute(sa.text(role_state_sql(READER, connection_limit=None, settings={
        "default_transaction_read_only": "on", "statement_timeout": "60s"})))
    conn.execute(sa.text(f"""
DO $$
BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READER}', current_database());
END
$$"""))
    conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {READER}"))
    conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}"))
    conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER}"))

    password = os.environ.get(PASSWORD_ENV)
    if password:
        quoted = conn.execute(sa.text("SELECT quote_literal(CAST(:pw AS text))"), {"pw": password}).scalar_one()
        conn.execute(sa.text(password_sql(quoted, READER).replace(":", r"\:")))


def downgrade() -> None:
    conn = op.get_bind()
    # A continuous aggregate is a plain view in pg_class (not in pg_matviews), yet TimescaleDB refuses
    # DROP VIEW on it: ask TimescaleDB's catalogue.
    is_cagg = _spans_is_hypertable(conn) and conn.execute(sa.text(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema() AND view_name = 'latency_stage_1m'"
    )).first() is not None
    if is_cagg:
        conn.execute(sa.text("DROP MATERIALIZED VIEW latency_stage_1m"))
    else:
        conn.execute(sa.text("DROP VIEW IF EXISTS latency_stage_1m"))
    conn.execute(sa.text("DROP VIEW IF EXISTS latency_turns"))
    conn.execute(sa.text("DROP INDEX IF EXISTS spans_latency_bucket_idx"))
    # The role is cluster-wide and may serve other databases: revoke here, never drop.
    conn.execute(sa.text(f"""
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER}') THEN
    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM {READER};
    REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {READER};
    REVOKE USAGE ON SCHEMA public FROM {READER};
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {READER}', current_database());
  END IF;
END
$$"""))
