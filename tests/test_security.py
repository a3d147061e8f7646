"""Who can write: TLS on both receivers and API keys, driven by the real OpenTelemetry SDK exporters.

Certificates come from a CA the test makes (tests/tls_certs.py). A request without a valid key stores nothing
and gets UNAUTHENTICATED / 401 (not retried by the SDKs); a valid key stores, and its tenant reaches the writer;
plaintext against a TLS port fails; /health, /metrics and gRPC health answer without a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
import pytest_asyncio
import yaml
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from collector.server import Collector
from collector.tls import ClientTls
from collector.cli.doctor import health
from storage.keys import create_key, revoke_key
from tests.conftest import collector_settings
from tests.otel_sdk import MS, SdkAgent
from tests.tls_certs import Authority, Pair, authority

ROOT = Path(__file__).resolve().parent.parent
ENVOY, ENVOY_TLS = ROOT / "provisioning" / "envoy" / "envoy.yaml", ROOT / "provisioning" / "envoy" / "envoy-tls.yaml"
KINDS = ("grpc", "http")
STORED, FAILED = ("SUCCESS", "SUCCESS"), ("FAILURE", "FAILURE")   # (span export, log export) results


@pytest.fixture(autouse=True)
def _no_system_bundle(monkeypatch):
    """requests (under the OTLP/HTTP exporter) lets REQUESTS_CA_BUNDLE override an exporter's certificate_file
    (psf/requests#3829); this machine sets it. The exporters must trust exactly the test's CA."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pki(tmp_path) -> tuple[Authority, Pair, Pair]:
    ca = authority(tmp_path)
    return ca, ca.issue("collector"), ca.issue("agent", client=True)


@pytest_asyncio.fixture
async def secure(database_url, pki):
    """A collector with auth required and TLS on both ports; writes are recorded with their tenants."""
    _, server, _ = pki
    running = Collector(collector_settings(database_url, auth="required", auth_refresh_s=0.2,
                                           tls_cert_file=server.cert_file, tls_key_file=server.key_file),
                        run_migrations=False)
    await running.start()
    running.tenants_written = []   # type: ignore[attr-defined]
    write = running.writer.write

    async def recording_write(records):  # the writer's input: every row carries the tenant of its request
        running.tenants_written.extend(record.tenant for record in records)   # type: ignore[attr-defined]
        return await write(records)

    running.writer.write = recording_write   # type: ignore[method-assign]
    yield running
    await running.close(grace_s=1)


async def _key(db: asyncpg.Connection, tenant: str = "default") -> tuple[str, str]:
    if tenant != "default":
        await db.execute("INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING", tenant)
    row, key, _ = await create_key(db, tenant, "test")
    return row.id, key


def _exporters(kind: str, collector: Collector, ca_file: str | None, key: str | None, *,
               plaintext: bool = False, client: Pair | None = None, scheme: str = "Bearer") -> tuple[Any, Any]:
    """The SDK's span and log exporters, configured as a user would (TLS CA, optional client certificate,
    the key in ``headers``)."""
    headers = {"authorization": f"{scheme} {key}"} if key is not None else None
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if plaintext:
            options: dict[str, Any] = {"endpoint": f"http://localhost:{collector.grpc.port}", "insecure": True}
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=open(ca_file, "rb").read() if ca_file else None,
                private_key=open(client.key_file, "rb").read() if client else None,
                certificate_chain=open(client.cert_file, "rb").read() if client else None)
            options = {"endpoint": f"https://localhost:{collector.grpc.port}", "credentials": credentials}
        return (OTLPSpanExporter(headers=headers, timeout=3, **options),
                OTLPLogExporter(headers=headers, timeout=3, **options))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    base = f"{'http' if plaintext else 'https'}://localhost:{collector.http.port}"
    extra = {"client_certificate_file": client.cert_file, "client_key_file": client.key_file} if client else {}
    return (HttpSpans(endpoint=f"{base}/v1/traces", certificate_file=ca_file, headers=headers, timeout=3, **extra),
            HttpLogs(endpoint=f"{base}/v1/logs", certificate_file=ca_file, headers=headers, timeout=3, **extra))


