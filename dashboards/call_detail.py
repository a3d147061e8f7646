"""The Call detail dashboard (variable ``call_id``): overview, media and transcript, debug traces, event log."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, logs, stat, table
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import queries as q
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

__all__ = ["build"]


def _call_id_variable() -> dash.QueryVariable:
    # Single value, custom values allowed (links set any id through ?var-call_id=); only ever used as
    # ${call_id:sqlstring}, so a hand-typed value cannot escape its SQL literal.
    return (
        dash.QueryVariable("call_id")
        .label("Call id")
        .datasource(datasource_ref())
        .query(q.VAR_CALL_ID)
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
        .with_target(sql_target(q.DETAIL_OVERVIEW))
        .override_by_name("status", [dm.DynamicConfigValue(id_val="mappings", value=status_mappings()),
                                     cell_type("color-background")])
        .override_by_name("duration_s", [unit("s")])
    )


def _cost() -> stat.Panel:
    return (
        stat.Panel()
        .title("Cost breakdown")
        .datasource(datasource_ref())
        .with_target(sql_target(q.DETAIL_COST))
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
        .with_target(sql_target(q.DETAIL_ANALYSIS))
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
        .with_target(sql_target(q.DETAIL_TRANSCRIPT))
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
        .with_target(sql_target(q.DETAIL_TRACE))
        .with_transformation(json_transformation("serviceTags", "tags", "logs"))
    )


def _turn_latency_bars() -> barchart.Panel:
    return (
        barchart.Panel()
        .title("Latency per turn")
        .description("Stacked design §6 stages: STT, STT → LLM, LLM TTFT, LLM → TTS, TTS TTFB. "
                     "A missing stage is left out, never shown as zero.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.DETAIL_TURN_LATENCY_STACK))
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
        .with_target(sql_target(q.DETAIL_TURN_LATENCY_TABLE))
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
        .with_target(sql_target(q.DETAIL_TOOLS))
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
        .with_target(sql_target(q.DETAIL_INTERRUPTIONS))
    )


def _event_log() -> logs.Panel:
    return (
        logs.Panel()
        .title("Call log")
        .description("The seed 002 event catalogue for this call; the level colours the line. Filter with the "
                     "Category variable.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.DETAIL_EVENT_LOG))
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
        .with_variable(multi_query_variable("category", "Event category", q.VAR_EVENT_CATEGORY)
                       .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD))
    )
    return layout.apply(board)
