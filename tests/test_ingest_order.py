"""Derived rows do not depend on arrival order, batching or repetition (design §1)."""

from __future__ import annotations

import random
import time

from tests.conftest import collector_settings, drop_database, new_database, url_for
from tests.ledger import snapshot
from tests.otel_sdk import MS, SdkAgent
from tests.otlp_client import GrpcClient
from tests.test_ingest_sdk import send_genai_call, send_native_call
from collector.server import Collector


def recorded_traffic() -> tuple[list, list]:
    agent = SdkAgent("memory")
    t0 = 1_790_000_000_000 * MS
    send_native_call(agent, "call-order-1", t0)
    send_native_call(agent, "call-order-2", t0 + 60_000 * MS)
    send_genai_call(agent, "conv-order-3", t0 + 120_000 * MS)
    return agent.requests()


def merged(requests: list):  # type: ignore[type-arg]
    """One request holding the items of several (same message type)."""
    combined = type(requests[0])()
    for request in requests:
        combined.MergeFrom(request)
    return combined


async def ingest(template: str, trace_batches: list, log_batches: list) -> dict:
    name = await new_database(template)
    url = url_for(name)
    try:
        async with Collector(collector_settings(url), run_migrations=False) as running:
            client = GrpcClient(running.grpc.port)
            for request in trace_batches + log_batches:
                await client.send(request)
            await client.close()
        return await snapshot(url)
    finally:
        await drop_database(name)


async def test_shuffled_split_and_repeated_batches_give_identical_ledger(template_database):
    traces, logs = recorded_traffic()
    # The SDK finishes children first: the natural order already has the session span last.
    in_order = await ingest(template_database, [merged(traces)], [merged(logs)] if logs else [])
    assert [c["call_id"] for c in in_order["calls"]] == ["call-order-1", "call-order-2", "conv-order-3"]
    assert all(c["turn_count"] == 2 for c in in_order["calls"])

    rng = random.Random(42)
    shuffled = traces[:]
    rng.shuffle(shuffled)
    batches = [merged(shuffled[i:i + 3]) for i in range(0, len(shuffled), 3)]
    repeated = batches + batches[::2]          # client retries: some batches arrive twice
    rng.shuffle(repeated)
    log_batches = logs + logs
    rng.shuffle(log_batches)
    reordered = await ingest(template_database, repeated, log_batches)
    assert reordered == in_order


async def test_children_stored_before_their_call_is_named_join_it(collector, db):
    """stt/llm/tts spans carry no call id; they arrive first and must end up under the call.

    They stay stored under their trace id (nothing is rewritten); the call reaches them through its traces."""
    traces, _ = recorded_traffic()
    client = GrpcClient(collector.grpc.port)
    for request in traces:  # one span per request, children first
        await client.send(request)
    await client.close()
    await collector.settle()
    orphans = await db.fetchval("SELECT count(*) FROM call_spans WHERE call_id = trace_id")
    assert orphans == 0
    stored_spans = await db.fetchval("SELECT count(*) FROM spans")
    reached = await db.fetchval("SELECT count(*) FROM calls c, LATERAL callscope_call_spans(c.call_id)")
    assert reached == stored_spans
    assert await db.fetchval("SELECT count(*) FROM calls") == 3
    # the GenAI call's turns are separate root spans: one call spanning two traces
    traces_per_call = dict(await db.fetch("SELECT call_id, cardinality(trace_ids) FROM calls"))
    assert traces_per_call == {"call-order-1": 1, "call-order-2": 1, "conv-order-3": 2}
