"""The Events & integrations dashboard: the call-log catalogue over time, failures, webhooks, paths, transfers."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

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
from dashboards.fragments import END_HOUR, FIRST_HOUR, ORIGIN, RANGE, VAR_EVENT_CATEGORY, cutoff_hour, multi_filter

__all__ = ["build"]

# ---------------------------------------------------------------------------------------------------------
# SQL: raw events for short ranges, the event rollups for longer ones (exact counts)
# ---------------------------------------------------------------------------------------------------------

LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")

#: Event ranges up to this long read the events themselves; up to EVENTS_MINUTE_MAX the 1-minute event
#: rollup, longer ones the 1-hour rollup (the minutes of the partial first / last hour from the 1-minute one).
#: The partial first and last minute are always read raw, so counts are exact on every range.
EVENTS_RAW_MAX = "1 hour"
EVENTS_MINUTE_MAX = "24 hours"

_RAW_EVENTS = f"{RANGE} <= interval '{EVENTS_RAW_MAX}'"
_ROLLED_EVENTS = f"{RANGE} > interval '{EVENTS_RAW_MAX}'"
_MINUTE_EVENTS = f"{_ROLLED_EVENTS} AND {RANGE} <= interval '{EVENTS_MINUTE_MAX}'"
_HOUR_EVENTS = f"{RANGE} > interval '{EVENTS_MINUTE_MAX}'"
# The whole minutes inside the range: [_FIRST_MINUTE, _END_MINUTE).
_FIRST_MINUTE = (f"(date_bin('1 minute', $__timeFrom()::timestamptz - interval '1 microsecond', {ORIGIN})"
                 " + interval '1 minute')")
_END_MINUTE = f"date_bin('1 minute', $__timeTo()::timestamptz, {ORIGIN})"


def _event_filter(alias: str, extra: str = "") -> str:
    """The dashboard's category / level filters (and ``extra``, written for alias ``e``) on ``alias``."""
    parts = [multi_filter("category", f"{alias}.category"), multi_filter("level", f"{alias}.level")]
    if extra:
        parts.append(extra.replace("e.", f"{alias}."))
    return "\n    AND ".join(parts)


def _event_segments() -> list[tuple[str, str, str, str]]:
    """The pieces an event range is read in: (source, guard, time condition, segment start). Exactly the
    pieces of one kind of range run, and they partition it: raw events (short ranges; otherwise only the
    partial first and last minute), 1-minute rows (the whole minutes, or only those of the partial first and
    last hour of a long range), 1-hour rows (the whole hours of a long range)."""
    frm, to = "$__timeFrom()::timestamptz", "$__timeTo()::timestamptz"
    return [
        ("raw", _RAW_EVENTS, "$__timeFilter(e.time)", frm),
        ("raw", _ROLLED_EVENTS, f"e.time >= {frm} AND e.time < {_FIRST_MINUTE}", frm),
        ("raw", _ROLLED_EVENTS, f"e.time >= {_END_MINUTE} AND e.time <= {to}", _END_MINUTE),
        ("event_counts_1m", _MINUTE_EVENTS, f"r.bucket >= {_FIRST_MINUTE} AND r.bucket < {_END_MINUTE}", ""),
        ("event_counts_1m", _HOUR_EVENTS, f"r.bucket >= {_FIRST_MINUTE} AND r.bucket < {FIRST_HOUR}", ""),
        ("event_counts_1m", _HOUR_EVENTS, f"r.bucket >= {END_HOUR} AND r.bucket < {_END_MINUTE}", ""),
        ("event_counts_1h", _HOUR_EVENTS, f"r.bucket >= {FIRST_HOUR} AND r.bucket < {END_HOUR}", ""),
    ]


def events_source(extra: str = "") -> str:
    """Rows ("time", category, event, level, events) of the range's events that pass the dashboard's filters
    and ``extra`` (a condition on ``e.category`` / ``e.event`` / ``e.level``): one per raw event, one per
    rollup row. ``sum(events)`` is exact on every range."""
    branches = []
    for source, guard, when, _ in _event_segments():
        if source == "raw":
            branches.append(f"""  SELECT e.time AS "time", e.category, e.event, e.level, 1 AS events
  FROM events e
  WHERE {guard} AND {when}
    AND {_event_filter("e", extra)}""")
        else:
            branches.append(f"""  SELECT r.bucket, r.category, r.event, r.level, r.events
  FROM {source} r
  WHERE {guard} AND {when}
    AND {_event_filter("r", extra)}""")
    return "(\n" + "\n  UNION ALL\n".join(branches) + "\n) s"


def _events_per_interval(dimension: str, extra: str = "", alias: str = "events") -> str:
    """Events per time group and ``dimension``. Rows are first added up per bucket (a timestamp and text key,
    cheap to group) and only then put in Grafana's time groups (numeric arithmetic per row)."""
    return f"""SELECT $__timeGroupAlias(g.time, $__interval),
  g.metric,
  sum(g.n)::bigint AS {alias}
FROM (
  SELECT s.time, s.{dimension} AS metric, sum(s.events) AS n
  FROM {events_source(extra).replace(chr(10), chr(10) + "  ")}
  GROUP BY 1, 2
) g
GROUP BY 1, 2
ORDER BY 1"""


