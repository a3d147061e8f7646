"""`callscope simulate` traffic through the real receiver leaves the ledger the simulator promised."""

from __future__ import annotations

import asyncpg
import pytest

from collector.simulate import generate_calls
from tests.conftest import SIMULATED_CALLS

EXPECTED = {call.call_id: call for call in generate_calls(SIMULATED_CALLS, seed=7)}


@pytest.fixture
async def ledger(simulated_db):  # type: ignore[no-untyped-def]
    connection = await asyncpg.connect(simulated_db)
    yield connection
    await connection.close()


async def test_every_simulated_call_has_its_status(ledger):
    rows = {r["call_id"]: r for r in await ledger.fetch("SELECT * FROM calls")}
    assert set(rows) == set(EXPECTED)
    wrong = {call_id: (rows[call_id]["status"], call.status, call.expected["status_source"])
             for call_id, call in EXPECTED.items() if rows[call_id]["status"] != call.status}
    assert not wrong
    assert {r["status"] for r in rows.values()} == {
        "queued", "ringing", "active", "completed", "failed", "declined", "missed"}


async def test_simulated_call_metadata_turns_and_tools(ledger):
    rows = {r["call_id"]: r for r in await ledger.fetch("SELECT * FROM calls")}
    for call_id, call in EXPECTED.items():
        row, expected = rows[call_id], call.expected
        assert row["direction"] == expected["direction"], call_id
        assert row["campaign"] == expected["campaign"], call_id
        assert row["agent"] == expected["agent"], call_id
        if call.status == "active":
            # the turn in progress shows once one of its spans names its number; spans below a turn span
            # that is still open cannot be placed yet
            assert expected["turn_count"] <= row["turn_count"] <= len(expected["turns_seen"]), call_id
        else:
            assert row["turn_count"] == expected["turn_count"], call_id
        # a transfer is the agent's native call tool: counted with the tool calls
        assert row["tool_call_count"] == expected["tool_call_count"] + bool(expected["transfer"]), call_id
        assert row["interruption_count"] == expected["interruption_count"], call_id
        if expected["summary"]:
            assert row["summary"] == expected["summary"]
        if expected["cost"] is not None:
            assert row["cost_total"] == pytest.approx(expected["cost"])
    turns = await ledger.fetchval("SELECT count(*) FROM turns WHERE llm_ttft_ms IS NOT NULL")
    assert turns > SIMULATED_CALLS  # latency columns filled for most turns
    negative = await ledger.fetchval(
        "SELECT count(*) FROM turns WHERE stt_ms < 0 OR llm_ttft_ms < 0 OR tts_ttfb_ms < 0 OR voice_to_voice_ms < 0")
    assert negative == 0


async def test_simulated_turn_latencies_match_what_was_sent(ledger):
    checked = 0
    for call_id, call in EXPECTED.items():
        for turn in call.expected["turns"]:
            row = await ledger.fetchrow("SELECT * FROM turns WHERE call_id = $1 AND turn_number = $2",
                                        call_id, turn["number"])
            assert row is not None, (call_id, turn["number"])
            for column in ("llm_ttft_ms", "tts_ttfb_ms", "stt_ms", "voice_to_voice_ms"):
                if turn.get(column) is not None:
                    assert row[column] == pytest.approx(turn[column], abs=0.01), (call_id, column)
                    checked += 1
    assert checked > 100


async def test_simulated_tool_calls_and_webhooks(ledger):
    for call_id, call in EXPECTED.items():
        failed = {r["tool_call_id"] for r in await ledger.fetch(
            "SELECT tool_call_id FROM tool_calls WHERE call_id = $1 AND is_error AND tool_name <> 'transfer'", call_id)}
        assert failed == set(call.expected["failed_tools"]), call_id
    exhausted = await ledger.fetchval("SELECT count(*) FROM events WHERE event = 'webhook.retry_exhausted'")
    expected = sum(call.expected["webhook_events"].count("webhook.retry_exhausted") for call in EXPECTED.values())
    assert exhausted == expected > 0
    levels = dict(await ledger.fetch("SELECT DISTINCT event, level FROM events WHERE event LIKE 'webhook.%'"))
    assert levels["webhook.retry_exhausted"] == "ERROR" and levels["webhook.response_failed"] == "WARNING"
