"""The receiver's contract with OTLP clients: partial success, encodings, refusals with retry hints, health."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.server import Collector
from tests.conftest import ADMIN_URL, collector_settings
from tests.otlp_client import GrpcClient, http_post, trace_response

NOW = time.time_ns()


def span(name: str, trace_id: bytes, span_id: bytes, **attributes: str) -> trace_pb2.Span:
    item = trace_pb2.Span(name=name, trace_id=trace_id, span_id=span_id, start_time_unix_nano=NOW - 10**9,
                          end_time_unix_nano=NOW)
    for key, value in attributes.items():
        kv = item.attributes.add()
        kv.key = key.replace("_", ".")
        kv.value.string_value = value
    return item


def request_of(*spans: trace_pb2.Span) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    scope.spans.extend(spans)
    return request


def three_spans_one_bad(seed: int) -> ExportTraceServiceRequest:
    trace = bytes([seed]) * 16
    return request_of(
        span("llm", trace, b"\x01" * 8, call_id=f"call-{seed}"),
        span("tts", b"\x07" * 7, b"\x02" * 8, call_id=f"call-{seed}"),   # 7-byte trace id
        span("stt", trace, b"\x03" * 8, call_id=f"call-{seed}"),
    )


async def test_bad_span_is_rejected_alone_over_grpc(collector, db):
    client = GrpcClient(collector.grpc.port)
    response = await client.send(three_spans_one_bad(1))
    await client.close()
    assert response.partial_success.rejected_spans == 1
    assert "trace_id must be 16 bytes, got 7" in response.partial_success.error_message
    assert "'tts'" in response.partial_success.error_message
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'call-1'") == 2


async def test_bad_span_is_rejected_alone_over_http_protobuf(collector, db):
    status, headers, body = await http_post(collector.http.port, "/v1/traces",
                                            three_spans_one_bad(2).SerializeToString(), gzipped=True)
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    assert trace_response(body).partial_success.rejected_spans == 1
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'call-2'") == 2


async def test_otlp_json_with_hex_ids_and_integer_enums(collector, db):
    document = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]},
        "scopeSpans": [{"scope": {"name": "custom"}, "spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "name": "call", "kind": 2, "startTimeUnixNano": str(NOW - 10**9), "endTimeUnixNano": str(NOW),
             "status": {"code": 2, "message": "carrier error"},
             "attributes": [{"key": "call.id", "value": {"stringValue": "json-call"}},
                            {"key": "voice.stage", "value": {"stringValue": "session"}},
                            {"key": "sip.response.code", "value": {"intValue": "503"}}]},
            {"traceId": "not-hex", "spanId": "eee19b7ec3c1b175", "name": "broken",
             "startTimeUnixNano": str(NOW - 10**9), "endTimeUnixNano": str(NOW)},
        ]}]}]}
    status, headers, body = await http_post(collector.http.port, "/v1/traces", json.dumps(document).encode(),
                                            content_type="application/json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert int(answer["partialSuccess"]["rejectedSpans"]) == 1
    await collector.settle()
    row = await db.fetchrow("SELECT * FROM spans WHERE call_id = 'json-call'")
    assert (row["trace_id"], row["span_id"], row["kind"], row["status_code"]) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", 2, 2)
    assert row["service_name"] == "json-agent"
    call = await db.fetchrow("SELECT status, status_reason FROM calls WHERE call_id = 'json-call'")
    assert call["status"] == "failed" and call["status_reason"] == "carrier error"


@pytest.mark.parametrize(("body", "content_type", "expected"), [
    (b"\x0a\xff\xff", "application/x-protobuf", 400),          # truncated protobuf
    (b"{not json", "application/json", 400),
    (b"[]", "application/json", 400),
    (b"abc", "text/plain", 415),
])
async def test_undecodable_requests_get_a_permanent_error(collector, body, content_type, expected):
    status, _, _ = await http_post(collector.http.port, "/v1/traces", body, content_type=content_type)
    assert status == expected


async def test_empty_request_succeeds_without_touching_storage(collector, db):
    client = GrpcClient(collector.grpc.port)
    response = await client.send(ExportTraceServiceRequest())
    await client.close()
    assert not response.HasField("partial_success")
    assert await db.fetchval("SELECT count(*) FROM spans") == 0


async def test_health_endpoints(collector):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc.port}")
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    await channel.close()
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{collector.http.port}/health") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with session.get(f"http://127.0.0.1:{collector.http.port}/metrics") as response:
            assert "callscope_committed_records_total" in await response.text()


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    details = error.trailing_metadata()["grpc-status-details-bin"]   # not dict(): grpcio 1.66's keys() are pairs
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9


async def test_overload_pushes_back_then_retried_data_lands_exactly_once(database_url, db):
    settings = collector_settings(database_url, max_batch_records=5, queue_records=10, max_wait_ms=0,
                                  retry_after_s=0.5)
    requests = [request_of(*(span("stt", bytes([n + 1]) * 16, bytes([n + 1, k + 1]) * 4, call_id=f"bp-{n}")
                             for k in range(4))) for n in range(8)]
    async with Collector(settings, run_migrations=False) as running:
        # Stall the database: the writer blocks on a lock held by another session.
        blocker = await asyncpg.connect(database_url)
        locker = blocker.transaction()
        await locker.start()
        await blocker.execute("LOCK TABLE spans IN ACCESS EXCLUSIVE MODE")
        client = GrpcClient(running.grpc.port)
        first = [asyncio.create_task(client.send(r)) for r in requests[:2]]
        await asyncio.sleep(0.3)
        refused = []
        for request in requests[2:]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.send(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _retry_delay(caught.value) == pytest.approx(0.5)
            refused.append(request)
        assert running.batcher.queued_records <= 10          # memory stays bounded
        status, headers, _ = await http_post(running.http.port, "/v1/traces", requests[2].SerializeToString())
        assert status == 429 and headers["Retry-After"] == "1"
        await locker.rollback()                              # the database recovers
        await blocker.close()
        await asyncio.gather(*first)
        for request in refused + requests[:1]:               # clients retry (one batch even twice)
            await client.send(request)
        await client.close()
    sent = sum(len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans)
    assert await db.fetchval("SELECT count(*) FROM spans") == sent
    assert await db.fetchval("SELECT count(DISTINCT (trace_id, span_id)) FROM spans") == sent
    assert await db.fetchval("SELECT count(*) FROM calls") == len(requests)   # one call per request


async def test_database_down_answers_unavailable_and_recovers(database_url, db):
    settings = collector_settings(database_url, write_timeout_s=2.0)
    async with Collector(settings, run_migrations=False) as running:
        client = GrpcClient(running.grpc.port)
        await client.send(request_of(span("stt", b"\x31" * 16, b"\x01" * 8, call_id="down-0")))
        # The database goes away: no new connections, and the writer's connection is killed.
        name = database_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                            "AND pid <> $2", name, db.get_server_pid())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.send(request_of(span("stt", b"\x32" * 16, b"\x01" * 8, call_id="down-1")))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await client.send(request_of(span("stt", b"\x32" * 16, b"\x01" * 8, call_id="down-1")))  # retry
        await client.close()
    assert sorted(r[0] for r in await db.fetch("SELECT call_id FROM calls")) == ["down-0", "down-1"]


async def test_log_record_without_any_call_correlation_is_rejected_alone(collector, db):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    good = records.add(time_unix_nano=NOW, event_name="webhook.sent", severity_number=9)
    attribute = good.attributes.add()
    attribute.key, attribute.value.string_value = "call.id", "log-call"
    records.add(time_unix_nano=NOW, event_name="webhook.sent")          # no call.id, no trace id
    client = GrpcClient(collector.grpc.port)
    response = await client.send(request)
    await client.close()
    assert response.partial_success.rejected_log_records == 1
    assert "log record 'webhook.sent': it has neither a call.id attribute nor a trace id" in (
        response.partial_success.error_message)
    assert await db.fetchval("SELECT count(*) FROM events WHERE call_id = 'log-call'") == 1


async def test_grpc_gzip_compressed_export(collector, db):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc.port}", compression=grpc.Compression.Gzip)
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    response = await stub.Export(request_of(span("stt", b"\x41" * 16, b"\x01" * 8, call_id="gzip-call")))
    await channel.close()
    assert not response.HasField("partial_success")
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'gzip-call'") == 1


async def test_request_larger_than_the_limit_is_refused_without_harm(database_url, db):
    settings = collector_settings(database_url, max_message_mib=1)
    big = request_of(*(span("stt", b"\x51" * 16, (k + 1).to_bytes(8, "big"), call_id="big", pad="x" * 4096)
                       for k in range(400)))                                   # ~1.7 MB
    async with Collector(settings, run_migrations=False) as running:
        client = GrpcClient(running.grpc.port)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.send(big)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED   # grpc's own size check
        status, _, _ = await http_post(running.http.port, "/v1/traces", big.SerializeToString())
        assert status == 413
        await client.send(request_of(span("stt", b"\x52" * 16, b"\x01" * 8, call_id="small")))
        await client.close()
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'big'") == 0
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'small'") == 1


def _attribute(span_item: trace_pb2.Span, key: str, **value: object) -> None:
    kv = span_item.attributes.add()
    kv.key = key
    for field, content in value.items():
        setattr(kv.value, field, content)


async def test_values_postgresql_cannot_store_never_block_a_batch(collector, db):
    """NUL characters, out-of-range enums and integers: stored cleaned, or rejected alone; never retried forever."""
    nul = span("llm\x00", b"\x61" * 16, b"\x01" * 8, call_id="nul-call")
    _attribute(nul, "llm.output", string_value="hi\x00there")
    _attribute(nul, "weird\x00key", int_value=1)
    huge = span("llm", b"\x62" * 16, b"\x01" * 8, call_id="huge-call")
    _attribute(huge, "gen_ai.usage.input_tokens", int_value=2**40)
    _attribute(huge, "turn.number", int_value=2**35)
    bad_kind = span("llm", b"\x63" * 16, b"\x01" * 8, call_id="kind-call")
    bad_kind.kind = 99999
    fine = span("stt", b"\x64" * 16, b"\x01" * 8, call_id="fine-call")
    client = GrpcClient(collector.grpc.port)
    response = await client.send(request_of(nul, huge, bad_kind, fine), timeout=10)
    await client.close()
    assert response.partial_success.rejected_spans == 1
    assert "kind 99999 is not a SpanKind" in response.partial_success.error_message
    await collector.settle()
    stored = {r["call_id"]: r for r in await db.fetch("SELECT call_id, name, input_tokens, turn_number, attributes "
                                                       "FROM spans")}
    assert set(stored) == {"nul-call", "huge-call", "fine-call"}
    assert stored["nul-call"]["name"] == "llm\ufffd" and "hi\ufffdthere" in stored["nul-call"]["attributes"]
    assert stored["huge-call"]["input_tokens"] is None and stored["huge-call"]["turn_number"] is None
    assert '"gen_ai.usage.input_tokens": 1099511627776' in stored["huge-call"]["attributes"]  # raw value kept
    assert await db.fetchval("SELECT count(*) FROM calls") == 3


async def test_a_row_the_database_refuses_is_isolated_and_reported(collector, db):
    """Whatever slips past validation and makes PostgreSQL refuse a row costs that row only."""
    # A CHECK constraint stands in for any data error the database may raise on a row we did not foresee.
    await db.execute("ALTER TABLE spans ADD CONSTRAINT no_poison CHECK (name <> 'poison')")
    client = GrpcClient(collector.grpc.port)
    first, second = await asyncio.gather(
        client.send(request_of(span("poison", b"\x71" * 16, b"\x01" * 8, call_id="poisoned"),
                               span("stt", b"\x71" * 16, b"\x02" * 8, call_id="poisoned"))),
        client.send(request_of(span("stt", b"\x72" * 16, b"\x01" * 8, call_id="bystander"))))
    await client.close()
    assert first.partial_success.rejected_spans == 1
    assert "no_poison" in first.partial_success.error_message
    assert not second.HasField("partial_success")
    await collector.settle()
    names = sorted(tuple(r) for r in await db.fetch("SELECT call_id, name FROM spans"))
    assert names == [("bystander", "stt"), ("poisoned", "stt")]


async def test_a_call_that_cannot_be_derived_does_not_block_the_others(collector, db):
    await db.execute("ALTER TABLE calls ADD CONSTRAINT no_poison CHECK (campaign IS DISTINCT FROM 'poison')")
    poisoned = span("call", b"\x81" * 16, b"\x01" * 8, call_id="poisoned-call")
    _attribute(poisoned, "call.campaign", string_value="poison")
    healthy = span("call", b"\x82" * 16, b"\x01" * 8, call_id="healthy-call")
    _attribute(healthy, "call.campaign", string_value="spring")
    client = GrpcClient(collector.grpc.port)
    await client.send(request_of(poisoned, healthy))
    await client.close()
    await collector.settle()
    assert [r[0] for r in await db.fetch("SELECT call_id FROM calls")] == ["healthy-call"]
    assert await db.fetchval("SELECT count(*) FROM dirty_calls") == 0
    assert await db.fetchval("SELECT count(*) FROM spans") == 2        # the raw spans are kept
