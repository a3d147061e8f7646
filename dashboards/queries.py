"""Every SQL string the dashboards and alert rules send to PostgreSQL, in one place.

Conventions (docs/dashboards.md, "Writing queries"):

* Only the public schema of design §3, the Grafana relations of migration ``0002_grafana``
  (``latency_stage_1m``), the rollups of ``0006_turn_rollup`` (``turn_latency_1m``, ``turn_latency_1h``,
  ``call_status_1h``) and of ``0007_dashboard_rollups`` (``turn_latency_breakdown_1h``, ``latency_stage_1h``,
  ``event_counts_1m``, ``event_counts_1h``; storage/rollup.py) are read, and the routines that migrations
  install (``callscope_hist_quantiles_sorted``, ``callscope_event_seen_before``).
* Long ranges read the rollups, short ranges the raw rows (exact). The choice is made in SQL: every source
  is a ``UNION ALL`` of branches guarded by the length of the range (``$__timeTo() - $__timeFrom()``, a
  constant the planner folds, so only one branch is planned and run). See ``CALLS_RAW_MAX``,
  ``LATENCY_RAW_MAX``, ``EVENTS_RAW_MAX`` and ``EVENTS_MINUTE_MAX``. Whether a variable is "All" is a
  constant too (``'__all' IN (${v})``), so pre-merged rollup rows are read when the other filters are "All".
* Every query selects by index first (time range, call id): plans must not depend on statistics
  (tests/test_dashboard_plans.py checks them on never-analyzed tables).
* Multi-value variables have the custom all value ``'__all'`` (quotes included; Grafana inserts a custom all
  value raw), so a filter reads ``('__all' IN (${v}) OR col IN (${v}))`` and "All" also keeps NULL columns.
* Free text (call id / phone search, the detail view's call id) is only ever written as ``${v:sqlstring}``,
  which Grafana renders as a quoted SQL literal with ``'`` doubled.
* Macro arguments are plain columns (the macro regex stops at the first ``)``).
* Trace and log columns use quoted aliases: PostgreSQL folds unquoted identifiers to lower case.
"""

from __future__ import annotations

__all__ = [
    "ALL_VALUE",
    "STATUSES",
    "DIRECTIONS",
    "LEVELS",
    "calls_filter",
    "multi_filter",
]

#: Custom "All" value of every multi-value variable (inserted raw by Grafana, so it carries its quotes).
ALL_VALUE = "'__all'"

STATUSES = ("queued", "ringing", "active", "completed", "failed", "declined", "missed")
DIRECTIONS = ("inbound", "outbound", "web")
LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")
TERMINAL_STATUSES = ("completed", "failed", "declined", "missed")


def multi_filter(var: str, column: str) -> str:
    """A multi-value variable filter that is a no-op for "All" (NULL values included)."""
    return f"({ALL_VALUE} IN (${{{var}}}) OR {column} IN (${{{var}}}))"


def _search_filter(var: str, columns: tuple[str, ...]) -> str:
    lit = f"${{{var}:sqlstring}}"
    hits = " OR ".join(f"strpos(lower(coalesce({c}, '')), lower({lit})) > 0" for c in columns)
    return f"({lit} = '' OR {hits})"


def calls_filter(alias: str = "c", *, status: bool = True) -> str:
    """The Calls dashboard filters: type, campaign, agent, status and the free-text id / phone search."""
    parts = [
        f"$__timeFilter({alias}.started_at)",
        multi_filter("direction", f"{alias}.direction"),
        multi_filter("campaign", f"{alias}.campaign"),
        multi_filter("agent", f"{alias}.agent"),
    ]
    if status:
        parts.append(multi_filter("status", f"{alias}.status"))
    parts.append(_search_filter("search", (f"{alias}.call_id", f"{alias}.from_number", f"{alias}.to_number")))
    return "\n  AND ".join(parts)


def _in_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


#: Ranges up to this long read raw rows (exact percentiles, exact counts).
CALLS_RAW_MAX = "6 hours"
#: Latency ranges up to this long read raw turns, longer ones the 1-hour turn rollup. (The 1-minute rollup is
#: the hour's building block: per agent / model / provider / campaign / direction a minute holds a few turns,
#: so reading it costs about as much as reading the turns.)
LATENCY_RAW_MAX = "24 hours"

_RANGE = "($__timeTo()::timestamptz - $__timeFrom()::timestamptz)"
_RAW_RANGE = f"{_RANGE} <= interval '{CALLS_RAW_MAX}'"
_LONG_RANGE = f"{_RANGE} > interval '{CALLS_RAW_MAX}'"
_RAW_TURNS = f"{_RANGE} <= interval '{LATENCY_RAW_MAX}'"
_HOUR_TURNS = f"{_RANGE} > interval '{LATENCY_RAW_MAX}'"
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
# The whole hours inside the range: [_FIRST_HOUR, _END_HOUR). The rest of the range is read raw.
_FIRST_HOUR = (f"(date_bin('1 hour', $__timeFrom()::timestamptz - interval '1 microsecond', {_ORIGIN})"
               " + interval '1 hour')")
_END_HOUR = f"date_bin('1 hour', $__timeTo()::timestamptz, {_ORIGIN})"
_NO_SEARCH = "${search:sqlstring} = ''"


# ---------------------------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------------------------

def _call_dimension_values(column: str) -> str:
    """Distinct values of a calls column in the range: raw calls for short ranges, call_status_1h else."""
    return f"""SELECT DISTINCT v FROM (
  SELECT c.{column} AS v FROM calls c
  WHERE {_RAW_RANGE} AND $__timeFilter(c.started_at)
  UNION ALL
  SELECT r.{column} FROM call_status_1h r
  WHERE {_LONG_RANGE} AND $__timeFilter(r.bucket)
) d
WHERE v IS NOT NULL
ORDER BY 1"""


VAR_CAMPAIGN = _call_dimension_values("campaign")

VAR_AGENT = _call_dimension_values("agent")

VAR_CALL_ID = """SELECT call_id FROM calls
WHERE $__timeFilter(started_at)
ORDER BY started_at DESC
LIMIT 200"""

VAR_EVENT_CATEGORY = """SELECT category FROM event_types
UNION
SELECT 'other'
ORDER BY 1"""

