"""Map stage: Pipecat native tracing (tracers ``pipecat.turn`` and ``pipecat``; pipecat-ai 0.0.68 → 1.x).

``conversation`` → session, ``turn`` → turn (``turn.number``), ``stt`` / ``llm`` / ``tts`` → stages, realtime
services' ``llm_setup`` / ``llm_request`` / ``llm_response`` / ``llm_tool_call`` / ``llm_tool_result``.
Latencies are attributes in seconds (``metrics.ttfb``): STT's is measured from the end of speech, so the
user stopped speaking at ``stt.end − metrics.ttfb``. Cascade pipelines emit no tool span: tool calls are
recovered from the next ``llm`` span's ``input`` (assistant ``tool_calls`` + ``role=tool`` results).
The call id is ``conversation.id`` (conversation and turn spans); stage spans join it through their trace.
"""

from __future__ import annotations

from typing import Any, ClassVar

from collector.mappers.base import (
    DerivedEvent, SpanMapping, ToolCallDraft, as_bool, as_float, as_int, as_text, explicit_call_id,
    ms_to_us, seconds_to_us, us,
)
from collector.mappers.genai import (
    llm_mapping, model_of, provider_of, session_mapping, tool_event_prefix, tool_mapping, tts_mapping,
)
from collector.mappers.messages import last_user_text, recover_tools, result_error
from collector.items import SpanIn
from storage import facts as F

__all__ = ["PipecatMapper"]

_SCOPES = frozenset({"pipecat", "pipecat.turn"})
_REALTIME_LLM = frozenset({"llm_response", "llm_request"})


def _ttfb_us(span: SpanIn) -> int | None:
    """``metrics.ttfb`` (seconds; very early releases: ``metrics.ttfb_ms``) as microseconds."""
    value = seconds_to_us(span.attributes.get("metrics.ttfb"))
    if value is None:
        value = ms_to_us(span.attributes.get("metrics.ttfb_ms"))
    return value


def _cached_tokens(span: SpanIn) -> int | None:
    return as_int(span.attr("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"))


