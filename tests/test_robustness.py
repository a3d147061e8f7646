"""Production robustness: one bad item never costs its siblings, limits cut visibly, resources stay bounded,
refusals carry retry hints where OpenTelemetry exporters read them, /health and /metrics are cheap and real."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time

import aiohttp
import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from collector.mappers.native import NativeMapper
from collector.server import Collector
from collector.telemetry import Metrics
from tests.conftest import collector_settings
from tests.otel_sdk import MS, SdkAgent
from tests.otlp_client import GrpcClient, http_post, trace_response

NOW = time.time_ns()
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def make_span(name: str, trace_id: bytes, span_id: bytes, **attributes: object) -> trace_pb2.Span:
    """A span whose attributes keep their Python type (str, int, float, bool); ``_`` in a key becomes ``.``."""
    item = trace_pb2.Span(name=name, trace_id=trace_id, span_id=span_id, start_time_unix_nano=NOW - 10**9,
                          end_time_unix_nano=NOW)
    for key, value in attributes.items():
        kv = item.attributes.add()
        kv.key = key.replace("_", ".")
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        else:
            kv.value.string_value = str(value)
    return item


def request_of(*spans: trace_pb2.Span) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request


async def metrics_of(collector: Collector) -> dict[str, list]:
    """/metrics parsed by prometheus_client's own parser: sample name → samples."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{collector.http.port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def raw_export(port: int, body: bytes) -> grpc.aio.AioRpcError:
    """Send ``body`` as a TraceService/Export request without encoding it (what a broken client does)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(TRACE_EXPORT, request_serializer=None, response_deserializer=None)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(body, timeout=10)
    finally:
        await channel.close()
    return caught.value


# --- 1. one item, one fault boundary ------------------------------------------------------------------


async def test_absurd_numbers_from_the_sdk_become_null_and_the_span_is_stored(collector, db):
    # The bug: llm.ttft_ms=1e300 became a time fact past any calendar and the whole Export failed (UNKNOWN,
    # which OTel exporters do not retry).
    agent = SdkAgent("grpc", collector)
    start = NOW - 5_000 * MS
    with agent.span("call", start, start + 3_000 * MS, {"call.id": "absurd", "voice.stage": "session"}) as call:
        with agent.span("turn", start, start + 2_000 * MS, {"call.id": "absurd", "turn.number": 2**40},
                        parent=call) as turn:
            with agent.span("llm", start, start + 900 * MS, {
                "call.id": "absurd", "llm.ttft_ms": 1e300, "gen_ai.usage.input_tokens": 2**62,
                "gen_ai.usage.output_tokens": 12, "call.extracted": '{"big": 1' + "0" * 40 + "}",
            }, parent=turn):
                pass
            with agent.span("tts", start + 900 * MS, start + 1_500 * MS,
                            {"call.id": "absurd", "tts.ttfb_ms": float("inf")}, parent=turn):
                pass
    await agent.flush()
    await collector.settle()
    rows = {r["name"]: r for r in await db.fetch("SELECT * FROM spans WHERE call_id = 'absurd'")}
    assert set(rows) == {"call", "turn", "llm", "tts"}
    llm = rows["llm"]
    assert llm["input_tokens"] is None and llm["output_tokens"] == 12     # int4 overflow → NULL, the rest kept
    assert float(json.loads(llm["attributes"])["llm.ttft_ms"]) == 1e300   # the raw attribute is kept
    assert "llm_first_token_us" not in json.loads(llm["facts"])           # the time past year 9999 is not
    assert rows["turn"]["turn_number"] == 1   # 2**40 fits no int4: numbered by start time like an unnumbered turn
    assert "tts_first_audio_us" not in json.loads(rows["tts"]["facts"])  # start + ∞ is no time either
    call_row = await db.fetchrow("SELECT status, extracted FROM calls WHERE call_id = 'absurd'")
    assert call_row["status"] == "completed"
    assert json.loads(call_row["extracted"])["big"] == "1" + "0" * 40   # too big for JSON tools: kept as text


async def test_an_item_that_crashes_its_mapper_is_rejected_alone(collector, db, monkeypatch):
    original = NativeMapper.map_span

    def fragile(self, span):  # type: ignore[no-untyped-def]
        if span.name == "llm" and span.attributes.get("boom"):
            raise ZeroDivisionError("a mapper bug")
        return original(self, span)

    monkeypatch.setattr(NativeMapper, "map_span", fragile)
    trace = os.urandom(16)
    client = GrpcClient(collector.grpc.port)
    response = await client.send(request_of(
        make_span("llm", trace, b"\x01" * 8, call_id="crash", boom=True),
        make_span("stt", trace, b"\x02" * 8, call_id="crash"),
        make_span("tts", trace, b"\x03" * 8, call_id="crash"),
    ))
    await client.close()
    assert response.partial_success.rejected_spans == 1
    message = response.partial_success.error_message
    assert "span 'llm' (0101010101010101)" in message and "ZeroDivisionError: a mapper bug" in message
    assert sorted(r[0] for r in await db.fetch("SELECT name FROM spans WHERE call_id = 'crash'")) == ["stt", "tts"]
    samples = await metrics_of(collector)
    assert total(samples, "callscope_internal_errors_total", stage="map") == 1
    assert total(samples, "callscope_rejected_items_total", signal="spans", reason="internal") == 1


async def test_a_request_whose_every_item_is_rejected_writes_no_batch(collector, db):
    client = GrpcClient(collector.grpc.port)
    response = await client.send(request_of(make_span("stt", b"\x07" * 7, b"\x01" * 8),
                                            make_span("tts", b"\x07" * 16, b"\x00" * 8)))
    await client.close()
    assert response.partial_success.rejected_spans == 2
    samples = await metrics_of(collector)
    assert total(samples, "callscope_committed_batches_total") == 0
    assert total(samples, "callscope_rejected_items_total", reason="invalid_id") == 2
    assert await db.fetchval("SELECT count(*) FROM spans") == 0


# --- limits in the SDK's spirit ----------------------------------------------------------------------


def _nested(depth: int) -> AnyValue:
    value = AnyValue(string_value="bottom")
    for _ in range(depth):
        value = AnyValue(array_value={"values": [value]})
    return value


async def test_huge_many_and_deep_values_are_cut_visibly_and_stored(database_url, db):
    settings = collector_settings(database_url, max_attributes=20, max_value_length=1000, max_value_depth=4)
    item = make_span("stt", os.urandom(16), b"\x01" * 8, call_id="cut", transcript="x" * 100_000,
                     **{f"extra_{n}": n for n in range(40)})
    item.attributes.insert(0, KeyValue(key="deep", value=_nested(30)))  # first, so it is among those kept
    async with Collector(settings, run_migrations=False) as running:
        client = GrpcClient(running.grpc.port)
        response = await client.send(request_of(item))
        await client.close()
        samples = await metrics_of(running)
    assert not response.HasField("partial_success")
    attributes = json.loads(await db.fetchval("SELECT attributes FROM spans WHERE call_id = 'cut'"))
    assert attributes["transcript"] == "x" * 1000 + "…[truncated 99000 chars]"
    assert attributes["callscope.dropped_attributes_count"] == 43 - 20
    assert len(attributes) == 20 + 1
    value = attributes["deep"]
    for _ in range(4):
        value = value[0]
    assert value == "…[nested deeper than 4 levels]"
    assert total(samples, "callscope_limited_values_total", limit="length") == 1
    assert total(samples, "callscope_limited_values_total", limit="attributes") == 23
    assert total(samples, "callscope_limited_values_total", limit="depth") == 1


async def test_a_json_string_attribute_nested_thousands_deep_is_kept_as_text(collector, db):
    deep = "[" * 15_000 + "]" * 15_000   # within max_value_length, far past Python's recursion limit
    client = GrpcClient(collector.grpc.port)
    response = await client.send(request_of(make_span("call", os.urandom(16), b"\x01" * 8, call_id="deep-json",
                                                      voice_stage="session", call_extracted=deep)))
    await client.close()
    await collector.settle()
    assert not response.HasField("partial_success")
    assert json.loads(await db.fetchval("SELECT attributes FROM spans WHERE call_id = 'deep-json'"))[
        "call.extracted"] == deep
    assert await db.fetchval("SELECT extracted FROM calls WHERE call_id = 'deep-json'") is None


async def test_an_over_long_call_id_rejects_its_item_with_a_short_reason(collector, db):
    # Before: a 10 KB random call.id reached the index of spans.call_id, the whole batch failed at COMMIT and
    # was bisected row by row, so every client whose Export shared that batch waited for it.
    huge = os.urandom(5_000).hex()
    trace = os.urandom(16)
    client = GrpcClient(collector.grpc.port)
    others = [asyncio.create_task(client.send(request_of(make_span("stt", os.urandom(16), b"\x01" * 8,
                                                                   call_id=f"neighbour-{n}"))))
              for n in range(5)]
    response = await client.send(request_of(make_span("llm", trace, b"\x01" * 8, call_id=huge),
                                            make_span("stt", trace, b"\x02" * 8, call_id="sibling")))
    logs = ExportLogsServiceRequest()
    records = logs.resource_logs.add().scope_logs.add().log_records
    records.add(time_unix_nano=NOW, event_name="e" * 1000, trace_id=trace)
    records.add(time_unix_nano=NOW, event_name="webhook.sent", trace_id=trace)
    log_response = await client.send(logs)
    await asyncio.gather(*others)
    await client.close()
    assert response.partial_success.rejected_spans == 1
    message = response.partial_success.error_message
    assert "call id is 10000 characters long, at most 256 are accepted" in message
    assert len(message) < 600 and huge not in message
    assert log_response.partial_success.rejected_log_records == 1
    assert "event name is 1000 characters long" in log_response.partial_success.error_message
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'sibling'") == 1
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id LIKE 'neighbour-%'") == 5
    assert await db.fetchval("SELECT count(*) FROM events WHERE event = 'webhook.sent'") == 1


# --- undecodable requests: a permanent error with the reason, never UNKNOWN or 500 ---------------------


def _invalid_utf8() -> bytes:
    body = bytearray(request_of(make_span("abc", b"\x01" * 16, b"\x01" * 8)).SerializeToString())
    body[body.index(b"abc")] = 0xFF
    return bytes(body)


@pytest.mark.parametrize("body", [
    pytest.param(os.urandom(4096), id="random-bytes"),
    pytest.param(_invalid_utf8(), id="invalid-utf8-in-a-string"),
    pytest.param(b"deep", id="nested-past-the-parser-limit"),
])
async def test_undecodable_protobuf_over_grpc_is_invalid_argument(collector, caplog, body):
    if body == b"deep":   # protobuf's parser stops at 100 levels of messages: 120 nested arrays is 240
        request = ExportTraceServiceRequest()   # built in place: copying it would hit the same parser limit
        item = request.resource_spans.add().scope_spans.add().spans.add(
            name="deep", trace_id=b"\x01" * 16, span_id=b"\x01" * 8, start_time_unix_nano=NOW)
        attribute = item.attributes.add()
        attribute.key = "deep"
        value = attribute.value
        for _ in range(120):
            value = value.array_value.values.add()
        value.string_value = "bottom"
        body = request.SerializeToString()
    receiver_log = logging.getLogger("callscope.receiver")   # propagation may be off (configure_logging)
    receiver_log.addHandler(caplog.handler)
    caplog.set_level("INFO", logger="callscope.receiver")
    try:
        error = await raw_export(collector.grpc.port, body)
    finally:
        receiver_log.removeHandler(caplog.handler)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode ExportTraceServiceRequest" in error.details()
    assert any(r.getMessage() == "export.refused" and r.code == "INVALID_ARGUMENT" for r in caplog.records)
    samples = await metrics_of(collector)
    assert total(samples, "callscope_refused_requests_total", reason="invalid_request", transport="grpc") == 1


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param(b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply",
                 id="deeper-than-python-recursion"),
    pytest.param(b'{"resourceSpans": ' + b"[" * 300 + b"]" * 300 + b"}", "nested deeper than 128 levels",
                 id="deeper-than-max-json-depth"),
    pytest.param(b'{"resourceSpans": [{"scopeSpans": 7}]}', "cannot decode", id="wrong-shape"),
    pytest.param(b'{"resourceSpans": [}', "cannot decode", id="malformed"),
])
async def test_over_deep_or_malformed_json_over_http_is_400(collector, db, body, expected):
    status, headers, answer = await http_post(collector.http.port, "/v1/traces", body,
                                              content_type="application/json")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert expected in json.loads(answer)["message"]
    # the receiver is unharmed
    good = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "stt",
        "startTimeUnixNano": str(NOW - 10**9), "endTimeUnixNano": str(NOW)}]}]}]}).encode()
    status, _, _ = await http_post(collector.http.port, "/v1/traces", good, content_type="application/json")
    assert status == 200
    assert await db.fetchval("SELECT count(*) FROM spans") == 1


async def test_a_declared_content_length_over_the_limit_is_refused_before_reading(database_url):
    settings = collector_settings(database_url, max_message_mib=1)
    async with Collector(settings, run_migrations=False) as running:
        status, _, body = await http_post(running.http.port, "/v1/traces", b"\x00" * (2 * 1024 * 1024))
        samples = await metrics_of(running)
    assert status == 413
    assert "exceeds the 1048576 byte limit" in status_pb2.Status.FromString(body).message
    assert total(samples, "callscope_refused_requests_total", reason="invalid_request", transport="http") == 1


# --- refusals with retry hints -------------------------------------------------------------------------


def _retry_infos(error: grpc.aio.AioRpcError) -> tuple[float, float]:
    """RetryInfo delays from grpc-status-details-bin and from google.rpc.retryinfo-bin."""
    trailers = error.trailing_metadata()   # indexed, not dict(): grpcio 1.66's Metadata.keys() yields pairs
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    in_status = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(in_status)
    alone = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    return tuple(info.retry_delay.seconds + info.retry_delay.nanos / 1e9  # type: ignore[return-value]
                 for info in (in_status, alone))


class StalledDatabase:
    """Holds a lock on ``spans`` so that every batch waits at COMMIT until ``release``."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    async def __aenter__(self) -> "StalledDatabase":
        self._connection = await asyncpg.connect(self._url)
        self._transaction = self._connection.transaction()
        await self._transaction.start()
        await self._connection.execute("LOCK TABLE spans IN ACCESS EXCLUSIVE MODE")
        return self

    async def release(self) -> None:
        if not self._connection.is_closed():
            await self._transaction.rollback()
            await self._connection.close()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


