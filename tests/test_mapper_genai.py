"""Bare OTel GenAI instrumentation (recorded openai-v2 2.4b0 and 2.1b0): spans, log events, unknown spans."""

from __future__ import annotations

import json
import time

import pytest

from tests.replay import TRANSPORTS, ledger, replay, send, settle, trace_request

MS = 1_000_000


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_openai_v2_spans_and_inference_details_events(collector, db, transport):
    recording = await replay("openai_v2", collector, transport)
    await settle(collector)
    meta = recording.meta
    rows = await db.fetch("SELECT call_id FROM calls ORDER BY started_at")
    calls = [await ledger(db, row["call_id"]) for row in rows]
    assert len(calls) == len(recording.trace_ids)   # each bare request is a trace, a call of its own
    turns = [turns[0] for _, turns, _, _ in calls]
    assert [t["user_text"] for t in turns] == [meta["turns"][i]["user_utterance"] for i in (0, 0, 1, 2, 2)]
    assert [t["interrupted"] for t in turns] == [False, False, True, False, False]
    assert all(t["llm_ttft_ms"] is None for t in turns)   # this instrumentation records no TTFT
    tools = [tool for _, _, tools, _ in calls for tool in tools]
    assert [(t["tool_name"], t["is_error"]) for t in tools] == [("get_weather", False), ("book_table", True)]
    assert json.loads(tools[0]["result"]) == meta["tools"][0]["result"]
    for call, _, _, events in calls:
        (details,) = [e for e in events if e["source"] == "log"]
        assert details["event"] == "gen_ai.client.inference.operation.details" and details["category"] == "other"
        data = json.loads(details["data"]) if isinstance(details["data"], str) else details["data"]
        assert data["gen_ai.input.messages"] and details["turn_number"] == 1
        assert call["cost_llm"] is None or call["cost_llm"] > 0


async def test_openai_v2_legacy_event_name_attribute_events_carry_content(collector, db):
    recording = await replay("openai_v2_legacy", collector, "grpc")
    await settle(collector)
    events = await db.fetch("SELECT e.*, c.framework FROM events e JOIN calls c USING (call_id) "
                            "WHERE e.source = 'log'")
    assert len(events) == recording.log_record_count and {e["framework"] for e in events} == {"genai"}   # by trace id
    users = [e for e in events if e["event"] == "gen_ai.user.message"]
    assert "What's the weather in Tokyo?" in {e["message"] for e in users}
    tool_results = [json.loads(e["data"]) if isinstance(e["data"], str) else e["data"]
                    for e in events if e["event"] == "gen_ai.tool.message"]
    assert any("booking system unavailable" in json.dumps(d) for d in tool_results)


async def test_spans_of_unknown_framework_versions_still_land(collector, db):
    t0 = time.time_ns() - 60_000 * MS
    for scope, name, attributes in [
        ("pipecat", "llm_quantum_router", {"conversation.id": "unk-1"}),
        ("livekit-agents", "hologram_node", {"session.id": "unk-1"}),
        ("some.new.framework", "do_stuff", {"call.id": "unk-1", "x": 1}),
        ("openinference.instrumentation.future", "thing", {"openinference.span.kind": "RERANKER",
                                                          "session.id": "unk-1"}),
    ]:
        await send("http-json", collector, trace_request(scope, [
            {"id": 7, "name": name, "start": 0, "end": 10, "attributes": attributes}], t0_ns=t0,
            trace_id=f"{abs(hash(scope)) % 16**32:032x}"))
    await settle(collector)
    rows = await db.fetch("SELECT name, stage, framework, call_id, attributes FROM spans ORDER BY name")
    assert [(r["name"], r["stage"], r["call_id"]) for r in rows] == [
        ("do_stuff", "other", "unk-1"), ("hologram_node", "other", "unk-1"),
        ("llm_quantum_router", "other", "unk-1"), ("thing", "other", "unk-1")]
    # a span no convention claims that names its call with call.id is a native-convention span
    assert {r["name"]: r["framework"] for r in rows} == {
        "do_stuff": "native", "hologram_node": "livekit", "llm_quantum_router": "pipecat", "thing": "openinference"}
    assert all(r["attributes"] for r in rows)   # the raw span is kept
