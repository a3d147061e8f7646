"""The collector's lifecycle: check the schema → writer + deriver → batcher → gRPC + HTTP receivers; bounded stop.

API keys are loaded after the schema check (collector/auth.py), before the receivers open; TLS files are read
when the collector is built, so a bad certificate fails at once with its file named.

``serve`` never changes the schema or the routines (``callscope migrate`` does): it checks that the database is
at a revision this release runs on and refuses to start otherwise (storage/migrate.py ``check_schema``). The
telephony rates of its price table are written only when they differ from the stored ones.

Stop order follows the data, within ``shutdown_timeout_s`` whatever other collectors do: stop accepting
(receivers), flush what was accepted (batcher), close the writer, finish the claimed calls and derive the calls
this process marked (deriver). What the deadline cuts off was not acknowledged (batches) or stays marked for
any other collector (derivation).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from collector.auth import Authenticator
from collector.batcher import Batcher
from collector.cost import PriceTable
from collector.health import DatabaseHealth
from collector.items import ItemLimits
from collector.otlp.grpc import GrpcReceiver
from collector.otlp.http import HttpReceiver
from collector.otlp.ingest import Ingest
from collector.settings import Settings
from collector.telemetry import Metrics
from collector.tls import ServerTls
from storage.migrate import check_schema, migrate, store_telephony_rates
from storage.deriver import Deriver
from storage.writer import WriterPool

__all__ = ["Collector", "serve"]

log = logging.getLogger("callscope.collector")


class Collector:
    """All running parts of ``callscope serve``; ``async with Collector(settings)`` in tests.

    ``run_migrations``: migrate before starting (for tools that own their database); ``serve`` never does.
    """

    def __init__(self, settings: Settings, *, run_migrations: bool = False) -> None:
        self.settings = settings
        self._run_migrations = run_migrations
        # The one price table of this collector (ValueError when prices_file cannot be read): every span's
        # cost and the telephony rates the derivation reads come from it.
        self.prices = PriceTable.load(settings.prices_file or None)
        self.metrics = Metrics()
        self.deriver = Deriver(settings.database_url, timeout=settings.derive_timeout_s,
                               workers=settings.derive_workers, max_calls=settings.derive_batch_calls,
                               stale_after_s=settings.idle_timeout_s, idle_s=settings.derive_interval_ms / 1000,
                               on_derived=self.metrics.count_derived)
        self.writer = WriterPool(settings.database_url, size=settings.writer_connections,
                                 timeout=settings.write_timeout_s, on_commit=self.deriver.notify)
        self.batcher = Batcher(self.writer, max_batch_records=settings.max_batch_records,
                               max_wait_ms=settings.max_wait_ms, queue_records=settings.queue_records,
                               queue_bytes=settings.queue_bytes, retry_after_s=settings.retry_after_s,
                               writers=settings.writer_connections, metrics=self.metrics)
        limits = ItemLimits(max_attributes=settings.max_attributes, max_value_length=settings.max_value_length,
                            max_value_depth=settings.max_value_depth, max_id_length=settings.max_id_length,
                            max_json_depth=settings.max_json_depth)
        self.tls = ServerTls.from_settings(settings)
        self.authenticator = Authenticator(settings.database_url, required=settings.auth_required,
                                           refresh_s=settings.auth_refresh_s)
        self.ingest = Ingest(self.batcher, prices=self.prices, limits=limits, metrics=self.metrics,
                             max_concurrent_requests=settings.max_concurrent_requests,
                             retry_after_s=settings.retry_after_s, authenticator=self.authenticator,
                             privacy=settings.pii_policy())
        self.health = DatabaseHealth(settings.database_url, self.batcher,
                                     probe_interval_s=settings.health_probe_interval_s)
        # Numbers only storage/ knows reach the metrics through callbacks (storage never imports collector/):
        # derived calls through on_derived above, the derive backlog from the snapshot the deriver refreshes.
        for name, help_text, read in (
            ("callscope_derive_backlog_calls", "Calls with writes not derived yet (all collectors on the database).",
             lambda: self.deriver.last_backlog.calls),
            ("callscope_derive_backlog_oldest_seconds", "Age of the oldest underived write: the derivation lag.",
             lambda: self.deriver.last_backlog.oldest_s),
            ("callscope_quarantined_calls", "Calls whose derivation failed and waits for a retry (call_quarantine).",
             lambda: self.deriver.last_backlog.quarantined),
        ):
            self.metrics.register_gauge_callback(name, help_text, read)
        self.grpc: GrpcReceiver | None = None
        self.http: HttpReceiver | None = None

    async def _check_database(self, prices: PriceTable) -> None:
        """Refuse a database this release does not run on (``SchemaMismatch``), then store the price table's
        telephony rates (read by storage/derive/calls.sql) if they differ from the stored ones."""
        connection = await asyncpg.connect(self.settings.database_url, timeout=10)
        try:
            state = await check_schema(connection)
            if state.newer:
                log.warning("schema.newer", extra={
                    "revision": state.revision, "head": state.head, "routine_versions": list(state.routine_versions),
                    "note": "migrated by a newer release that kept this release's routines: upgrade this collector"})
            changed = await store_telephony_rates(connection, prices.telephony_rows(), prices.version)
        finally:
            await connection.close()
        log.info("prices.loaded", extra={"version": prices.version, "source": prices.source,
                                         "telephony_rates_written": changed})

    async def start(self) -> None:
        settings = self.settings
        if self._run_migrations:
            await migrate(settings.database_url, retention_days=settings.retention_days,
                          compress_after_days=settings.compress_after_days,
                          reader_connection_limit=settings.reader_connection_limit)
        await self._check_database(self.prices)
        await self.writer.start()
        await self.deriver.start()
        await self.batcher.start()
        await self.authenticator.start()
        self.grpc = GrpcReceiver(self.ingest, host=settings.bind_address, port=settings.grpc_port,
                                 max_message_bytes=settings.max_message_bytes,
                                 max_concurrent_requests=settings.max_concurrent_requests, tls=self.tls)
        self.http = HttpReceiver(self.ingest, host=settings.bind_address, port=settings.http_port,
                                 max_message_bytes=settings.max_message_bytes, health=self.health.check,
                                 tls=self.tls)
        await self.grpc.start()
        try:
            await self.http.start()
        except BaseException:
            await self.grpc.stop(0)
            raise
        log.info("receiver.started", extra={"grpc_port": self.grpc.port, "http_port": self.http.port,
                                            "bind_address": settings.bind_address, "auth": settings.auth,
                                            "tls": "mutual" if self.tls is not None and self.tls.mutual else
                                            "on" if self.tls is not None else "off",
                                            "pii": {k: v for k, v in self.ingest.privacy.actions.items()
                                                    if v != "keep"}})

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting, flush what was accepted (in-flight Exports get their answer), finish the claimed and
        own calls' derivation, close the database; all within ``shutdown_timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout_s

        def left() -> float:
            return max(0.0, deadline - loop.time())

        cut_short: list[str] = []
        stopping = [receiver.stop(min(grace_s, left())) for receiver in (self.grpc, self.http) if receiver is not None]
        receivers = asyncio.ensure_future(asyncio.gather(*stopping))
        await asyncio.sleep(0)  # the receivers refuse new calls from here on
        # Flush now rather than after the receivers stop: in-flight Exports wait for their batch's
        # commit, and waiting for its age timer could outlast the grace period.
        flushing = asyncio.ensure_future(self.batcher.close())
        try:
            await asyncio.wait_for(asyncio.shield(flushing), left())
        except asyncio.TimeoutError:
            # The database does not commit in time: the waiting Exports fail (UNAVAILABLE, never acknowledged;
            # clients retry them at another collector) and the connections go.
            cut_short.append(f"{self.batcher.queued_records} records not committed")
            self.batcher.terminate()
            self.writer.terminate()
            await asyncio.wait([flushing], timeout=1.0)
            if flushing.done() and not flushing.cancelled():
                flushing.exception()   # retrieved: the batches were failed on purpose
        try:
            await asyncio.wait_for(receivers, max(left(), 0.5))
        except asyncio.TimeoutError:
            cut_short.append("receivers")
        try:   # the keys' last use, written once more
            await asyncio.wait_for(self.authenticator.close(), max(left(), 0.5))
        except asyncio.TimeoutError:
            cut_short.append("api key last use")
        try:
            await asyncio.wait_for(self.writer.close(), max(left(), 0.5))
        except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self.writer.terminate()
        owed = self.deriver.owed_calls
        await self.deriver.close(timeout=left())
        if self.deriver.owed_calls:
            cut_short.append(f"{self.deriver.owed_calls} of {owed} own calls left to derive to other collectors")
        if cut_short:
            log.warning("collector.shutdown_deadline", extra={"shutdown_timeout_s": self.settings.shutdown_timeout_s,
                                                              "cut_short": cut_short})
        log.info("collector.stopped", extra=self.metrics.snapshot())

    async def settle(self) -> None:
        """Wait until every accepted record is committed and every touched call is derived."""
        await self.batcher.flush()
        await self.deriver.drain()

    async def __aenter__(self) -> "Collector":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM / SIGINT (or ``stop`` is set), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    collector = Collector(settings)
    await collector.start()
    try:
        await stop.wait()
        log.info("collector.stopping", extra={"queued_records": collector.batcher.queued_records})
    finally:
        await collector.close()
