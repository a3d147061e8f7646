"""Encoding: drafts → OTLP protobuf messages, grouped into Export requests the way an SDK's batch processors
send them, and many calls packed into request bodies (``encode_requests``). protobuf does all serialization.

Per call, spans go out in end-time order in 5 s windows of at most 512 (``BatchSpanProcessor``), so children
come before parents and the root span is last; ``encode_requests`` packs many calls per request the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from collector.simulate.model import ERR, INFO, WARN, DraftLog, DraftSpan, SimulatedCall

__all__ = ["key_values", "any_value", "trace_requests", "log_requests", "encode_requests"]

_EXPORT_WINDOW_NS = 5_000_000_000        # BatchSpanProcessor / BatchLogRecordProcessor schedule delay
_MAX_EXPORT_BATCH = 512
_SEVERITY_TEXT = {INFO: "INFO", WARN: "WARN", ERR: "ERROR"}


def key_values(values: dict[str, Any]) -> list[KeyValue]:
    """OTLP attributes of a dict (``None`` values are left out)."""
    return [KeyValue(key=k, value=any_value(v)) for k, v in values.items() if v is not None]


def any_value(v: Any) -> AnyValue:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(v)))
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    raise TypeError(f"unsupported attribute value {v!r}")


# ------------------------------------------------------------------------------------------- one call

def _export_windows(items: list[Any], key: Callable[[Any], int]) -> Iterator[list[Any]]:
    """Group time-ordered items like a batch processor: one export per schedule window, ≤ 512 each."""
    group: list[Any] = []
    window = None
    for item in items:
        w = key(item) // _EXPORT_WINDOW_NS
        if group and (w != window or len(group) >= _MAX_EXPORT_BATCH):
            yield group
            group = []
        window = w
        group.append(item)
    if group:
        yield group


def _span_message(trace_id: bytes, s: DraftSpan) -> Span:
    return Span(
        trace_id=trace_id, span_id=s.span_id, parent_span_id=s.parent, name=s.name, kind=s.kind,
        start_time_unix_nano=s.start, end_time_unix_nano=s.end, attributes=key_values(s.attrs), flags=0x101,
        events=[Span.Event(time_unix_nano=t, name=n, attributes=key_values(a)) for t, n, a in s.events],
        status=Status(code=s.status, message=s.message),
    )


def _log_message(trace_id: bytes, lg: DraftLog, *, event_name_attribute: bool) -> LogRecord:
    attrs = lg.attrs
    event_name = lg.name
    if event_name_attribute:    # SDKs before LogRecord.event_name put the event name in an attribute
        attrs = {"event.name": lg.name, **attrs}
        event_name = ""
    body = AnyValue(string_value=lg.body) if isinstance(lg.body, str) else any_value(lg.body)
    traced = lg.traced
    return LogRecord(
        time_unix_nano=lg.time, observed_time_unix_nano=lg.observed, severity_number=lg.severity,
        severity_text=_SEVERITY_TEXT[lg.severity], body=body, attributes=key_values(attrs), event_name=event_name,
        trace_id=trace_id if traced else b"", span_id=lg.span_id if traced else b"",
        flags=1 if traced else 0,
    )


def trace_requests(trace_id: bytes, resource: Resource,
                   spans: list[DraftSpan]) -> tuple[ExportTraceServiceRequest, ...]:
    """One call's end-time-ordered spans as the trace exports of one SDK."""
    out = []
    for group in _export_windows(spans, lambda s: s.end):
        scopes: dict[str, tuple[InstrumentationScope, list[Span]]] = {}
        for s in group:
            scopes.setdefault(s.scope.name, (s.scope, []))[1].append(_span_message(trace_id, s))
        # The exporter groups a batch by scope; the scope holding the batch's last span goes last, so a
        # root span ends the request (within a request, order across scopes carries no meaning).
        last = group[-1].scope.name
        ordered = [v for k, v in scopes.items() if k != last] + [scopes[last]]
        out.append(ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=resource, scope_spans=[ScopeSpans(scope=sc, spans=pbs) for sc, pbs in ordered],
        )]))
    return tuple(out)


def log_requests(trace_id: bytes, resource: Resource, scope: InstrumentationScope, logs: list[DraftLog], *,
                 event_name_attribute: bool) -> tuple[ExportLogsServiceRequest, ...]:
    """One call's time-ordered log records as the log exports of one SDK."""
    out = []
    for group in _export_windows(logs, lambda lg: lg.time):
        records = [_log_message(trace_id, lg, event_name_attribute=event_name_attribute) for lg in group]
        out.append(ExportLogsServiceRequest(resource_logs=[ResourceLogs(
            resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=records)],
        )]))
    return tuple(out)


