"""Rollups for dashboards at scale: turn latencies per minute and hour, calls per hour, dirty-bucket queues;
the reader role runs without JIT

* ``turn_latency_1m`` / ``turn_latency_1h``: per bucket and agent / LLM model / LLM provider / STT provider /
  TTS provider / campaign / direction: turns, and per latency samples, sum, min, max and a sparse log-scale
  histogram (storage/rollup.py describes the histogram and its error bound).
* ``call_status_1h``: per hour of ``calls.started_at`` and status / direction / campaign / agent: calls, cost
  and duration sums.
* ``turn_rollup_dirty`` / ``call_rollup_dirty``: append-only marks of the minutes / hours to recompute. The
  routines that recompute them (``callscope_refresh_turn_rollup``, ``callscope_refresh_call_rollup``) and the
  histogram functions are code, installed by ``storage.migrate.install_routines``.
* Existing data: every minute / hour that has turns / calls is marked, so the deriver's refreshes fill the
  rollups in the background (no long migration).
* ``callscope_reader``: ``jit = off``. Without planner statistics (autovacuum off, fresh tables) estimates run
  into the millions of rows and JIT compilation costs seconds on queries that read a few hundred rows.
  Plain tables on both backends: ``turns`` and ``calls`` are not hypertables (their rows are rewritten per
  call), so a continuous aggregate cannot be built on them.

Revision ID: 0006_turn_rollup
Revises: 0005_storage_v2
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.reader import role_state_sql

revision = "0006_turn_rollup"
down_revision = "0005_storage_v2"
branch_labels = None
depends_on = None

READER = "callscope_reader"
TZ = sa.DateTime(timezone=True)
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
ROUTINES = (
    "callscope_refresh_turn_rollup(int)",
    "callscope_refresh_call_rollup(int)",
    "callscope_hist_quantile(smallint[], int[], float8, float8, float8)",
    "callscope_hist_quantiles(smallint[], int[], float8[], float8, float8)",
    "callscope_hist_quantiles_sorted(smallint[], bigint[], float8[], float8, float8)",
    "callscope_hist_mid(smallint)",
    "callscope_hist_bin(float8)",
)
AGGREGATES = ("callscope_array_cat(anycompatiblearray)",)


def _turn_latency(name: str) -> None:
    columns = [
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("agent", sa.Text()),
        sa.Column("llm_model", sa.Text()),
        sa.Column("llm_provider", sa.Text()),
        sa.Column("stt_provider", sa.Text()),
        sa.Column("tts_provider", sa.Text()),
        sa.Column("campaign", sa.Text()),
        sa.Column("direction", sa.Text()),
        sa.Column("turns", sa.Integer(), nullable=False),
    ]
    for prefix in ("voice_to_voice", "stt", "llm_ttft", "tts_ttfb"):
        columns += [
            sa.Column(f"{prefix}_samples", sa.Integer(), nullable=False),
            sa.Column(f"{prefix}_sum_ms", sa.Float()),
            sa.Column(f"{prefix}_min_ms", sa.Float()),
            sa.Column(f"{prefix}_max_ms", sa.Float()),
            sa.Column(f"{prefix}_bins", sa.ARRAY(sa.SmallInteger())),
            sa.Column(f"{prefix}_counts", sa.ARRAY(sa.Integer())),
        ]
    op.create_table(name, *columns)
    op.create_index(f"{name}_bucket_idx", name, ["bucket"])


def _queue(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("bucket", TZ, nullable=False),
    )
    op.create_index(f"{name}_bucket_idx", name, ["bucket"])


def upgrade() -> None:
    _turn_latency("turn_latency_1m")
    _turn_latency("turn_latency_1h")
    op.create_table(
        "call_status_1h",
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text()),
        sa.Column("campaign", sa.Text()),
        sa.Column("agent", sa.Text()),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("cost_total", sa.Float()),
        sa.Column("cost_samples", sa.Integer(), nullable=False),
        sa.Column("cost_stt", sa.Float()),
        sa.Column("cost_llm", sa.Float()),
        sa.Column("cost_tts", sa.Float()),
        sa.Column("cost_telephony", sa.Float()),
        sa.Column("duration_s", sa.Float()),
        sa.Column("duration_samples", sa.Integer(), nullable=False),
    )
    op.create_index("call_status_1h_bucket_idx", "call_status_1h", ["bucket"])
    _queue("turn_rollup_dirty")
    _queue("call_rollup_dirty")

    op.execute(
        "INSERT INTO turn_rollup_dirty (bucket) "
        f"SELECT DISTINCT date_bin('1 minute', started_at, {ORIGIN}) FROM turns WHERE started_at IS NOT NULL "
        "ORDER BY 1")
    op.execute(
        "INSERT INTO call_rollup_dirty (bucket) "
        f"SELECT DISTINCT date_bin('1 hour', started_at, {ORIGIN}) FROM calls WHERE started_at IS NOT NULL "
        "ORDER BY 1")

    # 0002 created the role; default privileges only cover tables created by the role that set them.
    op.execute(f"GRANT SELECT ON turn_latency_1m, turn_latency_1h, call_status_1h TO {READER}")
    op.execute(role_state_sql(READER, connection_limit=None, settings={"jit": "off"}))  # races: storage/reader.py


def downgrade() -> None:
    op.execute(f"ALTER ROLE {READER} RESET jit")
    for routine in ROUTINES:
        op.execute(f"DROP FUNCTION IF EXISTS {routine}")
    for aggregate in AGGREGATES:
        op.execute(f"DROP AGGREGATE IF EXISTS {aggregate}")
    for name in ("call_rollup_dirty", "turn_rollup_dirty", "call_status_1h", "turn_latency_1h",
                 "turn_latency_1m"):
        op.drop_table(name)
