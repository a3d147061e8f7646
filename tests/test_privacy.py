"""The PII policy at ingest: what a masked or hashed value leaves in the database — nothing, in any column.

Values go in through the real SDK exporters and recorded framework sessions, wherever producers put them (span
attributes, resource, span events, status messages, transcripts, chat messages, tool arguments and results,
log bodies and attributes); afterwards every text, jsonb and text[] column of every table is searched.
"""

from __future__ import annotations

import json

import asyncpg
import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry import trace

from collector.privacy import PiiPolicy, luhn_valid, parse_attributes, parse_policy
from collector.server import Collector
from tests.conftest import collector_settings, drop_database, new_database, url_for
from tests.otel_sdk import MS, SdkAgent
from tests.replay import ledger, replay

PHONE, PHONE_OTHER_FORMAT, OTHER_PHONE = "+1 415-555-0123", "(415) 555-0123", "+44 20 7946 0958"
EMAIL = "Jane.Doe@example.com"
CARD, CARD_DASHED = "4111 1111 1111 1111", "5500-0000-0000-0004"
SALT = "a-salt-for-tests-only"
# Strings none of which may be found after masking (digits also searched without separators)
SECRETS = ("415-555-0123", "555-0123", "Jane.Doe", "jane.doe", "example.com", "4111 1111", "5500-0000",
           "7946 0958")
SECRET_DIGITS = ("4155550123", "4111111111111111", "5500000000000004", "2079460958")


async def _text_columns(db: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN pg_tables t ON t.schemaname = c.table_schema AND t.tablename = c.table_name "
        "WHERE c.table_schema = 'public' AND (c.data_type IN ('text', 'jsonb', 'json', 'character varying') "
        "OR (c.data_type = 'ARRAY' AND c.udt_name = '_text')) ORDER BY 1, 2")
    return [(r["table_name"], r["column_name"]) for r in rows]


async def found_anywhere(db: asyncpg.Connection, needles: tuple[str, ...] = SECRETS,
                         digit_needles: tuple[str, ...] = SECRET_DIGITS) -> list[str]:
    """``table.column: needle`` for every needle found in any text column of any table (case-insensitive;
    digit needles also match with separators in between)."""
    found = []
    for table, column in await _text_columns(db):
        for needle in needles:
            if await db.fetchval(f'SELECT count(*) FROM "{table}" WHERE "{column}"::text ILIKE $1',
                                 f"%{needle}%"):
                found.append(f"{table}.{column}: {needle}")
        for needle in digit_needles:
            pattern = "[^0-9a-z]{0,2}".join(needle)   # 415 555 0123, 415-555-0123, (415) 555-0123 …
            if await db.fetchval(f'SELECT count(*) FROM "{table}" WHERE "{column}"::text ~* $1', pattern):
                found.append(f"{table}.{column}: {needle}")
    return found


