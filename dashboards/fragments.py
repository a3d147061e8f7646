"""SQL fragments the dashboards share: the "All" value and filter of multi-value variables, the length of the time
range and the hour bounds the rollup branches are guarded by, and the variables several dashboards show.

Each dashboard's own SQL lives in the module that builds that dashboard (``calls.py``, ``call_detail.py``,
``latency.py``, ``events.py``, ``quality.py``, ``campaigns.py``; the alert rules' SQL in ``alerts.py``), next to
its panels. Conventions every query follows (docs/dashboards.md, "Writing queries"):

* Only the public schema of design §3, the Grafana relations of migration ``0002_grafana``
  (``latency_stage_1m``), the rollups of ``0006_turn_rollup`` (``turn_latency_1m``, ``turn_latency_1h``,
  ``call_status_1h``) and of ``0007_dashboard_rollups`` (``turn_latency_breakdown_1h``, ``latency_stage_1h``,
  ``event_counts_1m``, ``event_counts_1h``; storage/rollup.py) are read, and the routines that migrations
  install (``callscope_hist_quantiles_sorted``, ``callscope_event_seen_before``).
* Long ranges read the rollups, short ranges the raw rows (exact). The choice is made in SQL: every source
  is a ``UNION ALL`` of branches guarded by the length of the range (``RANGE``: ``$__timeTo() - $__timeFrom()``,
  a constant the planner folds, so only one branch is planned and run). See ``CALLS_RAW_MAX`` (here),
  ``latency.LATENCY_RAW_MAX``, ``events.EVENTS_RAW_MAX`` and ``events.EVENTS_MINUTE_MAX``. Whether a variable
  is "All" is a constant too (``'__all' IN (${v})``), so pre-merged rollup rows are read when the other filters
  are "All".
* Every query selects by index first (time range, call id): plans must not depend on statistics
  (tests/test_dashboard_plans.py checks them on never-analyzed tables).
* Multi-value variables have the custom all value ``'__all'`` (quotes included; Grafana inserts a custom all
  value raw), so a filter reads ``('__all' IN (${v}) OR col IN (${v}))`` and "All" also keeps NULL columns.
* Free text (call id / phone search, the detail view's call id) is only ever written as ``${v:sqlstring}``,
  which Grafana renders as a quoted SQL literal with ``'`` doubled.
* Macro arguments are plain columns (the macro regex stops at the first ``)``).
* Trace and log columns use quoted aliases: PostgreSQL folds unquoted identifiers to lower case.
"""

from __future__ import annotations

__all__ = [
    "ALL_VALUE",
    "CALLS_RAW_MAX",
    "END_HOUR",
    "FIRST_HOUR",
    "LONG_RANGE",
    "ORIGIN",
    "RANGE",
    "RAW_RANGE",
    "VAR_AGENT",
    "VAR_CAMPAIGN",
    "VAR_EVENT_CATEGORY",
    "multi_filter",
]

#: Custom "All" value of every multi-value variable (inserted raw by Grafana, so it carries its quotes).
ALL_VALUE = "'__all'"


def multi_filter(var: str, column: str) -> str:
    """A multi-value variable filter that is a no-op for "All" (NULL values included)."""
    return f"({ALL_VALUE} IN (${{{var}}}) OR {column} IN (${{{var}}}))"


#: Ranges up to this long read raw rows (exact percentiles, exact counts).
CALLS_RAW_MAX = "6 hours"

#: The length of the dashboard's time range (a constant the planner folds once Grafana has inserted it).
RANGE = "($__timeTo()::timestamptz - $__timeFrom()::timestamptz)"
#: Guards of the raw-calls branch and of the rollup branch (ranges up to / over CALLS_RAW_MAX).
RAW_RANGE = f"{RANGE} <= interval '{CALLS_RAW_MAX}'"
LONG_RANGE = f"{RANGE} > interval '{CALLS_RAW_MAX}'"
#: The origin of the rollups' buckets (date_bin).
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
# The whole hours inside the range: [FIRST_HOUR, END_HOUR). The rest of the range is read raw.
FIRST_HOUR = (f"(date_bin('1 hour', $__timeFrom()::timestamptz - interval '1 microsecond', {ORIGIN})"
              " + interval '1 hour')")
END_HOUR = f"date_bin('1 hour', $__timeTo()::timestamptz, {ORIGIN})"


# Variables several dashboards share (the Calls, Latency, Quality and Campaigns dashboards filter by agent or
# campaign; Call detail and Events by event category).

def _call_dimension_values(column: str) -> str:
    """Distinct values of a calls column in the range: raw calls for short ranges, call_status_1h else."""
    return f"""SELECT DISTINCT v FROM (
  SELECT c.{column} AS v FROM calls c
  WHERE {RAW_RANGE} AND $__timeFilter(c.started_at)
  UNION ALL
  SELECT r.{column} FROM call_status_1h r
  WHERE {LONG_RANGE} AND $__timeFilter(r.bucket)
) d
WHERE v IS NOT NULL
ORDER BY 1"""


VAR_CAMPAIGN = _call_dimension_values("campaign")

VAR_AGENT = _call_dimension_values("agent")

VAR_EVENT_CATEGORY = """SELECT category FROM event_types
UNION
SELECT 'other'
ORDER BY 1"""


def cutoff_hour(rollup: str, count: str, limit: int, condition: str = "TRUE") -> str:
    """A subquery (one row, column ``cutoff``) for reading the newest ``limit`` rows of the range from an hour on:
    the latest hour of the range from which on the hourly ``rollup`` (alias ``r``; ``condition`` on it) counts
    at least ``limit`` of them (``sum(count)``), or -infinity if the range holds fewer. A raw read from the
    cutoff on is bounded by ``limit`` plus about an hour of rows, whatever the planner estimates: without
    statistics, and behind the tenant policy's filter, it takes a month of rows for a few dozen and would read
    and sort all of them. Rows the rollup has not counted yet only move the cutoff earlier (more rows read, the
    same result). OFFSET 0 keeps it apart, so ``cutoff`` is a column the raw read's index condition compares
    with (a comparison of two timestamptz values is leakproof; the expressions inside are not)."""
    return f"""(
    SELECT coalesce((
      SELECT h.bucket FROM (
        SELECT r.bucket, sum(sum({count})) OVER (ORDER BY r.bucket DESC) AS newer
        FROM {rollup} r
        WHERE {condition}
          AND r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
        GROUP BY r.bucket
      ) h
      WHERE h.newer >= {limit}
      ORDER BY h.bucket DESC
      LIMIT 1), '-infinity'::timestamptz) AS cutoff
    OFFSET 0
  )"""


def newest_calls(limit: int, condition: str = "TRUE") -> str:
    """Rows (call_id, tenant, started_at) of the ``limit`` newest calls of the range (alias ``c`` in
    ``condition``), read from the cutoff hour that call_status_1h gives (``cutoff_hour``). A ``condition`` that
    keeps fewer calls than the rollup counts only moves the cutoff later than needed, so the result may hold
    fewer than ``limit`` calls of a long range."""
    return f"""(
  SELECT n.call_id, n.tenant, n.started_at FROM {cutoff_hour("call_status_1h", "r.calls", limit)} k
  CROSS JOIN LATERAL (
    SELECT c.call_id, c.tenant, c.started_at FROM calls c
    WHERE c.started_at >= k.cutoff AND $__timeFilter(c.started_at)
      AND {condition}
    ORDER BY c.started_at DESC
    LIMIT {limit}
  ) n
)"""
