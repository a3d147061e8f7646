"""The traffic generator: determinism, valid OTLP, ground truth that matches what is sent, packing, sending."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from collector.simulate import (
    STATUSES, WINDOW, SimulatedCall, encode_requests, generate_calls, retry_delay_from_status, run_simulation,
)
from collector.simulate.retry import RetryPolicy

START = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def calls() -> list[SimulatedCall]:
    return generate_calls(400, seed=11, start=START)


def _spans(call: SimulatedCall) -> list:
    return [s for r in call.trace_requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _logs(call: SimulatedCall) -> list:
    return [lr for r in call.log_requests for rl in r.resource_logs for sl in rl.scope_logs for lr in sl.log_records]


def _attrs(message) -> dict:
    out = {}
    for kv in message.attributes:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind) if kind else None
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


def _event_name(record) -> str:
    return record.event_name or _attrs(record).get("event.name", "")


def _stage(span) -> str:
    attrs = _attrs(span)
    if "voice.stage" in attrs:
        return attrs["voice.stage"]
    return {"invoke_workflow": "session", "invoke_agent": "turn", "chat": "llm",
            "execute_tool": "tool"}.get(attrs.get("gen_ai.operation.name"), "other")


def test_same_seed_gives_identical_calls_and_another_seed_does_not():
    a = generate_calls(60, seed=5, start=START)
    b = generate_calls(60, seed=5, start=START)
    c = generate_calls(60, seed=6, start=START)
    assert [x.call_id for x in a] == [x.call_id for x in b]
    assert [x.expected for x in a] == [x.expected for x in b]
    assert [[r.SerializeToString() for r in x.trace_requests + x.log_requests] for x in a] == \
           [[r.SerializeToString() for r in x.trace_requests + x.log_requests] for x in b]
    assert [x.call_id for x in a] != [x.call_id for x in c]


@pytest.mark.parametrize("count", [50, 51, 97])
def test_every_status_is_present_from_fifty_calls(count):
    statuses = Counter(c.status for c in generate_calls(count, seed=count, start=START))
    assert set(statuses) == set(STATUSES)
    assert sum(statuses.values()) == count
    assert statuses["completed"] > count / 2


def test_small_counts_and_zero():
    assert generate_calls(0, start=START) == []
    assert len(generate_calls(3, start=START)) == 3


def test_status_mix_covers_every_signal(calls):
    seen = Counter((c.status, c.expected["status_source"]) for c in calls)
    for pair in [("completed", "event"), ("completed", "session_span"), ("completed", "call.status"),
                 ("failed", "event"), ("failed", "session_span"), ("declined", "sip"), ("declined", "event"),
                 ("missed", "sip"), ("missed", "event"), ("active", "open"), ("ringing", "event"),
                 ("queued", "call.status")]:
        assert seen[pair], pair
    flavours = Counter(c.expected["flavour"] for c in calls)
    assert 0.08 < flavours["genai"] / len(calls) < 0.25
    sparse = [c for c in calls if c.expected["flavour"] == "native" and _spans(c)
              and not c.expected["call_id_on_all_spans"]]
    assert 0.15 < len(sparse) / len(calls) < 0.45


def test_ids_are_valid_and_every_parent_exists_in_the_call(calls):
    seen_traces: set[bytes] = set()
    for call in calls:
        spans = _spans(call)
        ids = [s.span_id for s in spans]
        assert len(ids) == len(set(ids)) == call.expected["span_count"]
        traces = {s.trace_id for s in spans}
        if spans:
            assert len(traces) == 1
            (trace,) = traces
            assert len(trace) == 16 and trace != bytes(16)
            assert trace.hex() in call.expected["trace_ids"]
            assert trace not in seen_traces
            seen_traces.add(trace)
        known = set(ids) | {bytes.fromhex(x) for x in call.expected["open_span_ids"]}
        by_id = {s.span_id: s for s in spans}
        for s in spans:
            assert len(s.span_id) == 8 and s.span_id != bytes(8)
            assert s.start_time_unix_nano <= s.end_time_unix_nano
            if s.parent_span_id:
                assert s.parent_span_id in known, (call.call_id, s.name)
                parent = by_id.get(s.parent_span_id)
                if parent is not None:
                    assert parent.start_time_unix_nano <= s.start_time_unix_nano
                    assert s.end_time_unix_nano <= parent.end_time_unix_nano
        roots = [s for s in spans if not s.parent_span_id]
        assert len(roots) <= 1


def test_children_are_exported_before_parents_and_the_session_span_last(calls):
    for call in calls:
        order = [s.span_id for s in _spans(call)]
        request_of = {s.span_id: i for i, r in enumerate(call.trace_requests)
                      for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans}
        for s in _spans(call):
            if s.parent_span_id in request_of:     # same request (grouped by scope) or a later one
                assert request_of[s.parent_span_id] >= request_of[s.span_id]
        if call.expected["flavour"] == "native":   # one scope: strict order inside requests too
            position = {sid: i for i, sid in enumerate(order)}
            for s in _spans(call):
                if s.parent_span_id in position:
                    assert position[s.parent_span_id] > position[s.span_id]
        session = call.expected["session_span_id"]
        if session and bytes.fromhex(session) in position:
            assert order[-1] == bytes.fromhex(session)
            assert call.expected["open_span_ids"] == []
        for request in call.trace_requests:
            assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) <= 512


def test_status_signals_match_the_expected_status(calls):
    for call in calls:
        e = call.expected
        spans = _spans(call)
        logs = _logs(call)
        names = [_event_name(r) for r in logs]
        session = next((s for s in spans if not s.parent_span_id), None)
        source = e["status_source"]
        assert call.status == e["status"] and call.call_id == e["call_id"]
        if source == "event":
            assert f"call.{call.status}" in names
        elif source == "sip":
            assert session is not None
            code = _attrs(session)["sip.response.code"]
            assert code == e["sip_code"]
            assert code in ({486, 600, 603} if call.status == "declined" else {408, 480, 487})
            assert f"call.{call.status}" not in names
        elif source == "call.status":
            carriers = [_attrs(r) for r in logs] + ([_attrs(session)] if session else [])
            assert any(a.get("call.status") == call.status for a in carriers)
        elif source == "session_span":
            assert session is not None and not any(n in ("call.completed", "call.failed") for n in names)
            assert (session.status.code == Status.STATUS_CODE_ERROR) == (call.status == "failed")
        elif source == "open":
            assert call.status == "active"
        if call.status in ("active", "ringing"):
            assert e["session_span_id"] in e["open_span_ids"]
            assert e["ended_at"] is None
        if call.status == "queued":
            assert not spans and names == ["call.queued"]
            assert _attrs(logs[0])["call.status"] == "queued" and _attrs(logs[0])["call.id"] == call.call_id
            assert not logs[0].trace_id
        if call.status == "ringing":
            assert not spans and names[-1] == "call.ringing"
        if call.status == "failed":
            assert e["status_reason"]
        if call.status in ("completed", "failed") and e["turn_count"]:
            assert 2 <= e["turn_count"] <= 8


def test_expected_turns_tools_and_events_match_the_spans_and_logs(calls):
    for call in calls:
        e = call.expected
        spans = _spans(call)
        logs = _logs(call)
        turns = [s for s in spans if _stage(s) == "turn"]
        assert e["turn_count"] == len(turns) == len(e["turns"])
        if e["flavour"] == "native":
            numbers = sorted(_attrs(t)["turn.number"] for t in turns)
            assert numbers == [t["number"] for t in e["turns"]]
            interrupted = sorted(n for t in turns if _attrs(t).get("turn.interrupted")
                                 for n in [_attrs(t)["turn.number"]])
            assert interrupted == e["interrupted_turns"]
            assert e["interruption_count"] == len(interrupted) == \
                sum(1 for r in logs if _event_name(r) == "agent.interrupted")
        tools = [s for s in spans if _stage(s) == "tool"]
        assert {(_attrs(s)["gen_ai.tool.call.id"], s.status.code == Status.STATUS_CODE_ERROR) for s in tools} == \
               {(t["tool_call_id"], t["is_error"]) for t in e["tool_calls"]}
        assert e["tool_call_count"] == len(tools)
        assert e["failed_tools"] == [t["tool_call_id"] for t in e["tool_calls"] if t["is_error"]]
        for s in tools:
            a = _attrs(s)
            assert s.name == f"execute_tool {a['gen_ai.tool.name']}" and a["gen_ai.operation.name"] == "execute_tool"
            json.loads(a["gen_ai.tool.call.arguments"])
            if s.status.code == Status.STATUS_CODE_ERROR:
                assert a["error.type"]
            else:
                json.loads(a["gen_ai.tool.call.result"])
        names = [_event_name(r) for r in logs]
        assert names == e["events"] and len(logs) == e["log_count"]
        assert e["webhook_events"] == [n for n in names if n.startswith("webhook.")]
        if e["webhook_events"]:
            assert e["webhook_events"][0] == "webhook.queued"
            assert e["webhook_events"][-1] in ("webhook.response_success", "webhook.retry_exhausted")
        for record in logs:
            if e["log_event_style"] == "event_name":
                assert record.event_name and "event.name" not in _attrs(record)
            else:
                assert not record.event_name and _attrs(record)["event.name"]
            assert record.severity_number in (9, 13, 17)
            if record.trace_id:
                assert record.trace_id.hex() in e["trace_ids"]
            if record.span_id:
                assert record.span_id.hex() in {s.span_id.hex() for s in spans} | set(e["open_span_ids"])
        levels = {_event_name(r): r.severity_number for r in logs}
        for name, level in [("webhook.response_failed", 13), ("webhook.retry_exhausted", 17),
                            ("call.failed", 17), ("tool.transfer.failed", 17)]:
            if name in levels:
                assert levels[name] == level


def test_native_calls_follow_the_convention(calls):
    for call in (c for c in calls if c.expected["flavour"] == "native"):
        e = call.expected
        for s in _spans(call):
            a = _attrs(s)
            stage = a["voice.stage"]
            if stage in ("session", "turn"):
                assert a["call.id"] == call.call_id
            elif e["call_id_on_all_spans"]:
                assert a["call.id"] == call.call_id
            else:
                assert "call.id" not in a and "turn.number" not in a
            if stage == "session" and call.status == "completed":
                assert a["call.agent"] == e["agent"] and a["call.direction"] == e["direction"]
                assert isinstance(a["call.tags"], list) and json.loads(a["call.extracted"]) == e["extracted"]
                assert a.get("call.campaign") == e["campaign"]
        if e["direction"] in ("inbound", "outbound"):
            assert e["from"].startswith("+1") and e["to"].startswith("+1")
        for record in _logs(call):
            if _event_name(record).startswith(("call.", "webhook.")):
                assert _attrs(record)["call.id"] == call.call_id


def test_turn_latencies_are_consistent_with_the_stage_spans(calls):
    checked = 0
    for call in (c for c in calls if c.expected["flavour"] == "native"):
        spans = _spans(call)
        children: dict[bytes, list] = {}
        for s in spans:
            children.setdefault(s.parent_span_id, []).append(s)
        truth = {t["number"]: t for t in call.expected["turns"]}
        for turn in (s for s in spans if _stage(s) == "turn"):
            t = truth[_attrs(turn)["turn.number"]]
            kids = {}
            for c in children.get(turn.span_id, []):
                kids.setdefault(_stage(c), []).append(c)
            if t["user_text"] is None:          # greeting: tts only
                assert set(kids) == {"tts"}
                continue
            stt = kids["stt"][0]
            llms = sorted(kids["llm"], key=lambda s: s.start_time_unix_nano)
            assert t["stt_ms"] == pytest.approx((stt.end_time_unix_nano - stt.start_time_unix_nano) / 1e6, abs=1e-3)
            assert 5e6 <= llms[0].start_time_unix_nano - stt.end_time_unix_nano <= 30e6 + 1
            if t["voice_to_voice_ms"] is not None:
                tts = kids["tts"][0]
                first_token = llms[-1].start_time_unix_nano + _attrs(llms[-1])["llm.ttft_ms"] * 1e6
                assert tts.start_time_unix_nano > first_token
                audio = tts.start_time_unix_nano + _attrs(tts)["tts.ttfb_ms"] * 1e6
                assert t["voice_to_voice_ms"] == pytest.approx((audio - stt.start_time_unix_nano) / 1e6, abs=0.01)
                assert t["llm_ttft_ms"] == _attrs(llms[0])["llm.ttft_ms"]
                checked += 1
            if "tool" in kids:
                tool = kids["tool"][0]
                assert llms[0].end_time_unix_nano <= tool.start_time_unix_nano
                assert tool.end_time_unix_nano <= llms[-1].start_time_unix_nano
    assert checked > 200
    stt = sorted(t["stt_ms"] for c in calls for t in c.expected["turns"] if t["stt_ms"] is not None)
    ttfb = sorted(t["tts_ttfb_ms"] for c in calls for t in c.expected["turns"] if t["tts_ttfb_ms"] is not None)
    assert 180 < stt[len(stt) // 2] < 320
    assert 120 < ttfb[len(ttfb) // 2] < 260


def test_genai_calls_use_only_genai_semantic_conventions(calls):
    genai = [c for c in calls if c.expected["flavour"] == "genai"]
    assert genai
    for call in genai:
        spans = _spans(call)
        for s in spans:
            a = _attrs(s)
            assert "voice.stage" not in a and not any(k.startswith("call.") for k in a)
            assert a["gen_ai.operation.name"] in ("invoke_workflow", "invoke_agent", "chat", "execute_tool")
            if a["gen_ai.operation.name"] in ("invoke_workflow", "invoke_agent"):
                assert a["gen_ai.conversation.id"] == call.call_id
            if a["gen_ai.operation.name"] == "chat" and s.status.code != Status.STATUS_CODE_ERROR:
                assert 0 < a["gen_ai.response.time_to_first_chunk"] < 10
                assert ("gen_ai.provider.name" in a) != ("gen_ai.system" in a)
        names = {_event_name(r) for r in _logs(call)}
        assert names <= {"gen_ai.client.inference.operation.details", "gen_ai.user.message", "gen_ai.choice"}


def test_calls_fall_inside_the_window_and_open_calls_at_its_end(calls):
    end = START + WINDOW
    for call in calls:
        times = [s.start_time_unix_nano for s in _spans(call)] + [r.time_unix_nano for r in _logs(call)]
        times += [s.end_time_unix_nano for s in _spans(call)]
        first = datetime.fromtimestamp(min(times) / 1e9, tz=timezone.utc)
        last = datetime.fromtimestamp(max(times) / 1e9, tz=timezone.utc)
        assert START - timedelta(minutes=2) <= first and last <= end
        if call.status in ("active", "ringing", "queued"):
            assert end - last < timedelta(seconds=90)


def test_default_start_puts_calls_in_the_last_hours():
    now = datetime.now(timezone.utc)
    for call in generate_calls(20, seed=2):
        times = [r.time_unix_nano for r in _logs(call)] + [s.end_time_unix_nano for s in _spans(call)]
        assert now - WINDOW - timedelta(minutes=2) <= datetime.fromtimestamp(min(times) / 1e9, tz=timezone.utc)
        assert datetime.fromtimestamp(max(times) / 1e9, tz=timezone.utc) <= now + timedelta(seconds=1)


@pytest.mark.parametrize("per_request", [1, 37, 512])
def test_encode_requests_packs_at_most_n_spans_per_request_in_end_time_order(calls, per_request):
    subset = calls[:60] if per_request == 1 else calls
    trace_bodies, log_bodies = encode_requests(subset, spans_per_request=per_request)
    total_spans = sum(c.expected["span_count"] for c in subset)
    total_logs = sum(c.expected["log_count"] for c in subset)
    decoded = [trace_service_pb2.ExportTraceServiceRequest.FromString(b) for b in trace_bodies]
    counts = [sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) for r in decoded]
    assert all(0 < n <= per_request for n in counts) and sum(counts) == total_spans
    order = [s for r in decoded for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    if per_request == 1:
        ends = [s.end_time_unix_nano for s in order]
        assert ends == sorted(ends)
    request_of = {s.span_id: i for i, r in enumerate(decoded)
                  for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans}
    for s in order:
        if s.parent_span_id in request_of:
            assert request_of[s.parent_span_id] >= request_of[s.span_id]
    # With one scope per call (native), a root is also the last span of its call in its request; with
    # several scopes the exporter's grouping by scope decides the order inside a request.
    roots = {s.span_id for s in order if not s.parent_span_id and "voice.stage" in _attrs(s)}
    for r in decoded:
        in_request = [s for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
        for i, s in enumerate(in_request):
            if s.span_id in roots:
                assert not any(x.trace_id == s.trace_id for x in in_request[i + 1:])
    assert {s.SerializeToString() for s in order} == {s.SerializeToString() for c in subset for s in _spans(c)}
    logs = [logs_service_pb2.ExportLogsServiceRequest.FromString(b) for b in log_bodies]
    log_counts = [sum(len(sl.log_records) for rl in r.resource_logs for sl in rl.scope_logs) for r in logs]
    assert all(0 < n <= per_request for n in log_counts) and sum(log_counts) == total_logs
    if per_request == 512:
        traces_per_request = [len({s.trace_id for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans})
                              for r in decoded]
        assert max(traces_per_request) > 10     # many calls share a request, like a real batch processor


def test_encode_requests_rejects_bad_sizes(calls):
    with pytest.raises(ValueError):
        encode_requests(calls[:2], spans_per_request=0)


def test_retry_delay_is_read_from_a_google_rpc_status():
    status_pb2 = pytest.importorskip("google.rpc.status_pb2")
    error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds, info.retry_delay.nanos = 1, 250_000_000
    status = status_pb2.Status(code=8, message="busy")
    status.details.add().Pack(info)
    assert retry_delay_from_status(status.SerializeToString()) == pytest.approx(1.25)
    assert retry_delay_from_status(status_pb2.Status(code=8).SerializeToString()) is None
    assert retry_delay_from_status(b"\xff\xff") is None


class _FlakyReceiver:
    """Refuses every 5th trace export once with RESOURCE_EXHAUSTED + RetryInfo; rejects one span per request."""

    def __init__(self) -> None:
        self.spans = 0
        self.logs = 0
        self.exports = 0
        self.refused = 0
        self.accepted = 0

    async def Export(self, request, context):   # noqa: N802 - gRPC method name
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            self.logs += sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
            self.accepted += 1
            return logs_service_pb2.ExportLogsServiceResponse()
        self.exports += 1
        if self.exports % 5 == 0:
            self.refused += 1
            status_pb2 = pytest.importorskip("google.rpc.status_pb2")
            error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
            info = error_details_pb2.RetryInfo()
            info.retry_delay.nanos = 50_000_000
            status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="busy")
            status.details.add().Pack(info)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                                trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        self.accepted += 1
        response = trace_service_pb2.ExportTraceServiceResponse()
        response.partial_success.rejected_spans = 1
        response.partial_success.error_message = "one span rejected"
        return response


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, inner: _FlakyReceiver) -> None:
        self.Export = inner.Export


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, inner: _FlakyReceiver) -> None:
        self.Export = inner.Export


async def test_run_simulation_over_grpc_retries_with_retry_info_and_counts_partial_success():
    pytest.importorskip("google.rpc.error_details_pb2")
    receiver = _FlakyReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(receiver), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    progress: list[int] = []
    try:
        report = await run_simulation(f"127.0.0.1:{port}", calls=12, concurrency=4, seed=3,
                                      progress=progress.append, timeout=10)
    finally:
        await server.stop(None)
    expected = generate_calls(12, seed=3, start=START)
    assert report.transport == "grpc" and report.calls == 12 and progress[-1] == 12
    assert sorted(progress) == list(range(1, 13))
    assert report.spans == receiver.spans == sum(c.expected["span_count"] for c in expected)
    assert report.log_records == receiver.logs == sum(c.expected["log_count"] for c in expected)
    assert report.retries == receiver.refused > 0
    assert report.failed_requests == 0 and report.errors == ()
    assert report.requests == receiver.accepted
    assert report.rejected_spans == receiver.exports - receiver.refused == report.rejected


def test_backoff_doubles_from_one_second_with_twenty_percent_jitter_up_to_the_cap():
    import random

    policy = RetryPolicy()
    rng = random.Random(1)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (9, 30.0)]:
        delays = [policy.backoff(failures, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) < base * 0.85 and base * 1.15 < max(delays) <= base * 1.2, failures


class _RefusingReceiver(trace_service_pb2_grpc.TraceServiceServicer, logs_service_pb2_grpc.LogsServiceServicer):
    """Refuses the first ``refusals`` trace exports with ``code`` (and ``trailers``), then accepts everything."""

    def __init__(self, code: grpc.StatusCode, refusals: int, trailers: tuple = ()) -> None:
        self.code, self.refusals, self.trailers = code, refusals, trailers
        self.attempts = 0
        self.accepted = 0
        self.spans = 0

    async def Export(self, request, context):   # noqa: N802 - gRPC method name
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            return logs_service_pb2.ExportLogsServiceResponse()
        self.attempts += 1
        if self.attempts <= self.refusals:
            await context.abort(self.code, "refused", trailing_metadata=self.trailers)
        self.accepted += 1
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def _simulate_against(receiver: _RefusingReceiver, calls: int):
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await run_simulation(f"127.0.0.1:{port}", calls=calls, concurrency=1, seed=5, timeout=10,
                                    retry=RetryPolicy(initial_backoff_s=0.01))
    finally:
        await server.stop(None)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_transient_grpc_codes_are_retried_with_backoff_when_the_server_gives_no_hint(code):
    receiver = _RefusingReceiver(code, refusals=3)
    report = await _simulate_against(receiver, calls=3)
    expected = generate_calls(3, seed=5, start=START)
    assert report.retries == 3 and report.failed_requests == 0
    assert report.spans == receiver.spans == sum(c.expected["span_count"] for c in expected)


async def test_resource_exhausted_without_retry_info_is_permanent_and_with_it_is_retried():
    """OTLP: RESOURCE_EXHAUSTED is retried only when the server says recovery is possible (RetryInfo); the
    bare RetryInfo trailer the OTel Python exporters read counts too."""
    bare = _RefusingReceiver(grpc.StatusCode.RESOURCE_EXHAUSTED, refusals=1)
    report = await _simulate_against(bare, calls=1)
    assert report.retries == 0 and report.failed_requests == 1 and "RESOURCE_EXHAUSTED" in report.errors[0]
    error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
    info = error_details_pb2.RetryInfo()
    info.retry_delay.nanos = 20_000_000
    hinted = _RefusingReceiver(grpc.StatusCode.RESOURCE_EXHAUSTED, refusals=2,
                               trailers=(("google.rpc.retryinfo-bin", info.SerializeToString()),))
    report = await _simulate_against(hinted, calls=1)
    assert report.retries == 2 and report.failed_requests == 0 and report.spans == hinted.spans > 0


async def test_permanent_grpc_codes_are_not_retried():
    receiver = _RefusingReceiver(grpc.StatusCode.INVALID_ARGUMENT, refusals=1)
    report = await _simulate_against(receiver, calls=1)
    assert report.retries == 0 and report.failed_requests == 1
    assert receiver.attempts == receiver.accepted + 1     # the refused request was sent once, not again


async def test_retrying_stops_when_the_next_wait_would_pass_the_budget():
    error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = 600      # longer than the 120 s budget: give up at once, do not sleep
    receiver = _RefusingReceiver(grpc.StatusCode.RESOURCE_EXHAUSTED, refusals=1,
                                 trailers=(("google.rpc.retryinfo-bin", info.SerializeToString()),))
    report = await _simulate_against(receiver, calls=1)
    assert report.retries == 0 and report.failed_requests == 1
    assert report.errors[0].startswith("gave up after retries: RESOURCE_EXHAUSTED")


async def test_run_simulation_over_http_honors_retry_after_and_gives_up_on_permanent_errors():
    from aiohttp import web

    seen = {"traces": 0, "logs": 0, "refused": 0}

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        if seen["refused"] < 2:
            seen["refused"] += 1
            return web.Response(status=429 if seen["refused"] == 1 else 503, headers={"Retry-After": "0"})
        seen["traces"] += sum(len(ss.spans) for rs in body.resource_spans for ss in rs.scope_spans)
        return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def logs(request: web.Request) -> web.Response:
        seen["logs"] += 1
        return web.Response(status=400, text="bad logs")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/logs", logs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        report = await run_simulation(f"http://127.0.0.1:{port}", calls=5, concurrency=2, seed=9, timeout=10)
    finally:
        await runner.cleanup()
    expected = generate_calls(5, seed=9, start=START)
    assert report.transport == "http" and report.calls == 5
    assert report.retries == 2 and report.spans == seen["traces"] == sum(c.expected["span_count"] for c in expected)
    assert report.log_records == 0
    assert report.failed_requests == seen["logs"] > 0     # a 400 is permanent: no retry
    assert "HTTP 400" in report.errors[0]
