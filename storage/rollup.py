"""Rollups that keep dashboards fast at millions of calls: per-minute and per-hour turn latencies, per-hour
call counts and costs, kept by the deriver through dirty-bucket queues.

Tables (storage/schema.py, migration ``0006_turn_rollup``):

* ``turn_latency_1m`` / ``turn_latency_1h``: per bucket (UTC minute / hour of ``turns.started_at``) and per
  agent, LLM model / provider, STT / TTS provider, campaign and direction: the number of turns and, per
  latency (``voice_to_voice``, ``stt``, ``llm_ttft``, ``tts_ttfb``), samples, sum, min, max and a sparse
  log-scale histogram (``<metric>_bins smallint[]`` bin numbers, ``<metric>_counts int[]`` samples per bin).
* ``call_status_1h``: per hour of ``calls.started_at`` and status, direction, campaign, agent: calls, cost
  sums (and how many calls had a total cost), duration sum (and how many had one), and (migration
  ``0015_campaign_rollup``) the calls that were answered (``ANSWERED``) and transferred (``calls.transferred``).
* ``turn_rollup_dirty`` / ``call_rollup_dirty``: append-only marks of buckets to recompute.

Every rollup row also has a ``tenant`` (migration ``0013_tenants``): a dimension like the others, so tenants never
add up, and the column row-level security filters a reader's rows by. Marks name buckets only; a refresh
recomputes a bucket for every tenant. The derive-time marks take the claimed calls' tenant as ``$2``.

Histogram (the functions that read them: storage/histogram.py): bin 0 holds values below 1 ms (and negative
ones), bin ``b >= 1`` holds [r^(b-1), r^b) with ``r = HIST_RATIO`` (1.04). A percentile is read like ``percentile_cont`` (0-based rank ``q * (n - 1)``,
linear between the two neighbouring ranks), with each rank's value replaced by its bin's geometric midpoint
and the result clamped to the exact min / max. Every sample lies within a factor sqrt(r) of its bin's
midpoint, so for values of 1 ms and more the result is within **sqrt(1.04) - 1 < 2 %** (relative) of
``percentile_cont`` over the same turns; below 1 ms the error is under 1 ms. Histograms of any rows add up
bin by bin, so minutes and hours, agents and models combine without losing that bound.

How the deriver keeps them (the storage layer calls these; see docs/dashboards.md):

1. Inside the derive transaction, ``MARK_TURN_BUCKETS`` and ``MARK_CALL_BUCKETS`` (``$1 text[]``: the call
   ids being derived) **before** the turns / call rows are deleted or rewritten and again **after** (the
   buckets the rows left and the buckets they moved to). Marks are plain inserts: they never wait.
2. After that transaction commits, ``refresh_rollups(connection, max_buckets)`` (or the two SQL routines
   ``callscope_refresh_turn_rollup(int)`` / ``callscope_refresh_call_rollup(int)``) in a transaction of its
   own: it claims up to ``max_buckets`` marks, recomputes each marked minute from ``turns`` (index range
   scans on ``turns_started_at_idx``, calls looked up by primary key), each of their hours from its minute
   rows, and each marked call hour from ``calls`` (``calls_started_at_idx``). Work per bucket is bounded by
   the turns of that minute, the minute rows of that hour, the calls of that hour;
   refreshes of several collectors are serialized by a lock on their mark queue (``SHARE UPDATE EXCLUSIVE``:
   it excludes another refresh, not the derive transactions' inserts; a reader has no privilege to take it, unlike
   an advisory lock, storage/reader.py). A mark committed while a refresh runs
   stays for the next refresh.
"""

from __future__ import annotations

import asyncpg

from storage.histogram import HIST_RATIO, HISTOGRAM_ROUTINES
from storage.routines import ROUTINE_VERSION, routine_name

