"""The Latency dashboard: p50 / p95 / p99 of the design §6 latencies, alert thresholds drawn on the panels."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm

from dashboards.common import (
    Layout,
    base_dashboard,
    call_link,
    datasource_ref,
    datasource_variable,
    multi_query_variable,
    sql_target,
    thresholds,
    unit,
)
from dashboards.fragments import ALL_VALUE, CALLS_RAW_MAX, END_HOUR, FIRST_HOUR, RANGE, VAR_AGENT, multi_filter

__all__ = ["build"]

# ---------------------------------------------------------------------------------------------------------
# SQL: raw turns for short ranges (exact percentile_cont), the turn-latency rollups for longer ones
# (histograms, within 2 % of percentile_cont: storage/rollup.py); stage_latency_1m: spans per minute
# ---------------------------------------------------------------------------------------------------------

#: Latency ranges up to this long read raw turns, longer ones the 1-hour turn rollup. (The 1-minute rollup is
#: the hour's building block: per agent / model / provider / campaign / direction a minute holds a few turns,
#: so reading it costs about as much as reading the turns.)
LATENCY_RAW_MAX = "24 hours"
_RAW_TURNS = f"{RANGE} <= interval '{LATENCY_RAW_MAX}'"
_HOUR_TURNS = f"{RANGE} > interval '{LATENCY_RAW_MAX}'"

VAR_LLM_MODEL = f"""SELECT DISTINCT v FROM (
  SELECT t.llm_model AS v FROM turns t
  WHERE {_RAW_TURNS} AND $__timeFilter(t.started_at)
  UNION ALL
  SELECT r.value FROM turn_latency_breakdown_1h r
  WHERE {_HOUR_TURNS} AND $__timeFilter(r.bucket) AND r.breakdown = 'llm_model'
) d
WHERE v IS NOT NULL
ORDER BY 1"""


def _prefix(metric: str) -> str:
    """turns column -> its column prefix in turn_latency_1m / turn_latency_1h."""
    return metric.removesuffix("_ms")


def _turn_filter(alias: str = "t") -> str:
    return (f"$__timeFilter({alias}.started_at)\n    AND {multi_filter('agent', f'{alias}.agent')}"
            f"\n    AND {multi_filter('model', f'{alias}.llm_model')}")


def _rollup_filter(alias: str = "r") -> str:
    return (f"$__timeFilter({alias}.bucket)\n    AND {multi_filter('agent', f'{alias}.agent')}"
            f"\n    AND {multi_filter('model', f'{alias}.llm_model')}")


def _rollup_quantiles(table: str, guard: str, metric: str, qs: tuple[float, ...],
                      keys: tuple[tuple[str, str, str], ...]) -> str:
    """Percentiles from the histograms of ``table`` (every dimension set, all filters applied): the bins are
    unnested in the select list, added up per
    bucket and bin (no expression per bin: Grafana's time group is numeric arithmetic), then per time group
    and bin, and each group's sorted histogram is read by callscope_hist_quantiles_sorted."""
    p = _prefix(metric)
    quantiles = "'{" + ",".join(f"{q:g}" for q in qs) + "}'::float8[]"
    dims = [(expr, alias) for _, expr, alias in keys if expr]
    # plain columns below (an expression in the select list of the unnest is evaluated once per bin)
    inner_dims = "".join(f"r.{expr} AS {alias}, " for expr, alias in dims)
    by_bucket = "".join(f"u.{alias}, " for _, alias in dims)
    has_time = any(not expr for _, expr, _ in keys)
    time_select = "$__timeGroupAlias(b.bucket, $__interval), " if has_time else ""
    group_keys = (['"time"'] if has_time else []) + [alias for _, alias in dims]
    by_bin = ", ".join([str(i) for i in range(1, len(group_keys) + 2)])
    outer_keys = "".join(f"m.{k}, " for k in group_keys)
    outer_group = (f"\n  GROUP BY {', '.join(str(i) for i in range(1, len(group_keys) + 1))}" if group_keys
                   else "\n  HAVING count(*) > 0")
    return f"""  SELECT {outer_keys}callscope_hist_quantiles_sorted(array_agg(m.bin ORDER BY m.bin),
           array_agg(m.n ORDER BY m.bin), {quantiles}, min(m.lo), max(m.hi)) AS q
  FROM (
    SELECT {time_select}{"".join(f"coalesce(b.{alias}, 'unknown') AS {alias}, " for _, alias in dims)}b.bin,
           sum(b.n)::bigint AS n,
           min(b.lo) AS lo, max(b.hi) AS hi
    FROM (
      SELECT u.bucket, {by_bucket}u.bin, sum(u.n) AS n, min(u.lo) AS lo, max(u.hi) AS hi
      FROM (
        SELECT r.bucket, {inner_dims}unnest(r.{p}_bins) AS bin, unnest(r.{p}_counts) AS n,
               r.{p}_min_ms AS lo, r.{p}_max_ms AS hi
        FROM {table} r
        WHERE {guard}
          AND {_rollup_filter().replace(chr(10) + "    ", chr(10) + "          ")}
      ) u
      GROUP BY u.bucket, {by_bucket}u.bin
    ) b
    GROUP BY {by_bin}
  ) m{outer_group}"""


_AGENT_ALL = f"{ALL_VALUE} IN (${{agent}})"
_MODEL_ALL = f"{ALL_VALUE} IN (${{model}})"


def _breakdown_options(dimension: str | None) -> tuple[list[tuple[str, str, str | None]], str]:
    """Which turn_latency_breakdown_1h rows answer a latency query broken down by ``dimension`` (None: not
    broken down) under the agent / model variables: [(breakdown, guard, variable filtering its value)], and the
    guard of the fallback to turn_latency_1h (every filter applies there). Guards are constants once Grafana
    has inserted the variables, and exclusive."""
    a, m = _AGENT_ALL, _MODEL_ALL
    if dimension is None:
        return ([("all", f"{a} AND {m}", None), ("agent", f"NOT {a} AND {m}", "agent"),
                 ("llm_model", f"{a} AND NOT {m}", "model")], f"NOT {a} AND NOT {m}")
    if dimension == "agent":
        return [("agent", m, "agent")], f"NOT {m}"
    if dimension == "llm_model":
        return [("llm_model", a, "model")], f"NOT {a}"
    return [(dimension, f"{a} AND {m}", None)], f"NOT ({a} AND {m})"


#: Percentiles turn_latency_breakdown_1h stores per row, as columns <latency>_p50_ms … (storage/rollup.py,
#: STORED_QUANTILES): a point that one row covers reads them instead of walking the row's histogram.
_STORED_QUANTILES = {0.5: "p50", 0.95: "p95", 0.99: "p99"}


def _breakdown_quantiles(metric: str, qs: tuple[float, ...], keys: tuple[tuple[str, str, str], ...],
                         breakdown: str, guard: str, variable: str | None) -> str:
    """Percentiles from the pre-merged hourly rows of one breakdown: a time group and value that one row
    covers (the usual case: one hour per point) reads that row's stored percentiles (or walks its sorted
    histogram for other ones); only groups of several rows (points wider than an hour, or the whole range for
    a stat) merge their bins. Same histograms as merging turn_latency_1h, so the same results."""
    p = _prefix(metric)
    quantiles = "'{" + ",".join(f"{q:g}" for q in qs) + "}'::float8[]"
    has_time = any(not expr for _, expr, _ in keys)
    has_value = any(expr for _, expr, _ in keys)
    names = (['"time"'] if has_time else []) + (["metric"] if has_value else [])
    selects = (["$__timeGroupAlias(r.bucket, $__interval)"] if has_time else []) + \
        (["coalesce(r.value, 'unknown') AS metric"] if has_value else [])
    partition = ", ".join((["$__timeGroup(r.bucket, $__interval)"] if has_time else []) +
                          (["coalesce(r.value, 'unknown')"] if has_value else []))
    window = f"PARTITION BY {partition}" if partition else ""
    value_filter = f"\n      AND {multi_filter(variable, 'r.value')}" if variable else ""
    d_keys = "".join(f"d.{n}, " for n in names)
    u_keys = "".join(f"u.{n}, " for n in names)
    m_keys = "".join(f"m.{n}, " for n in names)
    positions = ", ".join(str(i) for i in range(1, len(names) + 1))
    group_u = f"GROUP BY {positions}, u.bin" if names else "GROUP BY u.bin"
    group_m = f"\n  GROUP BY {positions}" if names else "\n  HAVING count(*) > 0"
    stored = all(q in _STORED_QUANTILES for q in qs)
    # one row per point: its stored percentiles (the same function on the same histogram, run when written)
    single = (f"ARRAY[{', '.join(f'd.{_STORED_QUANTILES[q]}' for q in qs)}]" if stored else
              f"callscope_hist_quantiles_sorted(d.bins, d.counts::bigint[], {quantiles}, d.lo, d.hi)")
    stored_cols = "".join(f"r.{p}_{_STORED_QUANTILES[q]}_ms AS {_STORED_QUANTILES[q]}, " for q in qs) if stored else ""
    return f"""  (WITH d AS MATERIALIZED (
    SELECT {"".join(x + ", " for x in selects)}
           {stored_cols}r.{p}_bins AS bins, r.{p}_counts AS counts,
           r.{p}_min_ms AS lo, r.{p}_max_ms AS hi, count(*) OVER ({window}) AS k
    FROM turn_latency_breakdown_1h r
    WHERE {_HOUR_TURNS} AND {guard}
      AND $__timeFilter(r.bucket) AND r.breakdown = '{breakdown}'{value_filter}
      AND r.{p}_samples > 0
  )
  SELECT {d_keys}{single} AS q
  FROM d
  WHERE d.k = 1
  UNION ALL
  SELECT {m_keys}callscope_hist_quantiles_sorted(array_agg(m.bin ORDER BY m.bin),
           array_agg(m.n ORDER BY m.bin), {quantiles}, min(m.lo), max(m.hi)) AS q
  FROM (
    SELECT {u_keys}u.bin, sum(u.n)::bigint AS n, min(u.lo) AS lo, max(u.hi) AS hi
    FROM (SELECT {d_keys}unnest(d.bins) AS bin, unnest(d.counts) AS n, d.lo, d.hi FROM d WHERE d.k > 1) u
    {group_u}
  ) m{group_m})"""


def _quantile_union(metric: str, qs: tuple[float, ...], keys: tuple[tuple[str, str, str], ...]) -> str:
    """Rows of (keys..., q float8[]): the percentiles ``qs`` of ``metric`` per group of ``keys``.

    ``keys``: (raw turns expression with its alias, rollup column or "" for the time group, alias); none for
    one row. Exactly one branch runs, chosen by the length of the range and the variables: raw turns (exact
    percentile_cont), the pre-merged rows of one breakdown when the filters allow it, else every dimension
    set of the 1-hour rollup (both within 2 %).
    """
    quantiles = "'{" + ",".join(f"{q:g}" for q in qs) + "}'::float8[]"
    raw_keys = "".join(f"{raw}, " for raw, _, _ in keys)
    group = f"\n  GROUP BY {', '.join(str(i) for i in range(1, len(keys) + 1))}" if keys else \
        "\n  HAVING count(*) > 0"
    branches = [f"""  SELECT {raw_keys}percentile_cont({quantiles}) WITHIN GROUP (ORDER BY t.{metric}) AS q
  FROM turns t
  WHERE {_RAW_TURNS}
    AND {_turn_filter()}
    AND t.{metric} IS NOT NULL{group}"""]
    dimension = next((expr for _, expr, _ in keys if expr), None)
    options, fallback = _breakdown_options(dimension)
    for breakdown, guard, variable in options:
        branches.append(_breakdown_quantiles(metric, qs, keys, breakdown, guard, variable))
    branches.append(_rollup_quantiles("turn_latency_1h", f"{_HOUR_TURNS} AND {fallback}", metric, qs, keys))
    return "(\n" + "\n  UNION ALL\n".join(branches) + "\n) p"


def latency_percentiles(metric: str) -> str:
    """p50 / p95 / p99 of one per-turn latency column over time."""
    keys = (("$__timeGroupAlias(t.started_at, $__interval)", "", "time"),)
    return f"""SELECT p."time", p.q[1] AS "p50", p.q[2] AS "p95", p.q[3] AS "p99"
FROM {_quantile_union(metric, (0.5, 0.95, 0.99), keys)}
ORDER BY 1"""


def latency_p95_by(metric: str, dimension: str) -> str:
    """p95 of one per-turn latency column over time, one series per value of ``dimension``."""
    keys = (("$__timeGroupAlias(t.started_at, $__interval)", "", "time"),
            (f"coalesce(t.{dimension}, 'unknown') AS metric", dimension, "metric"))
    return f"""SELECT p."time", p.metric, p.q[1] AS p95
FROM {_quantile_union(metric, (0.95,), keys)}
ORDER BY 1"""


def latency_p95_stat(metric: str) -> str:
    return f"""SELECT p.q[1] AS "p95"
FROM {_quantile_union(metric, (0.95,), ())}"""


#: Stage series up to this long read stage_latency_1m alone (one point per minute or wider); longer ones the whole hours from latency_stage_1h (one point per
#: hour, like the Calls dashboard's series beyond CALLS_RAW_MAX). The stage table gives the same figures either
#: way (sums over the same minutes), so it switches to the hours for anything longer than STAGE_TABLE_RAW_MAX.
STAGE_RAW_MAX = CALLS_RAW_MAX
STAGE_TABLE_RAW_MAX = "2 hours"


def _stage_source(raw_max: str) -> str:
    """Rows (bucket, stage, provider, model, samples, ttfb_samples, ttfb_sum_ms, p95_ttfb_sum_ms,
    max_p95_ttfb_ms, duration_sum_ms) covering exactly the minutes of latency_stage_1m in the range.

    Ranges up to ``raw_max``: stage_latency_1m (the minutes of the view latency_stage_1m, kept by the deriver:
    the view computes them from spans by date_bin(start_time), which under row-level security cannot be an
    index condition, date_bin not being leakproof, so it reads every span). Longer ones: latency_stage_1h for
    the whole hours, stage_latency_1m for the minutes of the partial first and last hour. The hour columns are sums over minutes, so every sum,
    sample-weighted mean and maximum below equals the one over the minutes.
    """
    rng = f"{RANGE} <= interval '{raw_max}'"
    long = f"{RANGE} > interval '{raw_max}'"
    minute_cols = ("r.bucket, r.stage, r.provider, r.model, r.samples, r.ttfb_samples, "
                   "r.avg_ttfb_ms * r.ttfb_samples, r.p95_ttfb_ms * r.ttfb_samples, r.p95_ttfb_ms, "
                   "r.avg_duration_ms * r.samples")
    return f"""(
  SELECT r.bucket, r.stage, r.provider, r.model, r.samples, r.ttfb_samples,
         r.avg_ttfb_ms * r.ttfb_samples AS ttfb_sum_ms, r.p95_ttfb_ms * r.ttfb_samples AS p95_ttfb_sum_ms,
         r.p95_ttfb_ms AS max_p95_ttfb_ms, r.avg_duration_ms * r.samples AS duration_sum_ms
  FROM stage_latency_1m r
  WHERE {rng} AND $__timeFilter(r.bucket)
  UNION ALL
  SELECT {minute_cols}
  FROM stage_latency_1m r
  WHERE {long} AND r.bucket >= $__timeFrom()::timestamptz AND r.bucket < {FIRST_HOUR}
  UNION ALL
  SELECT {minute_cols}
  FROM stage_latency_1m r
  WHERE {long} AND r.bucket >= {END_HOUR} AND r.bucket <= $__timeTo()::timestamptz
  UNION ALL
  SELECT h.bucket, h.stage, h.provider, h.model, h.samples, h.ttfb_samples, h.ttfb_sum_ms, h.p95_ttfb_sum_ms,
         h.max_p95_ttfb_ms, h.duration_sum_ms
  FROM latency_stage_1h h
  WHERE {long} AND h.bucket >= {FIRST_HOUR} AND h.bucket < {END_HOUR}
) r"""


LATENCY_STAGE_ROLLUP = f"""SELECT $__timeGroupAlias(r.bucket, $__interval),
  r.stage || ' · ' || coalesce(r.provider, 'unknown') || ' / ' || coalesce(r.model, 'unknown') AS metric,
  sum(r.p95_ttfb_sum_ms) / sum(r.ttfb_samples) AS p95_ttfb
FROM {_stage_source(STAGE_RAW_MAX)}
WHERE r.ttfb_samples > 0
  AND r.stage IN ('stt', 'llm', 'tts')
GROUP BY 1, 2
ORDER BY 1"""

LATENCY_STAGE_TABLE = f"""SELECT
  r.stage,
  coalesce(r.provider, 'unknown') AS provider,
  coalesce(r.model, 'unknown') AS model,
  sum(r.samples) AS spans,
  sum(r.ttfb_sum_ms) / NULLIF(sum(r.ttfb_samples), 0) AS avg_ttfb_ms,
  max(r.max_p95_ttfb_ms) AS worst_minute_p95_ttfb_ms,
  sum(r.duration_sum_ms) / NULLIF(sum(r.samples), 0) AS avg_duration_ms
FROM {_stage_source(STAGE_TABLE_RAW_MAX)}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3"""

_SLOW_COLUMNS = """t.started_at AS "time",
    t.call_id,
    t.turn_number AS turn,
    t.agent,
    t.llm_provider,
    t.llm_model,
    t.voice_to_voice_ms,
    t.stt_ms,
    t.llm_ttft_ms,
    t.tts_ttfb_ms"""

# Long ranges: the 50 slowest turns lie in at most 50 hours, and those hours are among the 52 with the highest
# hourly maximum (2 extra for the partial first and last hour, whose maximum may lie outside the range): read
# only those hours of turns (an index range scan each), not every turn of the range. Each hour's part of the range
# is computed in the candidates' select list: under row-level security only leakproof conditions go into an index
# scan (before the policy's filter), and "h.bucket + interval '1 hour'" is not (as a filter, each hour's scan of
# turns_started_at_idx ran to the range's end: 9 s over 30 days at 100 k calls).
_HOUR_BOUNDS = ("greatest(r.bucket, $__timeFrom()::timestamptz) AS lo, "
                "least(r.bucket + interval '1 hour' - interval '1 microsecond', $__timeTo()::timestamptz) AS hi")
LATENCY_SLOWEST_TURNS = f"""SELECT s.* FROM (
  (SELECT {_SLOW_COLUMNS}
  FROM turns t
  WHERE {_RAW_TURNS}
    AND {_turn_filter()}
    AND t.voice_to_voice_ms IS NOT NULL
  ORDER BY t.voice_to_voice_ms DESC
  LIMIT 50)
  UNION ALL
  (SELECT x.*
  FROM (
    (SELECT {_HOUR_BOUNDS}
    FROM turn_latency_breakdown_1h r
    WHERE {_HOUR_TURNS} AND {_AGENT_ALL} AND {_MODEL_ALL}
      AND r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
      AND r.breakdown = 'all'
      AND r.voice_to_voice_samples > 0
    ORDER BY r.voice_to_voice_max_ms DESC
    LIMIT 52)
    UNION ALL
    (SELECT {_HOUR_BOUNDS}
    FROM turn_latency_1h r
    WHERE {_HOUR_TURNS} AND NOT ({_AGENT_ALL} AND {_MODEL_ALL})
      AND r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
      AND {multi_filter('agent', 'r.agent')}
      AND {multi_filter('model', 'r.llm_model')}
      AND r.voice_to_voice_samples > 0
    GROUP BY r.bucket
    ORDER BY max(r.voice_to_voice_max_ms) DESC
    LIMIT 52)
  ) h
  CROSS JOIN LATERAL (
    SELECT {_SLOW_COLUMNS}
    FROM turns t
    WHERE t.started_at >= h.lo AND t.started_at <= h.hi
      AND {_turn_filter()}
      AND t.voice_to_voice_ms IS NOT NULL
    ORDER BY t.voice_to_voice_ms DESC
    LIMIT 50
  ) x)
) s
ORDER BY s.voice_to_voice_ms DESC
LIMIT 50"""

# ---------------------------------------------------------------------------------------------------------
# Silence and barge-in (turns.dead_air_ms, turns.barge_in_stop_ms, calls.longest_silence_ms; raw turns)
# ---------------------------------------------------------------------------------------------------------


def turn_percentiles_raw(metric: str) -> str:
    """p50 / p95 / p99 of a per-turn column over time, from the turns of the range (no rollup)."""
    return f"""SELECT $__timeGroupAlias(t.started_at, $__interval),
  percentile_cont(0.5) WITHIN GROUP (ORDER BY t.{metric}) AS "p50",
  percentile_cont(0.95) WITHIN GROUP (ORDER BY t.{metric}) AS "p95",
  percentile_cont(0.99) WITHIN GROUP (ORDER BY t.{metric}) AS "p99"
FROM turns t
WHERE {_turn_filter()}
  AND t.{metric} IS NOT NULL
GROUP BY 1
ORDER BY 1"""


SILENT_CALLS = f"""SELECT c.started_at AS "time", c.call_id, c.agent, c.campaign, c.longest_silence_ms,
  c.dead_air_total_s, c.barge_in_count, c.duration_s
FROM calls c
WHERE $__timeFilter(c.started_at)
  AND {multi_filter('agent', 'c.agent')}
  AND c.longest_silence_ms IS NOT NULL
ORDER BY c.longest_silence_ms DESC
LIMIT 50"""


# metric column -> (title, breakdown column, breakdown label)
BREAKDOWNS = {
    "voice_to_voice_ms": ("Voice-to-voice", "agent", "agent"),
    "stt_ms": ("STT (user stopped → final transcript)", "stt_provider", "STT provider"),
    "llm_ttft_ms": ("LLM time to first token", "llm_model", "LLM model"),
    "tts_ttfb_ms": ("TTS time to first byte", "tts_provider", "TTS provider"),
}


def _ts(title: str, sql: str, threshold_ms: float | None) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(datasource_ref())
        .with_target(sql_target(sql, "time_series"))
        .unit("ms")
        .span_nulls(False)
        .show_points(cm.VisibilityMode.AUTO)
        .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.TABLE)
                .placement(cm.LegendPlacement.BOTTOM).calcs(["mean", "max"]))
    )
    if threshold_ms is not None:
        panel = (
            panel.thresholds(thresholds((None, "green"), (threshold_ms, "red")))
            .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
        )
    return panel


