"""Rollups (storage/rollup.py): histogram percentiles within their bound, rows equal to what they summarize,
marks before / after a rewrite, marks committed during a refresh, and the dashboards' long-range branches
against the raw rows."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import asyncpg
import pytest

import dashboard_data
from collector.simulate import run_simulation
from conftest import drop_database, new_database, url_for
from dashboards.common import DASHBOARD_UIDS
from dashboards.generate import DashboardOptions, render_provisioning
from bench.grafana_emulator import render, variables_from_dashboard
from storage import rollup

BOUND = math.sqrt(rollup.HIST_RATIO) - 1  # < 2 %
QS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]

FILES = render_provisioning(DashboardOptions())
BOARDS = {json.loads(t)["uid"]: json.loads(t) for rel, t in FILES.items() if rel.endswith(".json")}

_TURN_DIMS = ", ".join(rollup.TURN_DIMENSIONS)


# ---------------------------------------------------------------------------------------------------------
# Histogram
# ---------------------------------------------------------------------------------------------------------

DISTRIBUTIONS = {
    "lognormal": "exp(6.5 + 0.6 * sqrt(-2 * ln(random())) * cos(2 * pi() * random()))",
    "uniform": "1 + random() * 30000",
    "bimodal": "CASE WHEN random() < 0.9 THEN 200 + random() * 50 ELSE 5000 + random() * 2000 END",
    "integers": "(1 + floor(random() * 20))::float8",
    "sub_millisecond": "random() * 3",
}


@pytest.mark.parametrize("n", [1, 2, 3, 10, 5000])
@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
async def test_histogram_percentiles_are_within_the_bound_of_percentile_cont(db: asyncpg.Connection,
                                                                            distribution: str, n: int) -> None:
    await db.execute("SELECT setseed(0.42)")
    row = await db.fetchrow(
        f"""WITH v AS (SELECT {DISTRIBUTIONS[distribution]} AS v FROM generate_series(1, $1))
        SELECT percentile_cont($2::float8[]) WITHIN GROUP (ORDER BY v) AS exact,
               callscope_hist_quantiles(array_agg(callscope_hist_bin(v)), array_agg(1), $2::float8[],
                                        min(v), max(v)) AS approx
        FROM v""", n, QS)
    for q, exact, approx in zip(QS, row["exact"], row["approx"]):
        if exact >= 1:
            assert abs(approx - exact) <= BOUND * exact + 1e-9, (q, exact, approx)
        else:
            assert abs(approx - exact) < 1, (q, exact, approx)


async def test_histograms_add_up_across_rows(db: asyncpg.Connection) -> None:
    """Split samples in many partial histograms (bins repeat, any order): the same result as one histogram."""
    rows = await db.fetch(
        """WITH v AS (SELECT i, 100 + (i * 7919) % 3000 AS v FROM generate_series(1, 3000) i),
        parts AS (SELECT i % 17 AS part, callscope_hist_bin(v) AS bin, count(*)::int AS n FROM v GROUP BY 1, 2)
        SELECT (SELECT callscope_hist_quantiles(array_agg(bin ORDER BY part DESC), array_agg(n ORDER BY part DESC),
                                                '{0.5,0.95}') FROM parts) AS split,
               (SELECT callscope_hist_quantiles(array_agg(callscope_hist_bin(v)), array_agg(1), '{0.5,0.95}')
                FROM v) AS whole""")
    assert rows[0]["split"] == rows[0]["whole"]


async def test_empty_histograms_give_null(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT callscope_hist_quantiles('{}', '{}', '{0.5,0.95}')") == [None, None]
    assert await db.fetchval("SELECT callscope_hist_quantile(NULL, NULL, 0.5)") is None


# ---------------------------------------------------------------------------------------------------------
# Refresh
# ---------------------------------------------------------------------------------------------------------


_ORDER = {
    "turn_latency_1m": _TURN_DIMS, "turn_latency_1h": _TURN_DIMS, "call_status_1h": ", ".join(rollup.CALL_DIMENSIONS),
    "turn_latency_breakdown_1h": "breakdown, value", "stage_latency_1m": "stage, provider, model",
    "latency_stage_1h": "stage, provider, model", "event_counts_1m": "category, event, level",
    "event_counts_1h": "category, event, level",
}
TURN_TABLES = ("turn_latency_1m", "turn_latency_1h", "turn_latency_breakdown_1h", "call_status_1h")
SPAN_EVENT_TABLES = ("stage_latency_1m", "latency_stage_1h", "event_counts_1m", "event_counts_1h")


async def _rebuilt(db: asyncpg.Connection, table: str) -> list[asyncpg.Record]:
    return await db.fetch(f"SELECT * FROM {table} ORDER BY bucket, {_ORDER[table]}")


async def _continuous_aggregates(db: asyncpg.Connection) -> set[str]:
    """The relations TimescaleDB keeps (continuous aggregates) in this database; none on plain PostgreSQL."""
    if not await db.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return set()
    return {r[0] for r in await db.fetch("SELECT view_name FROM timescaledb_information.continuous_aggregates "
                                         "WHERE view_schema = current_schema()")}


async def _snapshot(db: asyncpg.Connection, tables: tuple[str, ...] = TURN_TABLES + SPAN_EVENT_TABLES
                    ) -> dict[str, list[asyncpg.Record]]:
    # where latency_stage_1m is a continuous aggregate, stage_latency_1m does not exist (migration 0007)
    skipped = {"stage_latency_1m"} if "latency_stage_1m" in await _continuous_aggregates(db) else set()
    return {t: await _rebuilt(db, t) for t in tables if t not in skipped}


def _epoch(value: Any) -> float:
    """A panel's time column as epoch seconds: $__timeGroup gives a number on plain PostgreSQL, a timestamptz
    (time_bucket) where the data source has TimescaleDB on; Grafana reads either."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _close(a: Any, b: Any) -> bool:
    """Equal, floats up to rounding (sums over rows read in another physical order differ in the last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def assert_same_rows(got: dict[str, list[asyncpg.Record]], expected: dict[str, list[asyncpg.Record]]) -> None:
    assert got.keys() == expected.keys()
    for table in got:
        assert len(got[table]) == len(expected[table]), table
        for g, e in zip(got[table], expected[table]):
            assert list(g.keys()) == list(e.keys()) and all(_close(g[k], e[k]) for k in g.keys()), (
                table, dict(g), dict(e))


async def _from_scratch(db: asyncpg.Connection, tables: tuple[str, ...] = TURN_TABLES + SPAN_EVENT_TABLES
                        ) -> dict[str, list[asyncpg.Record]]:
    """What a full rebuild gives (every bucket marked and refreshed); continuous aggregates are TimescaleDB's."""
    kept = await _continuous_aggregates(db)
    absent = {"stage_latency_1m"} if "latency_stage_1m" in kept else set()
    await db.execute(f"TRUNCATE {', '.join(t for t in _ORDER if t not in kept | absent)}")
    await dashboard_data.fill_rollups(db)
    return await _snapshot(db, tables)


