"""Receiver, gRPC transport: TraceService and LogsService over grpc.aio, plus grpc.health.v1.

A thin adapter: parse (grpc does that, gzip included), call ``Ingest``, turn errors into statuses.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from collector.errors import CallscopeError, grpc_code_of
from collector.ingest import Ingest
from collector.otlp.status import grpc_trailers

__all__ = ["GrpcReceiver"]

log = logging.getLogger("callscope.receiver")
_SERVICES = ("opentelemetry.proto.collector.trace.v1.TraceService",
             "opentelemetry.proto.collector.logs.v1.LogsService")


async def _abort(context: grpc.aio.ServicerContext, error: CallscopeError) -> None:
    code = grpc_code_of(error)
    log.info("export.refused", extra={"transport": "grpc", "code": code.name, "error": str(error)})
    await context.abort(code, str(error), trailing_metadata=grpc_trailers(error))


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def Export(self, request, context):  # type: ignore[no-untyped-def] # noqa: N802 (gRPC name)
        try:
            result = await self._ingest.export_traces(request, transport="grpc")
        except CallscopeError as error:
            await _abort(context, error)
            raise AssertionError("unreachable")  # abort raises
        response = trace_service_pb2.ExportTraceServiceResponse()
        if result.rejected:
            response.partial_success.rejected_spans = result.rejected
            response.partial_success.error_message = result.error_message
        return response


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def Export(self, request, context):  # type: ignore[no-untyped-def] # noqa: N802
        try:
            result = await self._ingest.export_logs(request, transport="grpc")
        except CallscopeError as error:
            await _abort(context, error)
            raise AssertionError("unreachable")
        response = logs_service_pb2.ExportLogsServiceResponse()
        if result.rejected:
            response.partial_success.rejected_log_records = result.rejected
            response.partial_success.error_message = result.error_message
        return response


class GrpcReceiver:
    def __init__(self, ingest: Ingest, *, host: str, port: int, max_message_bytes: int) -> None:
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(ingest), self._server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(ingest), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {address}")

    async def _set_health(self, status: int) -> None:
        for service in ("", *_SERVICES):
            await self._health.set(service, status)

    async def start(self) -> None:
        await self._server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let in-flight Exports finish (they wait for their commit) for up to ``grace_s``."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace_s)
