"""Growth series for ``python -m bench.ingest --rounds N``: N rounds into ONE database, measured per round.

Each round sends ``--round-spans`` spans of new calls (a different simulator seed per round, so new call and
trace ids and the tables grow), then waits until the derive backlog is empty, and reports per round:

* committed spans/s: spans whose Export returned OK / (last OK − first send);
* PostgreSQL CPU µs per span: utime + stime of all server processes (postmaster, its children, and the
  children it reaped during the round, via the postmaster's cutime / cstime) from /proc, delta from the
  round's start until its derive backlog drained, minus the live backends of other databases
  (pg_stat_activity.datname; the server may be shared), divided by the round's spans;
* WAL bytes per span: ``pg_wal_lsn_diff`` of ``pg_current_wal_lsn()`` over the same window;
* derivation lag: seconds from the round's last OK until the backlog query returns 0;
* table sizes (spans rows, ``pg_total_relation_size`` of spans / events), collector RSS;
* the COPY ceiling of the round (see ``_ceiling``).

Client memory is bounded: requests are generated and encoded per round, 1,000 calls at a time (only the
encoded bytes of one round are held), and the ceiling maps and copies them 10 requests at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.harness import authorization, collector_for, draw_span_progress
from collector.cost import PriceTable
from collector.otlp.codec import iter_spans, parse_traces
from collector.pipeline import map_spans
from collector.simulate import encode_requests, generate_calls
from storage.records import SpanRow, columns_of

__all__ = ["run_growth", "RoundResult"]

_TICK = os.sysconf("SC_CLK_TCK")
_COPY_CHUNK = 5000
_BODIES_PER_CEILING_CHUNK = 10          # 10 requests ≈ 5,000 rows mapped and copied at a time
_SPANS_PER_CALL_GUESS = 17.4            # simulator average, refined after each round
_CALLS_PER_CHUNK = 1000                 # calls generated at once (~100 MB of protobuf objects)


# ------------------------------------------------------------------------------------------------ /proc

def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime + stime, cutime + cstime) in clock ticks, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()        # rest[0] is field 3 (state)
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def _machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]                      # idle + iowait
    total = sum(values[:8])                           # guest time is already in user
    return total - idle, total


class ServerCpu:
    """CPU time of one PostgreSQL server: postmaster + children + reaped children, from /proc."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    @classmethod
    def find(cls, backend_pid: int) -> "ServerCpu | None":
        """The server of ``backend_pid`` (our own connection's backend): its parent is the postmaster."""
        stat = _stat(backend_pid)
        candidates = []
        if stat is not None:
            candidates.append(stat[0])
        try:  # e.g. the backend is in another pid namespace: any postgres process whose parent is not one
            out = subprocess.run(["pgrep", "-u", "postgres", "-x", "postgres"], capture_output=True, text=True,
                                 timeout=5).stdout.split()
            pids = {int(p) for p in out}
            candidates += [p for p in pids if (s := _stat(p)) is not None and s[0] not in pids]
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        for pid in candidates:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("postgres") or comm.startswith("postmaster"):
                return cls(pid)
        return None

    def sample(self) -> dict[int, int]:
        """{pid: utime+stime ticks} of the postmaster's live children, plus key -1: postmaster own +
        reaped children (a child that exits mid-round moves its full lifetime there)."""
        out: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat is not None and stat[0] == self.postmaster:
                    out[int(entry)] = stat[1]
        own = _stat(self.postmaster)
        out[-1] = 0 if own is None else own[1] + own[2]
        return out


def _proc_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1] + stat[2]


def _rss_mib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------------ backlog

