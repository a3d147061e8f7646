"""The real OTel Python SDK exports a native-convention call and a GenAI call; the ledger shows them."""

from __future__ import annotations

import time

import pytest
from opentelemetry._logs import SeverityNumber

from tests.otel_sdk import MS, SdkAgent


def send_native_call(agent: SdkAgent, call_id: str, t0: int) -> None:
    """Two turns (the second interrupted), one tool call, webhook log events."""
    with agent.span("call", t0, t0 + 20_000 * MS, {
        "voice.stage": "session", "call.id": call_id, "call.direction": "outbound", "call.campaign": "renewals",
        "call.agent": "sarah-support", "call.from": "+15550001", "call.to": "+15550002",
        "call.recording.url": "https://rec.example/1.mp3", "call.summary": "Customer renewed.",
        "call.tags": ["renewal", "happy"], "call.extracted": '{"renewed": true}', "call.cost": 0.42,
    }) as session:
        # turn 1: user stops speaking at t1; STT 250 ms; LLM 20 ms later, TTFT 400 ms; TTS 30 ms later, TTFB 150 ms
        t1 = t0 + 2_000 * MS
        with agent.span("turn", t1 - 1_000 * MS, t1 + 5_000 * MS, {"turn.number": 1, "call.id": call_id},
                        parent=session) as turn:
            with agent.span("stt", t1, t1 + 250 * MS, {"stt.transcript": "Hello?", "stt.provider": "deepgram"},
                            parent=turn):
                pass
            with agent.span("llm", t1 + 270 * MS, t1 + 900 * MS, {
                    "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 12, "llm.ttft_ms": 400.0,
                    "llm.output": "Hi, this is Sarah."}, parent=turn):
                pass
            with agent.span("execute_tool lookup_account", t1 + 900 * MS, t1 + 1_000 * MS, {
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_account",
                    "gen_ai.tool.call.id": "call_1", "gen_ai.tool.call.arguments": '{"phone": "+15550002"}',
                    "gen_ai.tool.call.result": '{"plan": "gold"}'}, parent=turn):
                pass
            with agent.span("tts", t1 + 700 * MS, t1 + 2_000 * MS, {
                    "tts.provider": "cartesia", "tts.text": "Hi, this is Sarah.", "tts.ttfb_ms": 150.0},
                    parent=turn):
                pass
        t2 = t0 + 8_000 * MS
        with agent.span("turn", t2 - 1_000 * MS, t2 + 3_000 * MS,
                        {"turn.number": 2, "turn.interrupted": True, "call.id": call_id}, parent=session) as turn:
            with agent.span("stt", t2, t2 + 300 * MS, {"stt.transcript": "I want to renew."}, parent=turn):
                pass
            with agent.span("llm", t2 + 310 * MS, t2 + 1_000 * MS, {
                    "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini", "llm.ttft_ms": 500.0,
                    "llm.output": "Great, let me"}, parent=turn):
                pass
            with agent.span("tts", t2 + 820 * MS, t2 + 1_500 * MS, {
                    "tts.provider": "cartesia", "tts.text": "Great, let me", "tts.ttfb_ms": 200.0,
                    "tts.interrupted": True}, parent=turn):
                pass
        agent.event("webhook.sent", t0 + 19_000 * MS, session, attributes={"call.id": call_id, "url": "https://hook"})
        agent.event("webhook.response_failed", t0 + 19_500 * MS, session, severity=SeverityNumber.WARN,
                    attributes={"call.id": call_id, "http.response.status_code": 502}, body="502 from hook")


