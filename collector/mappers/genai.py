"""Map stage: generic OpenTelemetry GenAI semantic conventions (semconv v1.36 → v1.41, old and new keys).

``chat`` / ``generate_content`` / ``text_completion`` → llm, ``execute_tool`` → tool, ``invoke_agent`` → turn, a root ``invoke_workflow`` → session,
``speech_to_text`` / ``text_to_speech`` (proposed voice-agent operations) → stt / tts. The stage helpers here
are shared with the other mappers, which see the same GenAI keys on their LLM and tool spans.
"""

from __future__ import annotations

from typing import Any, ClassVar

from collector.mappers.base import (
    DerivedEvent, SpanMapping, ToolCallDraft, as_bool, as_int, as_json_text, as_text, explicit_call_id,
    parse_json, seconds_to_us, us,
)
from collector.items import SpanIn
from collector.mappers.messages import last_user_text
from collector.mappers.standalone import CUT_SHORT, finish_reasons, is_transfer, standalone_turn
from storage import facts as F

__all__ = ["GenAIMapper", "llm_mapping", "tool_mapping", "session_mapping", "tts_mapping", "message_text", "provider_of",
           "model_of", "tool_event_prefix", "invocation_mapping"]

_LLM_OPERATIONS = frozenset({"chat", "generate_content", "text_completion", "completion", "responses"})
_STT_OPERATIONS = frozenset({"speech_to_text", "transcription", "stt"})
_TTS_OPERATIONS = frozenset({"text_to_speech", "speech", "tts"})

# Unknown hosts and class-derived names are normalized onto one lower-case provider (research §8 (h)).
_PROVIDER_ALIASES = {
    "az.ai.openai": "azure.ai.openai", "xai": "x_ai", "mistral": "mistral_ai", "api.openai.com": "openai",
    "api.anthropic.com": "anthropic", "api.groq.com": "groq",
}


def provider_of(span: SpanIn, *extra_keys: str) -> str | None:
    value = as_text(span.attr(*extra_keys, "gen_ai.provider.name", "gen_ai.system"))
    if value is None:
        return None
    value = value.strip().lower()
    return _PROVIDER_ALIASES.get(value, value)


def model_of(span: SpanIn, *extra_keys: str) -> str | None:
    return as_text(span.attr(*extra_keys, "gen_ai.response.model", "gen_ai.request.model"))


def message_text(value: Any) -> str | None:
    """Assistant text from GenAI ``*.messages`` (parts format), OpenAI-style messages, or a plain string."""
    parsed = parse_json(value)
    if parsed is None:
        return value if isinstance(value, str) and value else None
    messages = parsed if isinstance(parsed, list) else [parsed]
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") not in (None, "assistant", "model"):
            continue
        parts = message.get("parts")
        if isinstance(parts, list):
            texts.extend(str(part.get("content")) for part in parts
                         if isinstance(part, dict) and part.get("type") == "text" and part.get("content"))
        content = message.get("content")
        if isinstance(content, str) and content:
            texts.append(content)
        inner = message.get("message")
        if isinstance(inner, dict) and isinstance(inner.get("content"), str):
            texts.append(inner["content"])
    return " ".join(texts) or None