VAR_LLM_MODEL = f"""SELECT DISTINCT v FROM (
  SELECT t.llm_model AS v FROM turns t
  WHERE {_RAW_TURNS} AND $__timeFilter(t.started_at)
  UNION ALL
  SELECT r.value FROM turn_latency_breakdown_1h r
  WHERE {_HOUR_TURNS} AND $__timeFilter(r.bucket) AND r.breakdown = 'llm_model'
) d
WHERE v IS NOT NULL
ORDER BY 1"""

# ---------------------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------------------


_CALL_MEASURES = ("calls", "cost_total", "cost_samples", "cost_stt", "cost_llm", "cost_tts", "cost_telephony",
                  "duration_s", "duration_samples")


def _calls_dimension_filter(alias: str, *, status: bool) -> str:
    parts = [multi_filter("direction", f"{alias}.direction"), multi_filter("campaign", f"{alias}.campaign"),
             multi_filter("agent", f"{alias}.agent")]
    if status:
        parts.append(multi_filter("status", f"{alias}.status"))
    return "\n    AND ".join(parts)


def calls_source(*, status: bool = True, only_status: str | None = None) -> str:
    """The calls of the range with the Calls dashboard's filters, as rows of
    ("time", status, direction, campaign, agent, calls, cost sums, cost_samples, duration_s, duration_samples).

    Short ranges, or a free-text search (the rollup has no ids or numbers): one row per call. Longer ranges:
    ``call_status_1h`` for the whole hours inside the range, plus the calls of the partial first and last
    hours read through ``calls_started_at_idx``: counts and sums stay exact.
    """
    raw_cols = ("c.started_at AS \"time\", c.status, c.direction, c.campaign, c.agent, 1 AS calls, c.cost_total, "
                "(c.cost_total IS NOT NULL)::int AS cost_samples, c.cost_stt, c.cost_llm, c.cost_tts, "
                "c.cost_telephony, c.duration_s, (c.duration_s IS NOT NULL)::int AS duration_samples")
    edge_cols = ("c.started_at, c.status, c.direction, c.campaign, c.agent, 1, c.cost_total, "
                 "(c.cost_total IS NOT NULL)::int, c.cost_stt, c.cost_llm, c.cost_tts, c.cost_telephony, "
                 "c.duration_s, (c.duration_s IS NOT NULL)::int")
    rollup_cols = "r.bucket, r.status, r.direction, r.campaign, r.agent, " + ", ".join(
        f"r.{m}" for m in _CALL_MEASURES)
    extra_c = f"\n    AND c.status = '{only_status}'" if only_status else ""
    extra_r = f"\n    AND r.status = '{only_status}'" if only_status else ""
    dims_c = _calls_dimension_filter("c", status=status)
    dims_r = _calls_dimension_filter("r", status=status)
    raw_filter = calls_filter(status=status).replace("\n  AND ", "\n    AND ")
    return f"""(
  SELECT {raw_cols}
  FROM calls c
  WHERE ({_RAW_RANGE} OR NOT {_NO_SEARCH})
    AND {raw_filter}{extra_c}
  UNION ALL
  SELECT {edge_cols}
  FROM calls c
  WHERE {_LONG_RANGE} AND {_NO_SEARCH}
    AND c.started_at >= $__timeFrom()::timestamptz AND c.started_at < {_FIRST_HOUR}
    AND {dims_c}{extra_c}
  UNION ALL
  SELECT {edge_cols}
  FROM calls c
  WHERE {_LONG_RANGE} AND {_NO_SEARCH}
    AND c.started_at >= {_END_HOUR} AND c.started_at <= $__timeTo()::timestamptz
    AND {dims_c}{extra_c}
  UNION ALL
  SELECT {rollup_cols}
  FROM call_status_1h r
  WHERE {_LONG_RANGE} AND {_NO_SEARCH}
    AND r.bucket >= {_FIRST_HOUR} AND r.bucket < {_END_HOUR}
    AND {dims_r}{extra_r}
) s"""


def calls_status_count(status: str) -> str:
    """One stat per status; the status variable does not apply (each stat is one status)."""
    return f"""SELECT coalesce(sum(s.calls), 0)::bigint AS "calls"
FROM {calls_source(status=False, only_status=status)}"""


CALLS_TOTAL = f"""SELECT coalesce(sum(s.calls), 0)::bigint AS "calls"
FROM {calls_source(status=False)}"""

CALLS_OVER_TIME = f"""SELECT $__timeGroupAlias(s.time, $__interval),
  s.status AS metric,
  sum(s.calls)::bigint AS calls
FROM {calls_source()}
GROUP BY 1, 2
ORDER BY 1"""

CALLS_TOTALS = f"""SELECT
  coalesce(sum(s.cost_total), 0) AS "Total cost",
  coalesce(sum(s.cost_total) / NULLIF(sum(s.cost_samples), 0), 0) AS "Avg cost / call",
  coalesce(sum(s.duration_s), 0) AS "Total duration",
  coalesce(sum(s.duration_s) / NULLIF(sum(s.duration_samples), 0), 0) AS "Avg duration"
FROM {calls_source()}"""

CALLS_COST_OVER_TIME = f"""SELECT $__timeGroupAlias(s.time, $__interval),
  coalesce(sum(s.cost_stt), 0) AS "STT",
  coalesce(sum(s.cost_llm), 0) AS "LLM",
  coalesce(sum(s.cost_tts), 0) AS "TTS",
  coalesce(sum(s.cost_telephony), 0) AS "Telephony"
FROM {calls_source()}
GROUP BY 1
ORDER BY 1"""

CALLS_LIST = f"""SELECT
  c.started_at AS "time",
  c.call_id,
  c.direction AS "type",
  c.campaign,
  c.agent,
  c.status,
  c.duration_s,
  c.cost_total AS cost,
  c.currency,
  c.turn_count AS turns,
  (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY t.voice_to_voice_ms)
     FROM turns t WHERE t.call_id = c.call_id) AS v2v_p95_ms,
  c.from_number,
  c.to_number,
  c.summary
FROM calls c
WHERE {calls_filter()}
ORDER BY c.started_at DESC
LIMIT 1000"""

