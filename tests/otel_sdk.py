"""Helpers that drive the real OpenTelemetry Python SDK and its OTLP exporters against a test collector."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MS = 1_000_000  # nanoseconds per millisecond


def exporters(kind: str, collector) -> tuple[object, object]:  # type: ignore[no-untyped-def]
    """(span exporter, log exporter) of the real OTLP SDK for ``grpc`` or ``http``."""
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = f"127.0.0.1:{collector.grpc.port}"
        return OTLPSpanExporter(endpoint=endpoint, insecure=True), OTLPLogExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    base = f"http://127.0.0.1:{collector.http.port}"
    return HttpSpanExporter(endpoint=f"{base}/v1/traces"), HttpLogExporter(endpoint=f"{base}/v1/logs")


class SdkAgent:
    """A tracer + logger pair exporting through the SDK's batch processors, like an instrumented agent.

    ``kind`` is ``grpc`` or ``http`` (real OTLP exporters to ``collector``) or ``memory``: spans and log
    records are kept, and ``requests()`` encodes them into one OTLP request per item, for tests that
    reorder, split and repeat what an agent sends.
    """

    def __init__(self, kind: str, collector=None, service_name: str = "voice-agent",  # type: ignore[no-untyped-def]
                 resource: dict | None = None) -> None:
        if kind == "memory":
            span_exporter, log_exporter = InMemorySpanExporter(), InMemoryLogRecordExporter()
            self.memory = (span_exporter, log_exporter)
            span_processor, log_processor = SimpleSpanProcessor(span_exporter), SimpleLogRecordProcessor(log_exporter)
        else:
            span_exporter, log_exporter = exporters(kind, collector)
            span_processor, log_processor = BatchSpanProcessor(span_exporter), BatchLogRecordProcessor(log_exporter)
        resource = Resource.create({"service.name": service_name, **(resource or {})})
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(span_processor)
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(log_processor)
        self.tracer = self.tracer_provider.get_tracer("callscope.tests")
        self.logger = self.logger_provider.get_logger("callscope.tests")
        self.span_count = 0   # spans ended, so a test can count what it sent

    @contextmanager
    def span(self, name: str, start_ns: int, end_ns: int, attributes: dict | None = None,
             parent=None, error: str | None = None) -> Iterator[trace.Span]:  # type: ignore[no-untyped-def]
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes or {})
        try:
            yield span
        finally:
            if error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error))
            span.end(end_time=end_ns)
            self.span_count += 1

    def event(self, name: str, time_ns: int, span: trace.Span, *, attributes: dict | None = None,
              body: str | None = None, severity: SeverityNumber = SeverityNumber.INFO) -> None:
        context = trace.set_span_in_context(span)
        self.logger.emit(LogRecord(timestamp=time_ns, context=context, severity_number=severity, body=body,
                                   attributes=attributes or {}, event_name=name))

    async def flush(self) -> None:
        """Export everything; the SDK's exporters block, so they run off the event loop."""
        def _flush() -> None:
            assert self.tracer_provider.force_flush(30_000)
            assert self.logger_provider.force_flush(30_000)
            self.tracer_provider.shutdown()
            self.logger_provider.shutdown()
        await asyncio.to_thread(_flush)

    def requests(self) -> tuple[list, list]:
        """(trace requests, log requests): one OTLP request per finished span / log record, in end order."""
        spans, logs = self.memory[0].get_finished_spans(), self.memory[1].get_finished_logs()
        return [encode_spans([span]) for span in spans], [encode_logs([log]) for log in logs]
