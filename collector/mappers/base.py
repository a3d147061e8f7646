"""Map stage: the mapper interface and the helpers every convention shares.

A mapper turns one decoded span into a ``SpanMapping``: the span's stage, call and turn, model facts, and
the tool calls and call-log events the span reveals. The pipeline (collector/pipeline.py) builds the stored
rows from it, so the raw span is kept whatever the mapper says.

Contract (like the OTel SDK's SpanProcessor hooks): ``map_span`` is pure — no I/O, no clock, no logging,
never mutates its input — and raises only ``RejectedSpan``. Anything that depends on other spans (turn
numbers inherited from a parent, call status, turn latencies) is recomputed in storage/derive/ from the
``facts`` each span contributes; storage/facts.py declares them (write them with its constants).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from collector.items import SpanIn

__all__ = [
    "Mapper", "SpanMapping", "ToolCallDraft", "DerivedEvent", "CALL_ID_KEYS",
    "explicit_call_id", "as_int", "as_float", "as_bool", "as_text", "as_json_text", "parse_json",
    "us", "seconds_to_us", "ms_to_us",
]

# Explicit call id keys, most specific first (design §2); else the trace id.
CALL_ID_KEYS = ("call.id", "conversation.id", "session.id", "gen_ai.conversation.id", "lk.room_sid")


@dataclass(frozen=True, slots=True)
class ToolCallDraft:
    tool_call_id: str
    tool_name: str
    start_ns: int | None
    end_ns: int | None
    arguments: str | None
    result: str | None
    is_error: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class DerivedEvent:
    """A catalogue event the span implies (design §5 (c)); stored with ``source = 'derived'``."""

    time_ns: int
    event: str
    message: str | None = None
    data: dict[str, Any] | None = None
    level: str | None = None   # None: the catalogue's default level


@dataclass(frozen=True, slots=True)
class SpanMapping:
    stage: str = "other"
    call_id: str | None = None           # explicit id; None → the pipeline uses the trace id
    turn_number: int | None = None
    provider: str | None = None
    model: str | None = None
    ttfb_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    tool_calls: tuple[ToolCallDraft, ...] = ()
    events: tuple[DerivedEvent, ...] = ()


class Mapper(Protocol):
    """One convention (framework or semantic convention); registered in collector/mappers/__init__.py."""

    name: ClassVar[str]

    def claims(self, span: SpanIn) -> bool:
        """Cheap test on scope / name / attributes: is this span of my convention?"""
        ...

    def map_span(self, span: SpanIn) -> SpanMapping:
        """Pure mapping of one span; may raise RejectedSpan."""
        ...


# --- value coercion: attributes arrive as whatever type the producer chose ------------------------------

def explicit_call_id(span: SpanIn, keys: tuple[str, ...] = CALL_ID_KEYS) -> str | None:
    value = span.attr(*keys)
    return as_text(value)


def as_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


_INT32 = range(-2**31, 2**31)


def as_int(value: Any) -> int | None:
    """An int that fits the int4 columns it feeds (turn numbers, tokens, codes); anything else is None."""
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int):
        try:
            value = int(float(value))
        except (TypeError, ValueError, OverflowError):
            return None
    return value if value in _INT32 else None


def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        return None
    if isinstance(value, (int, float)):
        return bool(value)
    return None


def parse_json(value: Any) -> Any:
    """A JSON string attribute → Python value; structured values pass through; junk → None."""
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):   # RecursionError: nested thousands of levels deep
            return None
    return None


def as_json_text(value: Any) -> str | None:
    """Text for a JSON-ish column: JSON strings are kept verbatim, structures are serialized."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def us(ns: int) -> int:
    """Epoch nanoseconds → epoch microseconds (the unit of time facts)."""
    return ns // 1000


def seconds_to_us(seconds: Any) -> int | None:
    number = as_float(seconds)
    return None if number is None or number < 0 else int(number * 1_000_000)


def ms_to_us(ms: Any) -> int | None:
    number = as_float(ms)
    return None if number is None or number < 0 else int(number * 1000)
