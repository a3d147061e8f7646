"""dirty_calls: calls whose derived rows must be recomputed (a transactional outbox between write and derive);
calls.stale: an active call silent for longer than the idle timeout

Append-only marks (no unique key): the writer's INSERT never waits for a derive round that is deleting
older marks of the same call.

Revision ID: 0004_dirty_calls
Revises: 0003_prices
"""

from alembic import op
import sqlalchemy as sa

revision = "0004_dirty_calls"
down_revision = "0003_prices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dirty_calls",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("call_id", sa.Text(), nullable=False),
    )


    op.add_column("calls", sa.Column("stale", sa.Boolean(), server_default=sa.text("false"), nullable=False))


def downgrade() -> None:
    op.drop_column("calls", "stale")
    op.drop_table("dirty_calls")