__all__ = [
    "HIST_RATIO",
    "LATENCY_METRICS",
    "TURN_DIMENSIONS",
    "CALL_DIMENSIONS",
    "ANSWERED",
    "MARK_TURN_BUCKETS",
    "MARK_CALL_BUCKETS",
    "MARK_ALL_TURN_BUCKETS",
    "MARK_ALL_CALL_BUCKETS",
    "REFRESH_TURN_ROLLUP",
    "REFRESH_CALL_ROLLUP",
    "REFRESH_STAGE_ROLLUP",
    "REFRESH_EVENT_ROLLUP",
    "MARK_STAGE_BUCKETS",
    "MARK_EVENT_BUCKETS",
    "MARKS_AT_END",
    "MARK_ALL_STAGE_BUCKETS",
    "MARK_ALL_EVENT_BUCKETS",
    "MARK_ALL_BUCKETS",
    "STAGES",
    "STAGE_HOUR_MEASURES",
    "TURN_BREAKDOWNS",
    "STORED_QUANTILES",
    "quantile_column",
    "ROLLUP_ROUTINES",
    "REFRESHES",
    "event_groups",
    "refresh_turn_rollup",
    "refresh_call_rollup",
    "refresh_stage_rollup",
    "refresh_event_rollup",
    "refresh_rollups",
    "drain_rollups",
]

#: turns column -> column prefix in the rollup tables.
LATENCY_METRICS = {
    "voice_to_voice_ms": "voice_to_voice",
    "stt_ms": "stt",
    "llm_ttft_ms": "llm_ttft",
    "tts_ttfb_ms": "tts_ttfb",
}

#: Dimensions of the turn rollups (campaign and direction come from the call).
TURN_DIMENSIONS = ("agent", "llm_model", "llm_provider", "stt_provider", "tts_provider", "campaign", "direction")
#: The single breakdowns of turn_latency_breakdown_1h ("all": every turn of the hour, value NULL). Panels that
#: break down by one of them, or by none, read these pre-merged rows instead of merging every dimension set.
#: ("campaign": migration 0015, the Campaigns dashboard's p95 and slowest turns.)
TURN_BREAKDOWNS = ("all", "agent", "llm_model", "llm_provider", "stt_provider", "tts_provider", "campaign")
_BREAKDOWN_LIST = "'{" + ",".join(TURN_BREAKDOWNS) + "}'::text[]"  # its index leads with the breakdown
#: Percentiles turn_latency_breakdown_1h stores per row (what the dashboards' series ask of one hour), read
#: from the row's histogram by callscope_hist_quantiles_sorted when the row is written.
STORED_QUANTILES = (0.5, 0.95, 0.99)


def quantile_column(prefix: str, q: float) -> str:
    """The column of turn_latency_breakdown_1h holding percentile ``q`` of a latency, e.g. llm_ttft_p95_ms."""
    return f"{prefix}_p{round(q * 100):d}_ms"


#: Dimensions of call_status_1h.
CALL_DIMENSIONS = ("status", "direction", "campaign", "agent")
#: A call that reached a conversation (call_status_1h.answered, the campaign funnel): live or completed, or turns.
ANSWERED = "c.status IN ('active', 'completed') OR c.turn_count > 0"

# UTC bucket boundaries whatever the session time zone (date_trunc on timestamptz follows TimeZone).
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"

MARK_TURN_BUCKETS = f"""INSERT INTO turn_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', t.started_at, {_ORIGIN})
FROM turns t
WHERE t.call_id = ANY($1::text[]) AND t.tenant IS NOT DISTINCT FROM $2 AND t.started_at IS NOT NULL"""

MARK_CALL_BUCKETS = f"""INSERT INTO call_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 hour', c.started_at, {_ORIGIN})
FROM calls c
WHERE c.call_id = ANY($1::text[]) AND c.tenant IS NOT DISTINCT FROM $2 AND c.started_at IS NOT NULL"""

#: The stages latency_stage_1m / stage_latency_1m cover (migration 0002's view).
STAGES = ("stt", "llm", "tts", "tool")
_STAGE_LIST = ", ".join(f"'{stage}'" for stage in STAGES)

# Spans and events: marked at the end of the derive routine from its work tables, which hold every span and
# event of the claimed calls (the rows a derivation deletes included) and the greeting events it inserts.
# Spans are never rewritten and events only by derivation, so this covers every change of their minutes.
MARK_STAGE_BUCKETS = f"""INSERT INTO stage_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', s.start_time, {_ORIGIN})
FROM derive_spans s
WHERE s.stage IN ({_STAGE_LIST})"""

MARK_EVENT_BUCKETS = f"""INSERT INTO event_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', x.time, {_ORIGIN})
FROM (SELECT e.time FROM derive_events e UNION ALL SELECT g.time FROM derive_greetings g) x
WHERE x.time IS NOT NULL"""

