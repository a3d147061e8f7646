"""The one place where Callscope errors become gRPC statuses and OTLP/HTTP error responses."""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import code_pb2, error_details_pb2, status_pb2

from collector.errors import MAX_MESSAGE_CHARS, CallscopeError, grpc_code_of, http_status_for, shorten

__all__ = ["rpc_status", "retry_info", "error_message", "grpc_trailers", "http_error", "retry_after_header",
           "MAX_MESSAGE_CHARS"]


def retry_info(error: CallscopeError) -> error_details_pb2.RetryInfo | None:
    if not (error.retryable and error.retry_after_s is not None):
        return None
    seconds = float(error.retry_after_s)
    delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def rpc_status(error: CallscopeError) -> status_pb2.Status:
    """``google.rpc.Status`` with RetryInfo attached to retryable errors (OTel exporters retry only then)."""
    status = status_pb2.Status(code=grpc_code_of(error).value[0], message=error_message(error))
    info = retry_info(error)
    if info is not None:
        detail = AnyProto()
        detail.Pack(info)
        status.details.append(detail)
    return status


def error_message(error: CallscopeError) -> str:
    """The status message: the error in words, cut so a producer's huge value never becomes a huge trailer."""
    return shorten(str(error), MAX_MESSAGE_CHARS)


def grpc_trailers(error: CallscopeError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata of a refused call.

    RetryInfo goes twice: inside ``grpc-status-details-bin`` (the standard rich status, read by the Go
    collector's exporter) and alone in ``google.rpc.retryinfo-bin``, the only place the OpenTelemetry Python
    exporter looks (opentelemetry/exporter/otlp/proto/grpc/exporter.py, ``_export``).
    """
    trailers = [("grpc-status-details-bin", rpc_status(error).SerializeToString())]
    info = retry_info(error)
    if info is not None:
        trailers.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    return tuple(trailers)


def retry_after_header(error: CallscopeError) -> dict[str, str]:
    if error.retryable and error.retry_after_s is not None:
        return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    return {}


def http_error(error: CallscopeError) -> tuple[int, status_pb2.Status, dict[str, str]]:
    return http_status_for(error), rpc_status(error), retry_after_header(error)


assert code_pb2.RESOURCE_EXHAUSTED == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
