"""Tenants: a tenant column on every public table, (tenant, call id) as the call's identity, row-level security

* Every public table, the rollups the dashboards read and the internal relations that name a call
  (``call_traces``, ``dirty_calls``, ``call_quarantine``, ``resources``) get ``tenant text NOT NULL DEFAULT
  'default'`` (design §9; existing rows are the ``default`` tenant's). The API key of an Export decides it
  (collector/auth.py), never an attribute.
* Keys: the tenant joins every key that names a call, a trace, a span, an event or a resource, as the column
  after the id (``calls (call_id, tenant)``, ``spans (trace_id, span_id, start_time, tenant)``, …): equal call ids
  of two tenants are two calls, and every existing lookup by id still goes through the same index.
* ``tenant_readers``: which login role reads as which tenant (``callscope tenants create`` adds one; the plain
  ``callscope_reader`` reads as ``default``). ``callscope_current_tenant()`` (SECURITY DEFINER, STABLE) maps
  ``session_user`` through it: neither ``SET ROLE`` nor any setting a reader can change moves it; an unmapped
  login reads nothing.
* Row-level security on every table with a tenant column: policy ``tenant_rows`` (SELECT), ``tenant = (SELECT
  callscope_current_tenant())`` — an initplan, evaluated once per query. The owner (the collector, which migrates)
  bypasses it; readers see their tenant's rows. (The comparison is written ``IS NOT DISTINCT FROM`` in fact: see
  ``POLICY``.) The views are recreated ``security_invoker``, so they read the base
  tables with the reader's rights (and carry the tenant column and tenant-aware joins); ``callscope_call_spans`` /
  ``callscope_call_events`` take an optional tenant.
* TimescaleDB: continuous aggregates cannot have row-level security and run as their owner, so
  ``latency_stage_1m`` / ``latency_stage_1h`` become what they are on plain PostgreSQL (a view and two tables the
  deriver keeps, per tenant); every span minute is marked for the deriver's refresh. Nor does TimescaleDB
  compress a table with row-level security: compressed chunks of ``spans`` / ``events`` are decompressed and
  compression is turned off (retention stays; ``callscope migrate`` adds no compression policy to them).
* The rollups gain ``tenant`` as a dimension; every existing bucket is marked so that the refreshes rebuild them.

Revision ID: 0013_tenants
Revises: 0012_reader_lockdown
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0013_tenants"
down_revision = "0012_reader_lockdown"
branch_labels = None
depends_on = None

READER = "callscope_reader"
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
TZ = sa.DateTime(timezone=True)

#: Tables that name a tenant's data (row-level security on each).
DATA_TABLES = ("calls", "turns", "spans", "tool_calls", "events", "call_traces", "dirty_calls", "call_quarantine",
               "resources")
ROLLUP_TABLES = ("turn_latency_1m", "turn_latency_1h", "turn_latency_breakdown_1h", "call_status_1h",
                 "stage_latency_1m", "latency_stage_1h", "event_counts_1m", "event_counts_1h")
VIEWS = ("call_quality", "campaign_funnel", "latency_turns", "call_spans", "call_events", "latency_stage_1m")

# (table, constraint or index, old columns, new columns); "pk" rows are primary keys, "unique" unique indexes
KEYS = (
    ("pk", "calls", "calls_pkey", "call_id", "call_id, tenant"),
    ("pk", "turns", "turns_pkey", "call_id, turn_number", "call_id, tenant, turn_number"),
    ("pk", "tool_calls", "tool_calls_pkey", "call_id, tool_call_id", "call_id, tenant, tool_call_id"),
    ("pk", "call_traces", "call_traces_pkey", "trace_id", "trace_id, tenant"),
    ("pk", "call_quarantine", "call_quarantine_pkey", "call_id", "call_id, tenant"),
    ("pk", "resources", "resources_pkey", "resource_id", "resource_id, tenant"),
    ("unique", "spans", "spans_identity_idx", "trace_id, span_id, start_time", "trace_id, span_id, start_time, tenant"),
    ("unique", "events", "events_identity_idx", 'event_id, "time"', 'event_id, "time", tenant'),
    ("index", "spans", "spans_call_idx", "call_id, start_time", "call_id, tenant, start_time"),
    ("index", "events", "events_call_idx", 'call_id, "time"', 'call_id, tenant, "time"'),
    ("index", "call_traces", "call_traces_call_idx", "call_id", "call_id, tenant"),
    ("index", "dirty_calls", "dirty_calls_call_idx", "call_id", "call_id, tenant"),
)

# The policy: an initplan (the function runs once per query), compared with IS NOT DISTINCT FROM so that the tenant
# is never an index condition. The planner, without statistics (autovacuum may be off), would otherwise read a
# whole tenant through an index the tenant is not the first column of; as a filter, every query keeps the index
# path it has without the policy.
POLICY = "tenant IS NOT DISTINCT FROM (SELECT callscope_current_tenant())"

CURRENT_TENANT = """
CREATE OR REPLACE FUNCTION callscope_current_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
    -- the tenant of the login role (session_user: SET ROLE does not change it); NULL (no rows) if unmapped
    SELECT r.tenant FROM tenant_readers r WHERE r.role_name = session_user
