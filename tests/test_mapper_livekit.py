"""LiveKit Agents (recorded livekit-agents 1.8.9 voice session, plus hand-built 1.2-style spans) → the ledger."""

from __future__ import annotations

import json
import time

import pytest

from collector.mappers.livekit import LiveKitMapper
from collector.items import SpanIn
from tests.replay import TRANSPORTS, event_keys, ledger, replay, send, settle, trace_request

MS = 1_000_000


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_livekit_recording_pairs_user_and_agent_turns(collector, db, transport):
    recording = await replay("livekit", collector, transport)
    await settle(collector)
    meta = recording.meta
    delays = meta["delays_ms"]
    call, turns, tools, events = await ledger(db, meta["call_id"])

    assert call["status"] == "completed" and call["framework"] == "livekit" and call["agent"] == "phone_agent"
    assert (call["turn_count"], call["interruption_count"], call["tool_call_count"]) == recording.scripted
    assert call["cost_llm"] > 0   # gpt-4o-mini, priced by model although the provider is the fake's host:port

    assert [t["user_text"] for t in turns] == [t["user_utterance"] for t in meta["turns"]]
    assert turns[0]["agent_text"] == meta["turns"][0]["agent_reply"]
    assert meta["turns"][1]["agent_reply"].startswith(turns[1]["agent_text"].strip())
    assert turns[2]["agent_text"] == meta["turns"][2]["agent_reply"]
    assert [t["interrupted"] for t in turns] == [False, True, False]
    for turn in turns:
        assert delays["llm_ttft_ms"] <= turn["llm_ttft_ms"] <= delays["llm_ttft_ms"] + 400   # 1st: warm-up
        assert delays["tts_ttfb_ms"] <= turn["tts_ttfb_ms"] <= delays["tts_ttfb_ms"] + 50
        assert delays["stt_delay_ms"] - 10 <= turn["stt_ms"] <= delays["stt_delay_ms"] + 50
        assert turn["eou_ms"] == pytest.approx(meta["livekit_settings"]["endpointing_min_delay"] * 1000, abs=50)
        assert turn["voice_to_voice_ms"] == pytest.approx(turn["reported_v2v_ms"], abs=20)
        assert turn["started_at"] < turn["user_stopped_at"] < turn["stt_final_at"] < turn["agent_started_at"]
        assert (turn["stt_provider"], turn["tts_provider"]) == ("callscope-fake-stt", "callscope-fake-tts")

    weather, booking = tools
    assert (weather["turn_number"], weather["tool_name"], weather["tool_call_id"]) == (1, "get_weather",
                                                                                      "call_get_weather_1")
    assert json.loads(weather["arguments"]) == meta["tools"][0]["arguments"]
    assert json.loads(weather["result"]) == meta["tools"][0]["result"] and not weather["is_error"]
    assert (booking["turn_number"], booking["tool_name"], booking["is_error"]) == (3, "book_table", True)
    assert booking["error"] == "An internal error occurred"   # LiveKit hides the exception from the LLM

    keys = event_keys(events)
    for expected in [("agent.initialized", None), ("call.completed", None), ("agent.interrupted", 2),
                     ("integration.completed", 1), ("integration.failed", 3),
                     *[(e, n) for n in (1, 2, 3) for e in ("user.message_received", "user.stopped_speaking",
                                                           "agent.started_speaking", "agent.message_sent")]]:
        assert expected in keys, expected
    assert ("agent.greeting_sent", 1) not in keys


async def test_livekit_recording_in_reverse_order_gives_the_same_turns(collector, db):
    await replay("livekit", collector, "grpc", reverse=True)
    await settle(collector)
    call, turns, tools, _ = await ledger(db, "call-fixture-0001")
    assert (call["turn_count"], call["tool_call_count"]) == (3, 2)
    assert [t["interrupted"] for t in turns] == [False, True, False]
    assert all(t["user_text"] and t["agent_text"] and t["llm_ttft_ms"] for t in turns)


