"""What ``callscope dashboards`` can change: the data source, where Grafana finds the files, alert thresholds.

Its own module so that every builder (generate.py, alerts.py, datasource.py) imports it from below, without
a cycle; ``callscope dashboards`` turns each field into a flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["AlertThresholds", "DashboardOptions", "SSL_MODES"]

#: libpq's sslmode values (Grafana passes the data source's to lib/pq / pgx as is).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# ``$NAME`` / ``${NAME}``: Grafana substitutes an environment variable when it reads the provisioning file.
_ENV_REFERENCE = re.compile(r"^\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    """Alert rule thresholds (docs/dashboards.md, "Alert rules")."""

    v2v_p95_ms: float = 1500.0
    llm_ttft_p95_ms: float = 1000.0
    latency_min_samples: int = 5
    failed_call_ratio: float = 0.2
    failed_ratio_min_calls: int = 5
    no_telemetry_minutes: int = 10
    #: p95 of turns.barge_in_stop_ms (user barges in → agent audio stops)
    barge_in_stop_p95_ms: float = 800.0
    #: per-campaign rules (one alert series per campaign)
    campaign_failed_ratio: float = 0.25
    campaign_v2v_p95_ms: float = 2000.0
    campaign_llm_ttft_p95_ms: float = 1200.0
    campaign_min_calls: int = 5

    def __post_init__(self) -> None:
        if min(self.v2v_p95_ms, self.llm_ttft_p95_ms, self.barge_in_stop_p95_ms, self.campaign_v2v_p95_ms,
               self.campaign_llm_ttft_p95_ms) <= 0:
            raise ValueError("latency thresholds must be positive milliseconds")
        if not 0 < self.failed_call_ratio <= 1 or not 0 < self.campaign_failed_ratio <= 1:
            raise ValueError("failed_call_ratio and campaign_failed_ratio must be in (0, 1]")
        if self.campaign_min_calls < 1:
            raise ValueError("campaign_min_calls must be >= 1")
        if self.latency_min_samples < 1 or self.failed_ratio_min_calls < 1 or self.no_telemetry_minutes < 1:
            raise ValueError("sample counts and no_telemetry_minutes must be >= 1")


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    """What ``callscope dashboards`` can change. The defaults match docker-compose."""

    datasource_name: str = "Callscope"
    datasource_uid: str = "callscope"
    datasource_default: bool = True
    db_host: str = "timescaledb:5432"
    db_name: str = "callscope"
    db_user: str = "callscope_reader"
    #: Grafana reads the password from this environment variable (``$NAME`` in the YAML).
    db_password_env: str = "CALLSCOPE_READER_PASSWORD"
    #: TLS to PostgreSQL: a libpq sslmode (SSL_MODES) or ``$VAR``, which Grafana reads from its environment
    #: (compose sets CALLSCOPE_READER_SSLMODE, default ``disable``: the database is on the compose network).
    db_sslmode: str = "$CALLSCOPE_READER_SSLMODE"
    #: CA file (in the Grafana container) that verify-ca / verify-full check the server's certificate against;
    #: empty: the system's CAs.
    db_ssl_root_cert_file: str = ""
    postgres_version: int = 1500
    timescaledb: bool = True
    #: Where provisioned dashboards are mounted in the Grafana container (provider ``options.path``).
    dashboards_path: str = "/etc/grafana/provisioning/dashboards/callscope"
    folder_title: str = "Callscope"
    alert_interval_s: int = 60
    contact_point_name: str = "callscope-oncall"
    contact_point_url: str = "https://example.invalid/callscope-alerts"
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)

    def __post_init__(self) -> None:
        if self.db_sslmode not in SSL_MODES and not _ENV_REFERENCE.match(self.db_sslmode):
            raise ValueError(f"db_sslmode must be one of {', '.join(SSL_MODES)} or $VARIABLE, "
                             f"got {self.db_sslmode!r}")
