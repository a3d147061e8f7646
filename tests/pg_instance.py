"""A private PostgreSQL server for fault tests: initdb into a temporary directory, on a free port.

Fault tests stop, kill and restart the database under a running collector; they must never do that to the shared
server other tests (and other people) use. ``PgInstance`` runs the machine's own PostgreSQL binaries
(``/usr/lib/postgresql/<version>/bin``, or ``CALLSCOPE_TEST_PG_BIN``) on 127.0.0.1 and a unix socket directory
inside its temporary directory, with trust authentication for the ``postgres`` user.

PostgreSQL refuses to run as root. When the tests run as root, the directory is handed to an unprivileged
account (``postgres`` by default, ``CALLSCOPE_TEST_PG_USER`` otherwise) and every server command runs as that
account through ``runuser`` (``su`` where ``runuser`` is missing).

    instance = PgInstance.create()          # initdb + start
    url = instance.url("postgres")
    instance.stop("immediate"); instance.start()
    instance.destroy()                      # stop and remove everything

The ``private_pg`` fixture (session scope) yields a started instance and always destroys it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

__all__ = ["PgInstance", "find_pg_bin", "free_port", "private_pg", "private_template"]

_SERVER_OPTIONS = (
    "-c fsync=off -c full_page_writes=off -c autovacuum=off -c max_connections=100 "
    "-c shared_buffers=64MB -c log_min_messages=warning -c listen_addresses=127.0.0.1"
)
# synchronous_commit stays on: a COMMIT the collector acknowledged must survive an immediate stop. fsync=off
# only loses data when the machine itself crashes (the kernel still has every write), which no test does.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_pg_bin() -> Path | None:
    configured = os.environ.get("CALLSCOPE_TEST_PG_BIN")
    candidates = [configured] if configured else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if
        Path(p).parent.name.isdigit() else 0, reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


class PgInstance:
    """One private PostgreSQL cluster. Not thread-safe; ``start``/``stop`` block until the server is up/down."""

    def __init__(self, root: Path, bin_dir: Path, port: int, run_as: str | None) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self.port = port
        self.run_as = run_as
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.logfile = root / "postgres.log"

    # --- lifecycle -----------------------------------------------------------------------------------------

    @classmethod
    def create(cls, *, port: int | None = None) -> "PgInstance":
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries (set CALLSCOPE_TEST_PG_BIN to their bin directory)")
        run_as = None
        if os.geteuid() == 0:
            run_as = os.environ.get("CALLSCOPE_TEST_PG_USER", "postgres")
            pwd.getpwnam(run_as)  # KeyError: no such account to run the server as
        # Not under pytest's tmp_path: that is private to root (0700), and the server may run as another account.
        root = Path(tempfile.mkdtemp(prefix="callscope-pg-"))
        instance = cls(root, bin_dir, port or free_port(), run_as)
        try:
            instance.sockets.mkdir()
            if run_as is not None:
                account = pwd.getpwnam(run_as)
                for path in (root, instance.sockets):
                    os.chown(path, account.pw_uid, account.pw_gid)
                os.chmod(root, 0o755)
            instance._run([str(bin_dir / "initdb"), "-D", str(instance.data), "-U", "postgres", "--auth=trust",
                           "--encoding=UTF8", "--locale=C", "--no-sync"], timeout=120)
            instance.start()
        except BaseException:
            instance.destroy()
            raise
        return instance

    def _command(self, argv: list[str]) -> list[str]:
        if self.run_as is None:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", self.run_as, "--", *argv]
        return ["su", self.run_as, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def _run(self, argv: list[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        # cwd: the server account must be able to enter the working directory (root's may be private).
        result = subprocess.run(self._command(argv), cwd=self.root, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}\n"
                               f"{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"{_SERVER_OPTIONS} -p {self.port} -k {self.sockets}"
        self._run([str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)), "-D", str(self.data),
                   "-l", str(self.logfile), "-o", options], timeout=timeout + 10)
        deadline = time.monotonic() + timeout
        while not self.accepts_connections():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} never accepted connections\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``fast``: roll back sessions and shut down cleanly; ``immediate``: quit at once (crash recovery next)."""
        if mode not in {"smart", "fast", "immediate"}:
            raise ValueError(f"unknown stop mode {mode!r}")
        self._run([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-t", str(int(timeout)), "-D", str(self.data),
                   "-m", mode], timeout=timeout + 10)

    def restart(self, mode: str = "fast", down_s: float = 0.0) -> None:
        self.stop(mode)
        if down_s:
            time.sleep(down_s)
        self.start()

    def running(self) -> bool:
        if not self.data.exists():
            return False
        result = self._run([str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data)], check=False, timeout=30)
        return result.returncode == 0

    def accepts_connections(self) -> bool:
        result = subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                 "-U", "postgres", "-t", "2"], capture_output=True, timeout=30)
        return result.returncode == 0

    def destroy(self) -> None:
        """Stop the server (immediately) if it runs and remove its directory. Safe to call more than once."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- addresses and databases ---------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run([str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                                 "-c", sql], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql: {result.stderr}")
        return result.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create ``name`` (optionally cloned from ``template``) and return its URL."""
        clause = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PgInstance]:
    """A started private PostgreSQL server for this test session; stopped and removed afterwards."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (set CALLSCOPE_TEST_PG_BIN)")
    instance = PgInstance.create()
    try:
        yield instance
    finally:
        instance.destroy()


@pytest_asyncio.fixture(scope="session")
async def private_template(private_pg: PgInstance) -> AsyncIterator[str]:
    """A database on the private server that ``callscope migrate`` brought to this release's schema; tests clone
    it (``private_pg.create_database(name, template=…)``), because ``callscope serve`` never migrates."""
    from storage.migrate import migrate

    name = "faults_template"
    private_pg.create_database(name)
    await migrate(private_pg.url(name))
    yield name
