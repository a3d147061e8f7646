"""Generated dashboards: files up to date, SDK round trip, layout, variables, links, and every panel's SQL
rendered like Grafana (bench/grafana_emulator.py) and run on PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import asyncpg
import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

from dashboards.common import DASHBOARD_UIDS
from dashboards.generate import DashboardOptions, render_provisioning, write_provisioning
from dashboards.sql import PG_PLUGIN_ID, register
import dashboard_data
from conftest import drop_database, new_database, url_for
from bench.grafana_emulator import ALL, Variable, expand_macros, interpolate_variables, render, \
    variables_from_dashboard

ROOT = Path(__file__).resolve().parents[1]
PROVISIONING = ROOT / "provisioning"
DETAIL_CALL = "call-0012"  # has tool calls (one failed), an interruption, a path error

register()
FILES = render_provisioning(DashboardOptions())
BOARDS: dict[str, dict[str, Any]] = {
    json.loads(text)["uid"]: json.loads(text) for rel, text in FILES.items() if rel.endswith(".json")
}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


PANEL_CASES = [
    pytest.param(uid, p["id"], id=f"{uid}:{p['id']}:{p['title']}")
    for uid, board in sorted(BOARDS.items()) for p in _panels(board) if p.get("targets")
]


# ---------------------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def ledger_url(template_database: str) -> AsyncIterator[str]:
    """A migrated database holding the deterministic ledger of tests/dashboard_data.py."""
    name = await new_database(template_database, prefix="callscope_dash")
    url = url_for(name)
    conn = await asyncpg.connect(url)
    try:
        await dashboard_data.fill_ledger(conn)
    finally:
        await conn.close()
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
async def ledger(ledger_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(ledger_url)
    yield conn
    await conn.close()


LEDGER_RANGE = (dashboard_data.BASE - timedelta(hours=1), dashboard_data.BASE + timedelta(hours=3))


def _render(board: dict[str, Any], sql: str, *, values: dict[str, Any] | None = None,
            frm: datetime = LEDGER_RANGE[0], to: datetime = LEDGER_RANGE[1]) -> str:
    variables = variables_from_dashboard(board, {"call_id": DETAIL_CALL, **(values or {})})
    return render(sql, variables=variables, frm=frm, to=to, interval=timedelta(minutes=5))


async def _run(conn: asyncpg.Connection, sql: str) -> tuple[list[str], list[str], list[asyncpg.Record]]:
    stmt = await conn.prepare(sql)
    attrs = stmt.get_attributes()
    rows = await stmt.fetch()
    return [a.name for a in attrs], [a.type.name for a in attrs], rows


def _target(uid: str, panel_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    board = BOARDS[uid]
    panel = next(p for p in _panels(board) if p["id"] == panel_id)
    return board, panel


# ---------------------------------------------------------------------------------------------------------
# Files and structure
# ---------------------------------------------------------------------------------------------------------


def test_committed_provisioning_files_are_up_to_date() -> None:
    # provisioning/envoy/ is the compose file's load balancer, written by hand (tests/test_scaleout.py checks it)
    on_disk = {str(p.relative_to(PROVISIONING)): p.read_text(encoding="utf-8")
               for p in PROVISIONING.rglob("*") if p.is_file() and p.relative_to(PROVISIONING).parts[0] != "envoy"}
    stale = sorted(rel for rel in FILES if on_disk.get(rel) != FILES[rel])
    extra = sorted(set(on_disk) - set(FILES))
    assert not stale and not extra, (
        f"provisioning/ is stale (changed: {stale}, unexpected: {extra}); run `callscope dashboards`")


def test_write_provisioning_is_byte_identical_on_rerun(tmp_path: Path) -> None:
    first = {p: p.read_bytes() for p in write_provisioning(tmp_path, options=DashboardOptions())}
    second = {p: p.read_bytes() for p in write_provisioning(tmp_path, options=DashboardOptions())}
    assert first == second
    assert sorted(str(p.relative_to(tmp_path)) for p in first) == sorted(FILES)


def test_dashboards_have_the_stable_uids() -> None:
    assert set(BOARDS) == {"callscope-calls", "callscope-call-detail", "callscope-latency", "callscope-events",
                           "callscope-quality", "callscope-campaigns"}
    assert set(DASHBOARD_UIDS.values()) == set(BOARDS)


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_dashboard_json_round_trips_through_the_sdk_model(uid: str) -> None:
    raw = BOARDS[uid]
    again = json.loads(JSONEncoder(sort_keys=True).encode(DashboardModel.from_json(raw)))
    assert again == raw


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_panel_ids_are_unique_and_grid_positions_do_not_overlap(uid: str) -> None:
    panels = _panels(BOARDS[uid])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r} at {(x, y)}"
                cells[(x, y)] = p["title"]


_REF_RE = re.compile(r"\$\{(\w+)(?:[.:][^}]*)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def _references(text: str) -> set[str]:
    return {m.group(1) or m.group(2) or m.group(3) for m in _REF_RE.finditer(text)} - {None}  # type: ignore[arg-type]


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_every_referenced_variable_is_defined(uid: str) -> None:
    board = BOARDS[uid]
    defined = {v["name"] for v in board["templating"]["list"]}
    texts = [json.dumps(p) for p in _panels(board)] + [json.dumps(v) for v in board["templating"]["list"]]
    used = set().union(*(_references(t) for t in texts))
    undefined = {name for name in used if not name.startswith("__")} - defined
    assert not undefined


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_every_sql_target_sets_format_and_the_datasource_variable(uid: str) -> None:
    for panel in _panels(BOARDS[uid]):
        assert panel.get("datasource") in (None, {"type": PG_PLUGIN_ID, "uid": "${datasource}"}) or \
            panel["type"] == "row"
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": PG_PLUGIN_ID, "uid": "${datasource}"}
            assert target["format"] in ("table", "time_series")
            assert target["rawQuery"] is True and target["editorMode"] == "code"
            if target["format"] == "time_series":
                assert '"time"' in target["rawSql"] or "$__timeGroupAlias" in target["rawSql"], panel["title"]


def _links() -> list[tuple[str, str]]:
    found = []
    for uid, board in BOARDS.items():
        for link in re.findall(r'"url": "([^"]*)"', json.dumps(board)):
            found.append((uid, link))
    return found


def test_links_point_at_existing_dashboards_and_variables() -> None:
    checked = 0
    for source, url in _links():
        m = re.match(r"/d/([\w-]+)/[\w-]+\?(.*)$", url)
        if not m:
            continue
        target = BOARDS.get(m.group(1))
        assert target is not None, f"{source}: link to unknown dashboard {url}"
        target_vars = {v["name"] for v in target["templating"]["list"]}
        for param in m.group(2).split("&"):
            var = re.match(r"var-(\w+)=", param)
            if var:
                assert var.group(1) in target_vars, f"{source}: {url} sets unknown variable"
            carried = re.match(r"\$\{(\w+):queryparam\}", param)
            if carried:
                assert carried.group(1) in target_vars
        checked += 1
    assert checked >= 4  # calls list, slowest turns, webhook / path / transfer / failure lists


def test_call_ids_link_to_the_detail_view_from_calls_latency_and_events() -> None:
    detail = DASHBOARD_UIDS["call_detail"]
    sources = {source for source, url in _links() if url.startswith(f"/d/{detail}/")}
    assert sources == {"callscope-calls", "callscope-latency", "callscope-events", "callscope-quality",
                       "callscope-campaigns"}


def test_free_text_variables_are_only_used_through_sqlstring() -> None:
    for uid, board in BOARDS.items():
        free = {v["name"] for v in board["templating"]["list"]
                if v["type"] == "textbox" or v.get("allowCustomValue") and not v.get("multi")
                and v["type"] == "query"}
        for panel in _panels(board):
            for target in panel.get("targets", []):
                for name in free:
                    uses = re.findall(r"\$\{%s(?::(\w+))?\}|\$%s\b|\[\[%s" % (name, name, name), target["rawSql"])
                    assert all(fmt == "sqlstring" for fmt in uses), f"{uid}/{panel['title']}: ${name} unquoted"


def test_multi_value_variables_have_a_quoted_custom_all_value() -> None:
    for board in BOARDS.values():
        for v in board["templating"]["list"]:
            if v.get("includeAll"):
                assert v["allValue"] == "'__all'" and v["multi"] is True


# ---------------------------------------------------------------------------------------------------------
# SQL on PostgreSQL
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uid", "panel_id"), PANEL_CASES)
async def test_every_panel_query_returns_rows_on_the_ledger(ledger: asyncpg.Connection, uid: str,
                                                             panel_id: int) -> None:
    board, panel = _target(uid, panel_id)
    for target in panel["targets"]:
        names, types, rows = await _run(ledger, _render(board, target["rawSql"]))
        assert rows, f"{panel['title']}: no rows"
        if target["format"] == "time_series":
            assert names[0] == "time" and types[0] in ("timestamptz", "float8", "numeric")
        if panel["type"] == "stat":
            assert any(v is not None for v in rows[0].values())


async def test_trace_panel_query_has_the_traces_field_contract(ledger: asyncpg.Connection) -> None:
    board = BOARDS[DASHBOARD_UIDS["call_detail"]]
    panel = next(p for p in _panels(board) if p["type"] == "traces")
    names, types, rows = await _run(ledger, _render(board, panel["targets"][0]["rawSql"]))
    required = {"traceID": "text", "spanID": "text", "parentSpanID": "text", "operationName": "text",
                "serviceName": "text", "startTime": "numeric", "duration": "float8", "tags": "text",
                "serviceTags": "text", "logs": "text"}
    assert {n: t for n, t in zip(names, types) if n in required} == required
    assert "time" not in names
    assert len({r["traceID"] for r in rows}) == 1  # one traversal, even when a call spans several traces
    by_id = {r["spanID"]: r for r in rows}
    roots = [r for r in rows if r["parentSpanID"] is None]
    assert len(roots) == 1 and roots[0]["operationName"] == "session"
    assert all(r["parentSpanID"] in by_id for r in rows if r["parentSpanID"] is not None)
    stored = {s["span_id"]: s for s in await ledger.fetch(
        "SELECT span_id, start_time, duration_ms FROM spans WHERE span_id = ANY($1::text[])", list(by_id))}
    assert set(stored) == set(by_id)
    for r in rows:
        span = stored[r["spanID"]]
        assert float(r["startTime"]) == pytest.approx(span["start_time"].timestamp() * 1000)   # epoch ms
        assert r["duration"] == pytest.approx(span["duration_ms"])
        for column in ("tags", "serviceTags"):
            value = json.loads(r[column])
            assert isinstance(value, list) and all(set(kv) == {"key", "value"} for kv in value)
        assert {kv["key"] for kv in json.loads(r["serviceTags"])} >= {"service.name"}
        for log in json.loads(r["logs"]):
            assert float(log["timestamp"]) >= float(r["startTime"])
            assert all(set(f) == {"key", "value"} for f in log["fields"])
    assert any(json.loads(r["logs"]) for r in rows)
    errors = [r for r in rows if {"key": "error", "value": True} in json.loads(r["tags"])]
    assert [r["operationName"] for r in errors] == ["tool:lookup_order"]
    conversions = panel["transformations"][0]["options"]["conversions"]
    assert {c["targetField"] for c in conversions} == {"tags", "serviceTags", "logs"}


async def test_event_log_query_has_the_logs_field_contract(ledger: asyncpg.Connection) -> None:
    board = BOARDS[DASHBOARD_UIDS["call_detail"]]
    panel = next(p for p in _panels(board) if p["type"] == "logs")
    names, types, rows = await _run(ledger, _render(board, panel["targets"][0]["rawSql"]))
    assert names[0] == "time" and types[0] == "timestamptz"
    first_text = next(n for n, t in zip(names, types) if t == "text")
    assert first_text == "line"
    assert "level" in names and "id" in names
    assert {r["level"] for r in rows} <= {"info", "warning", "error", "critical"}
    assert "error" in {r["level"] for r in rows}
    assert len({r["id"] for r in rows}) == len(rows)
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    assert any(r["line"].startswith("Integration Tool Failed") or "failed" in r["line"].lower() for r in rows)


async def test_event_log_category_filter(ledger: asyncpg.Connection) -> None:
    board = BOARDS[DASHBOARD_UIDS["call_detail"]]
    sql = next(p for p in _panels(board) if p["type"] == "logs")["targets"][0]["rawSql"]
    _, _, rows = await _run(ledger, _render(board, sql, values={"category": ["webhook", "path"]}))
    assert rows and {r["category"] for r in rows} == {"webhook", "path"}


@pytest.mark.parametrize("uid", sorted(BOARDS))
async def test_variable_queries_return_values(ledger: asyncpg.Connection, uid: str) -> None:
    board = BOARDS[uid]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            _, _, rows = await _run(ledger, _render(board, v["query"]))
            assert rows, v["name"]


async def test_calls_filters_select_what_they_say(ledger: asyncpg.Connection) -> None:
    board = BOARDS[DASHBOARD_UIDS["calls"]]
    sql = next(p for p in _panels(board) if p["title"] == "Calls")["targets"][0]["rawSql"]
    _, _, every = await _run(ledger, _render(board, sql))
    assert len(every) == dashboard_data.CALLS
    _, _, some = await _run(ledger, _render(board, sql, values={
        "direction": ["inbound", "web"], "status": ["completed"], "agent": ["sales"]}))
    assert some and all(r["type"] in ("inbound", "web") and r["status"] == "completed" and r["agent"] == "sales"
                        for r in some)
    # "All" keeps calls whose campaign is NULL
    assert any(r["campaign"] is None for r in every)
    _, _, one = await _run(ledger, _render(board, sql, values={"search": "555000001"}))
    assert {r["from_number"] for r in one} >= {"+15550000012"}
    _, _, by_id = await _run(ledger, _render(board, sql, values={"search": "CALL-0012"}))
    assert [r["call_id"] for r in by_id] == ["call-0012"]


MALICIOUS = ["x'; drop table calls; --", "' OR '1'='1", "\\'; select pg_sleep(5); --", "$$; drop table calls; $$",
             "${search}", "%", "_"]


@pytest.mark.parametrize("value", MALICIOUS)
async def test_free_text_variables_are_injection_safe(ledger: asyncpg.Connection, value: str) -> None:
    calls_board = BOARDS[DASHBOARD_UIDS["calls"]]
    detail_board = BOARDS[DASHBOARD_UIDS["call_detail"]]
    for board, values in ((calls_board, {"search": value}), (detail_board, {"call_id": value})):
        for panel in _panels(board):
            for target in panel.get("targets", []):
                sql = _render(board, target["rawSql"], values=values)
                _, _, rows = await _run(ledger, sql)
                if panel["title"] == "Calls" or board is detail_board:
                    assert not rows, (panel["title"], sql)
    assert await ledger.fetchval("SELECT count(*) FROM calls") == dashboard_data.CALLS


# ---------------------------------------------------------------------------------------------------------
# Simulated traffic
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def simulated(simulated_db: str) -> AsyncIterator[asyncpg.Connection]:
    """tests/conftest.py: simulator traffic ingested through the real receiver."""
    conn = await asyncpg.connect(simulated_db)
    yield conn
    await conn.close()


# Panels whose rows need a signal the simulator does not send: speaking spans (dead air, barge-in; the native
# convention has none) and telemetry flaws it never makes. They run on it all the same, and show rows on the
# ledger and on the recordings (test_new_panels_on_recorded_framework_telemetry).
SIGNAL_DEPENDENT = {"Barge-in: agent audio stop p50 / p95 / p99", "Dead air per turn p50 / p95 / p99",
                    "Longest silences (calls)", "Spans ending before they start", "Clock skew",
                    "Active calls gone silent", "Uncorrelated log records", "Turns missing a stage", "Orphan spans"}


@pytest.mark.parametrize(("uid", "panel_id"), PANEL_CASES)
async def test_every_panel_query_returns_rows_on_simulated_traffic(simulated: asyncpg.Connection, uid: str,
                                                                   panel_id: int) -> None:
    board, panel = _target(uid, panel_id)
    lo, hi = await simulated.fetchrow("SELECT min(started_at), max(coalesce(last_seen_at, ended_at, started_at)) "
                                      "FROM calls")
    frm, to = lo - timedelta(minutes=5), hi + timedelta(minutes=5)
    call_ids = [r["call_id"] for r in await simulated.fetch(
        "SELECT call_id FROM calls ORDER BY tool_call_count DESC, interruption_count DESC, turn_count DESC "
        "LIMIT 8")]
    for target in panel["targets"]:
        found = False
        for call_id in call_ids if uid == DASHBOARD_UIDS["call_detail"] else call_ids[:1]:
            sql = _render(board, target["rawSql"], values={"call_id": call_id}, frm=frm, to=to)
            names, _, rows = await _run(simulated, sql)
            if rows:
                found = True
                break
        assert found or panel["title"] in SIGNAL_DEPENDENT, f"{panel['title']}: no rows on simulated traffic"


# ---------------------------------------------------------------------------------------------------------
# Plans at scale
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def large_db(template_database: str) -> AsyncIterator[asyncpg.Connection]:
    name = await new_database(template_database, prefix="callscope_dash_large")
    conn = await asyncpg.connect(url_for(name))
    await dashboard_data.fill_ledger(conn)
    await dashboard_data.fill_large_spans(conn)  # 200k spans, 40k events
    yield conn
    await conn.close()
    await drop_database(name)


async def test_call_detail_queries_use_indexes_on_a_large_dataset(large_db: asyncpg.Connection) -> None:
    assert await large_db.fetchval("SELECT count(*) FROM spans") >= 200_000
    board = BOARDS[DASHBOARD_UIDS["call_detail"]]
    for panel in _panels(board):
        for target in panel.get("targets", []):
            sql = _render(board, target["rawSql"])
            plan = "\n".join(r[0] for r in await large_db.fetch("EXPLAIN " + sql))
            # the big tables (or their chunks, on TimescaleDB); turns and calls are small here
            assert not await dashboard_data.seq_scanned(large_db, plan, {"spans", "events"}), \
                f"{panel['title']}:\n{plan}"


async def test_latency_rollup_uses_its_index(large_db: asyncpg.Connection) -> None:
    """The stage panels read the deriver's minute rollup stage_latency_1m (by its bucket index on tables the size
    of a real one: tests/test_dashboard_plans.py), never the spans:
    the view latency_stage_1m groups spans by date_bin(start_time), and under row-level security a date_bin
    condition (not leakproof) cannot be an index condition, so reading the view would read every span."""
    board = BOARDS[DASHBOARD_UIDS["latency"]]
    for title in ("Stage TTFB p95 by provider / model", "Stages by provider / model"):
        panel = next(p for p in _panels(board) if p["title"] == title)
        sql = _render(board, panel["targets"][0]["rawSql"])
        plan = "\n".join(r[0] for r in await large_db.fetch("EXPLAIN " + sql))
        assert "on stage_latency_1m" in plan, plan
        assert not re.search(r"\bon (spans|_hyper_\w+)\b", plan), plan


# ---------------------------------------------------------------------------------------------------------
# The emulator itself (expansions from ../shared/research/grafana.md §3)
# ---------------------------------------------------------------------------------------------------------

FROM = datetime(2026, 11, 22, 5, 32, 38, 939974, tzinfo=timezone.utc)
TO = datetime(2026, 11, 22, 11, 32, 38, 939974, tzinfo=timezone.utc)


@pytest.mark.parametrize(("sql", "expected"), [
    ("$__timeFilter(t)", "t BETWEEN '2026-11-22T05:32:38.939974Z' AND '2026-11-22T11:32:38.939974Z'"),
    ("$__timeFrom() $__timeTo()", "'2026-11-22T05:32:38.939974Z' '2026-11-22T11:32:38.939974Z'"),
    ("$__time(t)", 't AS "time"'),
    ("$__timeEpoch(t)", 'extract(epoch from t) as "time"'),
    ("$__timeGroup(t,'5m')", "floor(extract(epoch from t)/300)*300"),
    ("$__timeGroupAlias(t, $__interval)", 'floor(extract(epoch from t)/60)*60 AS "time"'),
    ("$__timeGroup(t, 5m, 0)", "floor(extract(epoch from t)/300)*300"),
    ("$__unixEpochFilter(x)", "x >= 1795325558 AND x <= 1795347158"),
    ("$__unixEpochGroupAlias(x,'1h')", 'floor((x)/3600)*3600 AS "time"'),
    ("$__unixEpochFrom() $__interval_ms", "1795325558 60000"),
])
def test_emulator_macro_expansions(sql: str, expected: str) -> None:
    assert expand_macros(sql, frm=FROM, to=TO, interval=timedelta(minutes=1)) == expected


def test_emulator_timescaledb_time_group() -> None:
    assert expand_macros("$__timeGroup(t,'5m')", frm=FROM, to=TO, interval=timedelta(minutes=1),
                         timescaledb=True) == "time_bucket('300.000s',t)"


def test_emulator_variable_quoting() -> None:
    v = {
        "agent": Variable("agent", ["receptionist", "o'brien"], multi=True, include_all=True),
        "env": Variable("env", "o'prod"),
        "c": Variable("c", ALL, multi=True, include_all=True, all_value="'__all'", options=("a", "b")),
        "d": Variable("d", [ALL], multi=True, include_all=True, options=("a", "b'c")),
    }
    assert interpolate_variables("IN (${agent})", v) == "IN ('receptionist','o''brien')"
    assert interpolate_variables("'$env' '[[env]]' '${env}'", v) == "'o''prod' 'o''prod' 'o''prod'"
    assert interpolate_variables("${env:sqlstring} ${agent:csv}", v) == "'o''prod' receptionist,o'brien"
    assert interpolate_variables("${agent:singlequote}", v) == "'receptionist','o\\'brien'"
    assert interpolate_variables("${c} ${c:csv} ${c:text}", v) == "'__all' '__all' a + b"
    assert interpolate_variables("${d} ${d:csv}", v) == "'a','b''c' a,b'c"
    assert interpolate_variables("$__timeFilter(x) $unknown", v) == "$__timeFilter(x) $unknown"


# ---------------------------------------------------------------------------------------------------------
# Recorded framework telemetry (tests/fixtures/recordings, replayed through the real receiver)
# ---------------------------------------------------------------------------------------------------------

# distinct call ids: OpenInference (call-fixture-0001, one trace per turn), LiveKit (call-fixture-0002), native
RECORDED = ("openinference_pipecat", "livekit_transfer", "native_status")


@pytest.fixture(scope="session")
async def recorded(template_database: str) -> AsyncIterator[asyncpg.Connection]:
    from collector.server import Collector
    from conftest import collector_settings
    from replay import replay

    name = await new_database(template_database, prefix="callscope_dash_rec")
    url = url_for(name)
    running = Collector(collector_settings(url), run_migrations=False)
    await running.start()
    try:
        for recording in RECORDED:
            await replay(recording, running, "grpc")
        await running.settle()
    finally:
        await running.close(grace_s=1)
    conn = await asyncpg.connect(url)
    yield conn
    await conn.close()
    await drop_database(name)


NEW_BOARDS = (DASHBOARD_UIDS["quality"], DASHBOARD_UIDS["campaigns"])
RECORDED_ROWS = {  # panel title -> recorded calls that must show in it
    "Turns missing a stage": {"call-fixture-0001"},       # OpenInference: the barge-in turn has no STT span
    "Orphan spans": {"call-native-live"},                  # its root never ended
    "Active calls gone silent": {"call-native-live"},
    "Uncorrelated log records": None,                      # the webhook.queued record of a never-exported span
    "Longest silences (calls)": {"call-fixture-0002"},
    "Slowest turns (voice-to-voice)": {"call-fixture-0002"},
}


@pytest.mark.parametrize(("uid", "panel_id"), [
    c for c in PANEL_CASES if c.values[0] in NEW_BOARDS or "silence" in c.id.lower() or "barge" in c.id.lower()
    or "dead air" in c.id.lower()])
async def test_new_panels_on_recorded_framework_telemetry(recorded: asyncpg.Connection, uid: str,
                                                          panel_id: int) -> None:
    board, panel = _target(uid, panel_id)
    lo, hi = await recorded.fetchrow("SELECT min(started_at), max(last_seen_at) FROM calls")
    for target in panel["targets"]:
        sql = _render(board, target["rawSql"], values={"call_id": "call-fixture-0002"},
                      frm=lo - timedelta(days=1), to=hi + timedelta(days=1))
        names, _, rows = await _run(recorded, sql)
        if panel["title"] in RECORDED_ROWS:
            wanted = RECORDED_ROWS[panel["title"]]
            assert rows, panel["title"]
            if wanted is not None:
                assert wanted <= {r["call_id"] for r in rows}, (panel["title"], rows)
        elif panel["title"] not in SIGNAL_DEPENDENT:
            assert rows, panel["title"]


async def test_multi_trace_call_is_one_tree_under_a_call_root(recorded: asyncpg.Connection) -> None:
    from replay import load

    board = BOARDS[DASHBOARD_UIDS["call_detail"]]
    panel = next(p for p in _panels(board) if p["type"] == "traces")
    # OpenInference's Pipecat instrumentor: one trace per turn, joined by session.id
    _, _, rows = await _run(recorded, _render(board, panel["targets"][0]["rawSql"],
                                              values={"call_id": "call-fixture-0001"}))
    assert len({r["traceID"] for r in rows}) == 1
    roots = [r for r in rows if r["parentSpanID"] is None]
    assert len(roots) == 1 and roots[0]["operationName"] == "call call-fixture-0001"
    by_id = {r["spanID"]: r for r in rows}
    assert all(r["parentSpanID"] in by_id for r in rows if r["parentSpanID"] is not None)
    original_traces = {kv["value"] for r in rows for kv in json.loads(r["tags"]) if kv["key"] == "trace_id"}
    assert original_traces == load("openinference_pipecat").trace_ids and len(original_traces) > 1
    children_of_root = [r for r in rows if r["parentSpanID"] == roots[0]["spanID"]]
    assert len(children_of_root) >= len(original_traces)   # each trace's root hangs below the call