def _send_everywhere(agent: SdkAgent, call_id: str, start: int, phone: str = PHONE) -> None:
    """One call whose phone number, e-mail address and card number sit in every place producers put them."""
    said = f"my number is {phone}, mail {EMAIL}, card {CARD}"
    with agent.span("call", start, start + 9000 * MS, {
            "call.id": call_id, "call.direction": "inbound", "call.from": phone, "call.to": "+1 212 555 0199",
            "call.recording.url": f"https://recordings.example.net/{call_id}.wav",
            "call.summary": f"Caller {EMAIL} paid with {CARD_DASHED}", "crm.note": said,
            "customer.name": "Jane Doe", "customer.mobile": "0791 234 5678"}) as root:
        root.add_event("call.answered", {"caller": phone})
        with agent.span("turn", start + 100 * MS, start + 4000 * MS, {
                "call.id": call_id, "turn.number": 1, "turn.user_text": said,
                "turn.agent_text": f"I will text {phone} and mail {EMAIL}"}, parent=root) as turn:
            with agent.span("stt", start + 100 * MS, start + 900 * MS, {"stt.transcript": said, "stt.is_final": True},
                            parent=turn):
                pass
            messages = [{"role": "user", "content": said},
                        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                            "name": "charge", "arguments": json.dumps({"card": CARD, "phone": phone})}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": f"charged {CARD_DASHED}"}]
            with agent.span("llm", start + 1000 * MS, start + 1800 * MS, {
                    "gen_ai.input.messages": json.dumps(messages), "llm.output": f"Done, receipt to {EMAIL}",
                    "gen_ai.request.model": "gpt-4o-mini"}, parent=turn) as llm:
                llm.add_event("gen_ai.user.message", {"content": said})
            with agent.span("execute_tool charge", start + 1900 * MS, start + 2100 * MS, {
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "charge",
                    "gen_ai.tool.call.id": "c2", "gen_ai.tool.call.arguments": json.dumps({"card": CARD, "to": phone}),
                    "gen_ai.tool.call.result": json.dumps({"receipt_to": EMAIL})}, parent=turn,
                    error=f"card {CARD} declined for {EMAIL}") as tool:
                tool.record_exception(ValueError(f"declined {CARD_DASHED} of {phone}"))
            with agent.span("tts", start + 2200 * MS, start + 2600 * MS, {"tts.text": f"I texted {phone}"},
                            parent=turn):
                pass
        agent.event("call.note", start + 5000 * MS, root, body=f"caller {phone} said {EMAIL}",
                    attributes={"call.from": phone, "note": f"card {CARD}"})
        agent.logger.emit(LogRecord(timestamp=start + 5100 * MS, context=trace.set_span_in_context(root),
                                    severity_number=SeverityNumber.INFO, event_name="gen_ai.user.message",
                                    body={"content": said, "role": "user"}, attributes={"call.id": call_id}))


async def _collect(database_url: str, **settings: object) -> Collector:
    running = Collector(collector_settings(database_url, **settings), run_migrations=False)
    await running.start()
    return running


@pytest.mark.parametrize("kind", ("grpc", "http"))
async def test_masked_values_are_nowhere_in_the_database(kind, database_url, db):
    running = await _collect(database_url, pii="mask", pii_attributes="customer.name,customer.mobile=phone")
    try:
        agent = SdkAgent(kind, running, resource={"service.owner": EMAIL, "deployment.phone": PHONE})
        _send_everywhere(agent, "pii-call", 1_700_000_000_000 * MS)
        await agent.flush()
        await running.settle()
    finally:
        await running.close(grace_s=1)

    assert await found_anywhere(db) == []
    # nothing else was lost: the call, its turn, stages, tool calls and events are all there
    call, turns, tools, events = await ledger(db, "pii-call")
    assert call["status"] == "completed" and call["direction"] == "inbound"
    assert (call["from_number"], call["to_number"]) == ("[phone …23]", "[phone …99]")   # last two digits
    assert call["recording_url"] == "[recording url]" and call["summary"] == "[transcript]"
    assert [(t["turn_number"], t["user_text"], t["agent_text"]) for t in turns] == [(1, "[transcript]",
                                                                                       "[transcript]")]
    assert {t["tool_name"] for t in tools} == {"charge"}
    assert all(t["arguments"] in (None, "[tool payload]") and t["result"] in (None, "[tool payload]") for t in tools)
    assert await db.fetchval("SELECT count(*) FROM spans WHERE call_id = 'pii-call'") == agent.span_count
    attributes = json.loads(await db.fetchval("SELECT attributes FROM spans WHERE name = 'call'"))
    assert attributes["customer.name"] == "[personal]" and attributes["customer.mobile"] == "[phone …78]"
    assert attributes["crm.note"] == "my number is [phone …23], mail [email], card [card]"
    assert attributes["call.direction"] == "inbound"
    messages = json.loads(json.loads(await db.fetchval("SELECT attributes FROM spans WHERE name = 'llm'"))[
        "gen_ai.input.messages"])
    # chat messages keep their shape: roles, ids and tool names stay readable
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "charge", "arguments": "[tool payload]"}
    # on a tool span the exception is the tool's error: it follows the tool class like the tool call's error
    assert await db.fetchval("SELECT message FROM events WHERE event = 'exception'") == "[tool payload]"
    assert {e["event"] for e in events} >= {"call.answered", "call.note", "user.message_received",
                                            "integration.failed", "gen_ai.user.message"}