$$
"""


def _migration(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"storage.migrations.versions.{name}")


def _replace_all(sql: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if old not in sql:
            raise RuntimeError(f"0013_tenants: expected {old!r} in a view of an earlier migration")
        sql = sql.replace(old, new)
    return sql


# --- the views and functions, tenant-aware -----------------------------------------------------------------------

_SPAN_ROW = ("s.start_time, s.end_time, s.duration_ms, s.trace_id, s.span_id, s.parent_span_id, s.call_id, "
             "s.call_id_explicit, s.turn_number, s.stage, s.name, s.service_name, s.scope_name, s.kind, s.status_code, "
             "s.status_message, s.provider, s.model, s.ttfb_ms, s.input_tokens, s.output_tokens, s.framework, "
             "s.attributes, s.events, "
             "coalesce(s.resource, (SELECT r.attributes FROM resources r "
             "WHERE r.resource_id = s.resource_id AND r.tenant = s.tenant)), "
             "s.facts, s.resource_id, s.tenant")
# of_tenant NULL: any tenant's rows the caller may read (a reader's are its tenant's only, by row-level security)
CALL_SPANS_FUNCTION = """
CREATE FUNCTION callscope_call_spans(wanted text, of_tenant text DEFAULT NULL) RETURNS SETOF spans
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    -- the spans of one call: those stored under its id (minus rows of a trace id that since named another
    -- call), and those stored under the trace id of one of its traces before that trace named the call
    SELECT """ + _SPAN_ROW + """ FROM spans s
    WHERE s.call_id = wanted AND (of_tenant IS NULL OR s.tenant IS NOT DISTINCT FROM of_tenant)
      -- a scalar subquery with LIMIT, not NOT EXISTS, which the planner may turn into a hashed scan of every
      -- call_traces row when it expects many spans
      AND (s.call_id_explicit OR (
           SELECT 1 FROM call_traces k WHERE k.trace_id = s.trace_id AND k.tenant = s.tenant AND k.call_id <> wanted
           LIMIT 1) IS NULL)
    UNION ALL
    -- one lookup per trace id (equality: spans_identity_idx whatever the planner estimates; "= ANY (ARRAY(...))"
    -- is planned as a sequential scan of all spans without statistics)
    SELECT """ + _SPAN_ROW + """ FROM call_traces k
    CROSS JOIN LATERAL (SELECT * FROM spans s3
                        WHERE s3.trace_id = k.trace_id
                          AND (of_tenant IS NULL OR s3.tenant IS NOT DISTINCT FROM of_tenant)
                          AND NOT s3.call_id_explicit AND s3.call_id <> wanted
                        OFFSET 0) s
    WHERE k.call_id = wanted AND (of_tenant IS NULL OR k.tenant = of_tenant)
      AND k.tenant IS NOT DISTINCT FROM s.tenant
