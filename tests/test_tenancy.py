"""Tenants (design §9): the API key decides the tenant; equal call ids of two tenants are two calls; a tenant's reader
role sees its tenant's rows only, in every relation it can read and in every dashboard; retention per tenant.

Real database, a real collector with auth required, real OTLP requests: the simulator's calls (identical for both
tenants: same call, trace and span ids) sent over gRPC, and one call per tenant with the same call id and a text of
its own (the marker) sent by the OpenTelemetry SDK's exporter.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from bench.grafana_emulator import render, variables_from_dashboard
from collector.simulate import generate_calls
from collector.server import Collector
from dashboards.generate import DashboardOptions, render_provisioning
from dashboards.sql import register
from storage.keys import create_key
from storage.retention import apply_tenant_retention
from storage.rollup import drain_rollups
from storage.tenants import create_tenant
from tests.conftest import collector_settings
from tests.otel_sdk import MS, SdkAgent
from tests.otlp_client import GrpcClient

SHARED = "shared-call"           # the call id every tenant sends, each with its own marker text
OLD = "old-call"                 # sent 10 days back by every tenant (retention)
SIMULATED = 6
START = (datetime.now(timezone.utc) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def _marker(tenant: str) -> str:
    return f"marker-of-{tenant}-{uuid.uuid4().hex[:8]}"


def _sdk_export(port: int, key: str, call_id: str, marker: str, start_ns: int) -> None:
    """A session span, an LLM span and a lifecycle log record of ``call_id`` carrying ``marker``, exported by the
    SDK's OTLP/gRPC exporters with the key."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    agent = SdkAgent("memory")
    with agent.span("call", start_ns, start_ns + 60_000 * MS,
                    {"call.id": call_id, "call.summary": f"summary {marker}", "call.agent": "tenant-agent",
                     "call.campaign": "spring"}) as root:
        with agent.span("llm", start_ns + 100 * MS, start_ns + 900 * MS,
                        {"call.id": call_id, "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
                         "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 5,
                         "note": marker}, parent=root):
            pass
        agent.event("call.answered", start_ns + 50 * MS, root, body=f"answered {marker}",
                    attributes={"call.id": call_id})
    headers = {"authorization": f"Bearer {key}"}
    endpoint = f"127.0.0.1:{port}"
    spans = OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=headers, timeout=10)
    logs = OTLPLogExporter(endpoint=endpoint, insecure=True, headers=headers, timeout=10)
    try:
        assert spans.export(list(agent.memory[0].get_finished_spans())).name == "SUCCESS"
        assert logs.export(list(agent.memory[1].get_finished_logs())).name == "SUCCESS"
    finally:
        spans.shutdown()
        logs.shutdown()


async def _send_simulated(port: int, key: str, calls: list) -> None:  # type: ignore[type-arg]
    client = GrpcClient(port, api_key=key)
    try:
        for call in calls:
            for request in (*call.trace_requests, *call.log_requests):
                await client.send(request)
    finally:
        await client.close()


async def _drop_role(admin: asyncpg.Connection, role: str) -> None:
    await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
    await admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest_asyncio.fixture
async def tenancy(database_url: str) -> AsyncIterator[SimpleNamespace]:
    """Tenants a and b (plus default), each with a key and a reader role, their telemetry stored and derived."""
    suffix = uuid.uuid4().hex[:6]
    names = {"a": f"ta{suffix}", "b": f"tb{suffix}"}
    admin = await asyncpg.connect(database_url)
    roles, keys, markers = {}, {}, {}
    for label, name in names.items():
        _, roles[label], _ = await create_tenant(admin, name, f"pw-{name}")
        _, keys[label], _ = await create_key(admin, name, "tests")
    _, keys["default"], _ = await create_key(admin, "default", "tests")
    running = Collector(collector_settings(database_url, auth="required", auth_refresh_s=0.2), run_migrations=False)
    await running.start()
    try:
        simulated = generate_calls(SIMULATED, seed=11, start=START)
        now_ns = int(datetime.now(timezone.utc).timestamp()) * 1_000_000_000
        for label in ("a", "b", "default"):
            tenant = names.get(label, "default")
            markers[label] = _marker(tenant)
            await _send_simulated(running.grpc.port, keys[label], simulated)
            await asyncio.to_thread(_sdk_export, running.grpc.port, keys[label], SHARED, markers[label],
                                    now_ns - 600_000 * MS)
            await asyncio.to_thread(_sdk_export, running.grpc.port, keys[label], OLD, markers[label] + "-old",
                                    now_ns - 10 * 86_400_000 * MS)
        await running.settle()
        await drain_rollups(admin)
        yield SimpleNamespace(db=admin, url=database_url, names=names, roles=roles, markers=markers,
                              simulated=simulated, collector=running)
    finally:
        await running.close(grace_s=1)
        for role in roles.values():
            await _drop_role(admin, role)
        await admin.close()


