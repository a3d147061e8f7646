"""Operations: ``callscope doctor`` and ``callscope health`` — checks that say what is wrong and what to do.

Each check returns one :class:`Check` (one printed line: ``OK`` / ``WARN`` / ``FAIL``, what was found, what to
fix). ``run_checks`` runs them in order: database (reachable → version → TimescaleDB and its policies →
schema revision → read-only role), ports, provisioning files. When the database cannot be reached, that one
line is the whole database diagnosis: the checks that need a connection are skipped, not failed again.

``describe_failure`` (database, bind, configuration and file errors) turns the exceptions users meet into one
sentence; the CLI prints it instead of a traceback, so ``serve`` and ``doctor`` word a failure the same way.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import yaml

from collector.settings import SETTINGS, Settings
from collector.tls import ClientTls, ServerTls, TlsProblem
from storage.deriver import read_backlog

__all__ = ["Check", "run_checks", "health", "describe_failure", "describe_database_error", "describe_bind_error",
           "redact", "default_health_endpoint"]

Level = Literal["ok", "warn", "fail"]
READER = "callscope_reader"
_MIN_SERVER = 140000          # date_bin() (latency views) needs PostgreSQL 14
_GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
                   errno.ECONNRESET}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level.upper():<4} {self.name}: {self.message}"
        return f"{text} → {self.fix}" if self.fix else text


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


# --- one sentence per failure ---------------------------------------------------------------------------------

def describe_database_error(exc: BaseException, url: str) -> str | None:
    """One sentence naming the URL and what to try, or None when ``exc`` is not a connection problem."""
    where = redact(url)
    if isinstance(exc, socket.gaierror):
        host = urlsplit(url).hostname
        return (f"cannot resolve the database host {host!r} in {where} ({exc.strerror}); "
                f"outside docker compose use 127.0.0.1 or the server's name in --database-url / "
                f"CALLSCOPE_DATABASE_URL.")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (f"no answer from the database at {where} (timed out); check the host, port and firewall, "
                f"or set --database-url / CALLSCOPE_DATABASE_URL.")
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return f"the database at {where} is starting or shutting down ({exc}); wait and try again."
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"the database at {where} refused the credentials ({exc}); check the user and password in the URL."
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"the database in {where} does not exist ({exc}); run `callscope migrate` (it creates it)."
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"the database at {where} refused the connection ({exc}); check the user and pg_hba.conf."
    if isinstance(exc, OSError) and (
            exc.errno in _CONNECT_ERRNOS or "connect call failed" in str(exc).lower()
            or "multiple exceptions" in str(exc).lower() or isinstance(exc, ConnectionError)):
        return (f"cannot reach the database at {where} ({exc}); is PostgreSQL running? "
                f"Start it (docker compose up -d timescaledb) or set --database-url / CALLSCOPE_DATABASE_URL.")
    return None


def describe_bind_error(exc: BaseException) -> str | None:
    """One sentence for a receiver that could not listen, or None."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Failed to bind to address"):
        address = text.split("address", 1)[1].split(";", 1)[0].strip()
        return (f"cannot listen for OTLP/gRPC on {address}: the port is in use or the address is not local; "
                f"stop the other process or pass --grpc-port / --bind-address.")
    if isinstance(exc, OSError) and text.startswith("cannot listen for OTLP/gRPC"):
        return f"{text}; stop the other process or pass --grpc-port / --bind-address."
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"a port is already in use ({exc}); pass --grpc-port / --http-port or stop the other process."
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"the bind address is not on this machine ({exc}); pass --bind-address 0.0.0.0 or a local address."
    if isinstance(exc, OSError) and exc.errno == errno.EACCES and "bind" in text.lower():
        return f"not allowed to listen there ({exc}); ports below 1024 need privileges, pick a higher port."
    return None


def describe_failure(exc: BaseException, database_url: str) -> str | None:
    """One sentence for any failure users commonly meet (see the module docstring), or None."""
    known = describe_bind_error(exc) or describe_database_error(exc, database_url)
    if known is not None:
        return known
    if isinstance(exc, TlsProblem):   # names the file and what is wrong with it
        return str(exc)
    if isinstance(exc, ValueError):
        text = str(exc).splitlines()[0] if str(exc) else ""
        # Configuration errors name the setting: "invalid configuration: …", "CALLSCOPE_GRPC_PORT: …",
        # "cannot read prices_file …".
        if text.startswith(("invalid configuration", "CALLSCOPE_")) or any(
                setting.name in text for setting in SETTINGS):
            return text
    if isinstance(exc, OSError) and exc.filename and exc.errno in {
            errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC}:
        return f"{exc.strerror}: {exc.filename}"
    return None


