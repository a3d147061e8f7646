"""Rollups for the panels that still read raw rows at scale: turn latencies pre-merged per single breakdown,
span stage latencies per hour, event counts per minute and hour; failed tool calls through a partial index

* ``turn_latency_breakdown_1h``: ``turn_latency_1h`` added up per hour and single breakdown (``all``, ``agent``,
  ``llm_model``, ``llm_provider``, ``stt_provider``, ``tts_provider``) and its value, with each latency's p50 /
  p95 / p99 read from the merged histogram. "p95 by provider" over 30 days then reads one stored value per hour
  and provider instead of merging every dimension set. The turn refresh keeps it; every hour
  ``turn_latency_1h`` holds is marked so that the refresh fills it.
* Span stages. Where ``latency_stage_1m`` is a TimescaleDB continuous aggregate (migration 0002),
  ``latency_stage_1h`` is a real-time continuous aggregate on top of it (hierarchical, TimescaleDB >= 2.9),
  refreshed by a policy over its whole history (only invalidated or unmaterialized hours are recomputed). On
  plain PostgreSQL, or if TimescaleDB refuses it, both levels are tables the deriver keeps:
  ``stage_latency_1m`` (exactly the view's rows, per minute) and ``latency_stage_1h`` (their sums, the same
  columns as the continuous aggregate). Every existing span minute is marked for the deriver's refresh.
* ``event_counts_1m`` / ``event_counts_1h``: events per minute / hour, category, event and level, with the
  calls whose first event of that kind lies in the bucket and the newest event's time. Every existing event
  minute is marked.
* ``stage_rollup_dirty`` / ``event_rollup_dirty``: the minutes to recompute (append-only, like
  ``turn_rollup_dirty``). The refresh routines are code (storage/rollup.py, ``install_routines``).
* ``tool_calls_error_started_idx``: a partial index on the failed tool calls, newest first.

Revision ID: 0007_dashboard_rollups
Revises: 0006_turn_rollup
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0007_dashboard_rollups"
down_revision = "0009_api_keys"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

READER = "callscope_reader"
TZ = sa.DateTime(timezone=True)
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
STAGES = "'stt', 'llm', 'tts', 'tool'"
METRICS = ("voice_to_voice", "stt", "llm_ttft", "tts_ttfb")
ROUTINES = (
    "callscope_refresh_stage_rollup(int)",
    "callscope_refresh_event_rollup(int)",
    "callscope_event_seen_before(text, text, text, text, timestamptz)",
)
# How an hour of latency_stage_1h adds up the minutes of latency_stage_1m (alias m); storage/rollup.py's
# STAGE_HOUR_MEASURES are the same expressions.
HOUR_MEASURES = (
    ("samples", "sum(m.samples)::bigint"),
    ("ttfb_samples", "sum(m.ttfb_samples)::bigint"),
    ("ttfb_sum_ms", "sum(m.avg_ttfb_ms * m.ttfb_samples)"),
    ("p95_ttfb_sum_ms", "sum(m.p95_ttfb_ms * m.ttfb_samples)"),
    ("max_p95_ttfb_ms", "max(m.p95_ttfb_ms)"),
    ("duration_sum_ms", "sum(m.avg_duration_ms * m.samples)"),
)


def _queue(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("bucket", TZ, nullable=False),
    )
    op.create_index(f"{name}_bucket_idx", name, ["bucket"])


def _breakdown_table() -> None:
    columns = [
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("breakdown", sa.Text(), nullable=False),
        sa.Column("value", sa.Text()),
        sa.Column("turns", sa.Integer(), nullable=False),
    ]
    for prefix in METRICS:
        columns += [
            sa.Column(f"{prefix}_samples", sa.Integer(), nullable=False),
            sa.Column(f"{prefix}_sum_ms", sa.Float()),
            sa.Column(f"{prefix}_min_ms", sa.Float()),
            sa.Column(f"{prefix}_max_ms", sa.Float()),
            sa.Column(f"{prefix}_bins", sa.ARRAY(sa.SmallInteger())),
            sa.Column(f"{prefix}_counts", sa.ARRAY(sa.Integer())),
            sa.Column(f"{prefix}_p50_ms", sa.Float()),
            sa.Column(f"{prefix}_p95_ms", sa.Float()),
            sa.Column(f"{prefix}_p99_ms", sa.Float()),
        ]
    op.create_table("turn_latency_breakdown_1h", *columns)
    # a panel reads one breakdown: its rows only (they lie together, one hour's rows after another)
    op.create_index("turn_latency_breakdown_1h_breakdown_bucket_idx", "turn_latency_breakdown_1h",
                    ["breakdown", "bucket"])


def _mark_breakdown_hours() -> None:
    """Every hour turn_latency_1h already holds gets its breakdown rows at the next turn refresh: its first
    minute is marked, and a refresh recomputes that minute, its hour and the hour's breakdown rows (hours still
    marked by 0006's backfill get theirs when it reaches them)."""
    op.execute("INSERT INTO turn_rollup_dirty (bucket) SELECT DISTINCT bucket FROM turn_latency_1h ORDER BY 1")


