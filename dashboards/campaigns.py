"""The Campaigns dashboard: the funnel of each campaign (view ``campaign_funnel``) and its slowest turns, which the
per-campaign alert rules link to."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries
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
    unit,
)

__all__ = ["build", "SLOWEST_TURNS_TITLE"]

SLOWEST_TURNS_TITLE = "Slowest turns (voice-to-voice)"


def _ms_columns(panel: table.Panel, *columns: str) -> table.Panel:
    for column in columns:
        panel = panel.override_by_name(column, [unit("ms")])
    return panel


def build(*, datasource_name: str, datasource_uid: str) -> dash.Dashboard:
    layout = Layout()
    funnel = (
        table.Panel()
        .title("Funnel by campaign")
        .description("Calls of the range per campaign: queued → ringing → answered → completed, and failed, "
                     "declined, missed, transferred; cost and the worst day's p95 voice-to-voice.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CAMPAIGN_FUNNEL))
        .override_by_name("failed_ratio", [unit("percentunit")])
        .override_by_name("cost", [unit("currencyUSD")])
    )
    layout.add(_ms_columns(funnel, "worst_day_p95_v2v_ms"), w=24, h=8)
    layout.add(
        timeseries.Panel()
        .title("Outcomes per day")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CAMPAIGN_OUTCOMES_PER_DAY, "time_series"))
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM)),
        w=12, h=8,
    )
    days = (
        table.Panel()
        .title("Funnel by campaign and day")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CAMPAIGN_DAYS))
        .override_by_name("cost", [unit("currencyUSD")])
    )
    layout.add(_ms_columns(days, "p95_voice_to_voice_ms"), w=12, h=8)
    slow = (
        table.Panel()
        .title(SLOWEST_TURNS_TITLE)
        .description("The slowest turns of the selected campaigns; the campaign alert rules link here. Click a "
                     "call id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CAMPAIGN_SLOWEST_TURNS))
        .override_by_name("call_id", [call_link()])
    )
    layout.add(_ms_columns(slow, "voice_to_voice_ms", "stt_ms", "llm_ttft_ms", "tts_ttfb_ms"), w=24, h=12)
    board = (
        base_dashboard("campaigns", "Callscope / Campaigns",
                       "Per campaign and day: queued, ringing, answered, completed, failed, declined, missed, "
                       "transferred, cost and p95 voice-to-voice; the slowest turns of a campaign.")
        .time("now-7d", "now")
        .refresh("5m")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(multi_query_variable("campaign", "Campaign", q.VAR_CAMPAIGN))
    )
    return layout.apply(board)
