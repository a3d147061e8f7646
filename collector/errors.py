"""Error hierarchy of the collector, and the one place errors become gRPC codes and HTTP statuses.

The base class and the two storage errors live in storage/errors.py (the layer below); the receivers' codes
for all of them are decided here.

    CallscopeError
     ├── RejectedSpan        one span or log record is invalid: counted in partial_success, the rest is stored
     ├── InvalidRequest      the whole request cannot be decoded (INVALID_ARGUMENT / 400, not retried)
     ├── Unauthenticated     no valid API key (UNAUTHENTICATED / 401, not retried: a retry cannot fix it)
     ├── Overloaded          the batcher is full or too many requests are in progress
     │                       (RESOURCE_EXHAUSTED + RetryInfo / 429 + Retry-After, retried)
     ├── StorageUnavailable  the database is down or timed out (UNAVAILABLE / 503 + Retry-After, retried)
     └── StorageRejected     the database refused the data itself (INVALID_ARGUMENT / 400, never retried:
                             a retry would fail the same way and block the batches behind it)

Foreign exceptions (asyncpg, protobuf) are translated at one boundary each: ``storage_errors()`` in
storage/writer.py and ``decode_errors()`` in collector/otlp/codec.py.
"""

from __future__ import annotations

import grpc

from storage.errors import CallscopeError, StorageRejected, StorageUnavailable

__all__ = [
    "CallscopeError",
    "RejectedSpan",
    "InvalidRequest",
    "Unauthenticated",
    "Overloaded",
    "StorageUnavailable",
    "StorageRejected",
    "InternalError",
    "http_status_for",
    "grpc_code_of",
    "shorten",
    "MAX_MESSAGE_CHARS",
]

_MAX_QUOTED = 300  # characters of a producer's value (or of a foreign error) quoted in a message
MAX_MESSAGE_CHARS = 2048   # partial_success.error_message and status messages are cut to this


def shorten(text: str, limit: int = _MAX_QUOTED) -> str:
    """``text`` cut to ``limit`` characters with a marker saying how much was cut.

    Messages quote what producers sent (names, ids, values) and go into partial_success and logs; a 10 MB
    attribute must not become a 10 MB log line.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]"


class RejectedSpan(CallscopeError):
    """A single span or log record is malformed; it is skipped and reported, never the batch.

    ``reason`` is a short fixed key (the ``reason`` label of the rejected-items counter), the message says
    what a person should fix.
    """

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidRequest(CallscopeError):
    """The request body cannot be decoded at all (bad protobuf, bad JSON, bad gzip)."""


class Unauthenticated(CallscopeError):
    """The request carries no API key, or one that is unknown or revoked; nothing of it is stored."""


class Overloaded(CallscopeError):
    """The ingest queue is full, or too many requests are in progress; retry after ``retry_after_s``.

    ``reason`` is the ``reason`` label of the refused-requests counter.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class InternalError(CallscopeError):
    """Something unexpected (a bug) failed a whole request; it is logged with its traceback.

    UNAVAILABLE with a retry hint, as the OpenTelemetry Collector answers unknown errors: the data was not
    stored, and a retry may well succeed (the per-item fault boundary already isolates bad items).
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# OTLP/HTTP spec: 429/502/503/504 are retryable, 400 is not (collector's GetHTTPStatusCodeFromStatus).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


_GRPC_CODE: dict[type[CallscopeError], grpc.StatusCode] = {
    RejectedSpan: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    StorageRejected: grpc.StatusCode.INVALID_ARGUMENT,
    InternalError: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code_of(error: CallscopeError) -> grpc.StatusCode:
    """gRPC status code of an error (its nearest class in the table; INTERNAL for anything else)."""
    for cls in type(error).__mro__:
        if cls in _GRPC_CODE:
            return _GRPC_CODE[cls]
    return grpc.StatusCode.INTERNAL


def http_status_for(error: CallscopeError) -> int:
    """HTTP status of an error, derived from its gRPC code."""
    return _HTTP_STATUS.get(grpc_code_of(error), 500)
