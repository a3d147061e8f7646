"""Sending: generate calls and export them to an OTLP receiver, a few calls at a time, each call's requests in
time order (its root span last), retried per retry.py, counted in a ``SimulationReport``."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.simulate.retry import GaveUp, RetryPolicy, with_retries
from collector.simulate.scenarios import iter_calls
from collector.simulate.transport import Permanent, open_transport

if TYPE_CHECKING:
    from collector.tls import ClientTls

__all__ = ["SimulationReport", "run_simulation"]

_MAX_ERRORS = 10   # failure messages kept in the report


@dataclass(frozen=True)
class SimulationReport:
    """What ``run_simulation`` sent. ``requests`` counts accepted exports, ``retries`` the extra attempts."""

    endpoint: str
    transport: str               # "grpc" | "http"
    calls: int
    spans: int
    log_records: int
    requests: int
    retries: int
    rejected_spans: int          # from partial_success
    rejected_log_records: int
    failed_requests: int         # permanent errors or retries given up
    elapsed_s: float
    errors: tuple[str, ...] = ()  # the first few failure messages

    @property
    def rejected(self) -> int:
        return self.rejected_spans + self.rejected_log_records

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _request_key(request: Any) -> int:
    if isinstance(request, ExportTraceServiceRequest):
        return max((s.end_time_unix_nano for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans),
                   default=0)
    return max((lr.time_unix_nano for rl in request.resource_logs for sl in rl.scope_logs for lr in sl.log_records),
               default=0)


async def run_simulation(endpoint: str, *, calls: int, concurrency: int = 8, seed: int = 1, insecure: bool = True,
                         progress: Callable[[int], None] | None = None, timeout: float = 30.0,
                         retry: RetryPolicy = RetryPolicy(), tls: ClientTls | None = None,
                         api_key: str | None = None) -> SimulationReport:
    """Generate ``calls`` calls and send them to an OTLP receiver, ``concurrency`` calls at a time.

    ``endpoint`` is ``host:port`` (or ``grpc://host:port``) for OTLP/gRPC, ``http(s)://host:port`` for
    OTLP/HTTP protobuf. Each call's trace and log requests go out in time order (its root span last).
    Retryable answers (transport.py) are retried per ``retry`` (retry.py: the server's RetryInfo /
    Retry-After, else exponential backoff from 1 s with ±20 % jitter, up to 120 s per request); ``timeout``
    bounds each attempt. ``progress`` gets the number of calls finished so far. ``tls`` talks TLS to the
    collector (gRPC, or HTTP at ``https://``); ``api_key`` is sent as ``Authorization: Bearer <key>``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    transport = open_transport(endpoint, insecure=insecure, timeout=timeout, concurrency=concurrency, tls=tls,
                               api_key=api_key)
    stats = {"spans": 0, "logs": 0, "requests": 0, "retries": 0, "rejected_spans": 0, "rejected_logs": 0,
             "failed": 0, "calls": 0}
    errors: list[str] = []
    jitter = random.Random(seed ^ 0x5EED)

    def retried() -> None:
        stats["retries"] += 1

    async def export(request: Any) -> None:
        is_trace = isinstance(request, ExportTraceServiceRequest)
        if is_trace:
            count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        else:
            count = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        send = transport.export_traces if is_trace else transport.export_logs
        try:
            rejected = await with_retries(lambda: send(request), retry, jitter, on_retry=retried)
        except (GaveUp, Permanent) as exc:
            stats["failed"] += 1
            if len(errors) < _MAX_ERRORS:
                errors.append(str(exc))
            return
        stats["requests"] += 1
        stats["spans" if is_trace else "logs"] += count
        stats["rejected_spans" if is_trace else "rejected_logs"] += rejected

    source = iter_calls(calls, seed, None)

    async def worker() -> None:
        for call in source:      # one shared iterator: each worker takes the next call
            requests = sorted([*call.trace_requests, *call.log_requests], key=_request_key)
            for request in requests:
                await export(request)
            stats["calls"] += 1
            if progress is not None:
                progress(stats["calls"])

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, max(1, calls))):
                group.create_task(worker())
    finally:
        await transport.close()
    return SimulationReport(
        endpoint=endpoint, transport=transport.name, calls=stats["calls"], spans=stats["spans"],
        log_records=stats["logs"], requests=stats["requests"], retries=stats["retries"],
        rejected_spans=stats["rejected_spans"], rejected_log_records=stats["rejected_logs"],
        failed_requests=stats["failed"], elapsed_s=time.perf_counter() - started, errors=tuple(errors),
    )
