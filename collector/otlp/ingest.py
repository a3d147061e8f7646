"""Transport-agnostic Export: decoded request → map → batch → committed, with its partial-success report.

The gRPC servicer and the HTTP route are thin adapters around ``Ingest.tenant_of`` (the request's API key → its
tenant, collector/auth.py) and ``Ingest.export_traces`` / ``export_logs``, which take that tenant and carry it
on every row; only their ``transport`` label differs. The PII policy is applied while mapping. ``Ingest.admit``
bounds how many requests are being decoded, mapped or waiting for their commit at once (both transports
together): memory per request is bounded by ``max_message_mib``, so this bounds the total.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.auth import DEFAULT_TENANT, Authenticator
from collector.batcher import Batcher
from collector.cost import PriceTable
from collector.errors import (
    MAX_MESSAGE_CHARS, CallscopeError, InvalidRequest, Overloaded, StorageRejected, StorageUnavailable,
    Unauthenticated, shorten,
)
from collector.logs import ThrottledLog
from collector.items import DEFAULT_LIMITS, ItemLimits
from collector.otlp.codec import DecodeStats, ValueDecoder, count_items, iter_logs, iter_spans
from collector.pipeline import MappedBatch, map_logs, map_spans
from collector.privacy import KEEP_ALL, PiiPolicy
from collector.telemetry import Metrics

__all__ = ["Ingest", "ExportResult", "refusal_reason"]

log = logging.getLogger("callscope.ingest")
_MAX_REASONS = 5


@dataclass(frozen=True, slots=True)
class ExportResult:
    rejected: int = 0
    error_message: str = ""


def _result(batch: MappedBatch, noun: str) -> ExportResult:
    if not batch.rejected:
        return ExportResult()
    shown = "; ".join(batch.rejected[:_MAX_REASONS])
    more = f" (and {batch.rejected_count - _MAX_REASONS} more)" if batch.rejected_count > _MAX_REASONS else ""
    head = f"{batch.rejected_count} of {batch.items} {noun} rejected: "
    return ExportResult(
        rejected=batch.rejected_count,
        error_message=head + shorten(shown, MAX_MESSAGE_CHARS - len(head) - len(more) - 40) + more,
    )


def refusal_reason(error: CallscopeError) -> str:
    """The ``reason`` label of a request refused as a whole."""
    if isinstance(error, Overloaded):
        return error.reason
    if isinstance(error, StorageUnavailable):
        return "storage_unavailable"
    if isinstance(error, StorageRejected):
        return "storage_rejected"
    if isinstance(error, InvalidRequest):
        return "invalid_request"
    if isinstance(error, Unauthenticated):
        return "unauthenticated"
    return "internal"


class Ingest:
    def __init__(self, batcher: Batcher, *, prices: PriceTable, limits: ItemLimits = DEFAULT_LIMITS,
                 metrics: Metrics | None = None, max_concurrent_requests: int = 256,
                 retry_after_s: float = 1.0, authenticator: Authenticator | None = None,
                 privacy: PiiPolicy = KEEP_ALL) -> None:
        self._batcher = batcher
        self.prices = prices
        self._authenticator = authenticator   # None: auth off, everything is tenant 'default'
        self.privacy = privacy
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._max_requests = max_concurrent_requests
        self._retry_after = retry_after_s
        self._in_progress = 0
        self._rejected_log = ThrottledLog(log, "export.partially_rejected")
        self._crash_log = ThrottledLog(log, "export.item_crashed", level=logging.ERROR)
        # one client with a bad key retries for ever: a line every 10 s with the count, not one per request
        self.unauthenticated_log = ThrottledLog(log, "export.unauthenticated")
        self.metrics.register_gauge_callback("callscope_requests_in_progress",
                                             "Export requests being decoded, mapped or waiting for their commit.",
                                             lambda: self._in_progress)

    @property
    def in_progress(self) -> int:
        return self._in_progress

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_concurrent_requests`` slots for a request; refuse at once when none is free."""
        if self._in_progress >= self._max_requests:
            raise Overloaded(f"{self._in_progress} requests in progress (max_concurrent_requests); "
                             f"retry after {self._retry_after:g} s", retry_after_s=self._retry_after,
                             reason="too_many_requests")
        self._in_progress += 1
        try:
            yield
        finally:
            self._in_progress -= 1

    def count_refused(self, error: CallscopeError, transport: str) -> None:
        self.metrics.refused.labels(refusal_reason(error), transport).inc()

    async def tenant_of(self, authorization: str | None) -> str:
        """The tenant a request writes as, from its ``Authorization`` value; raises ``Unauthenticated``."""
        if self._authenticator is None:
            return DEFAULT_TENANT
        return await self._authenticator.tenant_of(authorization)

    async def export_traces(self, request: ExportTraceServiceRequest, *, transport: str,
                            tenant: str) -> ExportResult:
        if count_items(request) == 0:
            return ExportResult()
        self._batcher.check_capacity()
        stats = DecodeStats()
        batch = map_spans(iter_spans(request, ValueDecoder(self.limits, stats)), self.limits, prices=self.prices,
                          tenant=tenant, privacy=self.privacy)
        return await self._commit(batch, stats, "spans", transport)

    async def export_logs(self, request: ExportLogsServiceRequest, *, transport: str, tenant: str) -> ExportResult:
        if count_items(request) == 0:
            return ExportResult()
        self._batcher.check_capacity()
        stats = DecodeStats()
        batch = map_logs(iter_logs(request, ValueDecoder(self.limits, stats)), self.limits, tenant=tenant,
                         privacy=self.privacy)
        return await self._commit(batch, stats, "log records", transport)

    def _count(self, batch: MappedBatch, stats: DecodeStats, signal: str, transport: str) -> None:
        metrics = self.metrics
        metrics.received.labels(signal, transport).inc(batch.items)
        for reason in batch.reasons:
            metrics.rejected.labels(signal, reason).inc()
        for limit, count in (("attributes", stats.dropped_attributes), ("length", stats.truncated_values),
                             ("depth", stats.cut_nesting), ("fact", batch.dropped_values)):
            if count:
                metrics.limited.labels(limit).inc(count)
        if batch.crashes:
            metrics.internal_errors.labels("map").inc(len(batch.crashes))
            self._crash_log.add(len(batch.crashes), transport=transport, signal=signal, error=batch.crashes[0])

    async def _commit(self, batch: MappedBatch, stats: DecodeStats, noun: str, transport: str) -> ExportResult:
        signal = "spans" if noun == "spans" else "log_records"
        self._count(batch, stats, signal, transport)
        result = _result(batch, noun)
        if result.rejected:
            self._rejected_log.add(result.rejected, transport=transport, items=batch.items,
                                   reason=batch.rejected[0])
        refused = await self._batcher.submit(batch.records)
        if refused:  # rows the database could not store (e.g. a value out of a column's range)
            self.metrics.rejected.labels(signal, "storage_rejected").inc(len(refused))
            batch.rejected.extend(refused)
            result = _result(batch, noun)
        return result