# --- gRPC health ----------------------------------------------------------------------------------------------

def default_health_endpoint(environ: dict[str, str] | None = None) -> str:
    """``127.0.0.1:<CALLSCOPE_GRPC_PORT or 4317>``: the container's own receiver, whatever port it was given."""
    environ = os.environ if environ is None else environ   # type: ignore[assignment]
    return f"127.0.0.1:{environ.get('CALLSCOPE_GRPC_PORT') or 4317}"


def health(endpoint: str, *, timeout: float = 3.0, service: str = "", tls: ClientTls | None = None) -> str:
    """Ask grpc.health.v1 at ``endpoint`` (over TLS with ``tls``); the status name (``SERVING``,
    ``NOT_SERVING``…) or ``UNREACHABLE: …``. The health service needs no API key."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # No proxy: a health probe of 127.0.0.1 must not go through http_proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    channel = grpc.insecure_channel(endpoint, options=options) if tls is None else \
        tls.grpc_channel(endpoint, options, aio=False)
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                           timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        name = code.name if code is not None else "ERROR"
        return "UNREACHABLE: " + ("no answer" if name in {"UNAVAILABLE", "DEADLINE_EXCEEDED"} else name)
    finally:
        channel.close()
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


# --- database -------------------------------------------------------------------------------------------------

def _revisions() -> tuple[str, set[str]]:
    """(newest revision, every revision) of the migrations shipped with this callscope."""
    from alembic.script import ScriptDirectory

    import storage

    directory = ScriptDirectory(str(Path(storage.__file__).resolve().parent / "migrations"))
    return str(directory.get_current_head()), {script.revision for script in directory.walk_revisions()}


async def _timescaledb(connection: Any, settings: Settings, server: str) -> Check:
    version = await connection.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if not version:
        available = await connection.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
        if available:
            preload = await connection.fetchval("SELECT current_setting('shared_preload_libraries')")
            if "timescaledb" not in (preload or ""):
                fix = ("add timescaledb to shared_preload_libraries in postgresql.conf, restart PostgreSQL, "
                       "then run `callscope migrate` on a new database")
            else:
                fix = "run `callscope migrate` on a new database (an existing plain schema is not converted)"
            return Check("timescaledb", "warn",
                         f"TimescaleDB {available} is installed on the server but not active in this database: "
                         f"plain tables, no compression or retention", fix)
        return Check("timescaledb", "warn",
                     f"TimescaleDB missing on {server}: plain PostgreSQL tables, no compression or retention "
                     f"(spans and events grow until you delete them)",
                     "use the timescale/timescaledb image (docker-compose.yml) or install the extension, then "
                     "run `callscope migrate` on a new database")
    hypertables = {row[0] for row in await connection.fetch(
        "SELECT hypertable_name FROM timescaledb_information.hypertables "
        "WHERE hypertable_name IN ('spans', 'events')")}
    if hypertables != {"spans", "events"}:
        missing = ", ".join(sorted({"spans", "events"} - hypertables))
        return Check("timescaledb", "warn",
                     f"TimescaleDB {version} is active but {missing} are plain tables (schema created before "
                     f"TimescaleDB was enabled): no compression or retention",
                     "migrate into a new database with TimescaleDB active")
    jobs = await connection.fetch(
        "SELECT j.hypertable_name, j.proc_name, j.scheduled, s.last_run_status "
        "FROM timescaledb_information.jobs j LEFT JOIN timescaledb_information.job_stats s USING (job_id) "
        "WHERE j.proc_name IN ('policy_compression', 'policy_retention') "
        "AND j.hypertable_name IN ('spans', 'events')")
    active = {(row["hypertable_name"], row["proc_name"]) for row in jobs if row["scheduled"]}
    # TimescaleDB compresses no table with row-level security (the tenant policies of 0013_tenants): migrate
    # gives those no compression policy
    policed = {row[0] for row in await connection.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
        "AND relname IN ('spans', 'events') AND relrowsecurity")}
    wanted = []
    if settings.compress_after_days > 0 and policed != {"spans", "events"}:
        wanted.append(("policy_compression", f"compression after {settings.compress_after_days} d"))
    if settings.retention_days > 0:
        wanted.append(("policy_retention", f"retention {settings.retention_days} d"))
    missing_policies = [f"{kind.split('_')[1]} on {table}" for kind, _ in wanted for table in ("spans", "events")
                        if (table, kind) not in active and not (kind == "policy_compression" and table in policed)]
    if missing_policies:
        return Check("timescaledb", "warn",
                     f"TimescaleDB {version}: no active {', '.join(missing_policies)} policy",
                     "run `callscope migrate` (it re-applies the policies from retention_days / "
                     "compress_after_days)")
    failing = [f"{row['proc_name'].split('_')[1]} on {row['hypertable_name']}" for row in jobs
               if row["last_run_status"] == "Failed"]
    if failing:
        # Registered is not running: e.g. TimescaleDB builds whose background jobs fail on a newer minor release.
        return Check("timescaledb", "warn",
                     f"TimescaleDB {version}: the {', '.join(sorted(failing))} policy jobs fail when they run",
                     "see SELECT * FROM timescaledb_information.job_errors and the server log; use a "
                     "TimescaleDB release that supports this PostgreSQL minor version")
    described = ", ".join(text for _, text in wanted) or "no compression or retention configured"
    if policed and settings.compress_after_days > 0:
        described += (f"; no compression of {' and '.join(sorted(policed))} (row-level security: TimescaleDB "
                      f"compresses no policed table)")
    return Check("timescaledb", "ok", f"TimescaleDB {version}; spans and events are hypertables; {described}")


async def _schema(connection: Any) -> Check:
    head, known = _revisions()
    exists = await connection.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    current = await connection.fetchval("SELECT version_num FROM alembic_version") if exists else None
    if current is None:
        return Check("schema", "warn", "no Callscope schema in this database yet",
                     "run `callscope migrate` (serve refuses to start until then)")
    if current == head:
        return Check("schema", "ok", f"at the newest revision {head}")
    if current not in known:
        return Check("schema", "fail",
                     f"revision {current} is unknown to this callscope (newest known {head}); the database was "
                     f"migrated by a newer version", "upgrade callscope (pip install -U callscope / new image)")
    return Check("schema", "warn", f"at revision {current}, newest is {head}",
                 "run `callscope migrate` (serve refuses to start until then)")


async def _derivation(connection: Any) -> Check:
    """Derive backlog and quarantine: calls whose ledger rows lag behind their telemetry."""
    backlog = await read_backlog(connection)
    if backlog.quarantined:
        rows = await connection.fetch("SELECT call_id, attempts, error FROM call_quarantine "
                                      "ORDER BY last_failed_at DESC LIMIT 3")
        sample = "; ".join(f"{r['call_id'][:64]} ({r['attempts']}×: {r['error'][:120]})" for r in rows)
        return Check("derivation", "warn",
                     f"{backlog.quarantined} call(s) quarantined because their derivation failed: {sample}",
                     "see SELECT * FROM call_quarantine; they are retried with backoff and when new data arrives")
    if backlog.calls and backlog.oldest_s > 60:
        return Check("derivation", "warn",
                     f"{backlog.calls} call(s) wait to be derived, the oldest write for {backlog.oldest_s:.0f} s",
                     "is a collector running? raise --derive-workers or run more collectors")
    return Check("derivation", "ok", f"{backlog.calls} call(s) waiting, oldest {backlog.oldest_s:.1f} s; none quarantined")


async def _reader_privileges(connection: Any) -> Check:
    """What callscope_reader can do beyond reading (storage/reader.py): migrate takes it away again."""
    from storage.reader import READER_RELATIONS

    if not await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", READER):
        return Check("reader privileges", "warn", f"role {READER} does not exist", "run `callscope migrate`")
    row = await connection.fetchrow(
        "SELECT ARRAY(SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relkind IN ('r', 'v', 'm', 'p', 'f') AND NOT c.relname = ANY($2::text[]) "
        "AND has_table_privilege($1, c.oid, 'SELECT') ORDER BY 1) AS internal, "
        "has_database_privilege($1, current_database(), 'TEMPORARY') AS temp, "
        "has_function_privilege($1, 'lo_create(oid)', 'EXECUTE') AS large_objects, "
        "ARRAY(SELECT p.proname FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace "
        "AND p.proname ~ '^callscope_(write|derive|refresh)' AND has_function_privilege($1, p.oid, 'EXECUTE') "
        "ORDER BY 1) AS routines", READER, list(READER_RELATIONS))
    extra = ([f"reads internal tables ({', '.join(row['internal'])})"] if row["internal"] else []) + \
        (["may create temporary tables"] if row["temp"] else []) + \
        ([f"may run {', '.join(row['routines'])}"] if row["routines"] else [])
    if extra:
        return Check("reader privileges", "warn", f"{READER} " + "; ".join(extra),
                     "run `callscope migrate` (it applies the reader's privileges on every run)")
    if row["large_objects"]:
        return Check("reader privileges", "warn", f"{READER} may create large objects",
                     "run `callscope migrate` once as a superuser (it revokes lo_create and the like from PUBLIC)")
    return Check("reader privileges", "ok", f"{READER} reads the public relations only")


async def _reader_role(connection: Any) -> Check:
    row = await connection.fetchrow("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", READER)
    if row is None:
        return Check("grafana role", "warn", f"role {READER} does not exist; Grafana's data source cannot log in",
                     "run `callscope migrate` with CALLSCOPE_READER_PASSWORD set")
    if not row["rolcanlogin"]:
        return Check("grafana role", "warn", f"role {READER} exists but cannot log in (NOLOGIN)",
                     f"set CALLSCOPE_READER_PASSWORD before the first `callscope migrate`, or run "
                     f"ALTER ROLE {READER} LOGIN PASSWORD '…'")
    return Check("grafana role", "ok", f"read-only role {READER} can log in")


async def _database_checks(settings: Settings, *, timeout: float) -> list[Check]:
    url = settings.database_url
    missing = False
    try:
        connection = await asyncpg.connect(url, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        # The server is up; `migrate` / `serve` create the database. Look at the server through `postgres`.
        missing = True
        try:
            connection = await asyncpg.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            return [Check("database", "fail", describe_database_error(exc, url) or f"{type(exc).__name__}: {exc}")]
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        message = describe_database_error(exc, url) or f"cannot connect to {redact(url)} ({type(exc).__name__}: {exc})"
        return [Check("database", "fail", message)]
    try:
        if missing:
            name = urlsplit(url).path.lstrip("/")
            checks = [Check("database", "warn", f"server reachable, but database {name!r} does not exist yet",
                            "run `callscope migrate` (it creates the database)")]
        else:
            checks = [Check("database", "ok", f"reachable at {redact(url)}")]
        number = int(await connection.fetchval("SELECT current_setting('server_version_num')"))
        server = "PostgreSQL " + str(await connection.fetchval("SELECT current_setting('server_version')")).split()[0]
        if number < _MIN_SERVER:
            checks.append(Check("postgresql", "fail", f"{server} is too old (the latency views use date_bin)",
                                "use PostgreSQL 14 or newer"))
        else:
            checks.append(Check("postgresql", "ok", server))
        checks.append(await _timescaledb(connection, settings, server))
        if not missing:
            schema = await _schema(connection)
            checks.append(schema)
            if schema.level == "ok":
                checks.append(await _derivation(connection))
                checks.append(await _reader_privileges(connection))
        checks.append(await _reader_role(connection))
        return checks
    finally:
        await connection.close()


# --- ports ----------------------------------------------------------------------------------------------------

def _probe_host(bind_address: str) -> str:
    return "127.0.0.1" if bind_address in {"0.0.0.0", "", "::"} else bind_address


async def _http_health(host: str, port: int, timeout: float, tls: ClientTls | None = None) -> int | None:
    import aiohttp

    address = f"[{host}]" if ":" in host else host
    scheme, context = ("https", tls.ssl_context()) if tls is not None else ("http", True)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(f"{scheme}://{address}:{port}/health", ssl=context,
                                   server_hostname=tls.server_name if tls is not None else None) as response:
                return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None


async def _port_check(label: str, flag: str, bind_address: str, port: int, *, timeout: float,
                      tls: ClientTls | None = None) -> Check:
    name = f"port {port} ({label})"
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((bind_address, port))
        return Check(name, "ok", f"free on {bind_address}")
    except OSError as exc:
        error = exc
    finally:
        probe.close()
    if error.errno != errno.EADDRINUSE:
        return Check(name, "fail", describe_bind_error(error) or f"cannot listen on {bind_address}:{port} ({error})")
    host = _probe_host(bind_address)
    if label == "gRPC":
        status = await asyncio.to_thread(health, f"{host}:{port}", timeout=timeout, tls=tls)
        if status == "SERVING":
            return Check(name, "ok", f"in use by a collector that answers gRPC health (SERVING) on {host}:{port}")
    else:
        code = await _http_health(host, port, timeout, tls)
        if code == 200:
            return Check(name, "ok", f"in use by a collector whose /health answers 200 on {host}:{port}")
        if code == 503:
            return Check(name, "fail", f"a collector listens on {host}:{port} but its /health says the database "
                                       f"is unavailable", "see the database line above")
    return Check(name, "fail", f"in use on {bind_address} by another process (no Callscope health answer)",
                 f"stop that process or pass {flag} / CALLSCOPE_{flag[2:].upper().replace('-', '_')}")


# --- who can write -------------------------------------------------------------------------------------------

def _security_checks(settings: Settings) -> tuple[list[Check], ClientTls | None]:
    """TLS files and the exposure of the receivers; the client TLS the port checks use to reach them."""
    checks = []
    tls = None
    loopback = settings.bind_address in {"127.0.0.1", "::1", "localhost"}
    if settings.tls_cert_file:
        try:
            server = ServerTls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        except TlsProblem as exc:
            checks.append(Check("tls", "fail", str(exc), "fix the file, or unset CALLSCOPE_TLS_CERT_FILE / "
                                                         "CALLSCOPE_TLS_KEY_FILE for plaintext"))
        else:
            checks.append(Check("tls", "ok", "receivers serve TLS only" + (" and require client certificates "
                                                                           "(mutual TLS)" if server.mutual else "")))
            try:
                tls = ClientTls.from_options(server_cert_fallback=True)
            except TlsProblem:
                tls = None
    elif loopback:
        checks.append(Check("tls", "ok", f"plaintext on loopback ({settings.bind_address}) only"))
    else:
        checks.append(Check("tls", "warn", f"receivers listen in plaintext on {settings.bind_address}: keys and "
                                           f"telemetry cross the network readable",
                            "set CALLSCOPE_TLS_CERT_FILE and CALLSCOPE_TLS_KEY_FILE, or terminate TLS in front"))
    if not settings.auth_required:
        level: Level = "ok" if loopback else "warn"
        checks.append(Check("auth", level, f"auth = off: anyone who reaches {settings.bind_address} writes "
                                           f"(as tenant 'default')",
                            "" if loopback else "set CALLSCOPE_AUTH=required and give clients API keys"))
    return checks, tls


async def _keys_check(settings: Settings, *, timeout: float) -> Check:
    if not settings.auth_required:
        return Check("api keys", "ok", "not checked (auth = off)")
    try:
        connection = await asyncpg.connect(settings.database_url, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the database line above says why
        return Check("api keys", "warn", f"cannot read api_keys ({type(exc).__name__})")
    try:
        active = await connection.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        tenants = await connection.fetchval("SELECT count(DISTINCT tenant) FROM api_keys WHERE revoked_at IS NULL")
    finally:
        await connection.close()
    if not active:
        return Check("api keys", "warn", "auth = required but no active API key: no client can write",
                     "create one with `callscope keys create --tenant default`")
    return Check("api keys", "ok", f"auth = required; {active} active key(s) for {tenants} tenant(s)")


# --- provisioning ---------------------------------------------------------------------------------------------

def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _files(directory: Path, *suffixes: str) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in suffixes)


def _parse_all(paths: list[Path], root: Path) -> tuple[dict[Path, Any], list[str]]:
    parsed: dict[Path, Any] = {}
    errors = []
    for path in paths:
        try:
            parsed[path] = _load(path)
        except (ValueError, yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            errors.append(f"{path.relative_to(root)}: {first}")
    return parsed, errors


def _local_path(grafana_path: str, root: Path) -> Path:
    if grafana_path.startswith(_GRAFANA_PROVISIONING):
        return root / grafana_path[len(_GRAFANA_PROVISIONING):].lstrip("/")
    return Path(grafana_path)


def _provisioning_checks(root: Path) -> list[Check]:
    regenerate = f"run `callscope dashboards --out {root}`"
    if not root.is_dir():
        return [Check("provisioning", "warn", f"no {root}/ directory here (only needed for Grafana)",
                      f"{regenerate} or pass --provisioning DIR")]
    checks: list[Check] = []

    datasource_files, errors = _parse_all(_files(root / "datasources", ".yaml", ".yml"), root)
    sources = [item for doc in datasource_files.values() for item in (doc or {}).get("datasources") or []]
    uids = {item.get("uid") for item in sources if isinstance(item, dict)}
    if errors:
        checks.append(Check("provisioning datasources", "fail", "; ".join(errors), regenerate))
    elif not sources:
        checks.append(Check("provisioning datasources", "fail", f"no data source under {root}/datasources",
                            regenerate))
    else:
        users = sorted({str(item.get("user")) for item in sources if isinstance(item, dict)})
        level: Level = "ok" if users == [READER] else "warn"
        checks.append(Check("provisioning datasources", level,
                            f"{len(sources)} data source(s) (uid {', '.join(sorted(map(str, uids)))}) as "
                            f"{', '.join(users)}",
                            "" if level == "ok" else f"Grafana should connect as the read-only role {READER}"))

    providers_docs, errors = _parse_all(_files(root / "dashboards", ".yaml", ".yml"), root)
    dashboard_paths = _files(root / "dashboards", ".json")
    dashboards, json_errors = _parse_all(dashboard_paths, root)
    errors += json_errors
    problems = list(errors)
    for doc in providers_docs.values():
        for provider in (doc or {}).get("providers") or []:
            path = ((provider or {}).get("options") or {}).get("path")
            if path and not any(_local_path(path, root) in p.parents for p in dashboard_paths):
                problems.append(f"provider {provider.get('name')!r} reads {path}, which has no dashboards here")
    seen: dict[str, Path] = {}
    for path, model in dashboards.items():
        uid = model.get("uid") if isinstance(model, dict) else None
        if not uid:
            problems.append(f"{path.relative_to(root)} has no uid")
        elif uid in seen:
            problems.append(f"uid {uid} in both {seen[uid].relative_to(root)} and {path.relative_to(root)}")
        else:
            seen[uid] = path
    if problems:
        checks.append(Check("provisioning dashboards", "fail", "; ".join(problems), regenerate))
    elif not dashboards:
        checks.append(Check("provisioning dashboards", "fail", f"no dashboard JSON under {root}/dashboards",
                            regenerate))
    else:
        checks.append(Check("provisioning dashboards", "ok",
                            f"{len(dashboards)} dashboards ({', '.join(sorted(seen))})"))

    alerting, errors = _parse_all(_files(root / "alerting", ".yaml", ".yml", ".json"), root)
    referenced = set()
    rules = 0
    for doc in alerting.values():
        for group in (doc or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                rules += 1
                referenced |= {item.get("datasourceUid") for item in rule.get("data") or []}
    unknown = sorted(str(uid) for uid in referenced - uids - {"__expr__", None})
    if errors:
        checks.append(Check("provisioning alerting", "fail", "; ".join(errors), regenerate))
    elif unknown:
        checks.append(Check("provisioning alerting", "fail",
                            f"alert rules read data source uid(s) {', '.join(unknown)} that no provisioned data "
                            f"source has", regenerate))
    elif not alerting:
        checks.append(Check("provisioning alerting", "warn", f"no alerting files under {root}/alerting",
                            regenerate))
    else:
        checks.append(Check("provisioning alerting", "ok", f"{len(alerting)} files, {rules} alert rules"))
    return checks


# --- all ------------------------------------------------------------------------------------------------------

async def run_checks(settings: Settings, *, provisioning: Path = Path("provisioning"), timeout: float = 3.0,
                     ports: bool = True) -> list[Check]:
    """Every check, in order; the caller prints ``check.line()`` and fails on any ``level == "fail"``."""
    checks = await _database_checks(settings, timeout=timeout)
    security, tls = _security_checks(settings)
    checks.extend(security)
    if any(check.name == "schema" and check.level == "ok" for check in checks):
        checks.append(await _keys_check(settings, timeout=timeout))
    if ports:
        checks.append(await _port_check("gRPC", "--grpc-port", settings.bind_address, settings.grpc_port,
                                        timeout=timeout, tls=tls))
        checks.append(await _port_check("HTTP", "--http-port", settings.bind_address, settings.http_port,
                                        timeout=timeout, tls=tls))
    checks.extend(_provisioning_checks(provisioning))
    return checks
