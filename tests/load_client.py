"""Tools for fault tests: ``callscope serve`` as a subprocess, OTLP clients that track acknowledgements, and
read-backs of what the database holds.

A span counts as *acknowledged* only when the Export that carried it returned success (gRPC OK or HTTP 200 with
no partial rejection). Clients retry refusals (RESOURCE_EXHAUSTED, UNAVAILABLE, HTTP 429/503, connection
errors) after the server's RetryInfo / Retry-After, or a short backoff, until their deadline; every refusal is
recorded with the retry hint it carried, so tests can check each one had a hint.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import aiohttp
import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (ExportLogsServiceRequest,
                                                                    ExportLogsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

from tests.pg_instance import free_port

__all__ = ["CollectorProcess", "kill_leftovers", "Refusal", "AckLedger", "GrpcSender", "HttpSender", "span_keys", "log_count",
           "stored_span_counts", "wait_derived", "retry_info_of", "callscope_command"]

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
SpanKey = tuple[str, str]   # (trace_id hex, span_id hex), as the spans table stores them


def callscope_command() -> list[str]:
    script = Path(sys.executable).with_name("callscope")
    return [str(script)] if script.exists() else [sys.executable, "-m", "collector.cli"]


# --- the collector as a process ---------------------------------------------------------------------------------

RUNNING: list["CollectorProcess"] = []   # every process started, so a fixture can kill what a failed test left


def kill_leftovers() -> None:
    """SIGKILL every collector process a test started and did not stop (by its own pid only)."""
    while RUNNING:
        collector = RUNNING.pop()
        process = collector.process
        if process is not None and process.returncode is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        collector._close_log()


# A collector of an earlier routine version (storage/routines.py): this code with ROUTINE_VERSION set before any
# module that names a routine is imported, so it calls that version's routines, as the release that shipped
# them would. argv: [-c, version, serve, …].
_PINNED_ROUTINES = ("import sys, storage.routines as routines; routines.ROUTINE_VERSION = int(sys.argv.pop(1)); "
                    "from collector.cli import main; sys.exit(main(sys.argv[1:]))")


class CollectorProcess:
    """``callscope serve`` on 127.0.0.1 and free ports (kept across restarts), logging to a file.

    ``routine_version``: run as a collector of that routine version (see ``_PINNED_ROUTINES``)."""

    def __init__(self, database_url: str, log_dir: Path, *, name: str = "collector",
                 routine_version: int | None = None, **settings: object) -> None:
        self.database_url = database_url
        self.routine_version = routine_version
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.settings = {key.upper(): str(value) for key, value in settings.items()}
        self.log_path = log_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.peak_rss_kib = 0     # VmHWM of the last process, read before it ended
        self._log = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CALLSCOPE_")}
        env.update({
            "CALLSCOPE_DATABASE_URL": self.database_url,
            "CALLSCOPE_BIND_ADDRESS": "127.0.0.1",
            "CALLSCOPE_GRPC_PORT": str(self.grpc_port),
            "CALLSCOPE_HTTP_PORT": str(self.http_port),
            "CALLSCOPE_LOG_FORMAT": "text",
            "CALLSCOPE_AUTH": "off",   # fault tests are about the database; tests/test_security.py covers keys
            "CALLSCOPE_DERIVE_INTERVAL_MS": "100",
            # derived rows must not depend on when a test happens to look (design §4: stale after idle time)
            "CALLSCOPE_IDLE_TIMEOUT_S": "86400",
        })
        env.update({key if key.startswith("CALLSCOPE_") else "CALLSCOPE_" + key: value
                    for key, value in self.settings.items()})
        return env

    async def start(self, timeout: float = 30.0) -> None:
        assert self.process is None or self.process.returncode is not None, "already running"
        self._log = open(self.log_path, "ab")
        self._log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
        self._log.flush()
        command = callscope_command() if self.routine_version is None else [
            sys.executable, "-c", _PINNED_ROUTINES, str(self.routine_version)]
        self.process = await asyncio.create_subprocess_exec(
            *command, "serve", env=self.env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log, stderr=self._log)
        if self not in RUNNING:
            RUNNING.append(self)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"collector exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.http_port}/health") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"collector not healthy within {timeout}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    def read_peak_rss_kib(self) -> int:
        """VmHWM (peak resident set) of the running process, in KiB; also kept in ``peak_rss_kib``."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return self.peak_rss_kib
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        return self.peak_rss_kib

    async def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        assert self.process is not None
        self.read_peak_rss_kib()
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self._close_log()

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.process is None or self.process.returncode is not None:
            self._close_log()
            return self.process.returncode if self.process else 0
        self.read_peak_rss_kib()
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()
        self._close_log()
        return self.process.returncode or 0

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- what was sent, acknowledged and refused --------------------------------------------------------------------

