"""Write stage: one transaction per batch — COPY into staging, then one server-side routine that stores it.

Append-only: spans and events are inserted once with ``ON CONFLICT DO NOTHING`` on their identity, so a
client retry never duplicates anything, and nothing stored is ever rewritten; tool calls are upserted. A span
that carries no call id of its own is stored under the call its trace is known to belong to (``call_traces``),
else under its trace id, and stays there: when the trace names its call later, derivation and the dashboards
reach those rows through ``call_traces``. The routine (``callscope_write_staged``, plain SQL in
storage/write.sql) also marks every call the batch changed in ``dirty_calls``, in the same transaction;
storage/deriver.py recomputes their turns and call rows from there, many batches at once (a call spread over 50
batches is derived a few times, not 50).
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import asyncpg

from storage.errors import StorageRejected, StorageUnavailable
from storage.records import EventRow, Record, SpanRow, ToolCallRow, columns_of
from storage.routines import routine_name

__all__ = ["PostgresWriter", "WriterPool", "WriteResult", "storage_errors", "SERVER_SETTINGS", "WRITE_ROUTINE", "STAGED_ONLY",
           "WRITE_STATEMENTS"]

log = logging.getLogger("callscope.storage")

SPAN_COLUMNS = columns_of(SpanRow)
EVENT_COLUMNS = columns_of(EventRow)
TOOL_COLUMNS = columns_of(ToolCallRow)


@dataclass(frozen=True, slots=True)
class WriteResult:
    spans: int
    events: int
    tool_calls: int
    calls_touched: int
    touched: tuple[tuple[str, str], ...] = ()    # (tenant, call id) of the calls the batch marked dirty


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    """The one boundary where asyncpg / OS errors become ``StorageUnavailable`` (retryable by clients)."""
    try:
        yield
    except (StorageUnavailable, StorageRejected):
        raise
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
            asyncpg.ProgramLimitExceededError) as exc:
        # SQLSTATE classes 22, 23 and 54: the data itself cannot be stored; retrying cannot help.
        raise StorageRejected(f"database rejected the data: {type(exc).__name__}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError) as exc:
        raise StorageUnavailable(f"database write failed: {type(exc).__name__}: {exc}") from exc


_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_spans (LIKE spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_tools (LIKE tool_calls INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
)
# Record fields that are staged but not stored: none (the tenant, the records' last field, is stored with every row
# since migration 0013; tests/test_storage_plans.py still honours the set).
STAGED_ONLY: frozenset[str] = frozenset()

# The routine that stores a staged batch (plain SQL, storage/write.sql): one round trip per batch.
WRITE_ROUTINE = Path(__file__).with_name("write.sql").read_text(encoding="utf-8")


def _write_statements(routine: str) -> dict[str, str]:
    """The routine's ``-- name:`` blocks as statements (tests/test_storage_plans.py plans each one)."""
    body = routine[routine.index("BEGIN\n") + len("BEGIN\n"):routine.rindex("\nEND\n")]
    parts = re.split(r"^\s*-- name: (\w+)\s*$", body, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].strip().rstrip(";") for i in range(1, len(parts), 2)}


WRITE_STATEMENTS = _write_statements(WRITE_ROUTINE)
_CALL_WRITE = f"SELECT * FROM {routine_name('callscope_write_staged')}()"   # this release's version

# Statements take arrays of ids; a generic plan would guess their size and pick sequential scans.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan", "application_name": "callscope"}


class PostgresWriter:
    """Owns one connection; ``write`` commits a batch atomically or raises ``StorageUnavailable``."""

    def __init__(self, database_url: str, *, timeout: float = 30.0,
                 on_commit: Callable[[WriteResult], None] | None = None) -> None:
        self._database_url = database_url
        self._timeout = timeout
        self._on_commit = on_commit
        self._connection: asyncpg.Connection | None = None

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            async with storage_errors():
                connection = await asyncpg.connect(self._database_url, timeout=self._timeout,
                                                   server_settings=SERVER_SETTINGS)
                for statement in _STAGING:
                    await connection.execute(statement)
            self._connection = connection
        return self._connection

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close(timeout=5)
        self._connection = None

    def terminate(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
        self._connection = None

    async def write(self, records: Sequence[Record]) -> WriteResult:
        spans = [r for r in records if type(r) is SpanRow]
        events = [r for r in records if type(r) is EventRow]
        tools = [r for r in records if type(r) is ToolCallRow]
        try:
            async with storage_errors():
                connection = await self._connect()
                result = await asyncio.wait_for(self._transaction(connection, spans, events, tools), self._timeout)
        except (StorageUnavailable, StorageRejected):
            # The connection may be mid-transaction or broken; start clean next time.
            self.terminate()
            raise
        if result.calls_touched and self._on_commit is not None:
            self._on_commit(result)
        return result

    async def _transaction(self, connection: asyncpg.Connection, spans: list[SpanRow], events: list[EventRow],
                           tools: list[ToolCallRow]) -> WriteResult:
        async with connection.transaction():
            if spans:
                await connection.copy_records_to_table("stage_spans", records=spans, columns=SPAN_COLUMNS)
            if events:
                await connection.copy_records_to_table("stage_events", records=events, columns=EVENT_COLUMNS)
            if tools:
                await connection.copy_records_to_table("stage_tools", records=tools, columns=TOOL_COLUMNS)
            row = await connection.fetchrow(_CALL_WRITE)
        return WriteResult(spans=row["span_count"], events=row["event_count"], tool_calls=row["tool_count"],
                           calls_touched=row["calls_touched"],
                           touched=tuple(zip(row["touched_tenants"] or (), row["touched"] or ())))


class WriterPool:
    """Several ``PostgresWriter`` connections, so batches commit in parallel on a multi-core database.

    Concurrent batches touching the same trace may deadlock in PostgreSQL; the loser fails with
    ``StorageUnavailable`` and its client retries, which stores nothing twice.
    """

    def __init__(self, database_url: str, *, size: int = 2, timeout: float = 30.0,
                 on_commit: Callable[[WriteResult], None] | None = None) -> None:
        self._writers = [PostgresWriter(database_url, timeout=timeout, on_commit=on_commit) for _ in range(size)]
        self._idle: asyncio.Queue[PostgresWriter] = asyncio.Queue()
        for writer in self._writers:
            self._idle.put_nowait(writer)

    async def start(self) -> None:
        for writer in self._writers:
            await writer.start()

    async def write(self, records: Sequence[Record]) -> WriteResult:
        writer = await self._idle.get()
        try:
            return await writer.write(records)
        finally:
            self._idle.put_nowait(writer)

    async def close(self) -> None:
        for writer in self._writers:
            await writer.close()

    def terminate(self) -> None:
        for writer in self._writers:
            writer.terminate()
