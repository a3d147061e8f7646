"""The provisioned PostgreSQL / TimescaleDB data source (read-only role, password from the environment)."""

from __future__ import annotations

from typing import Any

from dashboards.options import DashboardOptions
from dashboards.sql import PG_PLUGIN_ID

__all__ = ["datasource_provisioning"]


def datasource_provisioning(options: DashboardOptions) -> dict[str, Any]:
    """``provisioning/datasources/callscope.yaml`` (Grafana expands ``$VAR`` in this file, never in dashboards).

    ``sslmode`` is ``options.db_sslmode`` (docs/security.md says which to use); with ``db_ssl_root_cert_file``
    the certificate is checked against that CA file (Grafana's file-path TLS configuration)."""
    tls: dict[str, Any] = {}
    if options.db_ssl_root_cert_file:
        tls = {"tlsConfigurationMethod": "file-path", "sslRootCertFile": options.db_ssl_root_cert_file}
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": options.datasource_name,
                "type": PG_PLUGIN_ID,
                "uid": options.datasource_uid,
                "access": "proxy",
                "url": options.db_host,
                "user": options.db_user,
                "isDefault": options.datasource_default,
                "editable": False,
                "jsonData": {
                    "database": options.db_name,
                    "sslmode": options.db_sslmode,
                    **tls,
                    "postgresVersion": options.postgres_version,
                    "timescaledb": options.timescaledb,
                    "timeInterval": "10s",
                    "maxOpenConns": 20,
                    "maxIdleConnsAuto": True,
                    "connMaxLifetime": 14400,
                },
                "secureJsonData": {"password": f"${options.db_password_env}"},
            }
        ],
    }