class Backlog:
    """How many derive marks are pending. ``sql`` first; if its table is missing, a table named like
    %dirty%; if there is none, quiescence: for ``quiet_s``, no other active backend in the database and no
    change in its rows inserted / updated / deleted (pg_stat_database; not WAL, which is cluster-wide)."""

    def __init__(self, sql: str, quiet_s: float) -> None:
        self.sql = sql
        self.quiet_s = quiet_s
        self.source = sql
        self._resolved = False

    async def resolve(self, connection: asyncpg.Connection) -> None:
        if self._resolved:
            return
        self._resolved = True
        try:
            await connection.fetchval(self.sql)
            return
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
            sys.stderr.write(f"backlog query failed ({exc}); looking for a %dirty% table\n")
        rows = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name ILIKE '%dirty%' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY table_name")
        if rows:
            self.sql = f'SELECT count(*) FROM "{rows[0]["table_schema"]}"."{rows[0]["table_name"]}"'
            self.source = self.sql
        else:
            self.sql = ""
            self.source = f"quiescence ({self.quiet_s:g} s without active backends or row changes)"
        sys.stderr.write(f"backlog: {self.source}\n")

    async def wait_empty(self, connection: asyncpg.Connection, timeout_s: float) -> float | None:
        """perf_counter() when the backlog was last seen non-empty → empty; None on timeout."""
        await self.resolve(connection)
        deadline = time.perf_counter() + timeout_s
        if self.sql:
            while time.perf_counter() < deadline:
                if await connection.fetchval(self.sql) == 0:
                    return time.perf_counter()
                await asyncio.sleep(0.1)
            return None
        last_activity, last_changes = time.perf_counter(), None
        while time.perf_counter() < deadline:
            row = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active') AS active, "
                "(SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                "WHERE datname = current_database()) AS changes")
            now = time.perf_counter()
            if row["active"] or row["changes"] != last_changes:
                last_activity, last_changes = now, row["changes"]
            elif now - last_activity >= self.quiet_s:
                return last_activity
            await asyncio.sleep(0.25)
        return None


# ------------------------------------------------------------------------------------------------ results

@dataclass
class RoundResult:
    round: int
    seed: int
    calls: int
    spans: int                       # spans whose Export returned OK
    spans_sent: int
    failed_requests: int
    refused_retries: int
    send_s: float                    # first send → last OK
    spans_per_s: float               # committed spans/s over send_s
    export_p50_ms: float | None
    export_p99_ms: float | None
    derive_lag_s: float | None       # last OK → backlog empty (None: not drained within --drain-timeout)
    window_s: float                  # first send → backlog empty: the CPU and WAL window
    pg_cpu_us_per_span: float | None   # all server processes minus live backends of other databases
    pg_cpu_all_us_per_span: float | None  # all server processes, nothing subtracted
    pg_cpu_other_db_pct: float | None  # share of the latter in live backends of other databases (shared server)
    collector_cpu_us_per_span: float | None
    client_cpu_us_per_span: float
    machine_busy_pct: float          # of all cores, over the window (100 % = every core busy)
    other_load_pct: float            # of all cores: busy time not spent in PostgreSQL, collector or client
    checkpoints: int | None          # checkpoints completed inside the window (after the forced one before it)
    wal_bytes_per_span: float
    spans_rows: int | None
    spans_total_mib: float | None
    events_total_mib: float | None
    database_mib: float | None
    collector_rss_mib: float | None
    collector_peak_rss_mib: float | None
    client_peak_rss_mib: float | None
    copy_ceiling_spans_per_s: float | None         # into an empty LIKE spans INCLUDING ALL
    copy_ceiling_sized_spans_per_s: float | None   # into a LIKE spans copy holding all of spans
    ratio_to_copy_ceiling: float | None
    ratio_to_sized_ceiling: float | None
    mapping_spans_per_s: float | None
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ rounds