async def test_hashed_phone_numbers_group_one_callers_calls(database_url, db):
    running = await _collect(database_url, pii="phone=hash,email=hash", pii_salt=SALT)
    try:
        agent = SdkAgent("grpc", running)
        start = 1_700_000_000_000 * MS
        for number, (call_id, phone) in enumerate((("first", PHONE), ("second", PHONE_OTHER_FORMAT),
                                                   ("stranger", OTHER_PHONE))):
            _send_everywhere(agent, call_id, start + number * 60_000 * MS, phone=phone)
        await agent.flush()
        await running.settle()
    finally:
        await running.close(grace_s=1)

    assert await found_anywhere(db, needles=("415-555-0123", "Jane.Doe", "jane.doe", "7946 0958"),
                                digit_needles=("4155550123", "2079460958")) == []
    numbers = dict(await db.fetch("SELECT call_id, from_number FROM calls"))
    assert numbers["first"] == numbers["second"] != numbers["stranger"]
    assert numbers["first"].startswith("[phone #") and len(numbers["first"]) == len("[phone #]") + 16
    # the same marker wherever that number was written: free text, chat messages, log attributes
    notes = await db.fetch("SELECT attributes->>'crm.note' AS note FROM spans WHERE name = 'call' ORDER BY call_id")
    assert all(numbers["first"] in row["note"] or numbers["stranger"] in row["note"] for row in notes)
    assert await db.fetchval("SELECT count(*) FROM events WHERE source = 'log' AND data->>'call.from' = $1",
                             numbers["first"]) == 2
    # e-mail addresses hash too; transcripts and cards follow their own classes (keep, and the default mask)
    user_texts = {row["user_text"] for row in await db.fetch("SELECT user_text FROM turns")}
    assert all("[email #" in text and "[card]" in text for text in user_texts)


async def test_by_default_only_card_numbers_are_masked(collector, db):
    agent = SdkAgent("grpc", collector)
    _send_everywhere(agent, "defaults", 1_700_000_000_000 * MS)
    await agent.flush()
    await collector.settle()
    assert await found_anywhere(db, needles=("4111 1111", "5500-0000"),
                                digit_needles=("4111111111111111", "5500000000000004")) == []
    call = await db.fetchrow("SELECT from_number, summary FROM calls WHERE call_id = 'defaults'")
    assert call["from_number"] == PHONE and call["summary"] == f"Caller {EMAIL} paid with [card]"


async def _shape(url: str) -> dict[str, list]:
    """Everything of a ledger but its texts: what a policy must not change."""
    connection = await asyncpg.connect(url)
    try:
        return {
            "calls": [tuple(r) for r in await connection.fetch(
                "SELECT status, direction, framework, turn_count, tool_call_count, interruption_count, duration_s, "
                "cost_total, from_number IS NULL FROM calls ORDER BY started_at, call_id")],
            "turns": [tuple(r) for r in await connection.fetch(
                "SELECT turn_number, interrupted, voice_to_voice_ms, llm_ttft_ms, tts_ttfb_ms, user_text IS NULL, "
                "agent_text IS NULL FROM turns ORDER BY started_at, turn_number")],
            "tools": [tuple(r) for r in await connection.fetch(
                "SELECT tool_name, tool_call_id, is_error, turn_number, arguments IS NULL, result IS NULL "
                "FROM tool_calls ORDER BY tool_name, tool_call_id")],
            "events": [tuple(r) for r in await connection.fetch(
                "SELECT event, source, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2")],
            "spans": [tuple(r) for r in await connection.fetch(
                "SELECT stage, framework, count(*) FROM spans GROUP BY 1, 2 ORDER BY 1, 2")],
        }
    finally:
        await connection.close()