async def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(1000):
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_too_many_concurrent_requests_are_refused_with_retry_info_in_both_trailers(database_url, db):
    settings = collector_settings(database_url, max_concurrent_requests=1, retry_after_s=0.5)
    async with Collector(settings, run_migrations=False) as running, StalledDatabase(database_url) as stall:
        client = GrpcClient(running.grpc.port)
        first = asyncio.create_task(client.send(request_of(make_span("stt", os.urandom(16), b"\x01" * 8,
                                                                     call_id="first"))))
        await _wait_for(lambda: asyncio.sleep(0, running.ingest.in_progress == 1), "the first request is in")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.send(request_of(make_span("stt", os.urandom(16), b"\x01" * 8, call_id="second")))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests" in caught.value.details()
        assert _retry_infos(caught.value) == (0.5, 0.5)
        status, headers, _ = await http_post(running.http.port, "/v1/traces", b"")
        assert status == 429 and headers["Retry-After"] == "1"
        await stall.release()
        await first
        await client.close()
        samples = await metrics_of(running)
    assert total(samples, "callscope_refused_requests_total", reason="too_many_requests") == 2
    assert await db.fetchval("SELECT count(*) FROM spans") == 1


async def test_the_otel_sdk_exporter_waits_as_told_by_retryinfo_and_its_data_lands(database_url, db):
    # The Python exporter reads only google.rpc.retryinfo-bin; without it, it backs off 1 s, then 2 s, which
    # a 2 s export timeout does not allow: it would give up after the second refusal and the span be lost.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    settings = collector_settings(database_url, max_concurrent_requests=1, retry_after_s=0.2)
    async with Collector(settings, run_migrations=False) as running, StalledDatabase(database_url) as stall:
        client = GrpcClient(running.grpc.port)
        first = asyncio.create_task(client.send(request_of(make_span("stt", os.urandom(16), b"\x01" * 8,
                                                                     call_id="holder"))))
        await _wait_for(lambda: asyncio.sleep(0, running.ingest.in_progress == 1), "the first request is in")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=f"127.0.0.1:{running.grpc.port}", insecure=True, timeout=2)))

        def export() -> None:
            provider.get_tracer("t").start_span("stt", attributes={"call.id": "patient"}).end()
            provider.shutdown()

        exporting = asyncio.create_task(asyncio.to_thread(export))

        async def refused_twice() -> bool:
            return total(await metrics_of(running), "callscope_refused_requests_total",
                         reason="too_many_requests") >= 2

        await _wait_for(refused_twice, "the exporter retried")
        await stall.release()
        await first
        await exporting
        await client.close()
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'patient'") == 1


