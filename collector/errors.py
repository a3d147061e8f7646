"""Error hierarchy of the collector, and the one place errors become gRPC codes and HTTP statuses.

    CallscopeError
     ├── RejectedSpan        one span or log record is invalid: counted in partial_success, the rest is stored
     ├── InvalidRequest      the whole request cannot be decoded (INVALID_ARGUMENT / 400, not retried)
     ├── Overloaded          the batcher is full (RESOURCE_EXHAUSTED + RetryInfo / 429 + Retry-After, retried)
     ├── StorageUnavailable  the database is down or timed out (UNAVAILABLE / 503 + Retry-After, retried)
     └── StorageRejected     the database refused the data itself (INVALID_ARGUMENT / 400, never retried:
                             a retry would fail the same way and block the batches behind it)

Foreign exceptions (asyncpg, protobuf) are translated at one boundary each: ``storage_errors()`` in
storage/writer.py and ``decode_errors()`` in collector/otlp/codec.py.
"""

from __future__ import annotations

import grpc

__all__ = [
    "CallscopeError",
    "RejectedSpan",
    "InvalidRequest",
    "Overloaded",
    "StorageUnavailable",
    "StorageRejected",
    "http_status_for",
]


class CallscopeError(Exception):
    """Base class. ``grpc_code`` decides the answer; ``retryable`` whether clients should try again."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False
    retry_after_s: float | None = None


class RejectedSpan(CallscopeError):
    """A single span or log record is malformed; it is skipped and reported, never the batch."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequest(CallscopeError):
    """The request body cannot be decoded at all (bad protobuf, bad JSON, bad gzip)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(CallscopeError):
    """The ingest queue is full; the client must retry after ``retry_after_s``."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageUnavailable(CallscopeError):
    """The database could not commit the batch; nothing of it was acknowledged."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageRejected(CallscopeError):
    """The database rejected the rows themselves (a data or constraint error), not a transient failure."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


# OTLP/HTTP spec: 429/502/503/504 are retryable, 400 is not (collector's GetHTTPStatusCodeFromStatus).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


def http_status_for(error: CallscopeError) -> int:
    """HTTP status of an error, derived from its gRPC code."""
    return _HTTP_STATUS.get(error.grpc_code, 500)