@pytest.mark.parametrize("recording", ("livekit", "pipecat", "openinference_pipecat", "openllmetry", "openai_v2"))
async def test_recorded_sessions_keep_their_ledger_with_transcripts_and_tools_masked(recording, template_database,
                                                                                      database_url, db):
    """A framework's real session: no utterance, reply or tool value is stored, and the ledger (turns paired
    and numbered, latencies, tool calls and their errors, events) is the one the same session gives unmasked."""
    running = await _collect(database_url, pii="transcript=mask,tool=mask,personal=mask")
    try:
        recorded = await replay(recording, running)
        await running.settle()
    finally:
        await running.close(grace_s=1)
    said = [text for turn in recorded.meta["turns"] for text in (turn["user_utterance"], turn["agent_reply"])]
    tool_values = ["Tokyo", "sunny", "20:00", "booking system unavailable"]
    assert await found_anywhere(db, needles=(*[s[:24] for s in said], *tool_values), digit_needles=()) == []
    texts = {r["user_text"] for r in await db.fetch("SELECT user_text FROM turns WHERE user_text IS NOT NULL")}
    assert texts == {"[transcript]"}

    unmasked = await new_database(template_database)
    try:
        plain = await _collect(url_for(unmasked), pii="keep")
        try:
            await replay(recording, plain)
            await plain.settle()
        finally:
            await plain.close(grace_s=1)
        assert await _shape(database_url) == await _shape(url_for(unmasked))
    finally:
        await drop_database(unmasked)


def test_policy_grammar_and_detectors():
    assert parse_policy("") == {**dict.fromkeys(parse_policy("keep"), "keep"), "card": "mask"}
    assert set(parse_policy("hash").values()) == {"hash"}
    assert parse_policy("mask,transcript=keep")["transcript"] == "keep"
    assert parse_policy("phone_numbers=hash")["phone"] == "hash"
    for bad, message in (("phone=blur", "not an action"), ("voice=mask", "unknown class")):
        with pytest.raises(ValueError, match=message):
            parse_policy(bad)
    with pytest.raises(ValueError, match="pii_salt"):
        PiiPolicy(parse_policy("phone=hash"))
    assert parse_attributes("a, b.*=phone") == (("a", "personal"), ("b.*", "phone"))
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")

    policy = PiiPolicy(parse_policy("mask"))
    assert policy.text("call 555-123-4567 or 555-987-6543") == "call [phone …67] or [phone …43]"
    assert policy.text("+44 20 7946 0958, 07700 900123, (212) 555-0199") == "[phone …58], [phone …23], [phone …99]"
    assert policy.text("cards 4111-1111-1111-1111 and 378282246310005") == "cards [card] and [card]"
    # what is not personal stays: ids, timestamps, versions, addresses, dates, numbers that fail Luhn
    kept = ("trace 4bf92f3577b34da6a3ce929d0e0e4736 at 1700000000.123 via 192.168.100.200 on 2024-01-15, "
            "v1.2.3, order 12345678, 4111111111111112")
    assert policy.text(kept) == kept
    hashed = PiiPolicy(parse_policy("hash"), salt=SALT)
    assert hashed.text(PHONE) == hashed.text(PHONE_OTHER_FORMAT) == hashed.text("+14155550123")
    assert hashed.text(EMAIL) == hashed.text(EMAIL.lower()) != PiiPolicy(parse_policy("hash"),
                                                                          salt=SALT + "!").text(EMAIL)


def test_the_facts_holding_a_class_are_declared_text_facts():
    """Each fact the policy classes (transcripts, numbers, recording URLs) is a text fact of the contract, so a
    renamed or retyped fact cannot slip past its class into the detectors only."""
    from collector.privacy.locations import FACT_CLASSES
    from storage.facts import FACTS

    assert FACT_CLASSES, "the policy classes no fact"
    wrong = {key: FACTS[key].type.__name__ if key in FACTS else "undeclared" for key in FACT_CLASSES
             if key not in FACTS or FACTS[key].type is not str}
    assert not wrong, wrong
    assert set(FACT_CLASSES.values()) <= set(parse_policy(""))
