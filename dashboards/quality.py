"""The Telemetry quality dashboard: can the telemetry of a call be trusted? One panel per finding of the view
``call_quality`` (docs/dashboards.md), each listing the calls concerned with a link to the call."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table
from grafana_foundation_sdk.models import common as cm

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
from dashboards.fragments import VAR_AGENT, multi_filter, newest_calls

__all__ = ["build"]

# ---------------------------------------------------------------------------------------------------------
# SQL: view call_quality, one row per call, a column per finding (docs/dashboards.md)
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


#: The quality panels look at the newest QUALITY_CALLS_MAX calls of the range: each finding is computed per call
#: (span trees, log correlation), so a month of calls cannot be checked per panel refresh (17 s for a day at
#: 1 M calls a month, docs/benchmarks.md). Ranges with fewer calls are checked whole.
QUALITY_CALLS_MAX = 1000
# each call's row of the view by its key (a LATERAL kept a subquery: a join may compute the view for every call)
_CHECKED = f"""{newest_calls(QUALITY_CALLS_MAX, multi_filter('agent', 'c.agent'))} n
CROSS JOIN LATERAL (
  SELECT * FROM call_quality v WHERE v.call_id = n.call_id AND v.tenant IS NOT DISTINCT FROM n.tenant OFFSET 0
) q"""


def quality_finding(column: str) -> str:
    """The calls of the range with one finding, worst first."""
    extra = QUALITY_FINDINGS[column][2]
    condition = f"q.{column}" if column == "gone_silent" else f"q.{column} > 0"
    order = f"q.{extra} DESC NULLS LAST" if extra else f"q.{column} DESC"
    return f"""SELECT q.started_at AS "time", q.call_id, q.status, q.framework, q.agent,
  q.{column}{f", q.{extra}" if extra else ""}
FROM {_CHECKED}
WHERE {condition}
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
FROM {_CHECKED}"""

QUALITY_CALLS = f"""SELECT q.started_at AS "time", q.call_id, q.status, q.framework, q.agent, q.findings,
  q.turns_missing_stage, q.orphan_spans, q.spans_ending_before_start, q.clock_skew_spans, q.gone_silent,
  q.uncorrelated_log_records
FROM {_CHECKED}
ORDER BY q.findings DESC, q.started_at DESC
LIMIT 500"""


def _summary() -> stat.Panel:
    return (
        stat.Panel()
        .title("Calls and findings")
        .description(f"The newest {QUALITY_CALLS_MAX:,} calls started in the range (all of them in a shorter "
                     "range), and how many have each finding.")
        .datasource(datasource_ref())
        .with_target(sql_target(QUALITY_SUMMARY))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/"))
    )


def _finding(column: str) -> table.Panel:
    title, description, extra = QUALITY_FINDINGS[column]
    panel = (
        table.Panel()
        .title(title)
        .description(description + f" Among the newest {QUALITY_CALLS_MAX:,} calls of the range. "
                     "Click a call id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(quality_finding(column)))
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
    for column in QUALITY_FINDINGS:
        layout.add(_finding(column), w=12, h=8)
    layout.row("All calls")
    layout.add(
        table.Panel()
        .title("Calls by findings")
        .datasource(datasource_ref())
        .with_target(sql_target(QUALITY_CALLS))
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
        .with_variable(multi_query_variable("agent", "Agent", VAR_AGENT))
    )
    return layout.apply(board)
