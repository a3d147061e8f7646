"""Raw OTLP clients for tests: send protobuf requests over gRPC or HTTP and return what the receiver said."""

from __future__ import annotations

import gzip

import aiohttp
import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class GrpcClient:
    def __init__(self, port: int, *, api_key: str | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.traces = trace_service_pb2_grpc.TraceServiceStub(self.channel)
        self.logs = logs_service_pb2_grpc.LogsServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    async def send(self, request, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            return await self.traces.Export(request, timeout=timeout, metadata=self.metadata)
        return await self.logs.Export(request, timeout=timeout, metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()


async def http_post(port: int, path: str, body: bytes, *, content_type: str = "application/x-protobuf",
                    gzipped: bool = False) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": content_type}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()


def trace_response(body: bytes) -> trace_service_pb2.ExportTraceServiceResponse:
    return trace_service_pb2.ExportTraceServiceResponse.FromString(body)


def logs_response(body: bytes) -> logs_service_pb2.ExportLogsServiceResponse:
    return logs_service_pb2.ExportLogsServiceResponse.FromString(body)