def events_over_time(dimension: str) -> str:
    return _events_per_interval(dimension)


def _events_by_kind() -> str:
    """Rows (category, event, level, events, calls, last_time) per kind of event in the range. Short ranges:
    the events themselves, calls = distinct calls (exact). Longer ranges add up the rollup rows and the
    partial first / last minute, where calls = the calls whose first event of that kind lies in the piece
    (callscope_event_seen_before; storage/rollup.py): in total, the calls whose first event of the kind lies
    in the range."""
    frm = "$__timeFrom()::timestamptz"
    branches = [f"""  SELECT e.category, e.event, e.level, count(*) AS events, count(DISTINCT e.call_id) AS calls,
         max(e.time) AS last_time
  FROM call_events e
  WHERE {_RAW_EVENTS} AND $__timeFilter(e.time)
    AND {_event_filter("e")}
  GROUP BY 1, 2, 3"""]
    for source, guard, when, start in _event_segments():
        if source == "raw":
            if start == frm and "$__timeFilter" in when:
                continue  # the short range, above
            branches.append(f"""  SELECT x.category, x.event, x.level, sum(x.n), count(*) FILTER (WHERE NOT
           callscope_event_seen_before(x.call_id, x.category, x.event, x.level, {start})), max(x.last_time)
  FROM (
    SELECT e.call_id, e.category, e.event, e.level, count(*) AS n, max(e.time) AS last_time
    FROM call_events e
    WHERE {guard} AND {when}
      AND {_event_filter("e").replace(chr(10) + "    AND", chr(10) + "      AND")}
    GROUP BY 1, 2, 3, 4
  ) x
  GROUP BY 1, 2, 3""")
        else:
            branches.append(f"""  SELECT r.category, r.event, r.level, r.events, r.calls, r.last_time
  FROM {source} r
  WHERE {guard} AND {when}
    AND {_event_filter("r")}""")
    return "(\n" + "\n  UNION ALL\n".join(branches) + "\n) s"


EVENTS_BY_TYPE = f"""SELECT
  g.category,
  g.event,
  coalesce(et.display_name, g.event) AS display_name,
  g.level,
  g.events,
  g.calls,
  g.last_seen
FROM (
  SELECT s.category, s.event, s.level, sum(s.events)::bigint AS events, sum(s.calls)::bigint AS calls,
         max(s.last_time) AS last_seen
  FROM {_events_by_kind().replace(chr(10), chr(10) + "  ")}
  GROUP BY 1, 2, 3
) g
LEFT JOIN event_types et ON et.event = g.event
ORDER BY g.events DESC
LIMIT 200"""


def _newest_events(select: str, kind: str, limit: int = 500) -> str:
    """The newest ``limit`` events of one kind (``kind``: an SQL expression, e.g. ``n.event``) in the range:
    ``select`` (alias ``e``, its WHERE ending with ``AND {window}``) read through events_event_time_idx from the
    cutoff hour that event_counts_1h gives for the kind (fragments.cutoff_hour)."""
    window = "e.time >= c.cutoff AND $__timeFilter(e.time)"
    return f"""SELECT x.*
    FROM {cutoff_hour("event_counts_1h", "r.events", limit, f"r.event = {kind}")} c
    CROSS JOIN LATERAL (
      {select.replace("{window}", window)}
      ORDER BY e.time DESC
      LIMIT {limit}
    ) x"""


# The newest rows of a few event kinds: per kind, from its cutoff hour through events_event_time_idx (at most
# 500 rows each), then the newest 500 of those. Reads a bounded number of rows whatever the range and whatever
# the planner estimates.
_FAILED_EVENTS = ("integration.failed", "tool.transfer.failed", "integration.approval_denied")

# Failed tool calls: the newest of the range, through tool_calls_error_started_idx (partial, started_at DESC).
# Without statistics the planner may take the range's failed calls for a few and read and sort all of them (a
# bitmap scan): bounded by the failed tool calls of the range, which are few next to events (0.5 s for 260,000
# over 30 days at 1 M calls; docs/benchmarks.md).
_FAILED_TOOLS = """SELECT tc.started_at AS "time", tc.call_id, 'tool' AS kind, tc.tool_name AS name,
         coalesce(tc.error, left(tc.result, 300)) AS error
  FROM tool_calls tc
  WHERE tc.is_error AND $__timeFilter(tc.started_at)
  ORDER BY tc.started_at DESC
  LIMIT 500"""

_FAILED_EVENT_ROWS = _newest_events("""SELECT e.time AS "time", e.call_id, e.event AS kind,
             coalesce(e.data->>'tool_name', e.data->>'name', e.event) AS name,
             coalesce(e.message, e.data::text) AS error
      FROM call_events e
      WHERE e.event = n.event AND {window}""", "n.event")

FAILED_INTEGRATIONS = f"""SELECT "time", call_id, kind, name, error FROM (
  ({_FAILED_TOOLS})
  UNION ALL
  SELECT l.*
  FROM (VALUES {", ".join(f"('{e}')" for e in _FAILED_EVENTS)}) AS n(event)
  CROSS JOIN LATERAL (
    {_FAILED_EVENT_ROWS}
  ) l
) f
ORDER BY "time" DESC
LIMIT 500"""

