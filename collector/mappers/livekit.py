"""Map stage: LiveKit Agents tracing (tracer ``livekit-agents``; livekit-agents 1.2 → 1.8).

``agent_session`` (+ ``job_entrypoint``) → session; ``user_turn`` and ``agent_turn`` (≤ 1.2:
``assistant_turn``) → turn spans with no index: they are siblings, so storage/derive/turns.sql pairs them into one
turn (``turn_role`` / ``turn_pair_key`` facts: the user's transcript, which the agent turn repeats as its
user input). ``llm_node`` / ``llm_request`` → llm, ``tts_node`` / ``tts_request`` → tts, ``function_tool`` →
tool; ``user_speaking`` / ``agent_speaking`` give when each side really spoke. Content keys moved to
``lk.pii.*`` in 1.7 and GenAI keys arrived in 1.8: both spellings are read. Latencies arrive in seconds
(``lk.end_of_turn_delay``, ``lk.transcription_delay``, ``gen_ai.response.time_to_first_chunk``, the JSON
blobs ``lk.llm_metrics`` / ``lk.tts_metrics`` / ``lk.stt.events``); absolute times are span start + delay.
"""

from __future__ import annotations

import ast
import json
from datetime import datetime
from typing import Any, ClassVar

from collector.mappers.base import (
    DerivedEvent, SpanMapping, as_bool, as_float, as_int, as_text, explicit_call_id, parse_json, seconds_to_us, us,
)
from collector.mappers.genai import llm_mapping, model_of, provider_of, session_mapping, tool_mapping, tts_mapping
from collector.mappers.messages import last_user_text
from collector.items import SpanIn
from storage import facts as F

__all__ = ["LiveKitMapper"]

SCOPE = "livekit-agents"
# LiveKit's own example stamps session.id through set_tracer_provider(metadata=…); inside a job every span
# carries gen_ai.conversation.id (the room SID).
CALL_ID_KEYS = ("call.id", "session.id", "langfuse.session.id", "gen_ai.conversation.id", "lk.room_sid", "room_id")
_AGENT_TURNS = frozenset({"agent_turn", "assistant_turn", "realtime_assistant_turn"})
_LLM_REQUESTS = frozenset({"llm_request", "realtime_inference"})
_DIRECTIONS = {"inbound": "inbound", "outbound": "outbound", "incoming": "inbound", "outgoing": "outbound"}


def _blob(span: SpanIn, key: str) -> dict[str, Any]:
    value = parse_json(span.attributes.get(key))
    return value if isinstance(value, dict) else {}


def _pii(span: SpanIn, name: str) -> Any:
    """``lk.pii.<name>`` (≥ 1.7) or ``lk.<name>`` (older)."""
    return span.attr(f"lk.pii.{name}", f"lk.{name}")


def _python_literal_to_json(value: Any) -> Any:
    """Tool outputs are ``str(result)``, often a Python repr like ``{'a': 1}`` (and ``gen_ai.tool.call.result``
    JSON-quotes that string again): return JSON text when the value is such a literal, else the value."""
    text = value
    if isinstance(text, str) and text.startswith('"'):
        try:
            unquoted = json.loads(text)
        except ValueError:
            unquoted = None
        if isinstance(unquoted, str):
            text = unquoted
    if isinstance(text, str) and text[:1] in ("{", "[") and len(text) < 100_000 and parse_json(text) is None:
        try:
            return json.dumps(ast.literal_eval(text), separators=(",", ":"), default=str)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text
    return text


def _iso_offset_s(value: Any, start_ns: int) -> float | None:
    """Seconds from span start to an ISO timestamp (Langfuse's ``completion_start_time``, JSON-quoted)."""
    text = as_text(value)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip().strip('"')).timestamp() - start_ns / 1e9
    except ValueError:
        return None