#: (name, statement) pairs the deriver runs at the end of its derive routine.
MARKS_AT_END = (("mark_stage_buckets", MARK_STAGE_BUCKETS), ("mark_event_buckets", MARK_EVENT_BUCKETS))

# Backfill (migration 0006 on existing data, bench/dashboards.py): every bucket that has rows.
MARK_ALL_TURN_BUCKETS = f"""INSERT INTO turn_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', started_at, {_ORIGIN}) FROM turns WHERE started_at IS NOT NULL
ORDER BY 1"""

MARK_ALL_CALL_BUCKETS = f"""INSERT INTO call_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 hour', started_at, {_ORIGIN}) FROM calls WHERE started_at IS NOT NULL
ORDER BY 1"""

MARK_ALL_STAGE_BUCKETS = f"""INSERT INTO stage_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', start_time, {_ORIGIN}) FROM spans WHERE stage IN ({_STAGE_LIST})
ORDER BY 1"""

MARK_ALL_EVENT_BUCKETS = f"""INSERT INTO event_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', time, {_ORIGIN}) FROM events
ORDER BY 1"""

#: Every backfill mark, in the order the refreshes below drain them.
MARK_ALL_BUCKETS = (MARK_ALL_TURN_BUCKETS, MARK_ALL_CALL_BUCKETS, MARK_ALL_STAGE_BUCKETS, MARK_ALL_EVENT_BUCKETS)

# This release's versions of the refresh routines (storage/routines.py): $1 = max_buckets.
REFRESH_TURN_ROLLUP = f"SELECT {routine_name('callscope_refresh_turn_rollup')}($1::int)"
REFRESH_CALL_ROLLUP = f"SELECT {routine_name('callscope_refresh_call_rollup')}($1::int)"
REFRESH_STAGE_ROLLUP = f"SELECT {routine_name('callscope_refresh_stage_rollup')}($1::int)"
REFRESH_EVENT_ROLLUP = f"SELECT {routine_name('callscope_refresh_event_rollup')}($1::int)"

# ---------------------------------------------------------------------------------------------------------
# Recomputing buckets
# ---------------------------------------------------------------------------------------------------------


def _turn_rows(table: str, step: str, buckets: str) -> str:
    """INSERT the rows of ``table`` for the buckets in the array ``buckets`` (each ``step`` long).

    One pass per bucket (LATERAL: a nested loop over the buckets, an index range scan on turns_started_at_idx
    each): the turn's latencies are unpivoted into (metric, bin) groups, then folded per dimension set. The
    call's campaign and direction come from a primary-key lookup (LATERAL ... LIMIT 1 keeps it a lookup
    whatever the planner estimates).
    """
    dims = ", ".join(TURN_DIMENSIONS)
    unpivot = ", ".join(
        ["(0, 0::float8)"] + [f"({i}, t.{col})" for i, col in enumerate(LATENCY_METRICS, start=1)])
    per_metric = []
    for i, prefix in enumerate(LATENCY_METRICS.values(), start=1):
        per_metric.append(
            f"coalesce(sum(x.n) FILTER (WHERE x.metric = {i}), 0)::int, "
            f"sum(x.s) FILTER (WHERE x.metric = {i}), min(x.lo) FILTER (WHERE x.metric = {i}), "
            f"max(x.hi) FILTER (WHERE x.metric = {i}), "
            f"array_agg(x.bin ORDER BY x.bin) FILTER (WHERE x.metric = {i}), "
            f"array_agg(x.n::int ORDER BY x.bin) FILTER (WHERE x.metric = {i})")
    per_metric_sql = ",\n           ".join(per_metric)
    columns = []
    for prefix in LATENCY_METRICS.values():
        columns += [f"{prefix}_samples", f"{prefix}_sum_ms", f"{prefix}_min_ms", f"{prefix}_max_ms",
                    f"{prefix}_bins", f"{prefix}_counts"]
    return f"""INSERT INTO {table} (bucket, {dims}, tenant, turns, {", ".join(columns)})
  SELECT b.bucket, g.*
  FROM unnest({buckets}) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT {", ".join(f"x.{d}" for d in TURN_DIMENSIONS)}, x.tenant,
           coalesce(sum(x.n) FILTER (WHERE x.metric = 0), 0)::int,
           {per_metric_sql}
    FROM (
      SELECT t.agent, t.llm_model, t.llm_provider, t.stt_provider, t.tts_provider, c.campaign, c.direction,
             m.metric, callscope_hist_bin(m.v) AS bin, t.tenant, count(*) AS n, sum(m.v) AS s, min(m.v) AS lo,
             max(m.v) AS hi
      FROM turns t
      LEFT JOIN LATERAL (SELECT c.campaign, c.direction FROM calls c
                         WHERE c.call_id = t.call_id AND c.tenant = t.tenant LIMIT 1) c
        ON true
      CROSS JOIN LATERAL (VALUES {unpivot}) AS m(metric, v)
      WHERE t.started_at >= b.bucket AND t.started_at < b.bucket + interval '{step}' AND m.v IS NOT NULL
      GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
    ) x
    GROUP BY {", ".join(f"x.{d}" for d in TURN_DIMENSIONS)}, x.tenant
  ) g"""


