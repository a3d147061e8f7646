"""Map stage: Callscope's native convention (design.md §8, docs/conventions.md) for platforms with no framework.

``call_facts`` reads the call-level ``call.*`` attributes; the pipeline applies it to every span whatever
mapper claimed it, so users can add call metadata to any framework's spans.
"""

from __future__ import annotations

from typing import Any, ClassVar

from collector.mappers.base import (
    DerivedEvent, SpanMapping, as_bool, as_float, as_int, as_text, explicit_call_id, ms_to_us, parse_json, us,
)
from collector.mappers.genai import (
    llm_mapping, model_of, provider_of, session_mapping, tool_mapping, tts_mapping,
)
from collector.items import SpanIn
from storage import facts as F

__all__ = ["NativeMapper", "call_facts", "STATUSES", "DIRECTIONS"]

STATUSES = frozenset({"queued", "ringing", "active", "completed", "failed", "declined", "missed"})
DIRECTIONS = frozenset({"inbound", "outbound", "web"})
_STAGES = frozenset({"session", "turn", "stt", "llm", "tts", "tool", "transfer", "webhook"})
_NAME_STAGES = {"call": "session", "session": "session", "conversation": "session", "turn": "turn",
                "stt": "stt", "llm": "llm", "tts": "tts", "tool": "tool", "transfer": "transfer",
                "webhook": "webhook"}
_TEXT_FACTS = (
    ("call.campaign", F.CAMPAIGN), ("call.agent", F.AGENT), ("call.status_reason", F.STATUS_REASON),
    ("call.from", F.FROM_NUMBER), ("call.to", F.TO_NUMBER), ("call.summary", F.SUMMARY),
    ("call.recording.url", F.RECORDING_URL), ("call.cost.currency", F.CURRENCY),
)


_CALL_FACT_KEYS = frozenset({key for key, _ in _TEXT_FACTS} | {
    "gen_ai.agent.name", "call.direction", "call.status", "sip.response.code", "sip.response.status_code",
    "call.cost", "call.tags", "call.extracted"})


def _call_keys(span: SpanIn) -> dict[str, Any]:
    """Only the call-level keys, resource first so span attributes override it (set intersection in C)."""
    found: dict[str, Any] = {}
    for source in (span.resource, span.attributes):
        for key in source.keys() & _CALL_FACT_KEYS:
            value = source[key]
            if value is not None and value != "":
                found[key] = value
    return found


def call_facts(span: SpanIn) -> dict[str, Any]:
    """Call-level facts of the native convention found on a span or its resource."""
    facts: dict[str, Any] = {}
    keys = _call_keys(span)
    if not keys:
        return facts  # most spans carry no call metadata (hot path)
    for key, fact in _TEXT_FACTS:
        value = as_text(keys.get(key))
        if value is not None:
            facts[fact] = value
    if F.AGENT not in facts:
        agent = as_text(keys.get("gen_ai.agent.name"))
        if agent is not None:
            facts[F.AGENT] = agent
    direction = as_text(keys.get("call.direction"))
    if direction and direction.lower() in DIRECTIONS:
        facts[F.DIRECTION] = direction.lower()
    status = as_text(keys.get("call.status"))
    if status and status.lower() in STATUSES:
        facts[F.STATUS] = status.lower()
    sip_code = as_int(keys.get("sip.response.code", keys.get("sip.response.status_code")))
    if sip_code:
        facts[F.SIP_CODE] = sip_code
    cost = as_float(keys.get("call.cost"))
    if cost is not None:
        facts[F.COST_TOTAL] = cost
    tags = keys.get("call.tags")
    if isinstance(tags, str):
        tags = parse_json(tags) if tags.startswith("[") else [t.strip() for t in tags.split(",") if t.strip()]
    if isinstance(tags, list) and tags:
        facts[F.TAGS] = [str(tag) for tag in tags]
    extracted = keys.get("call.extracted")
    extracted = parse_json(extracted) if not isinstance(extracted, dict) else extracted
    if isinstance(extracted, dict):
        facts[F.EXTRACTED] = extracted
    return facts


def _stage_of(span: SpanIn) -> str:
    stage = as_text(span.attributes.get("voice.stage"))
    if stage and stage.lower() in _STAGES:
        return stage.lower()
    name = span.name.strip().lower()
    if name.startswith("execute_tool"):
        return "tool"
    return _NAME_STAGES.get(name, "other")


