"""Decode stage: OTLP request bytes (protobuf or OTLP/JSON, optionally gzip) → ``SpanIn`` / ``LogIn``
(collector/items.py).

Walks ``resource_spans → scope_spans → spans`` once; every attribute list goes through one ``AnyValue``
decoder into a plain dict that the mapper and the raw row share. Per-item validation raises
``RejectedSpan`` for that item only; a body that cannot be parsed at all raises ``InvalidRequest``.

Limits in the OpenTelemetry SDK's spirit (``ItemLimits``): attributes past ``max_attributes`` are dropped and
counted, strings past ``max_value_length`` are cut with a visible marker, values nested deeper than
``max_value_depth`` become a marker. What was cut is counted in ``DecodeStats``, never silent.
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

from collector.errors import InvalidRequest, RejectedSpan, shorten
from collector.items import DEFAULT_LIMITS, ItemLimits, LogIn, SpanIn

__all__ = [
    "DecodeStats", "ValueDecoder", "decode_errors", "decompress", "parse_traces", "parse_logs", "iter_spans",
    "iter_logs", "attributes_to_dict", "any_value", "count_items", "clean_text", "DROPPED_ATTRIBUTES_KEY",
]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


DROPPED_ATTRIBUTES_KEY = "callscope.dropped_attributes_count"


@contextmanager
def decode_errors(what: str) -> Iterator[None]:
    """The one boundary where protobuf / JSON / gzip errors become ``InvalidRequest``."""
    try:
        yield
    except InvalidRequest:
        raise
    except RecursionError as exc:  # json.loads on a body nested thousands of levels deep
        raise InvalidRequest(f"cannot decode {what}: nested too deeply") from exc
    except (DecodeError, json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError,
            OSError, EOFError, zlib.error, ValueError, TypeError) as exc:
        raise InvalidRequest(f"cannot decode {what}: {shorten(str(exc))}") from exc


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


def _hex_ids_to_base64(node: Any, max_depth: int) -> None:
    """Rewrite OTLP/JSON hex ids in place so protobuf's JSON parser accepts them; refuse over-deep documents.

    An id that is not valid hex is kept as its raw bytes, so that span (only) fails id validation later.
    Iterative, so a deep document costs no Python stack; the walk visits every node once anyway.
    """
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > max_depth:
            raise InvalidRequest(f"JSON body is nested deeper than {max_depth} levels")
        if isinstance(current, dict):
            for key, value in current.items():
                if key in _ID_KEYS and isinstance(value, str):
                    try:
                        raw = bytes.fromhex(value) if value else b""
                    except ValueError:
                        raw = value.encode("utf-8", "replace")
                    current[key] = base64.b64encode(raw).decode("ascii")
                elif isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
        else:
            for item in current:
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))


def _parse(body: bytes, content_type: str, message: Any, what: str, limits: ItemLimits) -> Any:
    with decode_errors(what):
        if content_type == "json":
            document = json.loads(body.decode("utf-8"))
            if not isinstance(document, dict):
                raise InvalidRequest(f"cannot decode {what}: the JSON body must be an object")
            _hex_ids_to_base64(document, limits.max_json_depth)
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    return message


def parse_traces(body: bytes, content_type: str = "protobuf", *,
                 limits: ItemLimits = DEFAULT_LIMITS) -> ExportTraceServiceRequest:
    return _parse(body, content_type, ExportTraceServiceRequest(), "ExportTraceServiceRequest", limits)


def parse_logs(body: bytes, content_type: str = "protobuf", *,
               limits: ItemLimits = DEFAULT_LIMITS) -> ExportLogsServiceRequest:
    return _parse(body, content_type, ExportLogsServiceRequest(), "ExportLogsServiceRequest", limits)


# --- AnyValue → Python ------------------------------------------------------------------------------------

def clean_text(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold U+0000: it becomes U+FFFD (the rest of the value is kept)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


@dataclass(slots=True)
class DecodeStats:
    """What the limits cut from one request (added to the collector's counters)."""

    dropped_attributes: int = 0
    truncated_values: int = 0
    cut_nesting: int = 0


class ValueDecoder:
    """OTLP ``AnyValue`` / attribute lists → plain Python, within ``ItemLimits``; counts what it cuts."""

    __slots__ = ("limits", "stats", "_max_length", "_max_attributes", "_max_depth")

    def __init__(self, limits: ItemLimits = DEFAULT_LIMITS, stats: DecodeStats | None = None) -> None:
        self.limits = limits
        self.stats = stats if stats is not None else DecodeStats()
        self._max_length = limits.max_value_length
        self._max_attributes = limits.max_attributes
        self._max_depth = limits.max_value_depth

    def text(self, text: str) -> str:
        if "\x00" in text:
            text = clean_text(text)
        if len(text) > self._max_length:
            self.stats.truncated_values += 1
            return f"{text[:self._max_length]}…[truncated {len(text) - self._max_length} chars]"
        return text

    def value(self, value: Any, depth: int = 1) -> Any:
        """OTLP ``AnyValue`` → str | bool | int | float | list | dict | bytes-as-hex | None."""
        which = value.WhichOneof("value")
        if which == "string_value":
            return self.text(value.string_value)
        if which == "int_value":
            return value.int_value
        if which == "double_value":
            return value.double_value
        if which == "bool_value":
            return value.bool_value
        if which in ("array_value", "kvlist_value"):
            if depth > self._max_depth:
                self.stats.cut_nesting += 1
                return f"…[nested deeper than {self._max_depth} levels]"
            if which == "array_value":
                return [self.value(item, depth + 1) for item in value.array_value.values]
            return self.attributes(value.kvlist_value.values, depth + 1)
        if which == "bytes_value":
            raw = value.bytes_value
            if 2 * len(raw) > self._max_length:
                self.stats.truncated_values += 1
                keep = self._max_length // 2
                return f"{raw[:keep].hex()}…[truncated {len(raw) - keep} bytes]"
            return raw.hex()
        return None

    def attributes(self, key_values: Any, depth: int = 1) -> dict[str, Any]:
        # Hot path (every attribute of every span): scalar cases inline, value() only for the rest.
        out: dict[str, Any] = {}
        max_length = self._max_length
        dropped = len(key_values) - self._max_attributes
        for kv in key_values if dropped <= 0 else key_values[:self._max_attributes]:
            key = kv.key
            if len(key) > max_length or "\x00" in key:
                key = self.text(key)
            value = kv.value
            which = value.WhichOneof("value")
            if which == "string_value":
                text = value.string_value
                out[key] = text if len(text) <= max_length and "\x00" not in text else self.text(text)
            elif which == "int_value":
                out[key] = value.int_value
            elif which == "double_value":
                out[key] = value.double_value
            elif which == "bool_value":
                out[key] = value.bool_value
            else:
                out[key] = self.value(value, depth)
        if dropped > 0:
            self.stats.dropped_attributes += dropped
            out[DROPPED_ATTRIBUTES_KEY] = dropped
        return out


_DEFAULT_DECODER = ValueDecoder()


def any_value(value: Any) -> Any:
    """OTLP ``AnyValue`` → Python, with the default limits."""
    return _DEFAULT_DECODER.value(value)


def attributes_to_dict(key_values: Any) -> dict[str, Any]:
    """OTLP attribute list → dict, with the default limits."""
    return _DEFAULT_DECODER.attributes(key_values)


def _span_id(raw: bytes, field: str, *, optional: bool = False) -> str | None:
    if optional and (not raw or raw == _ZERO_SPAN):
        return None
    if len(raw) != 8:
        raise RejectedSpan(f"{field} must be 8 bytes, got {len(raw)}", reason="invalid_id")
    if raw == _ZERO_SPAN:
        raise RejectedSpan(f"{field} must not be all zeros", reason="invalid_id")
    return raw.hex()


def _trace_id(raw: bytes) -> str:
    if len(raw) != 16:
        raise RejectedSpan(f"trace_id must be 16 bytes, got {len(raw)}", reason="invalid_id")
    if raw == _ZERO_TRACE:
        raise RejectedSpan("trace_id must not be all zeros", reason="invalid_id")
    return raw.hex()


def _span_events(span: Any, decoder: ValueDecoder) -> list[dict[str, Any]]:
    return [
        {"time_unix_nano": event.time_unix_nano, "name": decoder.text(event.name),
         "attributes": decoder.attributes(event.attributes)}
        for event in span.events
    ]


def _crashed(what: str, exc: Exception) -> RejectedSpan:
    """A decode bug or a value no check foresaw: that item alone is rejected, with the cause in words."""
    return RejectedSpan(f"{what}: cannot decode it ({type(exc).__name__}: {shorten(str(exc))})", reason="internal")


def _decode_span(span: Any, decoder: ValueDecoder, resource: dict[str, Any], scope_name: str,
                 scope_version: str) -> SpanIn:
    trace_id = _trace_id(span.trace_id)
    span_id = _span_id(span.span_id, "span_id")
    parent = _span_id(span.parent_span_id, "parent_span_id", optional=True)
    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
    if start_ns == 0:
        raise RejectedSpan("start_time_unix_nano is missing", reason="invalid_time")
    if end_ns and end_ns < start_ns:
        raise RejectedSpan("end_time_unix_nano is before start_time_unix_nano", reason="invalid_time")
    if not 0 <= span.kind <= 5:
        raise RejectedSpan(f"kind {span.kind} is not a SpanKind (0-5)", reason="invalid_enum")
    if not 0 <= span.status.code <= 2:
        raise RejectedSpan(f"status.code {span.status.code} is not a StatusCode (0-2)", reason="invalid_enum")
    return SpanIn(
        trace_id=trace_id,
        span_id=span_id,  # type: ignore[arg-type]
        parent_span_id=parent,
        name=decoder.text(span.name),
        kind=span.kind,
        start_ns=start_ns,
        end_ns=end_ns or start_ns,
        status_code=span.status.code,
        status_message=decoder.text(span.status.message) or None,
        attributes=decoder.attributes(span.attributes),
        events=_span_events(span, decoder) if span.events else [],
        resource=resource,
        scope_name=scope_name,
        scope_version=scope_version,
    )


def iter_spans(request: ExportTraceServiceRequest,
               decoder: ValueDecoder | None = None) -> Iterator[SpanIn | RejectedSpan]:
    """Yield each span, or a ``RejectedSpan`` explaining why that span cannot be used (never raises for one)."""
    decoder = decoder or ValueDecoder()
    for resource_spans in request.resource_spans:
        resource = decoder.attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope_name = decoder.text(scope_spans.scope.name)
            scope_version = decoder.text(scope_spans.scope.version)
            for span in scope_spans.spans:
                try:
                    yield _decode_span(span, decoder, resource, scope_name, scope_version)
                except RejectedSpan as rejected:
                    yield RejectedSpan(f"span {shorten(span.name, 80)!r}: {rejected}", reason=rejected.reason)
                except Exception as exc:  # the fault boundary of one span
                    yield _crashed(f"span {shorten(span.name, 80)!r} ({span.span_id.hex()})", exc)


def _decode_log(record: Any, decoder: ValueDecoder, resource: dict[str, Any], scope_name: str) -> LogIn:
    trace_id = _trace_id(record.trace_id) if record.trace_id else None
    span_id = _span_id(record.span_id, "span_id", optional=True) if record.span_id else None
    time_ns = record.time_unix_nano or record.observed_time_unix_nano
    if not time_ns:
        raise RejectedSpan("neither time_unix_nano nor observed_time_unix_nano is set", reason="invalid_time")
    return LogIn(
        time_ns=time_ns,
        severity_number=record.severity_number,
        severity_text=decoder.text(record.severity_text),
        body=decoder.value(record.body) if record.HasField("body") else None,
        attributes=decoder.attributes(record.attributes),
        trace_id=trace_id,
        span_id=span_id,
        event_name=clean_text(record.event_name),   # length checked with the ids (it is indexed)
        resource=resource,
        scope_name=scope_name,
    )


def iter_logs(request: ExportLogsServiceRequest,
              decoder: ValueDecoder | None = None) -> Iterator[LogIn | RejectedSpan]:
    """Yield each log record, or a ``RejectedSpan`` explaining why that record cannot be used."""
    decoder = decoder or ValueDecoder()
    for resource_logs in request.resource_logs:
        resource = decoder.attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            scope_name = decoder.text(scope_logs.scope.name)
            for record in scope_logs.log_records:
                try:
                    yield _decode_log(record, decoder, resource, scope_name)
                except RejectedSpan as rejected:
                    yield RejectedSpan(f"log record: {rejected}", reason=rejected.reason)
                except Exception as exc:  # the fault boundary of one log record
                    yield _crashed(f"log record {shorten(record.event_name, 80)!r}", exc)


def count_items(request: Any) -> int:
    """Spans or log records in a request (for the empty-request fast path)."""
    if isinstance(request, ExportTraceServiceRequest):
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


