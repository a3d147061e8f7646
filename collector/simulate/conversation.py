"""Native voice-agent conversations (docs/conventions.md): the session span, its turns and their stages.

2–8 turns; outbound and half the others open with an agent greeting turn that has only a tts child. Per user
turn: ``turn`` span (turn.number, turn.user_text, turn.agent_text, turn.interrupted on some, turn.v2v_ms /
turn.eou_ms on some) starting when the user starts speaking, children ``stt`` [user stopped → final
transcript, lognormal median 250 ms], ``llm`` (5–30 ms after STT final, llm.ttft_ms lognormal by model,
gen_ai.* provider/model/usage, llm.output), optional tool ``execute_tool <name>`` between two llm spans
(gen_ai.tool.*; ~12 % fail with status ERROR + error.type; sensitive tools ask the contact first:
integration.approval_requested → granted / denied), ``tts`` (15–120 ms after the first token, tts.ttfb_ms
lognormal by provider around 180 ms, tts.text, tts.characters). Interrupted turns cut the agent's audio and
the user's next turn starts early. A few calls end in a ``transfer`` span (voice.stage=transfer,
transfer.target) that succeeds or fails, some with the agent's hang-up tool. The root ``call`` span carries
call.id/direction/campaign/agent/from/to, recording url, summary, tags (string array), extracted (JSON
string) and sometimes call.cost/currency. ``call.id`` is on every span for 70 % of calls; for the rest only on
the session and turn spans, so stage spans must be correlated by trace id (they then carry no turn.number
either).

Outcomes: ``completed`` (``call.completed`` log for most calls, explicit ``call.status="completed"`` on some
session spans, else only the span), ``provider_error`` (llm span ERROR + exception event, session ERROR,
``call.failed`` log with ``call.status_reason``), ``crash`` (tts span ERROR, session span ERROR only) and
``active`` (cut at "now": the session span and any unfinished turn/stage span are not sent).
"""

from __future__ import annotations

import json
import math
from typing import Any

from collector.simulate.builder import CallBuilder
from collector.simulate.model import (
    CLIENT, ERR, INTERNAL, MS, SERVER, S, DraftSpan, lognormal, ms, pick_weighted,
)
from collector.simulate.profiles import AGENTS, SCOPE_NATIVE, TOOL_ERRORS, TOOLS

__all__ = ["build_conversation"]


