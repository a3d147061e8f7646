"""A reader that can only read, and locks no reader can take

* ``callscope_reader``: ``SELECT`` on the public relations only (storage/reader.py ``READER_RELATIONS``), nothing
  on internal tables; ``EXECUTE`` on the read API only (``PUBLIC`` loses ``EXECUTE`` on every function of the
  schema that is not an extension's, and on new ones through the default privileges); no ``CREATE`` on the
  schema, no ``TEMPORARY`` on the database for ``PUBLIC`` (the migrating role keeps it), no large objects
  (superuser only); read-only transactions, a statement timeout and no JIT as role defaults. ``callscope
  migrate`` applies the same again on every run, with the ``reader_connection_limit`` setting.
* ``derive_locks``: one row per slot (65536) of the per-call derive lock (``hashtext(call_id) & 65535``): a
  derive worker locks its calls' slots ``FOR UPDATE SKIP LOCKED`` instead of taking advisory locks, which any
  role (a reader included) can take and hold.
* ``callscope_migrate_lock``: no rows; ``migrate`` locks the table (``EXCLUSIVE``) so that two runs serialize
  (storage/migrate.py creates it first when it is missing: it must exist before the first migration runs).

Revision ID: 0012_reader_lockdown
Revises: 0007_dashboard_rollups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.reader import LARGE_OBJECT_CREATORS, READER, READER_SETTINGS, privileges_sql, role_state_sql

revision = "0012_reader_lockdown"
down_revision = "0007_dashboard_rollups"
branch_labels = None
depends_on = None

DERIVE_SLOTS = 65536
MIGRATE_LOCK_TABLE = "CREATE TABLE IF NOT EXISTS callscope_migrate_lock (id smallint PRIMARY KEY)"


def upgrade() -> None:
    op.create_table("derive_locks", sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False))
    op.execute(f"INSERT INTO derive_locks (slot) SELECT generate_series(0, {DERIVE_SLOTS - 1})")
    op.execute(MIGRATE_LOCK_TABLE)
    op.execute(role_state_sql(READER, connection_limit=None, settings=READER_SETTINGS))
    op.execute(privileges_sql(READER))


def downgrade() -> None:
    conn = op.get_bind()
    op.drop_table("derive_locks")
    op.execute("DROP TABLE IF EXISTS callscope_migrate_lock")
    # back to 0002's privileges (0009 kept api_keys and tenants from the reader)
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}")
    op.execute(f"REVOKE ALL ON tenants, api_keys FROM {READER}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER}")
    op.execute("ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
    op.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC")
    op.execute("DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$")
    if conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar():
        op.execute(f"GRANT EXECUTE ON FUNCTION {', '.join(LARGE_OBJECT_CREATORS)} TO PUBLIC")
    # the role's connection limit and settings are cluster-wide (other databases may use them): kept