def _merged_rows(table: str, keys: tuple[tuple[str, str], ...], source: str, where: str, buckets: str, *,
                 quantiles: bool = False) -> str:
    """INSERT rows of ``table`` for the buckets in ``buckets`` by adding up histogram rows of ``source`` (alias
    ``m``; ``where`` selects one bucket's rows, ``b.bucket`` is the bucket): per group of ``keys`` ((column,
    expression) pairs), counts and sums add up, min / max combine, and the histograms are concatenated and
    merged bin by bin (sorted, unique bins). Work per bucket is bounded by the source rows of that bucket.
    ``quantiles``: also store each latency's STORED_QUANTILES, read from the merged histogram."""
    sums, cats, outs, merges = [], [], [], []
    stored = "'{" + ",".join(f"{q:g}" for q in STORED_QUANTILES) + "}'::float8[]"
    for i, p in enumerate(LATENCY_METRICS.values(), start=1):
        sums.append(f"sum(m.{p}_samples)::int AS {p}_samples, sum(m.{p}_sum_ms) AS {p}_sum_ms, "
                    f"min(m.{p}_min_ms) AS {p}_min_ms, max(m.{p}_max_ms) AS {p}_max_ms")
        cats.append(f"callscope_array_cat(m.{p}_bins) AS cb{i}, callscope_array_cat(m.{p}_counts) AS cc{i}")
        outs.append(f"s.{p}_samples, s.{p}_sum_ms, s.{p}_min_ms, s.{p}_max_ms, h{i}.bins, h{i}.counts")
        merges.append(
            f"  CROSS JOIN LATERAL (SELECT array_agg(z.b ORDER BY z.b) AS bins, array_agg(z.n ORDER BY z.b) AS counts\n"
            f"                      FROM (SELECT u.b, sum(u.n)::int AS n FROM unnest(s.cb{i}, s.cc{i}) AS u(b, n)\n"
            f"                            GROUP BY u.b) z) h{i}")
        if quantiles:
            outs[-1] += ", " + ", ".join(f"q{i}.q[{j}]" for j in range(1, len(STORED_QUANTILES) + 1))
            merges.append(
                f"  CROSS JOIN LATERAL (SELECT callscope_hist_quantiles_sorted(h{i}.bins, h{i}.counts::bigint[],\n"
                f"                      {stored}, s.{p}_min_ms, s.{p}_max_ms) AS q) q{i}")
    columns = []
    for p in LATENCY_METRICS.values():
        columns += [f"{p}_samples", f"{p}_sum_ms", f"{p}_min_ms", f"{p}_max_ms", f"{p}_bins", f"{p}_counts"]
        if quantiles:
            columns += [quantile_column(p, q) for q in STORED_QUANTILES]
    nl = "\n"
    key_exprs = ", ".join(f"{expr} AS {name}" for name, expr in keys)
    key_outs = ", ".join(f"s.{name}" for name, _ in keys)
    group = ", ".join(expr for _, expr in keys)
    return f"""INSERT INTO {table} (bucket, {", ".join(name for name, _ in keys)}, turns, {", ".join(columns)})
  SELECT b.bucket, {key_outs}, s.turns, {", ".join(outs)}
  FROM unnest({buckets}) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT {key_exprs}, sum(m.turns)::int AS turns,
           {("," + nl + "           ").join(sums)},
           {("," + nl + "           ").join(cats)}
    FROM {source}
    WHERE {where}
    GROUP BY {group}
  ) s
{nl.join(merges)}"""