def build_conversation(b: CallBuilder, outcome: str) -> None:
    """outcome: completed | provider_error | crash | active."""
    r = b.r
    agent = r.choice(AGENTS)
    b.identity(pick_weighted(r, agent.directions), agent)
    b.llm = pick_weighted(r, [(x, x[5]) for x in agent.llms])
    b.stt = r.choice(agent.stts)
    b.tts = r.choice(agent.ttss)
    phone = b.direction != "web"
    session = DraftSpan(b.sid(), b"", "call", SERVER if b.direction == "inbound" else INTERNAL, 0, 0,
                        {}, 0, SCOPE_NATIVE)
    b.session = session
    lifecycle = b.call_attrs()
    t = 0
    if phone:
        if b.direction == "outbound" and r.random() < 0.3:
            b.log(-ms(r.uniform(1000, 30000)), "call.queued", "Queued by the dialer",
                  {**lifecycle, "queue.position": r.randint(1, 5)}, traced=False)
        b.log(0, "call.ringing", f"Ringing {b.to_number}", lifecycle, span=session)
        t += ms(r.uniform(4000, 18000) if b.direction == "outbound" else r.uniform(500, 3500))
        b.log(t, "call.answered", "Call answered", lifecycle, span=session)
    else:
        b.log(0, "call.answered", "Web session connected", {**lifecycle, "client": "web-sdk"}, span=session)
    session.start = t + ms(r.uniform(10, 60))
    b.started_at = session.start
    if r.random() < 0.85:
        b.recording_url = f"https://recordings.voice.example/{b.call_id}.mp3"
        b.log(session.start + ms(r.uniform(150, 450)), "call.recording_started", "Recording started",
              {"recording.url": b.recording_url, "recording.channels": 2}, span=session)
    cursor = session.start + ms(r.uniform(300, 900))
    total_turns = r.randint(2, 8)
    b.greeting = b.direction == "outbound" or r.random() < 0.5
    node = 0
    if agent.flow:
        b.log(cursor, "path.transition", f"Entered node {agent.flow[0]}",
              {"path.from_node": "start", "path.to_node": agent.flow[0]}, span=session,
              with_call_id=not b.sparse_ids)
    number = 0
    if b.greeting:
        number = 1
        cursor = _greeting_turn(b, session, cursor)
    user_turns = max(1, total_turns - number)
    scripted = r.sample(agent.exchanges, min(len(agent.exchanges), user_turns - 1))
    transfer = outcome == "completed" and agent.transfer_ask is not None and r.random() < 0.07
    last: tuple[str, str, str | None, str] = (*agent.closing, None, "closing")
    if transfer and agent.transfer_ask:
        last = (*agent.transfer_ask, None, "transfer")
    script = [*scripted, last][:user_turns]
    while len(script) < user_turns:
        script.insert(0, r.choice(agent.exchanges))
    interrupt_next_start: int | None = None
    last_audio_end = cursor
    for i, exchange in enumerate(script):
        number += 1
        final = i == len(script) - 1
        fail = None
        if final and outcome == "provider_error":
            fail = "llm"
        elif final and outcome == "crash":
            fail = "tts"
        if agent.flow and i % 2 == 1 and node < len(agent.flow) - 1:
            node += 1
        start = interrupt_next_start if interrupt_next_start is not None else cursor
        may_interrupt = not final and r.random() < 0.12
        cursor, interrupt_next_start, last_audio_end = _user_turn(b, 
            session, number, start, exchange, fail=fail, interrupt=may_interrupt,
            node=(agent.flow[node - 1] if node else agent.flow[0], agent.flow[node]) if agent.flow else None)
    end_t = max(s.end for s in b.spans) if b.spans else cursor
    end_reason = "user_hangup"
    if transfer:
        end_t = _transfer(b, session, last_audio_end + ms(r.uniform(150, 400)))
        end_reason = "transferred" if b.transfer and b.transfer["ok"] else "transfer_failed"
    elif outcome in ("completed", "active") and r.random() < 0.5:
        t_h = last_audio_end + ms(r.uniform(200, 500))
        b.log(t_h, "tool.hangup.invoked", "Agent requested hangup", {"tool.name": "end_call"},
              span=session)
        end_t = t_h + ms(r.uniform(150, 400))
        b.log(end_t, "tool.hangup.completed", "Call hung up by the agent", {"tool.name": "end_call"},
              span=session)
        end_reason = "agent_hangup"
    session.end = max(end_t, max(s.end for s in b.spans)) + ms(r.uniform(50, 300))
    session.attrs = {"voice.stage": "session", "call.id": b.call_id, **b.call_attrs(),
                     "call.recording.url": b.recording_url, "call.end_reason": end_reason}
    if phone and r.random() < 0.5:
        session.attrs["sip.response.code"] = 200
        b.sip_code = 200
    b.spans.append(session)
    if outcome == "active":
        b.status_source = "open"
        first_turn_end = min(t["_span"].end for t in b.turns)
        b.cut = r.randint(first_turn_end + ms(50), max(first_turn_end + ms(60), session.end - ms(100)))
        return
    if outcome == "completed":
        _post_call(b, session)
        if r.random() < 0.12:
            session.attrs["call.status"] = "completed"
            b.status_source = "call.status"
        elif r.random() < 0.7:
            b.status_source = "event"
        else:
            b.status_source = "session_span"
        if b.status_source != "session_span":
            b.log(session.end, "call.completed", "Call completed",
                  {"call.duration_s": round((session.end - session.start) / S, 3),
                   "call.end_reason": end_reason}, span=session)
    elif outcome == "provider_error":
        reason = f"LLM provider error: {b.llm[0]} returned 503 Service Unavailable"
        b.status_reason = reason
        session.attrs["call.status_reason"] = reason
        session.fail(reason, "llm_provider_error")
        b.log(session.end, "call.failed", "Call failed: LLM provider unavailable",
              {"call.status_reason": reason, "error.type": "llm_provider_error"}, span=session, severity=ERR)
        b.status_source = "event"
    else:   # crash
        message = f"pipeline error: {b.tts[0]} TTS websocket closed unexpectedly (code 1006)"
        session.fail(message, "websocket_closed")
        b.status_reason = message
        b.status_source = "session_span"
    b.ended_at = session.end
    b.webhooks(session.end)


