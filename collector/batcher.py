"""Batch stage: group commit of concurrent Exports (decode → map → **batch** → write).

Bounded by record count and by (estimated) bytes: a submission that does not fit is refused with ``Overloaded``
(never dropped);
an accepted one waits until the batch holding it is committed, so an Export's success is a promise.
A batch is written when a writer connection is free and either it reaches ``max_batch_records`` or its oldest
submission has waited ``max_wait_ms``; while every writer is busy, submissions gather into the next batch
(group commit), so batches grow with load and latency stays low without it. ``close`` flushes everything
accepted before returning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from collector.errors import Overloaded, StorageRejected, StorageUnavailable, shorten
from collector.telemetry import Metrics
from storage.records import Record

__all__ = ["Batcher", "RecordWriter"]

log = logging.getLogger("callscope.batcher")


class RecordWriter(Protocol):
    async def write(self, records: Sequence[Record]) -> object: ...


_RECORD_OVERHEAD = 200   # bytes of a record's tuple, datetimes, ints and small strings, roughly


def estimate_bytes(records: Sequence[Record]) -> int:
    """A cheap estimate of the memory ``records`` hold: their text (JSON attributes dominate) plus a constant.

    Characters, not bytes of UTF-8: close enough for a bound, and ``len`` is O(1).
    """
    total = _RECORD_OVERHEAD * len(records)
    for record in records:
        for value in record:
            if type(value) is str:
                total += len(value)
    return total


@dataclass(slots=True)
class _Submission:
    records: Sequence[Record]
    size_bytes: int
    done: asyncio.Future[list[str]]
    enqueued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, writer: RecordWriter, *, max_batch_records: int = 5000, max_wait_ms: int = 200,
                 queue_records: int = 50000, queue_bytes: int = 256 * 1024 * 1024, retry_after_s: float = 1.0,
                 writers: int = 1, metrics: Metrics | None = None) -> None:
        if queue_records < max_batch_records:
            raise ValueError("queue_records must be ≥ max_batch_records")
        self._writer = writer
        self._max_batch = max_batch_records
        self._max_wait = max_wait_ms / 1000.0
        self._capacity = queue_records
        self._capacity_bytes = queue_bytes
        self._retry_after = retry_after_s
        self._metrics = metrics or Metrics()
        self._pending: deque[_Submission] = deque()
        self._queued_records = 0      # accepted and not yet committed (pending + being written)
        self._queued_bytes = 0        # their estimated size
        self.last_commit_at: float | None = None    # time.monotonic() of the last successful commit
        self.last_failure_at: float | None = None   # ... of the last batch that failed with StorageUnavailable
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(writers)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._metrics.register_gauge_callback("callscope_queue_records",
                                              "Records accepted and not yet committed.", lambda: self._queued_records)
        self._metrics.register_gauge_callback("callscope_queue_bytes",
                                              "Estimated size of the records accepted and not yet committed.",
                                              lambda: self._queued_bytes)

    @property
    def queued_records(self) -> int:
        return self._queued_records

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callscope-batcher")

    def _full(self, *, by_bytes: bool, incoming_bytes: int = 0) -> Overloaded:
        """The refusal, naming the bound that was hit (records or estimated bytes)."""
        if by_bytes:
            return Overloaded(
                f"ingest queue full ({(self._queued_bytes + incoming_bytes) // 1024} of "
                f"{self._capacity_bytes // 1024} KiB waiting for the database); retry after {self._retry_after:g} s",
                retry_after_s=self._retry_after, reason="queue_bytes_full")
        return Overloaded(
            f"ingest queue full ({self._queued_records} of {self._capacity} records waiting for the database); "
            f"retry after {self._retry_after:g} s", retry_after_s=self._retry_after, reason="queue_full")

    def check_capacity(self) -> None:
        """Refuse at once when the queue is already full, before a request is decoded and mapped for nothing."""
        if self._queued_records >= self._capacity:
            raise self._full(by_bytes=False)
        if self._queued_bytes >= self._capacity_bytes:
            raise self._full(by_bytes=True)

    async def submit(self, records: Sequence[Record]) -> list[str]:
        """Wait until ``records`` are committed; raise ``Overloaded`` at once if they do not fit.

        Returns why rows the database refused to store were left out (normally nothing).
        """
        if not records:
            return []
        if self._closing:
            raise StorageUnavailable("collector is shutting down", retry_after_s=self._retry_after)
        count = len(records)
        size = estimate_bytes(records)
        # An oversized request is still admitted when nothing else is queued, or it could never get in
        # (max_message_mib bounds how large one can be).
        if self._queued_records > 0:
            if self._queued_records + count > self._capacity:
                raise self._full(by_bytes=False)
            if self._queued_bytes + size > self._capacity_bytes:
                raise self._full(by_bytes=True, incoming_bytes=size)
        submission = _Submission(records, size, asyncio.get_running_loop().create_future())
        self._pending.append(submission)
        self._queued_records += count
        self._queued_bytes += size
        self._wakeup.set()
        return await asyncio.shield(submission.done)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return  # close() then waits for the batches still being written
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._slots.locked() and not self._closing:
                # Every writer is busy: keep gathering (group commit); a finished batch wakes us.
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            pending_records = sum(len(s.records) for s in self._pending)
            age = time.monotonic() - self._pending[0].enqueued_at
            if pending_records < self._max_batch and age < self._max_wait and not self._closing:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._max_wait - age)
                except asyncio.TimeoutError:
                    pass
                continue
            # Up to ``writers`` batches are written at once (one database connection each).
            await self._slots.acquire()
            task = asyncio.create_task(self._write_one_batch(by_size=pending_records >= self._max_batch))
            self._in_flight.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        self._wakeup.set()

    async def _write_one_batch(self, *, by_size: bool) -> None:
        batch: list[_Submission] = []
        size = 0
        size_bytes = 0
        while self._pending and (not batch or size + len(self._pending[0].records) <= self._max_batch):
            submission = self._pending.popleft()
            batch.append(submission)
            size += len(submission.records)
            size_bytes += submission.size_bytes
        records: list[Record] = []
        for submission in batch:
            records.extend(submission.records)
        metrics = self._metrics
        started = time.perf_counter()
        try:
            if not records:   # cannot happen (submit refuses empty lists); never send an empty COPY
                for submission in batch:
                    if not submission.done.done():
                        submission.done.set_result([])
                return
            await self._writer.write(records)
        except StorageRejected:
            # Some row cannot be stored at all (a retry would fail the same way): find it, so that only it is
            # rejected and everything else in the batch still lands.
            metrics.failed_batches.labels("rejected").inc()
            log.warning("batch.isolating", extra={"records": size, "submissions": len(batch)})
            for submission in batch:
                await self._write_isolating(submission)
        except StorageUnavailable as exc:
            metrics.failed_batches.labels("unavailable").inc()
            self.last_failure_at = time.monotonic()
            log.warning("batch.failed", extra={"records": size, "error": str(exc)})
            self._fail(batch, exc)
        except Exception as exc:  # a bug must fail the waiting Exports, not kill the loop
            metrics.failed_batches.labels("internal").inc()
            metrics.internal_errors.labels("write").inc()
            log.exception("batch.crashed", extra={"records": size})
            self._fail(batch, StorageUnavailable(f"internal error while writing: {type(exc).__name__}"))
        else:
            seconds = time.perf_counter() - started
            self.last_commit_at = time.monotonic()
            metrics.committed_batches.inc()
            metrics.committed_records.inc(size)
            metrics.batch_records.observe(size)
            metrics.commit_seconds.observe(seconds)
            if by_size:
                metrics.full_batches.inc()
            log.debug("batch.committed", extra={"records": size, "seconds": round(seconds, 4)})
            for submission in batch:
                if not submission.done.done():
                    submission.done.set_result([])
        finally:
            self._queued_records -= size
            self._queued_bytes -= size_bytes

    async def _write_isolating(self, submission: _Submission) -> None:
        """Write one submission, bisecting it until every unstorable row is found; report those rows."""
        rejected: list[str] = []
        try:
            await self._bisect(list(submission.records), rejected)
        except StorageUnavailable as exc:
            self._fail([submission], exc)
            return
        self.last_commit_at = time.monotonic()
        self._metrics.committed_records.inc(len(submission.records) - len(rejected))
        if not submission.done.done():
            submission.done.set_result(rejected)

    async def _bisect(self, records: list[Record], rejected: list[str]) -> None:
        try:
            await self._writer.write(records)
        except StorageRejected as exc:
            if len(records) == 1:
                record = records[0]
                what = getattr(record, "name", None) or getattr(record, "event", None) or type(record).__name__
                rejected.append(f"{type(record).__name__} {shorten(str(what), 80)!r}: {shorten(str(exc))}")
                return
            middle = len(records) // 2
            await self._bisect(records[:middle], rejected)
            await self._bisect(records[middle:], rejected)

    @staticmethod
    def _fail(batch: list[_Submission], error: Exception) -> None:
        for submission in batch:
            if not submission.done.done():
                submission.done.set_exception(error)

    async def flush(self) -> None:
        """Return once everything accepted so far is committed (or has failed)."""
        waiting = [s.done for s in self._pending]
        self._wakeup.set()
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        while self._queued_records:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Flush everything accepted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def terminate(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        while self._pending:
            submission = self._pending.popleft()
            if not submission.done.done():
                submission.done.set_exception(StorageUnavailable("collector terminated"))
