"""What the simulator's parts pass to each other: a call's spans and log records on its own timeline (drafts,
before they become protobuf), the finished ``SimulatedCall``, time units and random draws.

Times of drafts are nanoseconds relative to the call's start until ``CallBuilder.finish`` shifts them into
place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = [
    "SimulatedCall", "DraftSpan", "DraftLog", "MS", "S", "INTERNAL", "SERVER", "CLIENT", "STATUS_OK",
    "STATUS_ERROR", "INFO", "WARN", "ERR", "lognormal", "ms", "pick_weighted", "phone_number", "utc_datetime",
]

MS = 1_000_000          # nanoseconds
S = 1_000_000_000

INTERNAL, SERVER, CLIENT = Span.SPAN_KIND_INTERNAL, Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
STATUS_OK, STATUS_ERROR = Status.STATUS_CODE_UNSET, Status.STATUS_CODE_ERROR
INFO, WARN, ERR = 9, 13, 17   # OTLP severity numbers


@dataclass(frozen=True)
class SimulatedCall:
    """One generated call: the OTLP requests to send (in order) and what the ledger must show."""

    call_id: str
    status: str
    trace_requests: tuple[ExportTraceServiceRequest, ...]
    log_requests: tuple[ExportLogsServiceRequest, ...]
    expected: dict[str, Any]

    @property
    def span_count(self) -> int:
        return sum(len(ss.spans) for r in self.trace_requests for rs in r.resource_spans for ss in rs.scope_spans)

    @property
    def log_count(self) -> int:
        return sum(len(sl.log_records) for r in self.log_requests for rl in r.resource_logs for sl in rl.scope_logs)


class DraftSpan:
    """A span being built: mutable (its end and attributes are known late), ids and times as OTLP has them."""

    __slots__ = ("span_id", "parent", "name", "kind", "start", "end", "attrs", "status", "message", "events",
                 "depth", "scope")

    def __init__(self, span_id: bytes, parent: bytes, name: str, kind: int, start: int, end: int,
                 attrs: dict[str, Any], depth: int, scope: InstrumentationScope) -> None:
        self.span_id, self.parent, self.name, self.kind = span_id, parent, name, kind
        self.start, self.end, self.attrs, self.depth, self.scope = start, end, attrs, depth, scope
        self.status, self.message = STATUS_OK, ""
        self.events: list[tuple[int, str, dict[str, Any]]] = []

    def fail(self, message: str, error_type: str | None = None) -> None:
        self.status, self.message = STATUS_ERROR, message
        if error_type:
            self.attrs["error.type"] = error_type


class DraftLog:
    """A log record being built; ``traced`` says whether it carries the call's trace and span ids."""

    __slots__ = ("time", "name", "body", "attrs", "severity", "span_id", "traced", "observed")

    def __init__(self, t: int, name: str, body: Any, attrs: dict[str, Any], severity: int, span_id: bytes,
                 traced: bool, observed: int) -> None:
        self.time, self.name, self.body, self.attrs, self.severity = t, name, body, attrs, severity
        self.span_id, self.traced, self.observed = span_id, traced, observed


def lognormal(r: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, r.lognormvariate(math.log(median), sigma)))


def ms(value: float) -> int:
    """``value`` milliseconds in nanoseconds."""
    return int(round(value * MS))


def pick_weighted(r: random.Random, pairs: Sequence[tuple[Any, float]]) -> Any:
    return r.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def phone_number(r: random.Random) -> str:
    return f"+1{r.choice(['415', '212', '312', '617', '646', '737', '206', '305'])}5550{r.randint(100, 199)}"


def utc_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // S, tz=timezone.utc) + timedelta(microseconds=(ns % S) // 1000)
