"""The collector's lifecycle: migrate → writer + deriver → batcher → gRPC + HTTP receivers; graceful stop.

Stop order follows the data: stop accepting (receivers), flush what was accepted (batcher), close the writer,
derive what is still dirty (deriver).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from collector.batcher import Batcher
from collector.cost import PriceTable
from collector.health import DatabaseHealth
from collector.items import ItemLimits
from collector.otlp.grpc import GrpcReceiver
from collector.otlp.http import HttpReceiver
from collector.otlp.ingest import Ingest
from collector.settings import Settings
from collector.telemetry import Metrics
from storage.migrate import migrate
from storage.deriver import Deriver
from storage.writer import WriterPool

__all__ = ["Collector", "serve"]

log = logging.getLogger("callscope.collector")


class Collector:
    """All running parts of ``callscope serve``; ``async with Collector(settings)`` in tests."""

    def __init__(self, settings: Settings, *, run_migrations: bool = True) -> None:
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
        self.ingest = Ingest(self.batcher, prices=self.prices, limits=limits, metrics=self.metrics,
                             max_concurrent_requests=settings.max_concurrent_requests,
                             retry_after_s=settings.retry_after_s)
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

    async def _store_telephony_rates(self, prices: PriceTable) -> None:
        """Replace the ``telephony_rates`` rows (read by storage/derive/calls.sql) with the loaded price table's."""
        try:
            connection = await asyncpg.connect(self.settings.database_url, timeout=10)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            log.warning("prices.not_stored", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        try:
            async with connection.transaction():
                await connection.execute("DELETE FROM telephony_rates")
                await connection.executemany(
                    "INSERT INTO telephony_rates (direction, per_minute, currency, price_version) "
                    "VALUES ($1, $2, $3, $4)",
                    [(*row, prices.version) for row in prices.telephony_rows()])
        except asyncpg.PostgresError as exc:   # e.g. a database not migrated to 0003 yet
            log.warning("prices.not_stored", extra={"error": f"{type(exc).__name__}: {exc}"})
        finally:
            await connection.close()
        log.info("prices.loaded", extra={"version": prices.version, "source": prices.source})

    async def start(self) -> None:
        settings = self.settings
        if self._run_migrations:
            await migrate(settings.database_url, retention_days=settings.retention_days,
                          compress_after_days=settings.compress_after_days)
        await self._store_telephony_rates(self.prices)
        await self.writer.start()
        await self.deriver.start()
        await self.batcher.start()
        self.grpc = GrpcReceiver(self.ingest, host=settings.bind_address, port=settings.grpc_port,
                                 max_message_bytes=settings.max_message_bytes,
                                 max_concurrent_requests=settings.max_concurrent_requests)
        self.http = HttpReceiver(self.ingest, host=settings.bind_address, port=settings.http_port,
                                 max_message_bytes=settings.max_message_bytes, health=self.health.check)
        await self.grpc.start()
        try:
            await self.http.start()
        except BaseException:
            await self.grpc.stop(0)
            raise
        log.info("receiver.started", extra={"grpc_port": self.grpc.port, "http_port": self.http.port,
                                            "bind_address": settings.bind_address})

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting, flush what was accepted (in-flight Exports get their answer), close the database."""
        stopping = [receiver.stop(grace_s) for receiver in (self.grpc, self.http) if receiver is not None]
        receivers = asyncio.ensure_future(asyncio.gather(*stopping))
        await asyncio.sleep(0)  # the receivers refuse new calls from here on
        # Flush now rather than after the receivers stop: in-flight Exports wait for their batch's
        # commit, and waiting for its age timer could outlast the grace period.
        await self.batcher.close()
        await receivers
        await self.writer.close()
        await self.deriver.close()
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
