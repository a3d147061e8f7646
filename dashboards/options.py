"""What ``callscope dashboards`` can change: the data source, where Grafana finds the files, alert thresholds.

Its own module so that every builder (generate.py, alerts.py, datasource.py) imports it from below, without
a cycle; ``callscope dashboards`` turns each field into a flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AlertThresholds", "DashboardOptions"]


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
    db_sslmode: str = "disable"
    postgres_version: int = 1500
    timescaledb: bool = True
    #: Where provisioned dashboards are mounted in the Grafana container (provider ``options.path``).
    dashboards_path: str = "/etc/grafana/provisioning/dashboards/callscope"
    folder_title: str = "Callscope"
    alert_interval_s: int = 60
    contact_point_name: str = "callscope-oncall"
    contact_point_url: str = "https://example.invalid/callscope-alerts"
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
