"""Self-observability: the collector's own metrics, declared in one place (like the Collector's metadata.yaml).

Exposed on the HTTP port at ``/metrics`` (Prometheus text format, written by prometheus_client) and
summarized in the ``collector.stopped`` log line.

Every ``Collector`` has its own ``Metrics`` and so its own ``CollectorRegistry``: a process (the test suite)
may run many collectors one after the other without duplicate-registration errors, and each ``/metrics``
shows its own collector. Parts below the collector that know a number only they can compute (the batcher's
queue, later the deriver's backlog) publish it through ``register_gauge_callback``; storage/ never imports
this module, server.py passes its functions in.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

log = logging.getLogger("callscope.telemetry")

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)
_COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The collector's counters, gauges and histograms (one registry per collector)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("callscope_received_items", "Spans and log records in Export requests, valid or not.",
                                ["signal", "transport"], registry=r)
        self.rejected = Counter("callscope_rejected_items",
                                "Spans and log records rejected in partial_success (the rest of their request "
                                "was stored).", ["signal", "reason"], registry=r)
        self.refused = Counter("callscope_refused_requests",
                               "Export requests refused as a whole with a retry hint (RESOURCE_EXHAUSTED / 429, "
                               "UNAVAILABLE / 503) or as undecodable (INVALID_ARGUMENT / 400).",
                               ["reason", "transport"], registry=r)
        self.limited = Counter("callscope_limited_values",
                               "Values cut by a limit and stored anyway: attributes dropped past max_attributes, "
                               "strings truncated, nesting cut, facts no column can hold.", ["limit"], registry=r)
        self.internal_errors = Counter("callscope_internal_errors",
                                       "Unexpected errors (bugs or unforeseen input), by stage; each is also "
                                       "logged.", ["stage"], registry=r)
        self.committed_records = Counter("callscope_committed_records", "Rows committed (spans, events, tool calls).",
                                         registry=r)
        self.committed_batches = Counter("callscope_committed_batches", "Batches committed.", registry=r)
        self.failed_batches = Counter("callscope_failed_batches", "Batches whose commit failed, by cause.",
                                      ["reason"], registry=r)
        self.full_batches = Counter("callscope_full_batches",
                                    "Batches sent because they reached max_batch_records (the rest: by age or "
                                    "shutdown).", registry=r)
        self.derived_calls = Counter("callscope_derived_calls", "Call recomputations (turns + call row) by the deriver.",
                                     registry=r)
        self.batch_records = Histogram("callscope_batch_records", "Records per committed batch.",
                                       buckets=_BATCH_BUCKETS, registry=r)
        self.commit_seconds = Histogram("callscope_commit_seconds", "Time to write and commit one batch.",
                                        buckets=_COMMIT_BUCKETS, registry=r)
        self._gauges: dict[str, Gauge] = {}

    # --- callback gauges ----------------------------------------------------------------------------------

    def register_gauge_callback(self, name: str, help: str, fn: Callable[[], float]) -> None:
        """Publish ``fn()`` as gauge ``name`` at every scrape; registering a name again replaces its function.

        ``fn`` runs inside the event loop on each scrape: it must be cheap and must not block (read a number
        the owner keeps up to date; never query the database). If it raises, the gauge reads NaN and the
        error is logged, so one broken source never breaks ``/metrics``.
        """
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = Gauge(name, help, registry=self.registry)
            self._gauges[name] = gauge

        def read() -> float:
            try:
                return float(fn())
            except Exception:
                log.exception("metrics.gauge_failed", extra={"gauge": name})
                return math.nan

        gauge.set_function(read)

    # --- shortcuts for the hot paths ----------------------------------------------------------------------

    def count_derived(self, calls: int) -> None:
        """The deriver's ``on_derived`` callback."""
        self.derived_calls.inc(calls)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, float]:
        """Totals per metric (labels summed), for the shutdown log line."""
        totals: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return {name: (int(value) if value == int(value) else round(value, 4)) if math.isfinite(value) else value
                for name, value in totals.items()}
