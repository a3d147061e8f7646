"""The Campaigns dashboard: the funnel of each campaign (view ``campaign_funnel``) and its slowest turns, which the
per-campaign alert rules link to."""

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
from dashboards.fragments import VAR_CAMPAIGN, multi_filter

__all__ = ["build", "SLOWEST_TURNS_TITLE"]

# ---------------------------------------------------------------------------------------------------------
# SQL: view campaign_funnel, per campaign and UTC day (its day filter uses calls_day_campaign_idx)
# ---------------------------------------------------------------------------------------------------------

_DAYS = ("f.day >= ($__timeFrom()::timestamptz AT TIME ZONE 'UTC')::date\n"
         "  AND f.day <= ($__timeTo()::timestamptz AT TIME ZONE 'UTC')::date")
FUNNEL_OUTCOMES = ("queued", "ringing", "answered", "completed", "failed", "declined", "missed", "transferred")

CAMPAIGN_FUNNEL = f"""SELECT coalesce(f.campaign, '(none)') AS campaign,
  sum(f.calls)::bigint AS calls,
  {", ".join(f"sum(f.{o})::bigint AS {o}" for o in FUNNEL_OUTCOMES)},
  sum(f.failed)::float8 / NULLIF(sum(f.calls), 0) AS failed_ratio,
  sum(f.cost) AS cost,
  max(f.p95_voice_to_voice_ms) AS worst_day_p95_v2v_ms
FROM campaign_funnel f
WHERE {_DAYS}
  AND {multi_filter('campaign', 'f.campaign')}
GROUP BY 1
ORDER BY calls DESC"""

CAMPAIGN_DAYS = f"""SELECT f.day, coalesce(f.campaign, '(none)') AS campaign, f.calls,
  {", ".join(f"f.{o}" for o in FUNNEL_OUTCOMES)}, f.cost, f.p95_voice_to_voice_ms
FROM campaign_funnel f
WHERE {_DAYS}
  AND {multi_filter('campaign', 'f.campaign')}
ORDER BY f.day DESC, f.calls DESC"""

CAMPAIGN_OUTCOMES_PER_DAY = f"""SELECT (f.day::timestamp AT TIME ZONE 'UTC') AS "time",
  {", ".join(f"sum(f.{o})::bigint AS {o}" for o in ("answered", "completed", "failed", "transferred"))}
FROM campaign_funnel f
WHERE {_DAYS}
  AND {multi_filter('campaign', 'f.campaign')}
GROUP BY 1
ORDER BY 1"""

# The slowest turns of the selected campaigns: their calls by campaign and start time, each call's turns by
# its key (a LATERAL, so the plan is a nested loop whatever the estimates).
CAMPAIGN_SLOWEST_TURNS = f"""SELECT t.started_at AS "time", c.campaign, c.call_id, t.turn_number AS turn, c.agent,
  t.voice_to_voice_ms, t.stt_ms, t.llm_ttft_ms, t.tts_ttfb_ms, t.llm_model
FROM calls c
CROSS JOIN LATERAL (
  SELECT * FROM turns t WHERE t.call_id = c.call_id AND t.voice_to_voice_ms IS NOT NULL
  OFFSET 0  -- kept a subquery: a join planned without statistics may read every turn
) t
WHERE $__timeFilter(c.started_at)
  AND {multi_filter('campaign', 'c.campaign')}
ORDER BY t.voice_to_voice_ms DESC
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
        .description("Calls of the range per campaign: queued → ringing → answered → completed, and failed, "
                     "declined, missed, transferred; cost and the worst day's p95 voice-to-voice.")
        .datasource(datasource_ref())
        .with_target(sql_target(CAMPAIGN_FUNNEL))
        .override_by_name("failed_ratio", [unit("percentunit")])
        .override_by_name("cost", [unit("currencyUSD")])
    )
    layout.add(_ms_columns(funnel, "worst_day_p95_v2v_ms"), w=24, h=8)
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
        .datasource(datasource_ref())
        .with_target(sql_target(CAMPAIGN_DAYS))
        .override_by_name("cost", [unit("currencyUSD")])
    )
    layout.add(_ms_columns(days, "p95_voice_to_voice_ms"), w=12, h=8)
    slow = (
        table.Panel()
        .title(SLOWEST_TURNS_TITLE)
        .description("The slowest turns of the selected campaigns; the campaign alert rules link here. Click a "
                     "call id to open the call.")
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
