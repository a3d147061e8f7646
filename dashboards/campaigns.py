"""The Campaigns dashboard: the funnel of each campaign (the calls of the range, from the hourly call rollup and the
raw calls of the partial hours) and its slowest turns, which the per-campaign alert rules link to."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries
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
from dashboards.fragments import ALL_VALUE, END_HOUR, FIRST_HOUR, LONG_RANGE, RAW_RANGE, VAR_CAMPAIGN, multi_filter

__all__ = ["build", "SLOWEST_TURNS_TITLE"]

# ---------------------------------------------------------------------------------------------------------
# SQL: the calls of the range per campaign: raw calls for short ranges, call_status_1h for the whole hours of
# longer ones and raw calls for their partial first and last hour (exact counts either way, like the Calls
# dashboard); voice-to-voice from raw turns, or the turn rollup's histograms for the whole hours
# ---------------------------------------------------------------------------------------------------------

FUNNEL_OUTCOMES = ("queued", "ringing", "answered", "completed", "failed", "declined", "missed", "transferred")
_STATUS_OUTCOMES = ("queued", "ringing", "completed", "failed", "declined", "missed")
#: A call that reached a conversation: live or completed, or it has turns (call_status_1h.answered counts the
#: same calls: storage.rollup.ANSWERED; tests/test_rollup.py compares both).
ANSWERED = "c.status IN ('active', 'completed') OR c.turn_count > 0"

def _day(column: str) -> str:
    """The UTC day of a timestamp (a day of the rollup is 24 of its hours: buckets are UTC hours)."""
    return f"({column} AT TIME ZONE 'UTC')::date"


def _funnel_source() -> str:
    """The calls of the range with the campaign filter, as rows of ("time", campaign, calls, one column per
    outcome, cost): one per call (short ranges, and the partial first / last hour of longer ones) or one per
    call_status_1h row (the whole hours in between)."""
    outcomes = ", ".join(f"(c.status = '{o}')::int" for o in _STATUS_OUTCOMES[:2])
    raw_cols = (f'c.started_at, c.campaign, 1, {outcomes}, ({ANSWERED})::int, '
                + ", ".join(f"(c.status = '{o}')::int" for o in _STATUS_OUTCOMES[2:])
                + ", c.transferred::int, c.cost_total")
    rollup_outcomes = [f"CASE WHEN r.status = '{o}' THEN r.calls ELSE 0 END" for o in _STATUS_OUTCOMES]
    rollup_cols = ("r.bucket, r.campaign, r.calls, " + ", ".join(rollup_outcomes[:2]) + ", r.answered, "
                   + ", ".join(rollup_outcomes[2:]) + ", r.transferred, r.cost_total")
    names = ('"time", campaign, calls, queued, ringing, answered, completed, failed, declined, missed, '
             "transferred, cost")
    campaign_c = multi_filter("campaign", "c.campaign")
    return f"""(
  SELECT {raw_cols}
  FROM calls c
  WHERE {RAW_RANGE} AND $__timeFilter(c.started_at)
    AND {campaign_c}
  UNION ALL
  SELECT {raw_cols}
  FROM calls c
  WHERE {LONG_RANGE}
    AND c.started_at >= $__timeFrom()::timestamptz AND c.started_at < {FIRST_HOUR}
    AND {campaign_c}
  UNION ALL
  SELECT {raw_cols}
  FROM calls c
  WHERE {LONG_RANGE}
    AND c.started_at >= {END_HOUR} AND c.started_at <= $__timeTo()::timestamptz
    AND {campaign_c}
  UNION ALL
  SELECT {rollup_cols}
  FROM call_status_1h r
  WHERE {LONG_RANGE}
    AND r.bucket >= {FIRST_HOUR} AND r.bucket < {END_HOUR}
    AND {multi_filter('campaign', 'r.campaign')}
) s ({names})"""


# The call of a turn, for its campaign: a primary-key lookup (LIMIT 1 keeps it one whatever the estimates).
_TURN_CALL = """LEFT JOIN LATERAL (SELECT c.campaign FROM calls c
                   WHERE c.call_id = t.call_id AND c.tenant = t.tenant LIMIT 1) c ON true"""


def _v2v_p95(by_day: bool) -> str:
    """Rows (campaign[, day], p95) of voice-to-voice over the turns of the range (their call's campaign, the
    campaign filter applied). Short ranges: percentile_cont over the raw turns (exact). Longer ones: the
    histograms of turn_latency_breakdown_1h's campaign rows (one per hour and campaign) for the whole hours, and the raw turns of the partial first / last hour put in
    the same bins (callscope_hist_bin), read by callscope_hist_quantiles_sorted: within 2 % of percentile_cont
    (storage/rollup.py)."""
    raw_keys = "c.campaign" + (f", {_day('t.started_at')}" if by_day else "")
    rollup_keys = "r.value" + (f", {_day('r.bucket')}" if by_day else "")
    keys = "campaign" + (", day" if by_day else "")
    group = "1, 2" if by_day else "1"
    edge = f"""SELECT {raw_keys}, callscope_hist_bin(t.voice_to_voice_ms), 1, t.voice_to_voice_ms, t.voice_to_voice_ms
      FROM turns t
      {_TURN_CALL.replace(chr(10), chr(10) + "    ")}
      WHERE {LONG_RANGE} AND @bounds
        AND t.voice_to_voice_ms IS NOT NULL
        AND {multi_filter('campaign', 'c.campaign')}"""
    first = "t.started_at >= $__timeFrom()::timestamptz AND t.started_at < " + FIRST_HOUR
    last = f"t.started_at >= {END_HOUR} AND t.started_at <= $__timeTo()::timestamptz"
    return f"""(
  SELECT {raw_keys}, percentile_cont(0.95) WITHIN GROUP (ORDER BY t.voice_to_voice_ms) AS p95
  FROM turns t
  {_TURN_CALL}
  WHERE {RAW_RANGE} AND $__timeFilter(t.started_at)
    AND t.voice_to_voice_ms IS NOT NULL
    AND {multi_filter('campaign', 'c.campaign')}
  GROUP BY {group}
  UNION ALL
  SELECT {"h.campaign, h.day" if by_day else "h.campaign"},
         (callscope_hist_quantiles_sorted(array_agg(h.bin ORDER BY h.bin), array_agg(h.n ORDER BY h.bin),
                                          '{{0.95}}'::float8[], min(h.lo), max(h.hi)))[1]
  FROM (
    SELECT u.{keys.replace(", ", ", u.")}, u.bin, sum(u.n)::bigint AS n, min(u.lo) AS lo, max(u.hi) AS hi
    FROM (
      SELECT {rollup_keys}, unnest(r.voice_to_voice_bins), unnest(r.voice_to_voice_counts),
             r.voice_to_voice_min_ms, r.voice_to_voice_max_ms
      FROM turn_latency_breakdown_1h r
      WHERE {LONG_RANGE}
        AND r.bucket >= {FIRST_HOUR} AND r.bucket < {END_HOUR}
        AND r.breakdown = 'campaign'
        AND r.voice_to_voice_samples > 0
        AND {multi_filter('campaign', 'r.value')}
      UNION ALL
      {edge.replace('@bounds', first)}
      UNION ALL
      {edge.replace('@bounds', last)}
    ) u ({keys}, bin, n, lo, hi)
    GROUP BY {group}, {"3" if by_day else "2"}
  ) h
  GROUP BY {group}
) p ({keys}, q)"""


def _sums(alias: str) -> str:
    return ",\n  ".join(f"sum({alias}.{o})::bigint AS {o}" for o in FUNNEL_OUTCOMES)


CAMPAIGN_FUNNEL = f"""SELECT coalesce(f.campaign, '(none)') AS campaign, f.calls,
  {", ".join(f"f.{o}" for o in FUNNEL_OUTCOMES)},
  f.failed::float8 / NULLIF(f.calls, 0) AS failed_ratio,
  f.cost,
  p.q AS p95_v2v_ms
