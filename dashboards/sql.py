"""SQL targets for Grafana's PostgreSQL data source: the SDK's "custom query type" extension point.

The foundation SDK ships no PostgreSQL query builder (see docs/dashboards.md), so this module defines the
dataquery model and its builder, and registers it so ``Dashboard.from_json`` decodes our targets back.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

__all__ = ["PG_PLUGIN_ID", "SQL", "SQLQuery", "register"]

#: Plugin id since Grafana 10.2.3; ``postgres`` remains an alias.
PG_PLUGIN_ID = "grafana-postgresql-datasource"

Format = Literal["table", "time_series"]


class SQLQuery(cogvariants.Dataquery):
    """One raw-SQL target. ``format`` is always written: the backend's default is ``time_series``."""

    def __init__(
        self,
        raw_sql: str = "",
        format: Format = "table",
        ref_id: Optional[str] = None,
        datasource: Optional[DataSourceRef] = None,
        hide: Optional[bool] = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.format = format
        self.ref_id = ref_id
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "rawSql": self.raw_sql,
            "format": self.format,
            "rawQuery": True,
            "editorMode": "code",
        }
        if self.ref_id is not None:
            payload["refId"] = self.ref_id
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        ds = data.get("datasource")
        return cls(
            raw_sql=data.get("rawSql", ""),
            format=data.get("format", "table"),
            ref_id=data.get("refId"),
            datasource=DataSourceRef.from_json(ds) if isinstance(ds, dict) else None,
            hide=data.get("hide"),
        )


class SQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder for :class:`SQLQuery`: ``SQL(sql).ref_id("A").format("table").datasource(ds)``."""

    def __init__(self, raw_sql: str) -> None:
        self._internal = SQLQuery(raw_sql=raw_sql)

    def build(self) -> SQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def format(self, fmt: Format) -> Self:
        self._internal.format = fmt
        return self

    def datasource(self, ds: DataSourceRef) -> Self:
        self._internal.datasource = ds
        return self

    def hide(self, hide: bool) -> Self:
        self._internal.hide = hide
        return self


def register() -> None:
    """Let ``Dashboard.from_json`` decode SQL targets as :class:`SQLQuery` (idempotent)."""
    for ident in (PG_PLUGIN_ID, "postgres"):
        cogruntime.register_dataquery_variant(
            cogruntime.DataqueryConfig(identifier=ident, from_json_hook=SQLQuery.from_json)
        )
