"""Sending, the wire: an OTLP/gRPC and an OTLP/HTTP client. Each export is one attempt: it returns the
partial-success count, or raises ``Retryable`` (with the server's RetryInfo / Retry-After hint when it gave
one) or ``Permanent``, as the OTLP specification classifies the answer. retry.py decides when to try again.

Retryable per the specification (opentelemetry-proto docs/specification.md, "Failures"): gRPC CANCELLED,
DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and RESOURCE_EXHAUSTED only when the server
says recovery is possible by sending RetryInfo; HTTP 429, 502, 503, 504; connection errors and timeouts.
"""

from __future__ import annotations

import asyncio
import email.utils
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)

if TYPE_CHECKING:
    from collector.tls import ClientTls

__all__ = ["Retryable", "Permanent", "Transport", "open_transport", "retry_delay_from_status"]

_RETRYABLE_GRPC = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


class Retryable(Exception):
    """The export may succeed later; ``delay`` is the server's hint in seconds, None when it gave none."""

    def __init__(self, message: str, delay: float | None) -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(Exception):
    """Sending the same request again would fail the same way."""


def retry_delay_from_status(details: bytes) -> float | None:
    """``RetryInfo.retry_delay`` (seconds) from a serialized ``google.rpc.Status``, else None."""
    try:
        status = status_pb2.Status.FromString(details)
    except DecodeError:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def _retry_info_delay(trailers: Any) -> float | None:
    """RetryInfo from trailing metadata: inside ``grpc-status-details-bin`` (the rich status), or alone in
    ``google.rpc.retryinfo-bin`` (where the OpenTelemetry Python exporters look)."""
    for key, value in trailers or ():
        if not isinstance(value, bytes):
            continue
        if key == "grpc-status-details-bin":
            delay = retry_delay_from_status(value)
            if delay is not None:
                return delay
        elif key == "google.rpc.retryinfo-bin":
            try:
                return error_details_pb2.RetryInfo.FromString(value).retry_delay.ToTimedelta().total_seconds()
            except DecodeError:
                continue
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _GrpcTransport:
    name = "grpc"

    def __init__(self, target: str, *, insecure: bool, timeout: float, tls: ClientTls | None = None,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if tls is not None:
            self.channel = tls.grpc_channel(target, options)
        else:
            self.channel = (grpc.aio.insecure_channel(target, options=options) if insecure
                            else grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options))
        self.metadata = metadata
        self.traces = trace_service_pb2_grpc.TraceServiceStub(self.channel)
        self.logs = logs_service_pb2_grpc.LogsServiceStub(self.channel)
        self.timeout = timeout

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            message = f"{exc.code().name}: {exc.details()}"
            delay = _retry_info_delay(exc.trailing_metadata())
            if exc.code() in _RETRYABLE_GRPC or (exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                                                 and delay is not None):
                raise Retryable(message, delay) from exc
            raise Permanent(message) from exc

    async def export_traces(self, request: ExportTraceServiceRequest) -> int:
        response = await self._call(self.traces.Export, request)
        return response.partial_success.rejected_spans

    async def export_logs(self, request: ExportLogsServiceRequest) -> int:
        response = await self._call(self.logs.Export, request)
        return response.partial_success.rejected_log_records

    async def close(self) -> None:
        await self.channel.close()


class _HttpTransport:
    name = "http"

    def __init__(self, base: str, *, timeout: float, concurrency: int, tls: ClientTls | None = None,
                 headers: dict[str, str] | None = None) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.base = base.rstrip("/")
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.server_hostname = tls.server_name if tls is not None else None
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, concurrency),
                                           ssl=tls.ssl_context() if tls is not None else True),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def _post(self, path: str, body: bytes) -> bytes:
        try:
            async with self.session.post(self.base + path, data=body, headers=self.headers,
                                         server_hostname=self.server_hostname) as resp:
                payload = await resp.read()
                if resp.status == 200:
                    return payload
                message = f"HTTP {resp.status} from {path}: {payload[:200]!r}"
                if resp.status in _RETRYABLE_HTTP:
                    raise Retryable(message, _retry_after(resp.headers.get("Retry-After")))
                raise Permanent(message)
        except (self._aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}", None) from exc

    async def export_traces(self, request: ExportTraceServiceRequest) -> int:
        payload = await self._post("/v1/traces", request.SerializeToString())
        return ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans if payload else 0

    async def export_logs(self, request: ExportLogsServiceRequest) -> int:
        payload = await self._post("/v1/logs", request.SerializeToString())
        return ExportLogsServiceResponse.FromString(payload).partial_success.rejected_log_records if payload else 0

    async def close(self) -> None:
        await self.session.close()


Transport = _GrpcTransport | _HttpTransport


def open_transport(endpoint: str, *, insecure: bool, timeout: float, concurrency: int,
                   tls: ClientTls | None = None, api_key: str | None = None) -> Transport:
    """``http(s)://host:port`` → OTLP/HTTP protobuf; ``host:port`` or ``grpc://host:port`` → OTLP/gRPC.
    ``tls``: talk TLS with these trust roots / client certificate; ``api_key``: sent as ``Authorization: Bearer``."""
    authorization = {"authorization": f"Bearer {api_key}"} if api_key else {}
    if endpoint.startswith(("http://", "https://")):
        return _HttpTransport(endpoint, timeout=timeout, concurrency=concurrency, tls=tls, headers=authorization)
    return _GrpcTransport(endpoint.removeprefix("grpc://"), insecure=insecure, timeout=timeout, tls=tls,
                          metadata=tuple(authorization.items()))
