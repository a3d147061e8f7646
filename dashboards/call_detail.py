"""The Call detail dashboard (variable ``call_id``): overview, media and transcript, debug traces, event log."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, logs, stat, table
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.common import (
    Layout,
    base_dashboard,
    cell_type,
    datasource_ref,
    datasource_variable,
    json_transformation,
    multi_query_variable,
    sql_target,
    status_mappings,
    unit,
)
from dashboards.fragments import VAR_EVENT_CATEGORY, multi_filter, newest_calls

__all__ = ["build"]

# ---------------------------------------------------------------------------------------------------------
# SQL: every query is keyed by the call id (index scans only, no time filter needed)
# ---------------------------------------------------------------------------------------------------------

# The 200 newest calls of the range (from a cutoff hour: dashboards/fragments.py newest_calls).
VAR_CALL_ID = f"""SELECT n.call_id FROM {newest_calls(200)} n
ORDER BY n.started_at DESC"""

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


def _call_id_variable() -> dash.QueryVariable:
    # Single value, custom values allowed (links set any id through ?var-call_id=); only ever used as
    # ${call_id:sqlstring}, so a hand-typed value cannot escape its SQL literal.
    return (
        dash.QueryVariable("call_id")
        .label("Call id")
        .datasource(datasource_ref())
        .query(VAR_CALL_ID)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(False)
        .include_all(False)
        .allow_custom_value(True)
    )


def _overview() -> table.Panel:
    return (
        table.Panel()
        .title("Overview")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_OVERVIEW))
        .override_by_name("status", [dm.DynamicConfigValue(id_val="mappings", value=status_mappings()),
                                     cell_type("color-background")])
        .override_by_name("duration_s", [unit("s")])
    )


def _cost() -> stat.Panel:
    return (
        stat.Panel()
        .title("Cost breakdown")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_COST))
        .unit("currencyUSD")
        .decimals(4)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/"))
        .no_value("—")
    )


def _analysis() -> table.Panel:
    return (
        table.Panel()
        .title("Post-analysis and recording")
        .description("Summary, tags and extracted JSON; the recording link opens the audio file.")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_ANALYSIS))
        .override_by_name("recording_url", [dm.DynamicConfigValue(id_val="links", value=[{
            "title": "Play / download the recording",
            "url": "${__data.fields.recording_url}",
            "targetBlank": True,
        }])])
        .override_by_name("extracted", [cell_type("json-view")])
        .cell_height(cm.TableCellHeight.LG)
    )


def _transcript() -> table.Panel:
    return (
        table.Panel()
        .title("Transcript")
        .description("Who said what, per turn (user utterance, then the agent's reply).")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_TRANSCRIPT))
        .override_by_name("speaker", [dm.DynamicConfigValue(id_val="custom.width", value=160)])
        .override_by_name("turn", [dm.DynamicConfigValue(id_val="custom.width", value=60)])
    )


def _trace() -> dash.Panel:
    return (
        dash.Panel()
        .type("traces")
        .title("Debug trace (STT / LLM / TTS / tools)")
        .description("Every span of the call in one waterfall (a call can span several traces; the first "
                     "trace id labels them all, the original one is in the `trace_id` tag).")
        .datasource(datasource_ref())
        .options({})
        .with_target(sql_target(DETAIL_TRACE))
        .with_transformation(json_transformation("serviceTags", "tags", "logs"))
    )


def _turn_latency_bars() -> barchart.Panel:
    return (
        barchart.Panel()
        .title("Latency per turn")
        .description("Stacked design §6 stages: STT, STT → LLM, LLM TTFT, LLM → TTS, TTS TTFB. "
                     "A missing stage is left out, never shown as zero.")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_TURN_LATENCY_STACK))
        .x_field("turn")
        .stacking(cm.StackingMode.NORMAL)
        .unit("ms")
        .fill_opacity(80)
        .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM))
    )


def _turn_latency_table() -> table.Panel:
    panel = (
        table.Panel()
        .title("Turn latencies")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_TURN_LATENCY_TABLE))
    )
    for col in ("eou_ms", "stt_ms", "stt_to_llm_ms", "llm_ttft_ms", "llm_to_tts_ms", "tts_ttfb_ms",
                "voice_to_voice_ms", "reported_v2v_ms"):
        panel = panel.override_by_name(col, [unit("ms")])
    return panel


def _tools() -> table.Panel:
    return (
        table.Panel()
        .title("Tool executions")
        .description("Inputs passed to each tool, the raw result and any error.")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_TOOLS))
        .override_by_name("duration_ms", [unit("ms")])
        .override_by_name("outcome", [
            dm.DynamicConfigValue(id_val="mappings", value=[dm.ValueMap(options={
                "ok": dm.ValueMappingResult(text="ok", color="green", index=0),
                "error": dm.ValueMappingResult(text="error", color="red", index=1),
            })]),
            cell_type("color-text"),
        ])
        .override_by_name("arguments", [cell_type("json-view")])
        .override_by_name("result", [cell_type("json-view")])
    )


def _interruptions() -> table.Panel:
    return (
        table.Panel()
        .title("Interruptions")
        .description("Turns where the user barged in, and agent.interrupted events.")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_INTERRUPTIONS))
    )


def _event_log() -> logs.Panel:
    return (
        logs.Panel()
        .title("Call log")
        .description("The seed 002 event catalogue for this call; the level colours the line. Filter with the "
                     "Category variable.")
        .datasource(datasource_ref())
        .with_target(sql_target(DETAIL_EVENT_LOG))
        .show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .prettify_log_message(False)
        .sort_order(cm.LogsSortOrder.ASCENDING)
    )


def build(*, datasource_name: str, datasource_uid: str) -> dash.Dashboard:
    layout = Layout()
    layout.row("Overview")
    layout.add(_overview(), w=24, h=5)
    layout.add(_cost(), w=8, h=6)
    layout.add(_analysis(), w=16, h=6)
    layout.row("Media & transcript")
    layout.add(_transcript(), w=24, h=12)
    layout.row("Debug traces")
    layout.add(_trace(), w=24, h=16)
    layout.add(_turn_latency_bars(), w=12, h=9)
    layout.add(_turn_latency_table(), w=12, h=9)
    layout.add(_tools(), w=16, h=8)
    layout.add(_interruptions(), w=8, h=8)
    layout.row("Call log")
    layout.add(_event_log(), w=24, h=14)

    board = (
        base_dashboard("call_detail", "Callscope / Call detail",
                       "One call: overview, recording, transcript, debug trace, latency per turn, tools and log.")
        .time("now-24h", "now")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(_call_id_variable())
        .with_variable(multi_query_variable("category", "Event category", VAR_EVENT_CATEGORY)
                       .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD))
    )
    return layout.apply(board)