$$
"""
CALL_EVENTS_FUNCTION = """
CREATE FUNCTION callscope_call_events(wanted text, of_tenant text DEFAULT NULL) RETURNS SETOF events
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.* FROM events e
    WHERE e.call_id = wanted AND (of_tenant IS NULL OR e.tenant IS NOT DISTINCT FROM of_tenant)
      AND (e.call_id_explicit OR e.trace_id IS NULL OR (
           SELECT 1 FROM call_traces k WHERE k.trace_id = e.trace_id AND k.tenant = e.tenant AND k.call_id <> wanted
           LIMIT 1) IS NULL)
    UNION ALL
    SELECT e.* FROM call_traces k
    CROSS JOIN LATERAL (SELECT * FROM events e3
                        WHERE e3.trace_id = k.trace_id
                          AND (of_tenant IS NULL OR e3.tenant IS NOT DISTINCT FROM of_tenant)
                          AND NOT e3.call_id_explicit AND e3.call_id <> wanted
                        OFFSET 0) e
    WHERE k.call_id = wanted AND (of_tenant IS NULL OR k.tenant = of_tenant)
      AND k.tenant IS NOT DISTINCT FROM e.tenant
$$
"""

_SPAN_COLUMNS = ("start_time, end_time, duration_ms, trace_id, span_id, parent_span_id, {call_id}, call_id_explicit, "
                 "turn_number, stage, name, service_name, scope_name, kind, status_code, status_message, provider, "
                 "model, ttfb_ms, input_tokens, output_tokens, framework, attributes, events, "
                 "coalesce(resource, (SELECT r.attributes FROM resources r "
                 "WHERE r.resource_id = s.resource_id AND r.tenant = s.tenant)) "
                 "AS resource, facts, resource_id, tenant")
_EVENT_COLUMNS = ("time, event_id, {call_id}, call_id_explicit, trace_id, span_id, category, event, level, message, "
                  "data, source, turn_number, tenant")
_RESOLVED = ("CASE WHEN {t}.call_id_explicit OR {t}.trace_id IS NULL THEN {t}.call_id ELSE coalesce("
             "(SELECT k.call_id FROM call_traces k WHERE k.trace_id = {t}.trace_id AND k.tenant = {t}.tenant), "
             "{t}.call_id) END AS call_id")
_INVOKER = "WITH (security_invoker = true)"
CALL_SPANS_VIEW = (f"CREATE VIEW call_spans {_INVOKER} AS SELECT "
                   + _SPAN_COLUMNS.format(call_id=_RESOLVED.format(t="s")) + " FROM spans s")
CALL_EVENTS_VIEW = (f"CREATE VIEW call_events {_INVOKER} AS SELECT "
                    + _EVENT_COLUMNS.format(call_id=_RESOLVED.format(t="e")) + " FROM events e")

LATENCY_TURNS = f"""
CREATE VIEW latency_turns {_INVOKER} AS
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
       t.interrupted,
       t.tenant
