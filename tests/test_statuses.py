"""Each of the 7 call statuses (design §4) from native-convention input, with its precedence rules."""

from __future__ import annotations

import time

import pytest
from opentelemetry._logs import SeverityNumber

from storage.catalogue import CATALOGUE
from tests.otel_sdk import MS, SdkAgent

T0 = time.time_ns() - 3_600_000 * MS


def session(agent: SdkAgent, call_id: str, offset_s: int, *, error: str | None = None, **attributes):  # type: ignore[no-untyped-def]
    start = T0 + offset_s * 1000 * MS
    return agent.span("call", start, start + 30_000 * MS,
                      {"voice.stage": "session", "call.id": call_id, **attributes}, error=error)


def build_calls(agent: SdkAgent) -> None:
    # queued / ringing: only lifecycle events exist so far
    with agent.span("dial", T0, T0 + 5 * MS, {"call.id": "st-queued"}) as dial:
        agent.event("call.queued", T0, dial, attributes={"call.id": "st-queued", "call.direction": "outbound",
                                                         "call.campaign": "bulk-1"})
    with agent.span("dial", T0, T0 + 5 * MS, {"call.id": "st-ringing"}) as dial:
        agent.event("call.queued", T0, dial, attributes={"call.id": "st-ringing"})
        agent.event("call.ringing", T0 + 2 * MS, dial, attributes={"call.id": "st-ringing"})
    # active: turns arrive, the session span has not ended (so it is not exported yet)
    with agent.span("turn", T0, T0 + 1_000 * MS, {"call.id": "st-active", "turn.number": 1}):
        pass
    with session(agent, "st-completed", 10):
        pass
    with session(agent, "st-failed", 20, error="TTS provider 500"):
        pass
    with session(agent, "st-declined", 30, **{"sip.response.code": 603}):
        pass
    with session(agent, "st-missed", 40, **{"sip.response.code": 480}):
        pass
    # precedence: a lifecycle event beats a cleanly ended session span
    with session(agent, "st-event-wins", 50) as span:
        agent.event("call.failed", T0 + 60_000 * MS, span, attributes={"call.id": "st-event-wins",
                    "call.status_reason": "invalid number"}, severity=SeverityNumber.ERROR)
    # terminal statuses never go back: a late ringing event after completion changes nothing
    with session(agent, "st-terminal-stays", 60) as span:
        agent.event("call.ringing", T0 + 200_000 * MS, span, attributes={"call.id": "st-terminal-stays"})
    # an explicit call.status attribute wins over the SIP code
    with session(agent, "st-explicit", 70, **{"call.status": "completed", "sip.response.code": 486}):
        pass
    # SIP 4xx that is neither busy nor no-answer: failed
    with session(agent, "st-sip-failed", 80, **{"sip.response.code": 404}):
        pass


EXPECTED = {
    "st-queued": ("queued", None),
    "st-ringing": ("ringing", None),
    "st-active": ("active", None),
    "st-completed": ("completed", None),
    "st-failed": ("failed", "TTS provider 500"),
    "st-declined": ("declined", "SIP 603"),
    "st-missed": ("missed", "SIP 480"),
    "st-event-wins": ("failed", "invalid number"),
    "st-terminal-stays": ("completed", None),
    "st-explicit": ("completed", None),
    "st-sip-failed": ("failed", "SIP 404"),
}


async def test_every_status_from_native_input(collector, db):
    agent = SdkAgent("grpc", collector)
    build_calls(agent)
    await agent.flush()
    await collector.settle()
    rows = {r["call_id"]: r for r in await db.fetch("SELECT * FROM calls")}
    assert {call_id: (r["status"], r["status_reason"]) for call_id, r in rows.items()} == EXPECTED
    assert {r["status"] for r in rows.values()} == {
        "queued", "ringing", "active", "completed", "failed", "declined", "missed"}
    queued = rows["st-queued"]
    assert (queued["direction"], queued["campaign"], queued["ended_at"]) == ("outbound", "bulk-1", None)
    assert rows["st-completed"]["ended_at"] is not None and rows["st-completed"]["duration_s"] == pytest.approx(30)
    assert rows["st-active"]["ended_at"] is None and rows["st-active"]["last_seen_at"] is not None
    assert rows["st-failed"]["error_count"] == 1
    catalogue = await db.fetchval("SELECT count(*) FROM event_types")
    assert catalogue == len(CATALOGUE)
    failed_type = await db.fetchrow("SELECT * FROM event_types WHERE event = 'call.failed'")
    assert (failed_type["display_name"], failed_type["category"], failed_type["default_level"]) == (
        "Call Failed", "lifecycle", "CRITICAL")
    # the catalogue's level wins when higher than the record's severity
    assert await db.fetchval("SELECT level FROM events WHERE call_id = 'st-event-wins' AND event = 'call.failed' "
                             "AND source = 'log'") == "CRITICAL"


async def test_silent_active_call_turns_stale_and_new_data_clears_it(database_url, db):
    from collector.server import Collector
    from tests.conftest import collector_settings

    async with Collector(collector_settings(database_url, idle_timeout_s=60), run_migrations=False) as running:
        agent = SdkAgent("grpc", running)
        old = time.time_ns() - 3_600_000 * MS          # silent for an hour, never ended
        with agent.span("turn", old, old + 1_000 * MS, {"call.id": "st-stale", "turn.number": 1}):
            pass
        await agent.flush()
        await running.settle()
        await running.deriver.mark_stale()
        assert await db.fetchval("SELECT (status, stale)::text FROM calls WHERE call_id = 'st-stale'") == "(active,t)"
        fresh = SdkAgent("grpc", running)
        now = time.time_ns()
        with fresh.span("turn", now - 1_000 * MS, now, {"call.id": "st-stale", "turn.number": 2}):
            pass
        await fresh.flush()
        await running.settle()
        assert await db.fetchval("SELECT (status, stale)::text FROM calls WHERE call_id = 'st-stale'") == "(active,f)"