def _hour_rows(buckets: str) -> str:
    """INSERT the turn_latency_1h rows of the hours in ``buckets`` from their minute rows: work per hour is
    bounded by the minute rows (60 per dimension set), not by the turns, however busy the hour."""
    return _merged_rows("turn_latency_1h", tuple((d, f"m.{d}") for d in (*TURN_DIMENSIONS, "tenant")),
                        "turn_latency_1m m",
                        "m.bucket >= b.bucket AND m.bucket < b.bucket + interval '1 hour'", buckets)


def _breakdown_rows(buckets: str) -> str:
    """INSERT the turn_latency_breakdown_1h rows of the hours in ``buckets`` from their turn_latency_1h rows:
    each row counts once per breakdown (its value of that breakdown; once more under 'all')."""
    pairs = ", ".join(["('all', NULL::text)"] + [f"('{d}', m.{d})" for d in TURN_BREAKDOWNS[1:]])
    return _merged_rows("turn_latency_breakdown_1h",
                        (("breakdown", "d.breakdown"), ("value", "d.value"), ("tenant", "m.tenant")),
                        f"turn_latency_1h m CROSS JOIN LATERAL (VALUES {pairs}) AS d(breakdown, value)",
                        "m.bucket = b.bucket", buckets, quantiles=True)


def _claim_marks(queue: str, into: str) -> str:
    """The start of every refresh routine: lock its mark queue against other refreshes (SHARE UPDATE EXCLUSIVE is
    self-exclusive; marks still insert), claim up to ``max_buckets`` marked buckets into the array ``into``
    (return 0 when there are none) and delete their marks."""
    lead = f"  {into} := ARRAY("
    return (f"LOCK TABLE {queue} IN SHARE UPDATE EXCLUSIVE MODE;  -- self-exclusive; marks still insert\n"
            f"{lead}SELECT DISTINCT m.bucket\n"
            f"{' ' * len(lead)}FROM (SELECT d.bucket FROM {queue} d ORDER BY d.id LIMIT max_buckets) m);\n"
            f"  IF cardinality({into}) = 0 THEN\n"
            f"    RETURN 0;\n"
            f"  END IF;\n"
            f"  DELETE FROM {queue} WHERE bucket = ANY({into});")


_REFRESH_TURN_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_refresh_turn_rollup(max_buckets int) RETURNS int
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  minutes timestamptz[];
  hours timestamptz[];
BEGIN
  {_claim_marks('turn_rollup_dirty', 'minutes')}
  hours := ARRAY(SELECT DISTINCT date_bin('1 hour', m, {_ORIGIN}) FROM unnest(minutes) AS m);
  DELETE FROM turn_latency_1m WHERE bucket = ANY(minutes);
  {_turn_rows("turn_latency_1m", "1 minute", "minutes")};
  DELETE FROM turn_latency_1h WHERE bucket = ANY(hours);
  {_hour_rows("hours")};
  DELETE FROM turn_latency_breakdown_1h WHERE breakdown = ANY({_BREAKDOWN_LIST}) AND bucket = ANY(hours);
  {_breakdown_rows("hours")};
  RETURN cardinality(minutes);
END
$$"""

_REFRESH_CALL_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_refresh_call_rollup(max_buckets int) RETURNS int
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  hours timestamptz[];
BEGIN
  {_claim_marks('call_rollup_dirty', 'hours')}
  DELETE FROM call_status_1h WHERE bucket = ANY(hours);
  INSERT INTO call_status_1h (bucket, {", ".join(CALL_DIMENSIONS)}, tenant, calls, cost_total, cost_samples,
                              cost_stt, cost_llm, cost_tts, cost_telephony, duration_s, duration_samples,
                              answered, transferred)
  SELECT b.bucket, g.*
  FROM unnest(hours) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT {", ".join(f"c.{d}" for d in CALL_DIMENSIONS)}, c.tenant, count(*)::int, sum(c.cost_total),
           count(c.cost_total)::int, sum(c.cost_stt), sum(c.cost_llm), sum(c.cost_tts), sum(c.cost_telephony),
           sum(c.duration_s), count(c.duration_s)::int,
           -- answered (a conversation), transferred
           (count(*) FILTER (WHERE {ANSWERED}))::int, (count(*) FILTER (WHERE c.transferred))::int
    FROM calls c
    WHERE c.started_at >= b.bucket AND c.started_at < b.bucket + interval '1 hour'
    GROUP BY {", ".join(f"c.{d}" for d in CALL_DIMENSIONS)}, c.tenant
  ) g;
  RETURN cardinality(hours);
END
$$"""