FROM turns t
LEFT JOIN calls c ON c.call_id = t.call_id AND c.tenant = t.tenant
"""

_PG_BUCKET = "date_bin('1 minute', start_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
LATENCY_STAGE_VIEW = f"""
CREATE VIEW latency_stage_1m {_INVOKER} AS
SELECT {_PG_BUCKET} AS bucket,
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
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       tenant
FROM spans
WHERE stage IN ('stt', 'llm', 'tts', 'tool')
GROUP BY 1, 2, 3, 4, tenant
"""


def _call_quality() -> str:
    sql = _migration("0011_quality_silence_campaigns").CALL_QUALITY
    return _replace_all(sql, (
        ("CREATE OR REPLACE VIEW call_quality AS", f"CREATE VIEW call_quality {_INVOKER} AS"),
        ("SELECT c.call_id, c.started_at,", "SELECT c.call_id, c.tenant, c.started_at,"),
        ("FROM turns t WHERE t.call_id = c.call_id)", "FROM turns t WHERE t.call_id = c.call_id AND t.tenant = c.tenant)"),
        ("callscope_call_spans(c.call_id)", "callscope_call_spans(c.call_id, c.tenant)"),
        ("callscope_call_events(c.call_id)", "callscope_call_events(c.call_id, c.tenant)"),
        ("WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id",
         "WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id AND p.tenant = s.tenant"),
        ("WHERE p1.trace_id = s.trace_id AND p1.span_id = s.parent_span_id",
         "WHERE p1.trace_id = s.trace_id AND p1.span_id = s.parent_span_id AND p1.tenant = s.tenant"),
        ("(SELECT 1 FROM spans s WHERE s.trace_id = e.trace_id LIMIT 1)",
         "(SELECT 1 FROM spans s WHERE s.trace_id = e.trace_id AND s.tenant = e.tenant LIMIT 1)"),
    ))


def _campaign_funnel() -> str:
    sql = _migration("0011_quality_silence_campaigns").CAMPAIGN_FUNNEL
    return _replace_all(sql, (
        ("CREATE OR REPLACE VIEW campaign_funnel AS", f"CREATE VIEW campaign_funnel {_INVOKER} AS"),
        ("       c.campaign,\n", "       c.campaign,\n       c.tenant,\n"),
        ("WHERE tc.call_id = c.call_id AND", "WHERE tc.call_id = c.call_id AND tc.tenant = c.tenant AND"),
        ("callscope_call_events(c.call_id)", "callscope_call_events(c.call_id, c.tenant)"),
        ("FROM turns t WHERE t.call_id = ANY (array_agg(c.call_id))",
         "FROM turns t WHERE t.call_id = ANY (array_agg(c.call_id)) AND t.tenant = c.tenant"),
        ("GROUP BY 1, 2\n", "GROUP BY 1, 2, 3\n"),
    ))


def _drop_views() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")


# --- TimescaleDB: continuous aggregates give way to the plain path ------------------------------------------------

def _is_continuous_aggregate(conn: sa.Connection, name: str) -> bool:
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is None:
        return False
    return conn.execute(sa.text(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema() AND view_name = :name"), {"name": name}).first() is not None


def _stage_tables() -> None:
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


def _leave_continuous_aggregates(conn: sa.Connection) -> None:
    if _is_continuous_aggregate(conn, "latency_stage_1h"):
        op.execute("DROP MATERIALIZED VIEW latency_stage_1h")
    if _is_continuous_aggregate(conn, "latency_stage_1m"):
        op.execute("DROP MATERIALIZED VIEW latency_stage_1m")
    if conn.execute(sa.text("SELECT to_regclass('stage_latency_1m') IS NULL")).scalar():
        op.execute(f"CREATE INDEX IF NOT EXISTS spans_latency_bucket_idx ON spans ({_PG_BUCKET}) "
                   "WHERE stage IN ('stt', 'llm', 'tts', 'tool')")
        _stage_tables()


def _leave_compression(conn: sa.Connection) -> None:
    """TimescaleDB compresses no table with row-level security (and refuses to enable it on a hypertable with
    compression on): the compression policy goes, every compressed chunk of spans / events is decompressed and
    compression is turned off. Retention stays. (Decompressing needs the disk space of the raw rows.)"""
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is None:
        return
    for table in ("spans", "events"):
        if not conn.execute(sa.text(
                "SELECT compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = current_schema() AND hypertable_name = :t"), {"t": table}).scalar():
            continue
        op.execute(f"SELECT remove_compression_policy('{table}', if_exists => true)")
        op.execute(f"SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('{table}') c")
        op.execute(f"ALTER TABLE {table} SET (timescaledb.compress = false)")


# --- upgrade / downgrade ------------------------------------------------------------------------------------------

def _rekey(new: bool) -> None:
    for kind, table, name, old_columns, new_columns in KEYS:
        columns = new_columns if new else old_columns
        if kind == "pk":
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} PRIMARY KEY ({columns})")
        else:
            op.execute(f"DROP INDEX {name}")
            unique = "UNIQUE " if kind == "unique" else ""
            op.execute(f"CREATE {unique}INDEX {name} ON {table} ({columns})")


def upgrade() -> None:
    conn = op.get_bind()
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
    # first: TimescaleDB refuses DROP VIEW on the continuous aggregate latency_stage_1m (one of VIEWS elsewhere)
    _leave_continuous_aggregates(conn)
    _leave_compression(conn)
    _drop_views()
    for function in ("callscope_call_spans(text)", "callscope_call_events(text)"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")

    for table in DATA_TABLES + ROLLUP_TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN tenant text NOT NULL DEFAULT 'default'")
    _rekey(new=True)

    op.create_table(
        "tenant_readers",
        sa.Column("role_name", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), sa.ForeignKey("tenants.name", onupdate="CASCADE", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
    )
    op.execute(f"INSERT INTO tenant_readers (role_name, tenant) VALUES ('{READER}', 'default')")
    op.execute(f"REVOKE ALL ON tenant_readers FROM {READER}")
    op.execute(CURRENT_TENANT.format(schema=conn.execute(sa.text("SELECT quote_ident(:s)"), {"s": schema}).scalar()))
    op.execute("REVOKE ALL ON FUNCTION callscope_current_tenant() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION callscope_current_tenant() TO {READER}")
    for table in DATA_TABLES + ROLLUP_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_rows ON {table} FOR SELECT USING ({POLICY})")

    op.execute(CALL_SPANS_FUNCTION)
    op.execute(CALL_EVENTS_FUNCTION)
    op.execute(CALL_SPANS_VIEW)
    op.execute(CALL_EVENTS_VIEW)
    op.execute(LATENCY_TURNS)
    op.execute(LATENCY_STAGE_VIEW)
    op.execute(_call_quality())
    op.execute(_campaign_funnel())
    op.execute(f"GRANT EXECUTE ON FUNCTION callscope_call_spans(text, text), callscope_call_events(text, text) "
               f"TO {READER}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {READER}")
    op.execute(f"GRANT SELECT ON stage_latency_1m, latency_stage_1h TO {READER}")

    # the rollups are rebuilt per tenant by the deriver's next refreshes
    for table in ROLLUP_TABLES:
        op.execute(f"DELETE FROM {table}")
    op.execute("INSERT INTO turn_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 minute', started_at, "
               f"{ORIGIN}) FROM turns WHERE started_at IS NOT NULL ORDER BY 1")
    op.execute("INSERT INTO call_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 hour', started_at, "
               f"{ORIGIN}) FROM calls WHERE started_at IS NOT NULL ORDER BY 1")
    op.execute("INSERT INTO stage_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 minute', start_time, "
               f"{ORIGIN}) FROM spans WHERE stage IN ('stt', 'llm', 'tts', 'tool') ORDER BY 1")
    op.execute("INSERT INTO event_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 minute', time, "
               f"{ORIGIN}) FROM events ORDER BY 1")


def downgrade() -> None:
    _drop_views()
    for function in ("callscope_call_spans(text, text)", "callscope_call_events(text, text)"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    for table in DATA_TABLES + ROLLUP_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_rows ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION IF EXISTS callscope_current_tenant()")
    op.drop_table("tenant_readers")
    # another tenant's rows would collide with the default tenant's under the old keys
    for table in DATA_TABLES + ROLLUP_TABLES:
        op.execute(f"DELETE FROM {table} WHERE tenant <> 'default'")
    _rekey(new=False)
    for table in DATA_TABLES + ROLLUP_TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN tenant")
    v0002, v0005, v0011 = _migration("0002_grafana"), _migration("0005_storage_v2"), _migration("0011_quality_silence_campaigns")
    op.execute(v0005.CALL_SPANS_FUNCTION)
    op.execute(v0005.CALL_EVENTS_FUNCTION)
    op.execute(v0005.CALL_SPANS_VIEW)
    op.execute(v0005.CALL_EVENTS_VIEW)
    op.execute(v0002._LATENCY_TURNS)
    op.execute("CREATE OR REPLACE VIEW latency_stage_1m AS " + v0002._STAGE_SELECT.format(bucket=v0002._PG_BUCKET))
    op.execute(v0011.CALL_QUALITY)
    op.execute(v0011.CAMPAIGN_FUNNEL)
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {READER}")