# ---------------------------------------------------------------------------------------------------------
# Call detail (every query is keyed by the call id: index scans only, no time filter needed)
# ---------------------------------------------------------------------------------------------------------

CALL_ID = "${call_id:sqlstring}"

DETAIL_OVERVIEW = f"""SELECT
  c.call_id,
  c.status,
  c.status_reason,
  c.direction AS "type",
  c.campaign,
  c.agent,
  c.framework,
  c.from_number,
  c.to_number,
  c.started_at,
  c.ended_at,
  c.duration_s,
  c.turn_count AS turns,
  c.interruption_count AS interruptions,
  c.tool_call_count AS tool_calls,
  c.error_count AS errors
FROM calls c
WHERE c.call_id = {CALL_ID}"""

DETAIL_COST = f"""SELECT
  c.cost_total AS "Total",
  c.cost_stt AS "STT",
  c.cost_llm AS "LLM",
  c.cost_tts AS "TTS",
  c.cost_telephony AS "Telephony"
FROM calls c
WHERE c.call_id = {CALL_ID}"""

DETAIL_ANALYSIS = f"""SELECT
  c.summary,
  array_to_string(c.tags, ', ') AS tags,
  coalesce(c.extracted, '{{}}'::jsonb)::text AS extracted,
  c.recording_url,
  array_to_string(c.trace_ids, ', ') AS trace_ids
FROM calls c
WHERE c.call_id = {CALL_ID}"""

DETAIL_TRANSCRIPT = f"""SELECT "time", turn, speaker, text FROM (
  SELECT coalesce(t.started_at, t.user_stopped_at) AS "time", t.turn_number AS turn, 'User' AS speaker,
         t.user_text AS text, 0 AS ord
  FROM turns t
  WHERE t.call_id = {CALL_ID} AND t.user_text IS NOT NULL AND t.user_text <> ''
  UNION ALL
  SELECT coalesce(t.agent_started_at, t.tts_first_audio_at, t.llm_first_token_at, t.started_at), t.turn_number,
         CASE WHEN t.interrupted THEN 'Agent (interrupted)' ELSE 'Agent' END,
         t.agent_text, 1
  FROM turns t
  WHERE t.call_id = {CALL_ID} AND t.agent_text IS NOT NULL AND t.agent_text <> ''
) lines
ORDER BY turn, ord, "time\""""

_KIND = """CASE s.kind::text
    WHEN '1' THEN 'internal' WHEN '2' THEN 'server' WHEN '3' THEN 'client'
    WHEN '4' THEN 'producer' WHEN '5' THEN 'consumer'
    ELSE lower(replace(s.kind::text, 'SPAN_KIND_', '')) END"""

# One tree per call: when the call spans several traces (OpenInference makes one per turn), a call-level root
# span holds each trace's roots (and spans whose parent never arrived); one trace id labels every row.
_CALL_ROOT_ID = f"left(md5('callscope.call|' || {CALL_ID}), 16)"

DETAIL_TRACE = f"""WITH s AS (
  SELECT * FROM callscope_call_spans({CALL_ID})
), k AS (
  SELECT (array_agg(s.trace_id ORDER BY s.start_time, s.span_id))[1] AS trace_id,
         count(DISTINCT s.trace_id) > 1 AS several, min(s.start_time) AS first_start, max(s.end_time) AS last_end,
         count(DISTINCT s.trace_id) AS traces
  FROM s
)
SELECT
  k.trace_id AS "traceID",
  s.span_id AS "spanID",
  CASE WHEN k.several AND (NULLIF(s.parent_span_id, '') IS NULL
                           OR NOT EXISTS (SELECT 1 FROM s p WHERE p.trace_id = s.trace_id
                                                              AND p.span_id = s.parent_span_id))
       THEN {_CALL_ROOT_ID} ELSE NULLIF(s.parent_span_id, '') END AS "parentSpanID",
  s.name AS "operationName",
  coalesce(s.service_name, s.stage, 'unknown') AS "serviceName",
  coalesce((SELECT jsonb_agg(jsonb_build_object('key', r.key, 'value', r.value) ORDER BY r.key)
            FROM jsonb_each(CASE WHEN jsonb_typeof(s.resource) = 'object' THEN s.resource ELSE '{{}}'::jsonb END)
                 AS r(key, value)), '[]'::jsonb)::text AS "serviceTags",
  extract(epoch FROM s.start_time) * 1000 AS "startTime",
  coalesce(s.duration_ms, 0)::float8 AS "duration",
  (jsonb_build_array(
     jsonb_build_object('key', 'callscope.stage', 'value', s.stage),
     jsonb_build_object('key', 'callscope.turn_number', 'value', s.turn_number),
     jsonb_build_object('key', 'trace_id', 'value', s.trace_id))
   || coalesce((SELECT jsonb_agg(jsonb_build_object('key', a.key, 'value', a.value) ORDER BY a.key)
                FROM jsonb_each(CASE WHEN jsonb_typeof(s.attributes) = 'object' THEN s.attributes
                                ELSE '{{}}'::jsonb END) AS a(key, value)), '[]'::jsonb)
   || CASE WHEN s.status_code = 2 THEN '[{{"key": "error", "value": true}}]'::jsonb ELSE '[]'::jsonb END
  )::text AS "tags",
  coalesce((SELECT jsonb_agg(jsonb_build_object(
              'timestamp', coalesce(NULLIF(ev.e->>'time_unix_nano', '0')::numeric / 1000000,
                                    extract(epoch FROM s.start_time) * 1000),
              'name', ev.e->>'name',
              'fields', jsonb_build_array(jsonb_build_object('key', 'message', 'value', ev.e->>'name'))
                        || coalesce((SELECT jsonb_agg(jsonb_build_object('key', f.key, 'value', f.value)
                                                      ORDER BY f.key)
                                     FROM jsonb_each(CASE WHEN jsonb_typeof(ev.e->'attributes') = 'object'
                                                     THEN ev.e->'attributes' ELSE '{{}}'::jsonb END)
                                          AS f(key, value)), '[]'::jsonb)))
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(s.events) = 'array' THEN s.events
                                      ELSE '[]'::jsonb END) AS ev(e)), '[]'::jsonb)::text AS "logs",
  {_KIND} AS "kind",
  s.status_code AS "statusCode",
  s.status_message AS "statusMessage",
  s.scope_name AS "instrumentationLibraryName"
FROM s CROSS JOIN k
UNION ALL
SELECT k.trace_id, {_CALL_ROOT_ID}, NULL, 'call ' || {CALL_ID}, 'callscope',
  '[]', extract(epoch FROM k.first_start) * 1000,
  extract(epoch FROM k.last_end - k.first_start)::float8 * 1000,
  jsonb_build_array(jsonb_build_object('key', 'callscope.stage', 'value', 'call'),
                    jsonb_build_object('key', 'callscope.traces', 'value', k.traces))::text,
  '[]', 'internal', 0::smallint, NULL, 'callscope'
FROM k
WHERE k.several
ORDER BY 7, 2"""