async def _as_role(t: SimpleNamespace, label: str) -> asyncpg.Connection:
    role = t.roles[label]
    base, _, database = t.url.rpartition("/")
    host = base.split("@", 1)[1]
    return await asyncpg.connect(f"postgresql://{role}:pw-{t.names[label]}@{host}/{database}")


async def test_equal_call_ids_of_two_tenants_are_two_calls(tenancy) -> None:
    t, db = tenancy, tenancy.db
    tenants = sorted([*t.names.values(), "default"])
    spans_sent = sum(call.span_count for call in t.simulated) + 2 * 2   # + the SDK's shared and old calls
    stored = {r["tenant"]: r["count"] for r in await db.fetch("SELECT tenant, count(*) FROM spans GROUP BY 1")}
    assert stored == {tenant: spans_sent for tenant in tenants}   # identical span ids, stored once per tenant
    for call in t.simulated:
        rows = await db.fetch("SELECT tenant, status, turn_count, tool_call_count, trace_ids, started_at, cost_total "
                              "FROM calls WHERE call_id = $1 ORDER BY tenant", call.call_id)
        assert [r["tenant"] for r in rows] == tenants, call.call_id
        assert len({repr(tuple(r.values())[1:]) for r in rows}) == 1, rows    # each tenant's call is the same call
        assert rows[0]["status"] == call.status
        if "turn_count" in call.expected:
            assert rows[0]["turn_count"] == call.expected["turn_count"]
    for table, key in (("turns", "turn_number"), ("events", "event_id"), ("tool_calls", "tool_call_id")):
        per_tenant = {}
        for tenant in tenants:
            per_tenant[tenant] = [tuple(r) for r in await db.fetch(
                f"SELECT call_id, {key} FROM {table} WHERE tenant = $1 AND call_id <> ALL($2::text[]) ORDER BY 1, 2",
                tenant, [SHARED, OLD])]
        assert per_tenant[tenants[0]], table
        assert all(rows == per_tenant[tenants[0]] for rows in per_tenant.values()), table
    shared = {r["tenant"]: r["summary"] for r in await db.fetch(
        "SELECT tenant, summary FROM calls WHERE call_id = $1", SHARED)}
    assert shared == {name: f"summary {t.markers[label]}" for label, name in (*t.names.items(),
                                                                            ("default", "default"))}
    events = {r["tenant"]: r["messages"] for r in await db.fetch(
        "SELECT tenant, array_agg(message ORDER BY message) AS messages FROM events "
        "WHERE call_id = $1 AND source = 'log' GROUP BY 1", SHARED)}
    assert events == {name: [f"answered {t.markers[label]}"] for label, name in (*t.names.items(),
                                                                               ("default", "default"))}


async def _readable(conn: asyncpg.Connection) -> list[tuple[str, bool]]:
    """Every relation of the schema the connection's role may SELECT, and whether it has a tenant column."""
    return [(r["name"], r["has_tenant"]) for r in await conn.fetch(
        "SELECT c.relname AS name, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
        "       AND a.attname = 'tenant' AND NOT a.attisdropped) AS has_tenant "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
        "  AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1")]