def _telemetry(call_id: str) -> tuple[list, list]:
    """Two finished spans and one log record of a call, made by the SDK (exported below by the tests)."""
    agent = SdkAgent("memory")
    start = 1_700_000_000_000 * MS
    with agent.span("call", start, start + 5000 * MS, {"call.id": call_id}) as root:
        with agent.span("llm", start + 100 * MS, start + 900 * MS, {"call.id": call_id}, parent=root):
            pass
        agent.event("call.answered", start + 50 * MS, root, body="answered")
    return list(agent.memory[0].get_finished_spans()), list(agent.memory[1].get_finished_logs())


async def _export(kind: str, collector: Collector, ca_file: str | None, key: str | None, call_id: str,
                  **options: Any) -> tuple[Any, Any]:
    spans, logs = _telemetry(call_id)
    span_exporter, log_exporter = _exporters(kind, collector, ca_file, key, **options)

    def run() -> tuple[str, str]:
        try:
            return span_exporter.export(spans).name, log_exporter.export(logs).name
        finally:
            span_exporter.shutdown()
            log_exporter.shutdown()
    return await asyncio.to_thread(run)


async def _stored(db: asyncpg.Connection, call_id: str) -> tuple[int, int]:
    """(spans, log records) stored for the call."""
    return (await db.fetchval("SELECT count(*) FROM spans WHERE call_id = $1", call_id),
            await db.fetchval("SELECT count(*) FROM events WHERE call_id = $1 AND source = 'log'", call_id))


@pytest.mark.parametrize("kind", KINDS)
async def test_sdk_exporters_over_tls_store_only_with_a_valid_key(kind, secure, db, pki):
    ca, _, _ = pki
    key_id, key = await _key(db, "acme")

    refused = {}
    for case, sent in (("no key", None), ("wrong key", key[:-4] + "AAAA"), ("unknown key", "csk_" + "0" * 12 + "_x"),
                       ("not bearer", None)):
        refused[case] = await _export(kind, secure, ca.cert_file, key if case == "not bearer" else sent,
                                      f"{kind}-{case}", scheme="Basic" if case == "not bearer" else "Bearer")
    assert all(result == FAILED for result in refused.values()), refused
    assert await db.fetchval("SELECT count(*) FROM spans") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert secure.tenants_written == []

    assert await _export(kind, secure, ca.cert_file, key, f"{kind}-valid") == STORED
    await secure.settle()
    assert await _stored(db, f"{kind}-valid") == (2, 1)
    assert set(secure.tenants_written) == {"acme"}   # two spans + one log record, all under the key's tenant

    await revoke_key(db, key_id)
    await asyncio.sleep(1.0)   # auth_refresh_s = 0.2: the collector has reloaded its keys since
    assert await _export(kind, secure, ca.cert_file, key, f"{kind}-revoked") == FAILED
    await secure.settle()
    assert await _stored(db, f"{kind}-revoked") == (0, 0)
    assert await db.fetchval("SELECT count(*) FROM spans") == 2
    assert await db.fetchval("SELECT last_used_at IS NOT NULL FROM api_keys WHERE id = $1", key_id)


@pytest.mark.parametrize("kind", KINDS)
async def test_otel_environment_variables_carry_the_key_and_the_ca(kind, secure, db, pki, monkeypatch):
    """What the README tells users: OTEL_EXPORTER_OTLP_HEADERS and OTEL_EXPORTER_OTLP_CERTIFICATE, nothing else."""
    ca, _, _ = pki
    _, key = await _key(db)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.cert_file)
    port = secure.grpc.port if kind == "grpc" else secure.http.port
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://localhost:{port}")
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter()
    spans, _ = _telemetry(f"env-{kind}")
    result = await asyncio.to_thread(exporter.export, spans)
    exporter.shutdown()
    assert result.name == "SUCCESS"
    await secure.settle()
    assert (await _stored(db, f"env-{kind}"))[0] == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_plaintext_against_a_tls_port_fails(kind, secure, db, pki):
    _, key = await _key(db)
    assert await _export(kind, secure, None, key, f"plain-{kind}", plaintext=True) == FAILED
    # and a TLS client that does not trust the collector's CA is refused by the TLS handshake
    assert await _export(kind, secure, None, key, f"untrusted-{kind}") == FAILED
    await secure.settle()
    assert await db.fetchval("SELECT count(*) FROM spans") == 0


