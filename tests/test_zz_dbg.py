import pytest
from tests.replay import ledger, replay, settle
@pytest.mark.parametrize("name", ["pipecat_bargein","openinference_bargein","livekit_transfer","genai_agent","native_status"])
async def test_dbg(collector, db, name):
    await replay(name, collector, "grpc")
    await settle(collector)
    print("\n=====", name, await db.fetch("select * from call_quarantine"))
    for c in await db.fetch("select call_id,status,framework,campaign,direction,turn_count,interruption_count,tool_call_count,dead_air_total_s,longest_silence_ms,barge_in_count from calls"):
        print(dict(c))
    for t in await db.fetch("select call_id, turn_number, left(user_text,30) u, left(agent_text,30) a, interrupted, round(voice_to_voice_ms) v2v, round(reported_v2v_ms) rep, round(dead_air_ms) dead, round(barge_in_stop_ms) barge from turns order by 1,2"):
        print(dict(t))
    print([ (e["event"], e["turn_number"]) for e in await db.fetch("select event, turn_number from events where event like 'user.message%' or event like 'tool.transfer%' order by time")])
    for q in await db.fetch("select * from call_quality"):
        print(dict(q))
    print(await db.fetch("select * from campaign_funnel"))