def _old_session(t0: int, *, pii: bool) -> list[dict]:
    """livekit-agents 1.2 style: assistant_turn, lk.user_transcript, prompts as span events, a SIP caller;
    with ``pii=False`` the content keys are stripped (allow_pii=False), so turns pair by time only."""
    session = {"id": 1, "name": "agent_session", "start": 0, "end": 9_000, "attributes": {
        "lk.room_sid": "RM_old", "lk.sip.ruleID": "SDR_1", "lk.sip.trunkPhoneNumber": "+15550009999",
        "lk.pii.sip.phoneNumber": "+15550001111"}}
    greeting = {"id": 2, "parent": 1, "name": "assistant_turn", "start": 100, "end": 1_500,
                "attributes": {"lk.room_sid": "RM_old", "lk.interrupted": False,
                               **({"lk.response.text": "Hello, how can I help?"} if pii else {})}}
    user = {"id": 3, "parent": 1, "name": "user_turn", "start": 2_000, "end": 3_600, "attributes": {
        "lk.room_sid": "RM_old", "lk.end_of_utterance_delay": 0.6, "lk.transcription_delay": 0.2,
        **({"lk.user_transcript": "I need a plumber"} if pii else {})}}
    reply = {"id": 4, "parent": 1, "name": "assistant_turn", "start": 3_650, "end": 6_000, "attributes": {
        "lk.room_sid": "RM_old", "lk.interrupted": True, "lk.e2e_latency": 1.1,
        **({"lk.user_input": "I need a plumber", "lk.response.text": "Sure, when"} if pii else {})}}
    llm = {"id": 5, "parent": 6, "name": "llm_request", "start": 3_660, "end": 4_200, "attributes": {
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 300, "gen_ai.usage.output_tokens": 20,
        "lk.llm_metrics": json.dumps({"ttft": 0.31, "prompt_tokens": 300, "completion_tokens": 20})},
        "events": [("gen_ai.user.message", 3_660, {"content": "I need a plumber"}),
                   ("gen_ai.choice", 4_200, {"role": "assistant", "content": "Sure, when"})] if pii else []}
    node = {"id": 6, "parent": 4, "name": "llm_node", "start": 3_655, "end": 4_200, "attributes": {}}
    tts = {"id": 7, "parent": 4, "name": "tts_request", "start": 4_000, "end": 4_500, "attributes": {
        "gen_ai.provider.name": "cartesia", "lk.tts_metrics": json.dumps({"ttfb": 0.15, "characters_count": 10})}}
    return [session, greeting, user, reply, llm, node, tts]


@pytest.mark.parametrize("pii", [True, False])
async def test_old_livekit_keys_sip_call_and_pairing_without_transcripts(collector, db, pii):
    t0 = time.time_ns() - 60_000 * MS
    await send("grpc", collector, trace_request("livekit-agents", _old_session(t0, pii=pii), t0_ns=t0))
    await settle(collector)
    call, turns, _, events = await ledger(db, "RM_old")
    assert (call["direction"], call["from_number"], call["to_number"]) == ("inbound", "+15550001111",
                                                                           "+15550009999")
    assert call["turn_count"] == 2 and call["interruption_count"] == 1
    greeting, reply = turns
    assert greeting["user_text"] is None and reply["interrupted"]
    assert reply["eou_ms"] == pytest.approx(600) and reply["stt_ms"] == pytest.approx(200)
    assert reply["llm_ttft_ms"] == pytest.approx(310 + 5, abs=1)  # llm_node started 5 ms before llm_request
    assert reply["tts_ttfb_ms"] == pytest.approx(150) and reply["reported_v2v_ms"] == pytest.approx(1100)
    assert reply["input_tokens"] == 300
    if pii:
        assert (greeting["agent_text"], reply["user_text"], reply["agent_text"]) == (
            "Hello, how can I help?", "I need a plumber", "Sure, when")
        assert ("agent.greeting_sent", 1) in event_keys(events)
    else:
        assert reply["user_text"] is None and reply["agent_text"] is None
    assert call["cost_tts"] == pytest.approx(10 * 30.0 / 1e6)


def _span(name: str, attributes: dict, events: list | None = None) -> SpanIn:
    return SpanIn(trace_id="1" * 32, span_id="2" * 16, parent_span_id=None, name=name, kind=1, start_ns=10 * MS,
                  end_ns=20 * MS, status_code=0, status_message=None, attributes=attributes, events=events or [],
                  resource={}, scope_name="livekit-agents", scope_version="")


def test_web_participant_session_and_unknown_span():
    mapper = LiveKitMapper()
    web = mapper.map_span(_span("agent_session", {"session.id": "s1"}, [
        {"name": "participant_linked", "time_unix_nano": 11 * MS,
         "attributes": {"lk.participant_kind": "PARTICIPANT_KIND_STANDARD"}}]))
    assert web.call_id == "s1" and web.facts["direction"] == "web" and web.stage == "session"
    assert mapper.map_span(_span("keyterm_detection_v2", {"gen_ai.conversation.id": "RM_1"})).stage == "other"
    closed = mapper.map_span(_span("session_close", {"lk.close_reason": "error"}))
    assert closed.facts["session_error"] == "session closed: error"
