"""Alert rules, contact point and notification policy, built with the SDK and re-mapped to file provisioning.

The SDK's alerting builders emit the HTTP provisioning API shape (``folderUid``, integer intervals); Grafana's
``provisioning/alerting/*.yaml`` files want ``apiVersion: 1`` groups with a folder *title* (see
docs/dashboards.md). ``to_file_provisioning`` does that re-mapping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import alerting, expr
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_m
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from dashboards.common import DASHBOARD_UIDS
from dashboards.options import DashboardOptions
from dashboards.sql import PG_PLUGIN_ID, SQL

__all__ = ["RULE_UIDS", "alert_rule_groups", "contact_points", "notification_policies", "to_file_provisioning"]

EXPR_DS = DataSourceRef(type_val="__expr__", uid="__expr__")
FOLDER_UID = "callscope"
GROUP_LATENCY = "callscope-latency"
GROUP_CALLS = "callscope-calls"
GROUP_CAMPAIGNS = "callscope-campaigns"
LABELS = {"service": "callscope"}

RULE_UIDS = {
    "v2v": "callscope-v2v-p95",
    "llm_ttft": "callscope-llm-ttft-p95",
    "failed_ratio": "callscope-failed-call-ratio",
    "webhook_exhausted": "callscope-webhook-retry-exhausted",
    "no_telemetry": "callscope-no-telemetry",
    "barge_in": "callscope-barge-in-stop-p95",
    "campaign_failed_ratio": "callscope-campaign-failed-ratio",
    "campaign_v2v": "callscope-campaign-v2v-p95",
    "campaign_llm_ttft": "callscope-campaign-llm-ttft-p95",
}

# The notification of a campaign rule links to the slowest turns of the firing campaign.
_CAMPAIGN_LINK = (f"/d/{DASHBOARD_UIDS['campaigns']}/{DASHBOARD_UIDS['campaigns']}"
                  "?var-campaign={{ $labels.campaign }}&viewPanel={panel}&from=now-6h&to=now")


# ---------------------------------------------------------------------------------------------------------
# SQL of the rules (format time_series: a "time" column, text columns become labels)
# ---------------------------------------------------------------------------------------------------------

TERMINAL_STATUSES = ("completed", "failed", "declined", "missed")


def _in_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def alert_latency_p95(metric: str, *, min_samples: int) -> str:
    """Exact p95 per agent over the rule's window: the window's turns through turns_started_at_idx, no join
    (turns carry their call's agent)."""
    return f"""SELECT now() AS "time",
  coalesce(t.agent, 'unknown') AS agent,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY t.{metric}) AS p95_ms
FROM turns t
WHERE $__timeFilter(t.started_at)
  AND t.{metric} IS NOT NULL
GROUP BY 2
HAVING count(*) >= {int(min_samples)}"""


def alert_failed_ratio(*, min_calls: int) -> str:
    return f"""SELECT now() AS "time",
  coalesce(c.agent, 'unknown') AS agent,
  (count(*) FILTER (WHERE c.status = 'failed'))::float8 / count(*) AS failed_ratio
FROM calls c
WHERE $__timeFilter(c.started_at)
  AND c.status IN ({_in_list(TERMINAL_STATUSES)})
GROUP BY 2
HAVING count(*) >= {int(min_calls)}"""


ALERT_WEBHOOK_RETRY_EXHAUSTED = """SELECT now() AS "time",
  count(*) AS retry_exhausted
FROM events e
WHERE $__timeFilter(e.time)
  AND e.event = 'webhook.retry_exhausted'"""

ALERT_NO_TELEMETRY = """SELECT now() AS "time",
  (EXISTS (SELECT 1 FROM spans s WHERE $__timeFilter(s.start_time))
   OR EXISTS (SELECT 1 FROM events e WHERE $__timeFilter(e.time)))::int AS telemetry_seen"""


def alert_barge_in_p95(*, min_samples: int) -> str:
    return alert_latency_p95("barge_in_stop_ms", min_samples=min_samples)


def alert_campaign_latency_p95(metric: str, *, min_samples: int) -> str:
    """Exact p95 per campaign over the rule's window: the window's calls by start time, their turns by key."""
    return f"""SELECT now() AS "time",
  c.campaign,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY t.{metric}) AS p95_ms
FROM calls c
CROSS JOIN LATERAL (SELECT t.{metric} FROM turns t WHERE t.call_id = c.call_id AND t.{metric} IS NOT NULL
                    OFFSET 0) t
WHERE $__timeFilter(c.started_at)
  AND c.campaign IS NOT NULL
GROUP BY 2
HAVING count(*) >= {int(min_samples)}"""


def alert_campaign_failed_ratio(*, min_calls: int) -> str:
    return f"""SELECT now() AS "time",
  c.campaign,
  (count(*) FILTER (WHERE c.status = 'failed'))::float8 / count(*) AS failed_ratio
FROM calls c
WHERE $__timeFilter(c.started_at)
  AND c.campaign IS NOT NULL
  AND c.status IN ({_in_list(TERMINAL_STATUSES)})
GROUP BY 2
HAVING count(*) >= {int(min_calls)}"""


@dataclass(frozen=True, slots=True)
class _Spec:
    key: str
    title: str
    group: str
    sql: str
    window_s: int
    op: str  # gt | lt
    threshold: float
    for_: str
    no_data: str
    severity: str
    summary: str
    description: str
    dashboard_uid: str
    panel_id: int | None = None
    link: str | None = None   # annotation slowest_turns_url


def _rule(spec: _Spec, options: DashboardOptions) -> alerting.Rule:
    sql = (
        SQL(spec.sql)
        .ref_id("A")
        .format("time_series")
        .datasource(DataSourceRef(type_val=PG_PLUGIN_ID, uid=options.datasource_uid))
    )
    rule = (
        alerting.Rule(spec.title)
        .uid(RULE_UIDS[spec.key])
        .folder_uid(FOLDER_UID)
        .rule_group(spec.group)
        .org_id(1)
        .condition("C")
        .queries([
            alerting.Query("A")
            .datasource_uid(options.datasource_uid)
            .relative_time_range(alerting_m.RelativeTimeRange(from_val=spec.window_s, to=0))
            .model(sql),
            alerting.Query("B")
            .datasource_uid("__expr__")
            .model(expr.TypeReduce().ref_id("B").expression("A").reducer("last")
                   .settings(expr.ExprTypeReduceSettings().mode("dropNN")).datasource(EXPR_DS)),
            alerting.Query("C")
            .datasource_uid("__expr__")
            .model(expr.TypeThreshold().ref_id("C").expression("B")
                   .conditions([expr.ExprTypeThresholdConditions().evaluator(
                       expr.ExprTypeThresholdConditionsEvaluator().type(spec.op).params([float(spec.threshold)]))])
                   .datasource(EXPR_DS)),
        ])
        .for_val(spec.for_)
        .no_data_state(spec.no_data)  # type: ignore[arg-type]
        .exec_err_state("Error")
        .labels({**LABELS, "severity": spec.severity})
        .annotations({"summary": spec.summary, "description": spec.description,
                      **({"slowest_turns_url": spec.link} if spec.link else {})})
    )
    return rule


def _campaign_specs(options: DashboardOptions, panel_ids: dict[str, int]) -> list[_Spec]:
    """One rule per measure; each campaign is a series of its own (label ``campaign``)."""
    t = options.thresholds
    panel = panel_ids.get("campaign_slowest_turns")
    link = _CAMPAIGN_LINK.replace("{panel}", str(panel)) if panel is not None else None
    common = {"group": GROUP_CAMPAIGNS, "dashboard_uid": DASHBOARD_UIDS["campaigns"], "panel_id": panel,
              "link": link, "no_data": "OK"}
    see = " The slowest turns of the campaign: {{ $annotations.slowest_turns_url }}"
    return [
        _Spec(key="campaign_failed_ratio", title=f"Campaign failed-call ratio above {t.campaign_failed_ratio:.0%}",
              sql=alert_campaign_failed_ratio(min_calls=t.campaign_min_calls),
              window_s=3600, op="gt", threshold=t.campaign_failed_ratio, for_="0s", severity="critical",
              summary="{{ humanizePercentage $values.B.Value }} of the ended calls of campaign "
                      "{{ $labels.campaign }} failed in the last hour",
              description="Calls of this campaign end with status failed." + see, **common),
        _Spec(key="campaign_v2v", title=f"Campaign p95 voice-to-voice above {t.campaign_v2v_p95_ms:g} ms",
              sql=alert_campaign_latency_p95("voice_to_voice_ms", min_samples=t.latency_min_samples),
              window_s=900, op="gt", threshold=t.campaign_v2v_p95_ms, for_="5m", severity="warning",
              summary="p95 voice-to-voice of campaign {{ $labels.campaign }} is {{ humanize $values.B.Value }} ms "
                      f"(threshold {t.campaign_v2v_p95_ms:g} ms, last 15 min)",
              description="Callers of this campaign wait too long for the agent." + see, **common),
        _Spec(key="campaign_llm_ttft", title=f"Campaign p95 LLM TTFT above {t.campaign_llm_ttft_p95_ms:g} ms",
              sql=alert_campaign_latency_p95("llm_ttft_ms", min_samples=t.latency_min_samples),
              window_s=900, op="gt", threshold=t.campaign_llm_ttft_p95_ms, for_="5m", severity="warning",
              summary="p95 LLM TTFT of campaign {{ $labels.campaign }} is {{ humanize $values.B.Value }} ms "
                      f"(threshold {t.campaign_llm_ttft_p95_ms:g} ms, last 15 min)",
              description="The LLM of this campaign's agent is slow to start answering." + see, **common),
    ]


def _specs(options: DashboardOptions, latency_panel_ids: dict[str, int]) -> list[_Spec]:
    t = options.thresholds
    return [
        _Spec(
            key="barge_in", group=GROUP_LATENCY,
            title=f"p95 barge-in stop above {t.barge_in_stop_p95_ms:g} ms",
            sql=alert_barge_in_p95(min_samples=t.latency_min_samples),
            window_s=900, op="gt", threshold=t.barge_in_stop_p95_ms, for_="5m", no_data="OK", severity="warning",
            summary="p95 barge-in stop of agent {{ $labels.agent }} is {{ humanize $values.B.Value }} ms "
                    f"(threshold {t.barge_in_stop_p95_ms:g} ms, last 15 min)",
            description="When callers interrupt, the agent keeps talking over them: check interruption "
                        "handling (VAD, interruption settings) on the Latency dashboard's barge-in panel.",
            dashboard_uid=DASHBOARD_UIDS["latency"], panel_id=latency_panel_ids.get("barge_in_stop_ms"),
        ),
        _Spec(
            key="v2v", group=GROUP_LATENCY,
            title=f"p95 voice-to-voice above {t.v2v_p95_ms:g} ms",
            sql=alert_latency_p95("voice_to_voice_ms", min_samples=t.latency_min_samples),
            window_s=300, op="gt", threshold=t.v2v_p95_ms, for_="5m", no_data="OK", severity="warning",
            summary="p95 voice-to-voice of agent {{ $labels.agent }} is {{ humanize $values.B.Value }} ms "
                    f"(threshold {t.v2v_p95_ms:g} ms, last 5 min)",
            description="Users wait too long between the end of their speech and the agent's audio. Open the "
                        "Latency dashboard to see which stage (STT, LLM TTFT, TTS TTFB) grew.",
            dashboard_uid=DASHBOARD_UIDS["latency"], panel_id=latency_panel_ids.get("voice_to_voice_ms"),
        ),
        _Spec(
            key="llm_ttft", group=GROUP_LATENCY,
            title=f"p95 LLM time to first token above {t.llm_ttft_p95_ms:g} ms",
            sql=alert_latency_p95("llm_ttft_ms", min_samples=t.latency_min_samples),
            window_s=300, op="gt", threshold=t.llm_ttft_p95_ms, for_="5m", no_data="OK", severity="warning",
            summary="p95 LLM TTFT of agent {{ $labels.agent }} is {{ humanize $values.B.Value }} ms "
                    f"(threshold {t.llm_ttft_p95_ms:g} ms, last 5 min)",
            description="The LLM is slow to start answering: check the model and provider panels.",
            dashboard_uid=DASHBOARD_UIDS["latency"], panel_id=latency_panel_ids.get("llm_ttft_ms"),
        ),
        _Spec(
            key="failed_ratio", group=GROUP_CALLS,
            title=f"Failed-call ratio above {t.failed_call_ratio:.0%}",
            sql=alert_failed_ratio(min_calls=t.failed_ratio_min_calls),
            window_s=900, op="gt", threshold=t.failed_call_ratio, for_="0s", no_data="OK", severity="critical",
            summary="{{ humanizePercentage $values.B.Value }} of the ended calls of agent {{ $labels.agent }} "
                    "failed in the last 15 min",
            description="Calls end with status failed (system or provider error). Filter the Calls dashboard "
                        "by status Failed and open a call's log.",
            dashboard_uid=DASHBOARD_UIDS["calls"],
        ),
        _Spec(
            key="webhook_exhausted", group=GROUP_CALLS,
            title="Webhook retries exhausted",
            sql=ALERT_WEBHOOK_RETRY_EXHAUSTED,
            window_s=300, op="gt", threshold=0, for_="0s", no_data="OK", severity="critical",
            summary="{{ $values.B.Value }} webhook deliveries gave up after all retries (last 5 min)",
            description="A customer endpoint did not accept webhook deliveries: see the Webhooks row of the "
                        "Events & integrations dashboard.",
            dashboard_uid=DASHBOARD_UIDS["events"],
        ),
        _Spec(
            key="no_telemetry", group=GROUP_CALLS,
            title=f"No telemetry for {t.no_telemetry_minutes} min",
            sql=ALERT_NO_TELEMETRY,
            window_s=60 * t.no_telemetry_minutes, op="lt", threshold=1, for_="0s", no_data="Alerting",
            severity="critical",
            summary=f"No call has sent spans or logs for {t.no_telemetry_minutes} minutes",
            description="Agents stopped exporting OTLP, the collector is down or cannot write to the database.",
            dashboard_uid=DASHBOARD_UIDS["calls"],
        ),
    ]


RuleLinks = dict[str, tuple[str, int | None]]


def alert_rule_groups(
    options: DashboardOptions, latency_panel_ids: dict[str, int]
) -> tuple[list[alerting.RuleGroup], RuleLinks]:
    """The rule groups, and per rule uid the dashboard (uid, panel id) it annotates."""
    specs = _specs(options, latency_panel_ids) + _campaign_specs(options, latency_panel_ids)
    groups: list[alerting.RuleGroup] = []
    for name in (GROUP_LATENCY, GROUP_CALLS, GROUP_CAMPAIGNS):
        group = alerting.RuleGroup(name).folder_uid(FOLDER_UID).interval(options.alert_interval_s)
        for spec in specs:
            if spec.group == name:
                group = group.with_rule(_rule(spec, options))
        groups.append(group)
    # dashboardUid / panelId are not in the SDK's Rule model: they are added by the file re-mapping.
    return groups, {RULE_UIDS[s.key]: (s.dashboard_uid, s.panel_id) for s in specs}


_RULE_KEYS = ("uid", "title", "condition", "data", "dashboardUid", "panelId", "noDataState", "execErrState",
              "for", "annotations", "labels", "isPaused")


def _encode(builder: Any) -> Any:
    return json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))


