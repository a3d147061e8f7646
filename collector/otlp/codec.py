"""Decode stage: OTLP request bytes (protobuf or OTLP/JSON, optionally gzip) → ``SpanIn`` / ``LogIn``.

Walks ``resource_spans → scope_spans → spans`` once; every attribute list goes through one ``AnyValue``
decoder into a plain dict that the mapper and the raw row share. Per-item validation raises
``RejectedSpan`` for that item only; a body that cannot be parsed at all raises ``InvalidRequest``.
"""

from __future__ import annotations

import base64
import json
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.errors import InvalidRequest, RejectedSpan

__all__ = [
    "SpanIn", "LogIn", "decode_errors", "decompress", "parse_traces", "parse_logs",
    "iter_spans", "iter_logs", "attributes_to_dict", "any_value", "count_items", "clean_text",
]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


class _AttributeLookup:
    """``attr(*keys)``: the first present value among ``keys``, item attributes before resource attributes."""

    __slots__ = ()
    attributes: dict[str, Any]
    resource: dict[str, Any]

    def attr(self, *keys: str) -> Any:
        for source in (self.attributes, self.resource):
            for key in keys:
                value = source.get(key)
                if value is not None and value != "":
                    return value
        return None


@dataclass(slots=True)
class SpanIn(_AttributeLookup):
    """One decoded span with its resource and scope; input of every mapper (read-only by contract)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str | None
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    resource: dict[str, Any]
    scope_name: str
    scope_version: str


@dataclass(slots=True)
class LogIn(_AttributeLookup):
    """One decoded log record with its resource and scope."""

    time_ns: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    trace_id: str | None
    span_id: str | None
    event_name: str
    resource: dict[str, Any]
    scope_name: str


@contextmanager
def decode_errors(what: str) -> Iterator[None]:
    """The one boundary where protobuf / JSON / gzip errors become ``InvalidRequest``."""
    try:
        yield
    except InvalidRequest:
        raise
    except (DecodeError, json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError,
            OSError, EOFError, zlib.error, ValueError, TypeError) as exc:
        raise InvalidRequest(f"cannot decode {what}: {exc}") from exc


def decompress(body: bytes, encoding: str | None, *, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate or identity) without inflating past ``max_bytes``."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        data = body
    elif encoding in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
        with decode_errors(f"{encoding} body"):
            inflater = zlib.decompressobj(wbits)
            data = inflater.decompress(body, max_bytes + 1)
            if len(data) > max_bytes or inflater.unconsumed_tail:
                raise InvalidRequest(f"decompressed body exceeds the {max_bytes} byte limit")
    else:
        raise InvalidRequest(f"unsupported Content-Encoding {encoding!r} (use gzip or identity)")
    if len(data) > max_bytes:
        raise InvalidRequest(f"body of {len(data)} bytes exceeds the {max_bytes} byte limit")
    return data


# --- OTLP/JSON: ids are hex (not base64 as in proto3 JSON), enums are integers -------------------------

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _hex_ids_to_base64(node: Any) -> None:
    """Rewrite OTLP/JSON hex ids in place so protobuf's JSON parser accepts them.

    An id that is not valid hex is kept as its raw bytes, so that span (only) fails id validation later.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    raw = bytes.fromhex(value) if value else b""
                except ValueError:
                    raw = value.encode("utf-8", "replace")
                node[key] = base64.b64encode(raw).decode("ascii")
            elif isinstance(value, (dict, list)):
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _hex_ids_to_base64(item)


def _parse(body: bytes, content_type: str, message: Any, what: str) -> Any:
    with decode_errors(what):
        if content_type == "json":
            document = json.loads(body.decode("utf-8"))
            if not isinstance(document, dict):
                raise InvalidRequest(f"cannot decode {what}: the JSON body must be an object")
            _hex_ids_to_base64(document)
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    return message


def parse_traces(body: bytes, content_type: str = "protobuf") -> ExportTraceServiceRequest:
    return _parse(body, content_type, ExportTraceServiceRequest(), "ExportTraceServiceRequest")


def parse_logs(body: bytes, content_type: str = "protobuf") -> ExportLogsServiceRequest:
    return _parse(body, content_type, ExportLogsServiceRequest(), "ExportLogsServiceRequest")


# --- AnyValue → Python ------------------------------------------------------------------------------------

