"""Storage engine v2: append-only identity, per-call derivation shared by many workers, quarantine of bad calls."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timezone

import asyncpg
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.mappers.base import CALL_ID_KEYS
from collector.server import Collector
from collector.simulate import generate_calls
from storage.deriver import Deriver
from storage.routines import routine_name
from tests.conftest import collector_settings, drop_database, new_database, url_for
from tests.ledger import snapshot
from tests.otlp_client import GrpcClient
from tests.test_stack import _metric
from collector.cli.doctor import run_checks

CALLS = 40


def _differences(got: dict, expected: dict) -> list[str]:
    """Field-level differences between two ledger snapshots (readable assertion messages)."""
    out = []
    for table in expected:
        if len(got[table]) != len(expected[table]):
            out.append(f"{table}: {len(got[table])} rows, expected {len(expected[table])}")
            continue
        for a, b in zip(got[table], expected[table]):
            for key in b:
                if a.get(key) != b[key]:
                    out.append(f"{table} {next(iter(b.values()))}: {key} = {a.get(key)!r}, expected {b[key]!r}")
    return out[:20]


def _split_by_naming(request: ExportTraceServiceRequest) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    """(spans naming their call with an id attribute, the others), each keeping its resource and scope."""
    named, unnamed = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    for resource_spans in request.resource_spans:
        parts = {}
        for target in (named, unnamed):
            copy = target.resource_spans.add()
            copy.resource.CopyFrom(resource_spans.resource)
            parts[id(target)] = copy
        for scope_spans in resource_spans.scope_spans:
            scopes = {}
            for target in (named, unnamed):
                scope = parts[id(target)].scope_spans.add()
                scope.scope.CopyFrom(scope_spans.scope)
                scopes[id(target)] = scope
            for span in scope_spans.spans:
                names = any(kv.key in CALL_ID_KEYS for kv in span.attributes)
                scopes[id(named if names else unnamed)].spans.append(span)
    return named, unnamed


def _traffic(seed: int) -> tuple[list[ExportTraceServiceRequest], list[ExportLogsServiceRequest]]:
    calls = generate_calls(CALLS, seed=seed)
    return ([r for c in calls for r in c.trace_requests], [r for c in calls for r in c.log_requests])


async def _send_all(port: int, requests: list) -> None:
    client = GrpcClient(port)
    try:
        for request in requests:
            partial = (await client.send(request)).partial_success
            rejected = partial.rejected_spans if isinstance(request, ExportTraceServiceRequest) \
                else partial.rejected_log_records
            assert not rejected, partial.error_message
    finally:
        await client.close()


async def _ingest_in_order(url: str, traces: list, logs: list) -> None:
    """Everything through one collector, one request at a time, derived to the end."""
    async with Collector(collector_settings(url), run_migrations=False) as running:
        await _send_all(running.grpc.port, traces)
        await _send_all(running.grpc.port, logs)
        await running.settle()


async def _ledger_in_order(template: str, traces: list, logs: list) -> dict:
    name = await new_database(template, prefix="callscope_v2_base")
    url = url_for(name)
    try:
        await _ingest_in_order(url, traces, logs)
        return await snapshot(url)
    finally:
        await drop_database(name)


async def test_naming_span_in_another_collector_concurrently_gives_the_same_ledger(template_database: str) -> None:
    traces, logs = _traffic(seed=11)
    expected = await _ledger_in_order(template_database, traces, logs)
    named, unnamed = zip(*(_split_by_naming(r) for r in traces))
    assert sum(len(ss.spans) for r in named for rs in r.resource_spans for ss in rs.scope_spans) > 0
    assert sum(len(ss.spans) for r in unnamed for rs in r.resource_spans for ss in rs.scope_spans) > 0

    name = await new_database(template_database, prefix="callscope_v2_split")
    url = url_for(name)
    try:
        first = Collector(collector_settings(url, writer_connections=2), run_migrations=False)
        second = Collector(collector_settings(url, writer_connections=2), run_migrations=False)
        await first.start()
        await second.start()
        try:
            # the children reach one collector while the spans naming their calls reach the other, at once
            await asyncio.gather(_send_all(first.grpc.port, list(unnamed)), _send_all(second.grpc.port, list(named)),
                                 _send_all(first.grpc.port, logs))
            for running in (first, second):
                await running.batcher.flush()
            await first.settle()
            await second.settle()
        finally:
            await first.close(grace_s=1)
            await second.close(grace_s=1)
        got = await snapshot(url)
        connection = await asyncpg.connect(url)
        try:
            # nothing is left keyed by a trace id whose trace has named its call
            phantom = await connection.fetchval(
                "SELECT count(*) FROM calls c JOIN call_traces k ON k.trace_id = c.call_id AND k.call_id <> c.call_id")
            stored = await connection.fetchval("SELECT count(*) FROM spans")
            reached = await connection.fetchval("SELECT count(*) FROM calls c, LATERAL callscope_call_spans(c.call_id)")
        finally:
            await connection.close()
    finally:
        await drop_database(name)
    assert phantom == 0
    assert reached == stored          # every stored span belongs to exactly one call row
    assert got == expected, _differences(got, expected)


async def test_many_workers_share_one_backlog_and_agree_with_one(template_database: str) -> None:
    traces, logs = _traffic(seed=5)
    name = await new_database(template_database, prefix="callscope_v2_workers")
    url = url_for(name)
    try:
        await _ingest_in_order(url, traces, logs)
        expected = await snapshot(url)
        connection = await asyncpg.connect(url)
        try:
            # forget every derived row and mark every call (three times over, as many batches would)
            await connection.execute("DELETE FROM turns; DELETE FROM calls")
            for _ in range(3):
                await connection.execute("INSERT INTO dirty_calls (call_id) "
                                         "SELECT call_id FROM call_spans UNION SELECT call_id FROM call_events")
            marked = await connection.fetchval("SELECT count(DISTINCT call_id) FROM dirty_calls")
        finally:
            await connection.close()
        # four processes' worth of derivers, two workers each, with small claims so they contend
        derivers = [Deriver(url, workers=2, max_calls=3, idle_s=0.01) for _ in range(4)]
        for deriver in derivers:
            await deriver.start()
        try:
            await asyncio.gather(*(deriver.drain() for deriver in derivers))
        finally:
            for deriver in derivers:
                await deriver.close()
        got = await snapshot(url)
        connection = await asyncpg.connect(url)
        try:
            quarantined = [tuple(r) for r in await connection.fetch("SELECT call_id, error FROM call_quarantine")]
        finally:
            await connection.close()
    finally:
        await drop_database(name)
    assert quarantined == []
    assert sum(deriver.derived_total for deriver in derivers) >= marked
    assert len(got["calls"]) == marked
    assert got == expected, _differences(got, expected)


async def test_a_call_that_cannot_be_derived_is_quarantined_alone(collector, db) -> None:
    traces, logs = _traffic(seed=3)
    await _send_all(collector.grpc.port, traces)
    await collector.settle()
    victim = await db.fetchval("SELECT call_id FROM calls ORDER BY call_id LIMIT 1")
    before = {row["call_id"]: row["updated_at"] for row in await db.fetch("SELECT call_id, updated_at FROM calls")}
    # any failure PostgreSQL may raise while deriving one call (here: a trigger refusing its call row)
    await db.execute(f"""
        CREATE FUNCTION refuse_victim() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.call_id = '{victim}' THEN RAISE EXCEPTION 'injected failure for %', NEW.call_id; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_victim BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION refuse_victim();
    """)
    await db.execute("DELETE FROM calls WHERE call_id = $1", victim)
    await db.execute("INSERT INTO dirty_calls (call_id) SELECT call_id FROM calls UNION SELECT $1", victim)
    await _send_all(collector.grpc.port, logs)        # and new data for many calls
    await collector.settle()
    quarantined = await db.fetch("SELECT call_id, error, attempts FROM call_quarantine")
    assert [row["call_id"] for row in quarantined] == [victim]
    assert "injected failure" in quarantined[0]["error"]
    after = {row["call_id"]: row["updated_at"] for row in await db.fetch("SELECT call_id, updated_at FROM calls")}
    assert victim not in after and set(before) - {victim} <= set(after)
    assert any(after[call_id] > before[call_id] for call_id in before if call_id in after)   # took the new data
    backlog = await collector.deriver.backlog()
    assert (backlog.calls, backlog.quarantined) == (0, 1)
    # an SRE sees it in /metrics and in callscope doctor
    assert await _metric(collector.http.port, "callscope_quarantined_calls") == 1
    checks = {check.name: check for check in await run_checks(collector.settings, timeout=5)}
    assert checks["derivation"].level == "warn" and victim in checks["derivation"].message
    # once its input can be derived again and it is written to, it leaves quarantine
    await db.execute("DROP TRIGGER refuse_victim ON calls")
    await db.execute("INSERT INTO dirty_calls (call_id) VALUES ($1)", victim)
    await collector.settle()
    assert await db.fetchval("SELECT count(*) FROM call_quarantine") == 0
    assert await db.fetchval("SELECT count(*) FROM calls WHERE call_id = $1", victim) == 1


async def test_out_of_range_values_do_not_stop_a_call_from_deriving(collector, db) -> None:
    """A SIP code that fits no integer, a latency of 1e300 s: the call still derives, and keeps deriving."""
    import time

    from opentelemetry.proto.logs.v1 import logs_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    now = time.time_ns()
    trace_id = b"\x42" * 16

    def span(span_id: bytes, name: str, **attributes: object) -> ExportTraceServiceRequest:
        request = ExportTraceServiceRequest()
        item = request.resource_spans.add().scope_spans.add().spans.add()
        item.name, item.trace_id, item.span_id = name, trace_id, span_id
        item.start_time_unix_nano, item.end_time_unix_nano = now - 10**9, now
        for key, value in attributes.items():
            kv = item.attributes.add()
            kv.key = key
            if isinstance(value, float):
                kv.value.double_value = value
            else:
                kv.value.string_value = str(value)
        return request

    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.time_unix_nano, record.trace_id = now, trace_id
    record.event_name = "call.ringing"
    for key, value in (("call.id", "range-call"), ("sip.response.code", "99999999999999")):
        kv = record.attributes.add()
        kv.key, kv.value.string_value = key, value
    client = GrpcClient(collector.grpc.port)
    try:
        await client.send(span(b"\x01" * 8, "stt", **{"call.id": "range-call", "call.direction": "inbound",
                                                      "metrics.ttfb": 1e300}))
        await client.send(logs)
        await collector.settle()
        assert await db.fetchval("SELECT status FROM calls WHERE call_id = 'range-call'") == "ringing"
        await client.send(span(b"\x02" * 8, "llm", **{"call.id": "range-call", "call.status": "completed"}))
        await collector.settle()
    finally:
        await client.close()
    assert await db.fetchval("SELECT status FROM calls WHERE call_id = 'range-call'") == "completed"
    assert await db.fetchval("SELECT count(*) FROM call_quarantine") == 0


async def test_each_resource_is_stored_once_and_read_back_with_its_spans(collector, db) -> None:
    traces, _ = _traffic(seed=9)
    sent = {tuple(sorted((kv.key, kv.value.SerializeToString()) for kv in rs.resource.attributes))
            for request in traces for rs in request.resource_spans if rs.resource.attributes}
    await _send_all(collector.grpc.port, traces)
    await collector.settle()
    assert await db.fetchval("SELECT count(*) FROM resources") == len(sent)
    assert await db.fetchval("SELECT count(*) FROM spans WHERE resource IS NOT NULL") == 0
    call_id = await db.fetchval("SELECT call_id FROM calls ORDER BY call_id LIMIT 1")
    services = {row[0] for row in await db.fetch(
        "SELECT resource->>'service.name' FROM callscope_call_spans($1)", call_id)}
    assert services and None not in services
    assert await db.fetchval("SELECT count(*) FROM call_spans WHERE resource IS NULL") == 0


async def test_a_derive_changes_only_its_own_calls_rows_in_every_chunk(db: asyncpg.Connection) -> None:
    """The derive's updates and deletes find rows by (relation, ctid): on TimescaleDB each chunk of spans and
    events numbers its rows from (0,1), so a ctid alone also names the rows of other calls in other chunks."""
    def span(day: int, call: str, n: int) -> tuple:
        return (datetime(2026, 3, day, 12, 0, n, tzinfo=timezone.utc), f"t-{call}", f"s-{call}-{n}", call)

    async def rows(table: str) -> list[tuple]:
        return [tuple(r) for r in await db.fetch(
            f"SELECT call_id, turn_number FROM {table} WHERE call_id = 'other' ORDER BY 1, 2")]
    # the other call's rows come first in their chunk (day 2); the derived call's are first in theirs (day 9)
    for day, call in ((2, "other"), (9, "mine")):
        for n in range(1, 4):
            start, trace, span_id, call_id = span(day, call, n)
            await db.execute(
                """INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, call_id, call_id_explicit,
                                      turn_number, stage, name, attributes, facts)
                   VALUES ($1, $1, 5, $2, $3, $4, true, $5, 'llm', 'llm', '{}', '{"turn_explicit": true}')""",
                start, trace, span_id, call_id, 7 if call == "other" else None)
            await db.execute(
                """INSERT INTO events (time, event_id, call_id, call_id_explicit, trace_id, span_id, category, event,
                                       level, source, turn_number)
                   VALUES ($1, $2, $3, true, $4, $5, 'call', 'call.completed', 'INFO', $6, $7)""",
                start, f"e-{call_id}-{n}", call_id, trace, span_id, "derived" if n == 1 else "log",
                7 if call == "other" else None)
    before = (await rows("spans"), await rows("events"))
    await db.execute(f"SELECT {routine_name('callscope_derive')}(ARRAY['mine'], 'default')")
    assert (await rows("spans"), await rows("events")) == before
    assert await db.fetchval("SELECT count(*) FROM events WHERE call_id = 'other'") == 3
