"""``callscope doctor``: one line per check, a stopped database and a missing TimescaleDB in one line each."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from collector.cli.doctor import Check, _provisioning_checks, _timescaledb, run_checks
from tests.conftest import collector_settings, url_for

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "provisioning"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])   # nothing listens once the probe is closed


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("callscope")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "collector.cli"]
    return subprocess.run([*command, "doctor", *args], capture_output=True, text=True, timeout=30, cwd=ROOT)


def _free_ports_args() -> list[str]:
    return ["--bind-address", "127.0.0.1", "--grpc-port", str(_closed_port()), "--http-port", str(_closed_port())]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


# --- through the command line -------------------------------------------------------------------------------------

def test_stopped_database_is_one_failing_line_naming_the_url():
    url = f"postgresql://postgres:hunter2@127.0.0.1:{_closed_port()}/callscope"
    result = _doctor("--database-url", url, *_free_ports_args())
    assert result.returncode == 1
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    about_database = [line for line in lines if line.split()[1].rstrip(":") in
                      {"database", "postgresql", "timescaledb", "schema", "grafana"}]
    assert len(about_database) == 1, lines
    (line,) = about_database
    assert line.startswith("FAIL database: cannot reach the database at postgresql://postgres:***@127.0.0.1:")
    assert "hunter2" not in result.stdout
    assert "is PostgreSQL running?" in line and "CALLSCOPE_DATABASE_URL" in line
    assert [line.split()[0] for line in lines].count("FAIL") == 1   # ports and provisioning are fine


async def test_the_timescaledb_check_is_one_line(database_url, db):
    """Plain PostgreSQL: TimescaleDB missing, in one warning line. TimescaleDB: one line naming the version, the
    hypertables, the retention and why spans / events are not compressed (their tenant row-level security)."""
    version = await db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if version:   # scheduled, as migrate leaves them (the test template pauses them: tests/conftest.py)
        await db.execute("SELECT alter_job(job_id, scheduled => true) FROM timescaledb_information.jobs "
                         "WHERE hypertable_name IS NOT NULL")
    result = await asyncio.to_thread(_doctor, "--database-url", database_url, *_free_ports_args())
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    timescale = [line for line in lines if "timescaledb" in line.lower().split(":")[0] or "TimescaleDB" in line]
    assert len(timescale) == 1, lines
    if version:
        ok = (f"OK   timescaledb: TimescaleDB {version}; spans and events are hypertables; retention 30 d; "
              "no compression of events and spans (row-level security: TimescaleDB compresses no policed table)")
        # or, once the retention jobs ran on a server whose job runner fails on its PostgreSQL minor release
        # (TimescaleDB 2.28.3 on PostgreSQL 15.20: docs/operations.md), that warning
        failing = (f"WARN timescaledb: TimescaleDB {version}: the retention on events, retention on spans policy "
                   "jobs fail when they run")
        assert timescale[0] == ok or timescale[0].startswith(failing), lines
    else:
        assert timescale[0].startswith("WARN timescaledb: ")
        assert "no compression or retention" in timescale[0] and "→" in timescale[0]
    assert lines[0] == f"OK   database: reachable at {database_url}"
    assert lines[1].startswith("OK   postgresql: PostgreSQL ")
    assert any(line.startswith("OK   schema: at the newest revision ") for line in lines)


def test_every_line_says_ok_warn_or_fail():
    result = _doctor("--database-url", f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", *_free_ports_args())
    for line in result.stdout.splitlines():
        assert line.split()[0] in {"OK", "WARN", "FAIL"}, line


# --- database ---------------------------------------------------------------------------------------------------

async def test_schema_behind_warns_and_unknown_revision_fails(database_url, db):
    settings = collector_settings(database_url)
    original = await db.fetchval("SELECT version_num FROM alembic_version")
    await db.execute("UPDATE alembic_version SET version_num = '0001_initial'")
    behind = by_name(await run_checks(settings, provisioning=PROVISIONING, ports=False))["schema"]
    await db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    unknown = by_name(await run_checks(settings, provisioning=PROVISIONING, ports=False))["schema"]
    await db.execute("UPDATE alembic_version SET version_num = $1", original)
    assert behind.level == "warn" and f"newest is {original}" in behind.message and "callscope migrate" in behind.fix
    assert unknown.level == "fail" and "newer version" in unknown.message


async def test_database_that_does_not_exist_yet_is_a_warning_with_the_server_still_checked():
    settings = collector_settings(url_for("callscope_never_created"))
    checks = by_name(await run_checks(settings, provisioning=PROVISIONING, ports=False))
    assert checks["database"].level == "warn" and "does not exist yet" in checks["database"].message
    assert "callscope migrate" in checks["database"].fix
    assert checks["postgresql"].level == "ok" and "timescaledb" in checks and "schema" not in checks


class FakeConnection:
    """Answers the catalogue queries of the TimescaleDB check (no TimescaleDB on the test server)."""

    def __init__(self, *, version: str | None = "2.17.2", hypertables: tuple[str, ...] = ("spans", "events"),
                 jobs: tuple[tuple[Any, ...], ...] = (), available: str | None = None,
                 preload: str = "", policed: tuple[str, ...] = ()) -> None:
        self.version, self.hypertables, self.jobs, self.policed = version, hypertables, jobs, policed
        self.available, self.preload = available, preload

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if "FROM pg_extension" in sql:
            return self.version
        if "pg_available_extensions" in sql:
            return self.available
        if "shared_preload_libraries" in sql:
            return self.preload
        raise AssertionError(sql)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        if "timescaledb_information.hypertables" in sql:
            return [(name,) for name in self.hypertables]
        if "relrowsecurity" in sql:
            return [(name,) for name in self.policed]
        if "timescaledb_information.jobs" in sql:
            return [{"hypertable_name": job[0], "proc_name": job[1], "scheduled": job[2],
                     "last_run_status": job[3] if len(job) > 3 else None} for job in self.jobs]
        raise AssertionError(sql)


ALL_POLICIES = tuple((table, proc, True) for table in ("spans", "events")
                     for proc in ("policy_compression", "policy_retention"))


@pytest.mark.parametrize("connection, level, words", [
    (FakeConnection(jobs=ALL_POLICIES), "ok", ["TimescaleDB 2.17.2", "compression after 2 d", "retention 30 d"]),
    (FakeConnection(jobs=ALL_POLICIES[:3]), "warn", ["no active retention on events policy"]),
    (FakeConnection(jobs=ALL_POLICIES[:3] + (("events", "policy_retention", False),)), "warn",
     ["retention on events"]),
    (FakeConnection(hypertables=("spans",), jobs=ALL_POLICIES), "warn", ["events are plain tables"]),
    (FakeConnection(jobs=tuple((*job, "Failed" if job[1] == "policy_compression" else "Success")
                               for job in ALL_POLICIES)), "warn",
     ["compression on events, compression on spans policy jobs fail"]),
    # tenants' row-level security (0013_tenants): TimescaleDB compresses no policed table, migrate adds no policy
    (FakeConnection(jobs=tuple(job for job in ALL_POLICIES if job[1] == "policy_retention"),
                    policed=("spans", "events")), "ok",
     ["retention 30 d", "no compression of events and spans (row-level security"]),
    (FakeConnection(jobs=tuple(job for job in ALL_POLICIES if job[1] == "policy_retention"), policed=("events",)),
     "warn", ["no active compression on spans policy"]),
    (FakeConnection(version=None, available="2.17.2"), "warn", ["installed on the server but not active"]),
    (FakeConnection(version=None), "warn", ["TimescaleDB missing"]),
])
async def test_timescaledb_policies(connection, level, words):
    settings = replace(collector_settings("postgresql://unused/x"), retention_days=30, compress_after_days=2)
    check = await _timescaledb(connection, settings, "PostgreSQL 16.4")
    assert check.level == level, check
    for word in words:
        assert word in check.message, check
    assert "\n" not in check.line()


async def test_policies_switched_off_by_settings_are_not_expected():
    settings = replace(collector_settings("postgresql://unused/x"), retention_days=0, compress_after_days=0)
    check = await _timescaledb(FakeConnection(), settings, "PostgreSQL 16.4")
    assert check.level == "ok" and "no compression or retention configured" in check.message


# --- ports ------------------------------------------------------------------------------------------------------

async def test_port_held_by_another_process_fails_and_a_running_collector_is_fine(collector):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        settings = replace(collector.settings, grpc_port=taken, http_port=collector.http.port)
        checks = await run_checks(settings, provisioning=PROVISIONING, timeout=1)
    grpc_line, http_line = [check for check in checks if check.name.startswith("port ")]
    assert grpc_line.level == "fail" and "another process" in grpc_line.message
    assert "--grpc-port" in grpc_line.fix and "CALLSCOPE_GRPC_PORT" in grpc_line.fix
    assert http_line.level == "ok" and "/health answers 200" in http_line.message

    settings = replace(collector.settings, grpc_port=collector.grpc.port)
    grpc_line = [check for check in await run_checks(settings, provisioning=PROVISIONING) if "gRPC" in check.name][0]
    assert grpc_line.level == "ok" and "SERVING" in grpc_line.message


# --- provisioning -----------------------------------------------------------------------------------------------

def _provisioning_lines(root: Path) -> dict[str, Check]:
    return by_name(_provisioning_checks(root))


def test_shipped_provisioning_passes():
    checks = _provisioning_lines(PROVISIONING)
    assert {name: check.level for name, check in checks.items()} == {
        "provisioning datasources": "ok", "provisioning dashboards": "ok", "provisioning alerting": "ok"}
    assert "callscope-calls" in checks["provisioning dashboards"].message
    assert "as callscope_reader" in checks["provisioning datasources"].message


def test_broken_provisioning_files_are_named(tmp_path):
    root = tmp_path / "provisioning"
    shutil.copytree(PROVISIONING, root)
    dashboards = sorted((root / "dashboards").rglob("*.json"))
    dashboards[0].write_text("{ not json")
    second = json.loads(dashboards[1].read_text())
    second["uid"] = json.loads(dashboards[2].read_text())["uid"]
    dashboards[1].write_text(json.dumps(second))
    rules = root / "alerting" / "callscope-rules.yaml"
    rules.write_text(rules.read_text().replace("datasourceUid: callscope", "datasourceUid: elsewhere"))
    checks = _provisioning_lines(root)
    assert checks["provisioning dashboards"].level == "fail"
    assert dashboards[0].name in checks["provisioning dashboards"].message
    assert f"uid {second['uid']} in both" in checks["provisioning dashboards"].message
    assert checks["provisioning alerting"].level == "fail" and "elsewhere" in checks["provisioning alerting"].message
    assert "callscope dashboards --out" in checks["provisioning alerting"].fix


def test_missing_provisioning_directory_is_a_warning(tmp_path):
    (check,) = _provisioning_lines(tmp_path / "nowhere").values()
    assert check.level == "warn" and "callscope dashboards" in check.fix