async def _visible(conn: asyncpg.Connection, relations: list[tuple[str, bool]]) -> dict[str, tuple[set, str]]:
    """relation → (its tenants, the text of all its rows), as the connection sees them."""
    seen = {}
    for name, has_tenant in relations:
        tenant = "x.tenant" if has_tenant else "NULL::text"
        rows = await conn.fetch(f'SELECT {tenant} AS tenant, row_to_json(x)::text AS row FROM "{name}" x')
        seen[name] = ({r["tenant"] for r in rows if has_tenant}, "\n".join(r["row"] for r in rows))
    return seen


async def test_a_tenant_role_sees_only_its_rows_in_every_relation_it_can_read(tenancy) -> None:
    t = tenancy
    conn = await _as_role(t, "a")
    try:
        # the reader group's settings were copied to the login role (PostgreSQL applies the login role's only)
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert await conn.fetchval("SHOW statement_timeout") == "1min"
        relations = await _readable(conn)
        names = {name for name, _ in relations}
        # the public tables, the views and the rollups the dashboards read are all readable (and checked)
        assert {"calls", "turns", "spans", "events", "tool_calls", "call_spans", "call_events", "latency_turns",
                "call_quality", "campaign_funnel", "turn_latency_1h", "call_status_1h", "event_counts_1m",
                "latency_stage_1m"} <= names
        assert not names & {"tenant_readers", "tenants", "api_keys", "dirty_calls", "call_quarantine"}

        async def check(label: str) -> None:
            visible = await _visible(conn, relations)
            for name, (tenants, text) in visible.items():
                assert tenants <= {t.names["a"]}, f"{label}: {name} shows tenants {tenants}"
                for other in ("b", "default"):
                    assert t.markers[other] not in text, f"{label}: {name} shows tenant {other}'s rows"
                assert t.names["b"] not in text, f"{label}: {name} names tenant b"
            # not vacuous: the tenant's own rows are there
            for name in ("calls", "spans", "events", "turns", "tool_calls", "call_spans", "latency_turns",
                         "turn_latency_1h", "call_status_1h", "event_counts_1m", "latency_stage_1h", "resources"):
                assert visible[name][0] == {t.names["a"]}, f"{label}: {name} shows none of the tenant's rows"
            assert t.markers["a"] in visible["calls"][1] and t.markers["a"] in visible["call_spans"][1]
            calls = await conn.fetch("SELECT call_id FROM calls")
            assert sorted(r[0] for r in calls) == sorted([c.call_id for c in t.simulated] + [SHARED, OLD]), label

        await check("plain")
        # settings a reader can change do not move the tenant (the policy reads no setting)
        for statement in (f"SET callscope.tenant = '{t.names['b']}'",
                          f"SELECT set_config('callscope.tenant', '{t.names['b']}', false)",
                          f"SET app.tenant = '{t.names['b']}'",
                          f"SET application_name = '{t.names['b']}'",
                          "SET search_path = pg_temp, public"):
            await conn.execute(statement)
        await check("after SET tricks")
        # the reader group is a role it may SET ROLE to: the tenant is its login's, still
        await conn.execute("SET ROLE callscope_reader")
        await check("after SET ROLE callscope_reader")
        await conn.execute("RESET ROLE")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f'SET ROLE "{t.roles["b"]}"')
        await conn.execute("RESET ALL")
        # row_security = off never shows more: a query that row-level security would filter fails instead
        await conn.execute("SET row_security = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM calls")
        await conn.execute("RESET row_security")
        # the owner's functions do not help either: they read what the caller may read
        rows = await conn.fetch("SELECT tenant, attributes FROM callscope_call_spans($1, $2)", SHARED, t.names["b"])
        assert rows == []
        assert {r["tenant"] for r in await conn.fetch("SELECT * FROM callscope_call_events($1)", SHARED)} \
            == {t.names["a"]}
    finally:
        await conn.close()