async def test_rollup_rows_summarize_the_turns_and_calls(db: asyncpg.Connection) -> None:
    await dashboard_data.fill_ledger(db)
    assert await db.fetchval("SELECT count(*) FROM turn_rollup_dirty") == 0
    for table, step in (("turn_latency_1m", "1 minute"), ("turn_latency_1h", "1 hour")):
        expected = await db.fetch(
            f"""SELECT date_bin('{step}', t.started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                       t.agent, t.llm_model, c.campaign, c.direction, count(*) AS turns,
                       count(t.voice_to_voice_ms) AS samples, sum(t.voice_to_voice_ms) AS s,
                       min(t.voice_to_voice_ms) AS lo, max(t.tts_ttfb_ms) AS tts_hi
                FROM turns t LEFT JOIN calls c USING (call_id)
                GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""")
        got = await db.fetch(
            f"""SELECT bucket, agent, llm_model, campaign, direction, sum(turns) AS turns,
                       sum(voice_to_voice_samples) AS samples, sum(voice_to_voice_sum_ms) AS s,
                       min(voice_to_voice_min_ms) AS lo, max(tts_ttfb_max_ms) AS tts_hi
                FROM {table} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""")
        assert [tuple(r) for r in got] == [tuple(r) for r in expected], table
        bad = await db.fetchval(
            f"""SELECT count(*) FROM {table}
                WHERE voice_to_voice_samples <> (SELECT coalesce(sum(n), 0) FROM unnest(voice_to_voice_counts) n)
                   OR cardinality(voice_to_voice_bins) <> cardinality(voice_to_voice_counts)""")
        assert bad == 0
    calls = await db.fetch(
        """SELECT date_bin('1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, status,
                  count(*) AS calls, sum(cost_total) AS cost, sum(duration_s) AS duration
           FROM calls GROUP BY 1, 2 ORDER BY 1, 2""")
    got = await db.fetch("""SELECT bucket, status, sum(calls) AS calls, sum(cost_total) AS cost,
                                   sum(duration_s) AS duration
                            FROM call_status_1h GROUP BY 1, 2 ORDER BY 1, 2""")
    assert [(r[0], r[1], r[2]) for r in got] == [(r[0], r[1], r[2]) for r in calls]
    for a, b in zip(got, calls):
        assert a["cost"] == pytest.approx(b["cost"]) and a["duration"] == pytest.approx(b["duration"])


async def test_marks_before_and_after_a_rewrite_move_rows_between_buckets(db: asyncpg.Connection) -> None:
    await dashboard_data.fill_ledger(db)
    ids = ["call-0003", "call-0004"]
    async with db.transaction():  # what the derive transaction does
        await db.execute(rollup.MARK_TURN_BUCKETS, ids, "default")
        await db.execute(rollup.MARK_CALL_BUCKETS, ids, "default")
        await db.execute("UPDATE turns SET started_at = started_at + interval '3 hours 7 minutes', "
                         "voice_to_voice_ms = voice_to_voice_ms * 2 WHERE call_id = ANY($1)", ids)
        await db.execute("UPDATE calls SET started_at = started_at + interval '3 hours', campaign = 'moved', "
                         "status = 'failed' WHERE call_id = ANY($1)", ids)
        await db.execute("DELETE FROM turns WHERE call_id = 'call-0004' AND turn_number = 4")
        await db.execute(rollup.MARK_TURN_BUCKETS, ids, "default")
        await db.execute(rollup.MARK_CALL_BUCKETS, ids, "default")
    assert await rollup.refresh_rollups(db, 1000) > 0
    kept = await _snapshot(db)
    assert await db.fetchval("SELECT count(*) FROM turn_rollup_dirty") == 0
    assert_same_rows(kept, await _from_scratch(db))
    assert await db.fetchval("SELECT sum(turns) FROM turn_latency_1h") == dashboard_data.CALLS * 4 - 1


async def test_a_mark_committed_during_a_refresh_is_kept(database_url: str) -> None:
    a = await asyncpg.connect(database_url)
    b = await asyncpg.connect(database_url)
    try:
        await dashboard_data.fill_ledger(a)
        tx = a.transaction()
        await tx.start()
        await a.execute("UPDATE turns SET voice_to_voice_ms = 99999 WHERE call_id = 'call-0005'")
        await a.execute(rollup.MARK_TURN_BUCKETS, ["call-0005"], "default")
        # the refresh does not see the uncommitted mark (nor the turns it announces)
        assert await rollup.refresh_turn_rollup(b, 1000) == 0
        await tx.commit()
        marked = await b.fetchval("SELECT count(DISTINCT bucket) FROM turn_rollup_dirty")
        assert marked >= 1
        assert await rollup.refresh_turn_rollup(b, 1000) == marked
        assert await b.fetchval("SELECT max(voice_to_voice_max_ms) FROM turn_latency_1h") == 99999
    finally:
        await a.close()
        await b.close()


async def test_refresh_is_bounded_by_max_buckets(db: asyncpg.Connection) -> None:
    await dashboard_data.fill_ledger(db)
    await db.execute(rollup.MARK_ALL_TURN_BUCKETS)
    marked = await db.fetchval("SELECT count(DISTINCT bucket) FROM turn_rollup_dirty")
    assert marked > 10
    assert await rollup.refresh_turn_rollup(db, 10) == 10
    assert await db.fetchval("SELECT count(DISTINCT bucket) FROM turn_rollup_dirty") == marked - 10


async def test_marks_after_collector_traffic_give_the_same_rollup_as_a_rebuild(collector: Any,
                                                                             db: asyncpg.Connection) -> None:
    report = await run_simulation(f"127.0.0.1:{collector.grpc.port}", calls=12, concurrency=4, seed=5)
    assert report.rejected == 0
    for _ in range(200):  # the collector derives in the background: wait until it settled
        if not await db.fetchval("SELECT count(*) FROM dirty_calls"):
            break
        await asyncio.sleep(0.05)
    await collector.deriver.drain()
    # spans and events: the derive routine marked their minutes itself, the drain refreshed them
    assert await db.fetchval("SELECT count(*) FROM stage_rollup_dirty") == 0
    assert await db.fetchval("SELECT count(*) FROM event_rollup_dirty") == 0
    by_collector = await _snapshot(db, SPAN_EVENT_TABLES)
    assert by_collector.get("stage_latency_1m", by_collector["latency_stage_1h"]) and by_collector["event_counts_1h"]
    assert_same_rows(by_collector, await _from_scratch(db, SPAN_EVENT_TABLES))
    assert await db.fetchval("SELECT sum(events) FROM event_counts_1h") == await db.fetchval(
        "SELECT count(*) FROM events")
    ids = [r[0] for r in await db.fetch("SELECT call_id FROM calls")]
    assert ids and await db.fetchval("SELECT count(*) FROM turns") > 0
    await db.execute(rollup.MARK_TURN_BUCKETS, ids, "default")
    await db.execute(rollup.MARK_CALL_BUCKETS, ids, "default")
    await rollup.drain_rollups(db, 100)
    kept = await _snapshot(db)
    assert await db.fetchval("SELECT sum(turns) FROM turn_latency_1h") == await db.fetchval(
        "SELECT count(*) FROM turns WHERE started_at IS NOT NULL")
    assert_same_rows(kept, await _from_scratch(db))


