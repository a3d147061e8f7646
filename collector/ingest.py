"""Transport-agnostic Export: decoded request → map → batch → committed, with its partial-success report.

The gRPC servicer and the HTTP route are thin adapters around ``Ingest.export_traces`` / ``export_logs``;
only their ``transport`` label differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.batcher import Batcher
from collector.otlp.codec import count_items, iter_logs, iter_spans
from collector.pipeline import MappedBatch, map_logs, map_spans
from collector.telemetry import METRICS

__all__ = ["Ingest", "ExportResult"]

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
    return ExportResult(
        rejected=batch.rejected_count,
        error_message=f"{batch.rejected_count} of {batch.items} {noun} rejected: {shown}{more}",
    )


class Ingest:
    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher

    async def export_traces(self, request: ExportTraceServiceRequest, *, transport: str) -> ExportResult:
        if count_items(request) == 0:
            return ExportResult()
        self._batcher.check_capacity()
        batch = map_spans(iter_spans(request))
        return await self._commit(batch, "spans", transport)

    async def export_logs(self, request: ExportLogsServiceRequest, *, transport: str) -> ExportResult:
        if count_items(request) == 0:
            return ExportResult()
        self._batcher.check_capacity()
        batch = map_logs(iter_logs(request))
        return await self._commit(batch, "log records", transport)

    async def _commit(self, batch: MappedBatch, noun: str, transport: str) -> ExportResult:
        if noun == "spans":
            METRICS.received_spans += batch.items
        else:
            METRICS.received_log_records += batch.items
        result = _result(batch, noun)
        if result.rejected:
            METRICS.rejected_items += result.rejected
            log.warning("export.partially_rejected",
                        extra={"transport": transport, "rejected": result.rejected, "items": batch.items,
                               "reason": batch.rejected[0]})
        refused = await self._batcher.submit(batch.records)
        if refused:  # rows the database could not store (e.g. a value out of a column's range)
            METRICS.rejected_items += len(refused)
            batch.rejected.extend(refused)
            result = _result(batch, noun)
        return result