def _latency_stage_1m_is_continuous_aggregate(conn: sa.Connection) -> bool:
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is None:
        return False
    return conn.execute(sa.text(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema() AND view_name = 'latency_stage_1m'")).first() is not None


def _create_hourly_continuous_aggregate(conn: sa.Connection) -> bool:
    """latency_stage_1h on the continuous aggregate latency_stage_1m; False if TimescaleDB refuses it."""
    measures = ", ".join(f"{expr} AS {name}" for name, expr in HOUR_MEASURES)
    savepoint = conn.begin_nested()
    try:
        conn.execute(sa.text(
            "CREATE MATERIALIZED VIEW latency_stage_1h "
            "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
            f"SELECT time_bucket(INTERVAL '1 hour', m.bucket) AS bucket, m.stage, m.provider, m.model, {measures} "
            "FROM latency_stage_1m m GROUP BY 1, 2, 3, 4 WITH NO DATA"))
        # start_offset NULL: the whole history, so hours older than any fixed window get materialized too
        # (a refresh recomputes only hours that are invalidated or not materialized yet).
        conn.execute(sa.text(
            "SELECT add_continuous_aggregate_policy('latency_stage_1h', start_offset => NULL, "
            "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes')"))
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        log.warning("latency_stage_1h: continuous aggregate refused (%s); using tables the deriver keeps", exc.orig)
        return False
    savepoint.commit()
    return True


def _create_stage_tables() -> None:
    op.create_table(
        "stage_latency_1m",
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text()),
        sa.Column("model", sa.Text()),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("ttfb_samples", sa.BigInteger(), nullable=False),
        sa.Column("avg_ttfb_ms", sa.Float()),
        sa.Column("p50_ttfb_ms", sa.Float()),
        sa.Column("p95_ttfb_ms", sa.Float()),
        sa.Column("p99_ttfb_ms", sa.Float()),
        sa.Column("avg_duration_ms", sa.Float()),
        sa.Column("p95_duration_ms", sa.Float()),
    )
    op.create_index("stage_latency_1m_bucket_idx", "stage_latency_1m", ["bucket"])
    op.create_table(
        "latency_stage_1h",
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text()),
        sa.Column("model", sa.Text()),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("ttfb_samples", sa.BigInteger(), nullable=False),
        sa.Column("ttfb_sum_ms", sa.Float()),
        sa.Column("p95_ttfb_sum_ms", sa.Float()),
        sa.Column("max_p95_ttfb_ms", sa.Float()),
        sa.Column("duration_sum_ms", sa.Float()),
    )
    op.create_index("latency_stage_1h_bucket_idx", "latency_stage_1h", ["bucket"])
    op.execute("INSERT INTO stage_rollup_dirty (bucket) "
               f"SELECT DISTINCT date_bin('1 minute', start_time, {ORIGIN}) FROM spans WHERE stage IN ({STAGES}) "
               "ORDER BY 1")


def _event_counts(name: str) -> None:
    op.create_table(
        name,
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("last_time", TZ, nullable=False),
    )
    op.create_index(f"{name}_bucket_idx", name, ["bucket"])


def upgrade() -> None:
    conn = op.get_bind()
    _breakdown_table()
    _mark_breakdown_hours()
    _queue("stage_rollup_dirty")
    _queue("event_rollup_dirty")
    if not (_latency_stage_1m_is_continuous_aggregate(conn) and _create_hourly_continuous_aggregate(conn)):
        _create_stage_tables()
    _event_counts("event_counts_1m")
    _event_counts("event_counts_1h")
    op.execute("INSERT INTO event_rollup_dirty (bucket) "
               f"SELECT DISTINCT date_bin('1 minute', time, {ORIGIN}) FROM events ORDER BY 1")
    op.create_index("tool_calls_error_started_idx", "tool_calls", [sa.text("started_at DESC")],
                    postgresql_where=sa.text("is_error"))
    # 0002's default privileges only cover tables created by the role that set them
    conn.execute(sa.text(
        f"GRANT SELECT ON turn_latency_breakdown_1h, latency_stage_1h, event_counts_1m, event_counts_1h TO {READER}"))
    if conn.execute(sa.text("SELECT to_regclass('stage_latency_1m') IS NOT NULL")).scalar():
        conn.execute(sa.text(f"GRANT SELECT ON stage_latency_1m TO {READER}"))


def downgrade() -> None:
    conn = op.get_bind()
    for routine in ROUTINES:
        op.execute(f"DROP FUNCTION IF EXISTS {routine}")
    op.drop_index("tool_calls_error_started_idx", table_name="tool_calls")
    is_cagg = conn.execute(sa.text(
        "SELECT c.relkind = 'v' FROM pg_class c WHERE c.oid = to_regclass('latency_stage_1h')")).scalar()
    if is_cagg:
        conn.execute(sa.text("DROP MATERIALIZED VIEW latency_stage_1h"))
    else:
        op.drop_table("latency_stage_1h")
        op.drop_table("stage_latency_1m")
    for name in ("event_counts_1h", "event_counts_1m", "event_rollup_dirty", "stage_rollup_dirty",
                 "turn_latency_breakdown_1h"):
        op.drop_table(name)
