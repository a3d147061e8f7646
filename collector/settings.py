"""Configuration: one typed, frozen ``Settings`` built from defaults < ``CALLSCOPE_*`` environment < CLI flags.

``SETTINGS`` is the single table that feeds argparse ``--help``, the environment lookup, validation and
docs/configuration.md (a test checks that every entry is documented).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

__all__ = ["Setting", "SETTINGS", "Settings", "build_settings", "parse_bool", "settings_table_markdown"]


@dataclass(frozen=True)
class Setting:
    name: str                 # attribute of Settings and the flag: --name-with-dashes
    default: Any
    help: str
    parse: Callable[[str], Any] = str

    @property
    def env(self) -> str:
        return "CALLSCOPE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", "postgresql://postgres@127.0.0.1:5432/callscope",
            "PostgreSQL connection URL (TimescaleDB is used when the extension is installed)."),
    Setting("bind_address", "0.0.0.0", "Address the OTLP receivers listen on."),
    Setting("auth", "required",
            "required: every Export needs 'Authorization: Bearer <key>' with a key from `callscope keys create` "
            "(else UNAUTHENTICATED / HTTP 401, nothing stored); off: anyone who reaches the ports writes, as "
            "tenant 'default' (a warning is logged at start). /health, /metrics and gRPC health need no key."),
    Setting("auth_refresh_s", 5.0,
            "How often the receivers reload API keys (seconds): a revoked key is refused within this time.",
            float),
    Setting("tls_cert_file", "",
            "PEM certificate (chain) of the receivers; with tls_key_file set, gRPC and HTTP serve TLS only. "
            "Renewed files are picked up without a restart."),
    Setting("tls_key_file", "", "PEM private key of tls_cert_file (unencrypted)."),
    Setting("tls_client_ca_file", "",
            "PEM CA bundle: with it, clients must present a certificate it signed (mutual TLS)."),
    Setting("pii", "card=mask",
            "PII policy: comma-separated class=action over the default card=mask (a bare action sets every "
            "class). Classes: phone, email, card, transcript, tool (arguments and results), recording (URLs), "
            "personal (attributes marked personal); actions: keep, mask, hash. See docs/security.md."),
    Setting("pii_salt", "",
            "Secret salt of pii hash (at least 16 characters, the same on every collector); required when a "
            "class is hashed."),
    Setting("pii_attributes", "",
            "Your own personal attributes: comma-separated name[=class] (default class personal; name.* for a "
            "prefix), e.g. 'customer.name,customer.mobile=phone'."),
    Setting("grpc_port", 4317, "OTLP/gRPC port (TraceService, LogsService, grpc.health.v1).", int),
    Setting("http_port", 4318, "OTLP/HTTP port (/v1/traces, /v1/logs, /health).", int),
    Setting("max_message_mib", 16, "Largest accepted request, in MiB, after decompression.", int),
    Setting("max_batch_records", 5000, "A batch is written when it holds this many records ...", int),
    Setting("max_wait_ms", 10,
            "... or when its oldest record has waited this long (ms); while all writers are busy, records "
            "gather into the next batch anyway.", int),
    Setting("queue_records", 50000,
            "Records accepted but not yet committed; above it Export is refused with RESOURCE_EXHAUSTED "
            "/ HTTP 429 and a retry hint, so memory stays bounded.", int),
    Setting("queue_mib", 256,
            "Estimated size (MiB) of the records accepted but not yet committed; above it Export is refused "
            "like above queue_records.", int),
    Setting("max_concurrent_requests", 256,
            "Export requests (gRPC and HTTP together) being read, mapped or waiting for their commit; more are "
            "refused at once with RESOURCE_EXHAUSTED / HTTP 429 and a retry hint.", int),
    Setting("max_attributes", 128,
            "Attributes kept per span, log record, span event or resource (the OpenTelemetry SDK's default); "
            "the rest are dropped and their number is stored as callscope.dropped_attributes_count.", int),
    Setting("max_value_length", 32768,
            "Longest string value kept (characters); longer ones are cut and end with "
            "'…[truncated N chars]'.", int),
    Setting("max_value_depth", 16,
            "Deepest nesting of array / kvlist attribute values kept; deeper values are replaced by "
            "'…[nested deeper than N levels]'.", int),
    Setting("max_json_depth", 128,
            "Deepest nesting of an OTLP/JSON request body; deeper bodies are refused with HTTP 400.", int),
    Setting("max_id_length", 256,
            "Longest call id (call.id, session.id, …), tool call id, event name, call.campaign or call.agent; "
            "an item with a longer one is rejected in partial_success (these values are indexed).", int),
    Setting("health_probe_interval_s", 5.0,
            "GET /health trusts a commit this recent; without one it probes the database at most this "
            "often and caches the answer.", float),
    Setting("writer_connections", 2,
            "Database connections writing batches in parallel (derive workers have their own).", int),
    Setting("derive_interval_ms", 1000,
            "How often turns and call rows are recomputed for the calls that received data (ms); longer "
            "intervals coalesce more batches per recomputation under load.", int),
    Setting("derive_workers", 2,
            "Derive workers in this process, each on its own database connection; workers of every collector "
            "on the database share one backlog, a call being derived by one worker at a time.", int),
    Setting("derive_batch_calls", 200,
            "Calls a derive worker claims and recomputes together in one transaction.", int),
    Setting("derive_timeout_s", 60.0,
            "A derivation running longer fails: its calls are retried one by one, and a call that still fails "
            "is quarantined (call_quarantine) and retried with backoff.", float),
    Setting("retry_after_s", 1.0, "Retry hint sent with a refusal (RetryInfo / Retry-After), seconds.", float),
    Setting("write_timeout_s", 30.0, "A batch that cannot be committed within this time fails with UNAVAILABLE.", float),
    Setting("shutdown_timeout_s", 20.0,
            "On SIGTERM the collector stops accepting, commits what it accepted, finishes the calls it is deriving "
            "and derives the calls it wrote, then exits, within this time whatever other collectors do; what is "
            "cut off was not acknowledged (clients retry) or stays for another collector to derive. Keep it below "
            "the orchestrator's grace period (Kubernetes terminationGracePeriodSeconds, compose stop_grace_period).",
            float),
    Setting("retention_days", 30, "TimescaleDB only: spans and events older than this are dropped (0 = keep); "
            "applied by `callscope migrate`.", int),
    Setting("compress_after_days", 2, "TimescaleDB only: span and event chunks older than this are compressed; "
            "applied by `callscope migrate` — except to tables with row-level security (every tenant's `spans` / "
            "`events` since `0013_tenants`), which TimescaleDB does not compress.", int),
    Setting("reader_connection_limit", 20,
            "Connections the read-only role callscope_reader (Grafana) may hold at once, cluster-wide; applied by "
            "`callscope migrate` (-1 = no limit).", int),
    Setting("idle_timeout_s", 300,
            "A call with no end and no telemetry for this long is shown as stale (it stays active).", int),
    Setting("log_level", "info", "Log level: debug, info, warning, error."),
    Setting("log_format", "json", "Log format: json (one object per line) or text."),
    Setting("prices_file", "", "YAML price table that overrides the shipped defaults (optional); its telephony rates "
            "are stored by `callscope migrate`, and by `serve` when they differ from the stored ones."),
)


@dataclass(frozen=True)
class Settings:
    database_url: str
    bind_address: str
    auth: str
    auth_refresh_s: float
    tls_cert_file: str
    tls_key_file: str
    tls_client_ca_file: str
    pii: str
    pii_salt: str
    pii_attributes: str
    grpc_port: int
    http_port: int
    max_message_mib: int
    max_batch_records: int
    max_wait_ms: int
    queue_records: int
    queue_mib: int
    max_concurrent_requests: int
    max_attributes: int
    max_value_length: int
    max_value_depth: int
    max_json_depth: int
    max_id_length: int
    health_probe_interval_s: float
    writer_connections: int
    derive_interval_ms: int
    derive_workers: int
    derive_batch_calls: int
    derive_timeout_s: float
    retry_after_s: float
    write_timeout_s: float
    shutdown_timeout_s: float
    retention_days: int
    compress_after_days: int
    reader_connection_limit: int
    idle_timeout_s: int
    log_level: str
    log_format: str
    prices_file: str

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mib * 1024 * 1024

    @property
    def queue_bytes(self) -> int:
        return self.queue_mib * 1024 * 1024

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    def pii_policy(self):  # type: ignore[no-untyped-def]
        """The ``PiiPolicy`` these settings select (collector/privacy/)."""
        from collector.privacy import PiiPolicy, parse_attributes, parse_policy

        return PiiPolicy(parse_policy(self.pii), salt=self.pii_salt, attributes=parse_attributes(self.pii_attributes))

    def validate(self) -> None:
        problems = []
        if self.max_batch_records < 1:
            problems.append("max_batch_records must be ≥ 1")
        if self.queue_records < self.max_batch_records:
            problems.append("queue_records must be ≥ max_batch_records")
        if self.derive_interval_ms < 0:
            problems.append("derive_interval_ms must be ≥ 0")
        if self.derive_workers < 1 or self.derive_batch_calls < 1:
            problems.append("derive_workers and derive_batch_calls must be ≥ 1")
        if self.derive_timeout_s <= 0:
            problems.append("derive_timeout_s must be > 0")
        if self.shutdown_timeout_s <= 0:
            problems.append("shutdown_timeout_s must be > 0")
        if self.writer_connections < 1:
            problems.append("writer_connections must be ≥ 1")
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be ≥ 0")
        if self.max_message_mib < 1:
            problems.append("max_message_mib must be ≥ 1")
        if self.queue_mib < 1:
            problems.append("queue_mib must be ≥ 1")
        if self.max_concurrent_requests < 1:
            problems.append("max_concurrent_requests must be ≥ 1")
        for name in ("max_attributes", "max_value_length", "max_value_depth", "max_id_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1")
        if self.max_json_depth < 8:
            problems.append("max_json_depth must be ≥ 8 (an OTLP/JSON span alone is 7 levels deep)")
        if self.health_probe_interval_s <= 0:
            problems.append("health_probe_interval_s must be > 0")
        for port in (self.grpc_port, self.http_port):
            if not 0 <= port <= 65535:
                problems.append(f"port {port} is out of range")
        if self.log_format not in {"json", "text"}:
            problems.append("log_format must be json or text")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            problems.append("log_level must be debug, info, warning or error")
        if self.retention_days < 0 or self.compress_after_days < 0:
            problems.append("retention_days and compress_after_days must be ≥ 0")
        if self.reader_connection_limit < -1:
            problems.append("reader_connection_limit must be ≥ -1 (-1: no limit)")
        if self.auth not in ("required", "off"):
            problems.append(f"auth must be required or off, got {self.auth!r}")
        if self.auth_refresh_s <= 0:
            problems.append("auth_refresh_s must be > 0")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("tls_cert_file and tls_key_file go together (set both, or neither for plaintext)")
        if self.tls_client_ca_file and not self.tls_cert_file:
            problems.append("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        try:
            self.pii_policy()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))


assert {s.name for s in SETTINGS} == {f.name for f in fields(Settings)}, "SETTINGS and Settings disagree"


def settings_table_markdown() -> str:
    """The configuration reference table of docs/configuration.md (a test keeps the page equal to it)."""
    rows = [f"| `{s.flag}` | `{s.env}` | `{s.default!r}` | {s.help} |" for s in SETTINGS]
    return "\n".join(["| flag | environment | default | meaning |", "| --- | --- | --- | --- |", *rows])


def build_settings(overrides: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < ``CALLSCOPE_*`` environment < ``overrides`` (CLI flags; ``None`` values are ignored)."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = setting.default
        if setting.env in environ:
            try:
                value = setting.parse(environ[setting.env])
            except ValueError as exc:
                raise ValueError(f"{setting.env}: {exc}") from None
        if overrides.get(setting.name) is not None:
            value = overrides[setting.name]
        values[setting.name] = value
    settings = Settings(**values)
    settings.validate()
    return settings