FROM (
  SELECT s.campaign, sum(s.calls)::bigint AS calls,
  {_sums("s")},
  sum(s.cost) AS cost
  FROM {_funnel_source()}
  GROUP BY 1
) f
LEFT JOIN {_v2v_p95(by_day=False)} ON p.campaign IS NOT DISTINCT FROM f.campaign
ORDER BY f.calls DESC, 1"""

CAMPAIGN_DAYS = f"""SELECT f.day, coalesce(f.campaign, '(none)') AS campaign, f.calls,
  {", ".join(f"f.{o}" for o in FUNNEL_OUTCOMES)}, f.cost, p.q AS p95_voice_to_voice_ms
FROM (
  SELECT {_day('s.time')} AS day, s.campaign, sum(s.calls)::bigint AS calls,
  {_sums("s")},
  sum(s.cost) AS cost
  FROM {_funnel_source()}
  GROUP BY 1, 2
) f
LEFT JOIN {_v2v_p95(by_day=True)} ON p.day = f.day AND p.campaign IS NOT DISTINCT FROM f.campaign
ORDER BY f.day DESC, f.calls DESC, 2"""

CAMPAIGN_OUTCOMES_PER_DAY = f"""SELECT ({_day('s.time')}::timestamp AT TIME ZONE 'UTC') AS "time",
  {", ".join(f"sum(s.{o})::bigint AS {o}" for o in ("answered", "completed", "failed", "transferred"))}
FROM {_funnel_source()}
GROUP BY 1
ORDER BY 1"""

_SLOW_COLUMNS = """t.started_at AS "time", c.campaign, t.call_id, t.turn_number AS turn, t.agent,
    t.voice_to_voice_ms, t.stt_ms, t.llm_ttft_ms, t.tts_ttfb_ms, t.llm_model"""


def _slowest_of(where: str, indent: str) -> str:
    """The 50 slowest turns matching ``where`` (alias ``t1``) of the selected campaigns: sorted first (OFFSET 0
    keeps the sort below the lookups), then each turn's call by key, in that order, until 50 match: the call
    lookups stop at the 50th turn of a selected campaign."""
    sql = f"""SELECT {_SLOW_COLUMNS}
