"""The one-command stack: docker-compose.yml and the Dockerfile, checked without Docker.

The compose file is validated against the Compose specification schema (``../shared/schemas/compose-spec.json``)
and read for what the stack promises: pinned images, healthchecks, ports, ``depends_on`` conditions, named
volumes, provisioning paths that exist, Grafana as the read-only role. Then the container's command lines run
here, outside Docker, with the environment compose gives them: ``callscope migrate`` (the reader role can log in
and cannot write) and ``callscope serve`` (healthy through ``callscope health``, stores a span, exits 0 on SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import grpc
import jsonschema
import pytest
import yaml

from collector.cli.commands import _parser
from tests.conftest import drop_database, url_for
from tests.otlp_client import GrpcClient
from tests.test_receiver import request_of, span

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
READER = "callscope_reader"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


COMPOSE = _compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (enough for our file)."""
    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if environ.get(name):
            return environ[name]
        if operator == ":-":
            return argument
        if operator == ":?":
            raise KeyError(f"{name}: {argument}")
        return ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


def service_env(name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    raw = SERVICES[name].get("environment") or {}
    assert isinstance(raw, dict), "environment is written as a mapping"
    return {key: interpolate(str(value), environ or {}) for key, value in raw.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list), f"exec form expected, got {text!r}"
    return value


DOCKERFILE = dockerfile_instructions()
ENTRYPOINT = _exec_form(next(rest for keyword, rest in DOCKERFILE if keyword == "ENTRYPOINT"))


def _callscope_services() -> list[str]:
    return [name for name, service in SERVICES.items() if "build" in service]


# --- compose: schema and shape ----------------------------------------------------------------------------------

def test_compose_file_validates_against_the_compose_specification():
    assert COMPOSE_SCHEMA.is_file(), f"{COMPOSE_SCHEMA} missing: clone shared/ beside the repository"
    jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(COMPOSE)


def test_stack_has_the_promised_services():
    assert {"timescaledb", "migrate", "api-key", "collector", "lb", "grafana", "demo"} <= set(SERVICES)
    assert SERVICES["demo"]["profiles"] == ["demo"]
    assert all("profiles" not in SERVICES[name] for name in ("timescaledb", "migrate", "collector", "lb", "grafana"))


def test_images_are_pinned_to_explicit_versions():
    for name, service in SERVICES.items():
        if "build" in service:
            assert service["build"] in (".", {"context": "."}), name
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no explicit tag"
        assert "latest" not in tag and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned"
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg1[67]", SERVICES["timescaledb"]["image"])
    assert re.fullmatch(r"grafana/grafana:1[12]\.\d+\.\d+", SERVICES["grafana"]["image"])
    assert re.fullmatch(r"envoyproxy/envoy:v1\.\d+\.\d+", SERVICES["lb"]["image"])


def test_long_running_services_have_healthchecks_and_one_shots_do_not():
    for name in ("timescaledb", "collector", "lb", "grafana"):
        check = SERVICES[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name
        assert {"interval", "timeout", "retries"} <= set(check), name
    assert "pg_isready" in SERVICES["timescaledb"]["healthcheck"]["test"][1]
    assert SERVICES["collector"]["healthcheck"]["test"] == ["CMD", "callscope", "health"]
    assert "/api/health" in SERVICES["grafana"]["healthcheck"]["test"][1]
    for name in ("migrate", "api-key", "demo"):   # one-shot: the image's HEALTHCHECK would mark them unhealthy
        assert SERVICES[name]["healthcheck"] == {"disable": True} and SERVICES[name]["restart"] == "no", name


def _published(name: str) -> dict[int, str]:
    """container port -> host address, from "host:hostport:containerport" entries."""
    ports = {}
    for entry in SERVICES[name].get("ports", []):
        host, host_port, container_port = interpolate(entry, {}).rsplit(":", 2)
        assert host_port == container_port, entry
        ports[int(container_port)] = host
    return ports


def test_ports_are_published_on_localhost_by_default():
    # OTLP goes through the load balancer; collectors publish nothing, so `--scale collector=N` has no port clash
    assert _published("lb") == {4317: "127.0.0.1", 4318: "127.0.0.1"}
    assert "ports" not in SERVICES["collector"] and "container_name" not in SERVICES["collector"]
    assert _published("grafana") == {3000: "127.0.0.1"}
    assert "ports" not in SERVICES["timescaledb"], "the database stays on the compose network"
    assert interpolate(SERVICES["lb"]["ports"][0], {"PUBLISH_HOST": "0.0.0.0"}).startswith("0.0.0.0:")
    exposed = {int(port) for keyword, rest in DOCKERFILE if keyword == "EXPOSE" for port in rest.split()}
    assert exposed == {4317, 4318}


def test_depends_on_always_waits_for_a_condition():
    expected = {
        "migrate": {"timescaledb": "service_healthy"},
        "api-key": {"migrate": "service_completed_successfully"},
        "collector": {"timescaledb": "service_healthy", "migrate": "service_completed_successfully",
                      "api-key": "service_completed_successfully"},
        "grafana": {"timescaledb": "service_healthy", "migrate": "service_completed_successfully"},
        "lb": {"collector": "service_healthy"},
        "demo": {"lb": "service_healthy"},
    }
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with a condition"
        assert {dep: value["condition"] for dep, value in depends.items()} == expected.get(name, {}), name


def test_state_lives_in_named_volumes():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared
    assert "timescaledb-data:/var/lib/postgresql/data" in SERVICES["timescaledb"]["volumes"]
    assert "grafana-data:/var/lib/grafana" in SERVICES["grafana"]["volumes"]


def test_grafana_provisioning_paths_exist_in_the_repository():
    mounts = [volume.split(":") for volume in SERVICES["grafana"]["volumes"]]
    binds = {target: (source, options) for source, target, *options in mounts if source.startswith(".")}
    source, options = binds[GRAFANA_PROVISIONING]
    assert options == ["ro"], "provisioning is mounted read-only"
    local = (ROOT / source).resolve()
    for sub in ("datasources", "dashboards", "alerting"):
        assert (local / sub).is_dir(), sub

    def in_repo(grafana_path: str) -> Path:
        assert grafana_path.startswith(GRAFANA_PROVISIONING), grafana_path
        return local / grafana_path[len(GRAFANA_PROVISIONING):].lstrip("/")

    for provider_file in (local / "dashboards").glob("*.yaml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            folder = in_repo(provider["options"]["path"])
            assert list(folder.glob("*.json")), f"{provider_file.name}: {folder} has no dashboards"
    for key, value in service_env("grafana", {"GRAFANA_ADMIN_PASSWORD": "x"}).items():
        if value.startswith(GRAFANA_PROVISIONING):
            assert in_repo(value).is_file(), key


def test_grafana_logs_in_as_the_read_only_role_and_has_no_anonymous_admin():
    env = SERVICES["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?"), "no default admin password"
    with pytest.raises(KeyError):
        service_env("grafana", {})
    datasources = yaml.safe_load((ROOT / "provisioning/datasources/callscope.yaml").read_text())["datasources"]
    (source,) = datasources
    assert source["user"] == READER
    assert source["secureJsonData"]["password"] == "$CALLSCOPE_READER_PASSWORD"
    # Grafana gets the same password that migrate gives the role.
    assert env["CALLSCOPE_READER_PASSWORD"] == SERVICES["migrate"]["environment"]["CALLSCOPE_READER_PASSWORD"]
    host, port = source["url"].split(":")
    assert host in SERVICES and SERVICES[host]["image"].startswith("timescale/timescaledb:") and port == "5432"
    assert source["jsonData"]["database"] == SERVICES["timescaledb"]["environment"]["POSTGRES_DB"]


def test_collector_and_migrate_share_one_database_url_and_retention():
    database = SERVICES["timescaledb"]["environment"]
    env = {"POSTGRES_PASSWORD": "s3cret"}
    for name in ("migrate", "collector"):
        url = urlsplit(service_env(name, env)["CALLSCOPE_DATABASE_URL"])
        assert (url.hostname, url.port, url.path) == ("timescaledb", 5432, "/" + database["POSTGRES_DB"])
        assert url.username == database["POSTGRES_USER"] and url.password == "s3cret"
    assert service_env("migrate") == service_env("collector")
    assert interpolate(database["POSTGRES_PASSWORD"], env) == "s3cret"


def test_every_callscope_command_line_in_the_stack_parses():
    assert ENTRYPOINT == ["callscope"]
    command_lines = [SERVICES[name]["command"] for name in _callscope_services()]
    command_lines.append(SERVICES["collector"]["healthcheck"]["test"][2:])
    command_lines.append(_exec_form(next(rest for keyword, rest in DOCKERFILE if keyword == "CMD")))
    for command in command_lines:
        _parser().parse_args(command)
    assert SERVICES["collector"]["command"] == ["serve"] and SERVICES["migrate"]["command"] == ["migrate"]
    assert SERVICES["demo"]["command"] == ["simulate", "--endpoint", "lb:4317", "--calls", "200"]


def test_the_stack_writes_with_an_api_key_from_the_environment():
    """Secure out of the box: the collector requires keys (the default), api-key registers CALLSCOPE_API_KEY
    (a local-only default, like the passwords) and the demo sends that same key; the demo gets no database."""
    collector = service_env("collector")
    assert "CALLSCOPE_AUTH" not in collector   # auth = required
    assert SERVICES["api-key"]["command"][-2:] == ["--key-from-env", "CALLSCOPE_API_KEY"]
    assert service_env("api-key")["CALLSCOPE_API_KEY"] == service_env("demo")["CALLSCOPE_API_KEY"] \
        == "callscope-local-only-api-key"
    chosen = {"CALLSCOPE_API_KEY": "k" * 40}
    assert service_env("api-key", chosen)["CALLSCOPE_API_KEY"] == service_env("demo", chosen)["CALLSCOPE_API_KEY"]
    assert "CALLSCOPE_DATABASE_URL" not in service_env("demo")
    assert collector["CALLSCOPE_PII"] == "card=mask"
    # TLS is the load balancer's (the collectors behind it are on the compose network): off unless chosen
    lb_config = SERVICES["lb"]["volumes"][0]
    assert interpolate(lb_config, {}).startswith("./provisioning/envoy/envoy.yaml:")
    assert interpolate(lb_config, {"CALLSCOPE_LB_CONFIG": "envoy-tls.yaml"}).startswith(
        "./provisioning/envoy/envoy-tls.yaml:")
    assert "./certs:/certs:ro" in SERVICES["lb"]["volumes"] and "./certs:/certs:ro" in SERVICES["demo"]["volumes"]


# --- Dockerfile -------------------------------------------------------------------------------------------------

def test_dockerfile_runs_as_non_root_with_a_pinned_slim_base_and_a_grpc_healthcheck():
    keywords = [keyword for keyword, _ in DOCKERFILE]
    (base,) = [rest for keyword, rest in DOCKERFILE if keyword == "FROM"]
    assert re.fullmatch(r"python:3\.1[12]\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    users = [rest for keyword, rest in DOCKERFILE if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "USER after the last RUN"
    (healthcheck,) = [rest for keyword, rest in DOCKERFILE if keyword == "HEALTHCHECK"]
    assert healthcheck.split(" CMD ", 1)[1] == '["callscope", "health"]'
    assert any(keyword == "RUN" and rest.startswith("pip install . ") for keyword, rest in DOCKERFILE)
    assert _exec_form(next(rest for keyword, rest in DOCKERFILE if keyword == "CMD")) == ["serve"]


def test_dockerignore_keeps_secrets_and_history_out_of_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".env", "tests", ".venv", "**/__pycache__"} <= ignored
    assert not ignored & {"provisioning", "collector", "storage", "dashboards", "pyproject.toml", "README.md"}


# --- the container's command lines, run here --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _callscope() -> list[str]:
    script = Path(sys.executable).with_name("callscope")
    return [str(script)] if script.exists() else [sys.executable, "-m", "collector.cli"]


def _container_env(service: str, database_url: str, **extra: str) -> dict[str, str]:
    """The process environment a container of ``service`` gets, with the database swapped for the test's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALLSCOPE_")}
    env.update(service_env(service))
    compose_url = urlsplit(env["CALLSCOPE_DATABASE_URL"])
    assert compose_url.hostname == "timescaledb"
    env["CALLSCOPE_DATABASE_URL"] = database_url
    env.update(extra)
    return env


async def _run(command: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(), err.decode()


async def _reader_state() -> tuple[bool, str | None] | None:
    admin = await asyncpg.connect(url_for("postgres"))
    try:
        row = await admin.fetchrow("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1", READER)
    finally:
        await admin.close()
    return None if row is None else (row["rolcanlogin"], row["rolpassword"])


async def _restore_reader(state: tuple[bool, str | None] | None) -> None:
    """The role is cluster-wide: put back what other tests and databases saw before this one."""
    if state is None:
        return
    admin = await asyncpg.connect(url_for("postgres"))
    try:
        login, password = state
        secret = "NULL" if password is None else "'" + password.replace("'", "''") + "'"
        await admin.execute(f"ALTER ROLE {READER} {'LOGIN' if login else 'NOLOGIN'} PASSWORD {secret}")
    finally:
        await admin.close()


async def test_migrate_service_command_gives_grafana_a_read_only_login():
    name = "callscope_stack_migrate"
    await drop_database(name)
    before = await _reader_state()
    env = _container_env("migrate", url_for(name))
    password = env["CALLSCOPE_READER_PASSWORD"]
    command = _callscope() + SERVICES["migrate"]["command"]
    try:
        code, out, err = await _run(command, env, timeout=60)
        assert code == 0, err
        assert out.startswith("schema at revision ") and "\n" == out[-1] and out.count("\n") == 1, out
        reader_url = url_for(name).replace("://postgres@", f"://{READER}:{password}@", 1)
        reader = await asyncpg.connect(reader_url)
        try:
            assert await reader.fetchval("SELECT current_user") == READER
            assert await reader.fetchval("SELECT count(*) FROM calls") == 0
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await reader.execute("DELETE FROM calls")
        finally:
            await reader.close()
    finally:
        await drop_database(name)
        await _restore_reader(before)


async def _wait_healthy(env: dict[str, str], process: asyncio.subprocess.Process, deadline: float) -> str:
    health = _callscope() + SERVICES["collector"]["healthcheck"]["test"][2:]   # exactly what Docker runs
    while time.monotonic() < deadline:
        assert process.returncode is None, "collector exited before it was healthy"
        code, out, _ = await _run(health, env, timeout=10)
        if code == 0:
            return out
        await asyncio.sleep(0.2)
    raise AssertionError("collector never became healthy")


async def _metric(port: int, name: str) -> float:
    """A metric's value, summed over its labels (``name`` is the sample name, e.g. ``..._total``)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    family = families[name.removesuffix("_total")]   # a counter's family is named without the suffix
    return sum(sample.value for sample in family.samples if sample.name == name)


async def test_collector_entrypoint_serves_and_commits_the_in_flight_export_on_sigterm(database_url, db):
    grpc_port, http_port = _free_port(), _free_port()
    # As compose runs it, plus free ports, and batches that wait 1.5 s: long enough that the Export is still
    # in flight (accepted, not committed) when SIGTERM arrives, whatever the machine's speed.
    env = _container_env("collector", database_url, CALLSCOPE_GRPC_PORT=str(grpc_port),
                         CALLSCOPE_HTTP_PORT=str(http_port), CALLSCOPE_MAX_WAIT_MS="1500")
    # as compose does before it starts the collector: register the key from the environment (twice: idempotent)
    for _ in range(2):
        code, _, err = await _run(_callscope() + SERVICES["api-key"]["command"], _container_env("api-key", database_url))
        assert code == 0, err
    grace_s = float(SERVICES["collector"]["stop_grace_period"].removesuffix("s"))   # "30s" in compose
    command = _callscope() + SERVICES["collector"]["command"]
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        answer = await _wait_healthy(env, process, time.monotonic() + 20)
        assert answer.strip() == f"127.0.0.1:{grpc_port}: SERVING"

        keyless = GrpcClient(grpc_port)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await keyless.send(request_of(span("llm", os.urandom(16), os.urandom(8), call_id="stack-0")))
        await keyless.close()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        client = GrpcClient(grpc_port, api_key=service_env("demo")["CALLSCOPE_API_KEY"])
        trace_id, span_id = os.urandom(16), os.urandom(8)
        export = asyncio.create_task(client.send(request_of(span("llm", trace_id, span_id, call_id="stack-1"))))
        while await _metric(http_port, "callscope_received_items_total") < 1:
            await asyncio.sleep(0.02)
        assert await _metric(http_port, "callscope_committed_records_total") == 0
        process.send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(export, grace_s)
        await client.close()
        # It must exit by itself before compose's stop_grace_period, after which Docker kills it mid-flush.
        _, err = await asyncio.wait_for(process.communicate(), grace_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-2000:]
    assert not response.HasField("partial_success")
    assert await db.fetchval("SELECT count(*) FROM spans WHERE span_id = $1", span_id.hex()) == 1
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert logs, "CALLSCOPE_LOG_FORMAT=json from compose: one JSON object per line"