def _request(call_id: str) -> trace_service_pb2.ExportTraceServiceRequest:
    from tests.test_receiver import request_of, span

    return request_of(span("llm", os.urandom(16), os.urandom(8), call_id=call_id))


async def test_refusals_say_what_is_wrong_and_are_not_retryable(secure, db, pki):
    ca, _, _ = pki
    tls = ClientTls(ca_file=ca.cert_file)
    body = _request("refused").SerializeToString()
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{secure.http.port}/v1/traces"
        async with session.post(url, data=body, ssl=tls.ssl_context(),
                                headers={"Content-Type": "application/x-protobuf"}) as response:
            status = status_pb2.Status.FromString(await response.read())
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Retry-After" not in response.headers
            assert "missing API key" in status.message and "Authorization: Bearer" in status.message
        async with session.post(url, data=b"{}", ssl=tls.ssl_context(),
                                headers={"Content-Type": "application/json",
                                         "Authorization": "Bearer csk_0123456789ab_nope"}) as response:
            assert response.status == 401
            assert "unknown API key (id 0123456789ab)" in json.loads(await response.text())["message"]
        # what needs no key: the health check and the metrics, which count the refusals
        async with session.get(f"https://127.0.0.1:{secure.http.port}/health", ssl=tls.ssl_context()) as response:
            assert response.status == 200
        async with session.get(f"https://127.0.0.1:{secure.http.port}/metrics", ssl=tls.ssl_context()) as response:
            metrics = await response.text()
    assert 'callscope_refused_requests_total{reason="unauthenticated",transport="http"} 2.0' in metrics

    channel = tls.grpc_channel(f"127.0.0.1:{secure.grpc.port}")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await trace_service_pb2_grpc.TraceServiceStub(channel).Export(_request("refused"), timeout=5)
    finally:
        await channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing API key" in refused.value.details()
    assert await asyncio.to_thread(health, f"127.0.0.1:{secure.grpc.port}", tls=tls) == "SERVING"
    assert await db.fetchval("SELECT count(*) FROM spans") == 0


async def test_keys_are_checked_from_the_cache_and_a_new_key_works_at_once(database_url, db, pki):
    ca, server, _ = pki
    settings = collector_settings(database_url, auth="required", auth_refresh_s=3600.0,
                                  tls_cert_file=server.cert_file, tls_key_file=server.key_file)
    async with Collector(settings, run_migrations=False) as running:
        authenticator = running.authenticator
        _, key = await _key(db)   # created after the collector loaded its keys
        assert await _export("grpc", running, ca.cert_file, key, "new-key") == STORED
        loaded = authenticator.reloads
        cached = [f"cached-{number}" for number in range(10)]
        for call_id in cached:
            assert await _export("grpc", running, ca.cert_file, key, call_id) == STORED
        assert authenticator.reloads == loaded   # no database read per request
        # 20 requests with unknown keys at once share one reload
        results = await asyncio.gather(*(running.ingest.tenant_of(f"Bearer csk_{n:012x}_guess") for n in range(20)),
                                       return_exceptions=True)
        assert all(type(r).__name__ == "Unauthenticated" for r in results)
        assert authenticator.reloads == loaded + 1
        await running.settle()
    assert await db.fetchval("SELECT count(DISTINCT call_id) FROM spans") == 1 + len(cached)   # new-key, cached-*


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(database_url, db, pki, tmp_path):
    ca, server, client = pki
    (tmp_path / "other").mkdir()
    stranger = authority(tmp_path / "other", "other-ca")
    outsider = stranger.issue("outsider", client=True)
    settings = collector_settings(database_url, auth="required", tls_cert_file=server.cert_file,
                                  tls_key_file=server.key_file, tls_client_ca_file=ca.cert_file)
    async with Collector(settings, run_migrations=False) as running:
        _, key = await _key(db)
        for kind in KINDS:
            assert await _export(kind, running, ca.cert_file, key, f"mtls-none-{kind}") == FAILED
            assert await _export(kind, running, ca.cert_file, key, f"mtls-outsider-{kind}", client=outsider) == FAILED
            assert await _export(kind, running, ca.cert_file, key, f"mtls-{kind}", client=client) == STORED
        endpoint = f"127.0.0.1:{running.grpc.port}"
        assert (await asyncio.to_thread(health, endpoint, tls=ClientTls(ca_file=ca.cert_file))).startswith(
            "UNREACHABLE")
        assert await asyncio.to_thread(health, endpoint, tls=ClientTls(
            ca_file=ca.cert_file, cert_file=client.cert_file, key_file=client.key_file)) == "SERVING"
        await running.settle()
    assert await db.fetchval("SELECT count(DISTINCT call_id) FROM spans") == 2


