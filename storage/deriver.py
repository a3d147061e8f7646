"""Derive stage: recompute turns, calls and links for the calls in ``dirty_calls`` (storage/derive/*.sql, run as
the ``callscope_derive`` routine that ``migrate`` installs).

Any number of derive workers, in one process or many, share the backlog. A worker claims calls, not a global
lock: it takes up to ``max_calls`` marks with ``FOR UPDATE SKIP LOCKED``, keeps the calls whose per-call lock it
gets (the row of ``derive_locks`` for the call's slot, ``FOR UPDATE SKIP LOCKED``: one call is derived by one
worker at a time), deletes their marks and derives them in the same transaction. Row locks on an internal
table, not advisory locks: any role can take an advisory lock and hold it, a reader included; a reader has no
privilege on ``derive_locks`` (storage/reader.py). A batch that marks a call again while it is being derived
leaves a new mark, so the call is derived again after its last write; a call touched by many batches between
two rounds is derived once.

Shutdown is bounded whatever other collectors do (``close``): no new claims, the rounds in progress finish (or
are rolled back when the time is up, which returns their marks), then the calls this process's own batches
marked and nobody has derived yet are derived, until the deadline. Marks left over stay for any other collector.

The routines are called under this release's versioned names (storage/routines.py).

A failure never holds up other calls: the claimed calls are derived together inside a savepoint, and when that
fails they are derived one by one; a call that still fails is quarantined (``call_quarantine``: error,
attempts, next retry with exponential backoff) and its marks are consumed, so it costs nothing until it is
written to again or its retry time comes. A call that derives cleanly leaves quarantine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import asyncpg

from storage.errors import StorageUnavailable
from storage.retention import RETENTION_EVERY_S, apply_tenant_retention
from storage.rollup import MARK_CALL_BUCKETS, MARK_TURN_BUCKETS, MARKS_AT_END, refresh_rollups
from storage.routines import routine_name
from storage.writer import SERVER_SETTINGS, WriteResult, storage_errors

__all__ = ["Deriver", "DeriveBacklog", "read_backlog", "DERIVE_FILES", "DERIVE_STATEMENTS", "DERIVE_ROUTINE",
           "SAFE_CASTS"]

log = logging.getLogger("callscope.deriver")


# The derivation, one file per concern, run in this order (each reads what the ones before wrote): the work
# tables, turns (placement, then rows), tool calls, calls (status), cost (of the call rows just written), events
# (turn links, derived events).
DERIVE_FILES = ("work.sql", "turns.sql", "tool_calls.sql", "calls.sql", "cost.sql", "events.sql")
_DERIVE_DIR = Path(__file__).with_name("derive")


def _load_derive() -> tuple[tuple[str, str], ...]:
    """(name, statement) of every ``-- name:`` block of the derive files, in ``DERIVE_FILES`` order."""
    statements: list[tuple[str, str]] = []
    for name in DERIVE_FILES:
        text = (_DERIVE_DIR / name).read_text(encoding="utf-8")
        parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
        statements.extend((parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2))
    return tuple(statements)


def _with_rollup_marks(statements: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The rollups' dirty buckets are marked before turns and call rows change and again after (storage/rollup.py):
    the buckets a row leaves and the ones it moves to; the minutes of the calls' spans and events at the end,
    from the work tables."""
    marks = ((MARK_TURN_BUCKETS, "turn"), (MARK_CALL_BUCKETS, "call"))
    out: list[tuple[str, str]] = []
    for name, sql in statements:
        if name == "delete_vanished_turns":
            out.extend((f"mark_{kind}_buckets_before", mark) for mark, kind in marks)
        out.append((name, sql))
        if name == "copy_agent_to_turns":
            out.extend((f"mark_{kind}_buckets_after", mark) for mark, kind in marks)
    out.extend(MARKS_AT_END)
    return tuple(out)


DERIVE_STATEMENTS = _with_rollup_marks(_load_derive())

