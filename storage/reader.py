"""Storage: what a reader role (Grafana's ``callscope_reader``) may do, as SQL that migrations and ``migrate`` run.

A reader reads the public relations and calls the read API, nothing else:

* ``SELECT`` on ``READER_RELATIONS`` only: the public tables of design §3, the public views, and the rollups the
  generated dashboards and alerts read (tests/test_reader.py renders every panel, variable and alert query and
  runs it as a reader, and checks that nothing else is readable). Internal tables (mark queues, quarantine,
  ``alembic_version``, ``api_keys``, ``tenants``, the lock tables, rates) are not readable at all.
* ``EXECUTE`` on the read API (``READER_FUNCTIONS``) only. Functions are executable by ``PUBLIC`` by default,
  so every function of the schema that is not an extension's loses ``PUBLIC``'s ``EXECUTE`` (the write, derive
  and refresh routines included), and the default privileges stop giving it to new ones.
* No ``CREATE`` on the schema, no ``TEMPORARY`` on the database (``PUBLIC`` loses it; the role that migrates
  keeps it: the write and derive routines use temporary tables), no large objects (``PUBLIC`` loses the
  functions that create one: that needs a superuser to migrate, otherwise ``migrate`` warns). With TimescaleDB,
  whose functions live in the schema and stay executable (``time_bucket`` …), ``PUBLIC`` loses ``add_job`` (the
  one management function that does not check ownership of a hypertable: a reader could schedule jobs).
* Role settings: read-only transactions, a statement timeout, no JIT, and a connection limit. The three
  settings are user-settable (a reader can ``SET`` them back): they are defaults, not the guarantee. The
  guarantee is the privileges above; a reader that turns read-only off still cannot write anything.

Nothing a reader can take stalls ingestion, derivation, rollup refreshes or ``migrate``: none of them waits on an
advisory lock any more (a reader can take any advisory lock). They lock rows of, or whole, internal tables that a
reader has no privilege on (``LOCK TABLE`` and ``SELECT … FOR UPDATE`` need more than ``SELECT``): derivation
``derive_locks`` rows, each rollup refresh its own mark queue, ``migrate`` ``callscope_migrate_lock``, the price
update ``telephony_rates``. What a reader's ``SELECT`` takes (``ACCESS SHARE``) conflicts only with ``ACCESS
EXCLUSIVE``, which none of those paths takes; a migration that alters a table does, and ``migrate`` ends the
reader sessions its migration waits for (storage/migrate.py) rather than queue every write behind them.

Roles are cluster-wide, so several databases (and parallel test sessions) may change the same role at once:
``role_state_sql`` changes only what differs from the wanted state and retries PostgreSQL's "tuple concurrently
updated".
"""

from __future__ import annotations

from storage.routines import STABLE_ROUTINES

__all__ = ["READER", "PUBLIC_TABLES", "PUBLIC_VIEWS", "DASHBOARD_ROLLUPS", "READ_API_TABLES", "READER_RELATIONS",
           "READER_FUNCTIONS", "READER_SETTINGS", "DEFAULT_CONNECTION_LIMIT", "LARGE_OBJECT_CREATORS",
           "role_state_sql", "privileges_sql", "function_privileges_sql", "password_sql"]

READER = "callscope_reader"

#: design §3.
PUBLIC_TABLES = ("calls", "turns", "spans", "tool_calls", "events", "event_types")
#: Public views (design §10, docs/dashboards.md): a view reads its tables with its owner's privileges.
PUBLIC_VIEWS = ("latency_turns", "latency_stage_1m", "call_spans", "call_events", "call_quality", "campaign_funnel")
#: The rollups the generated dashboards and alerts read (dashboards/, dashboards/alerts.py).
DASHBOARD_ROLLUPS = ("turn_latency_1h", "turn_latency_breakdown_1h", "call_status_1h", "stage_latency_1m",
                     "latency_stage_1h",
                     "event_counts_1m", "event_counts_1h")
#: Read by the read API functions ``callscope_call_spans`` / ``callscope_call_events`` with the caller's
#: privileges (SQL functions that the planner inlines; SECURITY DEFINER would stop inlining and bypass row-level
#: security): the trace → call mapping (what ``calls.trace_ids`` shows) and the resource attributes (what
#: ``spans.resource`` shows).
READ_API_TABLES = ("call_traces", "resources")
READER_RELATIONS = PUBLIC_TABLES + PUBLIC_VIEWS + DASHBOARD_ROLLUPS + READ_API_TABLES

#: Functions a reader may execute (by name, every signature): the stable read API (storage/routines.py), and
#: ``callscope_current_tenant`` (SECURITY DEFINER), which the row-level security policies call with the reader's
#: privileges (migration 0013_tenants, storage/tenants.py).
READER_FUNCTIONS = STABLE_ROUTINES + ("callscope_call_spans", "callscope_call_events", "callscope_current_tenant")

#: Role-level defaults (user-settable: see the module docstring).
READER_SETTINGS = {"default_transaction_read_only": "on", "statement_timeout": "60s", "jit": "off"}
DEFAULT_CONNECTION_LIMIT = 20