# ---------------------------------------------------------------------------------------------------------
# Span stages: stage_latency_1m (what the view latency_stage_1m computes, per minute) and latency_stage_1h
# ---------------------------------------------------------------------------------------------------------

_STAGE_MINUTE_ROWS = f"""INSERT INTO stage_latency_1m (bucket, stage, provider, model, tenant, samples, ttfb_samples,
                                avg_ttfb_ms, p50_ttfb_ms, p95_ttfb_ms, p99_ttfb_ms, avg_duration_ms,
                                p95_duration_ms)
  SELECT b.bucket, g.*
  FROM unnest(minutes) AS b(bucket)
  CROSS JOIN LATERAL (
    -- the view's own bucket expression and stage list: spans_latency_bucket_idx, one minute per lookup
    SELECT s.stage, s.provider, s.model, s.tenant, count(*), count(s.ttfb_ms), avg(s.ttfb_ms),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.ttfb_ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY s.ttfb_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY s.ttfb_ms),
           avg(s.duration_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY s.duration_ms)
    FROM spans s
    WHERE date_bin('1 minute', s.start_time, {_ORIGIN}) = b.bucket AND s.stage IN ({_STAGE_LIST})
    GROUP BY 1, 2, 3, 4
  ) g"""

#: How an hour adds up its minutes; the continuous aggregate of migration 0007 uses the same expressions.
STAGE_HOUR_MEASURES = ("sum(m.samples)::bigint", "sum(m.ttfb_samples)::bigint",
                       "sum(m.avg_ttfb_ms * m.ttfb_samples)", "sum(m.p95_ttfb_ms * m.ttfb_samples)",
                       "max(m.p95_ttfb_ms)", "sum(m.avg_duration_ms * m.samples)")

_STAGE_HOUR_ROWS = f"""INSERT INTO latency_stage_1h (bucket, stage, provider, model, tenant, samples, ttfb_samples, ttfb_sum_ms,
                                p95_ttfb_sum_ms, max_p95_ttfb_ms, duration_sum_ms)
  SELECT b.bucket, g.*
  FROM unnest(hours) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT m.stage, m.provider, m.model, m.tenant, {", ".join(STAGE_HOUR_MEASURES)}
    FROM stage_latency_1m m
    WHERE m.bucket >= b.bucket AND m.bucket < b.bucket + interval '1 hour'
    GROUP BY 1, 2, 3, 4
  ) g"""

_REFRESH_STAGE_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_refresh_stage_rollup(max_buckets int) RETURNS int
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  minutes timestamptz[];
  hours timestamptz[];
BEGIN
  {_claim_marks('stage_rollup_dirty', 'minutes')}
  -- Where latency_stage_1m / latency_stage_1h are TimescaleDB continuous aggregates (migration 0007 creates
  -- no stage_latency_1m then), TimescaleDB keeps them: the marks are only consumed.
  IF to_regclass('stage_latency_1m') IS NULL THEN
    RETURN cardinality(minutes);
  END IF;
  hours := ARRAY(SELECT DISTINCT date_bin('1 hour', m, {_ORIGIN}) FROM unnest(minutes) AS m);
  DELETE FROM stage_latency_1m WHERE bucket = ANY(minutes);
  {_STAGE_MINUTE_ROWS};
  DELETE FROM latency_stage_1h WHERE bucket = ANY(hours);
  {_STAGE_HOUR_ROWS};
  RETURN cardinality(minutes);
