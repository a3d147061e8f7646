"""Command line: thin commands that parse flags, build ``Settings`` and call one library function each."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Callable, Sequence

from collector.cli.doctor import default_health_endpoint, describe_failure
from collector.logs import configure_logging
from collector.cli.progress import draw_progress
from collector.cli.tenants import add_tenants_parser
from collector.settings import SETTINGS, Settings, build_settings, parse_bool

__all__ = ["main"]

_SERVE_SETTINGS = tuple(s.name for s in SETTINGS)
_MIGRATE_SETTINGS = ("database_url", "retention_days", "compress_after_days", "reader_connection_limit",
                     "prices_file", "log_level", "log_format")
_DOCTOR_SETTINGS = ("database_url", "bind_address", "grpc_port", "http_port", "retention_days",
                    "compress_after_days", "auth", "tls_cert_file", "tls_key_file", "tls_client_ca_file")
_KEYS_SETTINGS = ("database_url", "log_level", "log_format")


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    group = parser.add_argument_group("configuration (flag > environment variable > default)")
    for setting in SETTINGS:
        if setting.name in names:
            group.add_argument(setting.flag, dest=setting.name, type=setting.parse, default=None,
                               metavar=setting.name.split("_")[-1].upper(),
                               help=f"{setting.help} [env {setting.env}; default {setting.default!r}]")


def _settings(args: argparse.Namespace) -> Settings:
    return build_settings({s.name: getattr(args, s.name, None) for s in SETTINGS})


def _cmd_serve(args: argparse.Namespace) -> int:
    from collector.server import serve

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from collector.cost import PriceTable
    from storage.migrate import migrate

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    prices = PriceTable.load(settings.prices_file or None)
    report = asyncio.run(migrate(settings.database_url, retention_days=settings.retention_days,
                                 compress_after_days=settings.compress_after_days,
                                 reader_connection_limit=settings.reader_connection_limit,
                                 telephony_rates=(prices.telephony_rows(), prices.version)))
    print(f"schema at revision {report.revision}; storage mode: {report.mode}"
          + (f" (TimescaleDB {report.timescaledb_version})" if report.timescaledb_version else
             " (TimescaleDB not available: plain tables, no compression or retention)")
          + f"; routines v{report.routine_version} installed (kept: "
          + ", ".join(f"v{v}" for v in report.routine_versions) + ")"
          + f"; telephony rates {'written' if report.rates_changed else 'unchanged'} (prices {prices.version})")
    return 0


def _add_client_tls(parser: argparse.ArgumentParser, *, beside_collector: bool = False) -> None:
    """Flags of a client that talks to a collector (health, simulate); environment variables as defaults."""
    group = parser.add_argument_group("TLS to the collector (flag > environment variable)")
    group.add_argument("--tls", action="store_true",
                       help="talk TLS, trusting the system's CAs (implied by --tls-ca-file, an https:// endpoint"
                            + (", and CALLSCOPE_TLS_CERT_FILE: then the collector's own certificate is trusted"
                               if beside_collector else "") + ")")
    group.add_argument("--tls-ca-file", metavar="FILE",
                       help="PEM CA bundle (or the server's own certificate) to verify the collector with "
                            "[env CALLSCOPE_TLS_CA_FILE]")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="name to check in the collector's certificate (default: the endpoint's host) "
                            "[env CALLSCOPE_TLS_SERVER_NAME]")
    group.add_argument("--tls-client-cert-file", metavar="FILE",
                       help="client certificate for mutual TLS [env CALLSCOPE_TLS_CLIENT_CERT_FILE]")
    group.add_argument("--tls-client-key-file", metavar="FILE",
                       help="its private key [env CALLSCOPE_TLS_CLIENT_KEY_FILE]")


def _client_tls(args: argparse.Namespace, *, https: bool = False, beside_collector: bool = False) -> Any:
    from collector.tls import ClientTls

    return ClientTls.from_options(tls=args.tls or https, ca_file=args.tls_ca_file, server_name=args.tls_server_name,
                                  cert_file=args.tls_client_cert_file, key_file=args.tls_client_key_file,
                                  server_cert_fallback=beside_collector)


async def _collector_answers(endpoint: str, timeout: float = 5.0, tls: Any = None) -> bool:
    """Is a collector listening at ``endpoint``? (simulate would otherwise retry for minutes)."""
    if endpoint.startswith(("http://", "https://")):
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.get(endpoint.rstrip("/") + "/health",
                                       ssl=tls.ssl_context() if tls is not None else True,
                                       server_hostname=tls.server_name if tls is not None else None) as response:
                    return response.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
    import grpc

    target = endpoint.removeprefix("grpc://")
    channel = grpc.aio.insecure_channel(target) if tls is None else tls.grpc_channel(target)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        await channel.close()


def _cmd_simulate(args: argparse.Namespace) -> int:
    from collector.simulate import run_simulation

    tls = _client_tls(args, https=args.endpoint.startswith("https://"))
    if not asyncio.run(_collector_answers(args.endpoint, tls=tls)):
        hint = " (over TLS: is --tls-ca-file the collector's CA, and its name in the certificate?)" if tls else \
            " (a collector with TLS needs --tls or --tls-ca-file)"
        print(f"callscope: no collector answers at {args.endpoint}{hint}; start one with `callscope serve` "
              f"or pass --endpoint host:4317 (gRPC) / http://host:4318 (HTTP).", file=sys.stderr)
        return 2

    def progress(done: int) -> None:
        if sys.stderr.isatty() or args.progress:
            draw_progress(done, args.calls, "calls")

    report = asyncio.run(run_simulation(args.endpoint, calls=args.calls, concurrency=args.concurrency,
                                        seed=args.seed, progress=progress, tls=tls, api_key=args.api_key or None))
    if sys.stderr.isatty() or args.progress:
        sys.stderr.write("\n")
    print(_describe(report))
    if any(error.startswith(("UNAUTHENTICATED", "HTTP 401")) for error in report.errors):
        print("callscope: the collector refused the API key: pass one from `callscope keys create` in "
              "CALLSCOPE_API_KEY (or --api-key)", file=sys.stderr)
    return 0 if not report.rejected and not report.failed_requests else 1


def _describe(report: Any) -> str:
    from dataclasses import asdict

    return "simulation finished: " + ", ".join(f"{k}={v}" for k, v in asdict(report).items())


def _dashboard_fields() -> list[tuple[str, type, object, bool]]:
    """(name, type, default, is_threshold) of every generator option: each becomes a ``--flag``."""
    from dataclasses import MISSING, fields

    from dashboards.generate import AlertThresholds, DashboardOptions

    found = []
    for owner, is_threshold in ((DashboardOptions, False), (AlertThresholds, True)):
        for item in fields(owner):
            if item.name == "thresholds":
                continue
            default = item.default if item.default is not MISSING else None
            kind = type(default) if default is not None else str
            found.append((item.name, kind, default, is_threshold))
    return found


def _cmd_dashboards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dashboards.generate import AlertThresholds, DashboardOptions, write_provisioning

    chosen = {name: getattr(args, name) for name, *_ in _dashboard_fields() if getattr(args, name) is not None}
    threshold_names = {name for name, _, _, is_threshold in _dashboard_fields() if is_threshold}
    thresholds = AlertThresholds(**{k: v for k, v in chosen.items() if k in threshold_names})
    options = DashboardOptions(thresholds=thresholds,
                               **{k: v for k, v in chosen.items() if k not in threshold_names})
    written = write_provisioning(Path(args.out), options=options)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from collector.cli.doctor import health

    status = health(args.endpoint, timeout=args.timeout, tls=_client_tls(args, beside_collector=True))
    print(f"{args.endpoint}: {status}")
    return 0 if status == "SERVING" else 1


def _cmd_keys(args: argparse.Namespace) -> int:
    """``callscope keys create | list | revoke``: one connection, one library call (storage/keys.py)."""
    import asyncpg

    from storage.keys import KeyProblem, create_key, list_keys, revoke_key

    settings = _settings(args)

    async def run() -> int:
        connection = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            if args.keys_command == "create":
                key = None
                if args.key_from_env:
                    key = os.environ.get(args.key_from_env)
                    if not key:
                        raise KeyProblem(f"environment variable {args.key_from_env} is not set or empty")
                row, secret, created = await create_key(connection, args.tenant, args.label, key)
                if key is None:
                    print(secret)   # stdout holds the key alone: key=$(callscope keys create …)
                    print(f"created API key {row.id} for tenant {row.tenant!r}: it is shown only now, store it. "
                          f"Clients send it as 'Authorization: Bearer <key>' "
                          f"(OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<key>).", file=sys.stderr)
                else:
                    print(f"{'registered' if created else 'already registered:'} API key {row.id} from "
                          f"${args.key_from_env} for tenant {row.tenant!r}")
            elif args.keys_command == "list":
                rows = await list_keys(connection)
                print(f"{'id':<16} {'tenant':<16} {'status':<27} {'created':<20} {'last used':<20} label")
                for row in rows:
                    status = "active" if row.revoked_at is None else f"revoked {row.revoked_at:%Y-%m-%d %H:%M:%S}"
                    used = f"{row.last_used_at:%Y-%m-%d %H:%M:%S}" if row.last_used_at else "never"
                    print(f"{row.id:<16} {row.tenant:<16} {status:<27} {row.created_at:%Y-%m-%d %H:%M:%S}  "
                          f"{used:<20} {row.label or ''}")
            else:
                row = await revoke_key(connection, args.id)
                print(f"revoked API key {row.id} (tenant {row.tenant!r}) at {row.revoked_at:%Y-%m-%d %H:%M:%S %Z}; "
                      f"collectors refuse it within auth_refresh_s (default 5 s)")
        finally:
            await connection.close()
        return 0

    try:
        return asyncio.run(run())
    except KeyProblem as problem:
        print(f"callscope: {problem}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError:
        print("callscope: this database has no api_keys table yet: run `callscope migrate` first", file=sys.stderr)
        return 2


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from collector.cli.doctor import run_checks

    checks = asyncio.run(run_checks(_settings(args), provisioning=Path(args.provisioning), timeout=args.timeout))
    for check in checks:
        print(check.line())
    return 1 if any(check.level == "fail" for check in checks) else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callscope",
        description="OpenTelemetry-native call ledger, latency breakdowns and alerts for voice AI agents.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the OTLP receiver (gRPC :4317, HTTP :4318)",
                                description="Receive OTLP traces and logs over gRPC and HTTP and write them to the "
                                            "call ledger. Refuses to start unless `callscope migrate` brought the "
                                            "database to this release's schema. SIGTERM stops accepting, flushes "
                                            "what was accepted and exits within --shutdown-timeout-s.")
    _add_settings(serve, _SERVE_SETTINGS)
    serve.set_defaults(run=_cmd_serve)

    migrate_cmd = commands.add_parser("migrate", help="create or upgrade the database schema (idempotent)",
                                      description="Create or upgrade the schema; with TimescaleDB also the "
                                                  "hypertables, compression and retention policies; install this "
                                                  "release's routines (keeping the previous release's, so its "
                                                  "collectors keep running during a rollout) and the telephony "
                                                  "rates of the price table. Safe while collectors run.")
    _add_settings(migrate_cmd, _MIGRATE_SETTINGS)
    migrate_cmd.set_defaults(run=_cmd_migrate)

    simulate = commands.add_parser("simulate", help="send realistic voice-agent telemetry to a collector",
                                   description="Generate realistic voice-agent calls (every status, turns with "
                                               "STT/LLM/TTS, tools, interruptions, webhooks) and send them over "
                                               "OTLP, like an instrumented agent would.")
    simulate.add_argument("--endpoint", default=os.environ.get("CALLSCOPE_SIMULATE_ENDPOINT", "127.0.0.1:4317"),
                          help="host:port for OTLP/gRPC, or http://host:4318 for OTLP/HTTP "
                               "[env CALLSCOPE_SIMULATE_ENDPOINT; default 127.0.0.1:4317]")
    simulate.add_argument("--calls", type=int, default=50, help="number of calls to send [default 50]")
    simulate.add_argument("--concurrency", type=int, default=8, help="calls in flight at once [default 8]")
    simulate.add_argument("--seed", type=int, default=1, help="random seed (same seed, same calls) [default 1]")
    simulate.add_argument("--progress", action="store_true", help="draw the progress bar even when not a TTY")
    simulate.add_argument("--api-key", default=os.environ.get("CALLSCOPE_API_KEY", ""), metavar="KEY",
                          help="API key sent as 'Authorization: Bearer KEY' (prefer the environment variable: "
                               "flags show in process lists) [env CALLSCOPE_API_KEY]")
    _add_client_tls(simulate)
    simulate.set_defaults(run=_cmd_simulate)

    dashboards = commands.add_parser("dashboards", help="generate Grafana provisioning (dashboards, alerts)",
                                     description="Write the Grafana datasource, dashboards and alert rules "
                                                 "(generated with grafana-foundation-sdk) under --out.")
    dashboards.add_argument("--out", default="provisioning", help="output directory [default provisioning]")
    generator = dashboards.add_argument_group("generator options (alert thresholds, data source)")
    for name, kind, default, _ in _dashboard_fields():
        parse = parse_bool if kind is bool else kind
        generator.add_argument("--" + name.replace("_", "-"), dest=name, type=parse, default=None,
                               help=f"default {default!r}")
    dashboards.set_defaults(run=_cmd_dashboards)

    health_cmd = commands.add_parser("health", help="ask a collector's gRPC health service (exit 0 if SERVING)",
                                     description="Query grpc.health.v1 of a running collector and print one "
                                                 "line; exit 0 when it answers SERVING, 1 otherwise. The "
                                                 "container HEALTHCHECK runs this.")
    health_cmd.add_argument("--endpoint", default=default_health_endpoint(), metavar="HOST:PORT",
                            help="host:port of the OTLP/gRPC receiver "
                                 "[default 127.0.0.1:$CALLSCOPE_GRPC_PORT, else 127.0.0.1:4317]")
    health_cmd.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                            help="seconds to wait for the answer [default 3]")
    _add_client_tls(health_cmd, beside_collector=True)
    health_cmd.set_defaults(run=_cmd_health)

    keys = commands.add_parser("keys", help="create, list and revoke API keys (who may write, as which tenant)",
                               description="API keys of the OTLP receivers. A key is shown once, at creation; "
                                           "only its SHA-256 digest is stored. Clients send 'Authorization: "
                                           "Bearer <key>'. Revoked keys are refused within auth_refresh_s.")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_commands.add_parser("create", help="create a key for a tenant and print it (once)",
                                      description="Create an API key for --tenant and print it on stdout (alone, "
                                                  "for scripts); it cannot be shown again. With --key-from-env, "
                                                  "register the key held in that environment variable instead "
                                                  "(idempotent: compose runs it on every start).")
    create.add_argument("--tenant", required=True, help="tenant the key writes as ('default' always exists)")
    create.add_argument("--label", help="what the key is for (shown by `keys list`)")
    create.add_argument("--key-from-env", metavar="VAR",
                        help="register the key in environment variable VAR (at least 24 characters, e.g. "
                             "`openssl rand -hex 32`) instead of generating one")
    _add_settings(create, _KEYS_SETTINGS)
    listing = keys_commands.add_parser("list", help="list keys (id, tenant, status, last use; never the key)")
    _add_settings(listing, _KEYS_SETTINGS)
    revoke = keys_commands.add_parser("revoke", help="revoke a key by its id (see `keys list`)")
    revoke.add_argument("id", help="the key's id (the part after csk_ for generated keys)")
    _add_settings(revoke, _KEYS_SETTINGS)
    keys.set_defaults(run=_cmd_keys)

    add_tenants_parser(commands, lambda sub: _add_settings(sub, _KEYS_SETTINGS), _settings)

    doctor = commands.add_parser("doctor", help="check the database, ports and provisioning files; say what to fix",
                                 description="Check the database (reachable, version, TimescaleDB and its "
                                             "compression/retention policies, schema revision, Grafana's read-only "
                                             "role), the receiver ports and the Grafana provisioning files. One "
                                             "line per check (OK / WARN / FAIL and what to fix); exit 0 when "
                                             "nothing failed.")
    _add_settings(doctor, _DOCTOR_SETTINGS)
    doctor.add_argument("--provisioning", default="provisioning", metavar="DIR",
                        help="Grafana provisioning directory to check [default provisioning]")
    doctor.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help="seconds per network check [default 3]")
    doctor.set_defaults(run=_cmd_doctor)
    return parser


def _friendly(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One clear line for the failures users meet, instead of a traceback (collector/cli/doctor.py knows them)."""
    from storage.errors import SchemaMismatch

    if isinstance(exc, SchemaMismatch):   # serve against a database of another revision: says what to run
        return str(exc)
    url = getattr(args, "database_url", None) or os.environ.get("CALLSCOPE_DATABASE_URL") or SETTINGS[0].default
    return describe_failure(exc, url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - turned into one line when we know the cause
        message = _friendly(exc, args)
        if message is None:
            raise
        print(f"callscope: {message}", file=sys.stderr)
        return 2