async def test_renewed_certificate_files_are_served_without_a_restart(database_url, db, pki, tmp_path):
    ca, server, _ = pki
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(open(server.cert_file, "rb").read())
    live_key.write_bytes(open(server.key_file, "rb").read())
    settings = collector_settings(database_url, auth="off", tls_cert_file=str(live_cert), tls_key_file=str(live_key))
    async with Collector(settings, run_migrations=False) as running:
        (tmp_path / "renewed").mkdir()
        renewed_ca = authority(tmp_path / "renewed", "renewed-ca")
        renewed = renewed_ca.issue("collector-2")
        live_key.write_bytes(open(renewed.key_file, "rb").read())
        live_cert.write_bytes(open(renewed.cert_file, "rb").read())
        os.utime(live_cert, ns=(os.stat(live_cert).st_mtime_ns + 10**9,) * 2)   # a different mtime, surely
        endpoint = f"127.0.0.1:{running.grpc.port}"
        # gRPC reads the files at the next handshake: a client trusting only the new CA gets through
        assert await asyncio.to_thread(health, endpoint, tls=ClientTls(ca_file=renewed_ca.cert_file)) == "SERVING"
        assert running.http.reload_certificates()   # what the HTTP receiver does every 10 s
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{running.http.port}/health",
                                   ssl=ClientTls(ca_file=renewed_ca.cert_file).ssl_context()) as response:
                assert response.status == 200


async def test_auth_off_warns_at_start_and_writes_as_the_default_tenant(database_url, db, caplog):
    caplog.set_level(logging.WARNING, logger="callscope.auth")
    async with Collector(collector_settings(database_url, auth="off"), run_migrations=False) as running:
        assert any(record.getMessage() == "auth.off" for record in caplog.records)
        tenants: list[str] = []
        write = running.writer.write

        async def recording_write(records):
            tenants.extend(record.tenant for record in records)
            return await write(records)
        running.writer.write = recording_write   # type: ignore[method-assign]
        agent = SdkAgent("grpc", running)
        start = 1_700_000_000_000 * MS
        with agent.span("llm", start, start + 10 * MS, {"call.id": "open-door"}):
            pass
        await agent.flush()
        await running.settle()
    assert tenants == ["default"]
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'open-door'") == 1


async def test_keys_commands_refuse_an_unknown_tenant_and_never_show_a_key_twice(database_url):
    from tests.test_cli import _run

    code, out, err = await _run("keys", "create", "--tenant", "nobody", "--database-url", database_url)
    assert code == 1 and out == ""
    assert err.strip() == ("callscope: unknown tenant 'nobody' (tenants: default); create it first with "
                           "`callscope tenants create nobody`")
    code, out, err = await _run("keys", "create", "--tenant", "default", "--label", "ci", "--database-url",
                                database_url)
    assert code == 0, err
    key = out.strip()
    assert key.startswith("csk_") and len(out.splitlines()) == 1 and "shown only now" in err
    code, out, _ = await _run("keys", "list", "--database-url", database_url)
    assert code == 0 and key not in out and key[4:16] in out and "active" in out and "ci" in out
    connection = await asyncpg.connect(database_url)
    try:
        stored = {row["key_hash"] for row in await connection.fetch("SELECT key_hash FROM api_keys")}
        columns = await connection.fetch("SELECT * FROM api_keys")
    finally:
        await connection.close()
    assert len(stored) == 1 and all(key not in str(dict(row)) for row in columns)
    code, out, _ = await _run("keys", "revoke", key[4:16], "--database-url", database_url)
    assert code == 0 and "revoked API key" in out
    code, _, err = await _run("keys", "revoke", "feedfacecafe", "--database-url", database_url)
    assert code == 1 and "no API key with id 'feedfacecafe'" in err
    code, out, err = await _run("keys", "create", "--tenant", "default", "--key-from-env", "OPERATOR_KEY",
                                "--database-url", database_url, env={"OPERATOR_KEY": "short"})
    assert code == 1 and "at least 24" in err
    for attempt in range(2):   # idempotent: compose runs it on every start
        code, out, err = await _run("keys", "create", "--tenant", "default", "--key-from-env", "OPERATOR_KEY",
                                    "--database-url", database_url, env={"OPERATOR_KEY": "x" * 40})
        assert code == 0, err
        assert out.startswith("registered" if attempt == 0 else "already registered") and "x" * 40 not in out