def span_keys(body: bytes | ExportTraceServiceRequest) -> list[SpanKey]:
    request = ExportTraceServiceRequest.FromString(body) if isinstance(body, bytes) else body
    return [(span.trace_id.hex(), span.span_id.hex())
            for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def log_count(body: bytes) -> int:
    request = ExportLogsServiceRequest.FromString(body)
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


def retry_info_of(trailers: Iterable[tuple[str, object]] | None) -> tuple[float | None, float | None]:
    """(delay from RetryInfo in ``grpc-status-details-bin``, delay from ``google.rpc.retryinfo-bin``)."""
    in_status = in_own = None
    for key, value in trailers or ():
        if not isinstance(value, bytes):
            continue
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    in_status = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        elif key == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo.FromString(value)
            in_own = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return in_status, in_own


@dataclass(frozen=True)
class Refusal:
    transport: str
    code: str            # gRPC status name, or "HTTP 429", or "connection"
    retry_after_s: float | None   # the server's hint (None: none given)
    detail: str = ""
    status_hint: float | None = None    # gRPC: RetryInfo inside grpc-status-details-bin
    trailer_hint: float | None = None   # gRPC: the google.rpc.retryinfo-bin trailer (read by the OTel exporter)


@dataclass
class AckLedger:
    """Everything clients sent and what came back. ``acked`` holds span keys of successful Exports only."""

    sent: set[SpanKey] = field(default_factory=set)
    acked: set[SpanKey] = field(default_factory=set)
    acked_logs: int = 0
    ack_times: list[float] = field(default_factory=list)     # monotonic time of every successful Export
    refusals: list[Refusal] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)        # given up, or answered with an unexpected error
    partial: list[str] = field(default_factory=list)         # partial_success reports (none expected here)
    exports: int = 0
    in_flight: int = 0                                        # Export calls sent and not answered yet

    def answered(self, response: ExportTraceServiceResponse | ExportLogsServiceResponse, *, kind: str,
                 keys: Sequence[SpanKey], body: bytes) -> bool:
        """Record a successful Export's answer; True when it acknowledged everything (no partial success)."""
        rejected = (response.partial_success.rejected_spans if kind == "traces"
                    else response.partial_success.rejected_log_records)
        if rejected:
            self.partial.append(response.partial_success.error_message[:300])
            return False
        self.ack_times.append(time.monotonic())
        if kind == "traces":
            self.acked.update(keys)
        else:
            self.acked_logs += log_count(body)
        return True

    def summary(self) -> str:
        codes: dict[str, int] = {}
        for refusal in self.refusals:
            codes[refusal.code] = codes.get(refusal.code, 0) + 1
        return (f"sent {len(self.sent)} spans, acked {len(self.acked)}, acked log records {self.acked_logs}, "
                f"exports {self.exports}, refusals {codes}, failures {len(self.failures)}, partial {len(self.partial)}")


# What the OTel SDK exporters retry (OTLP spec: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
# DATA_LOSS; RESOURCE_EXHAUSTED with a retry hint): a request cut off by a collector's shutdown comes back CANCELLED.
_RETRYABLE = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
              grpc.StatusCode.DATA_LOSS}
# Without a hint (the collector is unreachable): a short, capped backoff keeps the tests fast.
_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.5)


