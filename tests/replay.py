"""Replay recorded framework OTLP requests (tests/fixtures/recordings/<name>/) through the real receiver.

Three front doors, same bytes: gRPC (``grpc.aio`` stubs), OTLP/HTTP protobuf and OTLP/HTTP JSON (converted
with ``MessageToDict`` and the ids rewritten from base64 to hex, as OTLP/JSON requires).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

RECORDINGS = Path(__file__).parent / "fixtures" / "recordings"
TRANSPORTS = ("grpc", "http-protobuf", "http-json")
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


@dataclass(frozen=True)
class Recording:
    name: str
    meta: dict[str, Any]
    requests: tuple[trace_service_pb2.ExportTraceServiceRequest | logs_service_pb2.ExportLogsServiceRequest, ...]

    @property
    def spans(self) -> list[Any]:
        """Every recorded span, in arrival order."""
        return [span for request in self.requests
                if isinstance(request, trace_service_pb2.ExportTraceServiceRequest)
                for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]

    @property
    def log_records(self) -> list[Any]:
        """Every recorded log record, in arrival order."""
        return [record for request in self.requests
                if isinstance(request, logs_service_pb2.ExportLogsServiceRequest)
                for rl in request.resource_logs for sl in rl.scope_logs for record in sl.log_records]

    @property
    def trace_ids(self) -> set[str]:
        """The traces the recorded spans belong to."""
        return {span.trace_id.hex() for span in self.spans}

    @property
    def log_record_count(self) -> int:
        return len(self.log_records)

    @property
    def scripted(self) -> tuple[int, int, int]:
        """(turns, interrupted turns, tool calls) of the scripted call the recorder ran (meta.json)."""
        turns = self.meta["turns"]
        return len(turns), sum(1 for turn in turns if turn["interrupted"]), len(self.meta["tools"])


def load(name: str) -> Recording:
    """All recorded requests of one run, traces then logs, each in arrival order."""
    folder = RECORDINGS / name
    requests: list[Any] = []
    for path in sorted(folder.glob("traces-*.pb")):
        requests.append(trace_service_pb2.ExportTraceServiceRequest.FromString(path.read_bytes()))
    for path in sorted(folder.glob("logs-*.pb")):
        requests.append(logs_service_pb2.ExportLogsServiceRequest.FromString(path.read_bytes()))
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Recording(name, meta, tuple(requests))


def _ids_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


def to_otlp_json(request: Any) -> bytes:
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    _ids_to_hex(document)
    return json.dumps(document).encode()


async def send(transport: str, collector: Any, request: Any) -> Any:
    """One Export through ``transport``; returns the (decoded) Export response, asserting success."""
    is_traces = isinstance(request, trace_service_pb2.ExportTraceServiceRequest)
    if transport == "grpc":
        async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc.port}") as channel:
            if is_traces:
                return await trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=30)
            return await logs_service_pb2_grpc.LogsServiceStub(channel).Export(request, timeout=30)
    path = "/v1/traces" if is_traces else "/v1/logs"
    if transport == "http-protobuf":
        body, content_type = request.SerializeToString(), "application/x-protobuf"
    elif transport == "http-json":
        body, content_type = to_otlp_json(request), "application/json"
    else:
        raise ValueError(transport)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{collector.http.port}{path}", data=body,
                                headers={"Content-Type": content_type}) as response:
            payload = await response.read()
            assert response.status == 200, (response.status, payload[:500])
    response_type = (trace_service_pb2.ExportTraceServiceResponse if is_traces
                     else logs_service_pb2.ExportLogsServiceResponse)
    if content_type == "application/json":
        return json_format.Parse(payload or b"{}", response_type(), ignore_unknown_fields=True)
    return response_type.FromString(payload)


async def replay(name: str, collector: Any, transport: str = "grpc", *, reverse: bool = False) -> Recording:
    """Send every recorded request of ``name``; asserts nothing was rejected."""
    recording = load(name)
    requests = list(reversed(recording.requests)) if reverse else list(recording.requests)
    for request in requests:
        response = await send(transport, collector, request)
        rejected = (response.partial_success.rejected_spans
                    if isinstance(request, trace_service_pb2.ExportTraceServiceRequest)
                    else response.partial_success.rejected_log_records)
        assert rejected == 0, response.partial_success.error_message
    return recording


# --- reading the ledger back (plain SQL) ----------------------------------------------------------------------

async def settle(collector: Any) -> None:
    """Wait until what was accepted is derived (the collector may derive asynchronously)."""
    settle_fn = getattr(collector, "settle", None)
    if settle_fn is not None:
        await settle_fn()


async def ledger(db: Any, call_id: str) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """(call row, turns by number, tool calls by start, events by time) of one call."""
    call = await db.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
    turns = await db.fetch("SELECT * FROM turns WHERE call_id = $1 ORDER BY turn_number", call_id)
    tools = await db.fetch("SELECT * FROM tool_calls WHERE call_id = $1 ORDER BY started_at NULLS LAST, tool_call_id",
                           call_id)
    events = await db.fetch("SELECT * FROM callscope_call_events($1) ORDER BY time, event", call_id)
    return call, list(turns), list(tools), list(events)


def event_keys(events: list[Any]) -> set[tuple[str, int | None]]:
    return {(e["event"], e["turn_number"]) for e in events}


# --- hand-built requests (framework versions we have no recording of) -------------------------------------

def _any_value(value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def _key_values(attributes: dict[str, Any]) -> list[Any]:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()]


def trace_request(scope: str, spans: list[dict[str, Any]], *, trace_id: str = "5" * 32, t0_ns: int,
                  resource: dict[str, Any] | None = None) -> trace_service_pb2.ExportTraceServiceRequest:
    """One request: ``spans`` are dicts with name, id (hex or short int), parent, start/end (ms after t0),
    attributes, events [(name, ms, attributes)], status (0/1/2)."""
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    def span_id(value: Any) -> bytes:
        return bytes.fromhex(value if isinstance(value, str) else f"{value:016x}")

    built = []
    for item in spans:
        built.append(Span(
            trace_id=bytes.fromhex(trace_id), span_id=span_id(item["id"]),
            parent_span_id=span_id(item["parent"]) if item.get("parent") is not None else b"",
            name=item["name"], kind=item.get("kind", 1),
            start_time_unix_nano=t0_ns + int(item["start"] * 1_000_000),
            end_time_unix_nano=t0_ns + int(item["end"] * 1_000_000),
            attributes=_key_values(item.get("attributes", {})),
            events=[Span.Event(name=name, time_unix_nano=t0_ns + int(ms * 1_000_000), attributes=_key_values(attrs))
                    for name, ms, attrs in item.get("events", ())],
            status=Status(code=item.get("status", 0), message=item.get("status_message", "")),
        ))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=_key_values(resource or {"service.name": "agent"})),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=built)])])