# jsonb text → column types without ever failing: a value the column cannot hold is NULL (its raw attribute
# is kept on the span or event). Plain SQL functions, so the planner inlines them.
SAFE_CASTS = r"""
CREATE OR REPLACE FUNCTION callscope_float(value text) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(value) <= 64
                 AND value ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?\s*$'
           THEN CASE WHEN abs(value::numeric) < 1e300 THEN value::numeric::float8 END END
$$;
CREATE OR REPLACE FUNCTION callscope_int(value text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value ~ '^\s*[-+]?[0-9]{1,18}\s*$'
           THEN CASE WHEN value::bigint BETWEEN -2147483648 AND 2147483647 THEN value::int END END
$$;
CREATE OR REPLACE FUNCTION callscope_int4(value numeric) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value BETWEEN -2147483648 AND 2147483647 THEN value::int END
$$;
CREATE OR REPLACE FUNCTION callscope_bool(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE lower(value) WHEN 'true' THEN true WHEN 'false' THEN false END
$$;
-- epoch microseconds → timestamptz, NULL outside years 1 … 9999
CREATE OR REPLACE FUNCTION callscope_us_ts(value float8) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value > -62135596800e6 AND value < 253402300799e6 THEN to_timestamp(value / 1e6) END
$$;
"""

# Per-connection work tables: the claimed calls' rows, read by every derive statement (no statistics needed:
# they hold the rows of a few calls only).
_WORK_TABLES = """
    CREATE TEMP TABLE IF NOT EXISTS derive_spans (
        call_id text, trace_id text, span_id text, start_time timestamptz, end_time timestamptz,
        parent_span_id text, stage text, status_code smallint, framework text, input_tokens int,
        output_tokens int, facts jsonb, session_attributes jsonb, turn_number int, stored_turn_number int
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS derive_events (
        call_id text, time timestamptz, event_id text, trace_id text, span_id text, event text, level text,
        message text, data jsonb, source text, turn_number int, stored_turn_number int
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS derive_greetings (
        call_id text, time timestamptz, turn_number int, agent_text text
    ) ON COMMIT DELETE ROWS;
    -- who spoke when (collect_speech): one interval per speaking span, side user | agent
    CREATE TEMP TABLE IF NOT EXISTS derive_speech (
        call_id text, turn_number int, side text, s timestamptz, e timestamptz
    ) ON COMMIT DELETE ROWS;
    -- identity lookups into the work tables (store_turn_numbers, store_event_turns)
    CREATE INDEX IF NOT EXISTS derive_spans_identity_idx ON derive_spans (trace_id, span_id, start_time);
    CREATE INDEX IF NOT EXISTS derive_events_identity_idx ON derive_events (event_id, time);
    -- one transaction may derive several call sets (the one-by-one fallback): start empty each time
    DELETE FROM derive_spans;
    DELETE FROM derive_events;
    DELETE FROM derive_greetings;
    DELETE FROM derive_speech;
"""

# All derive statements in one routine: one round trip per claimed set of one tenant. $1: the call ids, $2: their
# tenant (design §9: a call is its tenant and its id).
# Seq scans and JIT are off inside it: fresh tables and chunks have no statistics (autovacuum may be off), and
# every statement must reach the claimed calls' rows through an index whatever the estimates say.
DERIVE_ROUTINE = (
    # use_column: the statements name columns such as "found", which PL/pgSQL also defines as a variable.
    "CREATE OR REPLACE FUNCTION callscope_derive(text[], text) RETURNS void LANGUAGE plpgsql\n"
    "SET enable_seqscan = off SET jit = off SET client_min_messages = warning\nAS $routine$\n"
    "#variable_conflict use_column\nBEGIN\n"
    + _WORK_TABLES
    + "\n".join(f"-- {name}\n{statement.rstrip().rstrip(';')};" for name, statement in DERIVE_STATEMENTS)
    + "\nEND\n$routine$"
)

# Every statement of a derive connection reaches its rows through an index, on tables that may never have been
# analyzed (tests/test_storage_plans.py checks the plans).
_DERIVE_SETTINGS = {**SERVER_SETTINGS, "enable_seqscan": "off", "jit": "off"}

# The per-call lock: the call's slot in derive_locks (65536 rows, one per value of hashtext(call_id) & 65535). A
# slot shared by two calls only means that two workers do not derive them at the same moment; the calls of one
# worker sharing a slot are derived together. Primary-key lookups, whatever the statistics.
_SLOT_MASK = 0xFFFF

