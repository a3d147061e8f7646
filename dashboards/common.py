"""Shared pieces of the generated dashboards: data source reference, variables, links, grid layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.fragments import ALL_VALUE
from dashboards.sql import PG_PLUGIN_ID, SQL

__all__ = [
    "DASHBOARD_UIDS",
    "Layout",
    "call_link",
    "datasource_ref",
    "datasource_variable",
    "multi_custom_variable",
    "multi_query_variable",
    "sql_target",
]

#: Stable dashboard uids (links, provisioning, alert annotations point at them).
DASHBOARD_UIDS = {
    "calls": "callscope-calls",
    "call_detail": "callscope-call-detail",
    "latency": "callscope-latency",
    "events": "callscope-events",
    "quality": "callscope-quality",
    "campaigns": "callscope-campaigns",
}
TAGS = ["callscope", "voice", "generated"]

#: Dashboards pick their data source through this variable (default: the provisioned one).
DS_VAR = "datasource"


def datasource_ref() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val=PG_PLUGIN_ID, uid=f"${{{DS_VAR}}}")


def datasource_variable(default_name: str, default_uid: str) -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable(DS_VAR)
        .label("Data source")
        .type(PG_PLUGIN_ID)
        .current(dm.VariableOption(selected=True, text=default_name, value=default_uid))
    )


def sql_target(sql: str, fmt: Literal["table", "time_series"] = "table", ref_id: str = "A") -> SQL:
    return SQL(sql).ref_id(ref_id).format(fmt).datasource(datasource_ref())


def _all_option() -> dm.VariableOption:
    return dm.VariableOption(selected=True, text=["All"], value=["$__all"])


def multi_query_variable(name: str, label: str, query: str) -> dash.QueryVariable:
    """A multi-value SQL variable with "All" = ``'__all'`` (see ``fragments.multi_filter``)."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(datasource_ref())
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL_VALUE)
        .current(_all_option())
    )


def multi_custom_variable(name: str, label: str, values: tuple[str, ...]) -> dash.CustomVariable:
    var = (
        dash.CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .multi(True)
        .current(_all_option())
    )
    var._internal.include_all = True  # the SDK's CustomVariable builder has no include_all/all_value setters
    var._internal.all_value = ALL_VALUE
    return var


def call_link(field_name: str = "call_id") -> dm.DynamicConfigValue:
    """Field data link from a call id cell to the Call detail dashboard, keeping the time range."""
    uid = DASHBOARD_UIDS["call_detail"]
    return dm.DynamicConfigValue(
        id_val="links",
        value=[
            {
                "title": "Open call ${__data.fields.%s}" % field_name,
                "url": f"/d/{uid}/{uid}?var-call_id=${{__data.fields.{field_name}:percentencode}}"
                f"&${{__url_time_range}}&${{{DS_VAR}:queryparam}}",
                "targetBlank": False,
            }
        ],
    )


def unit(value: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="unit", value=value)


def cell_type(kind: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": kind})


def status_mappings() -> list[dm.ValueMapping]:
    colours = {
        "queued": ("Queued", "purple"),
        "ringing": ("Ringing", "blue"),
        "active": ("Active", "yellow"),
        "completed": ("Completed", "green"),
        "failed": ("Failed", "red"),
        "declined": ("Declined", "orange"),
        "missed": ("Missed", "dark-orange"),
    }
    return [
        dm.ValueMap(
            options={
                key: dm.ValueMappingResult(text=text, color=colour, index=i)
                for i, (key, (text, colour)) in enumerate(colours.items())
            }
        )
    ]


def json_transformation(*fields: str) -> dm.DataTransformerConfig:
    """``convertFieldType → other``: JSON text columns become arrays/objects in the browser (traces, logs)."""
    return dm.DataTransformerConfig(
        id_val="convertFieldType",
        options={
            "fields": {},
            "conversions": [{"targetField": f, "destinationType": "other"} for f in fields],
        },
    )


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


@dataclass
class Layout:
    """Places panels left to right on the 24-column grid and gives each a stable id, in call order."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1
    items: list[Any] = field(default_factory=list)

    def add(self, panel: cogbuilder.Builder[Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel.id(self.next_id).grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y))
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        self.items.append(("panel", panel))

    def newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        if self.x or self.row_height:
            self.newline()
        row = dash.Row(title).id(self.next_id).grid_pos(dm.GridPos(h=1, w=24, x=0, y=self.y))
        self.next_id += 1
        self.y += 1
        self.items.append(("row", row))

    def apply(self, board: dash.Dashboard) -> dash.Dashboard:
        for kind, item in self.items:
            board = board.with_row(item) if kind == "row" else board.with_panel(item)
        return board


def base_dashboard(key: str, title: str, description: str) -> dash.Dashboard:
    uid = DASHBOARD_UIDS[key]
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("Callscope")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["callscope"])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
    )
