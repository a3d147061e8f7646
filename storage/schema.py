"""Storage: the public SQL schema (design.md §3) as SQLAlchemy Core — the contract users and dashboards query.

Names of design §3 never change without a migration and a note; extra columns are ours (marked below).
Alembic migrations (storage/migrations/) create exactly these tables; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData,
    PrimaryKeyConstraint, SmallInteger, Identity, Table, Text, text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["metadata", "tenant_readers", "calls", "turns", "spans", "tool_calls", "events", "event_types", "call_traces",
           "HYPERTABLES", "dirty_calls", "call_quarantine", "telephony_rates", "resources", "turn_latency_1m",
           "turn_latency_1h", "call_status_1h", "turn_rollup_dirty", "call_rollup_dirty", "turn_latency_breakdown_1h",
           "stage_latency_1m", "latency_stage_1h", "event_counts_1m", "event_counts_1h", "stage_rollup_dirty",
           "event_rollup_dirty", "PLAIN_POSTGRESQL_ONLY", "tenants", "api_keys",
           "derive_locks", "callscope_migrate_lock"]

metadata = MetaData()
TZ = DateTime(timezone=True)

calls = Table(
    "calls", metadata,
    Column("call_id", Text, nullable=False),
    Column("trace_ids", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("started_at", TZ),
    Column("ended_at", TZ),
    Column("last_seen_at", TZ),
    Column("duration_s", Float),
    Column("status", Text, nullable=False, server_default="active"),
    Column("status_reason", Text),
    Column("direction", Text),
    Column("campaign", Text),
    Column("agent", Text),
    Column("framework", Text),
    Column("from_number", Text),
    Column("to_number", Text),
    Column("turn_count", Integer, nullable=False, server_default="0"),
    Column("interruption_count", Integer, nullable=False, server_default="0"),
    Column("tool_call_count", Integer, nullable=False, server_default="0"),
    Column("error_count", Integer, nullable=False, server_default="0"),
    Column("cost_total", Float),
    Column("cost_stt", Float),
    Column("cost_llm", Float),
    Column("cost_tts", Float),
    Column("cost_telephony", Float),
    Column("currency", Text),
    Column("summary", Text),
    Column("tags", ARRAY(Text)),
    Column("extracted", JSONB),
    Column("recording_url", Text),
    Column("attributes", JSONB),
    # ours: when the ledger row was last recomputed
    Column("updated_at", TZ, nullable=False, server_default=text("now()")),
    # ours: active, but no telemetry for longer than the collector's idle timeout (design §4)
    Column("stale", Boolean, nullable=False, server_default=text("false")),
    # design §10: every / the longest stretch where neither side speaks; turns with a barge-in
    Column("dead_air_total_s", Float),
    Column("longest_silence_ms", Float),
    Column("barge_in_count", Integer),
    # ours: a successful transfer tool call or a transfer event (migration 0015; campaign funnels)
    Column("transferred", Boolean, nullable=False, server_default=text("false")),
    # design §9: the tenant of the API key the rows came with (migration 0013); part of every call's identity
    Column("tenant", Text, nullable=False, server_default="default"),
    PrimaryKeyConstraint("call_id", "tenant", name="calls_pkey"),
)
Index("calls_started_at_idx", calls.c.started_at.desc())
Index("calls_status_started_idx", calls.c.status, calls.c.started_at.desc())
Index("calls_campaign_started_idx", calls.c.campaign, calls.c.started_at.desc())
Index("calls_agent_started_idx", calls.c.agent, calls.c.started_at.desc())
# campaign_funnel's day (a UTC date, so the expression is immutable and indexable)
Index("calls_day_campaign_idx", text("((started_at AT TIME ZONE 'UTC')::date)"), calls.c.campaign)

turns = Table(
    "turns", metadata,
    Column("call_id", Text, nullable=False),
    Column("turn_number", Integer, nullable=False),
    Column("started_at", TZ),
    Column("ended_at", TZ),
    Column("user_text", Text),
    Column("agent_text", Text),
    Column("interrupted", Boolean, nullable=False, server_default=text("false")),
    Column("user_stopped_at", TZ),
    Column("stt_final_at", TZ),
    Column("llm_request_at", TZ),
    Column("llm_first_token_at", TZ),
    Column("tts_request_at", TZ),
    Column("tts_first_audio_at", TZ),
    Column("agent_started_at", TZ),
    Column("eou_ms", Float),
    Column("stt_ms", Float),
    Column("stt_to_llm_ms", Float),
    Column("llm_ttft_ms", Float),
    Column("llm_to_tts_ms", Float),
    Column("tts_ttfb_ms", Float),
    Column("voice_to_voice_ms", Float),
    Column("reported_v2v_ms", Float),
    Column("llm_provider", Text),
    Column("llm_model", Text),
    Column("stt_provider", Text),
    Column("tts_provider", Text),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    # ours: the agent of the call, copied so latency panels group by agent without a join
    Column("agent", Text),
    # design §10: the longest silence inside the turn; user speech during agent speech → agent audio stops
    Column("dead_air_ms", Float),
    Column("barge_in_stop_ms", Float),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    PrimaryKeyConstraint("call_id", "tenant", "turn_number", name="turns_pkey"),
)
Index("turns_started_at_idx", turns.c.started_at)

spans = Table(
    "spans", metadata,
    Column("start_time", TZ, nullable=False),
    Column("end_time", TZ, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("trace_id", Text, nullable=False),
    Column("span_id", Text, nullable=False),
    Column("parent_span_id", Text),
    Column("call_id", Text, nullable=False),
    Column("call_id_explicit", Boolean, nullable=False, server_default=text("false")),   # ours
    Column("turn_number", Integer),
    Column("stage", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("service_name", Text),
    Column("scope_name", Text),
    Column("kind", SmallInteger, nullable=False, server_default="0"),
    Column("status_code", SmallInteger, nullable=False, server_default="0"),
    Column("status_message", Text),
    Column("provider", Text),
    Column("model", Text),
    Column("ttfb_ms", Float),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("framework", Text),                 # ours: the mapper that claimed the span
    Column("attributes", JSONB, nullable=False),
    Column("events", JSONB),
    Column("resource", JSONB),
    Column("facts", JSONB),                     # ours: the span's contribution to its call and turn
    # ours: the span's resource, stored once in ``resources`` (``resource`` stays NULL for spans stored so;
    # view call_spans and callscope_call_spans() show it filled in)
    Column("resource_id", Text),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
)
# Retried batches are stored once: the unique key includes the partitioning column (TimescaleDB rule). The tenant
# follows the ids in every key (migration 0013): equal ids of two tenants are two rows, lookups by id unchanged.
Index("spans_identity_idx", spans.c.trace_id, spans.c.span_id, spans.c.start_time, spans.c.tenant, unique=True)
Index("spans_call_idx", spans.c.call_id, spans.c.tenant, spans.c.start_time)
Index("spans_start_time_idx", spans.c.start_time.desc())

tool_calls = Table(
    "tool_calls", metadata,
    Column("call_id", Text, nullable=False),
    Column("turn_number", Integer),
    Column("tool_call_id", Text, nullable=False),
    Column("tool_name", Text, nullable=False),
    Column("started_at", TZ),
    Column("ended_at", TZ),
    Column("duration_ms", Float),
    Column("arguments", Text),
    Column("result", Text),
    Column("is_error", Boolean, nullable=False, server_default=text("false")),
    Column("error", Text),
    Column("span_id", Text),
    Column("trace_id", Text),                   # ours: lets a trace that later names its call move the row
    Column("call_id_explicit", Boolean, nullable=False, server_default=text("false")),   # ours
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    PrimaryKeyConstraint("call_id", "tenant", "tool_call_id", name="tool_calls_pkey"),
)
Index("tool_calls_started_at_idx", tool_calls.c.started_at)
Index("tool_calls_trace_idx", tool_calls.c.trace_id)
# ours (migration 0007): the newest failed tool calls of a range without reading the successful ones
Index("tool_calls_error_started_idx", tool_calls.c.started_at.desc(), postgresql_where=tool_calls.c.is_error)

events = Table(
    "events", metadata,
    Column("time", TZ, nullable=False),
    Column("event_id", Text, nullable=False),   # ours: deterministic, so retries are stored once
    Column("call_id", Text, nullable=False),
    Column("call_id_explicit", Boolean, nullable=False, server_default=text("false")),   # ours
    Column("trace_id", Text),
    Column("span_id", Text),
    Column("category", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("message", Text),
    Column("data", JSONB),
    Column("source", Text, nullable=False),
    Column("turn_number", Integer),             # ours
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
)
Index("events_identity_idx", events.c.event_id, events.c.time, events.c.tenant, unique=True)
Index("events_call_idx", events.c.call_id, events.c.tenant, events.c.time)
Index("events_event_time_idx", events.c.event, events.c.time.desc())
Index("events_trace_idx", events.c.trace_id)
Index("events_time_idx", events.c.time.desc())

event_types = Table(
    "event_types", metadata,
    Column("event", Text, primary_key=True),
    Column("display_name", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("default_level", Text, nullable=False),
    Column("description", Text, nullable=False),
)

# ours: every distinct OTLP resource (service.name, host, SDK, …) once, keyed by a hash of its JSON.
resources = Table(
    "resources", metadata,
    Column("resource_id", Text, nullable=False),
    Column("attributes", JSONB, nullable=False),
    Column("first_seen_at", TZ, nullable=False, server_default=text("now()")),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    PrimaryKeyConstraint("resource_id", "tenant", name="resources_pkey"),
)

# ours: which call a trace belongs to, learned from spans that name their call explicitly.
call_traces = Table(
    "call_traces", metadata,
    Column("trace_id", Text, nullable=False),
    Column("call_id", Text, nullable=False),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    PrimaryKeyConstraint("trace_id", "tenant", name="call_traces_pkey"),
)
Index("call_traces_call_idx", call_traces.c.call_id, call_traces.c.tenant)

# ours: calls a committed batch changed and whose turns / call row are not recomputed yet. Written in the
# same transaction as the spans (so a crash loses no recomputation), drained by storage/deriver.py.
dirty_calls = Table(
    "dirty_calls", metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("call_id", Text, nullable=False),
    Column("marked_at", TZ, nullable=False, server_default=text("now()")),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
)
Index("dirty_calls_call_idx", dirty_calls.c.call_id, dirty_calls.c.tenant)

# ours: calls whose derivation failed, with the error; retried with backoff, never blocking other calls.
call_quarantine = Table(
    "call_quarantine", metadata,
    Column("call_id", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("first_failed_at", TZ, nullable=False, server_default=text("now()")),
    Column("last_failed_at", TZ, nullable=False, server_default=text("now()")),
    Column("retry_at", TZ, nullable=False),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    PrimaryKeyConstraint("call_id", "tenant", name="call_quarantine_pkey"),
)
Index("call_quarantine_retry_idx", call_quarantine.c.retry_at)

# ours: price per minute by call direction, filled from the price table at collector start (design §7).
telephony_rates = Table(
    "telephony_rates", metadata,
    Column("direction", Text, primary_key=True),
    Column("per_minute", Float, nullable=False),
    Column("currency", Text, nullable=False, server_default="USD"),
    Column("price_version", Text),
    Column("updated_at", TZ, nullable=False, server_default=text("now()")),
)

# ours, internal: the per-call derive lock, one row per slot of hashtext(call_id) & 65535 (storage/deriver.py),
# and the table `callscope migrate` locks so that two runs serialize (storage/migrate.py). Row and table locks on
# tables a reader has no privilege on, instead of advisory locks any role can take (storage/reader.py).
derive_locks = Table(
    "derive_locks", metadata,
    Column("slot", Integer, primary_key=True, autoincrement=False),
)
callscope_migrate_lock = Table(
    "callscope_migrate_lock", metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
)

# ours: tenants (a single-tenant install has only 'default') and the API keys that write as one of them.
# Only a SHA-256 digest of each key is stored (storage/keys.py); the reader role cannot read either table.
tenants = Table(
    "tenants", metadata,
    Column("name", Text, primary_key=True),
    Column("created_at", TZ, nullable=False, server_default=text("now()")),
    Column("retention_days", Integer),   # NULL: the collector's retention_days
)
api_keys = Table(
    "api_keys", metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, ForeignKey("tenants.name", onupdate="CASCADE"), nullable=False),
    Column("label", Text),
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at", TZ, nullable=False, server_default=text("now()")),
    Column("revoked_at", TZ),
    Column("last_used_at", TZ),
)
Index("api_keys_tenant_idx", api_keys.c.tenant)

# ours (migration 0013): the login role that reads as each tenant (callscope tenants create), read through
# callscope_current_tenant() by the row-level security policies; 'callscope_reader' reads as 'default'.
tenant_readers = Table(
    "tenant_readers", metadata,
    Column("role_name", Text, primary_key=True),
    Column("tenant", Text, ForeignKey("tenants.name", onupdate="CASCADE", ondelete="CASCADE"), nullable=False),
    Column("created_at", TZ, nullable=False, server_default=text("now()")),
)


def _turn_latency(name: str, keys: tuple[str, ...] = ("agent", "llm_model", "llm_provider", "stt_provider",
                                                         "tts_provider", "campaign", "direction"),
                  quantiles: tuple[str, ...] = ()) -> Table:
    """Turn latencies per bucket and ``keys``, with percentile-capable histograms (storage/rollup.py)."""
    columns = [Column("bucket", TZ, nullable=False)]
    columns += [Column(key, Text, nullable=key != "breakdown") for key in keys]
    columns += [Column("turns", Integer, nullable=False)]
    for prefix in ("voice_to_voice", "stt", "llm_ttft", "tts_ttfb"):
        columns += [
            Column(f"{prefix}_samples", Integer, nullable=False),
            Column(f"{prefix}_sum_ms", Float),
            Column(f"{prefix}_min_ms", Float),
            Column(f"{prefix}_max_ms", Float),
            Column(f"{prefix}_bins", ARRAY(SmallInteger)),
            Column(f"{prefix}_counts", ARRAY(Integer)),
        ]
        columns += [Column(f"{prefix}_{q}_ms", Float) for q in quantiles]
    columns += [Column("tenant", Text, nullable=False, server_default="default")]   # a dimension (migration 0013)
    table = Table(name, metadata, *columns)
    if "breakdown" in keys:   # read one breakdown at a time
        Index(f"{name}_breakdown_bucket_idx", table.c.breakdown, table.c.bucket)
    else:
        Index(f"{name}_bucket_idx", table.c.bucket)
    return table


# ours: rollups the dashboards read for long ranges, kept by the deriver (storage/rollup.py).
turn_latency_1m = _turn_latency("turn_latency_1m")
turn_latency_1h = _turn_latency("turn_latency_1h")

call_status_1h = Table(
    "call_status_1h", metadata,
    Column("bucket", TZ, nullable=False),
    Column("status", Text, nullable=False),
    Column("direction", Text),
    Column("campaign", Text),
    Column("agent", Text),
    Column("calls", Integer, nullable=False),
    Column("cost_total", Float),
    Column("cost_samples", Integer, nullable=False),
    Column("cost_stt", Float),
    Column("cost_llm", Float),
    Column("cost_tts", Float),
    Column("cost_telephony", Float),
    Column("duration_s", Float),
    Column("duration_samples", Integer, nullable=False),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    # migration 0015: calls that reached a conversation / were transferred (the campaign funnel)
    Column("answered", Integer, nullable=False, server_default="0"),
    Column("transferred", Integer, nullable=False, server_default="0"),
)
Index("call_status_1h_bucket_idx", call_status_1h.c.bucket)

# ours: turn_latency_1h pre-merged per single breakdown (migration 0007): per hour, breakdown ('all', 'agent',
# 'llm_model', 'llm_provider', 'stt_provider', 'tts_provider') and its value, the same measures, and each
# latency's p50 / p95 / p99 read from the merged histogram (storage.rollup.STORED_QUANTILES).
turn_latency_breakdown_1h = _turn_latency("turn_latency_breakdown_1h", ("breakdown", "value"),
                                          ("p50", "p95", "p99"))

# ours: span latency per stage, provider and model (migration 0007). On plain PostgreSQL both are tables the
# deriver keeps: stage_latency_1m holds exactly what the view latency_stage_1m computes for a minute,
# latency_stage_1h adds up its minutes. Where latency_stage_1m is a TimescaleDB continuous aggregate,
# latency_stage_1h is a continuous aggregate on it (same columns) and stage_latency_1m does not exist.
stage_latency_1m = Table(
    "stage_latency_1m", metadata,
    Column("bucket", TZ, nullable=False),
    Column("stage", Text, nullable=False),
    Column("provider", Text),
    Column("model", Text),
    Column("samples", BigInteger, nullable=False),
    Column("ttfb_samples", BigInteger, nullable=False),
    Column("avg_ttfb_ms", Float),
    Column("p50_ttfb_ms", Float),
    Column("p95_ttfb_ms", Float),
    Column("p99_ttfb_ms", Float),
    Column("avg_duration_ms", Float),
    Column("p95_duration_ms", Float),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
)
Index("stage_latency_1m_bucket_idx", stage_latency_1m.c.bucket)

latency_stage_1h = Table(
    "latency_stage_1h", metadata,
    Column("bucket", TZ, nullable=False),
    Column("stage", Text, nullable=False),
    Column("provider", Text),
    Column("model", Text),
    Column("samples", BigInteger, nullable=False),
    Column("ttfb_samples", BigInteger, nullable=False),
    # sum over the hour's minutes of avg_ttfb_ms * ttfb_samples (the hour's TTFB sum)
    Column("ttfb_sum_ms", Float),
    # sum over the hour's minutes of p95_ttfb_ms * ttfb_samples (numerator of the sample-weighted mean p95)
    Column("p95_ttfb_sum_ms", Float),
    Column("max_p95_ttfb_ms", Float),
    # sum over the hour's minutes of avg_duration_ms * samples
    Column("duration_sum_ms", Float),
    Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
)
Index("latency_stage_1h_bucket_idx", latency_stage_1h.c.bucket)

#: Tables that exist only on plain PostgreSQL (continuous aggregates take their place on TimescaleDB).
PLAIN_POSTGRESQL_ONLY = ("stage_latency_1m", "latency_stage_1h")


def _event_counts(name: str) -> Table:
    """Events per bucket (UTC minute / hour of ``events.time``), category, event and level (migration 0007)."""
    table = Table(
        name, metadata,
        Column("bucket", TZ, nullable=False),
        Column("category", Text, nullable=False),
        Column("event", Text, nullable=False),
        Column("level", Text, nullable=False),
        Column("events", Integer, nullable=False),
        # calls (as call_events resolves them) whose first event of this category / event / level lies here
        Column("calls", Integer, nullable=False),
        Column("last_time", TZ, nullable=False),
        Column("tenant", Text, nullable=False, server_default="default"),   # design §9 (migration 0013)
    )
    Index(f"{name}_bucket_idx", table.c.bucket)
    return table


event_counts_1m = _event_counts("event_counts_1m")
event_counts_1h = _event_counts("event_counts_1h")


def _queue(name: str) -> Table:
    table = Table(
        name, metadata,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("bucket", TZ, nullable=False),
    )
    Index(f"{name}_bucket_idx", table.c.bucket)
    return table


# ours: buckets whose rollup rows must be recomputed (append-only marks, like dirty_calls).
turn_rollup_dirty = _queue("turn_rollup_dirty")
call_rollup_dirty = _queue("call_rollup_dirty")
stage_rollup_dirty = _queue("stage_rollup_dirty")
event_rollup_dirty = _queue("event_rollup_dirty")

# table → time column; these become hypertables where TimescaleDB is installed.
HYPERTABLES = {"spans": "start_time", "events": "time"}