_CLAIM_FROM = """
WITH candidates AS (
    SELECT DISTINCT call_id, tenant FROM (
        SELECT call_id, tenant FROM dirty_calls {only} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) marks
), slots AS (
    SELECT l.slot FROM derive_locks l WHERE l.slot IN (SELECT hashtext(call_id) & $2 FROM candidates)
    FOR UPDATE SKIP LOCKED
), mine AS (
    SELECT call_id, tenant FROM candidates WHERE hashtext(call_id) & $2 IN (SELECT slot FROM slots)
), consumed AS (
    DELETE FROM dirty_calls d
    WHERE d.id IN (SELECT m.id FROM dirty_calls m WHERE (m.call_id, m.tenant) IN (SELECT call_id, tenant FROM mine)
                   FOR UPDATE SKIP LOCKED)
    RETURNING d.call_id, d.tenant, d.marked_at
)
SELECT call_id, tenant, min(marked_at) AS marked_at FROM consumed GROUP BY call_id, tenant ORDER BY tenant, call_id
"""
# Any call's marks (the loops), or only those of the calls in $3 (shutdown: the calls this process marked).
_CLAIM = _CLAIM_FROM.format(only="")
_CLAIM_ONLY = _CLAIM_FROM.format(only="WHERE call_id = ANY($3::text[])")
_CALL_DERIVE = f"SELECT {routine_name('callscope_derive')}($1::text[], $2::text)"
# Which of the calls in $1 still have marks (the others were derived, by any collector).
_STILL_MARKED = "SELECT DISTINCT tenant, call_id FROM dirty_calls WHERE call_id = ANY($1::text[])"

_QUARANTINE = """
INSERT INTO call_quarantine AS q (call_id, tenant, error, retry_at)
VALUES ($1, $5, $2, now() + make_interval(secs => $3))
ON CONFLICT (call_id, tenant) DO UPDATE SET
    error = EXCLUDED.error, attempts = q.attempts + 1, last_failed_at = now(),
    retry_at = now() + make_interval(secs => least($4, $3 * power(2, q.attempts)))
RETURNING attempts
"""
_RELEASE = "DELETE FROM call_quarantine WHERE call_id = ANY($1::text[]) AND tenant = $2"
# Quarantined calls whose retry time has come get a mark (and their retry time moves on until they are tried).
_RETRY_DUE = """
WITH due AS (
    UPDATE call_quarantine SET retry_at = now() + make_interval(secs => $2)
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM call_quarantine WHERE retry_at <= now() ORDER BY retry_at LIMIT $1))
    RETURNING call_id, tenant
)
INSERT INTO dirty_calls (call_id, tenant) SELECT call_id, tenant FROM due
"""
_BACKLOG = """
SELECT (SELECT count(DISTINCT call_id) FROM dirty_calls) AS calls,
       (SELECT extract(epoch FROM now() - min(marked_at)) FROM dirty_calls) AS oldest_s,
       (SELECT count(*) FROM call_quarantine) AS quarantined
"""
# design §4: a call with no end and no data for the idle time stays active but is visibly stale.
_MARK_STALE = """
UPDATE calls SET stale = true
WHERE status = 'active' AND NOT stale AND last_seen_at < now() - make_interval(secs => $1)
"""
# The mark queue churns (insert, delete) and autovacuum may be off: its dead rows are reclaimed here.
_VACUUM_QUEUE = "VACUUM (SKIP_LOCKED) dirty_calls, call_quarantine"


@dataclass(frozen=True, slots=True)
class DeriveBacklog:
    """What waits to be derived: calls with marks, the age of the oldest mark, calls in quarantine."""

    calls: int
    oldest_s: float
    quarantined: int


async def read_backlog(connection: asyncpg.Connection) -> DeriveBacklog:
    """The derive backlog of the database (every collector's), as ``callscope doctor`` and the metrics show it."""
    row = await connection.fetchrow(_BACKLOG)
    return DeriveBacklog(calls=row["calls"], oldest_s=float(row["oldest_s"] or 0.0), quarantined=row["quarantined"])


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:500] + "…"


