"""Shared fixtures: real PostgreSQL databases (cloned from a migrated template) and running collectors."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from bench import grafana_emulator

from collector.server import Collector
from collector.settings import Settings, build_settings
from storage.migrate import migrate

ADMIN_URL = os.environ.get("CALLSCOPE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_TEMPLATE = f"callscope_tpl_{os.getpid()}"


def url_for(database: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest_asyncio.fixture(scope="session")
async def template_database() -> AsyncIterator[str]:
    """A migrated database that every test database is cloned from (CREATE DATABASE … TEMPLATE)."""
    await _admin(f'DROP DATABASE IF EXISTS "{_TEMPLATE}"')
    report = await migrate(url_for(_TEMPLATE))
    # dashboards and alerts are rendered as Grafana would for a data source provisioned for this server
    grafana_emulator.SERVER_HAS_TIMESCALEDB = report.mode == "timescaledb"
    if report.mode == "timescaledb":
        # The fixtures hold rows older than retention_days: TimescaleDB's scheduler would drop their chunks at
        # whatever moment it runs the retention jobs of a test's database. They are paused in the template (so
        # in every clone); tests of the policies migrate databases of their own (tests/test_migrate.py).
        connection = await asyncpg.connect(url_for(_TEMPLATE))
        try:
            await connection.execute("SELECT alter_job(job_id, scheduled => false) "
                                     "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
        finally:
            await connection.close()
    # Nothing may stay connected to a template while it is cloned. On TimescaleDB a background scheduler
    # connects to every database with the extension (and comes back after pg_terminate_backend), so CREATE
    # DATABASE … TEMPLATE would fail at random with "source database is being accessed by other users":
    # refuse connections first (the launcher skips such databases), then end the ones already there.
    await _admin(f'ALTER DATABASE "{_TEMPLATE}" WITH ALLOW_CONNECTIONS false')
    await _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{_TEMPLATE}'")
    yield _TEMPLATE
    await _admin(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')


async def new_database(template: str, prefix: str = "callscope_t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = await new_database(template_database)
    yield url_for(name)
    await drop_database(name)


def collector_settings(database_url: str, **overrides: object) -> Settings:
    # auth off: tests that are not about API keys send without one (tests/test_security.py covers keys)
    settings = build_settings({"database_url": database_url, "bind_address": "127.0.0.1", "grpc_port": 0,
                               "http_port": 0, "max_wait_ms": 20, "log_format": "text", "auth": "off"}, environ={})
    return replace(settings, **overrides) if overrides else settings


@pytest_asyncio.fixture
async def collector(database_url: str) -> AsyncIterator[Collector]:
    """A running collector on ephemeral ports, writing to this test's database."""
    running = Collector(collector_settings(database_url), run_migrations=False)
    await running.start()
    yield running
    await running.close(grace_s=1)


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


SIMULATED_CALLS = 120


@pytest_asyncio.fixture(scope="session")
async def simulated_db(template_database: str) -> AsyncIterator[str]:
    """A database filled by ``callscope simulate`` traffic sent through the real gRPC receiver."""
    from collector.simulate import run_simulation

    name = await new_database(template_database, prefix="callscope_sim")
    url = url_for(name)
    running = Collector(collector_settings(url), run_migrations=False)
    await running.start()
    try:
        report = await run_simulation(f"127.0.0.1:{running.grpc.port}", calls=SIMULATED_CALLS, concurrency=8,
                                      seed=7)
        assert report.rejected == 0, report
        # derived and rolled up, as the collector's workers leave it within their 30 s refresh interval
        await running.settle()
    finally:
        await running.close(grace_s=1)
    yield url
    await drop_database(name)