_LATENCY_STAGES = (
    ("stt_ms", "STT"),
    ("stt_to_llm_ms", "STT → LLM"),
    ("llm_ttft_ms", "LLM TTFT"),
    ("llm_to_tts_ms", "LLM → TTS"),
    ("tts_ttfb_ms", "TTS TTFB"),
)

DETAIL_TURN_LATENCY_STACK = (
    "SELECT\n  'Turn ' || t.turn_number AS turn,\n"
    + ",\n".join(f'  t.{col} AS "{label}"' for col, label in _LATENCY_STAGES)
    + f"\nFROM turns t\nWHERE t.call_id = {CALL_ID}\nORDER BY t.turn_number"
)

DETAIL_TURN_LATENCY_TABLE = f"""SELECT
  t.turn_number AS turn,
  t.started_at,
  t.eou_ms,
  t.stt_ms,
  t.stt_to_llm_ms,
  t.llm_ttft_ms,
  t.llm_to_tts_ms,
  t.tts_ttfb_ms,
  t.voice_to_voice_ms,
  t.reported_v2v_ms,
  t.interrupted,
  t.stt_provider,
  t.llm_provider,
  t.llm_model,
  t.tts_provider,
  t.input_tokens,
  t.output_tokens
FROM turns t
WHERE t.call_id = {CALL_ID}
ORDER BY t.turn_number"""

DETAIL_TOOLS = f"""SELECT
  tc.started_at AS "time",
  tc.turn_number AS turn,
  tc.tool_name,
  tc.duration_ms,
  CASE WHEN tc.is_error THEN 'error' ELSE 'ok' END AS outcome,
  tc.arguments,
  tc.result,
  tc.error,
  tc.tool_call_id,
  tc.span_id
FROM tool_calls tc
WHERE tc.call_id = {CALL_ID}
ORDER BY tc.started_at, tc.tool_call_id"""

DETAIL_INTERRUPTIONS = f"""SELECT "time", turn, source, detail FROM (
  SELECT coalesce(t.agent_started_at, t.started_at) AS "time", t.turn_number AS turn, 'turn' AS source,
         left(coalesce(t.agent_text, ''), 200) AS detail
  FROM turns t
  WHERE t.call_id = {CALL_ID} AND t.interrupted
  UNION ALL
  SELECT e."time", e.turn_number, e.source, coalesce(e.message, e.data::text)
  FROM callscope_call_events({CALL_ID}) e
  WHERE e.event = 'agent.interrupted'
) i
ORDER BY "time\""""

DETAIL_EVENT_LOG = f"""SELECT
  e."time" AS "time",
  coalesce(et.display_name, e.event) || coalesce(': ' || NULLIF(e.message, ''), '') AS "line",
  lower(e.level) AS "level",
  e.category,
  e.event,
  e.source,
  coalesce(e.data, '{{}}'::jsonb)::text AS data,
  e.trace_id,
  e.span_id,
  coalesce(e.event_id, md5(e."time"::text || e.event || coalesce(e.span_id, ''))) AS "id"
FROM callscope_call_events({CALL_ID}) e
LEFT JOIN event_types et ON et.event = e.event
WHERE {multi_filter("category", "e.category")}
ORDER BY e."time\""""

# ---------------------------------------------------------------------------------------------------------
# Latency: raw turns for short ranges (exact percentile_cont), the turn-latency rollups for longer ones
# (histograms, within 2 % of percentile_cont: storage/rollup.py); latency_stage_1m: spans per minute
# ---------------------------------------------------------------------------------------------------------

LATENCY_METRICS = {
    "voice_to_voice_ms": "Voice-to-voice",
    "stt_ms": "STT",
    "llm_ttft_ms": "LLM TTFT",
    "tts_ttfb_ms": "TTS TTFB",
}


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


#: Stage series up to this long read latency_stage_1m alone (one point per minute or wider; on plain
#: PostgreSQL a view that reads the spans); longer ones the whole hours from latency_stage_1h (one point per
#: hour, like the Calls dashboard's series beyond CALLS_RAW_MAX). The stage table gives the same figures either
#: way (sums over the same minutes), so it switches to the hours for anything longer than STAGE_TABLE_RAW_MAX.
STAGE_RAW_MAX = CALLS_RAW_MAX
STAGE_TABLE_RAW_MAX = "2 hours"


