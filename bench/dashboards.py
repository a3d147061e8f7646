"""Dashboard benchmark (run by hand, never in CI): every panel, variable and alert query of the generated
provisioning, expanded the way Grafana expands it, timed on a large database without and with ANALYZE.

    python -m bench.dashboards --calls 200000            # build, fill the rollups, time (median of 3)
    python -m bench.dashboards --reuse --calls 200000    # time an existing benchmark database again

1. ``--seed-calls`` simulated calls (collector/simulate/) go through a real collector into a fresh database
   (turns, calls, spans, events and tool calls derived by the real pipeline).
2. They are cloned in SQL (generate_series) until there are ``--calls`` calls: new call / trace / span /
   event ids, every row of a clone shifted by the same offset, offsets spread uniformly over ``--days`` days
   ending now. The seed rows are then removed.
3. The rollups are filled the way the deriver keeps them (every bucket marked, then refreshed), timed. With
   ``--reuse`` the database is migrated to this version first, and rollups it adds (empty, or marked by the
   migration's backfill) are filled the same way.
4. Queries: every SQL target of every dashboard, every query variable and every alert rule, rendered with
   bench/grafana_emulator.py (template variables at their defaults, "All"; ``call_id`` a median call), for
   the ranges 1 h, 24 h and 30 days ending now (alert rules: their own window and 24 h), as the reader role
   with its settings (``jit = off`` …). Median of ``--repeat`` runs, client wall time (planning included).
   First on the never-analyzed tables, then after ``ANALYZE``.
5. ``bench/results/dashboards-<time>.json`` (not committed) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit
from typing import Any

import asyncpg
import yaml

from bench.grafana_emulator import render, variables_from_dashboard

from dashboards.generate import DashboardOptions, render_provisioning  # noqa: E402
from storage import rollup  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from storage.tenants import create_tenant  # noqa: E402

RESULTS = Path(__file__).with_name("results")
_READER_PASSWORD = "callscope-bench-reader"  # a benchmark server on loopback
TABLES = ("calls", "turns", "spans", "events", "tool_calls", "call_traces")
# Grafana's $__interval for a ~1000 px wide panel.
RANGES = {"1h": (timedelta(hours=1), timedelta(seconds=5)),
          "24h": (timedelta(hours=24), timedelta(minutes=1)),
          "30d": (timedelta(days=30), timedelta(minutes=30))}


def _admin_url(url: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/postgres"


async def _seed(url: str, calls: int) -> None:
    from collector.server import Collector
    from collector.settings import build_settings
    from collector.simulate import run_simulation

    settings = build_settings({"database_url": url, "bind_address": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                               "auth": "off",   # an in-process collector on loopback, seeded by the simulator
                               "log_format": "text", "log_level": "warning"}, environ={})
    running = Collector(replace(settings), run_migrations=False)
    await running.start()
    try:
        report = await run_simulation(f"127.0.0.1:{running.grpc.port}", calls=calls, concurrency=8, seed=11)
    finally:
        await running.close(grace_s=5)
    print(f"seed: {report}", file=sys.stderr)


# Every row of clone k is shifted by the same offset: the clone's slot (days / clones apart) plus a jitter
# inside the slot that depends on the seed call, so starts are spread uniformly.
_SHIFT = "(s.t0 + (k - 1) * s.slot + (abs(hashtext(%s || k::text)) %% 1000) / 1000.0 * s.slot - s.seed_t0)"

_SHIFTED = {
    "calls": ("started_at", "ended_at", "last_seen_at", "updated_at"),
    "turns": ("started_at", "ended_at", "user_stopped_at", "stt_final_at", "llm_request_at", "llm_first_token_at",
              "tts_request_at", "tts_first_audio_at", "agent_started_at"),
    "spans": ("start_time", "end_time"),
    "events": ("time",),
    "tool_calls": ("started_at", "ended_at"),
    "call_traces": (),  # trace id -> call id: what resolves events stored before their call was known
}
_RENAMED = {
    "call_id": "x.call_id || '-' || k",
    "trace_id": "CASE WHEN x.trace_id IS NOT NULL THEN md5(x.trace_id || k) END",
    "trace_ids": "ARRAY(SELECT md5(tid || k) FROM unnest(x.trace_ids) AS tid)",
    "event_id": "md5(x.event_id || k)",
}


async def _clone_sql(connection: asyncpg.Connection, table: str) -> str:
    columns = [r["column_name"] for r in await connection.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
        "ORDER BY ordinal_position", table)]
    exprs = []
    for column in columns:
        if column in _SHIFTED[table]:
            exprs.append(f"x.{column} + {_SHIFT % 'x.call_id'}")
        else:
            exprs.append(_RENAMED.get(column, f"x.{column}"))
    return (f"INSERT INTO {table} ({', '.join(columns)})\nSELECT {', '.join(exprs)}\n"
            f"FROM seed_{table} x, shift s, generate_series($1::int, $2::int) AS k")


async def _clone(connection: asyncpg.Connection, *, calls: int, days: int) -> dict[str, float]:
    seed_calls = await connection.fetchval("SELECT count(*) FROM calls WHERE started_at IS NOT NULL")
    clones = max(1, -(-calls // seed_calls))
    timings: dict[str, float] = {}
    for table in TABLES:
        await connection.execute(f"CREATE TABLE seed_{table} AS SELECT * FROM {table}")
        await connection.execute(f"TRUNCATE {table}")
    await connection.execute("DELETE FROM seed_calls WHERE started_at IS NULL")
    await connection.execute(
        "CREATE TABLE shift AS SELECT now() - make_interval(days => $1) AS t0, "
        "make_interval(days => $1) / $2 AS slot, (SELECT min(started_at) FROM seed_calls) AS seed_t0",
        days, clones)
    step = max(1, 20000 // seed_calls)
    for table in TABLES:
        start = time.perf_counter()
        # the shift of a row depends on its call (the same for every row of a call)
        sql = await _clone_sql(connection, table)
        for first in range(1, clones + 1, step):
            await connection.execute(sql, first, min(clones, first + step - 1))
        timings[table] = time.perf_counter() - start
        print(f"{table}: {clones} clones in {timings[table]:.1f} s", file=sys.stderr)
    for table in TABLES:
        await connection.execute(f"DROP TABLE seed_{table}")
    await connection.execute("DROP TABLE shift")
    return timings


# (name, mark every bucket, refresh, a table the refresh fills, its queue)
_ROLLUPS = (
    ("turn", rollup.MARK_ALL_TURN_BUCKETS, rollup.refresh_turn_rollup, "turn_latency_1m", "turn_rollup_dirty"),
    ("call", rollup.MARK_ALL_CALL_BUCKETS, rollup.refresh_call_rollup, "call_status_1h", "call_rollup_dirty"),
    ("stage", rollup.MARK_ALL_STAGE_BUCKETS, rollup.refresh_stage_rollup, "stage_latency_1m", "stage_rollup_dirty"),
    ("event", rollup.MARK_ALL_EVENT_BUCKETS, rollup.refresh_event_rollup, "event_counts_1m", "event_rollup_dirty"),
)


async def _fill_rollups(connection: asyncpg.Connection, *, only_empty: bool = False) -> dict[str, Any]:
    """Fill the rollups the way the deriver keeps them: every bucket marked, then refreshed in rounds of 2000
    buckets, timed per rollup. ``only_empty`` (``--reuse``): mark only rollups that are empty with an empty
    queue (new in this version); whatever is marked (a migration's backfill) is refreshed either way."""
    out: dict[str, Any] = {}
    for name, mark, refresh, table, queue in _ROLLUPS:
        if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            continue  # a continuous aggregate keeps it (TimescaleDB)
        start = time.perf_counter()
        marked = False
        if not only_empty or not await connection.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {table}) OR EXISTS (SELECT 1 FROM {queue})"):
            await connection.execute(mark)
            marked = True
        queued = time.perf_counter()
        buckets = 0
        while True:
            done = await refresh(connection, 2000)
            if not done:
                break
            buckets += done
            print(f"{name} rollup: {buckets} buckets", file=sys.stderr)
        end = time.perf_counter()
        if buckets:
            out[name] = {"marked_all": marked, "mark_s": round(queued - start, 1), "buckets": buckets,
                         "refresh_s": round(end - queued, 1),
                         "refresh_ms_per_bucket": round((end - queued) * 1000 / buckets, 2)}
    return out


