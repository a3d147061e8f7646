"""Batch stage: group commit of concurrent Exports (decode → map → **batch** → write).

Bounded by record count: a submission that does not fit is refused with ``Overloaded`` (never dropped);
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

from collector.errors import Overloaded, StorageRejected, StorageUnavailable
from storage.records import Record
from collector.telemetry import METRICS

__all__ = ["Batcher", "RecordWriter"]

log = logging.getLogger("callscope.batcher")


class RecordWriter(Protocol):
    async def write(self, records: Sequence[Record]) -> object: ...


@dataclass(slots=True)
class _Submission:
    records: Sequence[Record]
    done: asyncio.Future[list[str]]
    enqueued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, writer: RecordWriter, *, max_batch_records: int = 5000, max_wait_ms: int = 200,
                 queue_records: int = 50000, retry_after_s: float = 1.0, writers: int = 1) -> None:
        if queue_records < max_batch_records:
            raise ValueError("queue_records must be ≥ max_batch_records")
        self._writer = writer
        self._max_batch = max_batch_records
        self._max_wait = max_wait_ms / 1000.0
        self._capacity = queue_records
        self._retry_after = retry_after_s
        self._pending: deque[_Submission] = deque()
        self._queued_records = 0      # accepted and not yet committed (pending + being written)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(writers)
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def queued_records(self) -> int:
        return self._queued_records

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callscope-batcher")

    def _full(self) -> Overloaded:
        return Overloaded(
            f"ingest queue full ({self._queued_records} of {self._capacity} records waiting for the database); "
            f"retry after {self._retry_after:g} s", retry_after_s=self._retry_after)

    def check_capacity(self) -> None:
        """Refuse at once when the queue is already full, before a request is decoded and mapped for nothing."""
        if self._queued_records >= self._capacity:
            METRICS.refused_requests += 1
            raise self._full()

    async def submit(self, records: Sequence[Record]) -> list[str]:
        """Wait until ``records`` are committed; raise ``Overloaded`` at once if they do not fit.

        Returns why rows the database refused to store were left out (normally nothing).
        """
        if not records:
            return []
        if self._closing:
            raise StorageUnavailable("collector is shutting down", retry_after_s=self._retry_after)
        count = len(records)
        # An oversized request is still admitted when nothing else is queued, or it could never get in.
        if self._queued_records + count > self._capacity and self._queued_records > 0:
            METRICS.refused_records += count
            raise self._full()
        submission = _Submission(records, asyncio.get_running_loop().create_future())
        self._pending.append(submission)
        self._queued_records += count
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
        while self._pending and (not batch or size + len(self._pending[0].records) <= self._max_batch):
            submission = self._pending.popleft()
            batch.append(submission)
            size += len(submission.records)
        records: list[Record] = []
        for submission in batch:
            records.extend(submission.records)
        started = time.perf_counter()
        try:
            await self._writer.write(records)
        except StorageRejected:
            # Some row cannot be stored at all (a retry would fail the same way): find it, so that only it is
            # rejected and everything else in the batch still lands.
            METRICS.failed_batches += 1
            log.warning("batch.isolating", extra={"records": size, "submissions": len(batch)})
            for submission in batch:
                await self._write_isolating(submission)
        except StorageUnavailable as exc:
            METRICS.failed_batches += 1
            log.warning("batch.failed", extra={"records": size, "error": str(exc)})
            self._fail(batch, exc)
        except Exception as exc:  # a bug must fail the waiting Exports, not kill the loop
            METRICS.failed_batches += 1
            log.exception("batch.crashed", extra={"records": size})
            self._fail(batch, StorageUnavailable(f"internal error while writing: {exc}"))
        else:
            METRICS.committed_batches += 1
            METRICS.committed_records += size
            METRICS.batch_trigger_size += by_size
            log.debug("batch.committed", extra={"records": size, "seconds": round(time.perf_counter() - started, 4)})
            for submission in batch:
                if not submission.done.done():
                    submission.done.set_result([])
        finally:
            self._queued_records -= size

    async def _write_isolating(self, submission: _Submission) -> None:
        """Write one submission, bisecting it until every unstorable row is found; report those rows."""
        rejected: list[str] = []
        try:
            await self._bisect(list(submission.records), rejected)
        except StorageUnavailable as exc:
            self._fail([submission], exc)
            return
        METRICS.committed_records += len(submission.records) - len(rejected)
        if not submission.done.done():
            submission.done.set_result(rejected)

    async def _bisect(self, records: list[Record], rejected: list[str]) -> None:
        try:
            await self._writer.write(records)
        except StorageRejected as exc:
            if len(records) == 1:
                record = records[0]
                what = getattr(record, "name", None) or getattr(record, "event", None) or type(record).__name__
                rejected.append(f"{type(record).__name__} {what!r}: {exc}")
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
