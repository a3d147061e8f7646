"""Tenants and API keys: who may write, and under which tenant

* ``tenants``: one row per tenant (``name``), seeded with ``default`` (a single-tenant install writes there);
  ``retention_days`` is that tenant's retention (NULL: the collector's ``retention_days``).
* ``api_keys``: the keys receivers accept. Only a SHA-256 digest of a key is stored (``key_hash``); ``id`` is
  the key's public part (``csk_<id>_…``), shown by ``callscope keys list``. ``revoked_at`` set = refused
  (receivers see it within ``auth_refresh_s``); ``last_used_at`` is written by receivers every few seconds.
* Neither table is readable by ``callscope_reader`` (the schema's default privileges would grant it).

Revision ID: 0009_api_keys
Revises: 0011_quality_silence_campaigns
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_api_keys"
down_revision = "0011_quality_silence_campaigns"
branch_labels = None
depends_on = None

READER = "callscope_reader"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("retention_days", sa.Integer()),
        # Tenant names become role and file names (callscope tenants create): lower-case words only.
        sa.CheckConstraint("name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="tenants_name_format"),
        sa.CheckConstraint("retention_days IS NULL OR retention_days >= 0", name="tenants_retention_days"),
    )
    op.execute("INSERT INTO tenants (name) VALUES ('default')")
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), sa.ForeignKey("tenants.name", onupdate="CASCADE"), nullable=False),
        sa.Column("label", sa.Text()),
        sa.Column("key_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", TZ),
        sa.Column("last_used_at", TZ),
        sa.CheckConstraint("octet_length(key_hash) = 32", name="api_keys_sha256"),
    )
    op.create_index("api_keys_tenant_idx", "api_keys", ["tenant"])
    op.execute(f"REVOKE ALL ON tenants, api_keys FROM {READER}")


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("tenants")
