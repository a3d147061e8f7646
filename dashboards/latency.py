"""The Latency dashboard: p50 / p95 / p99 of the design §6 latencies, alert thresholds drawn on the panels."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm

from dashboards import queries as q
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

__all__ = ["build"]

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
        .with_target(sql_target(q.latency_p95_stat(metric)))
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
        layout.add(_ts(f"{title}: p50 / p95 / p99", q.latency_percentiles(metric), limits.get(metric)),
                   w=12, h=8)
        layout.add(_ts(f"{title}: p95 by {dim_label}", q.latency_p95_by(metric, dim), limits.get(metric)),
                   w=12, h=8)
        if metric == "llm_ttft_ms":
            layout.add(_ts("LLM time to first token: p95 by provider",
                           q.latency_p95_by(metric, "llm_provider"), limits.get(metric)), w=12, h=8)
            layout.add(_ts("LLM time to first token: p95 by agent",
                           q.latency_p95_by(metric, "agent"), limits.get(metric)), w=12, h=8)

    layout.row("Providers and models (1-minute rollup of spans)")
    layout.add(
        _ts("Stage TTFB p95 by provider / model", q.LATENCY_STAGE_ROLLUP, None)
        .description("From latency_stage_1m (a continuous aggregate on TimescaleDB, a view on PostgreSQL): "
                     "per-minute p95 of span TTFB, averaged over wider intervals weighted by samples."),
        w=12, h=9,
    )
    stage_table = (
        table.Panel()
        .title("Stages by provider / model")
        .datasource(datasource_ref())
        .with_target(sql_target(q.LATENCY_STAGE_TABLE))
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
        .with_target(sql_target(q.LATENCY_SLOWEST_TURNS))
        .override_by_name("call_id", [call_link()])
    )
    for col in ("voice_to_voice_ms", "stt_ms", "llm_ttft_ms", "tts_ttfb_ms"):
        slow = slow.override_by_name(col, [unit("ms")])
    layout.add(slow, w=24, h=12)

    layout.row("Silence and barge-in")
    layout.add(
        _ts(BARGE_IN_TITLE, q.turn_percentiles_raw("barge_in_stop_ms"), barge_in_threshold_ms)
        .description("turns.barge_in_stop_ms: the user starts speaking during the agent's speech → the agent's "
                     "audio stops. Only frameworks that report both sides' speech (docs/conventions.md)."),
        w=12, h=8,
    )
    layout.add(
        _ts("Dead air per turn p50 / p95 / p99", q.turn_percentiles_raw("dead_air_ms"), None)
        .description("turns.dead_air_ms: the longest stretch inside a turn where neither side speaks."),
        w=12, h=8,
    )
    silent = (
        table.Panel()
        .title("Longest silences (calls)")
        .description("calls.longest_silence_ms: the longest stretch of the call where nobody spoke. Click a call "
                     "id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.SILENT_CALLS))
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
        .with_variable(multi_query_variable("agent", "Agent", q.VAR_AGENT))
        .with_variable(multi_query_variable("model", "LLM model", q.VAR_LLM_MODEL))
    )
    return layout.apply(board)