END
$$"""

# ---------------------------------------------------------------------------------------------------------
# Events: event_counts_1m / event_counts_1h
# ---------------------------------------------------------------------------------------------------------

# The call an event belongs to now, as the view call_events resolves it (migration 0005).
_RESOLVED_CALL = ("CASE WHEN e.call_id_explicit OR e.trace_id IS NULL THEN e.call_id ELSE coalesce("
                  "(SELECT k.call_id FROM call_traces k WHERE k.trace_id = e.trace_id AND k.tenant = e.tenant), "
                  "e.call_id) END")

# Whether a call (as call_events resolves it) has an event of this category / event / level before a time:
# the call's own rows (events_call_idx: call id and time) and the rows stored under one of its trace ids
# (events_trace_idx), exactly the two branches of callscope_call_events. Written so that no plan can widen
# the lookups beyond the call's rows, whatever the planner estimates: the kind is compared with IS NOT
# DISTINCT FROM (no index serves it), and on the trace branch the time is tested in the select list, not as
# a condition (a condition "time < x" invites a BitmapAnd with a scan of events_time_idx over all earlier
# events). No JIT: without statistics the estimates of these lookups pass any JIT threshold.
def seen_before(call: str, category: str, event: str, level: str, before: str, tenant: str | None = None) -> str:
    """SQL: whether ``call`` has an event of this kind before ``before`` (the body of
    callscope_event_seen_before, and what the refresh evaluates inline: one plan for the whole statement).
    ``tenant``: the call's tenant (the refresh, which reads every tenant's rows); without it, the rows the caller
    may read (a reader's tenant's only, by row-level security)."""
    kind = f"(p.category, p.event, p.level) IS NOT DISTINCT FROM ({category}, {event}, {level})"
    # the tenant is never an index condition: a lookup by id, then a filter (no plan may scan a tenant's rows)
    own, key = ((f" AND p.tenant IS NOT DISTINCT FROM {tenant}", f" AND k.tenant IS NOT DISTINCT FROM {tenant}")
                if tenant else ("", ""))
    return f"""(EXISTS (SELECT 1 FROM events p
                 WHERE p.call_id = {call}{own} AND p.time < {before}
                   AND {kind}
                   AND (p.call_id_explicit OR p.trace_id IS NULL OR (
                        SELECT 1 FROM call_traces k WHERE k.trace_id = p.trace_id{key} AND k.call_id <> {call}
                        LIMIT 1) IS NULL))
      OR EXISTS (SELECT 1 FROM call_traces k
                 CROSS JOIN LATERAL (SELECT bool_or(p.time < {before}) AS seen FROM events p
                                     WHERE p.trace_id = k.trace_id
                                       AND NOT p.call_id_explicit AND p.call_id <> {call}{own}
                                       AND {kind}) t
                 WHERE k.call_id = {call}{key} AND t.seen))"""


_EVENT_SEEN_BEFORE = f"""
CREATE OR REPLACE FUNCTION callscope_event_seen_before(of_call text, of_category text, of_event text,
                                                       of_level text, before_time timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET jit = off AS $$
  SELECT {seen_before("of_call", "of_category", "of_event", "of_level", "before_time")}
$$"""


def event_groups(where: str, segment_start: str) -> str:
    """Rows (category, event, level, events, calls, last_time) of the events matching ``where`` (alias ``e``),
    grouped by kind: ``calls`` counts the calls whose first event of that kind lies in the segment that starts
    at ``segment_start`` (none of theirs before it). Summed over segments that partition a range, that is the
    number of calls whose first event of the kind lies in the range. The refresh's statement for one minute;
    the dashboards call callscope_event_seen_before (the same test) for the partial minutes at the ends of a
    range. Inline here: a function call per (call, kind) costs more than its two index lookups."""
    return f"""SELECT x.category, x.event, x.level, sum(x.n)::int AS events,
           (count(*) FILTER (WHERE NOT x.seen))::int AS calls,
           max(x.last_time) AS last_time, x.tenant
    FROM (
      SELECT y.*, {seen_before("y.call_id", "y.category", "y.event", "y.level", segment_start, "y.tenant")} AS seen
      FROM (
        SELECT {_RESOLVED_CALL} AS call_id, e.tenant, e.category, e.event, e.level, count(*) AS n,
               max(e.time) AS last_time
        FROM events e
        WHERE {where}
        GROUP BY 1, 2, 3, 4, 5
      ) y
    ) x
    GROUP BY 1, 2, 3, x.tenant"""


_EVENT_MINUTE_ROWS = f"""INSERT INTO event_counts_1m (bucket, category, event, level, events, calls, last_time, tenant)
  SELECT b.bucket, g.*
  FROM unnest(minutes) AS b(bucket)
  CROSS JOIN LATERAL (
    {event_groups("e.time >= b.bucket AND e.time < b.bucket + interval '1 minute'", "b.bucket")}
  ) g"""

_EVENT_HOUR_ROWS = """INSERT INTO event_counts_1h (bucket, category, event, level, events, calls, last_time, tenant)
  SELECT b.bucket, g.*
  FROM unnest(hours) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT m.category, m.event, m.level, sum(m.events)::int, sum(m.calls)::int, max(m.last_time), m.tenant
    FROM event_counts_1m m
    WHERE m.bucket >= b.bucket AND m.bucket < b.bucket + interval '1 hour'
    GROUP BY 1, 2, 3, m.tenant
  ) g"""

_REFRESH_EVENT_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_refresh_event_rollup(max_buckets int) RETURNS int
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  minutes timestamptz[];
  hours timestamptz[];
BEGIN
  {_claim_marks('event_rollup_dirty', 'minutes')}
  hours := ARRAY(SELECT DISTINCT date_bin('1 hour', m, {_ORIGIN}) FROM unnest(minutes) AS m);
  DELETE FROM event_counts_1m WHERE bucket = ANY(minutes);
  {_EVENT_MINUTE_ROWS};
  DELETE FROM event_counts_1h WHERE bucket = ANY(hours);
  {_EVENT_HOUR_ROWS};
  RETURN cardinality(minutes);
END
$$"""

