"""Cost (design §7): shipped price table, the prices_file override, telephony by direction, reported cost wins."""

from __future__ import annotations

import time

import pytest

from collector.cost import PriceTable, cost_facts
from collector.server import Collector
from tests.conftest import collector_settings
from tests.replay import ledger, replay, send, settle, trace_request

MS = 1_000_000


def test_price_lookup_by_provider_model_prefix_and_unknown_provider():
    prices = PriceTable.load()
    assert prices.llm_cost("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert prices.llm_cost("127.0.0.1:8080", "gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)  # by model
    assert prices.llm_cost("openai", "gpt-4o-mini", 1_000_000, 0, 1_000_000) == pytest.approx(0.075)  # cached
    assert prices.llm_cost("acme", "acme-1", 10, 10) is None   # unknown: no cost, never a guess
    assert prices.stt_cost("deepgram", "nova-3", 60) == pytest.approx(0.0077)
    assert prices.tts_cost("livekit.plugins.cartesia", "sonic-2", 1_000_000) == pytest.approx(30.0)
    facts = cost_facts("llm", "openai", "gpt-4o", 1000, 100, {"cost_llm": 1.0}, prices)
    assert facts == {}   # a producer-reported cost is kept


async def test_prices_file_override_and_telephony_by_direction(database_url, db, tmp_path):
    override = tmp_path / "prices.yaml"
    override.write_text("version: test-1\nstt: {fakestt: {default: 0.6}}\ntts: {faketts: {default: 1000000}}\n"
                        "telephony: {outbound: 1.0}\n")
    collector = Collector(collector_settings(database_url, prices_file=str(override)), run_migrations=False)
    await collector.start()
    try:
        await replay("pipecat", collector, "grpc")
        t0 = time.time_ns() - 600_000 * MS
        await send("grpc", collector, trace_request("callscope.native", [
            {"id": 1, "name": "call", "start": 0, "end": 90_000,
             "attributes": {"call.id": "phone-1", "call.direction": "outbound"}},
            {"id": 2, "name": "call", "start": 0, "end": 60_000,
             "attributes": {"call.id": "phone-2", "call.direction": "inbound", "call.cost": 0.25}}], t0_ns=t0))
        await settle(collector)
    finally:
        await collector.close(grace_s=1)
    rates = dict(await db.fetch("SELECT direction, per_minute FROM telephony_rates"))
    assert rates["outbound"] == 1.0 and rates["inbound"] == pytest.approx(0.0085)
    call, turns, _, _ = await ledger(db, "call-fixture-0001")
    # fakestt at 0.6 / min of speech (three short utterances), faketts at 1 per synthesized character
    assert 0 < call["cost_stt"] < 0.6 and call["cost_tts"] == pytest.approx(36 + 124 + 44, abs=60)
    assert call["cost_total"] == pytest.approx(call["cost_stt"] + call["cost_llm"] + call["cost_tts"])
    assert call["cost_telephony"] is None   # no direction: no telephony cost
    phone = await db.fetchrow("SELECT * FROM calls WHERE call_id = 'phone-1'")
    assert phone["cost_telephony"] == pytest.approx(1.5) and phone["cost_total"] == pytest.approx(1.5)
    reported = await db.fetchrow("SELECT * FROM calls WHERE call_id = 'phone-2'")
    assert reported["cost_telephony"] == pytest.approx(0.0085) and reported["cost_total"] == pytest.approx(0.25)
