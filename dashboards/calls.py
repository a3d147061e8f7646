"""The Calls dashboard: the conversation ledger of seed 000 (status stats, traffic, cost, the call list)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

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
from dashboards.fragments import END_HOUR, FIRST_HOUR, LONG_RANGE, RAW_RANGE, VAR_AGENT, VAR_CAMPAIGN, multi_filter

__all__ = ["build"]

# ---------------------------------------------------------------------------------------------------------
# SQL: the calls of the range, raw rows for short ranges, call_status_1h for the whole hours of longer ones
# ---------------------------------------------------------------------------------------------------------

STATUSES = ("queued", "ringing", "active", "completed", "failed", "declined", "missed")
DIRECTIONS = ("inbound", "outbound", "web")


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


_NO_SEARCH = "${search:sqlstring} = ''"


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
  WHERE ({RAW_RANGE} OR NOT {_NO_SEARCH})
    AND {raw_filter}{extra_c}
  UNION ALL
  SELECT {edge_cols}
  FROM calls c
  WHERE {LONG_RANGE} AND {_NO_SEARCH}
    AND c.started_at >= $__timeFrom()::timestamptz AND c.started_at < {FIRST_HOUR}
    AND {dims_c}{extra_c}
  UNION ALL
  SELECT {edge_cols}
  FROM calls c
  WHERE {LONG_RANGE} AND {_NO_SEARCH}
    AND c.started_at >= {END_HOUR} AND c.started_at <= $__timeTo()::timestamptz
    AND {dims_c}{extra_c}
  UNION ALL
  SELECT {rollup_cols}
  FROM call_status_1h r
  WHERE {LONG_RANGE} AND {_NO_SEARCH}
    AND r.bucket >= {FIRST_HOUR} AND r.bucket < {END_HOUR}
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
        .with_target(sql_target(calls_status_count(status)))
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
        .with_target(sql_target(CALLS_OVER_TIME, "time_series"))
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
    for status in STATUSES:
        layout.add(_status_stat(status), w=3, h=4)
    layout.add(
        stat.Panel()
        .title("All calls")
        .datasource(datasource_ref())
        .with_target(sql_target(CALLS_TOTAL))
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
        .with_target(sql_target(CALLS_TOTALS))
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
        .with_target(sql_target(CALLS_COST_OVER_TIME, "time_series"))
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
        .with_target(sql_target(CALLS_LIST))
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
        .with_variable(multi_custom_variable("direction", "Type", DIRECTIONS))
        .with_variable(multi_query_variable("campaign", "Campaign", VAR_CAMPAIGN))
        .with_variable(multi_query_variable("agent", "Agent", VAR_AGENT))
        .with_variable(multi_custom_variable("status", "Status", STATUSES))
        .with_variable(
            dash.TextBoxVariable("search")
            .label("Call id / phone")
            .description("Part of a call id or phone number (case-insensitive, matched literally).")
            .default_value("")
        )
    )
    return layout.apply(board)
