"""Self-observability: the collector's own counters, declared in one place (like the Collector's metadata.yaml).

Exposed on the HTTP port at ``/metrics`` (Prometheus text format) and logged at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Metrics", "METRICS"]


@dataclass
class Metrics:
    received_spans: int = 0        # spans in Export requests (valid or not)
    received_log_records: int = 0
    rejected_items: int = 0        # spans / log records rejected in partial_success
    refused_records: int = 0       # records refused with RESOURCE_EXHAUSTED / 429 (clients retry them)
    refused_requests: int = 0      # requests refused before decoding because the queue was already full
    committed_records: int = 0     # rows committed (spans, events, tool calls)
    committed_batches: int = 0
    failed_batches: int = 0
    batch_trigger_size: int = 0    # batches sent because they were full (the rest: by age or shutdown)
    derived_calls: int = 0         # call recomputations (turns + call row) by the deriver

    def count_derived(self, calls: int) -> None:
        self.derived_calls += calls

    def prometheus(self) -> str:
        lines = []
        for item in fields(self):
            name = f"callscope_{item.name}_total"
            lines.append(f"# TYPE {name} counter")
            lines.append(f"{name} {getattr(self, item.name)}")
        return "\n".join(lines) + "\n"


METRICS = Metrics()
