"""The command line: ``--help`` on every command, and one clear line (never a traceback) for common failures."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from collector.cli.commands import _parser, main

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> list[str]:
    (action,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def _callscope() -> list[str]:
    script = Path(sys.executable).with_name("callscope")
    return [str(script)] if script.exists() else [sys.executable, "-m", "collector.cli"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CALLSCOPE_")}
    environ.update({"CALLSCOPE_LOG_FORMAT": "text", **(env or {})})
    process = await asyncio.create_subprocess_exec(*_callscope(), *args, env=environ, cwd=ROOT,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(), err.decode()


def _one_line(err: str) -> str:
    """The ``callscope: …`` line, after checking there is no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("callscope: ")]
    assert len(lines) == 1, err
    assert err.rstrip("\n").endswith(lines[0]), err    # the last thing printed
    return lines[0]


# --- help ---------------------------------------------------------------------------------------------------------

def test_every_documented_command_exists():
    assert {"serve", "migrate", "simulate", "dashboards", "health", "doctor"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: callscope {command} ")
    assert "-h, --help" in out and len(out.splitlines()) > 3


async def test_top_level_help_through_the_installed_entry_point():
    code, out, err = await _run("--help")
    assert code == 0 and err == ""
    for command in _subcommands():
        assert f"    {command}" in out, command


# --- one clear line ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_serve_with_the_database_down_prints_one_line(host):
    url = f"postgresql://postgres:hunter2@{host}:{_closed_port()}/callscope"
    code, out, err = await _run("serve", "--database-url", url)
    line = _one_line(err)
    assert code == 2
    assert line.startswith(f"callscope: cannot reach the database at postgresql://postgres:***@{host}:")
    assert "is PostgreSQL running?" in line and "hunter2" not in err


async def test_migrate_with_an_unknown_host_names_it():
    code, _, err = await _run("migrate", env={"CALLSCOPE_DATABASE_URL": "postgresql://postgres@timescaledb.invalid/x"})
    line = _one_line(err)
    assert code == 2 and "cannot resolve the database host 'timescaledb.invalid'" in line


@pytest.mark.parametrize("args, env, words", [
    (["serve"], {"CALLSCOPE_GRPC_PORT": "abc"}, "CALLSCOPE_GRPC_PORT: invalid literal"),
    (["serve", "--log-format", "xml"], {}, "invalid configuration: log_format must be json or text"),
    (["migrate"], {"CALLSCOPE_MAX_BATCH_RECORDS": "0"}, "max_batch_records must be ≥ 1"),
    (["doctor"], {"CALLSCOPE_HTTP_PORT": "70000"}, "port 70000 is out of range"),
])
async def test_bad_configuration_value_prints_one_line(args, env, words):
    code, out, err = await _run(*args, env=env)
    assert code == 2 and out == ""
    assert words in _one_line(err)


async def test_bad_flag_value_is_argparse_usage_and_one_error_line():
    code, _, err = await _run("serve", "--grpc-port", "abc")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == "callscope serve: error: argument --grpc-port: invalid int value: 'abc'"


@pytest.mark.parametrize("which", ["http", "grpc"])
async def test_serve_with_a_port_in_use_prints_one_line(database_url, which):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = {"http": str(taken), "grpc": str(_closed_port())} if which == "http" else {
            "grpc": str(taken), "http": str(_closed_port())}
        code, _, err = await _run("serve", "--database-url", database_url, "--bind-address", "127.0.0.1",
                                  "--grpc-port", ports["grpc"], "--http-port", ports["http"], "--log-level", "error")
    line = _one_line(err)
    assert code == 2
    if which == "http":
        assert "a port is already in use" in line and "--http-port" in line
    else:
        assert f"cannot listen for OTLP/gRPC on 127.0.0.1:{taken}" in line and "--grpc-port" in line


async def test_unreadable_prices_file_and_unwritable_output_print_one_line(database_url, tmp_path):
    code, _, err = await _run("serve", "--database-url", database_url, "--prices-file", str(tmp_path / "nope.yaml"),
                              "--grpc-port", "0", "--http-port", "0", "--log-level", "error")
    assert code == 2 and "cannot read prices_file" in _one_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = await _run("dashboards", "--out", str(blocker / "provisioning"))
    assert code == 2 and _one_line(err).startswith("callscope: Not a directory: ")


async def test_health_without_a_collector_is_one_line_and_exit_1():
    port = _closed_port()
    code, out, err = await _run("health", "--endpoint", f"127.0.0.1:{port}", "--timeout", "1")
    assert (code, out, err) == (1, f"127.0.0.1:{port}: UNREACHABLE: no answer\n", "")


async def test_health_of_a_running_collector(collector):
    code, out, _ = await _run("health", env={"CALLSCOPE_GRPC_PORT": str(collector.grpc.port)})
    assert (code, out) == (0, f"127.0.0.1:{collector.grpc.port}: SERVING\n")


def test_simulate_without_a_collector_says_so_in_one_line(capsys):
    import socket

    from collector.cli.commands import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert main(["simulate", "--endpoint", f"127.0.0.1:{closed_port}", "--calls", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("callscope: no collector answers at") and "\n" not in error