class Deriver:
    """``workers`` derive loops, each on its own connection; ``drain`` derives until nothing is dirty."""

    def __init__(self, database_url: str, *, max_calls: int = 200, idle_s: float = 1.0, timeout: float = 60.0,
                 stale_after_s: float = 300.0, workers: int = 2, retry_base_s: float = 5.0,
                 retry_max_s: float = 600.0, on_derived: Callable[[int], None] | None = None) -> None:
        self._database_url = database_url
        self._max_calls = max_calls
        self._idle_s = idle_s
        self._timeout = timeout
        self._stale_after_s = stale_after_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._on_derived = on_derived
        self._workers = [_Worker(self, index) for index in range(max(1, workers))]
        # drain, backlog and the other calls from outside the loops have a connection of their own: an asyncpg
        # connection runs one operation at a time, and the loops keep theirs busy
        self._control = _Worker(self, -1)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._housekeeping_at = 0.0
        self._backlog_at = 0.0
        self._rollups_at = 0.0
        self._retention_at = 0.0
        # Calls ((tenant, call id)) this process's batches marked and that may not be derived yet, with the
        # generation of the last batch that marked them: a round forgets a call only when no batch marked it after
        # the round began.
        self._owed: dict[tuple[str, str], int] = {}
        self._generation = 0
        # refreshed every few seconds by a worker, so that readers (metrics) never wait for the database
        self.last_backlog = DeriveBacklog(calls=0, oldest_s=0.0, quarantined=0)
        self.derived_total = 0

    def notify(self, result: WriteResult | None = None) -> None:
        """A batch marked calls dirty: derive soon (called by the writer after COMMIT, with what it wrote)."""
        if result is not None and result.touched:
            self._generation += 1
            for call in result.touched:
                self._owed[call] = self._generation
        self._wakeup.set()

    @property
    def owed_calls(self) -> int:
        """Calls this process's batches marked that no derive round of this process has consumed since."""
        return len(self._owed)

    def _forget(self, calls: list[tuple[str, str]], generation: int) -> None:
        """``calls`` ((tenant, call id)) were derived by a round that began at ``generation``: they are owed no
        longer, unless a batch marked them again since."""
        owed = self._owed
        for call in calls:
            if owed.get(call, generation + 1) <= generation:
                del owed[call]

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(worker.run(), name=f"callscope-deriver-{worker.index}")
                       for worker in self._workers]

    async def drain(self) -> None:
        """Derive until no call is dirty (quarantined calls whose retry is due included)."""
        await self._control.housekeeping(force=True)
        while True:
            derived = await self._control.round()
            if not derived:
                backlog = await self.backlog()
                if backlog.calls == 0:
                    await self._control.refresh_rollups(force=True)
                    return
                await asyncio.sleep(0.05)   # marks held by another worker or collector: wait for them

    async def backlog(self) -> DeriveBacklog:
        self.last_backlog = await self._control.backlog()
        return self.last_backlog

    async def mark_stale(self) -> None:
        """Flag active calls silent for longer than ``stale_after_s``."""
        await self._control.mark_stale()

    def _derived(self, calls: int) -> None:
        self.derived_total += calls
        if self._on_derived is not None:
            self._on_derived(calls)

    async def close(self, timeout: float | None = None) -> None:
        """Stop within ``timeout`` s (default ``timeout`` of the constructor), whatever other collectors do.

        No new claims; a round in progress finishes (its claimed calls are derived); then the calls this process
        marked are derived, skipping marks another worker holds. When the time is up, what runs is rolled back
        (its marks come back) and stays in ``dirty_calls`` for any other collector, or the next start.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeout if timeout is None else max(0.0, timeout))

        def left() -> float:
            return max(0.0, deadline - loop.time())

        self._closing = True
        self._wakeup.set()
        if self._tasks:
            for worker, task in zip(self._workers, self._tasks):
                if not worker.busy:     # waiting for work: nothing claimed, stop it at once
                    task.cancel()
            _, unfinished = await asyncio.wait(self._tasks, timeout=left())
            for worker, task in zip(self._workers, self._tasks):
                if task in unfinished:
                    task.cancel()
                    worker.terminate()     # the server rolls the round back: its marks are claimable again
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if unfinished:
                log.warning("derive.round_abandoned", extra={"workers": len(unfinished)})
            self._tasks = []
        try:
            await asyncio.wait_for(self._drain_own(), left())
        except asyncio.TimeoutError:
            self._control.terminate()
            log.warning("derive.shutdown_deadline", extra={"owed_calls": len(self._owed)})
        except Exception as exc:  # marks stay in dirty_calls: any collector derives them later
            log.warning("derive.drain_failed", extra={"error": _short(exc), "owed_calls": len(self._owed)})
        for worker in (*self._workers, self._control):
            try:
                await asyncio.wait_for(worker.close(), max(left(), 0.5))
            except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                worker.terminate()

    async def _drain_own(self) -> None:
        """Derive the calls this process marked until none is claimable (held marks belong to other workers),
        then forget those that have no mark left (derived meanwhile, by any collector)."""
        while self._owed and await self._control.round(only=sorted({call_id for _, call_id in self._owed})):
            pass
        if self._owed:
            await self._control.prune_owed()

    async def prune_owed(self) -> None:
        """Forget owed calls that have no mark any more (another collector derived them)."""
        if self._owed:
            await self._control.prune_owed()

    def terminate(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for worker in (*self._workers, self._control):
            worker.terminate()


class _Worker:
    def __init__(self, deriver: Deriver, index: int) -> None:
        self.index = index
        self.busy = False          # inside round(): it may hold claimed calls
        self._deriver = deriver
        self._connection: asyncpg.Connection | None = None

    async def _connect(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self._deriver._database_url, timeout=self._deriver._timeout,
                                                     server_settings=_DERIVE_SETTINGS)
        return self._connection

    def _reset(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            self._connection.terminate()
        self._connection = None

    async def round(self, *, only: list[str] | None = None) -> int:
        """Claim up to ``max_calls`` calls (any, or among ``only``) and derive them; return how many were claimed."""
        deriver = self._deriver
        generation = deriver._generation
        self.busy = True
        try:
            async with storage_errors():
                connection = await self._connect()
                async with connection.transaction():
                    # a derivation that runs away (or waits on a lock) fails alone; its calls are quarantined
                    await connection.execute(
                        f"SET LOCAL statement_timeout = {int(deriver._timeout * 1000)}")
                    if only is None:
                        claimed = await connection.fetch(_CLAIM, deriver._max_calls, _SLOT_MASK)
                    else:
                        claimed = await connection.fetch(_CLAIM_ONLY, deriver._max_calls, _SLOT_MASK, only)
                    calls = [(row["tenant"], row["call_id"]) for row in claimed]
                    # one derive call per tenant (the claim is ordered by tenant)
                    by_tenant: dict[str, list[str]] = {}
                    for tenant, call_id in calls:
                        by_tenant.setdefault(tenant, []).append(call_id)
                    for tenant, call_ids in by_tenant.items():
                        failed = await self._derive_isolating(connection, tenant, call_ids)
                        await self._settle_quarantine(connection, tenant, call_ids, failed)
        except BaseException:
            if self._connection is not None and self._connection.is_in_transaction():
                self._reset()
            raise
        finally:
            self.busy = False
        if calls:
            deriver._forget(calls, generation)
            deriver._derived(len(calls))
        return len(calls)

    async def prune_owed(self) -> None:
        deriver = self._deriver
        generation = deriver._generation
        owed = list(deriver._owed)
        async with storage_errors():
            connection = await self._connect()
            marked = {(row["tenant"], row["call_id"])
                      for row in await connection.fetch(_STILL_MARKED, sorted({c for _, c in owed}))}
        deriver._forget([call for call in owed if call not in marked], generation)

    async def _derive_isolating(self, connection: asyncpg.Connection, tenant: str,
                                call_ids: list[str]) -> dict[str, str]:
        """Derive the calls (of ``tenant``) together; if that fails, one by one. Return the calls that failed, with
        why."""
        try:
            async with connection.transaction():
                await connection.execute(_CALL_DERIVE, call_ids, tenant)
            return {}
        except asyncpg.PostgresError as exc:
            if len(call_ids) == 1:
                return {call_ids[0]: _short(exc)}
            log.warning("derive.isolating", extra={"calls": len(call_ids), "error": _short(exc)})
        failed: dict[str, str] = {}
        for call_id in call_ids:
            try:
                async with connection.transaction():
                    await connection.execute(_CALL_DERIVE, [call_id], tenant)
            except asyncpg.PostgresError as exc:
                failed[call_id] = _short(exc)
        return failed

    async def _settle_quarantine(self, connection: asyncpg.Connection, tenant: str, call_ids: list[str],
                                 failed: dict[str, str]) -> None:
        deriver = self._deriver
        for call_id, error in failed.items():
            attempts = await connection.fetchval(_QUARANTINE, call_id, error, deriver._retry_base_s,
                                                 deriver._retry_max_s, tenant)
            log.error("derive.call_quarantined", extra={"call_id": call_id[:200], "tenant": tenant,
                                                        "attempts": attempts, "error": error})
        await connection.execute(_RELEASE, [call_id for call_id in call_ids if call_id not in failed], tenant)

    async def backlog(self) -> DeriveBacklog:
        async with storage_errors():
            connection = await self._connect()
            return await read_backlog(connection)

    async def refresh_rollups(self, *, force: bool = False) -> None:
        """Recompute the rollup buckets derivation marked, every 30 s: a minute still filling up is recomputed by
        every refresh that finds it marked, and the panels read raw turns for the last 24 h anyway (the
        rollups serve longer ranges, where 30 s do not show)."""
        deriver = self._deriver
        now = time.monotonic()
        if not force and now - deriver._rollups_at < 30.0:
            return
        deriver._rollups_at = now
        async with storage_errors():
            connection = await self._connect()
            while await refresh_rollups(connection, 1000) >= 1000:
                pass

    async def refresh_backlog(self) -> None:
        deriver = self._deriver
        now = time.monotonic()
        if now - deriver._backlog_at >= 2.0:
            deriver._backlog_at = now
            deriver.last_backlog = await self.backlog()

    async def mark_stale(self) -> None:
        async with storage_errors():
            connection = await self._connect()
            await connection.execute(_MARK_STALE, float(self._deriver._stale_after_s))

    async def housekeeping(self, *, force: bool = False) -> None:
        """Every few seconds (one worker does it): retries that are due, stale calls, per-tenant retention (every
        RETENTION_EVERY_S), the mark queue's dead rows."""
        deriver = self._deriver
        now = time.monotonic()
        if not force and now - deriver._housekeeping_at < min(30.0, deriver._stale_after_s / 4):
            return
        deriver._housekeeping_at = now
        async with storage_errors():
            connection = await self._connect()
            await connection.execute(_RETRY_DUE, 1000, deriver._retry_max_s)
        await self.mark_stale()
        if force or now - deriver._retention_at >= RETENTION_EVERY_S:
            # per-tenant retention (storage/retention.py): only tenants with retention_days set lose rows
            deriver._retention_at = now
            async with storage_errors():
                for result in await apply_tenant_retention(connection):
                    if result.calls or result.spans or result.events:
                        log.info("retention.applied", extra={"tenant": result.tenant, "calls": result.calls,
                                                             "spans": result.spans, "events": result.events})
        async with storage_errors():
            await connection.execute(_VACUUM_QUEUE)
        if deriver._owed:
            await self.prune_owed()

    async def run(self) -> None:
        deriver = self._deriver
        backoff = 0.5
        while not deriver._closing:
            try:
                await asyncio.wait_for(deriver._wakeup.wait(), deriver._idle_s * 5)
            except asyncio.TimeoutError:
                pass
            # Let a few batches accumulate: deriving a call once per many batches is the point.
            await asyncio.sleep(deriver._idle_s)
            deriver._wakeup.clear()
            try:
                while not deriver._closing and await self.round() >= deriver._max_calls // 2:
                    pass
                if deriver._closing:
                    return
                await self.housekeeping()
                await self.refresh_rollups()
                await self.refresh_backlog()
                backoff = 0.5
            except (StorageUnavailable, OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                # the database may be down: the marks stay, try again later
                log.warning("derive.failed", extra={"worker": self.index, "error": _short(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # a bug must not end derivation for good
                log.exception("derive.crashed", extra={"worker": self.index})
                self._reset()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close(timeout=5)
        self._connection = None

    def terminate(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
        self._connection = None
