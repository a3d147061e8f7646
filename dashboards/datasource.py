"""The provisioned PostgreSQL / TimescaleDB data source (read-only role, password from the environment)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dashboards.options import DashboardOptions
from dashboards.sql import PG_PLUGIN_ID

__all__ = ["datasource_provisioning", "tenant_datasource_provisioning"]


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


def tenant_datasource_provisioning(options: DashboardOptions, tenant: str, role: str, password_env: str, *,
                                   org_id: int | None = None) -> dict[str, Any]:
    """A data source that logs in as ``tenant``'s reader role (``callscope tenants create``): row-level security
    shows it that tenant's rows only, so the generated dashboards work unchanged with it (they choose their data
    source through a variable). ``org_id``: the Grafana organization of the tenant (default: Grafana's, 1)."""
    own = replace(options, datasource_name=f"{options.datasource_name} ({tenant})",
                  datasource_uid=f"{options.datasource_uid}-{tenant}", datasource_default=org_id is not None,
                  db_user=role, db_password_env=password_env)
    document = datasource_provisioning(own)
    if org_id is not None:
        document["datasources"][0]["orgId"] = org_id
    return document
