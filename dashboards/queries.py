"""Every SQL string the dashboards and alert rules send to PostgreSQL, in one place.

Conventions (docs/dashboards.md, "Writing queries"):

* Only the public schema of design §3 and the two Grafana relations of migration ``0002_grafana``
  (``latency_turns``, ``latency_stage_1m``) are read.
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


# ---------------------------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------------------------

VAR_CAMPAIGN = """SELECT DISTINCT campaign FROM calls
WHERE campaign IS NOT NULL AND $__timeFilter(started_at)
ORDER BY 1"""

VAR_AGENT = """SELECT DISTINCT agent FROM calls
WHERE agent IS NOT NULL AND $__timeFilter(started_at)
ORDER BY 1"""

VAR_CALL_ID = """SELECT call_id FROM calls
WHERE $__timeFilter(started_at)
ORDER BY started_at DESC
LIMIT 200"""

VAR_EVENT_CATEGORY = """SELECT category FROM event_types
UNION
SELECT 'other'
ORDER BY 1"""

VAR_LLM_MODEL = """SELECT DISTINCT llm_model FROM latency_turns
WHERE llm_model IS NOT NULL AND $__timeFilter(time)
ORDER BY 1"""

# ---------------------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------------------


def calls_status_count(status: str) -> str:
    """One stat per status; the status variable does not apply (each stat is one status)."""
    return f"""SELECT count(*) AS "calls"
FROM calls c
WHERE {calls_filter(status=False)}
  AND c.status = '{status}'"""


CALLS_TOTAL = f"""SELECT count(*) AS "calls"
FROM calls c
WHERE {calls_filter(status=False)}"""

CALLS_OVER_TIME = f"""SELECT $__timeGroupAlias(c.started_at, $__interval),
  c.status AS metric,
  count(*) AS calls
FROM calls c
WHERE {calls_filter()}
GROUP BY 1, 2
ORDER BY 1"""

CALLS_TOTALS = f"""SELECT
  coalesce(sum(c.cost_total), 0) AS "Total cost",
  coalesce(avg(c.cost_total), 0) AS "Avg cost / call",
  coalesce(sum(c.duration_s), 0) AS "Total duration",
  coalesce(avg(c.duration_s), 0) AS "Avg duration"
FROM calls c
WHERE {calls_filter()}"""

CALLS_COST_OVER_TIME = f"""SELECT $__timeGroupAlias(c.started_at, $__interval),
  coalesce(sum(c.cost_stt), 0) AS "STT",
  coalesce(sum(c.cost_llm), 0) AS "LLM",
  coalesce(sum(c.cost_tts), 0) AS "TTS",
  coalesce(sum(c.cost_telephony), 0) AS "Telephony"
FROM calls c
WHERE {calls_filter()}
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

DETAIL_TRACE = f"""SELECT
  first_value(s.trace_id) OVER (ORDER BY s.start_time, s.span_id) AS "traceID",
  s.span_id AS "spanID",
  NULLIF(s.parent_span_id, '') AS "parentSpanID",
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
FROM callscope_call_spans({CALL_ID}) s
ORDER BY s.start_time, s.span_id"""

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
# Latency (latency_turns: one row per turn with its call's dimensions; latency_stage_1m: 1-minute rollup)
# ---------------------------------------------------------------------------------------------------------

LATENCY_METRICS = {
    "voice_to_voice_ms": "Voice-to-voice",
    "stt_ms": "STT",
    "llm_ttft_ms": "LLM TTFT",
    "tts_ttfb_ms": "TTS TTFB",
}


def _latency_filter(alias: str = "lt") -> str:
    return (
        f"$__timeFilter({alias}.time)\n  AND {multi_filter('agent', f'{alias}.agent')}"
        f"\n  AND {multi_filter('model', f'{alias}.llm_model')}"
    )


def latency_percentiles(metric: str) -> str:
    """p50 / p95 / p99 of one per-turn latency column over time."""
    return f"""SELECT $__timeGroupAlias(lt.time, $__interval),
  percentile_cont(0.5) WITHIN GROUP (ORDER BY lt.{metric}) AS "p50",
  percentile_cont(0.95) WITHIN GROUP (ORDER BY lt.{metric}) AS "p95",
  percentile_cont(0.99) WITHIN GROUP (ORDER BY lt.{metric}) AS "p99"
FROM latency_turns lt
WHERE {_latency_filter()}
  AND lt.{metric} IS NOT NULL
GROUP BY 1
ORDER BY 1"""


def latency_p95_by(metric: str, dimension: str) -> str:
    """p95 of one per-turn latency column over time, one series per value of ``dimension``."""
    return f"""SELECT $__timeGroupAlias(lt.time, $__interval),
  coalesce(lt.{dimension}, 'unknown') AS metric,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY lt.{metric}) AS p95
FROM latency_turns lt
WHERE {_latency_filter()}
  AND lt.{metric} IS NOT NULL
GROUP BY 1, 2
ORDER BY 1"""


def latency_p95_stat(metric: str) -> str:
    return f"""SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY lt.{metric}) AS "p95"
FROM latency_turns lt
WHERE {_latency_filter()}
  AND lt.{metric} IS NOT NULL"""


LATENCY_STAGE_ROLLUP = """SELECT $__timeGroupAlias(r.bucket, $__interval),
  r.stage || ' · ' || coalesce(r.provider, 'unknown') || ' / ' || coalesce(r.model, 'unknown') AS metric,
  sum(r.p95_ttfb_ms * r.ttfb_samples) / sum(r.ttfb_samples) AS p95_ttfb
FROM latency_stage_1m r
WHERE $__timeFilter(r.bucket)
  AND r.ttfb_samples > 0
  AND r.stage IN ('stt', 'llm', 'tts')
GROUP BY 1, 2
ORDER BY 1"""

