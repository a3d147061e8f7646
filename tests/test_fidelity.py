"""The classes issue 12 names, on recordings of real framework runs (tests/fixtures/recordings, second call):
explicit status precedence, GenAI invocation text, voice-to-voice from the best anchors, a message event for
every turn the user spoke in, native-convention framework, dead air and barge-in, transfers."""

from __future__ import annotations

import pytest

from tests.replay import event_keys, ledger, load, replay, settle

CALL = "call-fixture-0002"


def _attribute(item, key: str) -> str | None:  # type: ignore[no-untyped-def]
    """A string attribute of a recorded span or log record."""
    return next((a.value.string_value for a in item.attributes if a.key == key), None)


async def _replayed(collector, db, name: str, call_id: str = CALL):  # type: ignore[no-untyped-def]
    await replay(name, collector, "grpc")
    await settle(collector)
    return await ledger(db, call_id)


@pytest.mark.parametrize("name", ["pipecat_bargein", "livekit_transfer"])
async def test_barge_in_and_silence_from_speaking_spans(collector, db, name):
    call, turns, tools, events = await _replayed(collector, db, name)
    assert [t["interrupted"] for t in turns] == [False, True, False]
    # the barge-in: turn 3's speech starts while turn 2's audio plays, which stops a few hundred ms later
    assert turns[1]["barge_in_stop_ms"] is not None and 0 < turns[1]["barge_in_stop_ms"] < 1500
    assert turns[0]["barge_in_stop_ms"] is None and turns[2]["barge_in_stop_ms"] is None
    assert call["barge_in_count"] == 1
    for turn in turns:   # inside a turn the longest silence is the wait for the agent's answer
        assert turn["dead_air_ms"] is not None and 500 < turn["dead_air_ms"] < 4000
    # the caller said nothing for seconds after turn 1's answer (scripted)
    assert call["longest_silence_ms"] > 4000
    assert call["dead_air_total_s"] * 1000 >= call["longest_silence_ms"]
    assert call["campaign"] == "spring-renewals" and call["direction"] == "inbound"
    assert call["agent"] == "front-desk"    # the user's call.agent wins over the framework's label
    assert ("tool.transfer.completed", 3) in event_keys(events)
    assert [t["tool_name"] for t in tools if t["tool_name"] == "transfer_call"]


async def test_openinference_turns_get_voice_to_voice_and_message_events(collector, db):
    call, turns, _, events = await _replayed(collector, db, "openinference_bargein")
    # one trace per turn (OpenInference), all of them joined into the call
    assert call["framework"] == "openinference" and set(call["trace_ids"]) == load("openinference_bargein").trace_ids
    # no TTS first byte in OpenInference: the final transcript → TTS request, where both stages exist
    assert turns[0]["voice_to_voice_ms"] is not None and 0 < turns[0]["voice_to_voice_ms"] < 3000
    assert turns[1]["voice_to_voice_ms"] is not None
    assert turns[2]["voice_to_voice_ms"] is None   # the barge-in turn has no STT span at all
    # every turn the user spoke in has its user.message_received, the barge-in turn too
    keys = event_keys(events)
    assert all(("user.message_received", n) in keys for n in (1, 2, 3))
    assert turns[2]["user_text"] and "transfer" in turns[2]["user_text"]
    # no speaking spans: silence is unknown, not zero
    assert all(t["dead_air_ms"] is None for t in turns) and call["longest_silence_ms"] is None
    quality = await db.fetchrow("SELECT * FROM call_quality WHERE call_id = $1", CALL)
    assert quality["turns_missing_stage"] == 1


async def test_genai_agent_turns_come_from_invocation_messages(collector, db):
    call, turns, tools, events = await _replayed(collector, db, "genai_agent")
    assert call["framework"] == "genai" and call["agent"] == "front-desk"
    assert call["turn_count"] == len(turns) == load("genai_agent").scripted[0]
    assert [t["user_text"] for t in turns] == ["Hello, what's the weather in Tokyo?",
                                               "Tell me a long story please.",
                                               "Stop. Please transfer me to a human."]
    assert turns[0]["agent_text"] == "It is sunny and 22 degrees in Tokyo."
    assert turns[1]["interrupted"] and turns[1]["agent_text"].startswith("Once upon a time")
    assert turns[2]["agent_text"] == "I am transferring you to a colleague now."
    keys = event_keys(events)
    assert all(("user.message_received", n) in keys for n in (1, 2, 3))
    assert {t["tool_name"] for t in tools} == {"get_weather", "transfer_call"}
    assert all(t["voice_to_voice_ms"] is None for t in turns)   # a text agent: no STT / TTS stage


