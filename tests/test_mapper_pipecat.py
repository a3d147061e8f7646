"""Pipecat native tracing (recorded pipecat-ai 1.14.0 run) through the real receiver, and mapper unit cases."""

from __future__ import annotations

import json

import pytest

from collector.mappers import select_mapper
from collector.mappers.pipecat import PipecatMapper
from collector.items import SpanIn
from tests.replay import TRANSPORTS, event_keys, ledger, replay, settle

CALL = "call-fixture-0001"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pipecat_recording_becomes_a_call_with_turns_latencies_tools(collector, db, transport):
    recording = await replay("pipecat", collector, transport)
    await settle(collector)
    meta = recording.meta
    delays = meta["delays_ms"]
    call, turns, tools, events = await ledger(db, meta["call_id"])

    assert call is not None and call["status"] == "completed" and call["framework"] == "pipecat"
    assert (call["turn_count"], call["interruption_count"], call["tool_call_count"]) == recording.scripted
    assert call["cost_llm"] > 0 and call["cost_total"] == pytest.approx(call["cost_llm"])  # fake STT/TTS: unpriced

    assert [t["user_text"].rstrip(".") for t in turns] == [t["user_utterance"].rstrip(".") for t in meta["turns"]]
    assert turns[0]["agent_text"] == meta["turns"][0]["agent_reply"]
    assert meta["turns"][1]["agent_reply"].startswith(turns[1]["agent_text"])  # cut off by the barge-in
    assert turns[2]["agent_text"] == meta["turns"][2]["agent_reply"]
    assert [t["interrupted"] for t in turns] == [False, True, False]
    stt_expected = delays["stt_delay_ms"] + delays["vad_stop_secs"] * 1000   # measured from VAD stop − stop_secs
    for turn in turns:
        # the first request of a run pays HTTP client warm-up (recordings README)
        assert delays["llm_ttft_ms"] <= turn["llm_ttft_ms"] <= delays["llm_ttft_ms"] + 350
        assert delays["tts_ttfb_ms"] <= turn["tts_ttfb_ms"] <= delays["tts_ttfb_ms"] + 50
        assert stt_expected <= turn["stt_ms"] <= stt_expected + 50
        assert 0 <= turn["stt_to_llm_ms"] < 50 and turn["llm_to_tts_ms"] > 0
        assert turn["voice_to_voice_ms"] == pytest.approx(turn["reported_v2v_ms"], abs=30)
        assert turn["eou_ms"] is None   # Pipecat reports no end-of-turn delay: NULL, never zero
        assert (turn["llm_provider"], turn["stt_provider"], turn["tts_provider"]) == ("openai", "fakestt", "faketts")
        assert turn["user_stopped_at"] < turn["stt_final_at"] <= turn["llm_request_at"]
    assert turns[0]["input_tokens"] == 20 + 44 and turns[1]["input_tokens"] is None  # interrupted: no usage

    weather, booking = tools
    assert (weather["turn_number"], weather["tool_name"], weather["tool_call_id"]) == (1, "get_weather",
                                                                                      "call_get_weather_1")
    assert json.loads(weather["arguments"]) == meta["tools"][0]["arguments"]
    assert json.loads(weather["result"]) == meta["tools"][0]["result"] and not weather["is_error"]
    assert weather["started_at"] < weather["ended_at"]   # between the two llm steps
    assert (booking["turn_number"], booking["tool_name"], booking["is_error"]) == (3, "book_table", True)
    assert json.loads(booking["arguments"]) == meta["tools"][1]["arguments"]
    assert "failed" in booking["error"]

    keys = event_keys(events)
    for expected in [("agent.initialized", None), ("call.completed", None), ("agent.interrupted", 2),
                     ("integration.invoked", 1), ("integration.completed", 1), ("integration.failed", 3),
                     *[(e, n) for n in (1, 2, 3) for e in ("user.message_received", "agent.message_sent",
                                                           "user.stopped_speaking", "agent.started_speaking")]]:
        assert expected in keys, expected