def clean_text(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold U+0000: it becomes U+FFFD (the rest of the value is kept)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def any_value(value: Any) -> Any:
    """OTLP ``AnyValue`` → str | bool | int | float | list | dict | bytes-as-hex | None."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return clean_text(value.string_value)
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {clean_text(kv.key): any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return None


def attributes_to_dict(key_values: Any) -> dict[str, Any]:
    # Hot path (every attribute of every span): scalar cases inline, any_value only for nested values.
    out: dict[str, Any] = {}
    for kv in key_values:
        key = kv.key
        if "\x00" in key:
            key = clean_text(key)
        value = kv.value
        which = value.WhichOneof("value")
        if which == "string_value":
            text = value.string_value
            out[key] = text if "\x00" not in text else clean_text(text)
        elif which == "int_value":
            out[key] = value.int_value
        elif which == "double_value":
            out[key] = value.double_value
        elif which == "bool_value":
            out[key] = value.bool_value
        else:
            out[key] = any_value(value)
    return out


def _span_id(raw: bytes, field: str, *, optional: bool = False) -> str | None:
    if optional and (not raw or raw == _ZERO_SPAN):
        return None
    if len(raw) != 8:
        raise RejectedSpan(f"{field} must be 8 bytes, got {len(raw)}")
    if raw == _ZERO_SPAN:
        raise RejectedSpan(f"{field} must not be all zeros")
    return raw.hex()


def _trace_id(raw: bytes) -> str:
    if len(raw) != 16:
        raise RejectedSpan(f"trace_id must be 16 bytes, got {len(raw)}")
    if raw == _ZERO_TRACE:
        raise RejectedSpan("trace_id must not be all zeros")
    return raw.hex()


def _span_events(span: Any) -> list[dict[str, Any]]:
    return [
        {"time_unix_nano": event.time_unix_nano, "name": clean_text(event.name),
         "attributes": attributes_to_dict(event.attributes)}
        for event in span.events
    ]


def iter_spans(request: ExportTraceServiceRequest) -> Iterator[SpanIn | RejectedSpan]:
    """Yield each span, or a ``RejectedSpan`` explaining why that span cannot be used."""
    for resource_spans in request.resource_spans:
        resource = attributes_to_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope_name = clean_text(scope_spans.scope.name)
            scope_version = clean_text(scope_spans.scope.version)
            for span in scope_spans.spans:
                try:
                    trace_id = _trace_id(span.trace_id)
                    span_id = _span_id(span.span_id, "span_id")
                    parent = _span_id(span.parent_span_id, "parent_span_id", optional=True)
                    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
                    if start_ns == 0:
                        raise RejectedSpan("start_time_unix_nano is missing")
                    if end_ns and end_ns < start_ns:
                        raise RejectedSpan("end_time_unix_nano is before start_time_unix_nano")
                    if not 0 <= span.kind <= 5:
                        raise RejectedSpan(f"kind {span.kind} is not a SpanKind (0-5)")
                    if not 0 <= span.status.code <= 2:
                        raise RejectedSpan(f"status.code {span.status.code} is not a StatusCode (0-2)")
                except RejectedSpan as rejected:
                    yield RejectedSpan(f"span {span.name!r}: {rejected}")
                    continue
                yield SpanIn(
                    trace_id=trace_id,
                    span_id=span_id,  # type: ignore[arg-type]
                    parent_span_id=parent,
                    name=clean_text(span.name),
                    kind=span.kind,
                    start_ns=start_ns,
                    end_ns=end_ns or start_ns,
                    status_code=span.status.code,
                    status_message=clean_text(span.status.message) or None,
                    attributes=attributes_to_dict(span.attributes),
                    events=_span_events(span) if span.events else [],
                    resource=resource,
                    scope_name=scope_name,
                    scope_version=scope_version,
                )


def iter_logs(request: ExportLogsServiceRequest) -> Iterator[LogIn | RejectedSpan]:
    """Yield each log record, or a ``RejectedSpan`` explaining why that record cannot be used."""
    for resource_logs in request.resource_logs:
        resource = attributes_to_dict(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            scope_name = clean_text(scope_logs.scope.name)
            for record in scope_logs.log_records:
                try:
                    trace_id = _trace_id(record.trace_id) if record.trace_id else None
                    span_id = _span_id(record.span_id, "span_id", optional=True) if record.span_id else None
                    time_ns = record.time_unix_nano or record.observed_time_unix_nano
                    if not time_ns:
                        raise RejectedSpan("neither time_unix_nano nor observed_time_unix_nano is set")
                except RejectedSpan as rejected:
                    yield RejectedSpan(f"log record: {rejected}")
                    continue
                yield LogIn(
                    time_ns=time_ns,
                    severity_number=record.severity_number,
                    severity_text=clean_text(record.severity_text),
                    body=any_value(record.body) if record.HasField("body") else None,
                    attributes=attributes_to_dict(record.attributes),
                    trace_id=trace_id,
                    span_id=span_id,
                    event_name=clean_text(record.event_name),
                    resource=resource,
                    scope_name=scope_name,
                )


def count_items(request: Any) -> int:
    """Spans or log records in a request (for the empty-request fast path)."""
    if isinstance(request, ExportTraceServiceRequest):
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