async def test_queue_bytes_bound_refuses_with_retry_hints_then_the_retry_lands(database_url, db):
    settings = collector_settings(database_url, queue_mib=1, retry_after_s=0.25, max_value_length=10**6)
    big = [request_of(make_span("stt", os.urandom(16), b"\x01" * 8, call_id=f"bytes-{n}", pad="x" * 700_000))
           for n in range(2)]
    async with Collector(settings, run_migrations=False) as running, StalledDatabase(database_url) as stall:
        client = GrpcClient(running.grpc.port)
        first = asyncio.create_task(client.send(big[0]))   # admitted: nothing else is queued
        await _wait_for(lambda: asyncio.sleep(0, running.batcher.queued_records == 1), "the first is queued")
        assert running.batcher.queued_bytes > 700_000
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.send(big[1])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KiB" in caught.value.details()
        assert _retry_infos(caught.value) == (0.25, 0.25)
        status, headers, _ = await http_post(running.http.port, "/v1/traces", big[1].SerializeToString())
        assert status == 429 and headers["Retry-After"] == "1"
        samples = await metrics_of(running)
        assert total(samples, "callscope_queue_bytes") > 700_000
        assert total(samples, "callscope_queue_records") == 1
        assert total(samples, "callscope_refused_requests_total", reason="queue_bytes_full") == 2
        await stall.release()
        await first
        await client.send(big[1])                           # the client's retry
        await client.close()
    assert await db.fetchval("SELECT count(*) FROM spans") == 2


