"""What the benchmarks share: a fresh database with a ``callscope serve`` of its own on free loopback ports and an
API key to send (the collector runs as shipped: auth required), the collector's peak memory, and the progress
line."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc

from collector.cli.progress import draw_progress
from storage.keys import create_key
from storage.migrate import migrate

__all__ = ["free_port", "peak_rss_mib", "recreate_database", "start_collector", "collector_for",
           "draw_span_progress", "bench_key", "authorization"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def recreate_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def start_collector(database_url: str) -> tuple[subprocess.Popen, str]:
    """``callscope serve`` as a subprocess on free loopback ports; returns (process, gRPC endpoint) once ready."""
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "CALLSCOPE_DATABASE_URL": database_url, "CALLSCOPE_GRPC_PORT": str(grpc_port),
           "CALLSCOPE_HTTP_PORT": str(http_port), "CALLSCOPE_BIND_ADDRESS": "127.0.0.1",
           "CALLSCOPE_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "collector.cli", "serve"], env=env)
    endpoint = f"127.0.0.1:{grpc_port}"
    channel = grpc.aio.insecure_channel(endpoint)
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
    except BaseException:
        process.terminate()
        process.wait(30)
        raise
    finally:
        await channel.close()
    return process, endpoint


async def bench_key(database_url: str) -> str:
    """A new API key for tenant ``default`` in a migrated database."""
    connection = await asyncpg.connect(database_url)
    try:
        _, key, _ = await create_key(connection, "default", "bench")
    finally:
        await connection.close()
    return key


def authorization(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying an API key, as an OTel SDK sends it."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


async def collector_for(endpoint: str | None, admin_url: str, database: str,
                        database_url: str) -> tuple[subprocess.Popen | None, str, str | None]:
    """(process, endpoint, API key): the given endpoint (its key from ``CALLSCOPE_API_KEY``), or a fresh database
    with a key and a ``callscope serve`` of its own on it."""
    if endpoint is not None:
        return None, endpoint, os.environ.get("CALLSCOPE_API_KEY")
    await recreate_database(admin_url, database)
    await migrate(database_url)
    api_key = await bench_key(database_url)
    process, started = await start_collector(database_url)
    return process, started, api_key


def draw_span_progress(done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    draw_progress(done, total, "spans", f"  {rate:,.0f} spans/s")
