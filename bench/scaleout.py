"""Scale-out benchmark (run by hand, never in CI): committed spans/s and derivation lag with 1, 2, 3 … collectors
on one database.

    python -m bench.scaleout --admin-url postgresql://postgres@127.0.0.1:55432/postgres --collectors 1 2 3

For each collector count: a fresh database (``--database``, dropped at the end unless ``--keep``), ``callscope
migrate``, that many ``callscope serve`` processes on free ports, then the same pre-encoded simulator traffic
(``--calls`` calls, traces and logs, ``--spans-per-request`` spans per Export) from ``--concurrency`` gRPC clients,
client i sending to collector i mod N (as a per-request load balancer would spread it). A span counts when its
Export returned OK (= committed).

Reported per run:

- spans/s: acknowledged spans / (last OK − first send);
- derivation lag: the age of the oldest underived write (``callscope_derive_backlog_oldest_seconds``, from
  ``dirty_calls``) sampled every 0.25 s while sending: median and max; and the drain, the time from the last OK
  until nothing is left to derive;
- CPU over the run (first send → drained), in cores: the collectors together, and PostgreSQL (postmaster and
  all its children, minus the backends of other databases, as bench/growth.py measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.growth import OtherDatabases, ServerCpu, _proc_ticks
from bench.harness import authorization, bench_key, free_port, recreate_database
from collector.simulate import encode_requests, generate_calls
from storage.migrate import migrate

RESULTS = Path(__file__).with_name("results")
_TICK = os.sysconf("SC_CLK_TCK")
_LAG_SQL = "SELECT coalesce(extract(epoch FROM now() - min(marked_at)), 0)::float8 FROM dirty_calls"


async def _start_collectors(database_url: str, count: int, workers: int) -> list[tuple[subprocess.Popen, str]]:
    started = []
    for _ in range(count):
        grpc_port, http_port = free_port(), free_port()
        env = {**os.environ, "CALLSCOPE_DATABASE_URL": database_url, "CALLSCOPE_GRPC_PORT": str(grpc_port),
               "CALLSCOPE_HTTP_PORT": str(http_port), "CALLSCOPE_BIND_ADDRESS": "127.0.0.1",
               "CALLSCOPE_LOG_LEVEL": "warning", "CALLSCOPE_DERIVE_WORKERS": str(workers)}
        process = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve"], env=env)
        started.append((process, f"127.0.0.1:{grpc_port}"))
    for process, endpoint in started:
        channel = grpc.aio.insecure_channel(endpoint)
        try:
            await asyncio.wait_for(channel.channel_ready(), 60)
        finally:
            await channel.close()
    return started


async def _drive(endpoints: list[str], items: list[tuple[str, bytes, int]], concurrency: int,
                 api_key: str | None = None) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(e, options=[("grpc.max_send_message_length", 64 << 20)]) for e in endpoints]
    methods = [{
        "traces": channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                      request_serializer=lambda body: body, response_deserializer=lambda body: body),
        "logs": channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                                    request_serializer=lambda body: body, response_deserializer=lambda body: body),
    } for channel in channels]
    queue = list(reversed(items))
    state: dict[str, Any] = {"spans": 0, "retries": 0, "latencies": [], "last_ok": None}

    async def client(index: int) -> None:
        export = methods[index % len(methods)]
        while queue:
            kind, body, count = queue.pop()
            while True:
                sent = time.perf_counter()
                try:
                    await export[kind](body, timeout=60, metadata=authorization(api_key))
                except grpc.aio.AioRpcError as error:
                    if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                        state["retries"] += 1
                        await asyncio.sleep(0.2)
                        continue
                    raise
                now = time.perf_counter()
                state["latencies"].append((now - sent) * 1000)
                state["last_ok"] = now
                state["spans"] += count
                break

    state["started"] = time.perf_counter()
    try:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return state


async def _sample_lag(url: str, samples: list[float], stop: asyncio.Event) -> None:
    connection = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            samples.append(float(await connection.fetchval(_LAG_SQL)))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
    finally:
        await connection.close()


async def run_one(args: argparse.Namespace, count: int, items: list[tuple[str, bytes, int]]) -> dict[str, Any]:
    database_url = args.admin_url.rsplit("/", 1)[0] + "/" + args.database
    await recreate_database(args.admin_url, args.database)
    await migrate(database_url)
    api_key = await bench_key(database_url)   # the collectors run as shipped: auth required
    collectors = await _start_collectors(database_url, count, args.derive_workers)
    monitor = await asyncpg.connect(database_url)
    server = ServerCpu.find(await monitor.fetchval("SELECT pg_backend_pid()"))
    others = OtherDatabases(database_url)
    lag: list[float] = []
    stop_sampling = asyncio.Event()
    try:
        pg_before = server.sample() if server else {}
        coll_before = [_proc_ticks(p.pid) or 0 for p, _ in collectors]
        others.start()
        sampler = asyncio.create_task(_sample_lag(database_url, lag, stop_sampling))
        state = await _drive([endpoint for _, endpoint in collectors], items, args.concurrency, api_key)
        stop_sampling.set()
        await sampler
        deadline = time.perf_counter() + 600
        while await monitor.fetchval("SELECT count(*) FROM dirty_calls"):
            if time.perf_counter() > deadline:
                raise RuntimeError("derivation did not drain within 600 s")
            await asyncio.sleep(0.1)
        drained = time.perf_counter()
        pg_after = server.sample() if server else {}
        coll_after = [_proc_ticks(p.pid) or 0 for p, _ in collectors]
        await others.stop()
        calls = await monitor.fetchval("SELECT count(*) FROM calls")
    finally:
        stop_sampling.set()
        await monitor.close()
        for process, _ in collectors:
            process.terminate()
        for process, _ in collectors:
            process.wait(60)
    window = drained - state["started"]
    other_ticks = sum(ticks - pg_before.get(pid, 0) for pid, ticks in others.last.items() if pid in pg_before) + \
        sum(ticks for pid, ticks in others.last.items() if pid not in pg_before)
    # A backend that exited during the run moved its whole lifetime into the postmaster's reaped-children time
    # (key -1): take off what it had used before the run.
    exited = sum(ticks for pid, ticks in pg_before.items() if pid != -1 and pid not in pg_after)
    pg_ticks = sum(v - pg_before.get(k, 0) for k, v in pg_after.items()) - exited - other_ticks if server else None
    elapsed = state["last_ok"] - state["started"]
    quantiles = statistics.quantiles(state["latencies"], n=100)
    return {
        "collectors": count, "spans": state["spans"], "calls": calls, "elapsed_s": round(elapsed, 2),
        "spans_per_s": round(state["spans"] / elapsed),
        "export_p50_ms": round(quantiles[49], 1), "export_p99_ms": round(quantiles[98], 1),
        "refused_retries": state["retries"],
        "lag_p50_s": round(statistics.median(lag), 2) if lag else None, "lag_max_s": round(max(lag), 2) if lag else None,
        "drain_s": round(drained - state["last_ok"], 2),
        "collector_cores": round(sum(a - b for a, b in zip(coll_after, coll_before)) / _TICK / window, 2),
        "pg_cores": None if pg_ticks is None else round(pg_ticks / _TICK / window, 2),
        "window_s": round(window, 2),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| collectors | spans | spans/s | Export p50 ms | p99 ms | refusals | lag p50 s | lag max s | drain s "
            "| collectors' CPU (cores) | PostgreSQL CPU (cores) |\n"
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['collectors']} | {r['spans']:,} | **{r['spans_per_s']:,}** | {r['export_p50_ms']} | "
                     f"{r['export_p99_ms']} | {r['refused_retries']} | {r['lag_p50_s']} | {r['lag_max_s']} | "
                     f"{r['drain_s']} | {r['collector_cores']} | {r['pg_cores']} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sys.stderr.write(f"generating {args.calls} calls ...\n")
    calls = generate_calls(args.calls, seed=args.seed)
    trace_bodies, log_bodies = encode_requests(calls, spans_per_request=args.spans_per_request)
    counts = [sum(len(ss.spans) for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(b).resource_spans
                  for ss in rs.scope_spans) for b in trace_bodies]
    items = [("traces", body, n) for body, n in zip(trace_bodies, counts)]
    if not args.no_logs:
        items += [("logs", body, 0) for body in log_bodies]
    rows = []
    try:
        for count in args.collectors:
            sys.stderr.write(f"{count} collector(s) ...\n")
            rows.append(await run_one(args, count, items))
            sys.stderr.write(json.dumps(rows[-1]) + "\n")
    finally:
        if not args.keep:
            connection = await asyncpg.connect(args.admin_url)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            finally:
                await connection.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--collectors", type=int, nargs="+", default=[1, 2, 3], help="collector counts [1 2 3]")
    parser.add_argument("--calls", type=int, default=3000, help="simulated calls per run [3000]")
    parser.add_argument("--concurrency", type=int, default=12, help="Exports in flight at once [12]")
    parser.add_argument("--spans-per-request", type=int, default=512, help="spans per Export [512]")
    parser.add_argument("--derive-workers", type=int, default=2, help="derive workers per collector [2]")
    parser.add_argument("--no-logs", action="store_true", help="send only traces")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--admin-url", default=os.environ.get("CALLSCOPE_BENCH_ADMIN_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--database", default="callscope_scaleout", help="database each run recreates")
    parser.add_argument("--keep", action="store_true", help="keep the database of the last run")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    print(_table(rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scaleout-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                               "runs": rows}, indent=2))
    sys.stderr.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