class PipecatMapper:
    name: ClassVar[str] = "pipecat"

    def claims(self, span: SpanIn) -> bool:
        return span.scope_name in _SCOPES or span.scope_name.startswith("pipecat.")

    def map_span(self, span: SpanIn) -> SpanMapping:
        name = span.name
        call_id = explicit_call_id(span)
        if name == "conversation":
            return session_mapping(span, call_id=call_id)
        if name == "turn":
            return self._turn(span, call_id)
        if name == "stt":
            return self._stt(span, call_id)
        if name == "llm":
            return self._llm(span, call_id)
        if name == "tts":
            return self._tts(span, call_id)
        if name == "llm_tool_call" or name == "llm_tool_result":
            return self._realtime_tool(span, call_id)
        if name in _REALTIME_LLM:
            return llm_mapping(span, call_id=call_id, ttfb_s=None if _ttfb_us(span) is None else _ttfb_us(span) / 1e6,
                               output=span.attr("output", "text_output"))
        return SpanMapping(stage="other", call_id=call_id, provider=provider_of(span), model=model_of(span))

    @staticmethod
    def _turn(span: SpanIn, call_id: str | None) -> SpanMapping:
        number = as_int(span.attributes.get("turn.number"))
        facts: dict[str, Any] = {F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns)}
        hung_up = bool(as_bool(span.attributes.get("turn.ended_by_conversation_end")))
        interrupted = bool(as_bool(span.attributes.get("turn.was_interrupted"))) and not hung_up
        if interrupted:
            facts[F.INTERRUPTED] = True
        v2v = as_float(span.attributes.get("turn.user_bot_latency_seconds"))
        if v2v is not None and v2v >= 0:
            facts[F.REPORTED_V2V_MS] = v2v * 1000.0
        # turn.duration_seconds runs from the turn's start to the bot stopped speaking (or was cut off)
        spoken_until = seconds_to_us(span.attributes.get("turn.duration_seconds"))
        if spoken_until:
            facts[F.AGENT_SPEECH_END_US] = us(span.start_ns) + spoken_until
        events = ()
        if interrupted:
            events = (DerivedEvent(span.end_ns, "agent.interrupted", "the user interrupted the agent",
                                   {"turn_number": number}),)
        return SpanMapping(stage="turn", call_id=call_id, turn_number=number, facts=facts, events=events)

    @staticmethod
    def _stt(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        transcript = as_text(attributes.get("transcript"))
        is_input = as_bool(attributes.get("transcript.is_input"))
        incomplete = bool(as_bool(attributes.get("stt.incomplete")))
        final = as_bool(attributes.get("is_final")) is not False and not incomplete
        ttfb_us = _ttfb_us(span)
        provider = provider_of(span)
        facts: dict[str, Any] = {}
        stopped_us = None
        if ttfb_us is not None:
            stopped_us = us(span.end_ns) - ttfb_us
            facts[F.USER_STOPPED_US] = stopped_us
            if is_input is not False and stopped_us >= us(span.start_ns):
                # the span is backdated to the start of speech: the user spoke from its start until stopped
                facts.update({F.SPEECH_SIDE: "user", F.SPEECH_START_US: us(span.start_ns),
                              F.SPEECH_END_US: stopped_us})
        if final:
            facts[F.STT_FINAL_US] = us(span.end_ns)
        if transcript and is_input is not False:
            facts[F.USER_TEXT] = transcript
        if provider:
            facts[F.STT_PROVIDER] = provider
        audio_seconds = as_float(attributes.get("metrics.audio_seconds"))
        if audio_seconds is None and stopped_us is not None:
            audio_seconds = max(0.0, (stopped_us - us(span.start_ns)) / 1e6)
        if audio_seconds is not None:
            facts[F.STT_AUDIO_SECONDS] = audio_seconds
        events: list[DerivedEvent] = [DerivedEvent(span.start_ns, "user.started_speaking")]
        if stopped_us is not None:
            events.append(DerivedEvent(stopped_us * 1000, "user.stopped_speaking"))
        if transcript and final and is_input is not False:
            events.append(DerivedEvent(span.end_ns, "user.message_received", transcript[:500],
                                       {"text": transcript, "language": as_text(attributes.get("language"))}))
        return SpanMapping(stage="stt", call_id=call_id, provider=provider, model=model_of(span),
                           ttfb_ms=None if ttfb_us is None else ttfb_us / 1000.0, facts=facts, events=tuple(events))

    @staticmethod
    def _llm(span: SpanIn, call_id: str | None) -> SpanMapping:
        ttfb_us = _ttfb_us(span)
        extra: dict[str, Any] = {}
        messages = span.attributes.get("input")
        prompt = last_user_text(messages)
        if prompt:
            extra[F.PROMPT_TEXT] = prompt
        cached = _cached_tokens(span)
        if cached:
            extra[F.LLM_CACHED_TOKENS] = cached
        mapping = llm_mapping(span, call_id=call_id, ttfb_s=None if ttfb_us is None else ttfb_us / 1e6,
                              output=span.attributes.get("output") or None, extra_facts=extra)
        tools = recover_tools(messages)
        if not tools:
            return mapping
        drafts = []
        events = list(mapping.events)
        for tool in tools:
            # The tool ran between the LLM step that asked for it and this one: its end is this span's start;
            # its start is recovered in storage/derive/tool_calls.sql (the previous llm span's end).
            drafts.append(ToolCallDraft(tool_call_id=tool.tool_call_id, tool_name=tool.name, start_ns=None,
                                        end_ns=span.start_ns, arguments=tool.arguments, result=tool.result,
                                        is_error=tool.error is not None, error=tool.error))
            data = {"tool": tool.name, "tool_call_id": tool.tool_call_id}
            prefix = tool_event_prefix(tool.name)
            events.append(DerivedEvent(span.start_ns, f"{prefix}.invoked", None, {**data, "arguments": tool.arguments}))
            events.append(DerivedEvent(span.start_ns, f"{prefix}.failed", tool.error, {**data, "error": tool.error})
                          if tool.error is not None else
                          DerivedEvent(span.start_ns, f"{prefix}.completed", None, {**data, "result": tool.result}))
        return SpanMapping(
            stage=mapping.stage, call_id=mapping.call_id, turn_number=mapping.turn_number, provider=mapping.provider,
            model=mapping.model, ttfb_ms=mapping.ttfb_ms, input_tokens=mapping.input_tokens,
            output_tokens=mapping.output_tokens, facts=mapping.facts, tool_calls=tuple(drafts), events=tuple(events),
        )

    @staticmethod
    def _tts(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        text = as_text(attributes.get("text"))
        ttfb_us = _ttfb_us(span)
        events: tuple[DerivedEvent, ...] = ()
        if ttfb_us is not None:
            events = (DerivedEvent(span.start_ns + ttfb_us * 1000, "agent.started_speaking", None,
                                   {"text": text} if text else None),)
        return tts_mapping(span, call_id=call_id, provider=provider_of(span), text=text, ttfb_us=ttfb_us,
                           characters=as_int(attributes.get("metrics.character_count")),
                           interrupted=bool(as_bool(attributes.get("tts.interrupted"))), events=events)

    @staticmethod
    def _realtime_tool(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        name = as_text(attributes.get("tool.function_name")) or as_text(attributes.get("function_calls.first_name"))
        result = attributes.get("tool.result")
        status = (as_text(attributes.get("tool.result_status")) or "").lower()
        error = result_error(result) if result is not None else None
        if status in ("error", "failed", "failure") and error is None:
            error = as_text(result) or "tool failed"
        mapping = tool_mapping(span, name=name or "unknown", call_key=attributes.get("tool.call_id"),
                               arguments=attributes.get("tool.arguments"), result=result,
                               is_error=error is not None, error=error,
                               call_id=call_id)
        if span.name == "llm_tool_call":   # the request half: the result arrives on llm_tool_result
            draft = mapping.tool_calls[0]
            invoked = mapping.events[0]
            return SpanMapping(stage="tool", call_id=call_id, tool_calls=(ToolCallDraft(
                draft.tool_call_id, draft.tool_name, span.start_ns, None, draft.arguments, None, False, None),),
                events=(invoked,))
        return SpanMapping(stage="tool", call_id=call_id, tool_calls=mapping.tool_calls, events=mapping.events[1:])

