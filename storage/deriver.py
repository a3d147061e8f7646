"""Derive stage: recompute turns, calls and links for the calls in ``dirty_calls`` (storage/derive.sql, run as
the ``callscope_derive`` routine that ``migrate`` installs).

Runs beside the writer on its own connection, so PostgreSQL derives one batch while the next is written.
Each round claims up to ``max_marks`` marks (``FOR UPDATE SKIP LOCKED``), recomputes their calls and deletes
the marks in one transaction: a failure leaves the marks for the next round, and a call marked again while
it is being derived keeps its new mark, so it is derived again. Rounds of several collectors on one
database are serialized by an advisory lock. ``drain`` runs rounds until nothing is dirty.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Callable

import asyncpg

from storage.errors import StorageRejected
from storage.writer import SERVER_SETTINGS, storage_errors

__all__ = ["Deriver", "DERIVE_STATEMENTS", "DERIVE_ROUTINE"]

log = logging.getLogger("callscope.deriver")


def _load_derive() -> tuple[tuple[str, str], ...]:
    text = Path(__file__).with_name("derive.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return tuple((parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2))


DERIVE_STATEMENTS = _load_derive()

# All derive statements in one routine: one round trip per derive round. $1 is the routine's argument.
DERIVE_ROUTINE = (
    # use_column: the statements name columns such as "found", which PL/pgSQL also defines as a variable.
    "CREATE OR REPLACE FUNCTION callscope_derive(text[]) RETURNS void LANGUAGE plpgsql AS $routine$\n"
    "#variable_conflict use_column\nBEGIN\n"
    + "\n".join(f"-- {name}\n{statement.rstrip().rstrip(';')};" for name, statement in DERIVE_STATEMENTS)
    + "\nEND\n$routine$"
)

_CLAIM = """
WITH claimed AS (SELECT id FROM dirty_calls ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
DELETE FROM dirty_calls d USING claimed WHERE d.id = claimed.id
RETURNING d.call_id
"""
_CLAIM_CALL = "DELETE FROM dirty_calls WHERE call_id = $1 RETURNING call_id"
_PENDING_CALLS = "SELECT DISTINCT call_id FROM (SELECT call_id FROM dirty_calls ORDER BY id LIMIT $1) first_marks"
_ONE_DERIVER = "SELECT pg_advisory_xact_lock(7063720869421651557)"
# design §4: a call with no end and no data for the idle time stays active but is visibly stale.
_MARK_STALE = """
UPDATE calls SET stale = true
WHERE status = 'active' AND NOT stale AND last_seen_at < now() - make_interval(secs => $1)
"""


class Deriver:
    def __init__(self, database_url: str, *, max_marks: int = 2000, idle_s: float = 1.0,
                 timeout: float = 60.0, stale_after_s: float = 300.0,
                 on_derived: Callable[[int], None] | None = None) -> None:
        self._on_derived = on_derived
        self._stale_after_s = stale_after_s
        self._stale_checked = 0.0
        self._database_url = database_url
        self._max_marks = max_marks
        self._idle_s = idle_s
        self._timeout = timeout
        self._connection: asyncpg.Connection | None = None
        self._wakeup = asyncio.Event()
        self._round = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """A batch marked calls dirty: derive soon (called by the writer after COMMIT)."""
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callscope-deriver")

    async def _connect(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self._database_url, timeout=self._timeout,
                                                     server_settings=SERVER_SETTINGS)
        return self._connection

    async def derive_round(self) -> int:
        """Recompute the calls of up to ``max_marks`` marks; return how many marks were consumed."""
        async with self._round:
            try:
                return await self._derive(None)
            except StorageRejected as exc:
                # One call's data cannot be derived (e.g. a value out of a column's range): derive the calls
                # one by one so that only that call is skipped and the others are not blocked forever.
                log.warning("derive.isolating", extra={"error": str(exc)})
                return await self._derive_one_by_one()

    async def _derive(self, only: str | None) -> int:
        async with storage_errors():
            connection = await self._connect()
            try:
                async with connection.transaction():
                    await connection.execute(_ONE_DERIVER)
                    if only is None:
                        rows = await connection.fetch(_CLAIM, self._max_marks)
                    else:
                        rows = await connection.fetch(_CLAIM_CALL, only)
                    call_ids = sorted({row["call_id"] for row in rows})
                    if call_ids:
                        await connection.execute("SELECT callscope_derive($1::text[])", call_ids,
                                                 timeout=self._timeout)
            except BaseException:
                if self._connection is not None and not self._connection.is_closed():
                    if self._connection.is_in_transaction():
                        self._connection.terminate()
                        self._connection = None
                raise
        if self._on_derived is not None:
            self._on_derived(len(call_ids))
        return len(rows)

    async def _derive_one_by_one(self) -> int:
        async with storage_errors():
            connection = await self._connect()
            call_ids = [row["call_id"] for row in await connection.fetch(_PENDING_CALLS, self._max_marks)]
        consumed = 0
        for call_id in call_ids:
            try:
                consumed += await self._derive(call_id)
            except StorageRejected as exc:
                log.error("derive.call_skipped", extra={"call_id": call_id, "error": str(exc)})
                async with storage_errors():
                    connection = await self._connect()
                    status = await connection.execute("DELETE FROM dirty_calls WHERE call_id = $1", call_id)
                consumed += int(status.split()[-1])
        return consumed


    async def _mark_stale_now_and_then(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._stale_checked >= min(30.0, self._stale_after_s / 4):
            self._stale_checked = now
            await self.mark_stale()

    async def mark_stale(self) -> None:
        """Flag active calls silent for longer than ``stale_after_s``."""
        async with self._round:
            async with storage_errors():
                connection = await self._connect()
                await connection.execute(_MARK_STALE, float(self._stale_after_s))

    async def drain(self) -> None:
        """Derive until no call is dirty (the marks of committed batches are all processed)."""
        while await self.derive_round():
            pass

    async def _run(self) -> None:
        backoff = 0.5
        while not self._closing:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._idle_s * 5)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            # Let a few batches accumulate: deriving a call once per many batches is the point.
            await asyncio.sleep(self._idle_s)
            try:
                while not self._closing and await self.derive_round() == self._max_marks:
                    pass
                await self._mark_stale_now_and_then()
                backoff = 0.5
            except Exception as exc:  # the database may be down: keep the marks, try again later
                log.warning("derive.failed", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def close(self) -> None:
        """Stop the loop, then derive whatever is still dirty."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await self.drain()
        except Exception as exc:  # marks stay in dirty_calls: the next start derives them
            log.warning("derive.drain_failed", extra={"error": str(exc)})
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close(timeout=5)
        self._connection = None

    def terminate(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._connection is not None:
            self._connection.terminate()
        self._connection = None