class NativeMapper:
    name: ClassVar[str] = "native"

    def claims(self, span: SpanIn) -> bool:
        return "voice.stage" in span.attributes or span.name.strip().lower() in _NAME_STAGES

    @staticmethod
    def names_a_call(span: SpanIn) -> bool:
        """The span carries native call attributes (``call.id``, ``call.status``, …) on itself or its resource."""
        return (("call.id" in span.attributes or "call.id" in span.resource)
                or bool(span.attributes.keys() & _CALL_FACT_KEYS) or bool(span.resource.keys() & _CALL_FACT_KEYS))

    def map_span(self, span: SpanIn) -> SpanMapping:
        stage = _stage_of(span)
        call_id = explicit_call_id(span)
        turn_number = as_int(span.attr("turn.number"))
        if stage == "llm":
            ttft_us = ms_to_us(span.attr("llm.ttft_ms"))
            return llm_mapping(
                span, call_id=call_id, turn_number=turn_number,
                ttfb_s=None if ttft_us is None else ttft_us / 1e6,
                output=span.attr("llm.output", "gen_ai.output.messages"),
            )
        if stage == "tool":
            return tool_mapping(span, call_id=call_id, turn_number=turn_number)
        if stage == "transfer":
            # A transfer is the agent's native call tool (seed 002 "call tools"): one tool call named transfer.
            target = as_text(span.attr("transfer.target"))
            return tool_mapping(span, call_id=call_id, turn_number=turn_number, stage=stage,
                                name=span.attr("gen_ai.tool.name") or "transfer",
                                arguments=span.attr("gen_ai.tool.call.arguments")
                                or ({"target": target} if target else None))
        if stage == "stt":
            return self._stt(span, call_id, turn_number)
        if stage == "tts":
            return self._tts(span, call_id, turn_number)
        if stage == "turn":
            return self._turn(span, call_id, turn_number)
        if stage == "session":
            return session_mapping(span, call_id=call_id)
        return SpanMapping(stage=stage, call_id=call_id, turn_number=turn_number)

    @staticmethod
    def _stt(span: SpanIn, call_id: str | None, turn_number: int | None) -> SpanMapping:
        transcript = as_text(span.attr("stt.transcript", "transcript"))
        is_final = as_bool(span.attr("stt.is_final", "is_final"))
        provider = provider_of(span, "stt.provider")
        facts: dict[str, Any] = {F.USER_STOPPED_US: us(span.start_ns)}
        if is_final is not False:
            facts[F.STT_FINAL_US] = us(span.end_ns)
        eou_us = ms_to_us(span.attr("stt.eou_ms"))
        if eou_us is not None:
            facts[F.EOU_US] = us(span.start_ns) + eou_us
        if transcript:
            facts[F.USER_TEXT] = transcript
        if provider:
            facts[F.STT_PROVIDER] = provider
        audio_seconds = as_float(span.attr("stt.audio_seconds", "metrics.audio_seconds"))
        if audio_seconds is not None:
            facts[F.STT_AUDIO_SECONDS] = audio_seconds
        events = ()
        if transcript and is_final is not False:
            events = (DerivedEvent(span.end_ns, "user.message_received", transcript[:500], {"text": transcript}),)
        return SpanMapping(stage="stt", call_id=call_id, turn_number=turn_number, provider=provider,
                           model=model_of(span, "stt.model"),
                           ttfb_ms=(span.end_ns - span.start_ns) / 1e6, facts=facts, events=events)

    @staticmethod
    def _tts(span: SpanIn, call_id: str | None, turn_number: int | None) -> SpanMapping:
        return tts_mapping(span, call_id=call_id, turn_number=turn_number,
                           provider=provider_of(span, "tts.provider"), model=model_of(span, "tts.model"),
                           text=as_text(span.attr("tts.text", "text")),
                           ttfb_us=ms_to_us(span.attr("tts.ttfb_ms")),
                           characters=as_int(span.attr("tts.characters", "metrics.character_count")),
                           interrupted=bool(as_bool(span.attr("tts.interrupted"))))

    @staticmethod
    def _turn(span: SpanIn, call_id: str | None, turn_number: int | None) -> SpanMapping:
        facts: dict[str, Any] = {F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns)}
        interrupted = as_bool(span.attr("turn.interrupted", "turn.was_interrupted"))
        if interrupted:
            facts[F.INTERRUPTED] = True
        for key, fact in (("turn.user_text", F.USER_TEXT), ("turn.agent_text", F.AGENT_TEXT)):
            value = as_text(span.attributes.get(key))
            if value:
                facts[fact] = value
        v2v = as_float(span.attr("turn.v2v_ms"))
        if v2v is not None:
            facts[F.REPORTED_V2V_MS] = v2v
        eou_ms = as_float(span.attr("turn.eou_ms"))
        if eou_ms is not None:
            facts[F.EOU_MS] = eou_ms
        events = (DerivedEvent(span.end_ns, "agent.interrupted", "the contact interrupted the agent",
                               {"turn_number": turn_number}),) if interrupted else ()
        return SpanMapping(stage="turn", call_id=call_id, turn_number=turn_number, facts=facts, events=events)