def _stage_source(raw_max: str) -> str:
    """Rows (bucket, stage, provider, model, samples, ttfb_samples, ttfb_sum_ms, p95_ttfb_sum_ms,
    max_p95_ttfb_ms, duration_sum_ms) covering exactly the minutes of latency_stage_1m in the range.

    Ranges up to ``raw_max``: latency_stage_1m (a view over spans on plain PostgreSQL, a real-time continuous
    aggregate on TimescaleDB). Longer ones: latency_stage_1h for the whole hours, latency_stage_1m for the
    minutes of the partial first and last hour. The hour columns are sums over minutes, so every sum,
    sample-weighted mean and maximum below equals the one over the minutes.
    """
    rng = f"{_RANGE} <= interval '{raw_max}'"
    long = f"{_RANGE} > interval '{raw_max}'"
    minute_cols = ("r.bucket, r.stage, r.provider, r.model, r.samples, r.ttfb_samples, "
                   "r.avg_ttfb_ms * r.ttfb_samples, r.p95_ttfb_ms * r.ttfb_samples, r.p95_ttfb_ms, "
                   "r.avg_duration_ms * r.samples")
    return f"""(
  SELECT r.bucket, r.stage, r.provider, r.model, r.samples, r.ttfb_samples,
         r.avg_ttfb_ms * r.ttfb_samples AS ttfb_sum_ms, r.p95_ttfb_ms * r.ttfb_samples AS p95_ttfb_sum_ms,
         r.p95_ttfb_ms AS max_p95_ttfb_ms, r.avg_duration_ms * r.samples AS duration_sum_ms
  FROM latency_stage_1m r
  WHERE {rng} AND $__timeFilter(r.bucket)
  UNION ALL
  SELECT {minute_cols}
  FROM latency_stage_1m r
  WHERE {long} AND r.bucket >= $__timeFrom()::timestamptz AND r.bucket < {_FIRST_HOUR}
  UNION ALL
  SELECT {minute_cols}
  FROM latency_stage_1m r
  WHERE {long} AND r.bucket >= {_END_HOUR} AND r.bucket <= $__timeTo()::timestamptz
  UNION ALL
  SELECT h.bucket, h.stage, h.provider, h.model, h.samples, h.ttfb_samples, h.ttfb_sum_ms, h.p95_ttfb_sum_ms,
         h.max_p95_ttfb_ms, h.duration_sum_ms
  FROM latency_stage_1h h
  WHERE {long} AND h.bucket >= {_FIRST_HOUR} AND h.bucket < {_END_HOUR}
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
# only those hours of turns (an index range scan each), not every turn of the range.
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
    (SELECT r.bucket
    FROM turn_latency_breakdown_1h r
    WHERE {_HOUR_TURNS} AND {_AGENT_ALL} AND {_MODEL_ALL}
      AND r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
      AND r.breakdown = 'all'
      AND r.voice_to_voice_samples > 0
    ORDER BY r.voice_to_voice_max_ms DESC
    LIMIT 52)
    UNION ALL
    (SELECT r.bucket
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
    WHERE t.started_at >= h.bucket AND t.started_at < h.bucket + interval '1 hour'
      AND {_turn_filter()}
      AND t.voice_to_voice_ms IS NOT NULL
    ORDER BY t.voice_to_voice_ms DESC
    LIMIT 50
  ) x)
) s
ORDER BY s.voice_to_voice_ms DESC
LIMIT 50"""

# ---------------------------------------------------------------------------------------------------------
# Events & integrations
# ---------------------------------------------------------------------------------------------------------

#: Event ranges up to this long read the events themselves; up to EVENTS_MINUTE_MAX the 1-minute event
#: rollup, longer ones the 1-hour rollup (the minutes of the partial first / last hour from the 1-minute one).
#: The partial first and last minute are always read raw, so counts are exact on every range.
EVENTS_RAW_MAX = "1 hour"
EVENTS_MINUTE_MAX = "24 hours"

_RAW_EVENTS = f"{_RANGE} <= interval '{EVENTS_RAW_MAX}'"
_ROLLED_EVENTS = f"{_RANGE} > interval '{EVENTS_RAW_MAX}'"
_MINUTE_EVENTS = f"{_ROLLED_EVENTS} AND {_RANGE} <= interval '{EVENTS_MINUTE_MAX}'"
_HOUR_EVENTS = f"{_RANGE} > interval '{EVENTS_MINUTE_MAX}'"
# The whole minutes inside the range: [_FIRST_MINUTE, _END_MINUTE).
_FIRST_MINUTE = (f"(date_bin('1 minute', $__timeFrom()::timestamptz - interval '1 microsecond', {_ORIGIN})"
                 " + interval '1 minute')")
_END_MINUTE = f"date_bin('1 minute', $__timeTo()::timestamptz, {_ORIGIN})"


def _event_filter(alias: str, extra: str = "") -> str:
    """The dashboard's category / level filters (and ``extra``, written for alias ``e``) on ``alias``."""
    parts = [multi_filter("category", f"{alias}.category"), multi_filter("level", f"{alias}.level")]
    if extra:
        parts.append(extra.replace("e.", f"{alias}."))
    return "\n    AND ".join(parts)


def _event_segments() -> list[tuple[str, str, str, str]]:
    """The pieces an event range is read in: (source, guard, time condition, segment start). Exactly the
    pieces of one kind of range run, and they partition it: raw events (short ranges; otherwise only the
    partial first and last minute), 1-minute rows (the whole minutes, or only those of the partial first and
    last hour of a long range), 1-hour rows (the whole hours of a long range)."""
    frm, to = "$__timeFrom()::timestamptz", "$__timeTo()::timestamptz"
    return [
        ("raw", _RAW_EVENTS, "$__timeFilter(e.time)", frm),
        ("raw", _ROLLED_EVENTS, f"e.time >= {frm} AND e.time < {_FIRST_MINUTE}", frm),
        ("raw", _ROLLED_EVENTS, f"e.time >= {_END_MINUTE} AND e.time <= {to}", _END_MINUTE),
        ("event_counts_1m", _MINUTE_EVENTS, f"r.bucket >= {_FIRST_MINUTE} AND r.bucket < {_END_MINUTE}", ""),
        ("event_counts_1m", _HOUR_EVENTS, f"r.bucket >= {_FIRST_MINUTE} AND r.bucket < {_FIRST_HOUR}", ""),
        ("event_counts_1m", _HOUR_EVENTS, f"r.bucket >= {_END_HOUR} AND r.bucket < {_END_MINUTE}", ""),
        ("event_counts_1h", _HOUR_EVENTS, f"r.bucket >= {_FIRST_HOUR} AND r.bucket < {_END_HOUR}", ""),
    ]


def events_source(extra: str = "") -> str:
    """Rows ("time", category, event, level, events) of the range's events that pass the dashboard's filters
    and ``extra`` (a condition on ``e.category`` / ``e.event`` / ``e.level``): one per raw event, one per
    rollup row. ``sum(events)`` is exact on every range."""
    branches = []
    for source, guard, when, _ in _event_segments():
        if source == "raw":
            branches.append(f"""  SELECT e.time AS "time", e.category, e.event, e.level, 1 AS events
  FROM events e
  WHERE {guard} AND {when}
    AND {_event_filter("e", extra)}""")
        else:
            branches.append(f"""  SELECT r.bucket, r.category, r.event, r.level, r.events
  FROM {source} r
  WHERE {guard} AND {when}
    AND {_event_filter("r", extra)}""")
    return "(\n" + "\n  UNION ALL\n".join(branches) + "\n) s"


