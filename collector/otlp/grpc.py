"""Receiver, gRPC transport: TraceService and LogsService over grpc.aio, plus grpc.health.v1.

A thin adapter: take the request bytes, decode them here (not in grpc), call ``Ingest``, turn errors into
statuses. The services are registered with an identity request deserializer, so that a body protobuf cannot
parse (random bytes, invalid UTF-8 in a string, nesting past the parser's depth limit) is answered
INVALID_ARGUMENT with the reason and logged, instead of the UNKNOWN that grpc sends when its own
deserializer fails. gzip is still undone by grpc, within ``grpc.max_receive_message_length``.

The ``authorization`` metadata is checked before the body is parsed (a request without a valid key costs no
decoding); with ``ServerTls`` the port accepts TLS only. The health service answers without a key.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.errors import CallscopeError, InternalError, Unauthenticated, grpc_code_of
from collector.otlp.ingest import ExportResult, Ingest
from collector.otlp.codec import parse_logs, parse_traces
from collector.otlp.status import error_message, grpc_trailers
from collector.tls import ServerTls

__all__ = ["GrpcReceiver"]

log = logging.getLogger("callscope.receiver")
_TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
_SERVICES = (_TRACE_SERVICE, _LOGS_SERVICE)
# grpc's own cap on running RPCs, above ours (max_concurrent_requests): the health service and our polite
# refusals (RESOURCE_EXHAUSTED with RetryInfo) must still get through; grpc's refusal carries no RetryInfo.
_GRPC_HEADROOM = 32


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":   # grpc lower-cases metadata keys
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _export_handler(ingest: Ingest, parse: Callable[..., Any], export: Callable[..., Awaitable[ExportResult]],
                    response_type: Any, rejected_field: str) -> grpc.RpcMethodHandler:
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
        error: CallscopeError
        try:
            tenant = await ingest.tenant_of(_authorization(context))
            with ingest.admit():
                request = parse(body, "protobuf", limits=ingest.limits)
                result = await export(request, transport="grpc", tenant=tenant)
        except CallscopeError as refused:
            error = refused
        except Exception as exc:   # a bug: logged with its traceback, answered as retryable
            log.exception("export.crashed", extra={"transport": "grpc", "bytes": len(body)})
            ingest.metrics.internal_errors.labels("export").inc()
            error = InternalError(f"internal error ({type(exc).__name__}); the request was not stored")
        else:
            response = response_type()
            if result.rejected:
                setattr(response.partial_success, rejected_field, result.rejected)
                response.partial_success.error_message = result.error_message
            return response
        ingest.count_refused(error, "grpc")
        code = grpc_code_of(error)
        if isinstance(error, Unauthenticated):
            ingest.unauthenticated_log.add(transport="grpc", peer=context.peer(), error=error_message(error))
        else:
            log.info("export.refused", extra={"transport": "grpc", "code": code.name, "error": error_message(error)})
        await context.abort(code, error_message(error), trailing_metadata=grpc_trailers(error))

    # request_deserializer=None: grpc hands over the raw bytes (see the module docstring).
    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None,
                                               response_serializer=response_type.SerializeToString)


class GrpcReceiver:
    def __init__(self, ingest: Ingest, *, host: str, port: int, max_message_bytes: int,
                 max_concurrent_requests: int = 256, tls: ServerTls | None = None) -> None:
        self._server = grpc.aio.server(
            options=[
                # Refused by grpc before a byte reaches us (RESOURCE_EXHAUSTED "received message larger than max").
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ],
            maximum_concurrent_rpcs=max_concurrent_requests + _GRPC_HEADROOM,
        )
        self._server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(_TRACE_SERVICE, {"Export": _export_handler(
                ingest, parse_traces, ingest.export_traces, trace_service_pb2.ExportTraceServiceResponse,
                "rejected_spans")}),
            grpc.method_handlers_generic_handler(_LOGS_SERVICE, {"Export": _export_handler(
                ingest, parse_logs, ingest.export_logs, logs_service_pb2.ExportLogsServiceResponse,
                "rejected_log_records")}),
        ))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, tls.grpc_credentials())
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
