"""Every statement of the write and derive path reaches rows through an index on tables that were never analyzed.

Autovacuum may be off and a fresh TimescaleDB chunk has no statistics anywhere, so a plan that is right only
after ANALYZE is wrong in production. The tables here are large enough that a sequential scan would cost the
whole table per batch, and are never analyzed; the statements are planned the way the routines run them
(seq scans and JIT off inside ``callscope_write_staged`` / ``callscope_derive``; the statements name the
routines they call by this release's versioned names, as installed).
"""

from __future__ import annotations

import json
import re
from typing import AsyncIterator

import asyncpg
import pytest_asyncio

from conftest import drop_database, new_database, url_for
from storage import deriver, writer
from storage.routines import versioned_sql

STORED = ("spans", "events", "calls", "turns", "tool_calls", "call_traces", "dirty_calls", "call_quarantine")
_SEQ_SCAN = re.compile(r"Seq Scan on (" + "|".join(STORED) + r"|_hyper_\w+)\b")
CALLS = 3000
SPANS_PER_CALL = 30


async def _fill(connection: asyncpg.Connection, first: int, last: int) -> None:
    """Calls ``first`` … ``last``: a span naming each call, the others stored under its trace id, events, turns."""
    await connection.execute(
        """
        INSERT INTO spans (start_time, end_time, duration_ms, trace_id, span_id, call_id, call_id_explicit,
                           turn_number, stage, name, kind, status_code, framework, attributes, facts)
        SELECT now() - make_interval(secs => c * 10 + s), now() - make_interval(secs => c * 10 + s - 1), 1000,
               md5('t' || c), left(md5('s' || c || '-' || s), 16),
               CASE WHEN s = 1 THEN 'call-' || c ELSE md5('t' || c) END, s = 1, s / 5 + 1,
               (ARRAY['stt', 'llm', 'tts', 'tool', 'turn'])[1 + s % 5], 'span', 1, 0, 'native', '{}'::jsonb,
               '{"turn_explicit": true}'::jsonb
        FROM generate_series($1::int, $2::int) AS c, generate_series(1, $3::int) AS s
        """, first, last, SPANS_PER_CALL)
    await connection.execute(
        """
        INSERT INTO events (time, event_id, call_id, trace_id, span_id, category, event, level, source)
        SELECT now() - make_interval(secs => c * 10 + s), md5('e' || c || '-' || s), md5('t' || c), md5('t' || c),
               left(md5('s' || c || '-' || s), 16), 'agent', 'agent.message_sent', 'INFO', 'derived'
        FROM generate_series($1::int, $2::int) AS c, generate_series(1, 10) AS s
        """, first, last)
    await connection.execute("INSERT INTO call_traces SELECT md5('t' || c), 'call-' || c "
                             "FROM generate_series($1::int, $2::int) AS c", first, last)
    await connection.execute("INSERT INTO calls (call_id, status, last_seen_at) SELECT 'call-' || c, 'active', now() "
                             "FROM generate_series($1::int, $2::int) AS c", first, last)
    await connection.execute("INSERT INTO turns (call_id, turn_number) SELECT 'call-' || c, t "
                             "FROM generate_series($1::int, $2::int) AS c, generate_series(1, 6) AS t", first, last)
    await connection.execute("INSERT INTO tool_calls (call_id, tool_call_id, tool_name, trace_id, span_id) "
                             "SELECT md5('t' || c), 'tool-' || c, 'lookup', md5('t' || c), 'x' "
                             "FROM generate_series($1::int, $2::int) AS c", first, last)



@pytest_asyncio.fixture(scope="module")
async def unanalyzed(template_database: str) -> AsyncIterator[asyncpg.Connection]:
    name = await new_database(template_database, prefix="callscope_plans")
    connection = await asyncpg.connect(url_for(name))
    await _fill(connection, 1, CALLS)
    await connection.execute("INSERT INTO dirty_calls (call_id) SELECT 'call-' || (c % 500) "
                             "FROM generate_series(1, $1::int) AS c", CALLS * 5)
    await connection.execute("INSERT INTO call_quarantine (call_id, error, retry_at) "
                             "SELECT 'call-' || c, 'x', now() + interval '1 hour' FROM generate_series(1, $1::int) c",
                             CALLS)
    for statement in writer._STAGING:
        await connection.execute(statement)
    await connection.execute(deriver._WORK_TABLES)
    yield connection
    await connection.close()
    await drop_database(name)


