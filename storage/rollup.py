"""Rollups that keep dashboards fast at millions of calls: per-minute and per-hour turn latencies, per-hour
call counts and costs, kept by the deriver through dirty-bucket queues.

Tables (storage/schema.py, migration ``0006_turn_rollup``):

* ``turn_latency_1m`` / ``turn_latency_1h``: per bucket (UTC minute / hour of ``turns.started_at``) and per
  agent, LLM model / provider, STT / TTS provider, campaign and direction: the number of turns and, per
  latency (``voice_to_voice``, ``stt``, ``llm_ttft``, ``tts_ttfb``), samples, sum, min, max and a sparse
  log-scale histogram (``<metric>_bins smallint[]`` bin numbers, ``<metric>_counts int[]`` samples per bin).
* ``call_status_1h``: per hour of ``calls.started_at`` and status, direction, campaign, agent: calls, cost
  sums (and how many calls had a total cost), duration sum (and how many had one).
* ``turn_rollup_dirty`` / ``call_rollup_dirty``: append-only marks of buckets to recompute.

Histogram: bin 0 holds values below 1 ms (and negative ones), bin ``b >= 1`` holds [r^(b-1), r^b) with
``r = HIST_RATIO`` (1.04). A percentile is read like ``percentile_cont`` (0-based rank ``q * (n - 1)``,
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
   refreshes of several collectors are serialized by an advisory lock. A mark committed while a refresh runs
   stays for the next refresh.
"""

from __future__ import annotations

import asyncpg

from storage.routines import ROUTINE_VERSION, routine_name

__all__ = [
    "HIST_RATIO",
    "LATENCY_METRICS",
    "TURN_DIMENSIONS",
    "CALL_DIMENSIONS",
    "MARK_TURN_BUCKETS",
    "MARK_CALL_BUCKETS",
    "MARK_ALL_TURN_BUCKETS",
    "MARK_ALL_CALL_BUCKETS",
    "REFRESH_TURN_ROLLUP",
    "REFRESH_CALL_ROLLUP",
    "ROLLUP_ROUTINES",
    "refresh_turn_rollup",
    "refresh_call_rollup",
    "refresh_rollups",
]

#: Ratio between the bounds of a histogram bin: relative error of a percentile <= sqrt(HIST_RATIO) - 1.
HIST_RATIO = 1.04

#: turns column -> column prefix in the rollup tables.
LATENCY_METRICS = {
    "voice_to_voice_ms": "voice_to_voice",
    "stt_ms": "stt",
    "llm_ttft_ms": "llm_ttft",
    "tts_ttfb_ms": "tts_ttfb",
}

#: Dimensions of the turn rollups (campaign and direction come from the call).
TURN_DIMENSIONS = ("agent", "llm_model", "llm_provider", "stt_provider", "tts_provider", "campaign", "direction")
#: Dimensions of call_status_1h.
CALL_DIMENSIONS = ("status", "direction", "campaign", "agent")

# UTC bucket boundaries whatever the session time zone (date_trunc on timestamptz follows TimeZone).
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
_REFRESH_LOCK = 7063720869421651558  # the deriver's advisory lock key + 1

MARK_TURN_BUCKETS = f"""INSERT INTO turn_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', t.started_at, {_ORIGIN})
FROM turns t
WHERE t.call_id = ANY($1::text[]) AND t.started_at IS NOT NULL"""

MARK_CALL_BUCKETS = f"""INSERT INTO call_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 hour', c.started_at, {_ORIGIN})
FROM calls c
WHERE c.call_id = ANY($1::text[]) AND c.started_at IS NOT NULL"""

# Backfill (migration 0006 on existing data, bench/dashboards.py): every bucket that has rows.
MARK_ALL_TURN_BUCKETS = f"""INSERT INTO turn_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 minute', started_at, {_ORIGIN}) FROM turns WHERE started_at IS NOT NULL
ORDER BY 1"""

MARK_ALL_CALL_BUCKETS = f"""INSERT INTO call_rollup_dirty (bucket)
SELECT DISTINCT date_bin('1 hour', started_at, {_ORIGIN}) FROM calls WHERE started_at IS NOT NULL
ORDER BY 1"""