# --- /health and /metrics ------------------------------------------------------------------------------


async def test_health_does_not_open_a_connection_per_request(database_url, db):
    async with Collector(collector_settings(database_url, health_probe_interval_s=600), run_migrations=False) \
            as running:
        await _health_burst(running, db)


async def _health_burst(collector: Collector, db: asyncpg.Connection) -> None:
    name = collector.settings.database_url.rsplit("/", 1)[1]
    count_backends = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
    before = await db.fetchval(count_backends, name)
    peak = before

    async def watch(stop: asyncio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, await db.fetchval(count_backends, name))
            await asyncio.sleep(0)

    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(stop))
    async with aiohttp.ClientSession() as session:
        async def probe() -> int:
            async with session.get(f"http://127.0.0.1:{collector.http.port}/health") as response:
                assert (await response.json())["status"] == "ok"
                return response.status

        for _ in range(5):
            assert set(await asyncio.gather(*(probe() for _ in range(40)))) == {200}
    stop.set()
    await watcher
    assert collector.health.probes <= 1          # one probe, cached, for 200 requests
    assert peak <= before + 1

    client = GrpcClient(collector.grpc.port)     # after a commit, /health needs no probe at all
    await client.send(request_of(make_span("stt", os.urandom(16), b"\x01" * 8, call_id="h")))
    await client.close()
    probes = collector.health.probes
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{collector.http.port}/health") as response:
            assert "last_commit_s_ago" in await response.json()
    assert collector.health.probes == probes