FROM (SELECT * FROM turns t1
      WHERE {where}
        AND t1.voice_to_voice_ms IS NOT NULL
      ORDER BY t1.voice_to_voice_ms DESC
      OFFSET 0) t
{_TURN_CALL}
WHERE {multi_filter('campaign', 'c.campaign')}
ORDER BY t.voice_to_voice_ms DESC
LIMIT 50"""
    return sql.replace("\n", "\n" + indent)


_CAMPAIGN_ALL = f"{ALL_VALUE} IN (${{campaign}})"

# The part of candidate hour h inside the range, computed in the candidates' select list: under row-level
# security only leakproof conditions go into an index scan (before the policy's filter), and "h.bucket + interval"
# is not, so "t1.started_at < h.bucket + interval '1 hour'" would scan turns_started_at_idx to the range's end.
_HOUR_BOUNDS = ("greatest(r.bucket, $__timeFrom()::timestamptz) AS lo, "
                "least(r.bucket + interval '1 hour' - interval '1 microsecond', $__timeTo()::timestamptz) AS hi")
_HOUR_IN_RANGE = "t1.started_at >= h.lo AND t1.started_at <= h.hi"

# Short ranges: the turns of the range by time. Long ranges: the 50 slowest turns lie in at most 50 hours, and
# those hours are among the 52 with the highest hourly maximum of the selected campaigns' turns (2 extra for
# the partial first and last hour, whose maximum may lie outside the range; latency.LATENCY_SLOWEST_TURNS; the
# hourly maxima per campaign from turn_latency_breakdown_1h's campaign rows):
# only those hours of turns are read (an index range scan each), not every turn of the range, nor every call.
CAMPAIGN_SLOWEST_TURNS = f"""SELECT s.* FROM (
  ({_slowest_of(f"{RAW_RANGE} AND $__timeFilter(t1.started_at)", "  ")})
  UNION ALL
  (SELECT x.*
  FROM (
    (SELECT {_HOUR_BOUNDS}
    FROM turn_latency_breakdown_1h r
    WHERE {LONG_RANGE} AND {_CAMPAIGN_ALL}
      AND r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
      AND r.breakdown = 'all'
      AND r.voice_to_voice_samples > 0
    ORDER BY r.voice_to_voice_max_ms DESC
    LIMIT 52)
    UNION ALL
    (SELECT {_HOUR_BOUNDS}
    FROM turn_latency_breakdown_1h r
    WHERE {LONG_RANGE} AND NOT {_CAMPAIGN_ALL}
      AND r.bucket > $__timeFrom()::timestamptz - interval '1 hour' AND r.bucket <= $__timeTo()::timestamptz
      AND r.breakdown = 'campaign'
      AND {multi_filter('campaign', 'r.value')}
      AND r.voice_to_voice_samples > 0
    GROUP BY r.bucket
    ORDER BY max(r.voice_to_voice_max_ms) DESC
    LIMIT 52)
  ) h
  CROSS JOIN LATERAL (
    {_slowest_of(_HOUR_IN_RANGE, "    ")}
  ) x)
) s
ORDER BY s.voice_to_voice_ms DESC
LIMIT 50"""


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
        .description("Calls started in the range per campaign: queued → ringing → answered → completed, and "
                     "failed, declined, missed, transferred; cost, and the p95 voice-to-voice of the campaign's "
                     "turns in the range.")
        .datasource(datasource_ref())
        .with_target(sql_target(CAMPAIGN_FUNNEL))
        .override_by_name("failed_ratio", [unit("percentunit")])
        .override_by_name("cost", [unit("currencyUSD")])
    )
    layout.add(_ms_columns(funnel, "p95_v2v_ms"), w=24, h=8)
    layout.add(
        timeseries.Panel()
        .title("Outcomes per day")
        .datasource(datasource_ref())
        .with_target(sql_target(CAMPAIGN_OUTCOMES_PER_DAY, "time_series"))
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM)),
        w=12, h=8,
    )
    days = (
        table.Panel()
        .title("Funnel by campaign and day")
        .description("The funnel per UTC day of the range and campaign; p95 voice-to-voice of the campaign's "
                     "turns that day.")
        .datasource(datasource_ref())
        .with_target(sql_target(CAMPAIGN_DAYS))
        .override_by_name("cost", [unit("currencyUSD")])
    )
    layout.add(_ms_columns(days, "p95_voice_to_voice_ms"), w=12, h=8)
    slow = (
        table.Panel()
        .title(SLOWEST_TURNS_TITLE)
        .description("The slowest turns of the range of the selected campaigns' calls; the campaign alert rules "
                     "link here. Click a call id to open the call.")
        .datasource(datasource_ref())
        .with_target(sql_target(CAMPAIGN_SLOWEST_TURNS))
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
        .with_variable(multi_query_variable("campaign", "Campaign", VAR_CAMPAIGN))
    )
    return layout.apply(board)