WEBHOOK_COUNTS = f"""SELECT
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.sent'), 0)::bigint AS "Sent",
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.response_success'), 0)::bigint AS "Success",
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.response_failed'), 0)::bigint AS "Failed",
  coalesce(sum(s.events) FILTER (WHERE s.event = 'webhook.retry_exhausted'), 0)::bigint AS "Retries exhausted"
FROM (
  SELECT s.* FROM {events_source("e.category = 'webhook'").replace(chr(10), chr(10) + "  ")}
) s"""

WEBHOOK_OVER_TIME = _events_per_interval("event", "e.category = 'webhook'", "deliveries")


def _event_list(condition: str, *, with_event: bool = True) -> str:
    """The newest 500 events matching ``condition`` (on ``e.category`` / ``e.event``) in the time range, with
    their call and data: per event name, from a cutoff hour through events_event_time_idx (``_newest_events``). The names:
    those of the catalogue (event_types) and of the event rollup rows in the range that match ``condition``
    (kinds the catalogue no longer lists)."""
    event_column = "\n  l.event," if with_event else ""
    on = lambda alias: condition.replace("e.", f"{alias}.")  # noqa: E731
    rows = _newest_events(f"""SELECT e.time AS "time", e.call_id, e.event, e.level, e.message,
             coalesce(e.data, '{{}}'::jsonb)::text AS data
      FROM call_events e
      WHERE e.event = n.event AND {condition} AND {{window}}""", "n.event")
    return f"""SELECT
  l.time AS "time",
  l.call_id,{event_column}
  l.level,
  l.message,
  l.data
FROM (
  SELECT t.event FROM event_types t
  WHERE {on("t")}
  UNION
  SELECT r.event FROM event_counts_1h r
  WHERE r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
    AND {on("r")}
  UNION
  SELECT r.event FROM event_counts_1m r
  WHERE r.bucket >= {END_HOUR} AND r.bucket <= $__timeTo()::timestamptz
    AND {on("r")}
) n
CROSS JOIN LATERAL (
  {rows}
) l
ORDER BY l.time DESC
LIMIT 500"""


WEBHOOK_LIST = _event_list("e.category = 'webhook' AND e.event <> 'webhook.queued'")

_PATH_ERROR_ROWS = _newest_events("""SELECT e.time AS "time", e.call_id, e.level, e.message,
             coalesce(e.data, '{}'::jsonb)::text AS data
      FROM call_events e
      WHERE e.event = 'path.error' AND {window}""", "'path.error'")

PATH_ERRORS = f"""SELECT
  l.time AS "time",
  l.call_id,
  l.level,
  l.message,
  l.data
FROM (
  {_PATH_ERROR_ROWS}
) l
ORDER BY l.time DESC"""

TRANSFERS = _event_list("(e.category = 'transfer' OR e.event LIKE 'tool.transfer.%')")


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
    layout.add(_bars("Events by category", events_over_time("category")), w=12, h=8)
    by_level = _bars("Events by level", events_over_time("level"))
    for level, colour in LEVEL_COLOURS.items():
        by_level = by_level.override_by_name(
            level, [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})]
        )
    layout.add(by_level, w=12, h=8)
    layout.add(
        table.Panel().title("Events by type").datasource(datasource_ref())
        .with_target(sql_target(EVENTS_BY_TYPE)).filterable(True),
        w=24, h=8,
    )

    layout.row("Integrations and tools")
    layout.add(_list("Failed integrations and tools", FAILED_INTEGRATIONS,
                     "Tool executions that returned an error, integration.failed, tool.transfer.failed and "
                     "denied approvals."), w=24, h=9)

    layout.row("Webhooks")
    layout.add(
        stat.Panel().title("Webhook deliveries").datasource(datasource_ref())
        .with_target(sql_target(WEBHOOK_COUNTS))
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
    layout.add(_bars("Webhook deliveries over time", WEBHOOK_OVER_TIME), w=16, h=8)
    layout.add(_list("Webhook deliveries", WEBHOOK_LIST,
                     "Sent, success, failed and retry-exhausted webhook events with their calls."), w=24, h=9)

    layout.row("Conversational paths and transfers")
    layout.add(_list("Path errors", PATH_ERRORS, "path.error events."), w=12, h=9)
    layout.add(_list("Transfers", TRANSFERS, "Transfer tool and human transfer events."), w=12, h=9)

    board = (
        base_dashboard("events", "Callscope / Events & integrations",
                       "The call-log catalogue across calls: categories and levels over time, failed integrations "
                       "and tools, webhook deliveries, path errors and transfers.")
        .time("now-24h", "now")
        .refresh("1m")
        .with_variable(datasource_variable(datasource_name, datasource_uid))
        .with_variable(multi_query_variable("category", "Category", VAR_EVENT_CATEGORY)
                       .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD))
        .with_variable(multi_custom_variable("level", "Level", LEVELS))
    )
    return layout.apply(board)