def _events_per_interval(dimension: str, extra: str = "", alias: str = "events") -> str:
    """Events per time group and ``dimension``. Rows are first added up per bucket (a timestamp and text key,
    cheap to group) and only then put in Grafana's time groups (numeric arithmetic per row)."""
    return f"""SELECT $__timeGroupAlias(g.time, $__interval),
  g.metric,
  sum(g.n)::bigint AS {alias}
FROM (
  SELECT s.time, s.{dimension} AS metric, sum(s.events) AS n
  FROM {events_source(extra).replace(chr(10), chr(10) + "  ")}
  GROUP BY 1, 2
) g
GROUP BY 1, 2
ORDER BY 1"""


def events_over_time(dimension: str) -> str:
    return _events_per_interval(dimension)


def _events_by_kind() -> str:
    """Rows (category, event, level, events, calls, last_time) per kind of event in the range. Short ranges:
    the events themselves, calls = distinct calls (exact). Longer ranges add up the rollup rows and the
    partial first / last minute, where calls = the calls whose first event of that kind lies in the piece
    (callscope_event_seen_before; storage/rollup.py): in total, the calls whose first event of the kind lies
    in the range."""
    frm = "$__timeFrom()::timestamptz"
    branches = [f"""  SELECT e.category, e.event, e.level, count(*) AS events, count(DISTINCT e.call_id) AS calls,
         max(e.time) AS last_time
  FROM call_events e
  WHERE {_RAW_EVENTS} AND $__timeFilter(e.time)
    AND {_event_filter("e")}
  GROUP BY 1, 2, 3"""]
    for source, guard, when, start in _event_segments():
        if source == "raw":
            if start == frm and "$__timeFilter" in when:
                continue  # the short range, above
            branches.append(f"""  SELECT x.category, x.event, x.level, sum(x.n), count(*) FILTER (WHERE NOT
           callscope_event_seen_before(x.call_id, x.category, x.event, x.level, {start})), max(x.last_time)
  FROM (
    SELECT e.call_id, e.category, e.event, e.level, count(*) AS n, max(e.time) AS last_time
    FROM call_events e
    WHERE {guard} AND {when}
      AND {_event_filter("e").replace(chr(10) + "    AND", chr(10) + "      AND")}
    GROUP BY 1, 2, 3, 4
  ) x
  GROUP BY 1, 2, 3""")
        else:
            branches.append(f"""  SELECT r.category, r.event, r.level, r.events, r.calls, r.last_time
  FROM {source} r
  WHERE {guard} AND {when}
    AND {_event_filter("r")}""")
    return "(\n" + "\n  UNION ALL\n".join(branches) + "\n) s"


EVENTS_BY_TYPE = f"""SELECT
  g.category,
  g.event,
  coalesce(et.display_name, g.event) AS display_name,
  g.level,
  g.events,
  g.calls,
  g.last_seen
FROM (
  SELECT s.category, s.event, s.level, sum(s.events)::bigint AS events, sum(s.calls)::bigint AS calls,
         max(s.last_time) AS last_seen
  FROM {_events_by_kind().replace(chr(10), chr(10) + "  ")}
  GROUP BY 1, 2, 3
) g
LEFT JOIN event_types et ON et.event = g.event
ORDER BY g.events DESC
LIMIT 200"""

def _newest(select: str, time_column: str, limit: int = 500) -> str:
    """The newest ``limit`` rows of ``select`` (a SELECT whose WHERE ends with ``AND {window}``), read in
    windows going back from the end of the range, 1, 2, 4, 8 … hours long, stopping once ``limit`` rows are
    found (an incremental sort on the windows' ordinal: the planner knows they come in order). Without
    statistics the planner takes a rare-looking filter for a few rows and would otherwise sort every matching
    row of the range (a bitmap scan). Here a frequent kind costs a window or two of its rows, a rare one a
    few index probes per doubling (about 10 for 30 days). The LIMIT inside keeps each window's subquery a
    parameterized index scan (one without it is flattened into a join that reads the whole range once)."""
    end = "($__timeTo()::timestamptz + interval '1 microsecond')"   # windows are [lo, hi): hi of the first is "to"
    window = (f"{time_column} >= {end} - (2 ^ (w.k + 1) - 1) * interval '1 hour' "
              f"AND {time_column} < {end} - (2 ^ w.k - 1) * interval '1 hour' "
              f"AND $__timeFilter({time_column})")
    return f"""SELECT x.*
    FROM generate_series(0, 20) WITH ORDINALITY AS w(k, ord)
    CROSS JOIN LATERAL (
      {select.replace("{window}", window)}
      ORDER BY {time_column} DESC
      LIMIT {limit}
    ) x
    ORDER BY w.ord, x."time" DESC
    LIMIT {limit}"""


# The newest rows of a few event kinds: per kind, hour by hour through events_event_time_idx (at most 500
# rows each), then the newest 500 of those. Reads a bounded number of rows whatever the range and whatever
# the planner estimates.
_FAILED_EVENTS = ("integration.failed", "tool.transfer.failed", "integration.approval_denied")

_FAILED_TOOLS = _newest("""SELECT tc.started_at AS "time", tc.call_id, 'tool' AS kind, tc.tool_name AS name,
             coalesce(tc.error, left(tc.result, 300)) AS error
      FROM tool_calls tc
      WHERE tc.is_error AND {window}""", "tc.started_at")

_FAILED_EVENT_ROWS = _newest("""SELECT e.time AS "time", e.call_id, e.event AS kind,
             coalesce(e.data->>'tool_name', e.data->>'name', e.event) AS name,
             coalesce(e.message, e.data::text) AS error
      FROM call_events e
      WHERE e.event = n.event AND {window}""", "e.time")

