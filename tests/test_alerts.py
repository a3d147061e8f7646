"""Alert rules: Grafana file-provisioning shape, thresholds as options, and every rule's SQL rendered like
Grafana and run on PostgreSQL, with the reduce (last) → threshold condition evaluated on the result."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, AsyncIterator

import asyncpg
import pytest
import yaml

import dashboard_data
from conftest import drop_database, new_database, url_for
from dashboards.alerts import RULE_UIDS
from dashboards.generate import AlertThresholds, DashboardOptions, render_provisioning
from bench.grafana_emulator import render

FILES = render_provisioning(DashboardOptions())
RULES_DOC = yaml.safe_load(FILES["alerting/callscope-rules.yaml"])
RULES = {r["uid"]: r for g in RULES_DOC["groups"] for r in g["rules"]}
BOARDS = {json.loads(t)["uid"]: json.loads(t) for rel, t in FILES.items() if rel.endswith(".json")}


def _sql(rule: dict[str, Any]) -> str:
    return next(d for d in rule["data"] if d["refId"] == "A")["model"]["rawSql"]


def _threshold(rule: dict[str, Any]) -> tuple[str, float]:
    model = next(d for d in rule["data"] if d["refId"] == rule["condition"])["model"]
    evaluator = model["conditions"][0]["evaluator"]
    return evaluator["type"], evaluator["params"][0]


def _window(rule: dict[str, Any]) -> int:
    return next(d for d in rule["data"] if d["refId"] == "A")["relativeTimeRange"]["from"]


@pytest.fixture(scope="session")
async def ledger(template_database: str) -> AsyncIterator[asyncpg.Connection]:
    name = await new_database(template_database, prefix="callscope_alerts")
    conn = await asyncpg.connect(url_for(name))
    await dashboard_data.fill_ledger(conn)
    yield conn
    await conn.close()
    await drop_database(name)


async def _evaluate(conn: asyncpg.Connection, rule: dict[str, Any], *, frm: datetime,
                    to: datetime) -> dict[tuple[Any, ...], bool]:
    """Run query A, then B = last non-null value per series, C = threshold: firing per series labels."""
    stmt = await conn.prepare(render(_sql(rule), variables={}, frm=frm, to=to))
    attrs = stmt.get_attributes()
    rows = await stmt.fetch()
    assert attrs[0].name == "time" and attrs[0].type.name == "timestamptz"
    labels = [a.name for a in attrs[1:] if a.type.name == "text"]
    values = [a.name for a in attrs[1:] if a.type.name != "text"]
    assert len(values) == 1, "one value column per series"
    op, threshold = _threshold(rule)
    out: dict[tuple[Any, ...], bool] = {}
    for row in rows:
        value = row[values[0]]
        if value is None:
            continue
        out[tuple(row[name] for name in labels)] = value > threshold if op == "gt" else value < threshold
    return out


# ---------------------------------------------------------------------------------------------------------
# Shape
# ---------------------------------------------------------------------------------------------------------


def test_rules_file_follows_grafana_file_provisioning() -> None:
    assert RULES_DOC["apiVersion"] == 1
    for group in RULES_DOC["groups"]:
        assert set(group) == {"orgId", "name", "folder", "interval", "rules"}
        assert group["folder"] == "Callscope" and group["interval"] == "60s"
        for rule in group["rules"]:
            assert {"uid", "title", "condition", "data", "for", "noDataState", "execErrState", "labels",
                    "annotations"} <= set(rule)
            assert "folderUID" not in rule and "ruleGroup" not in rule and "orgID" not in rule
            assert rule["noDataState"] in ("NoData", "Alerting", "OK")
            assert rule["execErrState"] in ("Error", "Alerting", "OK")
            refs = [d["refId"] for d in rule["data"]]
            assert refs == ["A", "B", "C"] and rule["condition"] == "C"
            a = rule["data"][0]
            assert a["datasourceUid"] == "callscope" and a["model"]["format"] == "time_series"
            assert all(d["datasourceUid"] == "__expr__" for d in rule["data"][1:])
            assert "$" not in json.dumps(rule["labels"])  # labels are env-expanded by Grafana


def test_the_rules_exist_with_their_windows() -> None:
    windows = {uid: _window(rule) for uid, rule in RULES.items()}
    assert windows == {RULE_UIDS["v2v"]: 300, RULE_UIDS["llm_ttft"]: 300, RULE_UIDS["failed_ratio"]: 900,
                       RULE_UIDS["webhook_exhausted"]: 300, RULE_UIDS["no_telemetry"]: 600,
                       RULE_UIDS["barge_in"]: 900, RULE_UIDS["campaign_failed_ratio"]: 3600,
                       RULE_UIDS["campaign_v2v"]: 900, RULE_UIDS["campaign_llm_ttft"]: 900}


def test_campaign_rules_are_per_campaign_and_link_to_its_slowest_turns() -> None:
    campaigns = BOARDS["callscope-campaigns"]
    slowest = next(p for p in campaigns["panels"] if p["title"] == "Slowest turns (voice-to-voice)")
    for key in ("campaign_failed_ratio", "campaign_v2v", "campaign_llm_ttft"):
        rule = RULES[RULE_UIDS[key]]
        assert "c.campaign" in _sql(rule) and "GROUP BY 2" in _sql(rule)
        url = rule["annotations"]["slowest_turns_url"]
        assert url.startswith("/d/callscope-campaigns/") and "var-campaign={{ $labels.campaign }}" in url
        assert f"viewPanel={slowest['id']}" in url and rule["panelId"] == slowest["id"]


def test_campaign_thresholds_are_generator_options() -> None:
    rules = yaml.safe_load(render_provisioning(DashboardOptions(thresholds=AlertThresholds(
        campaign_v2v_p95_ms=1234, barge_in_stop_p95_ms=555)))["alerting/callscope-rules.yaml"])
    by_uid = {r["uid"]: r for g in rules["groups"] for r in g["rules"]}
    assert _threshold(by_uid[RULE_UIDS["campaign_v2v"]]) == ("gt", 1234)
    assert _threshold(by_uid[RULE_UIDS["barge_in"]]) == ("gt", 555)


def test_rules_annotate_existing_dashboards_and_panels() -> None:
    for rule in RULES.values():
        board = BOARDS[rule["dashboardUid"]]
        if "panelId" in rule:
            assert rule["panelId"] in {p["id"] for p in board["panels"]}


def test_thresholds_are_generator_options_and_drawn_on_the_latency_panels() -> None:
    options = DashboardOptions(thresholds=AlertThresholds(v2v_p95_ms=1234, llm_ttft_p95_ms=567,
                                                          failed_call_ratio=0.35, no_telemetry_minutes=20))
    files = render_provisioning(options)
    rules = {r["uid"]: r for g in yaml.safe_load(files["alerting/callscope-rules.yaml"])["groups"]
             for r in g["rules"]}
    assert _threshold(rules[RULE_UIDS["v2v"]]) == ("gt", 1234.0)
    assert _threshold(rules[RULE_UIDS["llm_ttft"]]) == ("gt", 567.0)
    assert _threshold(rules[RULE_UIDS["failed_ratio"]]) == ("gt", 0.35)
    assert _window(rules[RULE_UIDS["no_telemetry"]]) == 1200
    latency = json.loads(files["dashboards/callscope/latency.json"])
    drawn = {p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
             for p in latency["panels"] if p["type"] == "timeseries"
             and p["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {}).get("mode") == "dashed"}
    assert drawn["Voice-to-voice: p95 by agent"] == [None, 1234]
    assert drawn["LLM time to first token: p95 by LLM model"] == [None, 567]


@pytest.mark.parametrize("bad", [dict(v2v_p95_ms=0), dict(failed_call_ratio=1.5), dict(no_telemetry_minutes=0)])
def test_invalid_thresholds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AlertThresholds(**bad)


def test_contact_point_and_policy_route_the_rules() -> None:
    cps = yaml.safe_load(FILES["alerting/callscope-contact-points.yaml"])
    policies = yaml.safe_load(FILES["alerting/callscope-policies.yaml"])
    assert cps["apiVersion"] == 1 and policies["apiVersion"] == 1
    (cp,) = cps["contactPoints"]
    assert cp["orgId"] == 1 and cp["receivers"][0]["type"] == "webhook" and cp["receivers"][0]["settings"]["url"]
    (root,) = policies["policies"]
    assert root["orgId"] == 1 and root["receiver"] == cp["name"]
    (route,) = root["routes"]
    assert route["receiver"] == cp["name"]
    for key, op, value in route["object_matchers"]:
        assert op == "=" and all(rule["labels"][key] == value for rule in RULES.values())


# ---------------------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------------------

START = dashboard_data.BASE
END = dashboard_data.BASE + timedelta(minutes=2 * dashboard_data.CALLS + 5)


@pytest.mark.parametrize("uid", sorted(RULE_UIDS.values()))
async def test_every_rule_query_returns_series(ledger: asyncpg.Connection, uid: str) -> None:
    series = await _evaluate(ledger, RULES[uid], frm=START, to=END)
    assert series


async def test_latency_rules_fire_per_agent_above_the_threshold(ledger: asyncpg.Connection) -> None:
    for key in ("v2v", "llm_ttft"):
        rule = RULES[RULE_UIDS[key]]
        # a wider window than the rule's 5 min so both agents pass the minimum sample count
        firing = await _evaluate(ledger, rule, frm=END - timedelta(minutes=35), to=END)
        assert set(firing) <= {("sales",), ("receptionist",)}
        metric = "voice_to_voice_ms" if key == "v2v" else "llm_ttft_ms"
        for (agent,), fires in firing.items():
            p95 = await ledger.fetchval(
                f"SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY {metric}) FROM turns "
                "WHERE agent = $1 AND started_at BETWEEN $2 AND $3", agent, END - timedelta(minutes=35), END)
            assert fires == (p95 > _threshold(rule)[1])
    assert any((await _evaluate(ledger, RULES[RULE_UIDS["v2v"]], frm=START, to=END)).values())


async def test_failed_ratio_rule_fires_only_above_the_ratio(ledger: asyncpg.Connection) -> None:
    rule = RULES[RULE_UIDS["failed_ratio"]]
    series = await _evaluate(ledger, rule, frm=START, to=END)
    assert series and not any(series.values())  # 1 in 10 calls fails: below 20 %
    low = DashboardOptions(thresholds=AlertThresholds(failed_call_ratio=0.05))
    low_rules = {r["uid"]: r for g in yaml.safe_load(render_provisioning(low)["alerting/callscope-rules.yaml"])
                 ["groups"] for r in g["rules"]}
    assert all((await _evaluate(ledger, low_rules[RULE_UIDS["failed_ratio"]], frm=START, to=END)).values())


async def test_webhook_retry_exhausted_fires_on_one_event(ledger: asyncpg.Connection) -> None:
    rule = RULES[RULE_UIDS["webhook_exhausted"]]
    assert await _evaluate(ledger, rule, frm=START, to=END) == {(): True}
    quiet = START - timedelta(hours=2)
    assert await _evaluate(ledger, rule, frm=quiet, to=quiet + timedelta(minutes=5)) == {(): False}


async def test_no_telemetry_fires_only_when_nothing_arrived(ledger: asyncpg.Connection) -> None:
    rule = RULES[RULE_UIDS["no_telemetry"]]
    assert await _evaluate(ledger, rule, frm=END - timedelta(minutes=10), to=END) == {(): False}
    later = END + timedelta(hours=1)
    assert await _evaluate(ledger, rule, frm=later - timedelta(minutes=10), to=later) == {(): True}


async def test_rule_queries_run_on_simulated_traffic(simulated_db: str) -> None:
    conn = await asyncpg.connect(simulated_db)
    try:
        lo, hi = await conn.fetchrow("SELECT min(started_at), max(last_seen_at) FROM calls")
        for uid, rule in RULES.items():
            series = await _evaluate(conn, rule, frm=lo - timedelta(minutes=1), to=hi + timedelta(minutes=1))
            if uid == RULE_UIDS["webhook_exhausted"] or uid == RULE_UIDS["no_telemetry"]:
                assert list(series) == [()]
            elif uid == RULE_UIDS["barge_in"]:
                pass   # the native convention the simulator speaks has no speaking spans: no barge-in samples
            else:
                assert series, uid
    finally:
        await conn.close()
