"""What the receivers hand to processing: one decoded span or log record (``SpanIn`` / ``LogIn``, built by
collector/otlp/codec.py, read by the mappers and the pipeline) and the per-item limits both sides apply.

Its own module, below both: the mappers need the shape of a span, not the OTLP decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SpanIn", "LogIn", "ItemLimits", "DEFAULT_LIMITS"]


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


@dataclass(frozen=True, slots=True)
class ItemLimits:
    """Per-item limits (settings max_attributes, max_value_length, max_value_depth, max_id_length)."""

    max_attributes: int = 128
    max_value_length: int = 32768
    max_value_depth: int = 16
    max_id_length: int = 256
    max_json_depth: int = 128


DEFAULT_LIMITS = ItemLimits()