FAILED_INTEGRATIONS = f"""SELECT "time", call_id, kind, name, error FROM (
  ({_FAILED_TOOLS})
  UNION ALL
  SELECT l.*
  FROM (VALUES {", ".join(f"('{e}')" for e in _FAILED_EVENTS)}) AS n(event)
  CROSS JOIN LATERAL (
    {_FAILED_EVENT_ROWS}
  ) l
) f
ORDER BY "time" DESC
LIMIT 500"""

WEBHOOK_EVENTS = ("webhook.queued", "webhook.sent", "webhook.response_success", "webhook.response_failed",
                  "webhook.retry_exhausted")

WEBHOOK_COUNTS = f"""SELECT
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.sent'), 0)::bigint AS "Sent",
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.response_success'), 0)::bigint AS "Success",
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.response_failed'), 0)::bigint AS "Failed",
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.retry_exhausted'), 0)::bigint AS "Retries exhausted"
FROM (
  SELECT s.* FROM {events_source("e.category = 'webhook'").replace(chr(10), chr(10) + "  ")}
) s"""

WEBHOOK_OVER_TIME = _events_per_interval("event", "e.category = 'webhook'", "deliveries")


def _event_list(condition: str, *, with_event: bool = True) -> str:
    """The newest 500 events matching ``condition`` (on ``e.category`` / ``e.event``) in the time range, with
    their call and data: per event name, hour by hour through events_event_time_idx (``_newest``). The names:
    those of the catalogue (event_types) and of the event rollup rows in the range that match ``condition``
    (kinds the catalogue no longer lists)."""
    event_column = "\n  l.event," if with_event else ""
    on = lambda alias: condition.replace("e.", f"{alias}.")  # noqa: E731
    rows = _newest(f"""SELECT e.time AS "time", e.call_id, e.event, e.level, e.message,
             coalesce(e.data, '{{}}'::jsonb)::text AS data
      FROM call_events e
      WHERE e.event = n.event AND {condition} AND {{window}}""", "e.time")
    return f"""SELECT
  l.time AS "time",
  l.call_id,{event_column}
  l.level,
  l.message,
  l.data
FROM (
  SELECT t.event FROM event_types t
  WHERE {on("t")}
  UNION
  SELECT r.event FROM event_counts_1h r
  WHERE r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
    AND {on("r")}
  UNION
  SELECT r.event FROM event_counts_1m r
  WHERE r.bucket >= {_END_HOUR} AND r.bucket <= $__timeTo()::timestamptz
    AND {on("r")}
) n
CROSS JOIN LATERAL (
  {rows}
) l
ORDER BY l.time DESC
LIMIT 500"""


WEBHOOK_LIST = _event_list("e.category = 'webhook' AND e.event <> 'webhook.queued'")

_PATH_ERROR_ROWS = _newest("""SELECT e.time AS "time", e.call_id, e.level, e.message,
             coalesce(e.data, '{}'::jsonb)::text AS data
      FROM call_events e
      WHERE e.event = 'path.error' AND {window}""", "e.time")

PATH_ERRORS = f"""SELECT
  l.time AS "time",
  l.call_id,
  l.level,
  l.message,
  l.data
FROM (
  {_PATH_ERROR_ROWS}
) l
ORDER BY l.time DESC"""

TRANSFERS = _event_list("(e.category = 'transfer' OR e.event LIKE 'tool.transfer.%')")

# ---------------------------------------------------------------------------------------------------------
# Alert rules (format time_series: a "time" column, text columns become labels)
# ---------------------------------------------------------------------------------------------------------


def alert_latency_p95(metric: str, *, min_samples: int) -> str:
    """Exact p95 per agent over the rule's window: the window's turns through turns_started_at_idx, no join
    (turns carry their call's agent)."""
    return f"""SELECT now() AS "time",
  coalesce(t.agent, 'unknown') AS agent,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY t.{metric}) AS p95_ms
FROM turns t
WHERE $__timeFilter(t.started_at)
  AND t.{metric} IS NOT NULL
GROUP BY 2
HAVING count(*) >= {int(min_samples)}"""


def alert_failed_ratio(*, min_calls: int) -> str:
    return f"""SELECT now() AS "time",
  coalesce(c.agent, 'unknown') AS agent,
  (count(*) FILTER (WHERE c.status = 'failed'))::float8 / count(*) AS failed_ratio
FROM calls c
WHERE $__timeFilter(c.started_at)
  AND c.status IN ({_in_list(TERMINAL_STATUSES)})
GROUP BY 2
HAVING count(*) >= {int(min_calls)}"""


ALERT_WEBHOOK_RETRY_EXHAUSTED = """SELECT now() AS "time",
  count(*) AS retry_exhausted
FROM events e
WHERE $__timeFilter(e.time)
  AND e.event = 'webhook.retry_exhausted'"""

ALERT_NO_TELEMETRY = """SELECT now() AS "time",
  (EXISTS (SELECT 1 FROM spans s WHERE $__timeFilter(s.start_time))
   OR EXISTS (SELECT 1 FROM events e WHERE $__timeFilter(e.time)))::int AS telemetry_seen"""

# ---------------------------------------------------------------------------------------------------------
# Telemetry quality (view call_quality: one row per call, a column per finding; docs/dashboards.md)
# ---------------------------------------------------------------------------------------------------------

#: finding column → (panel title, what it means, the extra column shown beside it)
QUALITY_FINDINGS = {
    "turns_missing_stage": ("Turns missing a stage", "Turns without the STT, LLM or TTS stage other turns of the "
                            "same call have.", None),
    "orphan_spans": ("Orphan spans", "Spans whose parent never arrived (not exported, dropped, or still open).",
                     None),
    "spans_ending_before_start": ("Spans ending before they start", "End time earlier than start time.", None),
    "clock_skew_spans": ("Clock skew", "Child spans starting more than 1 s before their parent: the clocks of two "
                         "services disagree.", "max_child_lead_ms"),
    "gone_silent": ("Active calls gone silent", "Active calls with no telemetry for 5 minutes (or flagged stale "
                    "by the collector).", "silent_for_s"),
    "uncorrelated_log_records": ("Uncorrelated log records", "Log records that name no call and whose trace has "
                                 "no span.", None),
}


