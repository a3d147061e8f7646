"""A port of how Grafana turns a PostgreSQL panel's ``rawSql`` into the SQL it runs, for tests.

Two stages, in Grafana's order (docs/dashboards.md and ../shared/research/grafana.md §3):

1. Front end, ``templateSrv.replace(rawSql, scopedVars, SqlDatasource.interpolateVariable)``
   (grafana/grafana ``public/app/features/templating/template_srv.ts``,
   ``packages/grafana-sql/src/datasource/SqlDatasource.ts``): ``$var``, ``${var}``, ``[[var]]``,
   ``${var:format}``; a single-value variable has ``'`` doubled and no quotes, a multi-value or include-All
   variable is a list of quoted literals, "All" is every option quoted, or a custom all value inserted raw.
   Names that are not variables (``$__timeFilter`` …) are left alone.
2. Back end (``pkg/tsdb/grafana-postgresql-datasource/macros.go``, ``sqleng/sql_engine.go``):
   ``$__interval_ms``, ``$__interval``, ``$__unixEpochFrom()``, ``$__unixEpochTo()`` by plain replacement, then
   every ``$__macro(args)`` (regex ``\\$([_a-zA-Z0-9]+)\\(([^\\)]*)\\)``). Times are UTC RFC 3339 (nano).
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

__all__ = [
    "ALL",
    "MacroError",
    "Variable",
    "expand_macros",
    "format_interval",
    "interpolate_variables",
    "parse_interval",
    "render",
    "variables_from_dashboard",
]

#: The value Grafana stores for the "All" option.
ALL = "$__all"

# What ``render`` assumes for the data source's ``timescaledb`` option when a caller does not say: the test
# session sets it to whether the server under test has TimescaleDB (tests/conftest.py), like a data source
# provisioned for that server (``$__timeGroup`` becomes ``time_bucket`` there).
SERVER_HAS_TIMESCALEDB = False


class MacroError(ValueError):
    """An unknown macro or bad macro arguments (Grafana answers the query with an error)."""


@dataclass(frozen=True)
class Variable:
    """A dashboard variable and its current value (a list for multi-value variables)."""

    name: str
    value: str | Sequence[str]
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    #: The variable's options (without "All"): what "All" expands to without a custom all value.
    options: Sequence[str] = field(default_factory=tuple)

    @property
    def is_all(self) -> bool:
        v = self.value
        return v == ALL or (not isinstance(v, str) and list(v) == [ALL])


# ---------------------------------------------------------------------------------------------------------
# Stage 1: template variables
# ---------------------------------------------------------------------------------------------------------

# template_srv.ts: variableRegex
_VAR_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def _quote_literal(value: str) -> str:
    # PostgresQueryModel.quoteLiteral
    return "'" + str(value).replace("'", "''") + "'"


def _sql_interpolate(value: str | list[str], var: Variable) -> str:
    """SqlDatasource.interpolateVariable (used when no explicit format is given)."""
    if isinstance(value, str):
        if var.multi or var.include_all:
            return _quote_literal(value)
        return value.replace("'", "''")
    return ",".join(_quote_literal(v) for v in value)


def _format(value: str | list[str], fmt: str, var: Variable) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "raw":
        return value if isinstance(value, str) else ",".join(values)
    if fmt == "json":
        return json.dumps(value, separators=(",", ":"))
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "text":
        return " + ".join(values)
    if fmt == "percentencode":
        return urllib.parse.quote(",".join(values) if len(values) > 1 else values[0], safe="-_.!~*'()")
    if fmt == "queryparam":
        return "&".join(f"var-{var.name}={urllib.parse.quote(v, safe='')}" for v in values)
    if fmt == "regex":
        escaped = [re.sub(r"[\\^$*+?.()|{}\[\]/]", lambda m: "\\" + m.group(0), v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    raise ValueError(f"unsupported variable format {fmt!r}")


def _value_of(var: Variable, fmt: str | None) -> str:
    if var.is_all:
        if var.all_value is not None and fmt not in ("text", "percentencode"):
            return var.all_value  # custom all value: inserted raw
        value: str | list[str] = list(var.options)
    else:
        value = var.value if isinstance(var.value, str) else list(var.value)
    if fmt is None:
        return _sql_interpolate(value, var)
    return _format(value, fmt, var)


def interpolate_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """templateSrv.replace with the SQL data source's interpolation function."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if m.group(5):
            raise ValueError(f"field paths are not supported: {m.group(0)}")
        var = variables.get(name)
        if var is None:
            return m.group(0)  # not a variable: a macro or a built-in, left for the back end
        return _value_of(var, fmt)

    return _VAR_RE.sub(repl, sql)


# ---------------------------------------------------------------------------------------------------------
# Stage 2: back-end macros
# ---------------------------------------------------------------------------------------------------------