async def test_metrics_are_prometheus_exposition_with_counters_gauges_and_histograms(collector):
    client = GrpcClient(collector.grpc.port)
    await client.send(request_of(make_span("stt", os.urandom(16), b"\x01" * 8, call_id="m1"),
                                 make_span("tts", b"\x07" * 7, b"\x02" * 8, call_id="m1")))
    await client.close()
    await collector.settle()
    samples = await metrics_of(collector)
    assert total(samples, "callscope_received_items_total", signal="spans", transport="grpc") == 2
    assert total(samples, "callscope_rejected_items_total", signal="spans", reason="invalid_id") == 1
    assert total(samples, "callscope_committed_records_total") == 1
    assert total(samples, "callscope_batch_records_count") == 1 and total(samples, "callscope_batch_records_sum") == 1
    assert total(samples, "callscope_commit_seconds_count") == 1
    assert total(samples, "callscope_derived_calls_total") >= 1
    assert total(samples, "callscope_queue_records") == 0 and "callscope_queue_bytes" in samples
    assert "callscope_requests_in_progress" in samples


def test_gauge_callbacks_register_replace_and_survive_a_failing_source():
    first, second = Metrics(), Metrics()   # one registry each: no duplicate-registration error
    first.register_gauge_callback("callscope_derive_backlog_calls", "Dirty calls.", lambda: 3)
    second.register_gauge_callback("callscope_derive_backlog_calls", "Dirty calls.", lambda: 4)
    first.register_gauge_callback("callscope_derive_backlog_calls", "Dirty calls.", lambda: 5)   # replaces
    first.register_gauge_callback("callscope_quarantined_calls", "Quarantined calls.", lambda: 1 / 0)

    def read(metrics: Metrics) -> dict[str, float]:
        return {s.name: s.value for f in text_string_to_metric_families(metrics.exposition().decode())
                for s in f.samples}

    assert read(first)["callscope_derive_backlog_calls"] == 5
    assert read(second)["callscope_derive_backlog_calls"] == 4
    assert math.isnan(read(first)["callscope_quarantined_calls"])


