"""The one place where Callscope errors become gRPC statuses and OTLP/HTTP error responses."""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import code_pb2, error_details_pb2, status_pb2

from collector.errors import CallscopeError, grpc_code_of, http_status_for

__all__ = ["rpc_status", "grpc_trailers", "http_error", "retry_after_header"]


def rpc_status(error: CallscopeError) -> status_pb2.Status:
    """``google.rpc.Status`` with RetryInfo attached to retryable errors (OTel exporters retry only then)."""
    status = status_pb2.Status(code=grpc_code_of(error).value[0], message=str(error))
    if error.retryable and error.retry_after_s is not None:
        seconds = float(error.retry_after_s)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        detail = AnyProto()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    return status


def grpc_trailers(error: CallscopeError) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", rpc_status(error).SerializeToString()),)


def retry_after_header(error: CallscopeError) -> dict[str, str]:
    if error.retryable and error.retry_after_s is not None:
        return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    return {}


def http_error(error: CallscopeError) -> tuple[int, status_pb2.Status, dict[str, str]]:
    return http_status_for(error), rpc_status(error), retry_after_header(error)


assert code_pb2.RESOURCE_EXHAUSTED == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