def llm_mapping(span: SpanIn, *, ttfb_s: Any = None, output: Any = None, stage: str = "llm",
                call_id: str | None = None, turn_number: int | None = None,
                extra_facts: dict[str, Any] | None = None) -> SpanMapping:
    """An LLM inference span: request at start, first token at start + TTFT (seconds)."""
    if ttfb_s is None:
        ttfb_s = span.attr("gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")
    ttfb_us = seconds_to_us(ttfb_s)
    provider = provider_of(span)
    model = model_of(span)
    input_tokens = as_int(span.attr("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                                    "llm.token_count.prompt"))
    output_tokens = as_int(span.attr("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                                     "llm.token_count.completion"))
    if output is None:
        output = span.attr("gen_ai.output.messages", "gen_ai.completion", "gen_ai.completion.0.content")
    text = message_text(output)
    start_us = us(span.start_ns)
    facts: dict[str, Any] = {F.LLM_REQUEST_US: start_us}
    if ttfb_us is not None:
        facts[F.LLM_FIRST_TOKEN_US] = start_us + ttfb_us
    if provider:
        facts[F.LLM_PROVIDER] = provider
    if model:
        facts[F.LLM_MODEL] = model
    if text:
        facts[F.LLM_TEXT] = text
    if extra_facts:
        facts.update(extra_facts)
    events: tuple[DerivedEvent, ...] = ()
    if text:
        events = (DerivedEvent(span.end_ns, "agent.message_sent", text[:500], {"text": text, "model": model}),)
    return SpanMapping(
        stage=stage, call_id=call_id, turn_number=turn_number, provider=provider, model=model,
        ttfb_ms=None if ttfb_us is None else ttfb_us / 1000.0,
        input_tokens=input_tokens, output_tokens=output_tokens, facts=facts, events=events,
    )


def tts_mapping(span: SpanIn, *, provider: str | None, text: str | None, ttfb_us: int | None,
                characters: int | None = None, interrupted: bool = False, call_id: str | None = None,
                turn_number: int | None = None, model: str | None = None,
                events: tuple[DerivedEvent, ...] = ()) -> SpanMapping:
    """A TTS request span: request at start, first audio at start + TTFB; the text is what the agent said."""
    start_us = us(span.start_ns)
    facts: dict[str, Any] = {F.TTS_REQUEST_US: start_us}
    if ttfb_us is not None:
        facts[F.TTS_FIRST_AUDIO_US] = start_us + ttfb_us
    if provider:
        facts[F.TTS_PROVIDER] = provider
    if text:
        facts[F.AGENT_TEXT] = text
    if characters is None and text:
        characters = len(text)
    if characters is not None:
        facts[F.TTS_CHARACTERS] = characters
    if interrupted:
        facts[F.INTERRUPTED] = True
    return SpanMapping(stage="tts", call_id=call_id, turn_number=turn_number, provider=provider,
                       model=model if model is not None else model_of(span),
                       ttfb_ms=None if ttfb_us is None else ttfb_us / 1000.0, facts=facts, events=events)


def tool_event_prefix(tool_name: str | None) -> str:
    """Catalogue prefix of a tool's events: ``tool.transfer`` for a transfer, else ``integration``."""
    return "tool.transfer" if is_transfer(tool_name) else "integration"


def tool_mapping(span: SpanIn, *, name: Any = None, call_key: Any = None, arguments: Any = None,
                 result: Any = None, is_error: bool | None = None, error: Any = None,
                 call_id: str | None = None, turn_number: int | None = None,
                 stage: str = "tool") -> SpanMapping:
    """A tool execution span → one tool call and its integration events (transfer stage: call-tool events)."""
    tool_name = as_text(name if name is not None else span.attr("gen_ai.tool.name", "tool.name"))
    if tool_name is None:
        tool_name = span.name.removeprefix("execute_tool").strip() or span.name
    tool_call_id = as_text(call_key if call_key is not None else span.attr("gen_ai.tool.call.id", "tool_call.id"))
    arguments = arguments if arguments is not None else span.attr("gen_ai.tool.call.arguments", "tool.parameters")
    result = result if result is not None else span.attr("gen_ai.tool.call.result", "tool.result")
    error_text = as_text(error if error is not None else span.attr("error.type", "exception.message"))
    failed = bool(is_error) or span.status_code == 2 or error_text is not None
    if failed and error_text is None:
        error_text = span.status_message or "tool failed"
    draft = ToolCallDraft(
        tool_call_id=tool_call_id or span.span_id, tool_name=tool_name, start_ns=span.start_ns,
        end_ns=span.end_ns, arguments=as_json_text(arguments), result=as_json_text(result),
        is_error=failed, error=error_text,
    )
    if stage == "tool" and is_transfer(tool_name):
        stage = "transfer"
    prefix = "tool.transfer" if stage == "transfer" else "integration"
    data = {"tool": tool_name, "tool_call_id": draft.tool_call_id}
    ended = DerivedEvent(span.end_ns, f"{prefix}.failed" if failed else f"{prefix}.completed",
                         error_text if failed else None, {**data, "result": draft.result} if not failed
                         else {**data, "error": error_text})
    return SpanMapping(
        stage=stage, call_id=call_id, turn_number=turn_number, tool_calls=(draft,),
        events=(DerivedEvent(span.start_ns, f"{prefix}.invoked", None, {**data, "arguments": draft.arguments}),
                ended),
    )


def session_mapping(span: SpanIn, *, call_id: str | None) -> SpanMapping:
    """The span that bounds the whole call: its end ends the call (status ERROR → failed, else completed)."""
    failed = span.status_code == 2
    facts: dict[str, Any] = {F.SESSION_END_US: us(span.end_ns)}
    if failed:
        facts[F.SESSION_ERROR] = span.status_message or "session ended with status ERROR"
    end_event = (DerivedEvent(span.end_ns, "call.failed", facts[F.SESSION_ERROR], {"reason": facts[F.SESSION_ERROR]})
                 if failed else DerivedEvent(span.end_ns, "call.completed"))
    return SpanMapping(stage="session", call_id=call_id, facts=facts,
                       events=(DerivedEvent(span.start_ns, "agent.initialized"), end_event))


def invocation_mapping(span: SpanIn, *, call_id: str | None) -> SpanMapping:
    """An agent invocation (``invoke_agent``) is one turn: the user's message is the last user message of
    ``gen_ai.input.messages``, the reply is ``gen_ai.output.messages``; a reply cut short (finish reason
    error / cancelled, or ``gen_ai.agent.invocation.end_reason = interrupted``) is an interrupted turn."""
    facts: dict[str, Any] = {F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns)}
    output = span.attributes.get("gen_ai.output.messages")
    reason = as_text(span.attr("gen_ai.agent.invocation.end_reason"))
    cut_short = any(r.lower() in CUT_SHORT for r in finish_reasons(span, output))
    interrupted = reason == "interrupted" or bool(as_bool(span.attr("turn.interrupted"))) or cut_short
    user_text = last_user_text(span.attributes.get("gen_ai.input.messages"))
    agent_text = message_text(output)
    events: list[DerivedEvent] = []
    if user_text:
        facts[F.USER_TEXT] = user_text
        events.append(DerivedEvent(span.start_ns, "user.message_received", user_text[:500], {"text": user_text}))
    if agent_text:
        facts[F.AGENT_TEXT] = agent_text
    if interrupted:
        facts[F.INTERRUPTED] = True
        events.append(DerivedEvent(span.end_ns, "agent.interrupted", "the reply was cut short",
                                   {"end_reason": reason} if reason else None))
    return SpanMapping(stage="turn", call_id=call_id, turn_number=as_int(span.attr("turn.number")),
                       provider=provider_of(span), model=model_of(span), facts=facts, events=tuple(events))


class GenAIMapper:
    """Fallback for any span carrying GenAI semantic-convention attributes."""

    name: ClassVar[str] = "genai"

    def claims(self, span: SpanIn) -> bool:
        attributes = span.attributes
        return ("gen_ai.operation.name" in attributes or "gen_ai.system" in attributes
                or "gen_ai.provider.name" in attributes or "llm.request.type" in attributes)

    def map_span(self, span: SpanIn) -> SpanMapping:
        operation = as_text(span.attr("gen_ai.operation.name", "llm.request.type")) or ""
        call_id = explicit_call_id(span)
        if operation in _LLM_OPERATIONS or (not operation and span.attributes.get("gen_ai.system")):
            mapping = llm_mapping(span, call_id=call_id)
            if span.parent_span_id is None:   # a bare instrumented request: an exchange of its own
                output = span.attributes.get("gen_ai.output.messages")
                cut_short = any(reason.lower() in CUT_SHORT for reason in finish_reasons(span, output))
                mapping = standalone_turn(span, mapping, input_messages=span.attributes.get("gen_ai.input.messages"),
                                          cut_short=cut_short)
            return mapping
        if operation == "execute_tool":
            return tool_mapping(span, call_id=call_id)
        if operation == "invoke_workflow" and span.parent_span_id is None:
            # The root workflow span of an agent session (LiveKit 1.8 style) bounds the whole call.
            return session_mapping(span, call_id=call_id)
        if operation == "invoke_agent":
            return invocation_mapping(span, call_id=call_id)
        if operation in _STT_OPERATIONS:
            facts = {F.STT_FINAL_US: us(span.end_ns), F.USER_STOPPED_US: us(span.start_ns)}
            provider = provider_of(span)
            if provider:
                facts[F.STT_PROVIDER] = provider
            return SpanMapping(stage="stt", call_id=call_id, provider=provider, model=model_of(span), facts=facts)
        if operation in _TTS_OPERATIONS:
            provider = provider_of(span)
            facts = {F.TTS_REQUEST_US: us(span.start_ns)}
            if provider:
                facts[F.TTS_PROVIDER] = provider
            return SpanMapping(stage="tts", call_id=call_id, provider=provider, model=model_of(span), facts=facts)
        return SpanMapping(stage="other", call_id=call_id, provider=provider_of(span), model=model_of(span))