async def test_every_relation_with_a_tenant_has_row_level_security_and_every_view_runs_as_its_reader(db) -> None:
    tables = await db.fetch(
        "SELECT c.relname, c.relkind::text AS relkind, c.relrowsecurity, c.reloptions, "
        "       (SELECT array_agg(p.polname || ':' || pg_get_expr(p.polqual, p.polrelid)) FROM pg_policy p "
        "        WHERE p.polrelid = c.oid) AS policies "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm') "
        "  AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant')")
    by_kind = {kind: [r for r in tables if r["relkind"] == kind] for kind in ("r", "v", "m")}
    assert len(by_kind["r"]) >= 15 and len(by_kind["v"]) == 6 and not by_kind["m"]
    for row in by_kind["r"]:
        if row["relname"] in ("api_keys", "tenant_readers"):   # the reader cannot read them at all
            continue
        assert row["relrowsecurity"], row["relname"]
        assert row["policies"] == ["tenant_rows:(NOT (tenant IS DISTINCT FROM ( SELECT callscope_current_tenant() "
                                   "AS callscope_current_tenant)))"], row
    for row in by_kind["v"]:
        assert "security_invoker=true" in (row["reloptions"] or []), row["relname"]


async def test_the_plain_reader_reads_the_default_tenant(tenancy) -> None:
    """callscope_reader (a single-tenant install's Grafana login) reads as 'default'; an unmapped login reads
    nothing."""
    t, db = tenancy, tenancy.db
    await db.execute("SET SESSION AUTHORIZATION callscope_reader")
    try:
        assert {r[0] for r in await db.fetch("SELECT DISTINCT tenant FROM calls")} == {"default"}
        assert await db.fetchval("SELECT count(*) FROM calls WHERE summary = $1",
                                 f"summary {t.markers['default']}") == 1
        assert await db.fetchval("SELECT count(*) FROM spans WHERE attributes::text LIKE $1",
                                 f"%{t.markers['a']}%") == 0
    finally:
        await db.execute("RESET SESSION AUTHORIZATION")
    stranger = f"callscope_stranger_{uuid.uuid4().hex[:6]}"
    await db.execute(f'CREATE ROLE "{stranger}" IN ROLE callscope_reader')
    try:
        await db.execute(f'SET SESSION AUTHORIZATION "{stranger}"')
        assert await db.fetchval("SELECT count(*) FROM calls") == 0
        assert await db.fetchval("SELECT count(*) FROM latency_turns") == 0
    finally:
        await db.execute("RESET SESSION AUTHORIZATION")
        await db.execute(f'DROP ROLE "{stranger}"')


register()
BOARDS: dict[str, dict[str, Any]] = {
    json.loads(text)["uid"]: json.loads(text)
    for rel, text in render_provisioning(DashboardOptions()).items() if rel.endswith(".json")
}