# This release's versions of the two refresh routines (storage/routines.py): $1 = max_buckets.
REFRESH_TURN_ROLLUP = f"SELECT {routine_name('callscope_refresh_turn_rollup')}($1::int)"
REFRESH_CALL_ROLLUP = f"SELECT {routine_name('callscope_refresh_call_rollup')}($1::int)"

# ---------------------------------------------------------------------------------------------------------
# Histogram functions (usable by the reader role: functions are executable by PUBLIC)
# ---------------------------------------------------------------------------------------------------------

_HIST_BIN = f"""
CREATE OR REPLACE FUNCTION callscope_hist_bin(v float8) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN v IS NULL THEN NULL
              WHEN v < 1 THEN 0
              ELSE least(1 + floor(ln(v) / ln({HIST_RATIO})), 32000) END::smallint
$$"""

_HIST_MID = f"""
CREATE OR REPLACE FUNCTION callscope_hist_mid(b smallint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN b <= 0 THEN 0.5 ELSE power({HIST_RATIO}::float8, b - 0.5) END
$$"""

# Percentiles of a histogram given as parallel arrays (any order, bins may repeat: they are added up).
# Rank and interpolation follow percentile_cont; lo / hi (the exact min / max) clamp the result.
_HIST_QUANTILES = """
CREATE OR REPLACE FUNCTION callscope_hist_quantiles(bins smallint[], counts int[], qs float8[],
                                                    lo float8 DEFAULT NULL, hi float8 DEFAULT NULL)
RETURNS float8[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  sb smallint[];
  sn bigint[];
BEGIN
  -- merge repeated bins and sort them, then walk once (callscope_hist_quantiles_sorted)
  SELECT array_agg(h.b ORDER BY h.b), array_agg(h.n ORDER BY h.b)
    INTO sb, sn
  FROM (SELECT u.b, sum(u.n)::bigint AS n FROM unnest(bins, counts) AS u(b, n)
        WHERE u.b IS NOT NULL AND u.n > 0 GROUP BY u.b) h;
  RETURN callscope_hist_quantiles_sorted(sb, sn, qs, lo, hi);
END
$$"""

# Percentiles of a histogram whose bins are unique and ascending (as the dashboards' queries build it): one walk.
_HIST_QUANTILES_SORTED = """
CREATE OR REPLACE FUNCTION callscope_hist_quantiles_sorted(bins smallint[], counts bigint[], qs float8[],
                                                           lo float8 DEFAULT NULL, hi float8 DEFAULT NULL)
RETURNS float8[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  len int := coalesce(cardinality(bins), 0);
  total bigint := 0;
  result float8[] := '{}';
  q float8;
  rk float8;
  j bigint;
  k bigint;
  i int;
  cum bigint;
  v0 float8;
  v1 float8;
  v float8;
BEGIN
  FOR i IN 1..len LOOP
    total := total + counts[i];
  END LOOP;
  FOREACH q IN ARRAY qs LOOP
    IF total = 0 OR q IS NULL THEN
      result := result || NULL::float8;
      CONTINUE;
    END IF;
    rk := least(greatest(q, 0), 1) * (total - 1);
    j := floor(rk)::bigint;
    k := least(j + 1, total - 1);
    i := 1;
    cum := counts[1];
    WHILE cum <= j LOOP
      i := i + 1;
      cum := cum + counts[i];
    END LOOP;
    v0 := callscope_hist_mid(bins[i]);
    WHILE cum <= k LOOP
      i := i + 1;
      cum := cum + counts[i];
    END LOOP;
    v1 := callscope_hist_mid(bins[i]);
    v := v0 + (rk - j) * (v1 - v0);
    IF lo IS NOT NULL AND v < lo THEN v := lo; END IF;
    IF hi IS NOT NULL AND v > hi THEN v := hi; END IF;
    result := result || v;
  END LOOP;
  RETURN result;
END
$$"""