# ------------------------------------------------------------------------------------------- many calls

class _Batch:
    """The records of one request grouped by resource, then scope, the way an exporter groups a batch.

    Iteration follows each group's *last* record (a group is re-inserted when it grows), so the resource and
    scope holding a call's root span come last and the root ends the request.
    """

    def __init__(self) -> None:
        self.groups: dict[bytes, tuple[Any, dict[bytes, tuple[Any, list[Any]]]]] = {}

    def add(self, resource: tuple[bytes, Any], scope: tuple[bytes, Any], record: Any) -> None:
        _, scopes = self.groups.pop(resource[0], (resource[1], {}))
        _, records = scopes.pop(scope[0], (scope[1], []))
        records.append(record)
        scopes[scope[0]] = (scope[1], records)
        self.groups[resource[0]] = (resource[1], scopes)


def _body(request: Any, batch: _Batch, resources: str, scopes: str, records: str) -> bytes:
    """``batch`` as one Export request: ``request.<resources>[].<scopes>[].<records>[]`` (traces and logs
    differ only in these names)."""
    for resource, by_scope in batch.groups.values():
        resource_group = getattr(request, resources).add()
        resource_group.resource.CopyFrom(resource)
        for scope, items in by_scope.values():
            scope_group = getattr(resource_group, scopes).add()
            scope_group.scope.CopyFrom(scope)
            getattr(scope_group, records).extend(items)
    return request.SerializeToString()


def _trace_body(batch: _Batch) -> bytes:
    return _body(ExportTraceServiceRequest(), batch, "resource_spans", "scope_spans", "spans")


def _log_body(batch: _Batch) -> bytes:
    return _body(ExportLogsServiceRequest(), batch, "resource_logs", "scope_logs", "log_records")


def _keyed(message: Any) -> tuple[bytes, Any]:
    """A resource or scope with the bytes that identify it (equal content, one group)."""
    return message.SerializeToString(deterministic=True), message


def _bodies(items: list[tuple[Any, ...]], per_request: int, encode: Callable[[_Batch], bytes]) -> list[bytes]:
    items.sort(key=lambda x: x[:3])   # time, call index, position in the call (each call's own order)
    bodies = []
    for i in range(0, len(items), per_request):
        batch = _Batch()
        for _, _, _, resource, scope, record in items[i:i + per_request]:
            batch.add(resource, scope, record)
        bodies.append(encode(batch))
    return bodies


def _flatten(call_index: int, requests: Iterable[Any], resources: str, scopes: str, records: str,
             time_of: Callable[[Any], int]) -> list[tuple[Any, ...]]:
    """One call's records as (time, call index, position in the call, resource, scope, record)."""
    out: list[tuple[Any, ...]] = []
    for request in requests:
        for group in getattr(request, resources):
            resource = _keyed(group.resource)
            for scoped in getattr(group, scopes):
                scope = _keyed(scoped.scope)
                out.extend((time_of(record), call_index, len(out) + i, resource, scope, record)
                           for i, record in enumerate(getattr(scoped, records)))
    return out


def encode_requests(calls: Iterable[SimulatedCall], *, spans_per_request: int = 512,
                    logs_per_request: int | None = None) -> tuple[list[bytes], list[bytes]]:
    """Pre-encoded OTLP trace and log request bodies for ``calls``, packed like one BatchSpanProcessor.

    Spans of all calls are ordered by end time (children before parents, every call's root last) and cut
    into requests of at most ``spans_per_request`` spans; logs likewise by time (``logs_per_request``,
    default the same). Bodies parse as ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest``.
    """
    if spans_per_request < 1:
        raise ValueError("spans_per_request must be >= 1")
    logs_per_request = spans_per_request if logs_per_request is None else logs_per_request
    if logs_per_request < 1:
        raise ValueError("logs_per_request must be >= 1")
    spans: list[tuple[Any, ...]] = []
    logs: list[tuple[Any, ...]] = []
    for ci, call in enumerate(calls):
        spans += _flatten(ci, call.trace_requests, "resource_spans", "scope_spans", "spans",
                          lambda span: span.end_time_unix_nano)
        logs += _flatten(ci, call.log_requests, "resource_logs", "scope_logs", "log_records",
                         lambda record: record.time_unix_nano)
    return _bodies(spans, spans_per_request, _trace_body), _bodies(logs, logs_per_request, _log_body)