def _generate_round(target_spans: int, seed: int, spans_per_request: int, per_call: float,
                    seen: set[str]) -> tuple[list[bytes], list[int], int, int]:
    """(trace bodies, spans per body, calls, spans) for about ``target_spans`` spans of new calls.

    Calls are generated and encoded ``_CALLS_PER_CHUNK`` at a time (seed ``seed * 1000 + chunk``) and only
    their encoded bytes are kept, so the client's memory does not grow with the round (a generated call
    holds ~100 KB of protobuf objects, its encoded spans ~7 KB). Every chunk covers the simulator's whole
    time window, so the chunks' requests are interleaved round-robin: roughly the global end-time order of
    one BatchSpanProcessor, with many calls per request."""
    chunks: list[list[bytes]] = []
    calls_taken = spans = 0
    clashes = 0
    while spans < target_spans:
        count = min(_CALLS_PER_CHUNK, math.ceil((target_spans - spans) / per_call * 1.05) + 5)
        calls = generate_calls(count, seed=seed * 1000 + len(chunks))
        taken = []
        for call in calls:
            if spans >= target_spans:
                break
            taken.append(call)
            spans += call.span_count
        ids = {call.call_id for call in taken} | {t for c in taken for t in c.expected.get("trace_ids", ())}
        clashes += len(ids & seen)
        seen |= ids
        calls_taken += len(taken)
        chunks.append(encode_requests(taken, spans_per_request=spans_per_request)[0])
        del calls, taken
    if clashes:
        sys.stderr.write(f"warning: {clashes} call/trace ids of round seed {seed} occurred before\n")
    bodies = [chunk[i] for i in range(max(map(len, chunks))) for chunk in chunks if i < len(chunk)]
    counts = [sum(len(ss.spans) for rs in trace_service_pb2.ExportTraceServiceRequest.FromString(b).resource_spans
                  for ss in rs.scope_spans) for b in bodies]
    return bodies, counts, calls_taken, spans


async def _send(endpoint: str, bodies: list[bytes], counts: list[int], concurrency: int,
                timeout_s: float, api_key: str | None = None) -> dict[str, Any]:

    channel = grpc.aio.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=lambda body: body,
        response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
    state: dict[str, Any] = {"done": 0, "retries": 0, "failed": 0, "latencies": [], "errors": [],
                             "last_ok": None}
    queue = list(zip(bodies, counts))
    queue.reverse()
    total = sum(counts)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            body, count = queue.pop()
            while True:
                sent = time.perf_counter()
                try:
                    await export(body, timeout=60, metadata=authorization(api_key))
                except grpc.aio.AioRpcError as error:
                    if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                        state["retries"] += 1
                        await asyncio.sleep(0.2)
                        continue
                    state["failed"] += 1
                    if len(state["errors"]) < 5:
                        state["errors"].append(f"{error.code().name}: {error.details()}")
                    break
                now = time.perf_counter()
                state["latencies"].append((now - sent) * 1000)
                state["last_ok"] = now
                state["done"] += count
                draw_span_progress(state["done"], total, started)
                break

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    except asyncio.TimeoutError:
        state["errors"].append(f"round send timed out after {timeout_s:g} s")
    finally:
        sys.stderr.write("\n")
        await channel.close()
    state["started"] = started
    return state


async def _create_ceiling_table(connection: asyncpg.Connection, name: str, sized: bool) -> None:
    await _create_ceiling_columns(connection, name, sized)
    # rows carry their tenant (storage/records.py): staged like the writer does until spans has the column
    await connection.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS tenant text")


async def _create_ceiling_columns(connection: asyncpg.Connection, name: str, sized: bool) -> None:
    if not sized:
        await connection.execute(f"CREATE TABLE {name} (LIKE spans INCLUDING ALL)")
        return
    # Bulk-load a copy of spans, then build spans' indexes on it (much faster than inserting into them).
    await connection.execute(f"CREATE TABLE {name} (LIKE spans INCLUDING ALL EXCLUDING INDEXES)")
    await connection.execute(f"INSERT INTO {name} SELECT * FROM spans")
    for row in await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'spans' AND schemaname = current_schema()"):
        definition = re.sub(r"INDEX (\S+) ON (\S+) ", f"INDEX {name}_\\1 ON {name} ", row["indexdef"], count=1)
        await connection.execute(definition)


