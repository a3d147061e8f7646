"""Storage: per-tenant retention — a tenant's rows older than its ``tenants.retention_days`` are deleted.

Run by the deriver's housekeeping (every ``RETENTION_EVERY_S`` and at every ``drain``), on plain PostgreSQL and
TimescaleDB alike. Only tenants with ``retention_days > 0`` are touched, and only their rows: spans and events by
their time, and the calls whose last telemetry is older than the cutoff together with everything derived from them
(turns, tool calls, the trace mapping, pending marks). The rollup buckets the deleted rows fed are marked, so the
next refresh recomputes them without those rows.

A tenant with ``retention_days`` NULL follows the collector's ``retention_days`` (a TimescaleDB chunk policy,
storage/migrate.py); that policy drops whole chunks, every tenant's rows at once, so on TimescaleDB it bounds
every tenant's retention from above.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

__all__ = ["RetentionResult", "RETENTION_EVERY_S", "apply_tenant_retention"]

#: How often the deriver applies retention (seconds).
RETENTION_EVERY_S = 600.0

_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
_STAGES = "'stt', 'llm', 'tts', 'tool'"

_DUE = ("SELECT name, now() - make_interval(days => retention_days) AS cutoff FROM tenants "
        "WHERE retention_days > 0 ORDER BY name")

# Each statement deletes one tenant's ($1) rows older than the cutoff ($2) and marks the rollup buckets they fed. The
# rows are found through their time or call id index; the tenant is a filter (IS NOT DISTINCT FROM: never an index
# condition, which without statistics could read all of a tenant's rows).
_CALLS = f"""
WITH gone AS (
    DELETE FROM calls WHERE started_at < $2 AND coalesce(last_seen_at, started_at) < $2
      AND tenant IS NOT DISTINCT FROM $1
    RETURNING call_id, started_at
), marks AS (
    INSERT INTO call_rollup_dirty (bucket)
    SELECT DISTINCT date_bin('1 hour', started_at, {_ORIGIN}) FROM gone WHERE started_at IS NOT NULL
)
SELECT coalesce(array_agg(call_id), '{{}}') FROM gone
"""
_TURNS = f"""
WITH gone AS (
    DELETE FROM turns WHERE call_id = ANY($2::text[]) AND tenant IS NOT DISTINCT FROM $1 RETURNING started_at
), marks AS (
    INSERT INTO turn_rollup_dirty (bucket)
    SELECT DISTINCT date_bin('1 minute', started_at, {_ORIGIN}) FROM gone WHERE started_at IS NOT NULL
)
SELECT count(*) FROM gone
"""
_CALL_ROWS = (
    "DELETE FROM tool_calls WHERE call_id = ANY($2::text[]) AND tenant IS NOT DISTINCT FROM $1",
    "DELETE FROM call_traces WHERE call_id = ANY($2::text[]) AND tenant IS NOT DISTINCT FROM $1",
    "DELETE FROM dirty_calls WHERE call_id = ANY($2::text[]) AND tenant IS NOT DISTINCT FROM $1",
    "DELETE FROM call_quarantine WHERE call_id = ANY($2::text[]) AND tenant IS NOT DISTINCT FROM $1",
)
_SPANS = f"""
WITH gone AS (
    DELETE FROM spans WHERE start_time < $2 AND tenant IS NOT DISTINCT FROM $1 RETURNING start_time, stage
), marks AS (
    INSERT INTO stage_rollup_dirty (bucket)
    SELECT DISTINCT date_bin('1 minute', start_time, {_ORIGIN}) FROM gone WHERE stage IN ({_STAGES})
)
SELECT count(*) FROM gone
"""
_EVENTS = f"""
WITH gone AS (
    DELETE FROM events WHERE time < $2 AND tenant IS NOT DISTINCT FROM $1 RETURNING time
), marks AS (
    INSERT INTO event_rollup_dirty (bucket) SELECT DISTINCT date_bin('1 minute', time, {_ORIGIN}) FROM gone
)
SELECT count(*) FROM gone
"""


@dataclass(frozen=True, slots=True)
class RetentionResult:
    tenant: str
    calls: int
    turns: int
    spans: int
    events: int


async def apply_tenant_retention(connection: asyncpg.Connection) -> list[RetentionResult]:
    """Delete, per tenant with a retention, its rows older than that; one transaction per tenant."""
    results = []
    for due in await connection.fetch(_DUE):
        tenant, cutoff = due["name"], due["cutoff"]
        async with connection.transaction():
            calls = list(await connection.fetchval(_CALLS, tenant, cutoff))
            turns = await connection.fetchval(_TURNS, tenant, calls) if calls else 0
            if calls:
                for statement in _CALL_ROWS:
                    await connection.execute(statement, tenant, calls)
            spans = await connection.fetchval(_SPANS, tenant, cutoff)
            events = await connection.fetchval(_EVENTS, tenant, cutoff)
        results.append(RetentionResult(tenant, len(calls), int(turns), int(spans), int(events)))
    return results
