"""When to try an export again: exponential backoff with jitter, the server's hint first, as the OpenTelemetry
SDK exporters do (opentelemetry-exporter-otlp-proto-grpc ``OTLPExporterMixin._export``, the HTTP exporter's
``_OTLPHTTPClient.export``): wait ``2^n`` seconds × a random factor in [0.8, 1.2] after the n-th failure, or
exactly the delay the server asked for (RetryInfo / Retry-After), and give up when that wait would pass the
budget.

One difference, on purpose: the SDK's budget is its export timeout (10 s) and 6 attempts, since a process
that emits telemetry must not block on it. The simulator exists to deliver its traffic, so it keeps trying
through an overload for ``max_elapsed_s`` (120 s) per request, each wait capped at ``max_backoff_s``.

Written here rather than with a retry library (tenacity, backoff): the loop is a dozen lines, and what
it needs — a delay chosen by the server per failure, the SDK's schedule, a seeded jitter — would be the same
amount of code as callbacks to a library, plus a runtime dependency.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from collector.simulate.transport import Retryable

__all__ = ["RetryPolicy", "GaveUp", "with_retries"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_backoff_s: float = 30.0
    max_elapsed_s: float = 120.0

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based) when the server gave no hint."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (failures - 1))
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


class GaveUp(Exception):
    """Retrying stopped: the next wait would pass the budget. ``last`` is the last attempt's failure."""

    def __init__(self, last: Retryable) -> None:
        super().__init__(f"gave up after retries: {last}")
        self.last = last


async def with_retries(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, rng: random.Random, *,
                       on_retry: Callable[[], None] = lambda: None) -> T:
    """``attempt()`` until it succeeds; ``Retryable`` failures are retried per ``policy``, anything else is
    raised at once. ``on_retry`` is called before each wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.max_elapsed_s
    failures = 0
    while True:
        try:
            return await attempt()
        except Retryable as exc:
            failures += 1
            delay = exc.delay if exc.delay is not None else policy.backoff(failures, rng)
            if loop.time() + delay > deadline:
                raise GaveUp(exc) from exc
            on_retry()
            await asyncio.sleep(delay)
