"""Map stage driver: decoded spans and log records → immutable rows (decode → **map** → batch → write).

Transport-agnostic and pure: the same function serves gRPC and HTTP, and the raw span is always kept,
whatever mapper (if any) claimed it. Invalid items come back as ``RejectedSpan`` instances, never raised.

Personal data follows the PII policy (collector/privacy/) between mapping and rows: mappers see the true
values, the rows only what the policy lets through. Every row carries the tenant the receiver resolved from the
request's API key.

Each item is its own fault boundary: whatever goes wrong while one span or log record is mapped or
serialized rejects that item alone, with its reason. Numbers that do not fit the column they feed become
NULL (the raw attribute is kept in ``attributes``); derived times outside what PostgreSQL and Python can both
hold are left out of ``facts``.
"""

from __future__ import annotations

import hashlib
import orjson
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from collector.cost import PriceTable, cost_facts
from collector.errors import RejectedSpan, shorten
from collector.mappers import SpanMapping, select_mapper
from collector.mappers.base import CALL_ID_KEYS, as_text, explicit_call_id
from collector.mappers.native import call_facts
from collector.items import DEFAULT_LIMITS, ItemLimits, LogIn, SpanIn
from collector.privacy import KEEP_ALL, PiiPolicy
from storage import facts as F
from storage.catalogue import LEVELS, level_rank, lookup
from storage.records import EventRow, Record, SpanRow, ToolCallRow

__all__ = ["MappedBatch", "map_spans", "map_logs", "severity_level"]

_UNCLAIMED = SpanMapping()


_INT64 = range(-2**63, 2**63)
_INT32 = range(-2**31, 2**31)
# 9999-12-31T23:59:59.999999Z: the last instant Python's datetime (and so asyncpg) can read back; PostgreSQL
# itself goes further, but a row nobody can read is as bad as one that cannot be written.
_MAX_US = 253_402_300_799_999_999
_MAX_NS = _MAX_US * 1000