_HIST_QUANTILE = """
CREATE OR REPLACE FUNCTION callscope_hist_quantile(bins smallint[], counts int[], q float8,
                                                   lo float8 DEFAULT NULL, hi float8 DEFAULT NULL)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT (callscope_hist_quantiles(bins, counts, ARRAY[q], lo, hi))[1]
$$"""

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
    return f"""INSERT INTO {table} (bucket, {dims}, turns, {", ".join(columns)})
  SELECT b.bucket, g.*
  FROM unnest({buckets}) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT {", ".join(f"x.{d}" for d in TURN_DIMENSIONS)},
           coalesce(sum(x.n) FILTER (WHERE x.metric = 0), 0)::int,
           {per_metric_sql}
    FROM (
      SELECT t.agent, t.llm_model, t.llm_provider, t.stt_provider, t.tts_provider, c.campaign, c.direction,
             m.metric, callscope_hist_bin(m.v) AS bin, count(*) AS n, sum(m.v) AS s, min(m.v) AS lo,
             max(m.v) AS hi
      FROM turns t
      LEFT JOIN LATERAL (SELECT c.campaign, c.direction FROM calls c WHERE c.call_id = t.call_id LIMIT 1) c
        ON true
      CROSS JOIN LATERAL (VALUES {unpivot}) AS m(metric, v)
      WHERE t.started_at >= b.bucket AND t.started_at < b.bucket + interval '{step}' AND m.v IS NOT NULL
      GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ) x
    GROUP BY {", ".join(f"x.{d}" for d in TURN_DIMENSIONS)}
  ) g"""


def _hour_rows(buckets: str) -> str:
    """INSERT the turn_latency_1h rows of the hours in ``buckets`` from their minute rows: work per hour is
    bounded by the minute rows (60 per dimension set), not by the turns, however busy the hour."""
    dims = ", ".join(f"m.{d}" for d in TURN_DIMENSIONS)
    sums, cats, outs, merges = [], [], [], []
    for i, p in enumerate(LATENCY_METRICS.values(), start=1):
        sums.append(f"sum(m.{p}_samples)::int AS {p}_samples, sum(m.{p}_sum_ms) AS {p}_sum_ms, "
                    f"min(m.{p}_min_ms) AS {p}_min_ms, max(m.{p}_max_ms) AS {p}_max_ms")
        cats.append(f"callscope_array_cat(m.{p}_bins) AS cb{i}, callscope_array_cat(m.{p}_counts) AS cc{i}")
        outs.append(f"s.{p}_samples, s.{p}_sum_ms, s.{p}_min_ms, s.{p}_max_ms, h{i}.bins, h{i}.counts")
        merges.append(
            f"  CROSS JOIN LATERAL (SELECT array_agg(z.b ORDER BY z.b) AS bins, array_agg(z.n ORDER BY z.b) AS counts\n"
            f"                      FROM (SELECT u.b, sum(u.n)::int AS n FROM unnest(s.cb{i}, s.cc{i}) AS u(b, n)\n"
            f"                            GROUP BY u.b) z) h{i}")
    columns = []
    for p in LATENCY_METRICS.values():
        columns += [f"{p}_samples", f"{p}_sum_ms", f"{p}_min_ms", f"{p}_max_ms", f"{p}_bins", f"{p}_counts"]
    nl = "\n"
    return f"""INSERT INTO turn_latency_1h (bucket, {", ".join(TURN_DIMENSIONS)}, turns, {", ".join(columns)})
  SELECT b.bucket, {", ".join(f"s.{d}" for d in TURN_DIMENSIONS)}, s.turns, {", ".join(outs)}
  FROM unnest({buckets}) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT {dims}, sum(m.turns)::int AS turns,
           {("," + nl + "           ").join(sums)},
           {("," + nl + "           ").join(cats)}
    FROM turn_latency_1m m
    WHERE m.bucket >= b.bucket AND m.bucket < b.bucket + interval '1 hour'
    GROUP BY {dims}
  ) s
{nl.join(merges)}"""


