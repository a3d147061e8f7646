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
from collector.settings import SETTINGS, Settings, build_settings, parse_bool

__all__ = ["main"]

_SERVE_SETTINGS = tuple(s.name for s in SETTINGS)
_MIGRATE_SETTINGS = ("database_url", "retention_days", "compress_after_days", "prices_file", "log_level",
                     "log_format")
_DOCTOR_SETTINGS = ("database_url", "bind_address", "grpc_port", "http_port", "retention_days",
                    "compress_after_days")


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
                                 telephony_rates=(prices.telephony_rows(), prices.version)))
    print(f"schema at revision {report.revision}; storage mode: {report.mode}"
          + (f" (TimescaleDB {report.timescaledb_version})" if report.timescaledb_version else
             " (TimescaleDB not available: plain tables, no compression or retention)")
          + f"; routines v{report.routine_version} installed (kept: "
          + ", ".join(f"v{v}" for v in report.routine_versions) + ")"
          + f"; telephony rates {'written' if report.rates_changed else 'unchanged'} (prices {prices.version})")
    return 0


async def _collector_answers(endpoint: str, timeout: float = 5.0) -> bool:
    """Is a collector listening at ``endpoint``? (simulate would otherwise retry for minutes)."""
    if endpoint.startswith(("http://", "https://")):
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.get(endpoint.rstrip("/") + "/health") as response:
                    return response.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
    import grpc

    channel = grpc.aio.insecure_channel(endpoint.removeprefix("grpc://"))
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        await channel.close()


def _cmd_simulate(args: argparse.Namespace) -> int:
    from collector.simulate import run_simulation

    if not asyncio.run(_collector_answers(args.endpoint)):
        print(f"callscope: no collector answers at {args.endpoint}; start one with `callscope serve` "
              f"or pass --endpoint host:4317 (gRPC) / http://host:4318 (HTTP).", file=sys.stderr)
        return 2

    def progress(done: int) -> None:
        if sys.stderr.isatty() or args.progress:
            draw_progress(done, args.calls, "calls")

    report = asyncio.run(run_simulation(args.endpoint, calls=args.calls, concurrency=args.concurrency,
                                        seed=args.seed, progress=progress))
    if sys.stderr.isatty() or args.progress:
        sys.stderr.write("\n")
    print(_describe(report))
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

    status = health(args.endpoint, timeout=args.timeout)
    print(f"{args.endpoint}: {status}")
    return 0 if status == "SERVING" else 1


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
    health_cmd.set_defaults(run=_cmd_health)

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