async def test_the_reader_role_runs_without_jit(db: asyncpg.Connection) -> None:
    settings = await db.fetchval("SELECT setconfig FROM pg_db_role_setting WHERE setrole = "
                                 "'callscope_reader'::regrole AND setdatabase = 0")
    assert "jit=off" in settings
    grants = await db.fetch("SELECT table_name FROM information_schema.role_table_grants "
                            "WHERE grantee = 'callscope_reader' AND privilege_type = 'SELECT'")
    # what the dashboards read (storage/reader.py); the minute rows only feed the hour rows
    granted = {r[0] for r in grants}
    assert {"turn_latency_1h", "call_status_1h"} <= granted and "turn_latency_1m" not in granted


# ---------------------------------------------------------------------------------------------------------
# The dashboards' long-range branches against the raw rows
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def ledger(template_database: str) -> AsyncIterator[asyncpg.Connection]:
    name = await new_database(template_database, prefix="callscope_rollup")
    conn = await asyncpg.connect(url_for(name))
    await dashboard_data.fill_ledger(conn)
    yield conn
    await conn.close()
    await drop_database(name)


def _panel_sql(uid: str, title: str) -> tuple[dict[str, Any], str]:
    board = BOARDS[uid]
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
    panel = next(p for p in panels if p["title"] == title)
    return board, panel["targets"][0]["rawSql"]


# The ledger: 42 calls 2 minutes apart from BASE + 2 min. Ranges around it: raw, then the hour rollups.
BASE = dashboard_data.BASE
RANGES = {
    "raw": (BASE - timedelta(hours=1), BASE + timedelta(hours=3)),
    "days": (BASE - timedelta(hours=30), BASE + timedelta(hours=20)),
    "hours": (BASE - timedelta(days=20), BASE + timedelta(days=10)),
    # longer than 6 h, starting / ending inside the data: the partial first / last hour is read raw
    "edge_start": (BASE + timedelta(minutes=37), BASE + timedelta(hours=7, minutes=37)),
    "edge_end": (BASE + timedelta(minutes=50) - timedelta(hours=7), BASE + timedelta(minutes=50)),
}


async def _query(conn: asyncpg.Connection, uid: str, title: str, span: str,
                 values: dict[str, Any] | None = None) -> list[asyncpg.Record]:
    board, sql = _panel_sql(uid, title)
    frm, to = RANGES[span]
    return await conn.fetch(render(sql, variables=variables_from_dashboard(board, values or {}), frm=frm, to=to,
                                   interval=timedelta(minutes=5)))


@pytest.mark.parametrize("span", sorted(RANGES))
async def test_call_counts_and_costs_are_exact_on_every_range(ledger: asyncpg.Connection, span: str) -> None:
    calls = DASHBOARD_UIDS["calls"]
    frm, to = RANGES[span]
    exact = await ledger.fetchrow(
        "SELECT count(*) AS calls, count(*) FILTER (WHERE status = 'completed') AS completed, "
        "sum(cost_total) AS cost, avg(duration_s) AS duration FROM calls WHERE started_at BETWEEN $1 AND $2",
        frm, to)
    key = span
    assert 0 < exact["calls"] < dashboard_data.CALLS or span in ("raw", "days", "hours")
    assert (await _query(ledger, calls, "All calls", key))[0]["calls"] == exact["calls"]
    assert (await _query(ledger, calls, "Completed", key))[0]["calls"] == exact["completed"]
    totals = (await _query(ledger, calls, "Cost and duration", key))[0]
    assert totals["Total cost"] == pytest.approx(exact["cost"] or 0)
    assert totals["Avg duration"] == pytest.approx(exact["duration"] or 0)
    over_time = await _query(ledger, calls, "Calls over time by status", key)
    assert sum(r["calls"] for r in over_time) == exact["calls"]
    some = await _query(ledger, calls, "All calls", key, {"agent": ["sales"], "direction": ["inbound", "web"]})
    assert some[0]["calls"] == await ledger.fetchval(
        "SELECT count(*) FROM calls WHERE started_at BETWEEN $1 AND $2 AND agent = 'sales' "
        "AND direction IN ('inbound', 'web')", frm, to)


async def test_a_search_reads_raw_calls_on_long_ranges(ledger: asyncpg.Connection) -> None:
    rows = await _query(ledger, DASHBOARD_UIDS["calls"], "All calls", "hours", {"search": "CALL-0012"})
    assert rows[0]["calls"] == 1


@pytest.mark.parametrize("span", ["raw", "days", "hours"])
async def test_latency_stats_match_percentile_cont_within_the_bound(ledger: asyncpg.Connection, span: str) -> None:
    uid = DASHBOARD_UIDS["latency"]
    frm, to = RANGES[span]
    for metric, title in (("voice_to_voice_ms", "p95 Voice-to-voice"), ("llm_ttft_ms", "p95 LLM time to first token")):
        exact = await ledger.fetchval(f"SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY {metric}) FROM turns "
                                      "WHERE started_at BETWEEN $1 AND $2", frm, to)
        got = (await _query(ledger, uid, title, span))[0]["p95"]
        if span == "raw":
            assert got == pytest.approx(exact)
        else:
            assert abs(got - exact) <= BOUND * exact, (title, got, exact)


@pytest.mark.parametrize("span", ["raw", "days", "hours"])
async def test_latency_series_have_every_percentile(ledger: asyncpg.Connection, span: str) -> None:
    uid = DASHBOARD_UIDS["latency"]
    rows = await _query(ledger, uid, "Voice-to-voice: p50 / p95 / p99", span)
    assert rows and all(r["p50"] <= r["p95"] <= r["p99"] for r in rows)
    by_agent = await _query(ledger, uid, "Voice-to-voice: p95 by agent", span)
    assert {r["metric"] for r in by_agent} == {"sales", "receptionist"}
    models = await _query(ledger, uid, "LLM time to first token: p95 by LLM model", span, {"agent": ["sales"]})
    assert {r["metric"] for r in models} == {"gpt-4o", "gpt-4o-mini"}


