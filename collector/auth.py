"""Receiver authentication: ``Authorization: Bearer <key>`` (gRPC metadata or HTTP header) → the key's tenant.

Keys are checked against an in-memory copy of ``api_keys`` (storage/keys.py), never with a database round trip
per request. The copy is reloaded every ``auth_refresh_s``, so a revoked key is refused within that time on
every collector, and a key nobody has seen yet triggers one early reload, shared by all requests and at most
one per second whatever the request rate: a key works as soon as it is created (its first request may wait up
to a second), and random keys cannot load the database. The
digest of the presented key is compared with ``hmac.compare_digest``, and a key whose id is unknown is
compared with a dummy digest, so the time taken does not depend on how much of a key is right.

With ``auth = off`` every request is accepted for tenant ``default`` and a warning is logged at start.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from collector.errors import Unauthenticated
from collector.logs import ThrottledLog
from storage.keys import key_digest, key_id, load_keys, touch_keys

__all__ = ["Authenticator", "DEFAULT_TENANT", "AUTH_MODES", "MISSING_KEY"]

log = logging.getLogger("callscope.auth")
DEFAULT_TENANT = "default"
AUTH_MODES = ("required", "off")
_EARLY_RELOAD_S = 1.0
_DUMMY = key_digest("callscope: no such key")
MISSING_KEY = ("missing API key: send the header 'Authorization: Bearer <key>' (OTel SDKs: "
               "OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<key>); create one with "
               "`callscope keys create --tenant default`")


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    tenant: str
    revoked_at: datetime | None


class Authenticator:
    def __init__(self, database_url: str, *, required: bool = True, refresh_s: float = 5.0,
                 timeout_s: float = 5.0) -> None:
        self.required = required
        self._database_url = database_url
        self._refresh_s = refresh_s
        self._timeout = timeout_s
        self._keys: dict[str, _Entry] = {}
        self._used: set[str] = set()
        self._loaded_at = -1e18
        self._reload: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._failed_log = ThrottledLog(log, "auth.keys_not_reloaded", interval_s=60.0)
        self.reloads = 0   # reads of api_keys, ever (a test watches that requests do not cause them)

    @property
    def active_keys(self) -> int:
        return sum(1 for entry in self._keys.values() if entry.revoked_at is None)

    async def start(self) -> None:
        if not self.required:
            log.warning("auth.off", extra={"note": "auth = off: every request is accepted and stored for tenant "
                                                   "'default'; set auth = required and give clients API keys "
                                                   "before this collector is reachable by anyone else"})
            return
        await self._load()   # at start a failure is fatal: nobody could write
        self._loop_task = asyncio.create_task(self._refresh_loop(), name="callscope-auth-refresh")
        log.info("auth.required", extra={"active_keys": self.active_keys, "refresh_s": self._refresh_s})

    async def close(self) -> None:
        for task in (self._loop_task, self._reload):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._used:
            try:
                await self._touch()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                pass

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._database_url, timeout=self._timeout)

    async def _load(self) -> None:
        connection = await self._connect()
        try:
            rows = await load_keys(connection)
            if self._used:
                used, self._used = sorted(self._used), set()
                await touch_keys(connection, used)
        finally:
            await connection.close()
        self._keys = {id: _Entry(digest, tenant, revoked_at) for id, digest, tenant, revoked_at in rows}
        self._loaded_at = time.monotonic()
        self.reloads += 1

    async def _touch(self) -> None:
        connection = await self._connect()
        try:
            used, self._used = sorted(self._used), set()
            await touch_keys(connection, used)
        finally:
            await connection.close()

    async def _reload_safely(self) -> None:
        try:
            await self._load()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
            # Keep serving with the keys known so far; revocations wait for the database to come back.
            self._failed_log.add(error=f"{type(exc).__name__}: {exc}")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self._reload_now()

    async def _reload_now(self, delay_s: float = 0.0) -> None:
        """One reload (after ``delay_s``), shared by everyone who asks before it is done."""
        if self._reload is None or self._reload.done():
            self._reload = asyncio.create_task(self._reload_after(delay_s))
        await asyncio.shield(self._reload)

    async def _reload_after(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await self._reload_safely()

    async def tenant_of(self, authorization: str | None) -> str:
        """The tenant of the request's key; ``Unauthenticated`` (nothing is stored) when there is none."""
        if not self.required:
            return DEFAULT_TENANT
        if not authorization:
            raise Unauthenticated(MISSING_KEY)
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
        id = key_id(key)
        entry = self._keys.get(id)
        if entry is None:   # perhaps created since the last reload: reload, at most once a second
            await self._reload_now(max(0.0, _EARLY_RELOAD_S - (time.monotonic() - self._loaded_at)))
            entry = self._keys.get(id)
        matches = hmac.compare_digest(entry.digest if entry is not None else _DUMMY, key_digest(key))
        if entry is None or not matches:
            raise Unauthenticated(f"unknown API key (id {id}): check the key, or create one with "
                                  f"`callscope keys create --tenant NAME`")
        if entry.revoked_at is not None:
            raise Unauthenticated(f"API key {id} was revoked at {entry.revoked_at:%Y-%m-%d %H:%M:%S %Z}; "
                                  f"use a current key")
        self._used.add(id)
        return entry.tenant