def _post_call(b: CallBuilder, session: DraftSpan) -> None:
    r = b.r
    topics = list(dict.fromkeys(t["topic"] for t in b.turns if t.get("topic") not in (None, "closing", "greeting")))
    resolved = r.random() < 0.8
    b.summary = (f"{b.agent.role} with {b.from_number if b.direction == 'inbound' else b.to_number or 'web visitor'}: "
                 f"discussed {', '.join(topics) or 'general questions'}; {'resolved' if resolved else 'follow-up needed'}.")
    b.tags = [*topics[:3], "resolved" if resolved else "follow-up"]
    b.extracted = {"intent": topics[0] if topics else "other", "resolved": resolved,
                   "sentiment": r.choice(["positive", "neutral", "neutral", "negative"]),
                   "callback_requested": not resolved}
    session.attrs.update({"call.summary": b.summary, "call.tags": b.tags,
                          "call.extracted": json.dumps(b.extracted)})
    if r.random() < 0.45:
        minutes = (session.end - session.start) / S / 60
        b.currency = "EUR" if r.random() < 0.1 else "USD"
        b.cost = round(minutes * r.uniform(0.07, 0.14), 4)
        session.attrs["call.cost"] = b.cost
        session.attrs["call.cost.currency"] = b.currency


def _stage_ids(b: CallBuilder, number: int) -> dict[str, Any]:
    return {} if b.sparse_ids else {"call.id": b.call_id, "turn.number": number}


def _speak(b: CallBuilder, turn: DraftSpan, audio_start: int, audio_end: int, text: str) -> None:
    cid = not b.sparse_ids
    b.log(audio_start, "agent.started_speaking", "Agent started speaking", {"turn.number": turn.attrs["turn.number"]},
          span=turn, with_call_id=cid)
    b.log(audio_end, "agent.ended_speaking", "Agent ended speaking",
          {"turn.number": turn.attrs["turn.number"], "text.characters": len(text)}, span=turn, with_call_id=cid)


def _tts_span(b: CallBuilder, turn: DraftSpan, number: int, start: int, text: str) -> tuple[DraftSpan, int, int]:
    r = b.r
    provider, model, voice, median = b.tts
    ttfb = ms(lognormal(r, median, 0.3, 60, 1500))
    chars = len(text)
    synth_end = start + ttfb + ms(chars * r.uniform(1.5, 4.0))
    s = b.span("tts", turn, start, synth_end, {
        "voice.stage": "tts", **_stage_ids(b, number), "tts.provider": provider, "tts.model": model,
        "tts.voice": voice, "tts.text": text, "tts.characters": chars, "tts.ttfb_ms": round(ttfb / MS, 3),
    }, kind=CLIENT)
    audio_start = start + ttfb
    return s, audio_start, audio_start + ms(chars * r.uniform(55, 70))


def _greeting_turn(b: CallBuilder, session: DraftSpan, cursor: int) -> int:
    text = b.agent.greeting
    turn = b.span("turn", session, cursor, 0, {"voice.stage": "turn", "call.id": b.call_id,
                                               "turn.number": 1, "turn.agent_text": text})
    tts, audio_start, audio_end = _tts_span(b, turn, 1, cursor + ms(b.r.uniform(2, 8)), text)
    turn.end = max(audio_end, tts.end)
    _speak(b, turn, audio_start, audio_end, text)
    b.turns.append({"_span": turn, "number": 1, "user_text": None, "agent_text": text, "interrupted": False,
                    "stt_ms": None, "llm_ttft_ms": None, "tts_ttfb_ms": tts.attrs["tts.ttfb_ms"],
                    "voice_to_voice_ms": None, "reported_v2v_ms": None, "eou_ms": None,
                    "llm_provider": None, "llm_model": None, "stt_provider": None,
                    "tts_provider": b.tts[0], "input_tokens": None, "output_tokens": None,
                    "topic": "greeting", "_stage_spans": [tts]})
    return audio_end + ms(lognormal(b.r, 700, 0.5, 250, 4000))


