"""Read the derived ledger back as comparable snapshots (for order-independence tests)."""

from __future__ import annotations

import asyncpg

_QUERIES = {
    "calls": "SELECT * FROM calls ORDER BY call_id",
    "turns": "SELECT * FROM turns ORDER BY call_id, turn_number",
    "tool_calls": "SELECT * FROM tool_calls ORDER BY call_id, tool_call_id",
    "spans": "SELECT trace_id, span_id, call_id, turn_number, stage FROM call_spans ORDER BY trace_id, span_id",
    "events": "SELECT time, event_id, call_id, event, level, category, source, turn_number FROM call_events "
              "ORDER BY event_id",
    "call_traces": "SELECT * FROM call_traces ORDER BY trace_id",
}
_VOLATILE = {"updated_at"}


async def snapshot(database_url: str) -> dict[str, list[dict]]:
    connection = await asyncpg.connect(database_url)
    try:
        return {
            table: [{k: v for k, v in dict(row).items() if k not in _VOLATILE} for row in await connection.fetch(sql)]
            for table, sql in _QUERIES.items()
        }
    finally:
        await connection.close()
