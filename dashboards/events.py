"""The Events & integrations dashboard: the call-log catalogue over time, failures, webhooks, paths, transfers."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import queries as q
from dashboards.common import (
    Layout,
    base_dashboard,
    call_link,
    datasource_ref,
    datasource_variable,
    multi_custom_variable,
    multi_query_variable,
    sql_target,
)

__all__ = ["build"]

LEVEL_COLOURS = {"INFO": "green", "WARNING": "orange", "ERROR": "red", "CRITICAL": "dark-red"}


def _bars(title: str, sql: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .datasource(datasource_ref())
        .with_target(sql_target(sql, "time_series"))
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    )


def _list(title: str, sql: str, description: str) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .with_target(sql_target(sql))
        .override_by_name("call_id", [call_link()])
    )


def build(*, datasource_name: str, datasource_uid: str) -> dash.Dashboard:
    layout = Layout()
    layout.add(_bars("Events by category", q.events_over_time("category")), w=12, h=8)
    by_level = _bars("Events by level", q.events_over_time("level"))
    for level, colour in LEVEL_COLOURS.items():
        by_level = by_level.override_by_name(
            level, [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})]
        )
    layout.add(by_level, w=12, h=8)
    layout.add(
        table.Panel().title("Events by type").datasource(datasource_ref())
        .with_target(sql_target(q.EVENTS_BY_TYPE)).filterable(True),
        w=24, h=8,
    )

    layout.row("Integrations and tools")
    layout.add(_list("Failed integrations and tools", q.FAILED_INTEGRATIONS,
                     "Tool executions that returned an error, integration.failed, tool.transfer.failed and "
                     "denied approvals."), w=24, h=9)

    layout.row("Webhooks")
    layout.add(
        stat.Panel().title("Webhook deliveries").datasource(datasource_ref())
        .with_target(sql_target(q.WEBHOOK_COUNTS))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/"))
        .override_by_name("Success", [dm.DynamicConfigValue(id_val="color",
                                                            value={"mode": "fixed", "fixedColor": "green"})])
        .override_by_name("Failed", [dm.DynamicConfigValue(id_val="color",
                                                           value={"mode": "fixed", "fixedColor": "orange"})])
        .override_by_name("Retries exhausted", [dm.DynamicConfigValue(id_val="color",
                                                                      value={"mode": "fixed", "fixedColor": "red"})])
        .color_mode(cm.BigValueColorMode.VALUE),
        w=8, h=8,
    )
    layout.add(_bars("Webhook deliveries over time", q.WEBHOOK_OVER_TIME), w=16, h=8)
    layout.add(_list("Webhook deliveries", q.WEBHOOK_LIST,
                     "Sent, success, failed and retry-exhausted webhook events with their calls."), w=24, h=9)

    layout.row("Conversational paths and transfers")
    layout.add(_list("Path errors", q.PATH_ERRORS, "path.error events."), w=12, h=9)
    layout.add(_list("Transfers", q.TRANSFERS, "Transfer tool and human transfer events."), w=12, h=9)

    board = (
        base_dashboard("events", "Callscope / Events & integrations",
                       "The call-log catalogue across calls: categories and levels over time, failed integrations "
                       "and tools, webhook deliveries, path errors and transfers.")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(multi_query_variable("category", "Category", q.VAR_EVENT_CATEGORY)
                       .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD))
        .with_variable(multi_custom_variable("level", "Level", q.LEVELS))
    )
    return layout.apply(board)