@pytest.mark.parametrize("span", ["raw", "days", "hours"])
async def test_slowest_turns_are_exact_on_every_range(ledger: asyncpg.Connection, span: str) -> None:
    frm, to = RANGES[span]
    expected = await ledger.fetch("SELECT call_id, turn_number FROM turns WHERE started_at BETWEEN $1 AND $2 "
                                  "ORDER BY voice_to_voice_ms DESC, call_id, turn_number LIMIT 50", frm, to)
    got = await _query(ledger, DASHBOARD_UIDS["latency"], "Slowest turns (voice-to-voice)", span)
    assert len(got) == len(expected) == 50
    cutoff = got[-1]["voice_to_voice_ms"]
    exact_values = await ledger.fetch("SELECT voice_to_voice_ms FROM turns WHERE started_at BETWEEN $1 AND $2 "
                                      "ORDER BY voice_to_voice_ms DESC LIMIT 50", frm, to)
    assert [r["voice_to_voice_ms"] for r in got] == [r[0] for r in exact_values]
    assert cutoff == exact_values[-1][0]


@pytest.mark.parametrize("span", ["days", "hours"])
async def test_variables_read_the_rollups_on_long_ranges(ledger: asyncpg.Connection, span: str) -> None:
    frm, to = RANGES[span]
    for uid, name, expected in ((DASHBOARD_UIDS["latency"], "model", {"gpt-4o", "gpt-4o-mini"}),
                                (DASHBOARD_UIDS["calls"], "agent", {"sales", "receptionist"}),
                                (DASHBOARD_UIDS["calls"], "campaign", {"spring-renewals"})):
        board = BOARDS[uid]
        sql = next(v["query"] for v in board["templating"]["list"] if v["name"] == name)
        rows = await ledger.fetch(render(sql, variables=variables_from_dashboard(board), frm=frm, to=to))
        assert {r[0] for r in rows} == expected


# ---------------------------------------------------------------------------------------------------------
# The Campaigns dashboard: call_status_1h (+ raw partial hours) against the raw calls, turns of the range
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def campaigns(template_database: str) -> AsyncIterator[asyncpg.Connection]:
    """The ledger with two campaigns (and calls of none), calls that never reached a conversation (no turns
    counted, not live or completed) and transferred calls (every 5th)."""
    name = await new_database(template_database, prefix="callscope_campaigns")
    conn = await asyncpg.connect(url_for(name))
    await dashboard_data.fill_ledger(conn)
    await conn.execute("UPDATE calls SET campaign = 'winter-winback' WHERE right(call_id, 1) IN ('3', '7')")
    await conn.execute("UPDATE calls SET turn_count = 0 WHERE status IN ('queued', 'ringing', 'missed', 'declined') "
                       "AND right(call_id, 1) IN ('5', '6', '8')")
    await conn.execute(f"TRUNCATE {', '.join(_ORDER)}")
    await dashboard_data.fill_rollups(conn)
    yield conn
    await conn.close()
    await drop_database(name)


CAMPAIGN_RANGES = {**RANGES, "one_hour": (BASE + timedelta(minutes=20), BASE + timedelta(minutes=80))}
OUTCOMES = ("queued", "ringing", "answered", "completed", "failed", "declined", "missed", "transferred")
_EXACT_FUNNEL = """SELECT coalesce(c.campaign, '(none)') AS campaign, {day} count(*) AS calls,
       count(*) FILTER (WHERE status = 'queued') AS queued, count(*) FILTER (WHERE status = 'ringing') AS ringing,
       count(*) FILTER (WHERE status IN ('active', 'completed') OR turn_count > 0) AS answered,
       count(*) FILTER (WHERE status = 'completed') AS completed, count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'declined') AS declined, count(*) FILTER (WHERE status = 'missed') AS missed,
       count(*) FILTER (WHERE transferred) AS transferred, sum(cost_total) AS cost
FROM calls c WHERE started_at BETWEEN $1 AND $2 AND (cardinality($3::text[]) = 0 OR campaign = ANY($3))
GROUP BY 1{group} ORDER BY 1{group}"""
_EXACT_P95 = """SELECT coalesce(c.campaign, '(none)'), percentile_cont(0.95) WITHIN GROUP (ORDER BY t.voice_to_voice_ms)
FROM turns t LEFT JOIN calls c ON c.call_id = t.call_id AND c.tenant = t.tenant
WHERE t.started_at BETWEEN $1 AND $2 AND t.voice_to_voice_ms IS NOT NULL
  AND (cardinality($3::text[]) = 0 OR c.campaign = ANY($3))
GROUP BY 1"""


def _counts(row: Any) -> tuple[Any, ...]:
    return (row["calls"], *(row[o] for o in OUTCOMES))


async def _campaign_query(conn: asyncpg.Connection, title: str, span: str,
                          selected: list[str]) -> list[asyncpg.Record]:
    board, sql = _panel_sql(DASHBOARD_UIDS["campaigns"], title)
    frm, to = CAMPAIGN_RANGES[span]
    values = {"campaign": selected} if selected else {}
    return await conn.fetch(render(sql, variables=variables_from_dashboard(board, values), frm=frm, to=to,
                                   interval=timedelta(minutes=5)))


@pytest.mark.parametrize("selected", [[], ["winter-winback"]], ids=["all", "one"])
@pytest.mark.parametrize("span", sorted(CAMPAIGN_RANGES))
async def test_campaign_funnel_equals_the_funnel_of_the_raw_calls(campaigns: asyncpg.Connection, span: str,
                                                                 selected: list[str]) -> None:
    frm, to = CAMPAIGN_RANGES[span]
    exact = await campaigns.fetch(_EXACT_FUNNEL.format(day="", group=""), frm, to, selected)
    assert exact and (span not in ("raw", "days", "hours") or sum(r["calls"] for r in exact) == (
        dashboard_data.CALLS if not selected else 8))
    if not selected and span in ("raw", "days", "hours"):   # every outcome occurs
        assert all(sum(r[o] for r in exact) for o in OUTCOMES)
        assert sum(r["answered"] for r in exact) < dashboard_data.CALLS
    got = {r["campaign"]: r for r in await _campaign_query(campaigns, "Funnel by campaign", span, selected)}
    assert sorted(got) == [r["campaign"] for r in exact]
    for want in exact:
        row = got[want["campaign"]]
        assert _counts(row) == _counts(want), (span, dict(row), dict(want))
        assert row["cost"] == pytest.approx(want["cost"])
        assert row["failed_ratio"] == pytest.approx(want["failed"] / want["calls"])
    p95 = dict(await campaigns.fetch(_EXACT_P95, frm, to, selected))
    for campaign, row in got.items():
        if span in ("raw", "one_hour"):
            assert row["p95_v2v_ms"] == pytest.approx(p95[campaign])
        else:
            assert abs(row["p95_v2v_ms"] - p95[campaign]) <= BOUND * p95[campaign], (span, campaign)
    # per UTC day: the same calls (one day of data here), and the outcomes per day add up to them
    days = await _campaign_query(campaigns, "Funnel by campaign and day", span, selected)
    by_day = await campaigns.fetch(_EXACT_FUNNEL.format(day="(started_at AT TIME ZONE 'UTC')::date AS day,",
                                                        group=", 2"), frm, to, selected)
    assert sorted((r["campaign"], r["day"], *_counts(r)) for r in days) == sorted(
        (r["campaign"], r["day"], *_counts(r)) for r in by_day)
    for row in days:
        assert row["p95_voice_to_voice_ms"] == pytest.approx(got[row["campaign"]]["p95_v2v_ms"])
    per_day = await _campaign_query(campaigns, "Outcomes per day", span, selected)
    for outcome in ("answered", "completed", "failed", "transferred"):
        assert sum(r[outcome] for r in per_day) == sum(r[outcome] for r in exact)