#: Installed by ``storage.migrate.install_routines`` (code, not schema): the refresh routines under this
#: release's versioned names, the histogram functions and the aggregate under their stable names
#: (storage/routines.py).
ROLLUP_ROUTINES = (*HISTOGRAM_ROUTINES, _REFRESH_TURN_ROUTINE, _REFRESH_CALL_ROUTINE, _REFRESH_STAGE_ROUTINE, _EVENT_SEEN_BEFORE,
                   _REFRESH_EVENT_ROUTINE)


async def refresh_turn_rollup(connection: asyncpg.Connection, max_buckets: int = 1000, *,
                              version: int = ROUTINE_VERSION) -> int:
    """Recompute up to ``max_buckets`` marked minutes (and their hours); return how many minutes.

    Runs in a transaction of its own (not the derive transaction: the marks it drains must be committed).
    ``version``: which installed version of the routine to call (storage/routines.py).
    """
    async with connection.transaction():
        return int(await connection.fetchval(
            f"SELECT {routine_name('callscope_refresh_turn_rollup', version)}($1::int)", max_buckets))


async def refresh_call_rollup(connection: asyncpg.Connection, max_buckets: int = 1000, *,
                              version: int = ROUTINE_VERSION) -> int:
    """Recompute up to ``max_buckets`` marked call hours; return how many hours."""
    async with connection.transaction():
        return int(await connection.fetchval(
            f"SELECT {routine_name('callscope_refresh_call_rollup', version)}($1::int)", max_buckets))


async def refresh_stage_rollup(connection: asyncpg.Connection, max_buckets: int = 1000, *,
                               version: int = ROUTINE_VERSION) -> int:
    """Recompute up to ``max_buckets`` marked span minutes (and their hours); return how many minutes."""
    async with connection.transaction():
        return int(await connection.fetchval(
            f"SELECT {routine_name('callscope_refresh_stage_rollup', version)}($1::int)", max_buckets))


async def refresh_event_rollup(connection: asyncpg.Connection, max_buckets: int = 1000, *,
                               version: int = ROUTINE_VERSION) -> int:
    """Recompute up to ``max_buckets`` marked event minutes (and their hours); return how many minutes."""
    async with connection.transaction():
        return int(await connection.fetchval(
            f"SELECT {routine_name('callscope_refresh_event_rollup', version)}($1::int)", max_buckets))


#: Every refresh, in the order ``refresh_rollups`` runs them.
REFRESHES = (refresh_turn_rollup, refresh_call_rollup, refresh_stage_rollup, refresh_event_rollup)


async def refresh_rollups(connection: asyncpg.Connection, max_buckets: int = 1000, *,
                          version: int = ROUTINE_VERSION) -> int:
    """Every refresh, each in its own transaction; return the buckets recomputed."""
    total = 0
    for refresh in REFRESHES:
        total += await refresh(connection, max_buckets, version=version)
    return total


async def drain_rollups(connection: asyncpg.Connection, max_buckets: int = 1000) -> int:
    """Refresh until no mark is left (tests, backfills)."""
    total = 0
    while True:
        done = await refresh_rollups(connection, max_buckets)
        if done == 0:
            return total
        total += done