class LiveKitMapper:
    name: ClassVar[str] = "livekit"

    def claims(self, span: SpanIn) -> bool:
        return span.scope_name == SCOPE or span.scope_name.startswith("livekit.agents")

    def map_span(self, span: SpanIn) -> SpanMapping:
        call_id = explicit_call_id(span, CALL_ID_KEYS)
        name = span.name
        if name == "agent_session":
            return self._session(span, call_id)
        if name == "job_entrypoint":
            return SpanMapping(stage="session", call_id=call_id,
                               facts={F.SESSION_END_US: us(span.end_ns)})
        if name == "user_turn":
            return self._user_turn(span, call_id)
        if name in _AGENT_TURNS:
            return self._agent_turn(span, call_id)
        if name == "user_speaking":
            return SpanMapping(stage="other", call_id=call_id,
                               facts={F.USER_STOPPED_US: us(span.end_ns), F.SPEECH_SIDE: "user",
                                      F.SPEECH_START_US: us(span.start_ns), F.SPEECH_END_US: us(span.end_ns)},
                               events=(DerivedEvent(span.start_ns, "user.started_speaking"),
                                       DerivedEvent(span.end_ns, "user.stopped_speaking")))
        if name == "agent_speaking":
            return SpanMapping(stage="other", call_id=call_id,
                               facts={F.AGENT_STARTED_US: us(span.start_ns), F.SPEECH_SIDE: "agent",
                                      F.SPEECH_START_US: us(span.start_ns), F.SPEECH_END_US: us(span.end_ns)},
                               events=(DerivedEvent(span.start_ns, "agent.started_speaking"),
                                       DerivedEvent(span.end_ns, "agent.ended_speaking")))
        if name in _LLM_REQUESTS:
            return self._llm_request(span, call_id)
        if name == "llm_node":
            facts: dict[str, Any] = {F.LLM_REQUEST_US: us(span.start_ns)}
            ttft = seconds_to_us(span.attributes.get("lk.response.ttft"))
            if ttft is not None:
                facts[F.LLM_FIRST_TOKEN_US] = us(span.start_ns) + ttft
            return SpanMapping(stage="llm", call_id=call_id, provider=provider_of(span), model=model_of(span),
                               facts=facts)
        if name == "tts_request":
            return self._tts_request(span, call_id)
        if name in ("tts_node", "tts_stream_adapter", "tts_fallback_adapter"):
            provider = provider_of(span)
            return SpanMapping(stage="tts", call_id=call_id, provider=provider, model=model_of(span),
                               facts={F.TTS_PROVIDER: provider} if provider else {})
        if name == "function_tool":
            return self._tool(span, call_id)
        if name == "session_close":
            reason = as_text(span.attributes.get("lk.close_reason"))
            facts = {F.SESSION_ERROR: f"session closed: {reason}"} if reason and reason.lower() == "error" else {}
            return SpanMapping(stage="other", call_id=call_id, facts=facts)
        return SpanMapping(stage="other", call_id=call_id, provider=provider_of(span), model=model_of(span))

    # --- session ----------------------------------------------------------------------------------------

    @staticmethod
    def _session(span: SpanIn, call_id: str | None) -> SpanMapping:
        base = session_mapping(span, call_id=call_id)
        facts = dict(base.facts)
        attributes = span.attributes
        agent = as_text(attributes.get("lk.agent_label")) or as_text(attributes.get("lk.agent_name"))
        if agent:
            facts[F.AGENT] = agent
        direction = None
        raw = as_text(span.attr("lk.sip.callDirection", "lk.sip.direction", "lk.sip.call_direction"))
        if raw:
            direction = _DIRECTIONS.get(raw.strip().lower())
        if direction is None and attributes.get("lk.sip.ruleID"):
            direction = "inbound"   # SIP dispatch rules route inbound calls only
        kind = None
        for event in span.events:
            if event["name"] == "participant_linked":
                kind = as_text(event["attributes"].get("lk.participant_kind")) or kind
        if direction is None and kind and "SIP" not in kind.upper() and "STANDARD" in kind.upper():
            direction = "web"
        if direction:
            facts[F.DIRECTION] = direction
        caller = as_text(span.attr("lk.pii.sip.phoneNumber", "lk.sip.phoneNumber"))
        trunk = as_text(attributes.get("lk.sip.trunkPhoneNumber"))
        if direction in ("inbound", "outbound"):
            remote_key, local_key = ((F.FROM_NUMBER, F.TO_NUMBER) if direction == "inbound"
                                     else (F.TO_NUMBER, F.FROM_NUMBER))
            if caller:
                facts[remote_key] = caller
            if trunk:
                facts[local_key] = trunk
        return SpanMapping(stage="session", call_id=call_id, facts=facts, events=base.events)

    # --- turns --------------------------------------------------------------------------------------------

    @staticmethod
    def _user_turn(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        transcript = as_text(_pii(span, "user_transcript"))
        facts: dict[str, Any] = {F.TURN_ROLE: "user", F.TURN_START_US: us(span.start_ns),
                                 F.TURN_END_US: us(span.end_ns)}
        if transcript:
            facts[F.USER_TEXT] = transcript
            facts[F.TURN_PAIR_KEY] = transcript.strip()
        end_of_turn = as_float(span.attr("lk.end_of_turn_delay", "lk.end_of_utterance_delay"))
        stopped_us = None
        if end_of_turn is not None and end_of_turn >= 0:
            facts[F.EOU_MS] = end_of_turn * 1000.0
            stopped_us = us(span.end_ns) - int(end_of_turn * 1_000_000)
            facts[F.USER_STOPPED_US] = stopped_us
            facts[F.STT_AUDIO_SECONDS] = max(0.0, (stopped_us - us(span.start_ns)) / 1e6)
        final_us = None
        events = parse_json(attributes.get("lk.stt.events"))
        if isinstance(events, list):
            finals = [as_float(e.get("received_at")) for e in events
                      if isinstance(e, dict) and e.get("type") == "final_transcript"]
            finals = [f for f in finals if f is not None and f > 0]
            if finals:
                final_us = int(max(finals) * 1_000_000)
        if final_us is None and stopped_us is not None:
            delay = seconds_to_us(attributes.get("lk.transcription_delay"))
            if delay is not None:
                final_us = stopped_us + delay
        if final_us is not None:
            facts[F.STT_FINAL_US] = final_us
        provider = provider_of(span)
        if provider:
            facts[F.STT_PROVIDER] = provider
        derived = ()
        if transcript:
            derived = (DerivedEvent((final_us or us(span.end_ns)) * 1000, "user.message_received", transcript[:500],
                                    {"text": transcript,
                                     "confidence": as_float(attributes.get("lk.transcript_confidence"))}),)
        return SpanMapping(stage="turn", call_id=call_id, provider=provider, model=model_of(span), facts=facts,
                           events=derived)

    @staticmethod
    def _agent_turn(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        facts: dict[str, Any] = {F.TURN_ROLE: "agent", F.TURN_START_US: us(span.start_ns),
                                 F.TURN_END_US: us(span.end_ns)}
        user_input = as_text(_pii(span, "user_input"))
        if user_input:
            facts[F.TURN_PAIR_KEY] = user_input.strip()
        text = as_text(_pii(span, "response.text"))
        if text:
            facts[F.AGENT_TEXT] = text
        v2v = as_float(attributes.get("lk.e2e_latency"))
        if v2v is not None and v2v >= 0:
            facts[F.REPORTED_V2V_MS] = v2v * 1000.0
        interrupted = bool(as_bool(attributes.get("lk.interrupted")))
        events = []
        if interrupted:
            facts[F.INTERRUPTED] = True
            events.append(DerivedEvent(span.end_ns, "agent.interrupted", "the user interrupted the agent", {
                "source": as_text(attributes.get("lk.interruption.source")),
                "played_seconds": as_float(attributes.get("lk.playout.position")),
                "speech_id": as_text(attributes.get("lk.speech_id"))}))
        return SpanMapping(stage="turn", call_id=call_id, facts=facts, events=tuple(events))

    # --- stages -------------------------------------------------------------------------------------------

    @staticmethod
    def _llm_request(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        metrics = _blob(span, "lk.llm_metrics") or _blob(span, "lk.realtime_model_metrics")
        ttfb = attributes.get("gen_ai.response.time_to_first_chunk")
        if ttfb is None:
            ttfb = metrics.get("ttft")
        if ttfb is None:
            ttfb = _iso_offset_s(attributes.get("langfuse.observation.completion_start_time"), span.start_ns)
        output = attributes.get("gen_ai.output.messages") or _pii(span, "response.text")
        if output is None:   # ≤ 1.7: prompts and completions as span events
            for event in span.events:
                if event["name"] == "gen_ai.choice":
                    output = event["attributes"].get("content") or output
        extra: dict[str, Any] = {}
        prompt = last_user_text(attributes.get("gen_ai.input.messages"))
        if prompt is None:
            users = [e["attributes"].get("content") for e in span.events if e["name"] == "gen_ai.user.message"]
            prompt = as_text(users[-1]) if users else None
        if prompt:
            extra[F.PROMPT_TEXT] = prompt
        cached = as_int(span.attr("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.input_cached_tokens"))
        if cached is None:
            cached = as_int(metrics.get("prompt_cached_tokens"))
        if cached:
            extra[F.LLM_CACHED_TOKENS] = cached
        mapping = llm_mapping(span, call_id=call_id, ttfb_s=ttfb, output=output, extra_facts=extra)
        if mapping.input_tokens is None and mapping.output_tokens is None and metrics:
            model = mapping.model or as_text((metrics.get("metadata") or {}).get("model_name"))
            return SpanMapping(
                stage=mapping.stage, call_id=call_id, provider=mapping.provider, model=model,
                ttfb_ms=mapping.ttfb_ms, input_tokens=as_int(metrics.get("prompt_tokens")),
                output_tokens=as_int(metrics.get("completion_tokens")), facts=mapping.facts, events=mapping.events)
        return mapping

    @staticmethod
    def _tts_request(span: SpanIn, call_id: str | None) -> SpanMapping:
        metrics = _blob(span, "lk.tts_metrics")
        # a request cancelled before any audio reports ttfb = -1 (seconds_to_us gives None)
        return tts_mapping(span, call_id=call_id, provider=provider_of(span),
                           text=as_text(_pii(span, "input_text")), ttfb_us=seconds_to_us(metrics.get("ttfb")),
                           characters=as_int(metrics.get("characters_count")))

    @staticmethod
    def _tool(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        output = span.attr("lk.pii.function_tool.output", "lk.function_tool.output", "gen_ai.tool.call.result")
        failed = bool(as_bool(attributes.get("lk.function_tool.is_error"))) or span.status_code == 2
        error = None
        if failed:
            error = as_text(output) or as_text(attributes.get("error.type")) or span.status_message or "tool failed"
        return tool_mapping(
            span, call_id=call_id,
            name=span.attr("gen_ai.tool.name", "lk.function_tool.name"),
            call_key=span.attr("gen_ai.tool.call.id", "lk.function_tool.id"),
            arguments=span.attr("gen_ai.tool.call.arguments", "lk.pii.function_tool.arguments",
                                "lk.function_tool.arguments"),
            result=None if failed or output is None else _python_literal_to_json(output),
            is_error=failed, error=error)

