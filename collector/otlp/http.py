"""Receiver, HTTP transport: OTLP/HTTP ``/v1/traces`` and ``/v1/logs`` (protobuf and JSON, gzip), ``/health``,
``/metrics``.

Responses and error bodies use the request's encoding, as the OTLP/HTTP specification requires; refusals
carry ``Retry-After`` so exporters back off and retry. What can be refused before the body is read is: a
``Content-Length`` over ``max_message_mib`` (413), a request over ``max_concurrent_requests`` (429) and, first of
all, a request without a valid API key (401 with ``WWW-Authenticate: Bearer``). ``/health`` and ``/metrics``
answer without a key. With ``ServerTls`` the port accepts TLS only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.errors import CallscopeError, InternalError, InvalidRequest, Unauthenticated
from collector.otlp.ingest import ExportResult, Ingest
from collector.otlp.codec import decompress, parse_logs, parse_traces
from collector.otlp.status import error_message, http_error
from collector.telemetry import CONTENT_TYPE_LATEST
from collector.tls import RELOAD_CHECK_S, ServerTls

__all__ = ["HttpReceiver"]

log = logging.getLogger("callscope.receiver")

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


def _encoding_of(request: web.Request) -> str:
    content_type = request.content_type.lower()
    if content_type in (_PROTOBUF, "application/protobuf"):
        return "protobuf"
    if content_type == _JSON:
        return "json"
    raise _UnsupportedMediaType(f"unsupported Content-Type {request.content_type!r}; "
                                f"use {_PROTOBUF} or {_JSON}")


class _UnsupportedMediaType(InvalidRequest):
    pass


class _TooLarge(InvalidRequest):
    pass


def _respond(message, encoding: str, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if encoding == "json":
        body = json_format.MessageToJson(message, indent=None).encode()
        return web.Response(body=body, status=status, content_type=_JSON, headers=headers)
    return web.Response(body=message.SerializeToString(), status=status, content_type=_PROTOBUF, headers=headers)


class HttpReceiver:
    def __init__(self, ingest: Ingest, *, host: str, port: int, max_message_bytes: int,
                 health: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]] | None = None,
                 tls: ServerTls | None = None) -> None:
        self._ingest = ingest
        self._tls = tls
        self._reload_task: asyncio.Task[None] | None = None
        self._host, self._requested_port = host, port
        self._max_bytes = max_message_bytes
        self._health = health
        self._app = web.Application(client_max_size=max_message_bytes)
        self._app.router.add_post("/v1/traces", self._traces)
        self._app.router.add_post("/v1/logs", self._logs)
        self._app.router.add_get("/health", self._health_check)
        self._app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=10.0,
                                     auto_decompress=False)  # we inflate ourselves, bounded by max_message_mib
        self._site: web.TCPSite | None = None
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._requested_port,
                                 ssl_context=self._tls.ssl_context() if self._tls is not None else None)
        await self._site.start()
        if self._tls is not None:
            self._reload_task = asyncio.create_task(self._reload_certificates(), name="callscope-tls-reload")
        server = self._site._server  # aiohttp exposes the bound sockets only here
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    def reload_certificates(self) -> bool:
        """Load renewed certificate files for new connections (checked every ``RELOAD_CHECK_S``)."""
        return self._tls.reload_if_changed() if self._tls is not None else False

    async def _reload_certificates(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_CHECK_S)
            self.reload_certificates()

    async def stop(self, grace_s: float) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
        self._runner._shutdown_timeout = grace_s  # aiohttp reads it in cleanup(); no public setter
        await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        # Refused before reading when the client says how large it is; otherwise aiohttp stops reading at
        # client_max_size (HTTPRequestEntityTooLarge).
        if request.content_length is not None and request.content_length > self._max_bytes:
            raise _TooLarge(f"request body of {request.content_length} bytes exceeds the {self._max_bytes} "
                            f"byte limit (max_message_mib)")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _TooLarge(f"request body exceeds the {self._max_bytes} byte limit (max_message_mib)") from None
        return decompress(raw, request.headers.get("Content-Encoding"), max_bytes=self._max_bytes)

    async def _handle(self, request: web.Request, parse, export, response_type, rejected_field: str) -> web.Response:
        encoding = "protobuf"
        error: CallscopeError
        try:
            tenant = await self._ingest.tenant_of(request.headers.get("Authorization"))
            encoding = _encoding_of(request)
            with self._ingest.admit():
                message = parse(await self._body(request), encoding, limits=self._ingest.limits)
                result: ExportResult = await export(message, transport="http", tenant=tenant)
        except _UnsupportedMediaType as unsupported:
            self._ingest.count_refused(unsupported, "http")
            return web.Response(status=415, text=str(unsupported))
        except CallscopeError as refused:
            error = refused
        except Exception as exc:   # a bug: logged with its traceback, answered as retryable
            log.exception("export.crashed", extra={"transport": "http", "path": request.path})
            self._ingest.metrics.internal_errors.labels("export").inc()
            error = InternalError(f"internal error ({type(exc).__name__}); the request was not stored")
        else:
            return self._partial_success(result, response_type, rejected_field, encoding)
        self._ingest.count_refused(error, "http")
        status, body, headers = http_error(error)
        if isinstance(error, _TooLarge):
            status = 413
        if isinstance(error, Unauthenticated):
            headers = {**headers, "WWW-Authenticate": 'Bearer realm="callscope"'}
            encoding = "json" if request.content_type.lower() == _JSON else "protobuf"
            self._ingest.unauthenticated_log.add(transport="http", peer=request.remote, error=error_message(error))
        else:
            log.info("export.refused", extra={"transport": "http", "status": status, "error": error_message(error)})
        return _respond(body, encoding, status=status, headers=headers)

    @staticmethod
    def _partial_success(result: ExportResult, response_type, rejected_field: str,
                         encoding: str) -> web.Response:
        response = response_type()
        if result.rejected:
            setattr(response.partial_success, rejected_field, result.rejected)
            response.partial_success.error_message = result.error_message
        return _respond(response, encoding)

    async def _traces(self, request: web.Request) -> web.Response:
        return await self._handle(request, parse_traces, self._ingest.export_traces,
                                  trace_service_pb2.ExportTraceServiceResponse, "rejected_spans")

    async def _logs(self, request: web.Request) -> web.Response:
        return await self._handle(request, parse_logs, self._ingest.export_logs,
                                  logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records")

    async def _health_check(self, request: web.Request) -> web.Response:
        healthy, detail = (True, {}) if self._health is None else await self._health()
        document = {"status": "ok" if healthy else "database unavailable", **detail}
        return web.Response(status=200 if healthy else 503, content_type=_JSON, text=json.dumps(document))

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._ingest.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST   # carries version=…, which content_type= refuses
        return response
