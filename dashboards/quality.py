"""The Telemetry quality dashboard: can the telemetry of a call be trusted? One panel per finding of the view
``call_quality`` (docs/dashboards.md), each listing the calls concerned with a link to the call."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table
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

__all__ = ["build"]


def _summary() -> stat.Panel:
    return (
        stat.Panel()
        .title("Calls and findings")
        .description("Calls started in the range, and how many have each finding.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.QUALITY_SUMMARY))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/"))
    )


def _finding(column: str) -> table.Panel:
    title, description, extra = q.QUALITY_FINDINGS[column]
    panel = (
        table.Panel()
        .title(title)
        .description(description + " Click a call id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(q.quality_finding(column)))
        .override_by_name("call_id", [call_link()])
        .no_value("none in this range")
    )
    if extra == "max_child_lead_ms":
        panel = panel.override_by_name(extra, [unit("ms")])
    if extra == "silent_for_s":
        panel = panel.override_by_name(extra, [unit("s")])
    return panel


def build(*, datasource_name: str, datasource_uid: str) -> dash.Dashboard:
    layout = Layout()
    layout.add(_summary(), w=24, h=4)
    for column in q.QUALITY_FINDINGS:
        layout.add(_finding(column), w=12, h=8)
    layout.row("All calls")
    layout.add(
        table.Panel()
        .title("Calls by findings")
        .datasource(datasource_ref())
        .with_target(sql_target(q.QUALITY_CALLS))
        .override_by_name("call_id", [call_link()]),
        w=24, h=10,
    )
    board = (
        base_dashboard("quality", "Callscope / Telemetry quality",
                       "Whether each call's telemetry can be trusted: missing stages, orphan spans, spans ending "
                       "before they start, clock skew, active calls gone silent, uncorrelated log records.")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(multi_query_variable("agent", "Agent", q.VAR_AGENT))
    )
    return layout.apply(board)