def _json_safe(value: Any) -> Any:
    """``value`` with what orjson cannot write made writable: integers beyond 64 bits become strings."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if type(value) is int and value not in _INT64:
        return str(value)
    return value


def _dumps(value: Any) -> str:
    # default=str: attribute values are JSON-safe already; this only guards exotic producer values.
    # OPT_NON_STR_KEYS: kvlist keys are strings, but a producer's dict body may not be.
    # NaN and ±Infinity become null (orjson), which jsonb accepts.
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        # A huge integer (e.g. parsed from a JSON string attribute): rare, so only then walk the value.
        return orjson.dumps(_json_safe(value), default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_NO_RESOURCE: tuple[str | None, str | None] = (None, None)
_last_resource: tuple[int, dict[str, Any] | None, PiiPolicy | None, tuple[str | None, str | None]] = (
    0, None, None, _NO_RESOURCE)


def _resource_of(resource: dict[str, Any], privacy: PiiPolicy = KEEP_ALL) -> tuple[str | None, str | None]:
    """(id, JSON) of a resource, computed once for all the spans of a ResourceSpans (they share the dict).

    The id is a hash of the JSON: storage keeps each distinct resource once (``resources``), not on every span.
    """
    global _last_resource
    if not resource:
        return _NO_RESOURCE
    key, cached_dict, cached_policy, cached = _last_resource
    if cached_dict is resource and key == id(resource) and cached_policy is privacy:
        return cached
    text = _dumps(resource)
    if privacy.active:
        redacted = privacy.attributes(resource, serialized=text)
        if redacted is not resource:
            text = _dumps(redacted)
    identity = (hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest(), text)
    _last_resource = (id(resource), resource, privacy, identity)
    return identity


def _time(ns: int) -> datetime:
    # datetime.fromtimestamp loses sub-microsecond precision only, which PostgreSQL drops anyway.
    # OTLP times are uint64 nanoseconds (at most year 2554), always within range.
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def _time_or_none(ns: int | None) -> datetime | None:
    """A time a mapper computed (e.g. start + a latency attribute); None when out of range."""
    if not ns or not 0 < ns <= _MAX_NS:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def _int4(value: int | None) -> int | None:
    return value if value is None or (type(value) is int and value in _INT32) else None


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _clean_facts(facts: dict[str, Any]) -> int:
    """Drop facts that no column can hold (times past year 9999, non-finite or 64-bit-overflowing numbers).

    Returns how many were dropped. The attribute they came from stays in the span's raw ``attributes``.
    """
    bad = []
    for key, value in facts.items():
        kind = type(value)
        if kind is int:
            if key.endswith("_us"):
                if not 0 <= value <= _MAX_US:
                    bad.append(key)
            elif value not in _INT64:
                bad.append(key)
        elif kind is float:
            if value != value or value in (float("inf"), float("-inf")):
                bad.append(key)
            elif key.endswith("_us") and not 0 <= value <= _MAX_US:
                bad.append(key)
    for key in bad:
        del facts[key]
    return len(bad)


@dataclass(slots=True)
class MappedBatch:
    """What one Export request became: rows to store, plus rejected items with their reasons."""

    records: list[Record] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)    # the short reason key of each rejection (metrics)
    items: int = 0
    dropped_values: int = 0        # facts / derived times left out because no column can hold them
    crashes: list[str] = field(default_factory=list)    # unexpected errors (bugs or unforeseen values)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)


def severity_level(severity_number: int, severity_text: str = "") -> str:
    """OTLP severity → catalogue level (design §5: 1–12 INFO, 13–16 WARNING, 17–20 ERROR, 21–24 CRITICAL)."""
    if severity_number >= 21:
        return "CRITICAL"
    if severity_number >= 17:
        return "ERROR"
    if severity_number >= 13:
        return "WARNING"
    if severity_number == 0 and severity_text:
        text = severity_text.strip().upper()
        if text in ("FATAL", "CRITICAL"):
            return "CRITICAL"
        if text in LEVELS:
            return text
        if text == "WARN":
            return "WARNING"
    return "INFO"


def _event_row(*, time_ns: int, event: str, call_id: str, explicit: bool, trace_id: str | None,
               span_id: str | None, level: str | None, message: str | None, data: Any, source: str,
               identity: str, tenant: str, privacy: PiiPolicy, turn_number: int | None = None,
               tool_span: bool = False) -> EventRow:
    event_type = lookup(event)
    category = event_type.category if event_type else "other"
    if event_type and (level is None or level_rank(event_type.default_level) > level_rank(level)):
        level = event_type.default_level
    event_id = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    data_json = None if data is None else _dumps(data)
    # after the identity: a retried record gets the same id whatever the policy hides
    if privacy.active and privacy.needs(lambda: f"{message or ''}\n{data_json or ''}",
                                        data if isinstance(data, dict) else {}):
        message, data = privacy.event(event, message, data, tool_span=tool_span)
        data_json = None if data is None else _dumps(data)
    return EventRow(
        time=_time(time_ns), event_id=event_id, call_id=call_id, call_id_explicit=explicit,
        trace_id=trace_id, span_id=span_id, category=category, event=event, level=level or "INFO",
        message=message, data=data_json, source=source, turn_number=turn_number, tenant=tenant,
    )


def _check_length(value: str | None, what: str, limit: int) -> None:
    """Ids and other indexed keys: an over-long one would fail its index at COMMIT, for the whole batch."""
    if value is not None and len(value) > limit:
        raise RejectedSpan(f"{what} is {len(value)} characters long, at most {limit} are accepted "
                           f"({shorten(value, 40)!r})", reason="id_too_long")


def _probe(attributes_json: str, span: SpanIn, facts: dict[str, Any], mapping: SpanMapping) -> str:
    """The text a span's rows would hold, in one string, for the PII detectors' quick search: its attributes
    and events, and the texts mappers made of them (numbers in facts are times and counts, left out)."""
    texts = [attributes_json, span.name, span.status_message or ""]
    if span.events:
        texts.append(_dumps(span.events))
    texts.extend(value for value in facts.values() if type(value) is str)
    for tool in mapping.tool_calls:
        texts.extend(text for text in (tool.arguments, tool.result, tool.error) if text)
    for derived in mapping.events:
        if derived.message:
            texts.append(derived.message)
        if derived.data:
            texts.append(_dumps(derived.data))
    return "\n".join(texts)


def _span_rows(span: SpanIn, out: list[Record], limits: ItemLimits, prices: PriceTable, batch: MappedBatch,
               tenant: str, privacy: PiiPolicy) -> None:
    mapper = select_mapper(span)
    mapping = mapper.map_span(span) if mapper is not None else _UNCLAIMED
    explicit_id = mapping.call_id or explicit_call_id(span)
    max_id = limits.max_id_length
    _check_length(explicit_id, "call id", max_id)
    call_id = explicit_id or span.trace_id
    explicit = explicit_id is not None
    # the native call attributes a user added (call.agent, call.direction, …) win over what a framework says
    facts = {**mapping.facts, **call_facts(span)} if mapping.facts else call_facts(span)
    facts.update(cost_facts(mapping.stage, mapping.provider, mapping.model, mapping.input_tokens,
                            mapping.output_tokens, facts, prices))
    turn_number = _int4(mapping.turn_number)
    if turn_number is not None:
        facts[F.TURN_EXPLICIT] = True
    elif mapping.stage == "turn":
        facts[F.TURN_SEQ] = True  # numbered by start time in storage/derive/turns.sql
    _check_length(facts.get(F.CAMPAIGN), "call.campaign", max_id)   # indexed columns of calls
    _check_length(facts.get(F.AGENT), "call.agent", max_id)
    batch.dropped_values += _clean_facts(facts)
    service_name = as_text(span.resource.get("service.name"))
    resource_id, resource_json = _resource_of(span.resource, privacy)
    span_name, status_message, span_events = span.name, span.status_message, span.events
    attributes_json = _dumps(span.attributes)
    tool_calls, derived_events = mapping.tool_calls, mapping.events
    redact = privacy.needs(lambda: _probe(attributes_json, span, facts, mapping), span.attributes,
                           *(event["attributes"] for event in span.events))
    if not redact:
        privacy = KEEP_ALL   # nothing of this span to hide: its event rows skip the policy too
    else:   # the policy's one place: everything below is built from what it lets through
        tool_span = mapping.stage in ("tool", "transfer")
        redacted = privacy.attributes(span.attributes, tool_span=tool_span, serialized=attributes_json)
        if redacted is not span.attributes:
            attributes_json = _dumps(redacted)
        span_events = privacy.span_events(span.events, tool_span=tool_span)
        facts = privacy.facts(facts)
        span_name = privacy.text(span_name)
        status_message = privacy.status(status_message, tool_span=tool_span) if status_message else status_message
        tool_calls = tuple(privacy.tool_call(tool) for tool in tool_calls)
        derived_events = tuple(privacy.derived(derived) for derived in derived_events)
    rows: list[Record] = []
    rows.append(SpanRow(
        start_time=_time(span.start_ns), end_time=_time(span.end_ns),
        duration_ms=(span.end_ns - span.start_ns) / 1e6, trace_id=span.trace_id, span_id=span.span_id,
        parent_span_id=span.parent_span_id, call_id=call_id, call_id_explicit=explicit,
        turn_number=turn_number, stage=mapping.stage, name=span_name, service_name=service_name,
        scope_name=span.scope_name or None, kind=span.kind, status_code=span.status_code,
        status_message=status_message, provider=mapping.provider, model=mapping.model,
        ttfb_ms=_finite(mapping.ttfb_ms), input_tokens=_int4(mapping.input_tokens),
        output_tokens=_int4(mapping.output_tokens),
        framework=mapper.name if mapper is not None else "unknown",
        attributes=attributes_json, events=_dumps(span_events) if span_events else None,
        resource=resource_json, facts=_dumps(facts) if facts else None, resource_id=resource_id, tenant=tenant,
    ))
    for tool in tool_calls:
        _check_length(tool.tool_call_id, "tool call id", max_id)
        started_at, ended_at = _time_or_none(tool.start_ns), _time_or_none(tool.end_ns)
        rows.append(ToolCallRow(
            call_id=call_id, call_id_explicit=explicit, trace_id=span.trace_id, tool_call_id=tool.tool_call_id,
            tool_name=tool.tool_name, started_at=started_at, ended_at=ended_at,
            duration_ms=(tool.end_ns - tool.start_ns) / 1e6 if tool.start_ns and started_at and tool.end_ns
            and ended_at else None,
            arguments=tool.arguments, result=tool.result, is_error=tool.is_error, error=tool.error,
            span_id=span.span_id, tenant=tenant,
        ))
    for derived in derived_events:
        if not 0 < derived.time_ns <= _MAX_NS:
            batch.dropped_values += 1   # e.g. start + an absurd latency attribute: the span still says it
            continue
        rows.append(_event_row(
            time_ns=derived.time_ns, event=derived.event, call_id=call_id, explicit=explicit,
            trace_id=span.trace_id, span_id=span.span_id, level=derived.level, message=derived.message,
            data=derived.data, source="derived", turn_number=mapping.turn_number,
            identity=f"d|{span.trace_id}|{span.span_id}|{derived.event}|{derived.time_ns}", tenant=tenant,
            privacy=KEEP_ALL,   # derived_events went through the policy above
        ))
    for index, span_event in enumerate(span.events):
        name = span_event["name"]
        attributes = span_event["attributes"]
        event_key = as_text(attributes.get("event.name")) or name
        if lookup(event_key) is None and name != "exception":
            continue  # other span events stay in spans.events (e.g. streaming chunks); only catalogue ones log
        _check_length(event_key, "span event name", max_id)   # an exception event may name itself anything
        level = "ERROR" if name == "exception" else None
        message = as_text(attributes.get("exception.message") or attributes.get("message"))
        rows.append(_event_row(
            time_ns=span_event["time_unix_nano"] or span.start_ns, event=event_key, call_id=call_id,
            explicit=explicit, trace_id=span.trace_id, span_id=span.span_id, level=level, message=message,
            data=attributes or None, source="span_event", turn_number=mapping.turn_number,
            identity=f"e|{span.trace_id}|{span.span_id}|{index}|{name}|{span_event['time_unix_nano']}",
            tenant=tenant, privacy=privacy, tool_span=mapping.stage in ("tool", "transfer"),
        ))
    out.extend(rows)  # all of the span's rows or none: a failure above leaves nothing half-mapped


def _map_items(items: Iterable[Any], add_rows: Callable[[Any, list[Record], MappedBatch], None],
               describe: Callable[[Any], str]) -> MappedBatch:
    """One loop for both signals: an invalid item is recorded with its reason; the others become rows.

    The ``except Exception`` is the per-item fault boundary: a mapper bug or a value nothing foresaw rejects
    that item alone (and is counted in ``crashes`` so the caller logs it), never the request.
    """
    batch = MappedBatch()
    for item in items:
        batch.items += 1
        if isinstance(item, RejectedSpan):
            batch.rejected.append(str(item))
            batch.reasons.append(item.reason)
            continue
        try:
            add_rows(item, batch.records, batch)
        except RejectedSpan as rejected:
            batch.rejected.append(f"{describe(item)}: {rejected}")
            batch.reasons.append(rejected.reason)
        except Exception as exc:
            cause = f"{type(exc).__name__}: {shorten(str(exc))}"
            batch.rejected.append(f"{describe(item)}: cannot be mapped ({cause})")
            batch.reasons.append("internal")
            batch.crashes.append(cause)
    return batch


def map_spans(items: Iterable[SpanIn | RejectedSpan], limits: ItemLimits = DEFAULT_LIMITS, *,
              prices: PriceTable, tenant: str = "default", privacy: PiiPolicy = KEEP_ALL) -> MappedBatch:
    """Rows of the spans of one request; ``prices`` prices each span's usage (collector/cost.py); every row
    carries ``tenant``; ``privacy`` is the PII policy (collector/privacy/)."""
    return _map_items(items, lambda span, out, batch: _span_rows(span, out, limits, prices, batch, tenant, privacy),
                      lambda span: f"span {shorten(span.name, 80)!r} ({span.span_id})")


def _log_row(record: LogIn, limits: ItemLimits, tenant: str, privacy: PiiPolicy) -> EventRow:
    event = record.event_name or as_text(record.attributes.get("event.name")) or ""
    _check_length(event, "event name", limits.max_id_length)
    explicit_id = as_text(record.attr(*CALL_ID_KEYS))
    _check_length(explicit_id, "call id", limits.max_id_length)
    call_id = explicit_id or record.trace_id or ""
    if not call_id:
        raise RejectedSpan("it has neither a call.id attribute nor a trace id", reason="no_call_id")
    body = record.body
    message = body if isinstance(body, str) else None
    if message is None and isinstance(body, dict):   # GenAI events: {content} or {message: {content}}
        inner = body.get("message")
        content = body.get("content", inner.get("content") if isinstance(inner, dict) else None)
        message = content if isinstance(content, str) and content else None
    data = {k: v for k, v in record.attributes.items() if k != "event.name"}
    if body is not None and not isinstance(body, str):
        data["body"] = body
    identity = (f"l|{call_id}|{record.trace_id}|{record.span_id}|{record.time_ns}|{event}|"
                f"{_dumps(body)}|{_dumps(record.attributes)}")
    return _event_row(
        time_ns=record.time_ns, event=event or "log", call_id=call_id, explicit=explicit_id is not None,
        trace_id=record.trace_id, span_id=record.span_id,
        level=severity_level(record.severity_number, record.severity_text), message=message,
        data=data or None, source="log", identity=identity, tenant=tenant, privacy=privacy,
    )


def map_logs(items: Iterable[LogIn | RejectedSpan], limits: ItemLimits = DEFAULT_LIMITS, *,
             tenant: str = "default", privacy: PiiPolicy = KEEP_ALL) -> MappedBatch:
    return _map_items(items, lambda record, out, batch: out.append(_log_row(record, limits, tenant, privacy)),
                      lambda record: f"log record {shorten(record.event_name or '(unnamed)', 80)!r}")