LATENCY_STAGE_TABLE = """SELECT
  r.stage,
  coalesce(r.provider, 'unknown') AS provider,
  coalesce(r.model, 'unknown') AS model,
  sum(r.samples) AS spans,
  sum(r.avg_ttfb_ms * r.ttfb_samples) / NULLIF(sum(r.ttfb_samples), 0) AS avg_ttfb_ms,
  max(r.p95_ttfb_ms) AS worst_minute_p95_ttfb_ms,
  sum(r.avg_duration_ms * r.samples) / NULLIF(sum(r.samples), 0) AS avg_duration_ms
FROM latency_stage_1m r
WHERE $__timeFilter(r.bucket)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3"""

LATENCY_SLOWEST_TURNS = f"""SELECT
  lt.time AS "time",
  lt.call_id,
  lt.turn_number AS turn,
  lt.agent,
  lt.llm_provider,
  lt.llm_model,
  lt.voice_to_voice_ms,
  lt.stt_ms,
  lt.llm_ttft_ms,
  lt.tts_ttfb_ms
FROM latency_turns lt
WHERE {_latency_filter()}
  AND lt.voice_to_voice_ms IS NOT NULL
ORDER BY lt.voice_to_voice_ms DESC
LIMIT 50"""

# ---------------------------------------------------------------------------------------------------------
# Events & integrations
# ---------------------------------------------------------------------------------------------------------

_EVENTS_FILTER = (
    f"$__timeFilter(e.time)\n  AND {multi_filter('category', 'e.category')}"
    f"\n  AND {multi_filter('level', 'e.level')}"
)


def events_over_time(dimension: str) -> str:
    return f"""SELECT $__timeGroupAlias(e.time, $__interval),
  e.{dimension} AS metric,
  count(*) AS events
FROM events e
WHERE {_EVENTS_FILTER}
GROUP BY 1, 2
ORDER BY 1"""


EVENTS_BY_TYPE = f"""SELECT
  e.category,
  e.event,
  coalesce(et.display_name, e.event) AS display_name,
  e.level,
  count(*) AS events,
  count(DISTINCT e.call_id) AS calls,
  max(e.time) AS last_seen
FROM call_events e
LEFT JOIN event_types et ON et.event = e.event
WHERE {_EVENTS_FILTER}
GROUP BY 1, 2, 3, 4
ORDER BY events DESC
LIMIT 200"""

FAILED_INTEGRATIONS = """SELECT "time", call_id, kind, name, error FROM (
  SELECT tc.started_at AS "time", tc.call_id, 'tool' AS kind, tc.tool_name AS name,
         coalesce(tc.error, left(tc.result, 300)) AS error
  FROM tool_calls tc
  WHERE $__timeFilter(tc.started_at) AND tc.is_error
  UNION ALL
  SELECT e.time, e.call_id, e.event, coalesce(e.data->>'tool_name', e.data->>'name', e.event),
         coalesce(e.message, e.data::text)
  FROM call_events e
  WHERE $__timeFilter(e.time)
    AND e.event IN ('integration.failed', 'tool.transfer.failed', 'integration.approval_denied')
) f
ORDER BY "time" DESC
LIMIT 500"""

WEBHOOK_EVENTS = ("webhook.queued", "webhook.sent", "webhook.response_success", "webhook.response_failed",
                  "webhook.retry_exhausted")

WEBHOOK_COUNTS = """SELECT
  count(*) FILTER (WHERE e.event = 'webhook.sent') AS "Sent",
  count(*) FILTER (WHERE e.event = 'webhook.response_success') AS "Success",
  count(*) FILTER (WHERE e.event = 'webhook.response_failed') AS "Failed",
  count(*) FILTER (WHERE e.event = 'webhook.retry_exhausted') AS "Retries exhausted"
FROM events e
WHERE $__timeFilter(e.time)
  AND e.category = 'webhook'"""

WEBHOOK_OVER_TIME = """SELECT $__timeGroupAlias(e.time, $__interval),
  e.event AS metric,
  count(*) AS deliveries
FROM events e
WHERE $__timeFilter(e.time)
  AND e.category = 'webhook'
GROUP BY 1, 2
ORDER BY 1"""

def _event_list(condition: str, *, with_event: bool = True) -> str:
    """The newest 500 events matching ``condition`` in the time range, with their call and data."""
    event_column = "\n  e.event," if with_event else ""
    return f"""SELECT
  e.time AS "time",
  e.call_id,{event_column}
  e.level,
  e.message,
  coalesce(e.data, '{{}}'::jsonb)::text AS data
FROM call_events e
WHERE $__timeFilter(e.time)
  AND {condition}
ORDER BY e.time DESC
LIMIT 500"""


WEBHOOK_LIST = _event_list("e.category = 'webhook'\n  AND e.event <> 'webhook.queued'")

PATH_ERRORS = _event_list("e.event = 'path.error'", with_event=False)

TRANSFERS = _event_list("(e.category = 'transfer' OR e.event LIKE 'tool.transfer.%')")

# ---------------------------------------------------------------------------------------------------------
# Alert rules (format time_series: a "time" column, text columns become labels)
# ---------------------------------------------------------------------------------------------------------


def alert_latency_p95(metric: str, *, min_samples: int) -> str:
    return f"""SELECT now() AS "time",
  coalesce(lt.agent, 'unknown') AS agent,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY lt.{metric}) AS p95_ms
FROM latency_turns lt
WHERE $__timeFilter(lt.time)
  AND lt.{metric} IS NOT NULL
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
