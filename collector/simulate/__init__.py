"""The simulator: realistic, seeded voice-agent OTLP traffic, generated and sent like instrumented agents would
(``callscope simulate``, the benchmarks in bench/, the tests' ground truth).

Nothing goes through the OTel SDK: protobuf messages are built directly, so tens of thousands of spans are
generated and pre-encoded in seconds. One module per job, each importing only the ones before it:

    model.py         drafts of spans and log records, SimulatedCall, time units
    profiles.py      the agents (models, voices, tools, scripts) and their SDK identities
    builder.py       CallBuilder: one call's timeline, its ground truth (``expected``), ``finish``
    lifecycle.py     calls that never talk: queued, ringing, declined, missed, invalid number
    conversation.py  native voice-agent conversations: turns, stages, tools, interruptions, transfers
    genai.py         calls seen only through the GenAI semantic conventions
    scenarios.py     the status mix and timing of a simulation: ``generate_calls``
    encoding.py      drafts → OTLP protobuf, batched like an SDK's exporters: ``encode_requests``
    transport.py     OTLP/gRPC and OTLP/HTTP clients; which answers are retryable
    retry.py         backoff with jitter, the server's hint first, as the OTel SDK exporters do
    sending.py       ``run_simulation``: calls in flight, retries, the report

docs/conventions.md is the contract the traffic follows; design.md §4 the statuses, §5 the events.
"""

from __future__ import annotations

from collector.simulate.encoding import encode_requests
from collector.simulate.model import SimulatedCall
from collector.simulate.scenarios import STATUSES, WINDOW, generate_calls
from collector.simulate.sending import SimulationReport, run_simulation
from collector.simulate.transport import retry_delay_from_status

__all__ = [
    "STATUSES", "WINDOW", "SimulatedCall", "SimulationReport", "generate_calls", "encode_requests",
    "run_simulation", "retry_delay_from_status",
]