# --- TLS at the compose stack's load balancer (provisioning/envoy/envoy-tls.yaml) ------------------------------------

def _without_tls(config: dict) -> dict:
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            chain.pop("transport_socket", None)
    return config


def test_the_tls_load_balancer_is_the_plain_one_plus_tls():
    """envoy-tls.yaml cannot drift from envoy.yaml: they differ by the two listeners' TLS blocks, which read the
    certificate compose mounts at /certs."""
    tls = yaml.safe_load(ENVOY_TLS.read_text())
    for listener in tls["static_resources"]["listeners"]:
        (chain,) = listener["filter_chains"]
        context = chain["transport_socket"]["typed_config"]["common_tls_context"]
        assert context["tls_certificates"] == [{"certificate_chain": {"filename": "/certs/collector.crt"},
                                                "private_key": {"filename": "/certs/collector.key"}}]
        assert "h2" in context["alpn_protocols"]
    assert _without_tls(tls) == yaml.safe_load(ENVOY.read_text())


def _certificates_at(node: Any, pair: Pair) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and value == "/certs/collector.crt":
                node[key] = pair.cert_file
            elif key == "filename" and value == "/certs/collector.key":
                node[key] = pair.key_file
            else:
                _certificates_at(value, pair)
    elif isinstance(node, list):
        for item in node:
            _certificates_at(item, pair)


async def test_envoy_terminates_tls_and_passes_the_api_key_to_the_collector(database_url, db, pki, tmp_path):
    """The compose path with TLS: agents → Envoy (envoy-tls.yaml) over TLS → a collector requiring keys."""
    from tests.pg_instance import free_port
    from tests.test_scaleout import _envoy, _local_envoy_config

    envoy = _envoy()
    ca, server, _ = pki
    running = Collector(collector_settings(database_url, auth="required"), run_migrations=False)
    await running.start()
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    config = _local_envoy_config(grpc_port, http_port, admin_port,
                                 [SimpleNamespace(grpc_port=running.grpc.port, http_port=running.http.port)],
                                 source=ENVOY_TLS)
    _certificates_at(config, server)
    config_path = tmp_path / "envoy-tls.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "envoy.log", "wb")
    process = await asyncio.create_subprocess_exec(
        envoy, "-c", str(config_path), "--log-level", "warning", "--disable-hot-restart",
        "--base-id", str(random.randint(1000, 60000)), stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
    edge = SimpleNamespace(grpc=SimpleNamespace(port=grpc_port), http=SimpleNamespace(port=http_port))
    try:
        deadline = time.monotonic() + 90
        async with aiohttp.ClientSession() as session:
            while True:   # listening, and the collector passed Envoy's gRPC and HTTP health checks
                try:
                    async with session.get(f"http://127.0.0.1:{admin_port}/clusters") as response:
                        if (await response.text()).count("::health_flags::healthy") >= 2:
                            break
                except aiohttp.ClientError:
                    pass
                assert process.returncode is None, (tmp_path / "envoy.log").read_text()
                assert time.monotonic() < deadline, "Envoy never became ready"
                await asyncio.sleep(0.2)
        _, key = await _key(db, "edge")
        for kind in KINDS:
            assert await _export(kind, edge, ca.cert_file, None, f"edge-none-{kind}") == FAILED
            assert await _export(kind, edge, ca.cert_file, key, f"edge-plain-{kind}", plaintext=True) == FAILED
            assert await _export(kind, edge, ca.cert_file, key, f"edge-{kind}") == STORED
        await running.settle()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()
        log.close()
        await running.close(grace_s=1)
    assert await db.fetchval("SELECT count(DISTINCT call_id) FROM spans") == 2
    assert await _stored(db, "edge-grpc") == (2, 1) and await _stored(db, "edge-http") == (2, 1)
