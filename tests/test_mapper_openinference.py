"""OpenInference's Pipecat instrumentor (recorded, one trace per turn joined by session.id) → one call."""

from __future__ import annotations

import json
import time

import pytest

from tests.replay import TRANSPORTS, event_keys, ledger, replay, send, settle, trace_request

MS = 1_000_000


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_openinference_pipecat_turn_traces_join_one_call(collector, db, transport):
    recording = await replay("openinference_pipecat", collector, transport)
    await settle(collector)
    meta = recording.meta
    call, turns, tools, events = await ledger(db, meta["call_id"])

    assert call["framework"] == "openinference" and set(call["trace_ids"]) == recording.trace_ids
    assert (call["turn_count"], call["interruption_count"], call["tool_call_count"]) == recording.scripted
    assert call["cost_llm"] > 0
    assert [t["user_text"].rstrip(". ") for t in turns] == [t["user_utterance"].rstrip(".") for t in meta["turns"]]
    assert turns[0]["agent_text"] == meta["turns"][0]["agent_reply"]
    assert meta["turns"][1]["agent_reply"].startswith(turns[1]["agent_text"])
    assert turns[2]["agent_text"] == meta["turns"][2]["agent_reply"]
    assert [t["interrupted"] for t in turns] == [False, True, False]
    for turn in turns:
        assert meta["delays_ms"]["llm_ttft_ms"] <= turn["llm_ttft_ms"] <= meta["delays_ms"]["llm_ttft_ms"] + 400
        assert turn["reported_v2v_ms"] > 0 and turn["llm_provider"] == "openai"
        assert turn["tts_ttfb_ms"] is None   # the instrumentor records no TTS first-audio time: NULL, not 0
        assert turn["tts_request_at"] is not None
    assert turns[0]["llm_model"] == "gpt-4o-mini-2024-07-18"   # "unknown" on the first span is ignored

    weather, booking = sorted(tools, key=lambda t: t["turn_number"])
    assert (weather["turn_number"], weather["tool_name"], weather["is_error"]) == (1, "get_weather", False)
    assert json.loads(weather["arguments"]) == meta["tools"][0]["arguments"]
    assert json.loads(weather["result"]) == meta["tools"][0]["result"]
    assert (booking["turn_number"], booking["tool_name"], booking["is_error"]) == (3, "book_table", True)
    assert booking["error"] == meta["tools"][1]["error"]
    keys = event_keys(events)
    for expected in [("agent.interrupted", 2), ("integration.completed", 1), ("integration.failed", 3),
                     ("user.message_received", 1), ("agent.message_sent", 3)]:
        assert expected in keys, expected


async def test_openinference_reported_cost_wins_and_root_llm_is_an_exchange(collector, db):
    t0 = time.time_ns() - 60_000 * MS
    spans = [{"id": 1, "name": "ChatCompletion", "start": 0, "end": 900, "attributes": {
        "openinference.span.kind": "LLM", "session.id": "oi-1", "llm.provider": "openai",
        "llm.model_name": "gpt-4o", "llm.token_count.prompt": 1000, "llm.token_count.completion": 100,
        "llm.cost.total": 0.5, "llm.finish_reason": "stop",
        "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "Hi there",
        "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": "Hello!"}}]
    await send("http-protobuf", collector, trace_request("openinference.instrumentation.openai", spans, t0_ns=t0))
    await settle(collector)
    call, (turn,), _, _ = await ledger(db, "oi-1")
    assert call["cost_llm"] == pytest.approx(0.5) and call["cost_total"] == pytest.approx(0.5)
    assert (turn["user_text"], turn["agent_text"], turn["input_tokens"]) == ("Hi there", "Hello!", 1000)