_MACRO_RE = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_INTERVAL_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M|y)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval for the forms dashboards use (``5m``, ``'30s'``, ``1h``)."""
    m = _INTERVAL_RE.match(text.strip().strip("'\""))
    if not m:
        raise MacroError(f"error parsing interval {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit."""
    ms = int(interval / timedelta(milliseconds=1))
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _rfc3339nano(t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _go_float(x: float) -> str:
    # fmt %v of a float64: integers print without a decimal point
    return str(int(x)) if float(x).is_integer() else repr(x)


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _epoch_ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _macro(name: str, args: list[str], *, frm: datetime, to: datetime, timescaledb: bool) -> str:
    def need(n: int) -> None:
        if len(args) < n or any(not a for a in args[:n]):
            raise MacroError(f"missing time column argument for macro {name}")

    if name == "__time":
        need(1)
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        need(1)
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        need(1)
        return f"{args[0]} BETWEEN '{_rfc3339nano(frm)}' AND '{_rfc3339nano(to)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339nano(frm)}'"
    if name == "__timeTo":
        return f"'{_rfc3339nano(to)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        seconds = parse_interval(args[1]).total_seconds()
        if len(args) == 3 and args[2] not in ("NULL", "null", "previous") and not _is_number(args[2]):
            raise MacroError(f"error parsing fill value {args[2]}")
        if timescaledb:
            out = f"time_bucket('{seconds:.3f}s',{args[0]})"
        else:
            out = f"floor(extract(epoch from {args[0]})/{_go_float(seconds)})*{_go_float(seconds)}"
        return out + ' AS "time"' if name == "__timeGroupAlias" else out
    if name == "__unixEpochFilter":
        need(1)
        return f"{args[0]} >= {_epoch(frm)} AND {args[0]} <= {_epoch(to)}"
    if name == "__unixEpochNanoFilter":
        need(1)
        return f"{args[0]} >= {_epoch_ns(frm)} AND {args[0]} <= {_epoch_ns(to)}"
    if name == "__unixEpochNanoFrom":
        return str(_epoch_ns(frm))
    if name == "__unixEpochNanoTo":
        return str(_epoch_ns(to))
    if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        seconds = parse_interval(args[1]).total_seconds()
        out = f"floor(({args[0]})/{_go_float(seconds)})*{_go_float(seconds)}"
        return out + ' AS "time"' if name == "__unixEpochGroupAlias" else out
    raise MacroError(f"unknown macro {name!r}")


def _is_number(text: str) -> bool:
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


def expand_macros(sql: str, *, frm: datetime, to: datetime, interval: timedelta, timescaledb: bool = False) -> str:
    """sqleng.Interpolate followed by the PostgreSQL macro engine."""
    sql = sql.replace("$__interval_ms", str(int(interval / timedelta(milliseconds=1))))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(_epoch(frm)))
    sql = sql.replace("$__unixEpochTo()", str(_epoch(to)))

    def repl(m: re.Match[str]) -> str:
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        return _macro(m.group(1), args, frm=frm, to=to, timescaledb=timescaledb)

    return _MACRO_RE.sub(repl, sql)


def render(
    sql: str,
    *,
    variables: Mapping[str, Variable],
    frm: datetime,
    to: datetime,
    interval: timedelta = timedelta(minutes=1),
    timescaledb: bool | None = None,
) -> str:
    """What Grafana sends to PostgreSQL for a panel target's ``rawSql`` (``timescaledb``: the data source
    option; default: whether the server under test has TimescaleDB)."""
    if timescaledb is None:
        timescaledb = SERVER_HAS_TIMESCALEDB
    return expand_macros(interpolate_variables(sql, variables), frm=frm, to=to, interval=interval,
                         timescaledb=timescaledb)


# ---------------------------------------------------------------------------------------------------------
# Variables of a generated dashboard
# ---------------------------------------------------------------------------------------------------------


def variables_from_dashboard(
    board: Mapping[str, Any],
    values: Mapping[str, str | Sequence[str]] | None = None,
    options: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Variable]:
    """The dashboard's variables with the given values (default: the variable's ``current``, or All).

    ``options`` gives query variables their option list (Grafana computes it by running the variable query);
    custom variables split their ``query`` on commas.
    """
    values = dict(values or {})
    options = dict(options or {})
    out: dict[str, Variable] = {}
    for raw in board.get("templating", {}).get("list", []):
        name = raw["name"]
        kind = raw.get("type")
        opts: Sequence[str] = options.get(name, ())
        if kind == "custom" and not opts:
            opts = [o.strip() for o in str(raw.get("query", "")).split(",") if o.strip()]
        if name in values:
            value = values[name]
        elif raw.get("current") and raw["current"].get("value") not in (None, ""):
            value = raw["current"]["value"]
        elif kind == "textbox":
            value = str(raw.get("query", ""))
        else:
            value = ALL if raw.get("includeAll") else (opts[0] if opts else "")
        multi = bool(raw.get("multi"))
        if multi and isinstance(value, str):
            value = [value]
        out[name] = Variable(name=name, value=value, multi=multi, include_all=bool(raw.get("includeAll")),
                             all_value=raw.get("allValue") or None, options=tuple(opts))
    return out