@pytest.mark.parametrize("selected", [[], ["winter-winback"], ["spring-renewals", "winter-winback"]],
                         ids=["all", "one", "two"])
@pytest.mark.parametrize("span", sorted(CAMPAIGN_RANGES))
async def test_campaign_slowest_turns_are_exact_on_every_range(campaigns: asyncpg.Connection, span: str,
                                                              selected: list[str]) -> None:
    frm, to = CAMPAIGN_RANGES[span]
    expected = await campaigns.fetch(
        """SELECT t.voice_to_voice_ms, c.campaign FROM turns t LEFT JOIN calls c ON c.call_id = t.call_id
           WHERE t.started_at BETWEEN $1 AND $2 AND t.voice_to_voice_ms IS NOT NULL
             AND (cardinality($3::text[]) = 0 OR c.campaign = ANY($3))
           ORDER BY 1 DESC LIMIT 50""", frm, to, selected)
    got = await _campaign_query(campaigns, "Slowest turns (voice-to-voice)", span, selected)
    assert got and [r["voice_to_voice_ms"] for r in got] == [r[0] for r in expected]
    assert not selected or {r["campaign"] for r in got} <= set(selected)
    for row in got:   # each row is a real turn of its call
        assert await campaigns.fetchval(
            "SELECT voice_to_voice_ms FROM turns WHERE call_id = $1 AND turn_number = $2",
            row["call_id"], row["turn"]) == row["voice_to_voice_ms"]


# ---------------------------------------------------------------------------------------------------------
# Turn latency per single breakdown (turn_latency_breakdown_1h)
# ---------------------------------------------------------------------------------------------------------


async def test_breakdown_rows_add_up_the_hour_rows(ledger: asyncpg.Connection) -> None:
    for breakdown in rollup.TURN_BREAKDOWNS:
        value = "NULL::text" if breakdown == "all" else f"h.{breakdown}"
        expected = await ledger.fetch(
            f"""SELECT h.bucket, {value} AS value, sum(h.turns) AS turns, sum(h.llm_ttft_samples) AS samples,
                       min(h.llm_ttft_min_ms) AS lo, max(h.llm_ttft_max_ms) AS hi,
                       (SELECT array_agg(x.n ORDER BY x.b) FROM (
                          SELECT u.b, sum(u.n) AS n FROM turn_latency_1h z
                          CROSS JOIN LATERAL unnest(z.llm_ttft_bins, z.llm_ttft_counts) AS u(b, n)
                          WHERE z.bucket = h.bucket AND ({value.replace('h.', 'z.')}) IS NOT DISTINCT FROM {value}
                          GROUP BY u.b) x) AS counts
                FROM turn_latency_1h h GROUP BY 1, 2 ORDER BY 1, 2""")
        got = await ledger.fetch(
            """SELECT bucket, value, turns, llm_ttft_samples AS samples, llm_ttft_min_ms AS lo, llm_ttft_max_ms AS hi,
                      llm_ttft_counts AS counts
               FROM turn_latency_breakdown_1h WHERE breakdown = $1 ORDER BY 1, 2""", breakdown)
        assert [tuple(r) for r in got] == [tuple(r) for r in expected], breakdown
    sorted_unique = await ledger.fetchval(
        "SELECT bool_and(voice_to_voice_bins = ARRAY(SELECT DISTINCT b FROM unnest(voice_to_voice_bins) b ORDER BY b)) "
        "FROM turn_latency_breakdown_1h")
    assert sorted_unique


# Every panel that the breakdown rows serve, with the variable values that route it to every dimension set of
# turn_latency_1h instead (a filter listing every value: the same turns, the other branch).
BREAKDOWN_PANELS = ("p95 Voice-to-voice", "Voice-to-voice: p50 / p95 / p99", "Voice-to-voice: p95 by agent",
                    "STT (user stopped → final transcript): p95 by STT provider",
                    "LLM time to first token: p95 by LLM model", "LLM time to first token: p95 by provider",
                    "LLM time to first token: p95 by agent", "TTS time to first byte: p95 by TTS provider")
EVERY_AGENT = {"agent": ["sales", "receptionist"]}
EVERY_MODEL = {"model": ["gpt-4o", "gpt-4o-mini"]}


@pytest.mark.parametrize("span", ["days", "hours"])
@pytest.mark.parametrize("title", BREAKDOWN_PANELS)
async def test_breakdown_rows_give_the_same_percentiles_as_every_dimension_set(ledger: asyncpg.Connection,
                                                                              span: str, title: str) -> None:
    uid = DASHBOARD_UIDS["latency"]
    merged = await _query(ledger, uid, title, span)
    assert merged
    for values in (EVERY_AGENT, EVERY_MODEL, {**EVERY_AGENT, **EVERY_MODEL}):
        assert [tuple(r) for r in await _query(ledger, uid, title, span, values)] == [tuple(r) for r in merged]


@pytest.mark.parametrize("span", ["days", "hours"])
async def test_breakdown_series_match_percentile_cont_per_hour_within_the_bound(ledger: asyncpg.Connection,
                                                                               span: str) -> None:
    frm, to = RANGES[span]
    for title, metric, column in (("LLM time to first token: p95 by LLM model", "llm_ttft_ms", "llm_model"),
                                  ("Voice-to-voice: p95 by agent", "voice_to_voice_ms", "agent")):
        board, sql = _panel_sql(DASHBOARD_UIDS["latency"], title)
        rows = await ledger.fetch(render(sql, variables=variables_from_dashboard(board), frm=frm, to=to,
                                         interval=timedelta(hours=1)))
        exact = {(r[0], r[1]): r[2] for r in await ledger.fetch(
            f"""SELECT floor(extract(epoch FROM date_bin('1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
                       / 3600) * 3600, {column}, percentile_cont(0.95) WITHIN GROUP (ORDER BY {metric})
                FROM turns WHERE date_bin('1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') BETWEEN $1 AND $2
                GROUP BY 1, 2""", frm, to)}
        assert {(_epoch(r["time"]), r["metric"]) for r in rows} == {(float(k[0]), k[1]) for k in exact}
        for r in rows:
            want = exact[(_epoch(r["time"]), r["metric"])]
            assert abs(r["p95"] - want) <= BOUND * want, (title, r, want)


