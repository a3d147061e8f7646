"""Write stage: one transaction per batch — COPY into staging, then one server-side routine that stores it.

Append-only: spans and events are inserted once with ``ON CONFLICT DO NOTHING`` on their identity, so a
client retry never duplicates anything, and nothing stored is ever rewritten; tool calls are upserted. A span
that carries no call id of its own is stored under the call its trace is known to belong to (``call_traces``),
else under its trace id, and stays there: when the trace names its call later, derivation and the dashboards
reach those rows through ``call_traces``. The routine (``callscope_write_staged``) also marks every call the
batch changed in ``dirty_calls``, in the same transaction; storage/deriver.py recomputes their turns and call
rows from there, many batches at once (a call spread over 50 batches is derived a few times, not 50).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

import asyncpg

from storage.errors import StorageRejected, StorageUnavailable
from storage.records import EventRow, Record, SpanRow, ToolCallRow, columns_of
from storage.routines import routine_name

__all__ = ["PostgresWriter", "WriterPool", "WriteResult", "storage_errors", "SERVER_SETTINGS", "WRITE_ROUTINE"]

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
    touched: tuple[str, ...] = ()    # the calls the batch marked dirty


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
    # Records carry their tenant (storage/records.py); staged with them until the stored tables have the column.
    "ALTER TABLE stage_spans ADD COLUMN IF NOT EXISTS tenant text",
    "ALTER TABLE stage_events ADD COLUMN IF NOT EXISTS tenant text",
    "ALTER TABLE stage_tools ADD COLUMN IF NOT EXISTS tenant text",
)


def _stored(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The staged columns the stored tables have (``tenant`` is staged only, for now)."""
    return tuple(column for column in columns if column != "tenant")

# Traces that name their call (an explicit id on a span or log record): the first name a trace gets is kept.
# ON CONFLICT probes the primary key, so a trace named already costs no write.
_LEARN_TRACES = """
WITH named AS (
    SELECT trace_id, call_id, start_time AS at FROM stage_spans WHERE call_id_explicit
    UNION ALL
    SELECT trace_id, call_id, time FROM stage_events WHERE call_id_explicit AND trace_id IS NOT NULL
), first_named AS (
    SELECT DISTINCT ON (trace_id) trace_id, call_id FROM named ORDER BY trace_id, at, call_id
), learned AS (
    INSERT INTO call_traces (trace_id, call_id) SELECT trace_id, call_id FROM first_named
    ON CONFLICT (trace_id) DO NOTHING
    RETURNING trace_id, call_id
)
SELECT array_agg(trace_id), array_agg(call_id) INTO learned_traces, learned_calls FROM learned
"""


def _resolved(alias: str) -> str:
    """The call a staged row is stored under: its own explicit id, else its trace's call where that is known
    already, else its trace id. A correlated lookup, so the primary key of ``call_traces`` is used whatever
    the planner knows about the table; rows stored under a trace id are never moved afterwards (derivation
    and the dashboards find them through ``call_traces``)."""
    return (f"CASE WHEN {alias}.call_id_explicit THEN {alias}.call_id ELSE coalesce("
            f"(SELECT ct.call_id FROM call_traces ct WHERE ct.trace_id = {alias}.trace_id), {alias}.call_id) END")


def _insert_resolved(table: str, columns: tuple[str, ...], into: str) -> str:
    """Staged rows → ``table`` with their call id resolved; rows stored already (a retry) are skipped.

    A span's resource is stored once in ``resources`` (_STORE_RESOURCES), so its own column stays empty."""
    values = {"call_id": _resolved("s"), "resource": "NULL"}
    return f"""
WITH ins AS (
    INSERT INTO {table} ({", ".join(columns)})
    SELECT {", ".join(values.get(c, "s." + c) for c in columns)}
    FROM stage_{table} s
    ON CONFLICT DO NOTHING
    RETURNING call_id
) SELECT count(*), array_agg(DISTINCT call_id) INTO {into} FROM ins
"""


# Each distinct resource once: a batch has a few (one per SDK process), and a known one costs an index probe.
_STORE_RESOURCES = """
INSERT INTO resources (resource_id, attributes)
SELECT DISTINCT ON (resource_id) resource_id, resource FROM stage_spans
WHERE resource_id IS NOT NULL
ORDER BY resource_id
ON CONFLICT (resource_id) DO NOTHING
"""