def _p95_stat(title: str, metric: str, threshold_ms: float | None) -> stat.Panel:
    steps: list[tuple[float | None, str]] = [(None, "green")]
    if threshold_ms is not None:
        steps.append((threshold_ms, "red"))
    return (
        stat.Panel()
        .title(title)
        .datasource(datasource_ref())
        .with_target(sql_target(latency_p95_stat(metric)))
        .unit("ms")
        .decimals(0)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.VALUE)
        .thresholds(thresholds(*steps))
        .no_value("—")
    )


BARGE_IN_TITLE = "Barge-in: agent audio stop p50 / p95 / p99"


def build(*, datasource_name: str, datasource_uid: str, v2v_threshold_ms: float,
          llm_ttft_threshold_ms: float, barge_in_threshold_ms: float) -> dash.Dashboard:
    limits = {"voice_to_voice_ms": v2v_threshold_ms, "llm_ttft_ms": llm_ttft_threshold_ms}
    layout = Layout()
    for metric, (title, _, _) in BREAKDOWNS.items():
        layout.add(_p95_stat(f"p95 {title.split(' (')[0]}", metric, limits.get(metric)), w=6, h=4)

    for metric, (title, dim, dim_label) in BREAKDOWNS.items():
        layout.row(title)
        layout.add(_ts(f"{title}: p50 / p95 / p99", latency_percentiles(metric), limits.get(metric)),
                   w=12, h=8)
        layout.add(_ts(f"{title}: p95 by {dim_label}", latency_p95_by(metric, dim), limits.get(metric)),
                   w=12, h=8)
        if metric == "llm_ttft_ms":
            layout.add(_ts("LLM time to first token: p95 by provider",
                           latency_p95_by(metric, "llm_provider"), limits.get(metric)), w=12, h=8)
            layout.add(_ts("LLM time to first token: p95 by agent",
                           latency_p95_by(metric, "agent"), limits.get(metric)), w=12, h=8)

    layout.row("Providers and models (1-minute rollup of spans)")
    layout.add(
        _ts("Stage TTFB p95 by provider / model", LATENCY_STAGE_ROLLUP, None)
        .description("From stage_latency_1m / latency_stage_1h (the deriver's per-minute and per-hour rollups of "
                     "spans): per-minute p95 of span TTFB, averaged over wider intervals weighted by samples."),
        w=12, h=9,
    )
    stage_table = (
        table.Panel()
        .title("Stages by provider / model")
        .datasource(datasource_ref())
        .with_target(sql_target(LATENCY_STAGE_TABLE))
    )
    for col in ("avg_ttfb_ms", "worst_minute_p95_ttfb_ms", "avg_duration_ms"):
        stage_table = stage_table.override_by_name(col, [unit("ms")])
    layout.add(stage_table, w=12, h=9)

    layout.row("Slowest turns")
    slow = (
        table.Panel()
        .title("Slowest turns (voice-to-voice)")
        .description("Click a call id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(LATENCY_SLOWEST_TURNS))
        .override_by_name("call_id", [call_link()])
    )
    for col in ("voice_to_voice_ms", "stt_ms", "llm_ttft_ms", "tts_ttfb_ms"):
        slow = slow.override_by_name(col, [unit("ms")])
    layout.add(slow, w=24, h=12)

    layout.row("Silence and barge-in")
    layout.add(
        _ts(BARGE_IN_TITLE, turn_percentiles_raw("barge_in_stop_ms"), barge_in_threshold_ms)
        .description("turns.barge_in_stop_ms: the user starts speaking during the agent's speech → the agent's "
                     "audio stops. Only frameworks that report both sides' speech (docs/conventions.md)."),
        w=12, h=8,
    )
    layout.add(
        _ts("Dead air per turn p50 / p95 / p99", turn_percentiles_raw("dead_air_ms"), None)
        .description("turns.dead_air_ms: the longest stretch inside a turn where neither side speaks."),
        w=12, h=8,
    )
    silent = (
        table.Panel()
        .title("Longest silences (calls)")
        .description("calls.longest_silence_ms: the longest stretch of the call where nobody spoke. Click a call "
                     "id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(SILENT_CALLS))
        .override_by_name("call_id", [call_link()])
        .override_by_name("longest_silence_ms", [unit("ms")])
        .override_by_name("dead_air_total_s", [unit("s")])
        .override_by_name("duration_s", [unit("s")])
    )
    layout.add(silent, w=24, h=10)

    board = (
        base_dashboard("latency", "Callscope / Latency",
                       "Per-turn latency percentiles by agent, model and provider; dashed lines are the alert "
                       "thresholds.")
        .time("now-6h", "now")
        .refresh("1m")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(multi_query_variable("agent", "Agent", VAR_AGENT))
        .with_variable(multi_query_variable("model", "LLM model", VAR_LLM_MODEL))
    )
    return layout.apply(board)
