"""Normalized records: what mappers produce and the writer stores (decode → map → **records** → batch → write).

Fields are the columns of design.md §3 in COPY order; ``tenant`` (last, ``'default'`` unless the request's API key
names another tenant) is decided by the receiver, never by the data. Ids are lowercase hex ``str``, times are timezone-aware
``datetime`` in UTC, durations are ``float`` milliseconds. Records are immutable and flow one way.

They are typed ``NamedTuple``s rather than frozen dataclasses: built once per span on the hot path (a tuple is
made in C, a frozen dataclass sets each field through ``object.__setattr__``), and a tuple is what COPY takes.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, Union

__all__ = ["SpanRow", "EventRow", "ToolCallRow", "Record", "columns_of"]


class SpanRow(NamedTuple):
    start_time: datetime
    end_time: datetime
    duration_ms: float
    trace_id: str
    span_id: str
    parent_span_id: str | None
    call_id: str
    call_id_explicit: bool   # the id came from an attribute (not the trace id): it names the trace's call
    turn_number: int | None
    stage: str
    name: str
    service_name: str | None
    scope_name: str | None
    kind: int
    status_code: int
    status_message: str | None
    provider: str | None
    model: str | None
    ttfb_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    framework: str
    attributes: str          # JSON text (the raw attributes, always kept)
    events: str | None       # JSON text of span events
    resource: str | None     # JSON text of resource attributes
    facts: str | None        # JSON text: this span's contribution to its call and turn (see storage/facts.py)
    resource_id: str | None  # hash of ``resource``: the resource is stored once (table resources), not per span
    tenant: str = "default"  # the tenant of the API key the request came with


class EventRow(NamedTuple):
    time: datetime
    event_id: str            # deterministic: a retried record gets the same id and is stored once
    call_id: str
    call_id_explicit: bool
    trace_id: str | None
    span_id: str | None
    category: str
    event: str
    level: str
    message: str | None
    data: str | None         # JSON text
    source: str              # log | span_event | derived
    turn_number: int | None  # its span's turn where known when stored; else derivation links it once
    tenant: str = "default"


class ToolCallRow(NamedTuple):
    call_id: str
    call_id_explicit: bool
    trace_id: str
    tool_call_id: str
    tool_name: str
    started_at: datetime | None
    ended_at: datetime | None
    duration_ms: float | None
    arguments: str | None
    result: str | None
    is_error: bool
    error: str | None
    span_id: str
    tenant: str = "default"


Record = Union[SpanRow, EventRow, ToolCallRow]


def columns_of(record_type: type) -> tuple[str, ...]:
    """Column names of a record type, in COPY order."""
    return tuple(record_type._fields)