_INSERT_SPANS = _insert_resolved("spans", _stored(SPAN_COLUMNS), "span_count, span_calls")
_INSERT_EVENTS = _insert_resolved("events", _stored(EVENT_COLUMNS), "event_count, event_calls")
_TOOL_STORED = _stored(TOOL_COLUMNS)

_UPSERT_TOOLS = f"""
WITH resolved AS (
    SELECT DISTINCT ON (call_id, tool_call_id) * FROM (
        SELECT {", ".join(_resolved("s") + " AS call_id" if c == "call_id" else "s." + c for c in _TOOL_STORED)}
        FROM stage_tools s
    ) r ORDER BY call_id, tool_call_id, is_error DESC, ended_at DESC NULLS LAST, span_id
), ins AS (
    INSERT INTO tool_calls AS t ({", ".join(_TOOL_STORED)})
    SELECT {", ".join(_TOOL_STORED)} FROM resolved
    ON CONFLICT (call_id, tool_call_id) DO UPDATE SET
        tool_name = EXCLUDED.tool_name,
        started_at = coalesce(t.started_at, EXCLUDED.started_at),
        ended_at = coalesce(EXCLUDED.ended_at, t.ended_at),
        duration_ms = coalesce(EXCLUDED.duration_ms, t.duration_ms),
        arguments = coalesce(EXCLUDED.arguments, t.arguments),
        result = coalesce(EXCLUDED.result, t.result),
        is_error = t.is_error OR EXCLUDED.is_error,
        error = coalesce(EXCLUDED.error, t.error)
    WHERE (t.tool_name, t.started_at, t.ended_at, t.arguments, t.result, t.is_error, t.error)
          IS DISTINCT FROM
          (EXCLUDED.tool_name, coalesce(t.started_at, EXCLUDED.started_at), coalesce(EXCLUDED.ended_at, t.ended_at),
           coalesce(EXCLUDED.arguments, t.arguments), coalesce(EXCLUDED.result, t.result),
           t.is_error OR EXCLUDED.is_error, coalesce(EXCLUDED.error, t.error))
    RETURNING call_id
) SELECT count(*), array_agg(DISTINCT call_id) INTO tool_count, tool_calls_touched FROM ins
"""


def _indent(sql: str) -> str:
    return "\n".join("    " + line for line in sql.strip().splitlines())


# One server-side routine per batch: the staged rows become stored rows in a single round trip (each round
# trip also waits for the event loop, which is busy decoding the next requests). Every statement is an
# insert: nothing stored is rewritten. Seq scans and JIT are off inside it because fresh tables and chunks
# have no statistics (autovacuum may be off): every lookup must go through an index whatever the estimates.
WRITE_ROUTINE = f"""
CREATE OR REPLACE FUNCTION callscope_write_staged(
    OUT span_count bigint, OUT event_count bigint, OUT tool_count bigint, OUT calls_touched int,
    OUT touched text[])
LANGUAGE plpgsql
SET enable_seqscan = off SET jit = off
AS $routine$
#variable_conflict use_column
DECLARE
    learned_traces text[];
    learned_calls text[];
    span_calls text[];
    event_calls text[];
    tool_calls_touched text[];
BEGIN
{_indent(_LEARN_TRACES)};
{_indent(_STORE_RESOURCES)};
{_indent(_INSERT_SPANS)};
{_indent(_INSERT_EVENTS)};
{_indent(_UPSERT_TOOLS)};
    -- A trace that named its call for the first time marks both sides: the call gains the rows stored under
    -- the trace id, and the call keyed by that trace id disappears.
    SELECT array_agg(DISTINCT id) INTO touched
    FROM unnest(coalesce(span_calls, '{{}}') || coalesce(event_calls, '{{}}') || coalesce(tool_calls_touched, '{{}}')
                || coalesce(learned_calls, '{{}}') || coalesce(learned_traces, '{{}}')) AS id;
    IF touched IS NOT NULL THEN
        INSERT INTO dirty_calls (call_id) SELECT unnest(touched) ORDER BY 1;
    END IF;
    calls_touched := coalesce(cardinality(touched), 0);
END
$routine$
"""
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
                           calls_touched=row["calls_touched"], touched=tuple(row["touched"] or ()))


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