async def _ceiling(database_url: str, bodies: list[bytes], modes: tuple[str, ...]) -> dict[str, float | None]:
    """COPY ceiling of one round: the round's own spans, decoded and mapped in-process a chunk at a time
    (``mapping`` spans/s), then ``copy_records_to_table`` of the same rows (5,000 per COPY, one connection)
    into a scratch table, timing the COPYs only:

    * ``empty``: ``CREATE TABLE … (LIKE spans INCLUDING ALL)``, i.e. spans' columns, defaults, constraints
      and all its indexes, starting empty: COPY + index maintenance on a table the size of one round;
    * ``sized``: the same table first filled with every row of spans (untimed: INSERT … SELECT, then spans'
      index definitions built on it), then the round's rows with ``~`` appended to trace_id (so the unique
      index does not reject them): index maintenance on a table as large as spans after the round.

    Each scratch table is dropped afterwards."""
    columns = columns_of(SpanRow)
    trace_pos = columns.index("trace_id")
    connection = await asyncpg.connect(database_url)
    tables = {mode: f"copy_ceiling_{mode}" for mode in modes}
    spent = {mode: 0.0 for mode in modes}
    mapping_s, rows_total = 0.0, 0
    prices = PriceTable.load()   # the shipped table, as the collector under test prices
    try:
        for mode, table in tables.items():
            await connection.execute(f"DROP TABLE IF EXISTS {table}")
            await _create_ceiling_table(connection, table, sized=mode == "sized")
        for i in range(0, len(bodies), _BODIES_PER_CEILING_CHUNK):
            started = time.perf_counter()
            rows: list[tuple] = []
            for body in bodies[i:i + _BODIES_PER_CEILING_CHUNK]:
                rows.extend(r for r in map_spans(iter_spans(parse_traces(body)), prices=prices).records
                            if type(r) is SpanRow)
            mapping_s += time.perf_counter() - started
            rows_total += len(rows)
            for mode, table in tables.items():
                chunk_rows = rows if mode != "sized" else [
                    (*r[:trace_pos], r[trace_pos] + "~", *r[trace_pos + 1:]) for r in rows]
                started = time.perf_counter()
                for j in range(0, len(chunk_rows), _COPY_CHUNK):
                    await connection.copy_records_to_table(table, records=chunk_rows[j:j + _COPY_CHUNK],
                                                           columns=columns)
                spent[mode] += time.perf_counter() - started
    finally:
        for table in tables.values():
            await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()
    result: dict[str, float | None] = {m: round(rows_total / spent[m]) if spent[m] else None for m in modes}
    result["mapping"] = round(rows_total / mapping_s) if mapping_s else None
    return result