async def test_pipecat_recording_in_reverse_order_gives_the_same_ledger(collector, db):
    await replay("pipecat", collector, "grpc", reverse=True)
    await settle(collector)
    call, turns, tools, _ = await ledger(db, CALL)
    assert (call["turn_count"], call["tool_call_count"], call["status"]) == (3, 2, "completed")
    assert [t["interrupted"] for t in turns] == [False, True, False]
    assert all(t["llm_ttft_ms"] is not None and t["tts_ttfb_ms"] is not None for t in turns)
    assert [t["turn_number"] for t in tools] == [1, 3]


# --- unit cases on hand-built spans (old keys, realtime services, other message formats) -------------------

def span(name: str, attributes: dict, *, scope: str = "pipecat", start_ms: int = 1_000, end_ms: int = 2_000,
         parent: str | None = "aaaaaaaaaaaaaaaa") -> SpanIn:
    return SpanIn(trace_id="0" * 31 + "1", span_id="b" * 16, parent_span_id=parent, name=name, kind=1,
                  start_ns=start_ms * 1_000_000, end_ns=end_ms * 1_000_000, status_code=0, status_message=None,
                  attributes=attributes, events=[], resource={"service.name": "bot"}, scope_name=scope,
                  scope_version="")


def test_old_pipecat_keys_are_read():
    mapping = PipecatMapper().map_span(span("llm", {
        "gen_ai.system": "Mistral", "gen_ai.request.model": "mistral-small-latest", "metrics.ttfb": 0.3,
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 4,
        "gen_ai.usage.cache_read_input_tokens": 6, "output": "Hi"}))
    assert (mapping.stage, mapping.provider, mapping.ttfb_ms) == ("llm", "mistral_ai", 300.0)
    assert mapping.facts["llm_first_token_us"] - mapping.facts["llm_request_us"] == 300_000
    assert mapping.facts["llm_cached_tokens"] == 6 and mapping.facts["llm_text"] == "Hi"
    stt = PipecatMapper().map_span(span("stt", {"gen_ai.system": "deepgram", "metrics.ttfb_ms": 250.0,
                                                "transcript": "hello", "is_final": True}))
    assert stt.facts["stt_final_us"] - stt.facts["user_stopped_us"] == 250_000
    assert stt.facts["user_text"] == "hello" and stt.provider == "deepgram"


def test_turn_ended_by_hang_up_is_not_an_interruption():
    mapping = PipecatMapper().map_span(span("turn", {"turn.number": 4, "conversation.id": "c1",
                                                     "turn.was_interrupted": True,
                                                     "turn.ended_by_conversation_end": True}, scope="pipecat.turn"))
    assert (mapping.turn_number, mapping.call_id) == (4, "c1") and "interrupted" not in mapping.facts


def test_realtime_tool_call_and_result_spans():
    call = PipecatMapper().map_span(span("llm_tool_call", {
        "tool.function_name": "lookup", "tool.call_id": "t1", "tool.arguments": '{"q": 1}'}))
    result = PipecatMapper().map_span(span("llm_tool_result", {
        "tool.function_name": "lookup", "tool.call_id": "t1", "tool.result": '{"error": "not found"}',
        "tool.result_status": "error"}, start_ms=2_000, end_ms=2_100))
    assert call.tool_calls[0].arguments == '{"q": 1}' and call.tool_calls[0].end_ns is None
    draft = result.tool_calls[0]
    assert (draft.tool_call_id, draft.is_error, draft.error) == ("t1", True, "not found")
    assert [e.event for e in call.events + result.events] == ["integration.invoked", "integration.failed"]


def test_anthropic_style_tool_use_in_llm_input_is_recovered():
    messages = [
        {"role": "user", "content": "book it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "book", "input": {"n": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "booked",
                                      "is_error": False}]},
    ]
    mapping = PipecatMapper().map_span(span("llm", {"gen_ai.provider.name": "anthropic", "input": json.dumps(messages)}))
    (tool,) = mapping.tool_calls
    assert (tool.tool_call_id, tool.tool_name, tool.arguments, tool.result, tool.is_error) == (
        "toolu_1", "book", '{"n":2}', "booked", False)
    assert mapping.facts["prompt_text"] == "book it"


def test_unknown_pipecat_span_is_kept_as_other():
    span_in = span("llm_setup_v9", {"brand.new": 1})
    assert select_mapper(span_in).name == "pipecat"
    assert PipecatMapper().map_span(span_in).stage == "other"