def send_genai_call(agent: SdkAgent, conversation_id: str, t0: int) -> None:
    """Generic GenAI semconv: invoke_agent turns, chat spans (old and new keys), a failing execute_tool."""
    for index in range(2):
        start = t0 + index * 5_000 * MS
        with agent.span("invoke_agent ivy", start, start + 3_000 * MS, {
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "ivy-booking",
                "gen_ai.conversation.id": conversation_id}) as turn:
            keys = ({"gen_ai.provider.name": "anthropic", "gen_ai.usage.input_tokens": 50}
                    if index == 0 else {"gen_ai.system": "anthropic", "gen_ai.usage.prompt_tokens": 70})
            with agent.span("chat claude-haiku", start + 100 * MS, start + 900 * MS, {
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-haiku",
                    "gen_ai.response.time_to_first_chunk": 0.35, **keys,
                    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"Booked."}]}]',
                    }, parent=turn):
                pass
            if index == 1:
                with agent.span("execute_tool book_table", start + 950 * MS, start + 1_200 * MS, {
                        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "book_table",
                        "gen_ai.tool.call.id": "toolu_9", "error.type": "TimeoutError"}, parent=turn,
                        error="upstream timeout"):
                    pass


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_exports_native_call_into_ledger(collector, db, transport):
    agent = SdkAgent(transport, collector)
    t0 = time.time_ns() - 60_000 * MS
    send_native_call(agent, "call-native-1", t0)
    await agent.flush()
    await collector.settle()

    call = await db.fetchrow("SELECT * FROM calls WHERE call_id = 'call-native-1'")
    assert call is not None
    assert call["status"] == "completed"
    assert (call["direction"], call["campaign"], call["agent"]) == ("outbound", "renewals", "sarah-support")
    assert (call["from_number"], call["to_number"]) == ("+15550001", "+15550002")
    assert call["recording_url"] == "https://rec.example/1.mp3"
    assert call["tags"] == ["renewal", "happy"] and call["summary"] == "Customer renewed."
    assert call["cost_total"] == pytest.approx(0.42) and call["currency"] == "USD"
    assert (call["turn_count"], call["interruption_count"], call["tool_call_count"]) == (2, 1, 1)
    assert call["duration_s"] == pytest.approx(20.0)
    assert call["framework"] == "native"
    assert call["error_count"] == 0  # the WARNING webhook failure is not an error

    turns = await db.fetch("SELECT * FROM turns WHERE call_id = 'call-native-1' ORDER BY turn_number")
    first, second = turns
    assert first["user_text"] == "Hello?" and first["agent_text"] == "Hi, this is Sarah."
    assert first["stt_ms"] == pytest.approx(250, abs=0.01)
    assert first["stt_to_llm_ms"] == pytest.approx(20, abs=0.01)
    assert first["llm_ttft_ms"] == pytest.approx(400, abs=0.01)
    assert first["llm_to_tts_ms"] == pytest.approx(30, abs=0.01)
    assert first["tts_ttfb_ms"] == pytest.approx(150, abs=0.01)
    assert first["voice_to_voice_ms"] == pytest.approx(850, abs=0.01)
    assert (first["llm_provider"], first["llm_model"], first["stt_provider"], first["tts_provider"]) == (
        "openai", "gpt-4o-mini", "deepgram", "cartesia")
    assert (first["input_tokens"], first["output_tokens"]) == (120, 12)
    assert first["interrupted"] is False and second["interrupted"] is True
    assert first["eou_ms"] is None  # no end-of-turn data: NULL, never zero

    tool = await db.fetchrow("SELECT * FROM tool_calls WHERE call_id = 'call-native-1'")
    assert (tool["tool_name"], tool["tool_call_id"], tool["turn_number"]) == ("lookup_account", "call_1", 1)
    assert tool["arguments"] == '{"phone": "+15550002"}' and tool["result"] == '{"plan": "gold"}'
    assert tool["is_error"] is False and tool["duration_ms"] == pytest.approx(100)

    spans = await db.fetch("SELECT stage, turn_number FROM spans WHERE call_id = 'call-native-1'")
    assert len(spans) == agent.span_count   # every span the agent sent, once
    assert {s["stage"] for s in spans} == {"session", "turn", "stt", "llm", "tts", "tool"}
    assert all(s["turn_number"] is not None for s in spans if s["stage"] != "session")

    events = {r["event"]: r for r in await db.fetch(
        "SELECT event, level, category, source, message FROM events WHERE call_id = 'call-native-1'")}
    assert events["webhook.response_failed"]["level"] == "WARNING"
    assert events["webhook.response_failed"]["message"] == "502 from hook"
    assert events["webhook.sent"]["category"] == "webhook" and events["webhook.sent"]["source"] == "log"
    for derived in ("user.message_received", "agent.message_sent", "agent.interrupted", "integration.invoked",
                    "integration.completed", "agent.initialized", "call.completed"):
        assert events[derived]["source"] == "derived", derived


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_exports_genai_call_into_ledger(collector, db, transport):
    agent = SdkAgent(transport, collector)
    send_genai_call(agent, "conv-genai-1", time.time_ns() - 60_000 * MS)
    await agent.flush()
    await collector.settle()

    call = await db.fetchrow("SELECT * FROM calls WHERE call_id = 'conv-genai-1'")
    assert call["agent"] == "ivy-booking" and call["framework"] == "genai"
    assert call["status"] == "active"  # no session end seen: still active (stale after the idle timeout)
    assert (call["turn_count"], call["tool_call_count"], call["error_count"]) == (2, 1, 1)
    turns = await db.fetch("SELECT * FROM turns WHERE call_id = 'conv-genai-1' ORDER BY turn_number")
    assert [t["turn_number"] for t in turns] == [1, 2]
    assert all(t["llm_ttft_ms"] == pytest.approx(350, abs=0.01) for t in turns)
    assert [t["input_tokens"] for t in turns] == [50, 70]
    assert all(t["llm_provider"] == "anthropic" and t["agent_text"] == "Booked." for t in turns)
    assert all(t["voice_to_voice_ms"] is None for t in turns)  # no audio stages: NULL, not zero
    tool = await db.fetchrow("SELECT * FROM tool_calls WHERE call_id = 'conv-genai-1'")
    assert tool["is_error"] is True and tool["error"] == "TimeoutError" and tool["turn_number"] == 2
    failed = await db.fetchval(
        "SELECT count(*) FROM events WHERE call_id = 'conv-genai-1' AND event = 'integration.failed' AND level = 'ERROR'")
    assert failed == 1
