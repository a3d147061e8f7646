"""OpenLLMetry (recorded opentelemetry-instrumentation-openai 0.62.4): each request is its own exchange."""

from __future__ import annotations

import json
import time

import pytest

from tests.replay import TRANSPORTS, ledger, replay, send, settle, trace_request

MS = 1_000_000


async def _calls(db):  # type: ignore[no-untyped-def]
    rows = await db.fetch("SELECT call_id FROM calls ORDER BY started_at")
    return [await ledger(db, row["call_id"]) for row in rows]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_openllmetry_requests_become_exchanges_with_ttft_from_chunk_events(collector, db, transport):
    recording = await replay("openllmetry", collector, transport)
    await settle(collector)
    meta = recording.meta
    calls = await _calls(db)
    assert len(calls) == len(recording.trace_ids) and all(   # one call per bare request
        call["framework"] == "openllmetry" for call, *_ in calls)
    turns = [turns[0] for _, turns, _, _ in calls]
    assert [t["user_text"] for t in turns] == [meta["turns"][i]["user_utterance"] for i in (0, 0, 1, 2, 2)]
    replies = meta["recorder_observed"]["replies"]
    assert [t["agent_text"] for t in turns] == [None, replies[0]["text"], replies[1]["text"], None,
                                                replies[2]["text"]]
    assert [t["interrupted"] for t in turns] == [False, False, True, False, False]
    for turn in turns:
        assert meta["delays_ms"]["llm_ttft_ms"] <= turn["llm_ttft_ms"] <= meta["delays_ms"]["llm_ttft_ms"] + 350
    tools = [tool for _, _, tools, _ in calls for tool in tools]
    weather, booking = tools
    assert (weather["tool_name"], json.loads(weather["arguments"]), json.loads(weather["result"])) == (
        "get_weather", meta["tools"][0]["arguments"], meta["tools"][0]["result"])
    assert (booking["tool_name"], booking["is_error"], booking["error"]) == ("book_table", True,
                                                                           meta["tools"][1]["error"])
    assert sum(call["cost_llm"] or 0 for call, *_ in calls) > 0


async def test_old_openllmetry_indexed_keys_and_session_association(collector, db):
    t0 = time.time_ns() - 60_000 * MS
    spans = [{"id": 1, "name": "openai.chat", "start": 0, "end": 800, "kind": 3, "attributes": {
        "llm.request.type": "chat", "gen_ai.system": "OpenAI", "gen_ai.request.model": "gpt-3.5-turbo",
        "traceloop.association.properties.session_id": "sess-9",
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "Hello?",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "Hi!",
        "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 3},
        "events": [("llm.content.completion.chunk", 150, {}), ("llm.content.completion.chunk", 200, {})]}]
    await send("grpc", collector, trace_request("opentelemetry.instrumentation.openai.v0", spans, t0_ns=t0))
    await settle(collector)
    call, (turn,), _, _ = await ledger(db, "sess-9")
    assert call["framework"] == "openllmetry" and call["cost_llm"] > 0
    assert (turn["user_text"], turn["agent_text"], turn["input_tokens"]) == ("Hello?", "Hi!", 10)
    assert turn["llm_ttft_ms"] == pytest.approx(150)
