"""Receiver, HTTP transport: OTLP/HTTP ``/v1/traces`` and ``/v1/logs`` (protobuf and JSON, gzip), ``/health``.

Responses and error bodies use the request's encoding, as the OTLP/HTTP specification requires; refusals
carry ``Retry-After`` so exporters back off and retry.
"""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.errors import CallscopeError, InvalidRequest
from collector.ingest import ExportResult, Ingest
from collector.otlp.codec import decompress, parse_logs, parse_traces
from collector.otlp.status import http_error
from collector.telemetry import METRICS

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


def _respond(message, encoding: str, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if encoding == "json":
        body = json_format.MessageToJson(message, indent=None).encode()
        return web.Response(body=body, status=status, content_type=_JSON, headers=headers)
    return web.Response(body=message.SerializeToString(), status=status, content_type=_PROTOBUF, headers=headers)


class HttpReceiver:
    def __init__(self, ingest: Ingest, *, host: str, port: int, max_message_bytes: int,
                 health: Callable[[], Awaitable[bool]] | None = None) -> None:
        self._ingest = ingest
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
        self._site = web.TCPSite(self._runner, self._host, self._requested_port)
        await self._site.start()
        server = self._site._server  # aiohttp exposes the bound sockets only here
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float) -> None:
        self._runner._shutdown_timeout = grace_s  # aiohttp reads it in cleanup(); no public setter
        await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        raw = await request.read()
        return decompress(raw, request.headers.get("Content-Encoding"), max_bytes=self._max_bytes)

    async def _handle(self, request: web.Request, parse, export, response_type, rejected_field: str) -> web.Response:
        encoding = "protobuf"
        try:
            encoding = _encoding_of(request)
            message = parse(await self._body(request), encoding)
            result: ExportResult = await export(message, transport="http")
        except _UnsupportedMediaType as error:
            return web.Response(status=415, text=str(error))
        except web.HTTPRequestEntityTooLarge:
            error = InvalidRequest(f"request body exceeds {self._max_bytes} bytes")
            status, body, headers = http_error(error)
            return _respond(body, encoding, status=413, headers=headers)
        except CallscopeError as error:
            status, body, headers = http_error(error)
            log.info("export.refused", extra={"transport": "http", "status": status, "error": str(error)})
            return _respond(body, encoding, status=status, headers=headers)
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
        healthy = True if self._health is None else await self._health()
        return web.Response(status=200 if healthy else 503, content_type=_JSON,
                            text=json.dumps({"status": "ok" if healthy else "database unavailable"}))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=METRICS.prometheus(), content_type="text/plain")