def _queries() -> list[dict[str, Any]]:
    """(dashboard, title, sql, format, ranges) of every target, query variable and alert rule."""
    files = render_provisioning(DashboardOptions(timescaledb=False))
    out: list[dict[str, Any]] = []
    for rel, text in sorted(files.items()):
        if not rel.endswith(".json"):
            continue
        board = json.loads(text)
        panels = []
        for p in board["panels"]:
            panels.append(p)
            panels.extend(p.get("panels", []))
        for p in panels:
            for target in p.get("targets", []):
                # call-detail queries are keyed by the call id, not by the range
                ranges = ["24h"] if board["uid"] == "callscope-call-detail" else list(RANGES)
                out.append({"board": board, "dashboard": board["uid"].removeprefix("callscope-"),
                            "title": p["title"], "sql": target["rawSql"], "ranges": ranges})
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                out.append({"board": board, "dashboard": board["uid"].removeprefix("callscope-"),
                            "title": f"variable {v['name']}", "sql": v["query"], "ranges": list(RANGES)})
    rules = yaml.safe_load(files["alerting/callscope-rules.yaml"])
    for group in rules["groups"]:
        for rule in group["rules"]:
            a = next(d for d in rule["data"] if d["refId"] == "A")
            window = int(a["relativeTimeRange"]["from"])
            out.append({"board": None, "dashboard": "alert", "title": rule["title"], "sql": a["model"]["rawSql"],
                        "ranges": [f"{window // 60}m", "24h"]})
    # the same variable on two dashboards is one query
    seen: set[tuple[str, str]] = set()
    unique = []
    for q in out:
        key = (q["title"], q["sql"])
        if q["title"].startswith("variable") and key in seen:
            continue
        seen.add(key)
        unique.append(q)
    return unique


