"""Errors of the storage layer: what a write or a derive round can say about its failure.

They carry only what a caller needs to decide (retry or not, and when); the receivers map them to gRPC codes
and HTTP statuses in collector/errors.py. Foreign exceptions (asyncpg, OS) become these at one boundary,
``storage_errors()`` in storage/writer.py.
"""

from __future__ import annotations

__all__ = ["CallscopeError", "StorageUnavailable", "StorageRejected", "SchemaMismatch"]


class CallscopeError(Exception):
    """Base class of every error Callscope reports; ``retryable`` says whether clients should try again."""

    retryable: bool = False
    retry_after_s: float | None = None


class StorageUnavailable(CallscopeError):
    """The database could not commit the batch; nothing of it was acknowledged."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageRejected(CallscopeError):
    """The database rejected the rows themselves (a data or constraint error), not a transient failure."""


class SchemaMismatch(CallscopeError):
    """The database's schema revision or routines are not the ones this release runs on (``callscope serve``
    refuses to start); the message is one line that says which and what to run."""