def quality_finding(column: str) -> str:
    """The calls of the range with one finding, worst first."""
    extra = QUALITY_FINDINGS[column][2]
    condition = f"q.{column}" if column == "gone_silent" else f"q.{column} > 0"
    order = f"q.{extra} DESC NULLS LAST" if extra else f"q.{column} DESC"
    return f"""SELECT q.started_at AS "time", q.call_id, q.status, q.framework, q.agent,
  q.{column}{f", q.{extra}" if extra else ""}
FROM call_quality q
WHERE $__timeFilter(q.started_at)
  AND {multi_filter('agent', 'q.agent')}
  AND {condition}
ORDER BY {order}, q.started_at DESC
LIMIT 200"""


QUALITY_SUMMARY = f"""SELECT
  count(*) AS "Calls",
  count(*) FILTER (WHERE q.findings > 0) AS "With findings",
  count(*) FILTER (WHERE q.turns_missing_stage > 0) AS "Missing stage",
  count(*) FILTER (WHERE q.orphan_spans > 0) AS "Orphan spans",
  count(*) FILTER (WHERE q.spans_ending_before_start > 0) AS "End before start",
  count(*) FILTER (WHERE q.clock_skew_spans > 0) AS "Clock skew",
  count(*) FILTER (WHERE q.gone_silent) AS "Gone silent",
  count(*) FILTER (WHERE q.uncorrelated_log_records > 0) AS "Uncorrelated logs"
FROM call_quality q
WHERE $__timeFilter(q.started_at)
  AND {multi_filter('agent', 'q.agent')}"""

QUALITY_CALLS = f"""SELECT q.started_at AS "time", q.call_id, q.status, q.framework, q.agent, q.findings,
  q.turns_missing_stage, q.orphan_spans, q.spans_ending_before_start, q.clock_skew_spans, q.gone_silent,
  q.uncorrelated_log_records
FROM call_quality q
WHERE $__timeFilter(q.started_at)
  AND {multi_filter('agent', 'q.agent')}
ORDER BY q.findings DESC, q.started_at DESC
LIMIT 500"""

# ---------------------------------------------------------------------------------------------------------
# Campaigns (view campaign_funnel: per campaign and UTC day; its day filter uses calls_day_campaign_idx)
# ---------------------------------------------------------------------------------------------------------

_DAYS = ("f.day >= ($__timeFrom()::timestamptz AT TIME ZONE 'UTC')::date\n"
         "  AND f.day <= ($__timeTo()::timestamptz AT TIME ZONE 'UTC')::date")
FUNNEL_OUTCOMES = ("queued", "ringing", "answered", "completed", "failed", "declined", "missed", "transferred")

CAMPAIGN_FUNNEL = f"""SELECT coalesce(f.campaign, '(none)') AS campaign,
  sum(f.calls)::bigint AS calls,
  {", ".join(f"sum(f.{o})::bigint AS {o}" for o in FUNNEL_OUTCOMES)},
  sum(f.failed)::float8 / NULLIF(sum(f.calls), 0) AS failed_ratio,
  sum(f.cost) AS cost,
  max(f.p95_voice_to_voice_ms) AS worst_day_p95_v2v_ms
FROM campaign_funnel f
WHERE {_DAYS}
  AND {multi_filter('campaign', 'f.campaign')}
GROUP BY 1
ORDER BY calls DESC"""

CAMPAIGN_DAYS = f"""SELECT f.day, coalesce(f.campaign, '(none)') AS campaign, f.calls,
  {", ".join(f"f.{o}" for o in FUNNEL_OUTCOMES)}, f.cost, f.p95_voice_to_voice_ms
FROM campaign_funnel f
WHERE {_DAYS}
  AND {multi_filter('campaign', 'f.campaign')}
ORDER BY f.day DESC, f.calls DESC"""

CAMPAIGN_OUTCOMES_PER_DAY = f"""SELECT (f.day::timestamp AT TIME ZONE 'UTC') AS "time",
  {", ".join(f"sum(f.{o})::bigint AS {o}" for o in ("answered", "completed", "failed", "transferred"))}
FROM campaign_funnel f
WHERE {_DAYS}
  AND {multi_filter('campaign', 'f.campaign')}
GROUP BY 1
ORDER BY 1"""

# The slowest turns of the selected campaigns: their calls by campaign and start time, each call's turns by
# its key (a LATERAL, so the plan is a nested loop whatever the estimates).
CAMPAIGN_SLOWEST_TURNS = f"""SELECT t.started_at AS "time", c.campaign, c.call_id, t.turn_number AS turn, c.agent,
  t.voice_to_voice_ms, t.stt_ms, t.llm_ttft_ms, t.tts_ttfb_ms, t.llm_model
FROM calls c
CROSS JOIN LATERAL (
  SELECT * FROM turns t WHERE t.call_id = c.call_id AND t.voice_to_voice_ms IS NOT NULL
  OFFSET 0  -- kept a subquery: a join planned without statistics may read every turn
) t
WHERE $__timeFilter(c.started_at)
  AND {multi_filter('campaign', 'c.campaign')}
ORDER BY t.voice_to_voice_ms DESC
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


def alert_barge_in_p95(*, min_samples: int) -> str:
    return alert_latency_p95("barge_in_stop_ms", min_samples=min_samples)


def alert_campaign_latency_p95(metric: str, *, min_samples: int) -> str:
    """Exact p95 per campaign over the rule's window: the window's calls by start time, their turns by key."""
    return f"""SELECT now() AS "time",
  c.campaign,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY t.{metric}) AS p95_ms
FROM calls c
CROSS JOIN LATERAL (SELECT t.{metric} FROM turns t WHERE t.call_id = c.call_id AND t.{metric} IS NOT NULL
                    OFFSET 0) t
WHERE $__timeFilter(c.started_at)
  AND c.campaign IS NOT NULL
GROUP BY 2
HAVING count(*) >= {int(min_samples)}"""


def alert_campaign_failed_ratio(*, min_calls: int) -> str:
    return f"""SELECT now() AS "time",
  c.campaign,
  (count(*) FILTER (WHERE c.status = 'failed'))::float8 / count(*) AS failed_ratio
FROM calls c
WHERE $__timeFilter(c.started_at)
  AND c.campaign IS NOT NULL
  AND c.status IN ({_in_list(TERMINAL_STATUSES)})
GROUP BY 2
HAVING count(*) >= {int(min_calls)}"""