async def test_only_one_agent_reads_its_breakdown_rows(ledger: asyncpg.Connection) -> None:
    frm, to = RANGES["hours"]
    got = (await _query(ledger, DASHBOARD_UIDS["latency"], "p95 Voice-to-voice", "hours", {"agent": ["sales"]}))[0]
    exact = await ledger.fetchval("SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY voice_to_voice_ms) FROM turns "
                                  "WHERE started_at BETWEEN $1 AND $2 AND agent = 'sales'", frm, to)
    assert abs(got["p95"] - exact) <= BOUND * exact


# ---------------------------------------------------------------------------------------------------------
# Span stages (stage_latency_1m / latency_stage_1h) against the view latency_stage_1m
# ---------------------------------------------------------------------------------------------------------


# What latency_stage_1m computes, straight from the spans (migration 0002's select).
RAW_STAGE_MINUTES = """SELECT date_bin('1 minute', start_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
  stage, provider, model, count(*) AS samples, count(ttfb_ms) AS ttfb_samples, avg(ttfb_ms) AS avg_ttfb_ms,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY ttfb_ms) AS p50_ttfb_ms,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY ttfb_ms) AS p95_ttfb_ms,
  percentile_cont(0.99) WITHIN GROUP (ORDER BY ttfb_ms) AS p99_ttfb_ms,
  avg(duration_ms) AS avg_duration_ms, percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM spans WHERE stage IN ('stt', 'llm', 'tts', 'tool') GROUP BY 1, 2, 3, 4"""
RAW_COLUMNS = ("bucket", "stage", "provider", "model", "samples", "ttfb_samples", "avg_ttfb_ms", "p50_ttfb_ms",
               "p95_ttfb_ms", "p99_ttfb_ms", "avg_duration_ms", "p95_duration_ms")


async def _run_refresh_policies(db: asyncpg.Connection) -> int:
    """Run every continuous-aggregate refresh job now, as TimescaleDB's scheduler would; how many ran."""
    jobs = [r[0] for r in await db.fetch("SELECT job_id FROM timescaledb_information.jobs "
                                         "WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY job_id")]
    for job in jobs:   # created in order: latency_stage_1m's before latency_stage_1h's
        await db.execute(f"CALL run_job({int(job)})")
    return len(jobs)


async def test_stage_minute_rows_are_the_view_rows(ledger: asyncpg.Connection) -> None:
    order = "ORDER BY bucket, stage, provider, model"
    if "latency_stage_1m" in await _continuous_aggregates(ledger):
        # TimescaleDB keeps both levels: after its refresh policies ran, they still hold every span, however
        # old (spans older than a policy's window must not vanish behind the materialization watermark)
        assert await _run_refresh_policies(ledger) == 2
        view = await ledger.fetch(f"SELECT * FROM latency_stage_1m {order}")
        table = await ledger.fetch(f"SELECT * FROM ({RAW_STAGE_MINUTES}) r {order}")
    else:
        view = await ledger.fetch(f"SELECT * FROM latency_stage_1m {order}")
        table = await ledger.fetch(f"SELECT * FROM stage_latency_1m {order}")
    assert view and len(view) == len(table)
    for v, t in zip(view, table):
        assert all(_close(v[k], t[k]) for k in v.keys()), (dict(v), dict(t))
    hours = await ledger.fetch(f"SELECT * FROM latency_stage_1h {order}")
    expected = await ledger.fetch(
        f"""SELECT date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, stage, provider, model,
                   sum(samples) AS samples, sum(avg_ttfb_ms * ttfb_samples) AS ttfb_sum_ms, max(p95_ttfb_ms) AS hi
            FROM latency_stage_1m GROUP BY 1, 2, 3, 4 {order}""")
    assert [(r["bucket"], r["stage"], r["samples"], r["max_p95_ttfb_ms"]) for r in hours] == \
        [(r["bucket"], r["stage"], r["samples"], r["hi"]) for r in expected]
    assert all(_close(h["ttfb_sum_ms"], e["ttfb_sum_ms"]) for h, e in zip(hours, expected))


