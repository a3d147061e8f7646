"""Map stage: OpenInference (Arize) spans, ``openinference.span.kind`` — including its Pipecat instrumentor.

The Pipecat instrumentor (openinference-instrumentation-pipecat 2.x) makes one trace per turn, joined only by
``session.id`` on the turn span: ``pipecat.conversation.turn`` → turn (``conversation.turn_number``),
``pipecat.stt`` / ``pipecat.llm`` / ``pipecat.tts`` → stages, ``pipecat.tool.<name>`` → tool. Elsewhere the
span kind decides: LLM → llm (a root LLM span is an exchange of its own), TOOL → tool, AGENT → turn. Tokens
are ``llm.token_count.*``; a producer-reported ``llm.cost.*`` wins over the price table.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from collector.mappers.base import (
    DerivedEvent, SpanMapping, as_bool, as_float, as_int, as_text, explicit_call_id, us,
)
from collector.mappers.genai import llm_mapping, tool_mapping
from collector.mappers.messages import result_error
from collector.mappers.standalone import CUT_SHORT, finish_reasons, standalone_turn
from collector.items import SpanIn
from storage import facts as F

__all__ = ["OpenInferenceMapper"]

KIND = "openinference.span.kind"
_UNKNOWN = frozenset({"unknown", "none", "not_given", ""})
_SERVICE_SUFFIXES = ("STTService", "TTSService", "LLMService", "Service")


def _known(value: Any) -> str | None:
    text = as_text(value)
    return None if text is None or text.strip().lower() in _UNKNOWN else text


def _service_provider(span: SpanIn) -> str | None:
    """Provider of a Pipecat service span: ``llm.provider``, else the class name (``DeepgramSTTService`` →
    ``deepgram``, as Pipecat's own tracing names it)."""
    provider = _known(span.attr("llm.provider", "llm.system", "gen_ai.provider.name", "gen_ai.system"))
    if provider:
        return provider.lower()
    service = _known(span.attributes.get("service.name"))
    if not service:
        return None
    for suffix in _SERVICE_SUFFIXES:
        if service.endswith(suffix) and len(service) > len(suffix):
            return service[: -len(suffix)].lower()
    return service.lower()


def _model(span: SpanIn) -> str | None:
    return _known(span.attr("llm.model_name", "llm.response.model_name", "llm.request.model_name",
                            "gen_ai.response.model", "gen_ai.request.model", "metrics.model", "service.model"))


def _input_messages(span: SpanIn) -> list[dict[str, Any]]:
    """Flattened ``llm.input_messages.{i}.message.*`` → OpenAI-style message dicts."""
    messages: dict[int, dict[str, Any]] = {}
    prefix = "llm.input_messages."
    for key, value in span.attributes.items():
        if not key.startswith(prefix):
            continue
        index_text, _, rest = key[len(prefix):].partition(".message.")
        if not index_text.isdigit():
            continue
        message = messages.setdefault(int(index_text), {})
        if rest in ("role", "content", "tool_call_id", "name"):
            message[rest] = value
        elif rest.startswith("tool_calls."):
            call_index, _, field = rest[len("tool_calls."):].partition(".tool_call.")
            if call_index.isdigit():
                calls = message.setdefault("tool_calls", {})
                call = calls.setdefault(int(call_index), {"function": {}})
                if field == "id":
                    call["id"] = value
                elif field.startswith("function."):
                    call["function"][field[len("function."):]] = value
    out = []
    for index in sorted(messages):
        message = messages[index]
        if isinstance(message.get("tool_calls"), dict):
            message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
        out.append(message)
    return out


def _reported_cost(span: SpanIn) -> float | None:
    total = as_float(span.attributes.get("llm.cost.total"))
    if total is not None:
        return total
    parts = [as_float(span.attributes.get(k)) for k in ("llm.cost.prompt", "llm.cost.completion")]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


class OpenInferenceMapper:
    name: ClassVar[str] = "openinference"

    def claims(self, span: SpanIn) -> bool:
        return KIND in span.attributes or span.scope_name.startswith("openinference.instrumentation")

    def map_span(self, span: SpanIn) -> SpanMapping:
        kind = (as_text(span.attributes.get(KIND)) or "").upper()
        name = span.name
        call_id = explicit_call_id(span)
        if name == "pipecat.conversation.turn" or (kind in ("CHAIN", "AGENT") and
                                                   "conversation.turn_number" in span.attributes):
            return self._turn(span, call_id)
        if name == "pipecat.stt":
            return self._stt(span, call_id)
        if name == "pipecat.tts":
            return self._tts(span, call_id)
        if name.startswith("pipecat.tool.") or kind == "TOOL":
            return self._tool(span, call_id)
        if name == "pipecat.llm" or kind == "LLM":
            return self._llm(span, call_id)
        if kind == "AGENT" and span.parent_span_id is None:
            return SpanMapping(stage="turn", call_id=call_id, facts={
                F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns),
                **({F.USER_TEXT: t} if (t := as_text(span.attributes.get("input.value"))) else {}),
                **({F.AGENT_TEXT: t} if (t := as_text(span.attributes.get("output.value"))) else {})})
        return SpanMapping(stage="other", call_id=call_id, model=_model(span))

    @staticmethod
    def _turn(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        number = as_int(attributes.get("conversation.turn_number"))
        facts: dict[str, Any] = {F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns)}
        user_text = as_text(attributes.get("input.value"))
        agent_text = as_text(attributes.get("output.value"))
        if user_text:
            facts[F.USER_TEXT] = user_text.strip()
        if agent_text:
            facts[F.AGENT_TEXT] = agent_text.strip()
        reason = (as_text(attributes.get("conversation.end_reason")) or "").lower()
        interrupted = bool(as_bool(attributes.get("conversation.was_interrupted"))) or reason == "interrupted"
        if interrupted:
            facts[F.INTERRUPTED] = True
        v2v = as_float(attributes.get("conversation.user_to_bot_latency"))
        if v2v is not None and v2v >= 0:
            facts[F.REPORTED_V2V_MS] = v2v * 1000.0
        events = (DerivedEvent(span.end_ns, "agent.interrupted", "the user interrupted the agent",
                               {"turn_number": number, "end_reason": reason or None}),) if interrupted else ()
        return SpanMapping(stage="turn", call_id=call_id, turn_number=number, facts=facts, events=events)

    @staticmethod
    def _stt(span: SpanIn, call_id: str | None) -> SpanMapping:
        transcript = (as_text(span.attributes.get("input.value")) or "").strip()
        provider = _service_provider(span)
        facts: dict[str, Any] = {}
        events: tuple[DerivedEvent, ...] = ()
        if transcript:
            facts[F.USER_TEXT] = transcript
            facts[F.STT_FINAL_US] = us(span.end_ns)
            events = (DerivedEvent(span.end_ns, "user.message_received", transcript[:500], {"text": transcript}),)
        if provider:
            facts[F.STT_PROVIDER] = provider
        minutes = as_float(span.attributes.get("stt.minutes"))
        if minutes is not None and minutes >= 0:
            facts[F.STT_AUDIO_SECONDS] = minutes * 60.0
        return SpanMapping(stage="stt", call_id=call_id, provider=provider, model=_model(span), facts=facts,
                           events=events)

    @staticmethod
    def _tts(span: SpanIn, call_id: str | None) -> SpanMapping:
        text = (as_text(span.attributes.get("output.value")) or "").strip()
        provider = _service_provider(span)
        facts: dict[str, Any] = {F.TTS_REQUEST_US: us(span.start_ns)}
        if text:
            facts[F.AGENT_TEXT] = text
            facts[F.TTS_CHARACTERS] = len(text)
        if provider:
            facts[F.TTS_PROVIDER] = provider
        return SpanMapping(stage="tts", call_id=call_id, provider=provider, model=_model(span), facts=facts)

    @staticmethod
    def _llm(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        messages = _input_messages(span)
        extra: dict[str, Any] = {}
        prompt = as_text(attributes.get("input.value")) if span.name == "pipecat.llm" else None
        if prompt:
            extra[F.PROMPT_TEXT] = prompt
        cached = as_int(span.attr("llm.token_count.prompt_details.cache_read"))
        if cached:
            extra[F.LLM_CACHED_TOKENS] = cached
        cost = _reported_cost(span)
        if cost is not None:
            extra[F.COST_LLM] = cost
        output = attributes.get("llm.output_messages.0.message.content") or attributes.get("output.value")
        mapping = llm_mapping(span, call_id=call_id, ttfb_s=span.attr("service.ttfb_seconds",
                                                                      "gen_ai.response.time_to_first_chunk"),
                              output=output, extra_facts=extra)
        provider, model = _service_provider(span), _model(span)
        facts = dict(mapping.facts)
        facts.pop(F.LLM_PROVIDER, None)
        facts.pop(F.LLM_MODEL, None)
        if provider:
            facts[F.LLM_PROVIDER] = provider
        if model:
            facts[F.LLM_MODEL] = model
        mapping = replace(mapping, provider=provider, model=model, facts=facts)
        cut_short = any(reason.lower() in CUT_SHORT for reason in finish_reasons(span))
        return standalone_turn(span, mapping, input_messages=messages, cut_short=cut_short)

    @staticmethod
    def _tool(span: SpanIn, call_id: str | None) -> SpanMapping:
        result = span.attr("tool.result", "output.value")
        error = as_text(span.attr("frame.error.message", "exception.message", "error.type"))
        if error is None and span.status_code == 2:
            error = span.status_message or "tool failed"
        if error is None and result is not None:
            error = result_error(result)
        name = as_text(span.attr("tool.name", "tool_call.function.name"))
        if name is None and span.name.startswith("pipecat.tool."):
            name = span.name[len("pipecat.tool."):]
        return tool_mapping(
            span, call_id=call_id, name=name or span.name,
            call_key=span.attr("tool_call.id", "tool.id"),
            arguments=span.attr("tool.parameters", "tool_call.function.arguments", "input.value"),
            result=result, is_error=error is not None, error=error)