#: pg_catalog functions that create a large object (EXECUTE revoked from PUBLIC; only a superuser can).
LARGE_OBJECT_CREATORS = ("lo_creat(integer)", "lo_create(oid)", "lo_from_bytea(oid, bytea)", "lo_import(text)",
                         "lo_import(text, oid)")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _array(names: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(_literal(n) for n in names) + "]::text[]"


def _retrying(body: str) -> str:
    """``body`` (PL/pgSQL statements) in a DO block retried when another session changed the same role."""
    return f"""
DO $lockdown$
DECLARE
  attempt int := 0;
BEGIN
  LOOP
    BEGIN
{body}
      EXIT;
    EXCEPTION WHEN duplicate_object OR unique_violation OR internal_error THEN
      -- CREATE ROLE racing another session, or XX000 "tuple concurrently updated" (pg_authid,
      -- pg_db_role_setting are shared by every database of the cluster)
      IF SQLSTATE = 'XX000' AND SQLERRM NOT LIKE '%concurrently%' THEN
        RAISE;
      END IF;
      attempt := attempt + 1;
      IF attempt >= 50 THEN
        RAISE;
      END IF;
      PERFORM pg_sleep(0.01 * attempt);
    END;
  END LOOP;
END
$lockdown$"""


def role_state_sql(role: str = READER, *, connection_limit: int | None = DEFAULT_CONNECTION_LIMIT,
                   settings: dict[str, str] | None = None) -> str:
    """Create ``role`` NOLOGIN if missing, give it ``settings`` (all databases) and ``connection_limit`` (None:
    leave it); changes only what differs, so concurrent runs of the same state do not collide."""
    settings = READER_SETTINGS if settings is None else settings
    lines = [f"""      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_literal(role)}) THEN
        CREATE ROLE {role} NOLOGIN;
      END IF;"""]
    for name, value in settings.items():
        lines.append(f"""      IF NOT coalesce((SELECT CAST({_literal(f"{name}={value}")} AS text) = ANY(rolconfig)
                       FROM pg_roles WHERE rolname = {_literal(role)}), false) THEN
        ALTER ROLE {role} SET {name} = {_literal(value)};
      END IF;""")
    if connection_limit is not None:
        limit = int(connection_limit)
        lines.append(f"""      IF (SELECT rolconnlimit FROM pg_roles WHERE rolname = {_literal(role)}) <> {limit} THEN
        ALTER ROLE {role} CONNECTION LIMIT {limit};
      END IF;""")
    return _retrying("\n".join(lines))


def password_sql(quoted_password: str, role: str = READER) -> str:
    """LOGIN with the password (``quoted_password``: an SQL literal, e.g. from ``quote_literal``), retried."""
    return _retrying(f"      ALTER ROLE {role} LOGIN PASSWORD {quoted_password};")


_FUNCTIONS = f"""
  -- functions: nobody but the owner runs ours (an extension's keep their privileges), the reader the read API
  ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
  FOR r IN SELECT p.oid::regprocedure AS fn, p.proname, p.prokind FROM pg_proc p
           WHERE p.pronamespace = current_schema()::regnamespace
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                             AND d.deptype = 'e') LOOP
    EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC, {{role}}',
                   CASE r.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, r.fn);
    IF r.proname = ANY({_array(READER_FUNCTIONS)}) THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO {{role}}', r.fn);
    END IF;
  END LOOP;
"""


def _functions(role: str) -> str:
    return _FUNCTIONS.format(role=role)


def function_privileges_sql(role: str = READER) -> str:
    """``EXECUTE``: nobody but the owner on the schema's own functions, the reader on the read API (idempotent;
    run again after routines are created: ``CREATE OR REPLACE`` keeps a function's privileges, a new one gets
    the default privileges)."""
    return "\nDO $lockdown$\nDECLARE\n  r record;\nBEGIN\n" + _functions(role) + "END\n$lockdown$"


def privileges_sql(role: str = READER) -> str:
    """The reader's privileges in the current database and schema (idempotent; see the module docstring).

    Relations of ``READER_RELATIONS`` that do not exist here (backend-dependent ones) are skipped."""
    return f"""
DO $lockdown$
DECLARE
  r record;
BEGIN
  -- relations: SELECT on the public ones, nothing on anything else (0002's default privileges gave it all)
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE ALL ON TABLES FROM {role}', current_schema());
  EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {role}', current_schema());
  EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM {role}', current_schema());
  FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY({_array(READER_RELATIONS)})
             AND c.relkind IN ('r', 'v', 'm', 'p', 'f') LOOP
    EXECUTE format('GRANT SELECT ON %s TO {role}', r.rel);
  END LOOP;
{_functions(role)}  -- no CREATE on the schema, no temporary tables (the migrating role keeps them: routines use them)
  EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, {role}', current_schema());
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema());
  EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO CURRENT_USER', current_database());
  EXECUTE format('REVOKE TEMPORARY, CREATE ON DATABASE %I FROM PUBLIC, {role}', current_database());
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO {role}', current_database());
  -- no large objects (pg_catalog's functions: only a superuser can revoke them; otherwise say so)
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    REVOKE EXECUTE ON FUNCTION {", ".join(LARGE_OBJECT_CREATORS)} FROM PUBLIC;
  ELSIF has_function_privilege('{role}', 'lo_create(oid)', 'EXECUTE') THEN
    RAISE WARNING '{role} can still create large objects in this database: run `callscope migrate` once as a '
                  'superuser (it revokes EXECUTE on lo_create and the like from PUBLIC)';
  END IF;
  -- TimescaleDB's functions live in this schema and keep PUBLIC's EXECUTE (time_bucket and the like are read
  -- API); its management functions check ownership of the hypertable, but add_job does not: a reader could
  -- schedule background jobs of its own, which take the workers retention needs (the extension's owner can revoke)
  FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
           JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
           JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'timescaledb'
           WHERE p.proname = 'add_job' AND pg_has_role(current_user, p.proowner, 'USAGE') LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', r.fn);
  END LOOP;
END
$lockdown$"""