def _range(name: str) -> tuple[timedelta, timedelta]:
    if name in RANGES:
        return RANGES[name]
    return timedelta(minutes=int(name.removesuffix("m"))), timedelta(seconds=15)


async def _reader_url(url: str) -> str:
    """A login role of tenant ``default`` (``callscope tenants create default``): it connects as a Grafana data
    source does, with the reader group's privileges and role settings (``jit = off``, statement timeout, …) and
    the tenant's row-level security (a role without a tenant mapping would read no rows)."""
    connection = await asyncpg.connect(url)
    try:
        _, role, _ = await create_tenant(connection, "default", _READER_PASSWORD)
    finally:
        await connection.close()
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(role)}:{quote(_READER_PASSWORD)}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def _time_all(url: str, queries: list[dict[str, Any]], *, repeat: int, label: str) -> None:
    connection = await asyncpg.connect(await _reader_url(url))
    try:
        now = await connection.fetchval("SELECT max(started_at) FROM calls")
        call_id = await connection.fetchval(
            "SELECT call_id FROM calls WHERE started_at > $1::timestamptz - interval '1 hour' "
            "ORDER BY turn_count DESC, call_id LIMIT 1", now)
        for i, q in enumerate(queries):
            variables = variables_from_dashboard(q["board"], {"call_id": call_id}) if q["board"] else {}
            for name in q["ranges"]:
                span, interval = _range(name)
                sql = render(q["sql"], variables=variables, frm=now - span, to=now, interval=interval,
                             timescaledb=False)
                times = []
                rows = 0
                for _ in range(repeat):
                    start = time.perf_counter()
                    try:
                        result = await connection.fetch(sql)
                    except asyncpg.QueryCanceledError:
                        # the reader's statement_timeout: recorded as such, the other queries still run
                        times = [math.inf]
                        break
                    times.append((time.perf_counter() - start) * 1000)
                    rows = len(result)
                ms = statistics.median(times)
                q.setdefault("ms", {}).setdefault(label, {})[name] = round(ms, 1) if math.isfinite(ms) else None
                q.setdefault("rows", {})[name] = rows
                print(f"{label} {q['dashboard']} | {q['title']} | {name}: "
                      f"{'timeout' if not math.isfinite(ms) else f'{ms:,.0f} ms'}", file=sys.stderr)
        print(f"{label}: {len(queries)} queries timed", file=sys.stderr)
    finally:
        await connection.close()