async def test_native_status_calls(collector, db):
    await replay("native_status", collector, "grpc")
    await settle(collector)
    calls = {r["call_id"]: r for r in await db.fetch("SELECT * FROM calls")}
    queued, live = calls["call-native-queued"], calls["call-native-live"]
    # the explicit call.status on the ended session span wins over "ended → completed"
    assert queued["status"] == "queued" and queued["status_reason"] == "waiting for a free line"
    assert queued["framework"] == "native" and live["framework"] == "native"
    assert live["status"] == "active" and live["campaign"] == "spring-renewals"
    quality = {r["call_id"]: r for r in await db.fetch("SELECT * FROM call_quality")}
    recording = load("native_status")
    span_ids = {span.span_id for span in recording.spans}
    orphans = [span for span in recording.spans if _attribute(span, "call.id") == "call-native-live"
               and span.parent_span_id and span.parent_span_id not in span_ids]   # the root never ended
    assert orphans and quality["call-native-live"]["orphan_spans"] == len(orphans)
    # log records that name no call and whose trace has no span: counted, and on no call of the recording
    unnamed = [record for record in recording.log_records if _attribute(record, "call.id") is None
               and record.trace_id.hex() not in recording.trace_ids]
    lost = [q for q in quality.values() if q["uncorrelated_log_records"] > 0]
    assert unnamed and sum(q["uncorrelated_log_records"] for q in lost) == len(unnamed)
    assert not {q["call_id"] for q in lost} & {queued["call_id"], live["call_id"]}
    funnel = await db.fetch("SELECT * FROM campaign_funnel WHERE campaign = 'spring-renewals'")
    assert len(funnel) == 1 and funnel[0]["queued"] == 1 and funnel[0]["calls"] == 2
    assert funnel[0]["answered"] == 1 and funnel[0]["completed"] == 0


async def test_transferred_is_derived_from_a_transfer_tool_call_or_a_transfer_event(collector, db):
    call, _, tools, events = await _replayed(collector, db, "livekit_transfer")
    assert call["transferred"]   # the recording has both: a transfer_call tool call and tool.transfer.completed
    transfer_events = ("transfer.completed", "tool.transfer.completed", "transfer.human_answered")

    async def rederive() -> bool:
        await db.execute("INSERT INTO dirty_calls (call_id) VALUES ($1)", CALL)
        await settle(collector)
        return await db.fetchval("SELECT transferred FROM calls WHERE call_id = $1", CALL)

    # only the tool call says so: still transferred
    renamed = await db.execute("UPDATE events SET event = 'test.' || event WHERE call_id = $1 AND event = ANY($2)",
                               CALL, list(transfer_events))
    assert renamed != "UPDATE 0"
    assert await rederive()
    # the transfer tool failed, and no event: not transferred
    assert await db.execute("UPDATE tool_calls SET is_error = true WHERE call_id = $1 AND tool_name ILIKE '%transfer%'",
                            CALL) != "UPDATE 0"
    assert not await rederive()
    funnel = await db.fetchrow("SELECT sum(transferred) AS t, sum(calls) AS n FROM campaign_funnel")
    assert funnel["t"] == 0 and funnel["n"] >= 1
    # only the event says so: transferred
    await db.execute("UPDATE events SET event = substr(event, 6) WHERE call_id = $1 AND event LIKE 'test.%'", CALL)
    assert await rederive()
    assert await db.fetchval("SELECT sum(transferred) FROM campaign_funnel") == 1
    # the rollup counts it too once the deriver refreshed it
    assert await db.fetchval("SELECT sum(transferred) FROM call_status_1h") == 1