_ARRAY_CAT = """
CREATE OR REPLACE AGGREGATE callscope_array_cat(anycompatiblearray) (SFUNC = array_cat, STYPE = anycompatiblearray)
"""

_REFRESH_TURN_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_refresh_turn_rollup(max_buckets int) RETURNS int
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  minutes timestamptz[];
  hours timestamptz[];
BEGIN
  PERFORM pg_advisory_xact_lock({_REFRESH_LOCK});
  minutes := ARRAY(SELECT DISTINCT m.bucket
                   FROM (SELECT d.bucket FROM turn_rollup_dirty d ORDER BY d.id LIMIT max_buckets) m);
  IF cardinality(minutes) = 0 THEN
    RETURN 0;
  END IF;
  DELETE FROM turn_rollup_dirty WHERE bucket = ANY(minutes);
  hours := ARRAY(SELECT DISTINCT date_bin('1 hour', m, {_ORIGIN}) FROM unnest(minutes) AS m);
  DELETE FROM turn_latency_1m WHERE bucket = ANY(minutes);
  {_turn_rows("turn_latency_1m", "1 minute", "minutes")};
  DELETE FROM turn_latency_1h WHERE bucket = ANY(hours);
  {_hour_rows("hours")};
  RETURN cardinality(minutes);
END
$$"""

_REFRESH_CALL_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_refresh_call_rollup(max_buckets int) RETURNS int
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  hours timestamptz[];
BEGIN
  PERFORM pg_advisory_xact_lock({_REFRESH_LOCK + 1});
  hours := ARRAY(SELECT DISTINCT m.bucket
                 FROM (SELECT d.bucket FROM call_rollup_dirty d ORDER BY d.id LIMIT max_buckets) m);
  IF cardinality(hours) = 0 THEN
    RETURN 0;
  END IF;
  DELETE FROM call_rollup_dirty WHERE bucket = ANY(hours);
  DELETE FROM call_status_1h WHERE bucket = ANY(hours);
  INSERT INTO call_status_1h (bucket, {", ".join(CALL_DIMENSIONS)}, calls, cost_total, cost_samples, cost_stt,
                              cost_llm, cost_tts, cost_telephony, duration_s, duration_samples)
  SELECT b.bucket, g.*
  FROM unnest(hours) AS b(bucket)
  CROSS JOIN LATERAL (
    SELECT {", ".join(f"c.{d}" for d in CALL_DIMENSIONS)}, count(*)::int, sum(c.cost_total),
           count(c.cost_total)::int, sum(c.cost_stt), sum(c.cost_llm), sum(c.cost_tts), sum(c.cost_telephony),
           sum(c.duration_s), count(c.duration_s)::int
    FROM calls c
    WHERE c.started_at >= b.bucket AND c.started_at < b.bucket + interval '1 hour'
    GROUP BY {", ".join(f"c.{d}" for d in CALL_DIMENSIONS)}
  ) g;
  RETURN cardinality(hours);
END
$$"""

#: Installed by ``storage.migrate.install_routines`` (code, not schema): the refresh routines under this
#: release's versioned names, the histogram functions and the aggregate under their stable names
#: (storage/routines.py).
ROLLUP_ROUTINES = (_ARRAY_CAT, _HIST_BIN, _HIST_MID, _HIST_QUANTILES_SORTED, _HIST_QUANTILES, _HIST_QUANTILE, _REFRESH_TURN_ROUTINE,
                   _REFRESH_CALL_ROUTINE)


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


async def refresh_rollups(connection: asyncpg.Connection, max_buckets: int = 1000, *,
                          version: int = ROUTINE_VERSION) -> int:
    """Both refreshes, each in its own transaction; return the buckets recomputed."""
    return (await refresh_turn_rollup(connection, max_buckets, version=version)
            + await refresh_call_rollup(connection, max_buckets, version=version))


async def drain_rollups(connection: asyncpg.Connection, max_buckets: int = 1000) -> int:
    """Refresh until no mark is left (tests, backfills)."""
    total = 0
    while True:
        done = await refresh_rollups(connection, max_buckets)
        if done == 0:
            return total
        total += done