def _llm_span(b: CallBuilder, turn: DraftSpan, number: int, start: int, *, history_tokens: int, output_text: str | None,
              output_tokens: int, finish: str) -> tuple[DraftSpan, int]:
    r = b.r
    provider, model, response_model, ttft_median, tps, _w = b.llm
    ttft = ms(lognormal(r, ttft_median, 0.45, 90, 6000))
    end = start + ttft + ms(output_tokens / tps * 1000)
    attrs: dict[str, Any] = {
        "voice.stage": "llm", **_stage_ids(b, number), "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider, "gen_ai.request.model": model, "gen_ai.response.model": response_model,
        "gen_ai.request.temperature": 0.4, "gen_ai.usage.input_tokens": history_tokens,
        "gen_ai.usage.output_tokens": output_tokens, "llm.ttft_ms": round(ttft / MS, 3),
        "gen_ai.response.finish_reasons": [finish],
    }
    if output_text:
        attrs["llm.output"] = output_text
    s = b.span("llm", turn, start, end, attrs, kind=CLIENT)
    return s, start + ttft


def _user_turn(b: CallBuilder, session: DraftSpan, number: int, start: int, exchange: tuple[str, str, str | None, str], *,
               fail: str | None, interrupt: bool, node: tuple[str, str] | None) -> tuple[int, int | None, int]:
    """One user turn; returns (next cursor, next user start if interrupted, agent audio end)."""
    r = b.r
    agent = b.agent
    user_text, agent_text, tool_name, topic = exchange
    cid = not b.sparse_ids
    turn = b.span("turn", session, start, 0, {"voice.stage": "turn", "call.id": b.call_id,
                                              "turn.number": number, "turn.user_text": user_text})
    truth: dict[str, Any] = {"_span": turn, "number": number, "user_text": user_text, "interrupted": False,
                             "topic": topic, "reported_v2v_ms": None, "eou_ms": None, "tts_ttfb_ms": None,
                             "voice_to_voice_ms": None, "tts_provider": None, "_stage_spans": []}
    b.turns.append(truth)
    words = len(user_text.split())
    user_stop = start + ms(words * r.uniform(260, 360) + 250)
    b.log(start, "user.started_speaking", "User started speaking", {"turn.number": number}, span=turn,
          with_call_id=cid)
    b.log(user_stop, "user.stopped_speaking", "User stopped speaking",
          {"turn.number": number, "speech.duration_ms": round((user_stop - start) / MS, 1)},
          span=turn, with_call_id=cid)
    stt_provider, stt_model, stt_median = b.stt
    stt_end = user_stop + ms(lognormal(r, stt_median, 0.35, 80, 2500))
    stt = b.span("stt", turn, user_stop, stt_end, {
        "voice.stage": "stt", **_stage_ids(b, number), "stt.provider": stt_provider, "stt.model": stt_model,
        "stt.transcript": user_text, "stt.is_final": True,
        "stt.audio_seconds": round((user_stop - start) / S, 3), "stt.language": "en",
    }, kind=CLIENT)
    llm_start = stt_end + ms(r.uniform(5, 30))
    eou_ms = round((llm_start - user_stop) / MS - r.uniform(1, 4), 3)
    where = r.random()
    if where < 0.3:
        stt.attrs["stt.eou_ms"] = eou_ms
        truth["eou_ms"] = eou_ms
    elif where < 0.55:
        turn.attrs["turn.eou_ms"] = eou_ms
        truth["eou_ms"] = eou_ms
    if node and node[0] != node[1]:
        b.log(stt_end + ms(1), "path.transition", f"{node[0]} → {node[1]}",
              {"path.from_node": node[0], "path.to_node": node[1], "path.condition": topic}, span=turn,
              with_call_id=cid)
    if node:
        b.log(llm_start, "path.node_generation_started", f"Generating at node {node[1]}",
              {"path.node": node[1]}, span=turn, with_call_id=cid)
        # A few flow turns hit a path error (decided without the RNG, so other draws stay put).
        if (number * 7 + int(b.call_id.encode().hex()[-4:], 16)) % 23 == 0:
            b.log(llm_start + ms(2), "path.error", f"No edge matched at node {node[1]}; staying",
                  {"path.node": node[1], "error.type": "NoMatchingEdge"}, span=turn,
                  severity=ERR, with_call_id=cid)
    history = 850 + 70 * number + r.randint(0, 40)
    stage_spans: list[DraftSpan] = [stt]
    truth.update({"stt_ms": round((stt_end - user_stop) / MS, 3), "stt_provider": stt_provider,
                  "llm_provider": b.llm[0], "llm_model": b.llm[2]})
    if fail == "llm":
        llm_end = llm_start + ms(r.uniform(1500, 10000))
        llm = b.span("llm", turn, llm_start, llm_end, {
            "voice.stage": "llm", **_stage_ids(b, number), "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": b.llm[0], "gen_ai.request.model": b.llm[1],
            "gen_ai.usage.input_tokens": history,
        }, kind=CLIENT)
        llm.fail("Error code: 503 - upstream connect error or disconnect/reset before headers", "503")
        llm.events.append((llm_end, "exception", {"exception.type": "openai.InternalServerError",
                                                  "exception.message": "Error code: 503"}))
        stage_spans.append(llm)
        turn.end = llm_end + ms(r.uniform(2, 10))
        turn.fail("LLM request failed", "503")
        truth.update({"agent_text": None, "llm_ttft_ms": None, "input_tokens": history, "output_tokens": None,
                      "_stage_spans": stage_spans})
        return turn.end, None, turn.end
    out_tokens = math.ceil(len(agent_text.split()) * 1.35) + 1
    llm_cursor = llm_start
    input_total, output_total = 0, 0
    first_ttft: float | None = None
    spoken = agent_text
    if tool_name:
        tool = TOOLS[tool_name]
        call_tokens = r.randint(18, 42)
        llm1, _ft = _llm_span(b, turn, number, llm_cursor, history_tokens=history, output_text=None,
                              output_tokens=call_tokens, finish="tool_calls")
        first_ttft = llm1.attrs["llm.ttft_ms"]
        stage_spans.append(llm1)
        input_total += history
        output_total += call_tokens
        tool_call_id = "call_" + "".join(r.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", k=24))
        args = tool.args(r)
        t = llm1.end + ms(r.uniform(2, 10))
        granted = True
        if tool.needs_approval:
            granted = r.random() < 0.8
            b.log(t, "integration.approval_requested", f"Asked the contact to confirm {tool.name}",
                  {"tool.name": tool.name, "gen_ai.tool.call.id": tool_call_id,
                   "gen_ai.tool.call.arguments": json.dumps(args)}, span=turn, with_call_id=cid)
            t += ms(r.uniform(1200, 4500))
            b.log(t, "integration.approval_granted" if granted else "integration.approval_denied",
                  f"Contact {'confirmed' if granted else 'declined'} {tool.name}",
                  {"tool.name": tool.name, "gen_ai.tool.call.id": tool_call_id}, span=turn, with_call_id=cid)
            b.approvals.append({"tool_name": tool.name, "tool_call_id": tool_call_id, "granted": granted})
        if granted:
            tool_end = t + ms(lognormal(r, tool.median_ms, 0.5, 30, 8000))
            failed = r.random() < 0.12
            attrs: dict[str, Any] = {
                "voice.stage": "tool", **_stage_ids(b, number), "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool.name, "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": tool_call_id, "gen_ai.tool.call.arguments": json.dumps(args),
            }
            span = b.span(f"execute_tool {tool.name}", turn, t, tool_end, attrs)
            error = None
            if failed:
                error_type, message = r.choice(TOOL_ERRORS)
                attrs["gen_ai.tool.call.result"] = json.dumps({"error": message})
                span.fail(message, error_type)
                error = error_type
                spoken = agent.tool_failed_text
            else:
                attrs["gen_ai.tool.call.result"] = json.dumps(tool.result(r, args))
            stage_spans.append(span)
            b.tool_calls.append({"tool_call_id": tool_call_id, "tool_name": tool.name, "turn_number": number,
                                 "is_error": failed, "error": error, "span_id": span.span_id.hex()})
            t = tool_end
        else:
            spoken = agent.denied_text
        llm_cursor = t + ms(r.uniform(5, 20))
        history += call_tokens + 60
        out_tokens = math.ceil(len(spoken.split()) * 1.35) + 1
    llm, first_token = _llm_span(b, turn, number, llm_cursor, history_tokens=history, output_text=spoken,
                                 output_tokens=out_tokens, finish="stop")
    stage_spans.append(llm)
    input_total += history
    output_total += out_tokens
    if first_ttft is None:
        first_ttft = llm.attrs["llm.ttft_ms"]
    turn.attrs["turn.agent_text"] = spoken
    tts_start = first_token + ms(r.uniform(15, 120))
    tts, audio_start, audio_end = _tts_span(b, turn, number, tts_start, spoken)
    stage_spans.append(tts)
    truth.update({"agent_text": spoken, "llm_ttft_ms": first_ttft, "input_tokens": input_total,
                  "output_tokens": output_total, "tts_provider": b.tts[0], "_stage_spans": stage_spans})
    if fail == "tts":
        tts.end = tts_start + ms(r.uniform(2000, 5000))
        del tts.attrs["tts.ttfb_ms"]
        tts.fail("websocket closed unexpectedly (code 1006)", "websocket_closed")
        turn.end = max(tts.end, llm.end) + ms(r.uniform(2, 10))
        turn.fail("TTS failed", "websocket_closed")
        return turn.end, None, turn.end
    truth["tts_ttfb_ms"] = tts.attrs["tts.ttfb_ms"]
    v2v = round((audio_start - user_stop) / MS, 3)
    truth["voice_to_voice_ms"] = v2v
    if r.random() < 0.5:
        reported = round(v2v + r.uniform(-15, 40), 1)
        turn.attrs["turn.v2v_ms"] = reported
        truth["reported_v2v_ms"] = reported
    next_start: int | None = None
    if interrupt:
        fraction = r.uniform(0.2, 0.7)
        cut = audio_start + int((audio_end - audio_start) * fraction)
        audio_end = cut
        tts.end = min(tts.end, cut)
        tts.attrs["tts.interrupted"] = True
        turn.attrs["turn.interrupted"] = True
        truth["interrupted"] = True
        next_start = cut - ms(r.uniform(150, 400))
        b.log(cut, "agent.interrupted", "The contact interrupted the agent",
              {"turn.number": number, "spoken.characters": int(len(spoken) * fraction)},
              span=turn, with_call_id=cid)
    elif r.random() < 0.5:
        turn.attrs["turn.interrupted"] = False
    _speak(b, turn, audio_start, audio_end, spoken)
    turn.end = max(audio_end, tts.end, llm.end)
    return audio_end + ms(lognormal(r, 700, 0.5, 250, 4000)), next_start, audio_end


def _transfer(b: CallBuilder, session: DraftSpan, start: int) -> int:
    r = b.r
    target = "+18005550150"
    ok = r.random() < 0.75
    end = start + ms(r.uniform(6000, 20000) if ok else r.uniform(20000, 30000))
    s = b.span("transfer", session, start, end, {
        "voice.stage": "transfer", **({} if b.sparse_ids else {"call.id": b.call_id}),
        "transfer.target": target, "transfer.type": r.choice(["cold", "warm"]),
    })
    data = {"transfer.target": target}
    b.log(start, "tool.transfer.invoked", f"Transferring to {target}", data, span=s)
    b.log(start + ms(r.uniform(200, 500)), "transfer.human_dialing", f"Dialing {target}", data, span=s)
    if ok:
        b.log(end - ms(r.uniform(100, 300)), "transfer.human_answered", "Human agent answered", data, span=s)
        b.log(end, "tool.transfer.completed", "Transfer completed", data, span=s)
        b.log(end + ms(5), "transfer.completed", "Caller bridged to a human agent", data, span=s)
    else:
        s.fail("no answer from transfer target", "no_answer")
        b.log(end, "tool.transfer.failed", f"Transfer to {target} failed: no answer",
              {**data, "error.type": "no_answer"}, span=s, severity=ERR)
    b.transfer = {"target": target, "ok": ok, "span_id": s.span_id.hex()}
    return end