def to_file_provisioning(
    groups: list[alerting.RuleGroup], *, links: RuleLinks, folder_title: str, org_id: int = 1
) -> dict[str, Any]:
    """SDK (HTTP API shape) rule groups → ``provisioning/alerting`` file format."""
    out = []
    for group in groups:
        raw = _encode(group)
        rules = []
        for rule in raw["rules"]:
            dash_uid, panel_id = links.get(rule["uid"], (None, None))
            if dash_uid is not None:
                rule["dashboardUid"] = dash_uid
            if panel_id is not None:
                rule["panelId"] = panel_id
            for item in rule["data"]:
                if not item.get("queryType"):
                    item.pop("queryType", None)
            rules.append({k: rule[k] for k in _RULE_KEYS if k in rule})
        out.append({
            "orgId": org_id,
            "name": raw["title"],
            "folder": folder_title,
            "interval": f"{raw['interval']}s",
            "rules": rules,
        })
    return {"apiVersion": 1, "groups": out}


def contact_points(options: DashboardOptions, *, org_id: int = 1) -> dict[str, Any]:
    """A webhook contact point placeholder: point ``url`` at your on-call tool (or replace the receiver)."""
    cp = _encode(
        alerting.ContactPoint()
        .name(options.contact_point_name)
        .uid("callscope-oncall")
        .type("webhook")
        .settings({"url": options.contact_point_url, "httpMethod": "POST"})
        .disable_resolve_message(False)
    )
    receiver = {k: cp[k] for k in ("uid", "type", "settings", "disableResolveMessage") if k in cp}
    return {"apiVersion": 1, "contactPoints": [{"orgId": org_id, "name": cp["name"], "receivers": [receiver]}]}


def notification_policies(options: DashboardOptions, *, org_id: int = 1) -> dict[str, Any]:
    """The org's policy tree: Callscope alerts (label service=callscope) go to the Callscope contact point.

    Grafana replaces the *whole* tree of the org with this file; see docs/dashboards.md before loading it into a
    Grafana that already routes other alerts.
    """
    route = (
        alerting.NotificationPolicy()
        .receiver(options.contact_point_name)
        .object_matchers([["service", "=", "callscope"]])
        .group_by(["grafana_folder", "alertname", "agent", "campaign"])
        .group_wait("30s")
        .group_interval("5m")
        .repeat_interval("4h")
    )
    root = _encode(
        alerting.NotificationPolicy()
        .receiver(options.contact_point_name)
        .group_by(["grafana_folder", "alertname"])
        .routes([route])
    )
    return {"apiVersion": 1, "policies": [{"orgId": org_id, **root}]}