_SCAN = re.compile(r"(Index Scan|Index Only Scan|Bitmap Index Scan)( Backward)? (using|on) (\S+)( on (\S+))?")


# Index conditions list the index's columns in order, and no index of the stored tables leads with the tenant: a
# condition that starts with it leaves the first column open (a scan of all of a tenant's rows).
_TENANT_FIRST = re.compile(r"Index Cond: \(+(?:\w+\.)?tenant\b")


def _full_scans(plan: str) -> list[str]:
    """Sequential scans of stored tables, and index scans that read a whole index (no Index Cond) other than an
    ordered read under a Limit (the mark queue is read oldest first, a claim's worth of rows)."""
    lines = plan.splitlines()
    found = [line.strip() for line in lines if _SEQ_SCAN.search(line)]
    for index, line in enumerate(lines):
        match = _SCAN.search(line)
        if not match:
            continue
        # "Index Scan using <index> on <table>", "Bitmap Index Scan on <index>" (our indexes start with the table)
        name = match.group(6) or match.group(4)
        if not (name.startswith("_hyper_") or any(name == t or name.startswith(t + "_") for t in STORED)):
            continue   # work tables hold the rows of a few calls
        depth = len(line) - len(line.lstrip())
        details = []
        for following in lines[index + 1:]:
            if following.strip().startswith("->") or len(following) - len(following.lstrip()) <= depth:
                break
            details.append(following)
        if not any("Index Cond" in detail for detail in details) and not _under_limit(lines, index):
            found.append(line.strip())
        # the tenant without the id before it in the key reads all of a tenant's rows: as bad as no condition
        if any(_TENANT_FIRST.match(detail.strip()) for detail in details):
            found.append(line.strip())
    return found


def _under_limit(lines: list[str], index: int) -> bool:
    depth = len(lines[index]) - len(lines[index].lstrip(" ->"))
    for line in reversed(lines[:index]):
        line_depth = len(line) - len(line.lstrip(" ->"))
        if line_depth < depth and line.strip(" ->").split("  ")[0] in ("Limit", "LockRows"):
            return True
        if line_depth < depth and "Scan" in line:
            return False
    return False


async def _plan(connection: asyncpg.Connection, sql: str, *args: object) -> str:
    async with connection.transaction():
        await connection.execute("SET LOCAL enable_seqscan = off")
        await connection.execute("SET LOCAL jit = off")
        rows = await connection.fetch("EXPLAIN " + sql, *args)
    return "\n".join(row[0] for row in rows)


def _without_into(sql: str) -> str:
    """A routine's ``SELECT … INTO variables FROM`` as the plain query it plans."""
    return re.sub(r"\bINTO [\w, ]+ FROM\b", "FROM", sql)


