"""Prices: the telephony rates storage/derive.sql multiplies call durations by (design §7).

Revision ID: 0003_prices
Revises: 0002_grafana

* ``telephony_rates``: one row per call direction (``inbound``, ``outbound``, ``web``, …) with the price per
  minute and its currency. The collector replaces its rows at startup from the price table
  (collector/prices.yaml deep-merged with the ``prices_file`` setting, see collector/cost.py), so the
  derivation stays a pure function of stored data: a call's ``cost_telephony`` is its duration × the rate of
  its direction, unless a producer reported a telephony cost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_prices"
down_revision = "0002_grafana"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telephony_rates",
        sa.Column("direction", sa.Text(), primary_key=True),
        sa.Column("per_minute", sa.Float(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False, server_default="USD"),
        sa.Column("price_version", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    # the shipped defaults, so a database migrated without a running collector still prices calls
    op.execute("INSERT INTO telephony_rates (direction, per_minute, currency, price_version) VALUES "
               "('inbound', 0.0085, 'USD', 'migration'), ('outbound', 0.014, 'USD', 'migration'), "
               "('web', 0.0, 'USD', 'migration')")


def downgrade() -> None:
    op.drop_table("telephony_rates")
