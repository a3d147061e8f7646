"""``GET /health``: answered from the collector's own state, not with a database connection per request.

A batch committed within the last ``probe_interval_s`` (and no failure since) proves the database works.
Otherwise one probe connection is opened, at most once per ``probe_interval_s`` whatever the request rate
(concurrent requests wait for the same probe), and its answer is cached. A load balancer polling every 100 ms
from ten replicas therefore costs the database nothing while data flows, and one short connection every few
seconds while it does not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import asyncpg

__all__ = ["DatabaseHealth"]


class _CommitClock(Protocol):
    last_commit_at: float | None
    last_failure_at: float | None


class DatabaseHealth:
    def __init__(self, database_url: str, commits: _CommitClock, *, probe_interval_s: float = 5.0,
                 timeout_s: float = 2.0) -> None:
        self._database_url = database_url
        self._commits = commits
        self._interval = probe_interval_s
        self._timeout = timeout_s
        self._probe_lock = asyncio.Lock()
        self._probed_at: float | None = None
        self._probe_ok = False
        self.probes = 0   # database connections opened for health, ever (a test watches it)

    def _recent_commit(self, now: float) -> float | None:
        committed, failed = self._commits.last_commit_at, self._commits.last_failure_at
        if committed is None or now - committed >= self._interval:
            return None
        if failed is not None and failed > committed:
            return None
        return now - committed

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details for the response body)."""
        now = time.monotonic()
        age = self._recent_commit(now)
        if age is not None:
            return True, {"last_commit_s_ago": round(age, 3)}
        async with self._probe_lock:   # one probe at a time; the others read its answer
            now = time.monotonic()
            if self._probed_at is None or now - self._probed_at >= self._interval:
                self._probe_ok = await self._probe()
                self._probed_at = time.monotonic()
            return self._probe_ok, {"database_checked_s_ago": round(time.monotonic() - self._probed_at, 3)}

    async def _probe(self) -> bool:
        self.probes += 1
        try:
            connection = await asyncpg.connect(self._database_url, timeout=self._timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
            return False
        try:
            await connection.fetchval("SELECT 1", timeout=self._timeout)
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
            return False
        finally:
            try:
                await connection.close(timeout=self._timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                connection.terminate()