async def test_no_statistics_on_the_big_tables(unanalyzed: asyncpg.Connection) -> None:
    analyzed = await unanalyzed.fetchval(
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = ANY($1::text[])", list(STORED))
    assert analyzed == 0
    assert await unanalyzed.fetchval("SELECT count(*) FROM spans") == CALLS * SPANS_PER_CALL


async def test_write_statements_use_indexes(unanalyzed: asyncpg.Connection) -> None:
    planned = ("learn_traces", "store_resources", "insert_spans", "insert_events", "upsert_tools")
    assert set(planned) | {"mark_calls"} == set(writer.WRITE_STATEMENTS)   # mark_calls: PL/pgSQL, inserts only
    for name in planned:
        plan = await _plan(unanalyzed, _without_into(writer.WRITE_STATEMENTS[name]))
        assert not _full_scans(plan), f"{name}:\n{plan}"


def _column_list(sql: str, table: str) -> tuple[str, ...]:
    match = re.search(rf"INSERT INTO {table}(?: AS \w+)? \(([^)]*)\)", sql)
    assert match, table
    return tuple(column.strip() for column in match.group(1).split(","))


def test_the_write_routine_stores_every_field_of_the_records() -> None:
    """storage/write.sql spells the columns out; a field added to a record must be stored too (or be declared
    staged-only in storage/writer.py, like the tenant until its column exists)."""
    statements = writer.WRITE_STATEMENTS

    def stored(columns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(column for column in columns if column not in writer.STAGED_ONLY)
    assert _column_list(statements["insert_spans"], "spans") == stored(writer.SPAN_COLUMNS)
    assert _column_list(statements["insert_events"], "events") == stored(writer.EVENT_COLUMNS)
    assert _column_list(statements["upsert_tools"], "tool_calls") == stored(writer.TOOL_COLUMNS)


async def test_derive_statements_touch_only_the_claimed_calls_through_indexes(unanalyzed: asyncpg.Connection) -> None:
    claimed = "'{call-7,call-8," + "0" * 32 + "}'::text[]"
    for name, sql in deriver.DERIVE_STATEMENTS:
        plan = await _plan(unanalyzed, versioned_sql(sql).replace("$1::text[]", claimed).replace("$2", "'default'::text"))
        assert not _full_scans(plan), f"{name}:\n{plan}"


async def test_claim_and_quarantine_statements_use_indexes(unanalyzed: asyncpg.Connection) -> None:
    checks = (
        ("claim", deriver._CLAIM, (200, deriver._SLOT_MASK)),
        ("quarantine", deriver._QUARANTINE, ("call-1", "boom", 5.0, 600.0, "default")),
        ("release", deriver._RELEASE, (["call-1", "call-2"], "default")),
        ("retry_due", deriver._RETRY_DUE, (1000, 600.0)),
        ("mark_stale", deriver._MARK_STALE, (300.0,)),
    )
    for name, sql, args in checks:
        plan = await _plan(unanalyzed, sql, *args)
        assert not _full_scans(plan), f"{name}:\n{plan}"


async def test_reading_one_call_uses_indexes(unanalyzed: asyncpg.Connection) -> None:
    for function in ("callscope_call_spans", "callscope_call_events"):
        plan = await _plan(unanalyzed, f"SELECT * FROM {function}('call-7')")
        assert not _full_scans(plan), f"{function}:\n{plan}"


async def _derive_buffers(connection: asyncpg.Connection, claimed: list[str]) -> dict[str, int]:
    """Shared buffers each derive statement touches for ``claimed``, run in order and rolled back."""
    touched = {}
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute("SET LOCAL enable_seqscan = off; SET LOCAL jit = off")
        await connection.execute(deriver._WORK_TABLES)
        for name, sql in deriver.DERIVE_STATEMENTS:
            args = [claimed] if "$1" in sql else []
            plan = json.loads(await connection.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                                                        + versioned_sql(sql).replace("$2", "'default'::text"),
                                                        *args))
            top = plan[0]["Plan"]
            touched[name] = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    finally:
        await transaction.rollback()
    return touched


async def test_derive_work_does_not_grow_with_the_tables(unanalyzed: asyncpg.Connection) -> None:
    """The same calls cost the same buffers whether the tables hold N or 4 N other calls' rows."""
    claimed = ["call-7", "call-8", "call-9", md5_of("t10")]
    before = await _derive_buffers(unanalyzed, claimed)
    await _fill(unanalyzed, CALLS + 1, 4 * CALLS)
    after = await _derive_buffers(unanalyzed, claimed)
    grown = {name: (before[name], after[name]) for name in before
             if after[name] > 1.5 * before[name] + 64}    # a deeper btree is fine, a scan of the new rows is not
    assert not grown, grown


def md5_of(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()


def test_the_plan_check_finds_full_scans() -> None:
    assert _full_scans("Seq Scan on spans  (cost=1)")
    assert _full_scans("->  Index Scan using call_traces_pkey on call_traces k  (cost=1)\n"
                       "      Filter: (call_id = ids.call_id)")
    assert not _full_scans("->  Index Scan using calls_pkey on calls c  (cost=1)\n"
                           "      Index Cond: (call_id = t.call_id)")
    assert not _full_scans("Limit  (cost=1)\n  ->  LockRows  (cost=1)\n"
                           "        ->  Index Scan using dirty_calls_pkey on dirty_calls  (cost=1)")
