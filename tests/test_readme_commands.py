"""The README's commands work as a user types them: simulate into a running collector, then the benchmark."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import fields

from bench.ingest import BenchResult
from collector.simulate import generate_calls
from tests.conftest import ADMIN_URL


async def _run(*argv: str, timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ})
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


async def test_callscope_simulate_fills_a_running_collector(collector, db):
    code, out, err = await _run(sys.executable, "-m", "collector.cli", "simulate", "--endpoint",
                                f"127.0.0.1:{collector.grpc.port}", "--calls", "12", "--progress")
    assert code == 0, err
    assert "simulation finished" in out and "12/12 calls" in err   # the progress bar reached the end
    await collector.settle()
    assert await db.fetchval("SELECT count(*) FROM calls") == 12
    statuses = await db.fetchval("SELECT count(DISTINCT status) FROM calls")
    assert statuses >= 4


async def test_callscope_simulate_over_http(collector, db):
    code, _, err = await _run(sys.executable, "-m", "collector.cli", "simulate", "--endpoint",
                              f"http://127.0.0.1:{collector.http.port}", "--calls", "4")
    assert code == 0, err
    await collector.settle()
    assert await db.fetchval("SELECT count(*) FROM calls") == 4


async def test_benchmark_runs_and_reports_its_figures(tmp_path):
    code, out, err = await _run(sys.executable, "-m", "bench.ingest", "--calls", "30", "--concurrency", "2",
                                "--admin-url", ADMIN_URL, "--database", "callscope_bench_test", timeout=300)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {field.name for field in fields(BenchResult)}   # every figure is reported
    sent = generate_calls(30, seed=1)                                       # the benchmark's default seed
    assert result["calls"] == 30 and result["spans"] == sum(call.span_count for call in sent)
    assert result["log_records"] == sum(call.log_count for call in sent)
    assert result["spans_per_s"] > 0 and result["simulator_spans_per_s"] > 0
    assert result["export_p99_ms"] >= result["export_p50_ms"] > 0
    assert result["copy_ceiling_spans_per_s"] > 0 and 0 < result["ratio_to_copy_ceiling"]
    assert result["collector_peak_rss_mib"] > 10
    connection_url = ADMIN_URL
    import asyncpg

    admin = await asyncpg.connect(connection_url)
    await admin.execute('DROP DATABASE IF EXISTS "callscope_bench_test" WITH (FORCE)')
    await admin.close()
