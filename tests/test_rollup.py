"""Rollups (storage/rollup.py): histogram percentiles within their bound, rows equal to what they summarize,
marks before / after a rewrite, marks committed during a refresh, and the dashboards' long-range branches
against the raw rows."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import timedelta
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


async def _rebuilt(db: asyncpg.Connection, table: str) -> list[asyncpg.Record]:
    return await db.fetch(f"SELECT * FROM {table} ORDER BY bucket, "
                          + (_TURN_DIMS if table.startswith("turn") else ", ".join(rollup.CALL_DIMENSIONS)))


async def _snapshot(db: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    return {t: await _rebuilt(db, t) for t in ("turn_latency_1m", "turn_latency_1h", "call_status_1h")}


async def _from_scratch(db: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    """What a full rebuild gives (every bucket marked and refreshed)."""
    await db.execute("TRUNCATE turn_latency_1m, turn_latency_1h, call_status_1h")
    await dashboard_data.fill_rollups(db)
    return await _snapshot(db)


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
        await db.execute(rollup.MARK_TURN_BUCKETS, ids)
        await db.execute(rollup.MARK_CALL_BUCKETS, ids)
        await db.execute("UPDATE turns SET started_at = started_at + interval '3 hours 7 minutes', "
                         "voice_to_voice_ms = voice_to_voice_ms * 2 WHERE call_id = ANY($1)", ids)
        await db.execute("UPDATE calls SET started_at = started_at + interval '3 hours', campaign = 'moved', "
                         "status = 'failed' WHERE call_id = ANY($1)", ids)
        await db.execute("DELETE FROM turns WHERE call_id = 'call-0004' AND turn_number = 4")
        await db.execute(rollup.MARK_TURN_BUCKETS, ids)
        await db.execute(rollup.MARK_CALL_BUCKETS, ids)
    assert await rollup.refresh_rollups(db, 1000) > 0
    kept = await _snapshot(db)
    assert await db.fetchval("SELECT count(*) FROM turn_rollup_dirty") == 0
    assert kept == await _from_scratch(db)
    assert await db.fetchval("SELECT sum(turns) FROM turn_latency_1h") == dashboard_data.CALLS * 4 - 1


async def test_a_mark_committed_during_a_refresh_is_kept(database_url: str) -> None:
    a = await asyncpg.connect(database_url)
    b = await asyncpg.connect(database_url)
    try:
        await dashboard_data.fill_ledger(a)
        tx = a.transaction()
        await tx.start()
        await a.execute("UPDATE turns SET voice_to_voice_ms = 99999 WHERE call_id = 'call-0005'")
        await a.execute(rollup.MARK_TURN_BUCKETS, ["call-0005"])
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
    ids = [r[0] for r in await db.fetch("SELECT call_id FROM calls")]
    assert ids and await db.fetchval("SELECT count(*) FROM turns") > 0
    await db.execute(rollup.MARK_TURN_BUCKETS, ids)
    await db.execute(rollup.MARK_CALL_BUCKETS, ids)
    await rollup.drain_rollups(db, 100)
    kept = await _snapshot(db)
    assert await db.fetchval("SELECT sum(turns) FROM turn_latency_1h") == await db.fetchval(
        "SELECT count(*) FROM turns WHERE started_at IS NOT NULL")
    assert kept == await _from_scratch(db)


async def test_the_reader_role_runs_without_jit(db: asyncpg.Connection) -> None:
    settings = await db.fetchval("SELECT setconfig FROM pg_db_role_setting WHERE setrole = "
                                 "'callscope_reader'::regrole AND setdatabase = 0")
    assert "jit=off" in settings
    grants = await db.fetch("SELECT table_name FROM information_schema.role_table_grants "
                            "WHERE grantee = 'callscope_reader' AND privilege_type = 'SELECT'")
    assert {"turn_latency_1m", "turn_latency_1h", "call_status_1h"} <= {r[0] for r in grants}


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
