"""The Calls dashboard: the conversation ledger of seed 000 (status stats, traffic, cost, the call list)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import queries as q
from dashboards.common import (
    Layout,
    base_dashboard,
    call_link,
    cell_type,
    datasource_ref,
    datasource_variable,
    multi_custom_variable,
    multi_query_variable,
    sql_target,
    status_mappings,
    unit,
)

__all__ = ["build"]

STATUS_COLOURS = {
    "queued": "purple",
    "ringing": "blue",
    "active": "yellow",
    "completed": "green",
    "failed": "red",
    "declined": "orange",
    "missed": "dark-orange",
}


def _status_stat(status: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(status.capitalize())
        .description(f"Calls with status `{status}` started in the time range (type, campaign, agent and search "
                     "filters apply).")
        .datasource(datasource_ref())
        .with_target(sql_target(q.calls_status_count(status)))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .thresholds(
            dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color=STATUS_COLOURS[status])])
        )
        .no_value("0")
    )


def _calls_over_time() -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title("Calls over time by status")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CALLS_OVER_TIME, "time_series"))
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    )
    for status, colour in STATUS_COLOURS.items():
        panel = panel.override_by_name(
            status, [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})]
        )
    return panel


def build(*, datasource_name: str, datasource_uid: str) -> dash.Dashboard:
    layout = Layout()
    for status in q.STATUSES:
        layout.add(_status_stat(status), w=3, h=4)
    layout.add(
        stat.Panel()
        .title("All calls")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CALLS_TOTAL))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .no_value("0"),
        w=3,
        h=4,
    )

    layout.add(
        _calls_over_time(),
        w=12,
        h=8,
    )
    layout.add(
        stat.Panel()
        .title("Cost and duration")
        .description("Totals and averages over the calls in the time range.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CALLS_TOTALS))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/"))
        .override_by_name("Total cost", [unit("currencyUSD")])
        .override_by_name("Avg cost / call", [unit("currencyUSD")])
        .override_by_name("Total duration", [unit("s")])
        .override_by_name("Avg duration", [unit("s")]),
        w=6,
        h=8,
    )
    layout.add(
        timeseries.Panel()
        .title("Cost by component")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CALLS_COST_OVER_TIME, "time_series"))
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        .unit("currencyUSD"),
        w=6,
        h=8,
    )

    layout.row("Conversations")
    layout.add(
        table.Panel()
        .title("Calls")
        .description("Newest first. Click a call id to open its detail view with the same time range.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.CALLS_LIST))
        .filterable(True)
        .override_by_name("call_id", [call_link()])
        .override_by_name("status", [dm.DynamicConfigValue(id_val="mappings", value=status_mappings()),
                                     cell_type("color-background")])
        .override_by_name("duration_s", [unit("s")])
        .override_by_name("cost", [unit("currencyUSD"), dm.DynamicConfigValue(id_val="decimals", value=4)])
        .override_by_name("v2v_p95_ms", [unit("ms")])
        .override_by_name("summary", [dm.DynamicConfigValue(id_val="custom.width", value=400)]),
        w=24,
        h=16,
    )

    board = (
        base_dashboard("calls", "Callscope / Calls",
                       "Every inbound, outbound and web session: status, traffic, cost and the call list.")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(multi_custom_variable("direction", "Type", q.DIRECTIONS))
        .with_variable(multi_query_variable("campaign", "Campaign", q.VAR_CAMPAIGN))
        .with_variable(multi_query_variable("agent", "Agent", q.VAR_AGENT))
        .with_variable(multi_custom_variable("status", "Status", q.STATUSES))
        .with_variable(
            dash.TextBoxVariable("search")
            .label("Call id / phone")
            .description("Part of a call id or phone number (case-insensitive, matched literally).")
            .default_value("")
        )
    )
    return layout.apply(board)