def _cell(q: dict[str, Any], name: str) -> str:
    if name not in q["ranges"]:
        return ""
    return " / ".join(_ms(q["ms"][label].get(name)) for label in ("unanalyzed", "analyzed") if label in q["ms"])


def _ms(value: float | None) -> str:
    return "timeout" if value is None else f"{value:,.0f}"


def _table(queries: list[dict[str, Any]]) -> str:
    """Markdown: per query, milliseconds without statistics / after ANALYZE, per range."""
    lines = ["| dashboard | query | 1 h | 24 h | 30 d | rows (30 d) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    alerts = ["| alert rule | window | own window | 24 h |", "| --- | --- | ---: | ---: |"]
    for q in queries:
        if q["dashboard"] == "alert":
            own = q["ranges"][0]
            alerts.append(f"| {q['title']} | {own} | {_cell(q, own)} | {_cell(q, '24h')} |")
            continue
        last = q["ranges"][-1]
        lines.append(f"| {q['dashboard']} | {q['title']} | {_cell(q, '1h')} | {_cell(q, '24h')} | "
                     f"{_cell(q, '30d')} | {q['rows'][last]} |")
    return "\n".join(lines) + "\n\n" + "\n".join(alerts)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/callscope_bench_dashboards")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--seed-calls", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="time the existing database (no rebuild)")
    parser.add_argument("--only", default="", help="time only the queries whose dashboard or title contains this")
    parser.add_argument("--skip", default="", help="leave out the queries whose dashboard or title contains this")
    parser.add_argument("--no-analyze", action="store_true", help="time only without statistics")
    args = parser.parse_args()

    url = args.database_url
    build: dict[str, Any] = {}
    if args.reuse:
        start = time.perf_counter()
        await migrate(url)  # this version's schema and routines
        build["migrate_s"] = round(time.perf_counter() - start, 1)
        connection = await asyncpg.connect(url)
        try:
            build["rollups"] = await _fill_rollups(connection, only_empty=True)
        finally:
            await connection.close()
    else:
        name = url.rpartition("/")[2]
        admin = await asyncpg.connect(_admin_url(url))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        start = time.perf_counter()
        await migrate(url)
        await _seed(url, args.seed_calls)
        build["seed_s"] = time.perf_counter() - start
        connection = await asyncpg.connect(url)
        try:
            build["clone_s"] = await _clone(connection, calls=args.calls, days=args.days)
            build["rollups"] = await _fill_rollups(connection)
        finally:
            await connection.close()
    connection = await asyncpg.connect(url)
    try:
        build["rows"] = {t: await connection.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
        build["database_size"] = await connection.fetchval(
            "SELECT pg_size_pretty(pg_database_size(current_database()))")
        # never analyzed: drop whatever statistics an earlier run left
        await connection.execute("DELETE FROM pg_statistic WHERE starelid IN (SELECT c.oid FROM pg_class c "
                                 "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public')")
        await connection.execute("UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE relnamespace = "
                                 "'public'::regnamespace AND relkind IN ('r', 'i')")
    finally:
        await connection.close()
    print(json.dumps(build, indent=2, default=str), file=sys.stderr)

    queries = [q for q in _queries() if args.only.lower() in f"{q['dashboard']} {q['title']}".lower()
               and not (args.skip and args.skip.lower() in f"{q['dashboard']} {q['title']}".lower())]
    await _time_all(url, queries, repeat=args.repeat, label="unanalyzed")
    if args.no_analyze:
        for q in queries:
            q["ms"]["analyzed"] = {name: float("nan") for name in q["ranges"]}
    else:
        connection = await asyncpg.connect(url)
        await connection.execute("ANALYZE")
        await connection.close()
        await _time_all(url, queries, repeat=args.repeat, label="analyzed")

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = {"calls": args.calls, "build": build, "machine": platform.platform(), "when": stamp,
           "queries": [{k: v for k, v in q.items() if k not in ("board",)} for q in queries]}
    (RESULTS / f"dashboards-{stamp}.json").write_text(json.dumps(out, indent=2, default=str))
    print(_table(queries))


if __name__ == "__main__":
    asyncio.run(main())