async def _sizes(connection: asyncpg.Connection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mib = 1 << 20
    try:
        out["spans_rows"] = await connection.fetchval("SELECT count(*) FROM spans")
    except asyncpg.PostgresError:
        out["spans_rows"] = None
    row = await connection.fetchrow(
        "SELECT pg_total_relation_size(to_regclass('spans')) AS spans, "
        "pg_total_relation_size(to_regclass('events')) AS events, pg_database_size(current_database()) AS db")
    for key, column in (("spans_total_mib", "spans"), ("events_total_mib", "events"), ("database_mib", "db")):
        out[key] = None if row[column] is None else round(row[column] / mib, 1)
    return out


async def _checkpoints(connection: asyncpg.Connection) -> int | None:
    try:
        return await connection.fetchval("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
    except asyncpg.PostgresError:  # PostgreSQL 17 moved them to pg_stat_checkpointer
        try:
            return await connection.fetchval("SELECT num_timed + num_requested FROM pg_stat_checkpointer")
        except asyncpg.PostgresError:
            return None


async def _backend_databases(connection: asyncpg.Connection) -> dict[int, str | None]:
    return {r["pid"]: r["datname"] for r in await connection.fetch("SELECT pid, datname FROM pg_stat_activity")}


class OtherDatabases:
    """Follows the backends of other databases during a round (every 0.5 s, own connection), so that the
    CPU of one that exits before the round ends is still known: {pid: last seen utime+stime ticks}."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self.last: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        connection = await asyncpg.connect(self._url)
        try:
            while True:
                for pid in await connection.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname IS NOT NULL AND datname <> current_database()"):
                    ticks = _proc_ticks(pid["pid"])
                    if ticks is not None:
                        self.last[pid["pid"]] = ticks
                await asyncio.sleep(0.5)
        finally:
            await connection.close()

    def start(self) -> None:
        self.last.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


async def _round(args: argparse.Namespace, number: int, endpoint: str, database_url: str, monitor: asyncpg.Connection,
                 backlog: Backlog, server: ServerCpu | None, collector_pid: int | None, per_call: float,
                 seen: set[str], modes: tuple[str, ...]) -> RoundResult:
    seed = args.seed * 1000 + number
    sys.stderr.write(f"round {number}/{args.rounds}: generating ~{args.round_spans:,} spans (seed {seed}) ...\n")
    bodies, counts, calls_in_round, _ = _generate_round(args.round_spans, seed, args.spans_per_request, per_call,
                                                        seen)
    # A checkpoint before every round: each starts from the same WAL state (full-page images), and the
    # previous round's ceiling tables do not leave a pending checkpoint to this one.
    await monitor.execute("CHECKPOINT")
    monitor_pid = await monitor.fetchval("SELECT pg_backend_pid()")
    our_db = await monitor.fetchval("SELECT current_database()")
    lsn0 = await monitor.fetchval("SELECT pg_current_wal_lsn()")
    checkpoints0 = await _checkpoints(monitor)
    databases0 = await _backend_databases(monitor)
    cpu0 = server.sample() if server else None
    collector0 = _proc_ticks(collector_pid) if collector_pid else None
    client0 = os.times()
    busy0 = _machine_busy_ticks()
    others = OtherDatabases(database_url)
    others.start()

    sent = await _send(endpoint, bodies, counts, args.concurrency, args.round_timeout, args.api_key)
    last_ok = sent["last_ok"] or time.perf_counter()
    drained = await backlog.wait_empty(monitor, args.drain_timeout)
    end = drained or time.perf_counter()

    cpu1 = server.sample() if server else None
    databases1 = await _backend_databases(monitor)
    await others.stop()
    collector1 = _proc_ticks(collector_pid) if collector_pid else None
    client1 = os.times()
    busy1 = _machine_busy_ticks()
    checkpoints1 = await _checkpoints(monitor)
    wal = float(await monitor.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)", lsn0))
    rss, peak = (_rss_mib(collector_pid, "VmRSS"), _rss_mib(collector_pid, "VmHWM")) if collector_pid else (None, None)
    sizes = await _sizes(monitor)
    errors = list(sent["errors"])
    if drained is None:
        errors.append(f"derive backlog not empty after {args.drain_timeout:g} s")

    spans = sent["done"]
    us = 1e6 / _TICK / max(spans, 1)
    pg_cpu = pg_all = other_pct = None
    pg_ticks = 0
    if cpu0 is not None and cpu1 is not None:
        total = sum(cpu1.values()) - sum(cpu0.values())
        # Backends of other databases: live at the end, or seen by the 0.5 s sampler before they exited
        # (their CPU after the last sample stays counted as ours). A pid absent from cpu0 started inside
        # the window, so all its CPU is inside it.
        foreign = {pid: t for pid, t in others.last.items()}
        foreign.update({pid: t for pid, t in cpu1.items() if pid > 0 and pid != monitor_pid
                        and (databases1.get(pid) or databases0.get(pid)) not in (None, our_db)})
        other = sum(max(0, t - cpu0.get(pid, 0)) for pid, t in foreign.items())
        pg_ticks = total - other
        pg_cpu = round(pg_ticks * us, 1)
        pg_all = round(total * us, 1)
        other_pct = round(100 * other / total, 1) if total > 0 else 0.0
    machine = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1) * 100
    window = end - sent["started"]
    ours_s = ((client1.user + client1.system - client0.user - client0.system)
              + pg_ticks / _TICK
              + ((collector1 - collector0) / _TICK if collector0 is not None and collector1 is not None else 0))
    cores = os.cpu_count() or 1
    other_load = max(0.0, machine - 100 * ours_s / (cores * max(window, 1e-9)))
    sys.stderr.write(f"round {number}: COPY ceiling ({', '.join(modes) or 'off'}) ...\n")
    ceiling = await _ceiling(database_url, bodies, modes) if modes else {}
    client_peak = _rss_mib(os.getpid(), "VmHWM")
    send_s = last_ok - sent["started"]
    rate = spans / send_s if send_s > 0 else 0.0
    latencies = sent["latencies"]
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else None
    empty, sized = ceiling.get("empty"), ceiling.get("sized")
    return RoundResult(
        round=number, seed=seed, calls=calls_in_round, spans=spans, spans_sent=sum(counts),
        failed_requests=sent["failed"], refused_retries=sent["retries"], send_s=round(send_s, 2),
        spans_per_s=round(rate), export_p50_ms=None if quantiles is None else round(quantiles[49], 1),
        export_p99_ms=None if quantiles is None else round(quantiles[98], 1),
        derive_lag_s=None if drained is None else round(max(drained - last_ok, 0.0), 2),
        window_s=round(end - sent["started"], 2), pg_cpu_us_per_span=pg_cpu, pg_cpu_all_us_per_span=pg_all,
        pg_cpu_other_db_pct=other_pct,
        collector_cpu_us_per_span=None if collector0 is None or collector1 is None
        else round((collector1 - collector0) * us, 1),
        client_cpu_us_per_span=round((client1.user + client1.system - client0.user - client0.system)
                                     * 1e6 / max(spans, 1), 1),
        machine_busy_pct=round(machine, 1), other_load_pct=round(other_load, 1),
        checkpoints=None if checkpoints0 is None or checkpoints1 is None else checkpoints1 - checkpoints0,
        wal_bytes_per_span=round(wal / max(spans, 1)),
        collector_rss_mib=rss, collector_peak_rss_mib=peak, client_peak_rss_mib=client_peak,
        copy_ceiling_spans_per_s=empty, copy_ceiling_sized_spans_per_s=sized,
        ratio_to_copy_ceiling=round(rate / empty, 3) if empty else None,
        ratio_to_sized_ceiling=round(rate / sized, 3) if sized else None,
        mapping_spans_per_s=ceiling.get("mapping"), errors=errors, **sizes,
    )


# ------------------------------------------------------------------------------------------------ output

_COLUMNS = (  # header, key, format
    ("round", "round", "{}"), ("spans", "spans", "{:,}"), ("spans/s", "spans_per_s", "{:,.0f}"),
    ("p50 ms", "export_p50_ms", "{:,.0f}"), ("pg µs/span", "pg_cpu_us_per_span", "{:,.0f}"),
    ("coll µs/span", "collector_cpu_us_per_span", "{:,.0f}"), ("WAL B/span", "wal_bytes_per_span", "{:,.0f}"),
    ("pg other-db %", "pg_cpu_other_db_pct", "{:.0f}"), ("lag s", "derive_lag_s", "{:,.1f}"), ("spans rows", "spans_rows", "{:,}"),
    ("spans MiB", "spans_total_mib", "{:,.0f}"), ("events MiB", "events_total_mib", "{:,.0f}"),
    ("RSS MiB", "collector_rss_mib", "{:,.0f}"), ("ckpt", "checkpoints", "{}"),
    ("busy %", "machine_busy_pct", "{:.0f}"), ("other %", "other_load_pct", "{:.0f}"),
    ("ceiling/s", "copy_ceiling_spans_per_s", "{:,.0f}"), ("ratio", "ratio_to_copy_ceiling", "{:.3f}"),
    ("sized ceil/s", "copy_ceiling_sized_spans_per_s", "{:,.0f}"), ("ratio sized", "ratio_to_sized_ceiling", "{:.3f}"),
)


def format_table(rounds: list[dict[str, Any]]) -> str:
    columns = [c for c in _COLUMNS if any(r.get(c[1]) is not None for r in rounds)]
    cells = [[c[0] for c in columns]]
    for r in rounds:
        cells.append(["–" if r.get(key) is None else fmt.format(r[key]) for _, key, fmt in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [" | ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = rounds[0], rounds[-1]

    def ratio(key: str) -> float | None:
        a, b = first.get(key), last.get(key)
        return round(b / a, 3) if a and b is not None else None

    def mean(key: str) -> float | None:
        values = [r[key] for r in rounds if r.get(key) is not None]
        return round(statistics.fmean(values), 3) if values else None

    return {
        "rounds": len(rounds), "last_over_first": {
            "spans_per_s": ratio("spans_per_s"), "pg_cpu_us_per_span": ratio("pg_cpu_us_per_span"),
            "wal_bytes_per_span": ratio("wal_bytes_per_span"), "derive_lag_s": ratio("derive_lag_s"),
            "copy_ceiling_spans_per_s": ratio("copy_ceiling_spans_per_s"),
            "copy_ceiling_sized_spans_per_s": ratio("copy_ceiling_sized_spans_per_s")},
        "mean_ratio_to_copy_ceiling": mean("ratio_to_copy_ceiling"),
        "mean_ratio_to_sized_ceiling": mean("ratio_to_sized_ceiling"),
    }


def summary_line(summary: dict[str, Any]) -> str:
    n, lof = summary["rounds"], summary["last_over_first"]

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    line = (f"summary: round{n}/round1 spans/s {f(lof['spans_per_s'])}, pg CPU/span {f(lof['pg_cpu_us_per_span'])}, "
            f"WAL/span {f(lof['wal_bytes_per_span'])}, derive lag {f(lof['derive_lag_s'])}; "
            f"mean ratio to COPY ceiling {f(summary['mean_ratio_to_copy_ceiling'])}")
    if summary["mean_ratio_to_sized_ceiling"] is not None:
        line += f" (sized ceiling {f(summary['mean_ratio_to_sized_ceiling'])})"
    return line


# ------------------------------------------------------------------------------------------------ run

async def _server_info(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        "SELECT name, setting || coalesce(unit, '') AS value FROM pg_settings WHERE name IN ('server_version', "
        "'shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'synchronous_commit', 'autovacuum', "
        "'wal_compression', 'full_page_writes')")
    return {r["name"]: r["value"] for r in rows}


async def run_growth(args: argparse.Namespace) -> dict[str, Any]:

    admin_url = args.admin_url
    database_url = admin_url.rsplit("/", 1)[0] + "/" + args.database
    modes = {"empty": ("empty",), "sized": ("sized",), "both": ("empty", "sized"), "off": ()}[args.ceiling]
    process, endpoint, args.api_key = await collector_for(args.endpoint, admin_url, args.database, database_url)
    collector_pid = process.pid if process else None
    monitor = await asyncpg.connect(database_url)
    rounds: list[dict[str, Any]] = []
    try:
        server = ServerCpu.find(await monitor.fetchval("SELECT pg_backend_pid()"))
        if server is None:
            sys.stderr.write("warning: PostgreSQL server processes not found in /proc: no CPU column\n")
        backlog = Backlog(args.backlog_sql, args.quiet_s)
        info = await _server_info(monitor)
        seen: set[str] = set()
        per_call = _SPANS_PER_CALL_GUESS
        for number in range(1, args.rounds + 1):
            result = await _round(args, number, endpoint, database_url, monitor, backlog, server, collector_pid,
                                  per_call, seen, modes)
            rounds.append(asdict(result))
            per_call = result.spans_sent / max(result.calls, 1)
            sys.stderr.write(format_table(rounds[-1:]) + "\n")
            for error in result.errors:
                sys.stderr.write(f"round {number}: {error}\n")
            if result.spans == 0:
                sys.stderr.write("no span committed in this round: stopping\n")
                break
    finally:
        await monitor.close()
        if process is not None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    return {
        "mode": "growth",
        "config": {"rounds": args.rounds, "round_spans": args.round_spans, "concurrency": args.concurrency,
                   "spans_per_request": args.spans_per_request, "seed": args.seed, "logs": False,
                   "ceiling": args.ceiling, "backlog": backlog.source, "endpoint": args.endpoint},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "postgres": info,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rounds": rounds,
        "summary": summarize(rounds) if rounds else None,
    }


def main_growth(args: argparse.Namespace, results: Path) -> int:
    report = asyncio.run(run_growth(args))
    results.mkdir(exist_ok=True)
    out = results / f"growth-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(format_table(report["rounds"]))
    if args.summary and report["summary"]:
        print(summary_line(report["summary"]))
    sys.stderr.write(f"wrote {out}\n")
    return 0 if report["rounds"] and not any(r["errors"] for r in report["rounds"]) else 1
