"""Ingest benchmark (run by hand, never in CI): sustained spans/s committed, Export latency, collector RSS,
and — in the same run, on the same rows — the raw asyncpg COPY ceiling, so the ratio holds on any machine.

    python -m bench.ingest --calls 3000 --concurrency 8
    python -m bench.ingest --rounds 10 --round-spans 200000 --summary     # growth series (bench/growth.py)

Starts ``callscope serve`` as a subprocess against a fresh database (or drives ``--endpoint`` if given),
sends pre-encoded simulator requests over gRPC (``--spans-per-request`` spans each, like an SDK's
BatchSpanProcessor), and counts a span only when its Export returned OK (= committed). The collector runs as
shipped (auth required): the benchmark creates an API key and sends it with every Export (an ``--endpoint``
gets ``CALLSCOPE_API_KEY``). The PII policy is the collector's (``CALLSCOPE_PII``, default ``card=mask``); the
in-process mapping rate uses the same one, e.g. ``CALLSCOPE_PII=mask python -m bench.ingest``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.harness import authorization, collector_for, draw_span_progress, peak_rss_mib
from collector.cost import PriceTable
from collector.otlp.codec import iter_spans, parse_traces
from collector.pipeline import map_spans
from collector.simulate import encode_requests, generate_calls
from storage.records import SpanRow, columns_of

RESULTS = Path(__file__).with_name("results")


@dataclass
class BenchResult:
    calls: int
    spans: int
    log_records: int
    requests: int
    concurrency: int
    spans_per_request: int
    elapsed_s: float
    spans_per_s: float
    export_p50_ms: float
    export_p99_ms: float
    export_max_ms: float
    refused_retries: int
    collector_peak_rss_mib: float | None
    copy_ceiling_spans_per_s: float
    ratio_to_copy_ceiling: float
    mapping_spans_per_s: float
    simulator_spans_per_s: float   # generate_calls + encode_requests (client side, before the clock starts)
    machine: str
    when: str


async def _drive(endpoint: str, trace_bodies: list[bytes], log_bodies: list[bytes], concurrency: int,
                 span_counts: list[int], api_key: str | None = None) -> tuple[float, list[float], int]:
    channel = grpc.aio.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    # Pre-encoded bytes go straight on the wire: the client costs no protobuf work during the run.
    export_traces = channel.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=lambda body: body,
        response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
    export_logs = channel.unary_unary(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        request_serializer=lambda body: body, response_deserializer=lambda body: body)
    latencies: list[float] = []
    retries = 0
    queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    for body, count in zip(trace_bodies, span_counts):
        queue.put_nowait(("traces", body, count))
    for body in log_bodies:
        queue.put_nowait(("logs", body, 0))
    total = sum(span_counts)
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done, retries
        while not queue.empty():
            kind, body, count = queue.get_nowait()
            while True:
                sent = time.perf_counter()
                try:
                    await (export_traces if kind == "traces" else export_logs)(body, timeout=60,
                                                                               metadata=authorization(api_key))
                except grpc.aio.AioRpcError as error:
                    if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                        retries += 1
                        await asyncio.sleep(0.2)
                        continue
                    raise
                latencies.append((time.perf_counter() - sent) * 1000)
                done += count
                draw_span_progress(done, total, started)
                break

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    sys.stderr.write("\n")
    await channel.close()
    return elapsed, latencies, retries


async def _copy_ceiling(database_url: str, trace_bodies: list[bytes]) -> tuple[float, float]:
    """(mapping spans/s, COPY spans/s): decode+map in-process (with the collector's PII policy), then COPY the
    same rows, nothing else."""
    from collector.settings import build_settings

    prices = PriceTable.load()   # the shipped table, as the collector under test prices
    policy = build_settings().pii_policy()   # CALLSCOPE_PII* from the environment, as the collector reads them
    started = time.perf_counter()
    rows: list[SpanRow] = []
    for body in trace_bodies:
        rows.extend(r for r in map_spans(iter_spans(parse_traces(body)), prices=prices, privacy=policy).records
                    if type(r) is SpanRow)
    mapping_rate = len(rows) / (time.perf_counter() - started)
    columns = columns_of(SpanRow)
    tuples = rows  # records are tuples in COPY order
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("CREATE TABLE copy_ceiling (LIKE spans INCLUDING DEFAULTS)")
        await connection.execute("ALTER TABLE copy_ceiling ADD COLUMN IF NOT EXISTS tenant text")   # as staged
        started = time.perf_counter()
        for i in range(0, len(tuples), 5000):
            await connection.copy_records_to_table("copy_ceiling", records=tuples[i:i + 5000], columns=columns)
        copy_rate = len(tuples) / (time.perf_counter() - started)
        await connection.execute("DROP TABLE copy_ceiling")
    finally:
        await connection.close()
    return mapping_rate, copy_rate


async def run(args: argparse.Namespace) -> BenchResult:
    admin_url = args.admin_url
    database_url = admin_url.rsplit("/", 1)[0] + "/" + args.database
    sys.stderr.write(f"generating {args.calls} calls ...\n")
    started = time.perf_counter()
    calls = generate_calls(args.calls, seed=args.seed)
    trace_bodies, log_bodies = encode_requests(calls, spans_per_request=args.spans_per_request)
    simulator_s = time.perf_counter() - started
    if args.no_logs:
        log_bodies = []
    span_counts = [sum(len(ss.spans) for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(b).resource_spans
                       for ss in rs.scope_spans) for b in trace_bodies]
    log_records = sum(call.log_count for call in calls) if log_bodies else 0
    process, endpoint, api_key = await collector_for(args.endpoint, admin_url, args.database, database_url)
    try:
        elapsed, latencies, retries = await _drive(endpoint, trace_bodies, log_bodies, args.concurrency, span_counts,
                                                   api_key)
        rss = peak_rss_mib(process.pid) if process else None
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    mapping_rate, copy_rate = await _copy_ceiling(database_url, trace_bodies)
    spans = sum(span_counts)
    quantiles = statistics.quantiles(latencies, n=100)
    rate = spans / elapsed
    return BenchResult(
        calls=args.calls, spans=spans, log_records=log_records, requests=len(latencies),
        concurrency=args.concurrency, spans_per_request=args.spans_per_request, elapsed_s=round(elapsed, 2),
        spans_per_s=round(rate), export_p50_ms=round(quantiles[49], 1), export_p99_ms=round(quantiles[98], 1),
        export_max_ms=round(max(latencies), 1), refused_retries=retries,
        collector_peak_rss_mib=None if rss is None else round(rss, 1),
        copy_ceiling_spans_per_s=round(copy_rate), ratio_to_copy_ceiling=round(rate / copy_rate, 3),
        mapping_spans_per_s=round(mapping_rate),
        simulator_spans_per_s=round(sum(call.span_count for call in calls) / simulator_s),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="simulated calls to send [3000]")
    parser.add_argument("--concurrency", type=int, help="Exports in flight at once [8; growth series 4]")
    parser.add_argument("--spans-per-request", type=int, default=512, help="spans per Export [512]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-logs", action="store_true", help="send only traces")
    parser.add_argument("--endpoint", help="drive this running collector instead of starting one")
    parser.add_argument("--admin-url", default=os.environ.get("CALLSCOPE_BENCH_ADMIN_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--database", help="database the benchmark recreates [callscope_bench; growth series "
                                           "callscope_bench_growth]")
    growth = parser.add_argument_group(
        "growth series", "--rounds N: N rounds of new calls into ONE database, measured per round (traces only; "
        "docs/benchmarks.md, 'Growth series')")
    growth.add_argument("--rounds", type=int, help="number of rounds (enables the growth series)")
    growth.add_argument("--round-spans", type=int, default=200_000, help="spans per round [200000]")
    growth.add_argument("--ceiling", choices=("empty", "sized", "both", "off"), default="empty",
                        help="COPY ceiling per round: into an empty LIKE spans INCLUDING ALL table, into one "
                             "pre-filled with all of spans, both, or none [empty]")
    growth.add_argument("--backlog-sql", default="SELECT count(*) FROM dirty_calls",
                        help="query returning the derive backlog; 0 = drained [SELECT count(*) FROM dirty_calls]")
    growth.add_argument("--quiet-s", type=float, default=3.0,
                        help="if no backlog table exists: drained = this long without activity or row changes [3]")
    growth.add_argument("--drain-timeout", type=float, default=600.0,
                        help="give up waiting for the backlog after this many seconds [600]")
    growth.add_argument("--round-timeout", type=float, default=1800.0,
                        help="stop sending a round after this many seconds [1800]")
    growth.add_argument("--summary", action="store_true",
                        help="after the table, print one line: last/first round ratios and mean ratio to ceiling")
    args = parser.parse_args(argv)
    if args.database is None:
        args.database = "callscope_bench" if args.rounds is None else "callscope_bench_growth"
    if args.concurrency is None:
        args.concurrency = 8 if args.rounds is None else 4
    if args.rounds is not None:
        if args.rounds < 1 or args.round_spans < 1:
            parser.error("--rounds and --round-spans must be >= 1")
        from bench.growth import main_growth
        return main_growth(args, RESULTS)
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ingest-{result.when.replace(':', '')}.json"
    out.write_text(json.dumps(asdict(result), indent=2))
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