async def test_old_and_recent_spans_both_stay_in_the_stage_minutes(db: asyncpg.Connection) -> None:
    """A span far older than any refresh window and a recent one: both are in the minute rows after the
    backend's refresh ran (the deriver's on plain PostgreSQL, TimescaleDB's policies where it keeps them), and
    so is a late span of an old minute stored afterwards (migration 0014)."""
    insert = """INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, call_id, stage, name,
                                   provider, model, ttfb_ms, attributes)
                VALUES ($1, $1, 40, 't-' || $2, 's-' || $2, 'call-' || $2, 'llm', 'llm', 'openai', 'gpt-4o', $3,
                        '{}')"""
    now = await db.fetchval("SELECT date_trunc('minute', now())")
    await db.execute(insert, now - timedelta(days=20), "old", 100.0)
    await db.execute(insert, now - timedelta(minutes=10), "recent", 200.0)
    timescale = "latency_stage_1m" in await _continuous_aggregates(db)

    async def refreshed() -> list[asyncpg.Record]:
        if timescale:
            assert await _run_refresh_policies(db) == 2
            return await db.fetch("SELECT * FROM latency_stage_1m ORDER BY bucket, stage, provider, model")
        await dashboard_data.fill_rollups(db)
        return await db.fetch("SELECT * FROM stage_latency_1m ORDER BY bucket, stage, provider, model")

    async def raw() -> list[asyncpg.Record]:
        return await db.fetch(f"SELECT * FROM ({RAW_STAGE_MINUTES}) r ORDER BY bucket, stage, provider, model")

    def columns(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:   # the view's columns (no tenant)
        return [tuple(r[k] for k in RAW_COLUMNS) for r in rows]

    got = await refreshed()
    assert [r["samples"] for r in got] == [1, 1]
    assert columns(got) == columns(await raw())
    await db.execute(insert, now - timedelta(days=20, seconds=-5), "late", 300.0)   # the old minute, later
    got = await refreshed()
    assert [r["samples"] for r in got] == [2, 1]
    assert len(got) == 2 and all(_close(g, e) for a, b in zip(columns(got), columns(await raw()))
                                 for g, e in zip(a, b))


# What the stage panels computed from the minutes of latency_stage_1m alone (before 0007).
STAGE_TABLE_FROM_MINUTES = """SELECT r.stage, coalesce(r.provider, 'unknown') AS provider,
  coalesce(r.model, 'unknown') AS model, sum(r.samples) AS spans,
  sum(r.avg_ttfb_ms * r.ttfb_samples) / NULLIF(sum(r.ttfb_samples), 0) AS avg_ttfb_ms,
  max(r.p95_ttfb_ms) AS worst_minute_p95_ttfb_ms,
  sum(r.avg_duration_ms * r.samples) / NULLIF(sum(r.samples), 0) AS avg_duration_ms
FROM latency_stage_1m r WHERE r.bucket BETWEEN $1 AND $2 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""

STAGE_SERIES_FROM_MINUTES = """SELECT floor(extract(epoch FROM r.bucket) / 3600) * 3600 AS "time",
  r.stage || ' · ' || coalesce(r.provider, 'unknown') || ' / ' || coalesce(r.model, 'unknown') AS metric,
  sum(r.p95_ttfb_ms * r.ttfb_samples) / sum(r.ttfb_samples) AS p95_ttfb
FROM latency_stage_1m r WHERE r.bucket BETWEEN $1 AND $2 AND r.ttfb_samples > 0 AND r.stage IN ('stt', 'llm', 'tts')
GROUP BY 1, 2 ORDER BY 1, 2"""


@pytest.mark.parametrize("span", sorted(RANGES))
async def test_stage_panels_equal_the_minute_view_on_every_range(ledger: asyncpg.Connection, span: str) -> None:
    frm, to = RANGES[span]
    uid = DASHBOARD_UIDS["latency"]
    got = await _query(ledger, uid, "Stages by provider / model", span)
    expected = await ledger.fetch(STAGE_TABLE_FROM_MINUTES, frm, to)
    assert got and len(got) == len(expected)
    for g, e in zip(got, expected):
        assert all(_close(float(g[k]) if k == "spans" else g[k], float(e[k]) if k == "spans" else e[k])
                   for k in e.keys()), (dict(g), dict(e))
    board, sql = _panel_sql(uid, "Stage TTFB p95 by provider / model")
    series = await ledger.fetch(render(sql, variables=variables_from_dashboard(board), frm=frm, to=to,
                                       interval=timedelta(hours=1)))
    expected = await ledger.fetch(STAGE_SERIES_FROM_MINUTES, frm, to)
    assert sorted((_epoch(r[0]), r[1]) for r in series) == [(float(r[0]), r[1]) for r in expected]
    values = {(_epoch(r[0]), r[1]): r[2] for r in series}
    assert all(_close(values[(float(r[0]), r[1])], r[2]) for r in expected)


# ---------------------------------------------------------------------------------------------------------
# Events (event_counts_1m / event_counts_1h)
# ---------------------------------------------------------------------------------------------------------

_KIND = "category, event, level"


async def test_event_rows_count_the_events_and_the_calls(ledger: asyncpg.Connection) -> None:
    for table, step in (("event_counts_1m", "1 minute"), ("event_counts_1h", "1 hour")):
        expected = await ledger.fetch(
            f"""SELECT date_bin('{step}', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, {_KIND},
                       count(*) AS events, max(time) AS last_time
                FROM events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""")
        got = await ledger.fetch(f"SELECT bucket, {_KIND}, events, last_time FROM {table} ORDER BY 1, 2, 3, 4")
        assert [tuple(r) for r in got] == [tuple(r) for r in expected], table
    # every call is counted once per kind, in the bucket of its first event of that kind
    calls = await ledger.fetch(f"SELECT {_KIND}, sum(calls) FROM event_counts_1m GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    distinct = await ledger.fetch(f"SELECT {_KIND}, count(DISTINCT call_id) FROM call_events "
                                  "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    assert [tuple(r) for r in calls] == [tuple(r) for r in distinct]
    twice = await ledger.fetchval("SELECT count(*) FROM events WHERE event = 'user.message_received'")
    assert twice == 2 * dashboard_data.CALLS, "a kind a call has twice, in two minutes"


async def test_a_call_is_counted_once_across_its_trace_id(db: asyncpg.Connection) -> None:
    """Events stored under a trace id before the trace named its call belong to that call (call_events)."""
    await db.execute("INSERT INTO call_traces (trace_id, call_id) VALUES ('t-1', 'call-x')")
    await db.execute(
        """INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, category, event, level, source)
           SELECT v.time::timestamptz, v.id, v.call_id, v.explicit, v.trace_id, 'user', 'user.message_received',
                  'INFO', 'log'
           FROM (VALUES ('2026-02-01 10:00:10+00', 'a', 't-1', false, 't-1'),
                        ('2026-02-01 10:05:10+00', 'b', 'call-x', true, 't-1'),
                        ('2026-02-01 10:07:10+00', 'c', 't-2', false, 't-2'))
                AS v(time, id, call_id, explicit, trace_id)""")
    await db.execute(rollup.MARK_ALL_EVENT_BUCKETS)
    await rollup.drain_rollups(db)
    assert await db.fetchval("SELECT sum(calls) FROM event_counts_1h") == 2     # call-x and t-2
    # call-x's first message is the one stored under its trace id (minute 0), not the one at minute 5
    assert [(r[0].minute, r[1]) for r in await db.fetch("SELECT bucket, calls FROM event_counts_1m ORDER BY 1")] == \
        [(0, 1), (5, 0), (7, 1)]


EVENT_RANGES = {
    **RANGES,
    "short": (BASE + timedelta(minutes=20, seconds=30), BASE + timedelta(minutes=70, seconds=10)),
    "minutes": (BASE + timedelta(minutes=12, seconds=7), BASE + timedelta(hours=5, minutes=3, seconds=2)),
    "long_edges": (BASE + timedelta(minutes=43, seconds=41) - timedelta(days=2),
                   BASE + timedelta(minutes=43, seconds=41)),
}


async def _events_query(conn: asyncpg.Connection, title: str, span: str, index: int = 0,
                        values: dict[str, Any] | None = None, interval: timedelta = timedelta(minutes=5)
                        ) -> list[asyncpg.Record]:
    board = BOARDS[DASHBOARD_UIDS["events"]]
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])] if p["title"] == title]
    frm, to = EVENT_RANGES[span]
    sql = panels[index]["targets"][0]["rawSql"]
    return await conn.fetch(render(sql, variables=variables_from_dashboard(board, values or {}), frm=frm, to=to,
                                   interval=interval))


@pytest.mark.parametrize("span", sorted(EVENT_RANGES))
async def test_event_counts_are_exact_on_every_range(ledger: asyncpg.Connection, span: str) -> None:
    frm, to = EVENT_RANGES[span]
    for title, column in (("Events by category", "category"), ("Events by level", "level")):
        got: dict[str, int] = {}
        for r in await _events_query(ledger, title, span):
            got[r["metric"]] = got.get(r["metric"], 0) + r["events"]
        exact = {r[0]: r[1] for r in await ledger.fetch(
            f"SELECT {column}, count(*) FROM events WHERE time BETWEEN $1 AND $2 GROUP BY 1", frm, to)}
        assert got == exact, title
    webhooks = await ledger.fetch("SELECT event, count(*) FROM events WHERE time BETWEEN $1 AND $2 "
                                  "AND category = 'webhook' GROUP BY 1", frm, to)
    counts = (await _events_query(ledger, "Webhook deliveries", span))[0]
    exact = {r[0]: r[1] for r in webhooks}
    assert counts["Sent"] == exact.get("webhook.sent", 0)
    assert counts["Failed"] == exact.get("webhook.response_failed", 0)
    assert counts["Retries exhausted"] == exact.get("webhook.retry_exhausted", 0)
    over_time = await _events_query(ledger, "Webhook deliveries over time", span)
    assert sum(r["deliveries"] for r in over_time) == sum(exact.values())
    some = await _events_query(ledger, "Events by category", span, values={"level": ["ERROR", "WARNING"]})
    assert sum(r["events"] for r in some) == await ledger.fetchval(
        "SELECT count(*) FROM events WHERE time BETWEEN $1 AND $2 AND level IN ('ERROR', 'WARNING')", frm, to)


@pytest.mark.parametrize("span", sorted(EVENT_RANGES))
async def test_events_by_type_counts_events_and_first_calls_on_every_range(ledger: asyncpg.Connection,
                                                                          span: str) -> None:
    frm, to = EVENT_RANGES[span]
    got = {(r["category"], r["event"], r["level"]): r for r in await _events_query(ledger, "Events by type", span)}
    short = to - frm <= timedelta(hours=1)
    # long ranges count a call in the range of its first event of the kind; short ones every call in it
    calls = ("count(DISTINCT call_id)" if short else
             "count(DISTINCT call_id) FILTER (WHERE NOT EXISTS (SELECT 1 FROM call_events p WHERE p.call_id = "
             "e.call_id AND p.event = e.event AND p.level = e.level AND p.category = e.category AND p.time < $1))")
    exact = await ledger.fetch(
        f"""SELECT {_KIND}, count(*) AS events, {calls} AS calls, max(time) AS last_seen
            FROM call_events e WHERE time BETWEEN $1 AND $2 GROUP BY 1, 2, 3""", frm, to)
    assert exact and set(got) == {(r[0], r[1], r[2]) for r in exact}
    for r in exact:
        g = got[(r[0], r[1], r[2])]
        assert (g["events"], g["calls"], g["last_seen"]) == (r["events"], r["calls"], r["last_seen"]), dict(g)
    assert got[("agent", "agent.greeting_sent", "INFO")]["display_name"] != "agent.greeting_sent"


# The event lists as they read before 0007: every matching row of the range, sorted.
LISTS_FROM_ROWS = {
    ("Webhook deliveries", 1): "category = 'webhook' AND event <> 'webhook.queued'",
    ("Path errors", 0): "event = 'path.error'",
    ("Transfers", 0): "(category = 'transfer' OR event LIKE 'tool.transfer.%')",
}


@pytest.mark.parametrize("span", sorted(EVENT_RANGES))
async def test_event_lists_are_the_newest_rows_on_every_range(ledger: asyncpg.Connection, span: str) -> None:
    frm, to = EVENT_RANGES[span]
    for (title, index), condition in LISTS_FROM_ROWS.items():
        expected = await ledger.fetch(f"SELECT time, call_id FROM call_events WHERE time BETWEEN $1 AND $2 "
                                      f"AND {condition} ORDER BY time DESC, call_id LIMIT 500", frm, to)
        got = await _events_query(ledger, title, span, index)
        assert sorted((r["time"], r["call_id"]) for r in got) == sorted(tuple(r) for r in expected), title
        assert [r["time"] for r in got] == sorted((r["time"] for r in got), reverse=True)
    failed = await _events_query(ledger, "Failed integrations and tools", span)
    expected = await ledger.fetch(
        """SELECT started_at, call_id FROM tool_calls WHERE started_at BETWEEN $1 AND $2 AND is_error
           UNION ALL
           SELECT time, call_id FROM call_events WHERE time BETWEEN $1 AND $2
             AND event IN ('integration.failed', 'tool.transfer.failed', 'integration.approval_denied')""", frm, to)
    assert sorted((r["time"], r["call_id"]) for r in failed) == sorted(tuple(r) for r in expected)


async def test_an_event_list_stops_at_500_of_the_newest(db: asyncpg.Connection) -> None:
    """A kind with more rows than the list shows: the newest 500, read in windows back from the end."""
    await db.execute(
        """INSERT INTO events (time, event_id, call_id, category, event, level, source)
           SELECT TIMESTAMPTZ '2026-03-01 00:00:00+00' + i * interval '7 seconds', 'w' || i, 'c' || (i / 50),
                  'webhook', 'webhook.sent', 'INFO', 'log'
           FROM generate_series(1, 3000) AS i""")
    frm = datetime(2026, 2, 20, tzinfo=timezone.utc)
    to = datetime(2026, 3, 1, 6, tzinfo=timezone.utc)
    board = BOARDS[DASHBOARD_UIDS["events"]]
    sql = [p for top in board["panels"] for p in [top, *top.get("panels", [])]
           if p["title"] == "Webhook deliveries"][1]["targets"][0]["rawSql"]
    rows = await db.fetch(render(sql, variables=variables_from_dashboard(board), frm=frm, to=to))
    expected = await db.fetch("SELECT time FROM events WHERE time <= $1 ORDER BY time DESC LIMIT 500", to)
    assert [r["time"] for r in rows] == [r[0] for r in expected]


async def test_breakdown_rows_store_the_percentiles_of_their_histogram(ledger: asyncpg.Connection) -> None:
    from dashboards import latency

    assert set(latency._STORED_QUANTILES) == set(rollup.STORED_QUANTILES)
    columns = ", ".join(rollup.quantile_column("tts_ttfb", q) for q in rollup.STORED_QUANTILES)
    rows = await ledger.fetch(
        f"""SELECT ARRAY[{columns}] AS stored,
                   callscope_hist_quantiles(tts_ttfb_bins, tts_ttfb_counts, $1, tts_ttfb_min_ms, tts_ttfb_max_ms) AS walked
            FROM turn_latency_breakdown_1h WHERE tts_ttfb_samples > 0""", list(rollup.STORED_QUANTILES))
    assert rows and all(r["stored"] == r["walked"] for r in rows)