async def test_partial_success_messages_stay_short_whatever_the_producer_sent(collector):
    trace = os.urandom(16)
    spans = [make_span("n" * 50_000, b"\x07" * 7, bytes([k + 1]) * 8) for k in range(50)]
    spans.append(make_span("ok", trace, b"\x01" * 8))
    status, _, body = await http_post(collector.http.port, "/v1/traces", request_of(*spans).SerializeToString())
    answer = trace_response(body).partial_success
    assert status == 200 and answer.rejected_spans == 50
    assert len(answer.error_message) <= 2048 and "(and 45 more)" in answer.error_message


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_throttled_log_line_says_how_many_times_it_was_muted():
    from collector.logs import ThrottledLog

    now = [0.0]
    logger = logging.getLogger("callscope.tests.throttled")
    captured = _Records()
    logger.addHandler(captured)
    try:
        throttled = ThrottledLog(logger, "thing.happened", interval_s=10, clock=lambda: now[0])
        throttled.add(2, what="first")
        now[0] = 5.0
        throttled.add(3)             # muted: within 10 s of the last line
        throttled.add(4)
        now[0] = 10.5
        throttled.add(1, what="later")
    finally:
        logger.removeHandler(captured)
    lines = [(r.getMessage(), r.count, r.what) for r in captured.records]  # type: ignore[attr-defined]
    assert lines == [("thing.happened", 2, "first"), ("thing.happened", 3 + 4 + 1, "later")]