def _panel_queries() -> list[tuple[str, str, dict, str]]:
    out = []
    for uid, board in sorted(BOARDS.items()):
        panels = [p for top in board["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("rawSql"):
                    out.append((uid, panel["title"], board, target["rawSql"]))
    return out


async def _dashboards(conn: asyncpg.Connection, frm: datetime, to: datetime) -> dict[tuple[str, str, str], list]:
    results = {}
    for uid, title, board, sql in _panel_queries():
        rendered = render(sql, variables=variables_from_dashboard(board, {"call_id": SHARED}), frm=frm, to=to,
                          interval=timedelta(minutes=5))
        rows = await conn.fetch(rendered)
        # floats to 9 digits: sums over rows read in another physical order differ in the last bits
        results[(uid, title, sql)] = [json.dumps([format(v, ".9g") if isinstance(v, float) else str(v)
                                                  for v in row.values()]) for row in rows]
    return results


async def test_dashboards_as_a_tenant_show_only_its_data(tenancy) -> None:
    """Every panel of every generated dashboard, rendered like Grafana and run as tenant a's role: nothing of
    tenant b; the same figures as tenant b gets from its identical traffic; not the figures of all tenants."""
    t = tenancy
    frm, to = START - timedelta(days=11), datetime.now(timezone.utc) + timedelta(minutes=5)
    views = {}
    for label in ("a", "b"):
        conn = await _as_role(t, label)
        try:
            views[label] = await _dashboards(conn, frm, to)
        finally:
            await conn.close()
    everyone = await _dashboards(t.db, frm, to)
    # what differs between the two tenants' identical traffic: the marker, the name, the SDK's random ids
    own_words = {}
    for label in ("a", "b"):
        ids = await t.db.fetch("SELECT DISTINCT trace_id, span_id FROM spans WHERE tenant = $1 AND call_id = ANY($2)",
                               t.names[label], [SHARED, OLD])
        events = await t.db.fetch("SELECT event_id FROM events WHERE tenant = $1 AND call_id = ANY($2)",
                                  t.names[label], [SHARED, OLD])
        own_words[label] = {t.markers[label]: "MARKER", t.names[label]: "TENANT",
                            **{r["trace_id"]: "TRACE" for r in ids}, **{r["span_id"]: "SPAN" for r in ids},
                            **{r["event_id"]: "EVENT" for r in events}}

    def neutral(label: str, rows: list[str]) -> list[str]:
        out = []
        for row in rows:
            for word, placeholder in own_words[label].items():
                row = row.replace(word, placeholder)
            out.append(row)
        return sorted(out)

    assert len(views["a"]) > 20
    differs = 0
    for panel, rows in views["a"].items():
        text = "\n".join(rows)
        assert t.markers["b"] not in text and t.markers["default"] not in text, panel[:2]
        assert t.names["b"] not in text, panel[:2]
        assert neutral("a", rows) == neutral("b", views["b"][panel]), panel[:2]
        differs += rows != everyone[panel]
    assert differs > len(views["a"]) // 3, "the owner's dashboards should show all tenants' data"
    shared_detail = [rows for (uid, _, _), rows in views["a"].items() if uid == "callscope-call-detail" and rows]
    assert shared_detail and any(t.markers["a"] in "\n".join(rows) for rows in shared_detail)


async def test_retention_deletes_only_that_tenants_old_rows(tenancy) -> None:
    t, db = tenancy, tenancy.db
    a, b = t.names["a"], t.names["b"]

    async def counts(tenant: str) -> dict[str, int]:
        return {table: await db.fetchval(f"SELECT count(*) FROM {table} WHERE tenant = $1 AND call_id = ANY($2)",
                                         tenant, ids)
                for table in ("calls", "spans", "events") for ids in ([OLD],)} | {
            "recent": await db.fetchval("SELECT count(*) FROM calls WHERE tenant = $1 AND call_id <> $2", tenant, OLD)}

    before = {tenant: await counts(tenant) for tenant in (a, b, "default")}
    assert before[a] == before[b] == before["default"] and before[a]["spans"] == 2 and before[a]["calls"] == 1
    await db.execute("UPDATE tenants SET retention_days = 5 WHERE name = $1", a)
    results = {r.tenant: r for r in await apply_tenant_retention(db)}
    assert set(results) == {a}
    assert (results[a].calls, results[a].spans) == (1, 2)
    after = {tenant: await counts(tenant) for tenant in (a, b, "default")}
    assert after[a] == {"calls": 0, "spans": 0, "events": 0, "recent": before[a]["recent"]}
    assert after[b] == before[b] and after["default"] == before["default"]
    # the rollups follow: the old call's hour no longer counts tenant a's call
    await drain_rollups(db)
    hour = await db.fetchval("SELECT date_bin('1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') "
                             "FROM calls WHERE tenant = $1 AND call_id = $2", b, OLD)
    per_tenant = {r["tenant"]: r["calls"] for r in await db.fetch(
        "SELECT tenant, sum(calls) AS calls FROM call_status_1h WHERE bucket = $1 GROUP BY 1", hour)}
    assert per_tenant == {b: 1, "default": 1}
    # and the deriver's housekeeping applies it by itself
    await db.execute("UPDATE tenants SET retention_days = 5 WHERE name = $1", b)
    await t.collector.settle()
    assert (await counts(b))["spans"] == 0 and (await counts("default"))["spans"] == 2