class GrpcSender:
    """One channel; ``send`` exports one pre-encoded request until it is acknowledged or ``deadline`` passes."""

    def __init__(self, target: str, ledger: AckLedger, *, timeout: float = 10.0) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.enable_http_proxy", 0), ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # reconnect quickly to a collector that is restarting (default backoff reaches tens of seconds)
            ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 300),
            ("grpc.min_reconnect_backoff_ms", 50)])
        self._traces = self.channel.unary_unary(TRACE_EXPORT, request_serializer=None,
                                                response_deserializer=ExportTraceServiceResponse.FromString)
        self._logs = self.channel.unary_unary(LOGS_EXPORT, request_serializer=None,
                                              response_deserializer=ExportLogsServiceResponse.FromString)
        self.ledger = ledger
        self.timeout = timeout

    async def send(self, body: bytes, *, kind: str, deadline: float, keys: Sequence[SpanKey] = (),
                   retry: bool = True) -> bool:
        """Export ``body`` (``kind`` ``traces`` or ``logs``); True once acknowledged."""
        if kind == "traces":
            keys = keys or span_keys(body)
            self.ledger.sent.update(keys)
        method = self._traces if kind == "traces" else self._logs
        attempt = 0
        while True:
            self.ledger.exports += 1
            self.ledger.in_flight += 1
            try:
                response = await method(body, timeout=max(0.5, min(self.timeout, deadline - time.monotonic())),
                                        wait_for_ready=False)
            except grpc.aio.AioRpcError as error:
                self.ledger.in_flight -= 1
                code = error.code()
                if code not in _RETRYABLE:
                    self.ledger.failures.append(f"grpc {code.name}: {error.details()}")
                    return False
                in_status, in_own = retry_info_of(error.trailing_metadata())
                hint = in_status if in_status is not None else in_own
                connection_level = code == grpc.StatusCode.UNAVAILABLE and not error.trailing_metadata()
                self.ledger.refusals.append(Refusal("grpc", "connection" if connection_level else code.name, hint,
                                                    (error.details() or "")[:200], in_status, in_own))
                delay = hint if hint is not None else _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                attempt += 1
                if not retry or time.monotonic() + delay > deadline:
                    self.ledger.failures.append(f"gave up after {attempt} attempts: {code.name}")
                    return False
                await asyncio.sleep(delay)
                continue
            self.ledger.in_flight -= 1
            return self.ledger.answered(response, kind=kind, keys=keys, body=body)

    async def close(self) -> None:
        await self.channel.close()


class HttpSender:
    """OTLP/HTTP protobuf on one session; same contract as ``GrpcSender``. Refusals must carry Retry-After."""

    def __init__(self, port: int, ledger: AckLedger, *, timeout: float = 10.0) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self.ledger = ledger

    async def send(self, body: bytes, *, kind: str, deadline: float, keys: Sequence[SpanKey] = (),
                   retry: bool = True) -> bool:
        if kind == "traces":
            keys = keys or span_keys(body)
            self.ledger.sent.update(keys)
        path = "/v1/traces" if kind == "traces" else "/v1/logs"
        attempt = 0
        while True:
            self.ledger.exports += 1
            self.ledger.in_flight += 1
            try:
                async with self.session.post(self.base + path, data=body,
                                             headers={"Content-Type": "application/x-protobuf"}) as response:
                    payload = await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                status, retry_after, payload = 0, None, str(error).encode()
            finally:
                self.ledger.in_flight -= 1
            if status == 200:
                parsed = (ExportTraceServiceResponse if kind == "traces" else ExportLogsServiceResponse
                          ).FromString(payload)
                return self.ledger.answered(parsed, kind=kind, keys=keys, body=body)
            if status not in (0, 429, 502, 503, 504):
                self.ledger.failures.append(f"HTTP {status}: {payload[:200]!r}")
                return False
            hint = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
            self.ledger.refusals.append(Refusal("http", f"HTTP {status}" if status else "connection", hint,
                                                payload[:200].decode(errors="replace")))
            delay = hint if hint is not None else _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
            attempt += 1
            if not retry or time.monotonic() + delay > deadline:
                self.ledger.failures.append(f"gave up after {attempt} attempts: HTTP {status}")
                return False
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.session.close()


# --- what the database holds ------------------------------------------------------------------------------------

async def stored_span_counts(database_url: str) -> dict[SpanKey, int]:
    """How many rows each (trace_id, span_id) has in ``spans`` (public schema, design §3)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT trace_id, span_id, count(*) AS n FROM spans GROUP BY trace_id, span_id")
    finally:
        await connection.close()
    return {(row["trace_id"], row["span_id"]): row["n"] for row in rows}


async def wait_derived(database_url: str, call_ids: Iterable[str], *, timeout: float = 60.0) -> None:
    """Poll until every call in ``call_ids`` has a ``calls`` row and nothing is waiting in ``dirty_calls``."""
    wanted = set(call_ids)
    deadline = time.monotonic() + timeout
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            dirty = await connection.fetchval("SELECT count(*) FROM dirty_calls")
            present = {row["call_id"] for row in
                       await connection.fetch("SELECT call_id FROM calls WHERE call_id = ANY($1::text[])",
                                              list(wanted))}
            if dirty == 0 and present == wanted:
                # one more look: a derive round may have been running between the two reads above
                if await connection.fetchval("SELECT count(*) FROM dirty_calls") == 0:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"derivation not finished after {timeout}s: {dirty} dirty marks, "
                                     f"{len(wanted - present)} of {len(wanted)} calls missing "
                                     f"(e.g. {sorted(wanted - present)[:3]})")
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
