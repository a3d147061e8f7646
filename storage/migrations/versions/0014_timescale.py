"""TimescaleDB: the refresh policy of the continuous aggregate latency_stage_1m covers the whole history

Migration 0002 gave ``latency_stage_1m`` a policy over the last 3 hours only. A real-time continuous aggregate
shows raw rows only above its watermark, and the first refresh that materializes anything moves the watermark to
the end of its window: spans older than 3 hours that were never materialized (the history of a database that
became TimescaleDB, the spans of a collector that exported late, replayed traffic) then vanish from
``latency_stage_1m`` and ``latency_stage_1h``, and so do later spans older than 3 hours (their invalidations lie
outside every refresh window). With ``start_offset => NULL`` every refresh covers the whole history, and
TimescaleDB recomputes only minutes that are invalidated or not materialized yet (as ``latency_stage_1h``'s policy
of 0007 already does); the first run materializes what was hidden. Measured on TimescaleDB 2.28.3 / PostgreSQL 15.

Plain PostgreSQL (and a TimescaleDB database where 0002 fell back to the view): nothing to do.

Revision ID: 0014_timescale
Revises: 0013_tenants
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_timescale"
down_revision = "0013_tenants"
branch_labels = None
depends_on = None

_POLICY = ("SELECT add_continuous_aggregate_policy('latency_stage_1m', start_offset => {start}, "
           "end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute')")


def _minutes_are_continuous_aggregate(conn: sa.Connection) -> bool:
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is None:
        return False
    return conn.execute(sa.text(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema() AND view_name = 'latency_stage_1m'")).first() is not None


def _replace_policy(start: str) -> None:
    conn = op.get_bind()
    if not _minutes_are_continuous_aggregate(conn):
        return
    conn.execute(sa.text("SELECT remove_continuous_aggregate_policy('latency_stage_1m', if_exists => true)"))
    conn.execute(sa.text(_POLICY.format(start=start)))


def upgrade() -> None:
    _replace_policy("NULL")


def downgrade() -> None:
    _replace_policy("INTERVAL '3 hours'")
