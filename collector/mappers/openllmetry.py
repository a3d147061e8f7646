"""Map stage: OpenLLMetry / Traceloop (``traceloop.*`` keys; LLM spans named ``openai.chat``, ``anthropic.chat``…).

The first token is the first ``gen_ai.content.completion.chunk`` span event (one event per streamed chunk).
Older releases put prompts and completions in indexed keys (``gen_ai.prompt.{i}.role/content``,
``gen_ai.completion.{i}.content``) and used ``gen_ai.system`` / ``llm.request.type`` /
``gen_ai.usage.prompt_tokens``; current ones use ``gen_ai.input.messages`` / ``gen_ai.output.messages``.
Workflow decorators: ``traceloop.span.kind`` workflow (root: session), agent (turn), tool (tool), task.
The call id: ``traceloop.association.properties.{session_id,conversation_id,call_id}``, then the usual keys.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from collector.mappers.base import CALL_ID_KEYS, SpanMapping, as_int, as_text, explicit_call_id, us
from collector.mappers.genai import llm_mapping, session_mapping, tool_mapping
from collector.mappers.messages import result_error
from collector.mappers.standalone import CUT_SHORT, finish_reasons, standalone_turn
from collector.items import SpanIn
from storage import facts as F

__all__ = ["OpenLLMetryMapper"]

_LLM_NAME = re.compile(r"^[a-z_]+\.(chat|completion|response|responses|messages|generate_content)$")
_CHUNK_EVENTS = frozenset({"gen_ai.content.completion.chunk", "llm.content.completion.chunk"})
_TRACELOOP_KEYS = ("traceloop.span.kind", "traceloop.workflow.name", "traceloop.entity.name")
CALL_KEYS = ("traceloop.association.properties.call_id", "traceloop.association.properties.session_id",
             "traceloop.association.properties.conversation_id", *CALL_ID_KEYS)


def _indexed_messages(span: SpanIn, prefix: str) -> list[dict[str, Any]]:
    """``gen_ai.prompt.{i}.role`` / ``.content`` (older OpenLLMetry) → message dicts in index order."""
    messages: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        if not key.startswith(prefix):
            continue
        index_text, _, field = key[len(prefix):].partition(".")
        if index_text.isdigit() and field in ("role", "content", "tool_call_id", "finish_reason"):
            messages.setdefault(int(index_text), {})[field] = value
    return [messages[i] for i in sorted(messages)]


class OpenLLMetryMapper:
    name: ClassVar[str] = "openllmetry"

    def claims(self, span: SpanIn) -> bool:
        attributes = span.attributes
        if any(key in attributes for key in _TRACELOOP_KEYS):
            return True
        return bool(_LLM_NAME.match(span.name)) and (
            "gen_ai.operation.name" in attributes or "llm.request.type" in attributes
            or "gen_ai.system" in attributes or "gen_ai.provider.name" in attributes)

    def map_span(self, span: SpanIn) -> SpanMapping:
        call_id = explicit_call_id(span, CALL_KEYS)
        kind = (as_text(span.attributes.get("traceloop.span.kind")) or "").lower()
        if _LLM_NAME.match(span.name) or "llm.request.type" in span.attributes:
            return self._llm(span, call_id)
        if kind == "workflow" and span.parent_span_id is None:
            return session_mapping(span, call_id=call_id)
        if kind == "agent":
            facts: dict[str, Any] = {F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns)}
            return SpanMapping(stage="turn", call_id=call_id, facts=facts)
        if kind == "tool":
            output = span.attributes.get("traceloop.entity.output")
            error = as_text(span.attr("exception.message", "error.type")) or (
                span.status_message or "tool failed" if span.status_code == 2 else None) or result_error(output)
            return tool_mapping(span, call_id=call_id, name=span.attr("traceloop.entity.name"),
                                arguments=span.attributes.get("traceloop.entity.input"), result=output,
                                is_error=error is not None, error=error)
        return SpanMapping(stage="other", call_id=call_id)

    @staticmethod
    def _llm(span: SpanIn, call_id: str | None) -> SpanMapping:
        attributes = span.attributes
        first_chunk = min((e["time_unix_nano"] for e in span.events if e["name"] in _CHUNK_EVENTS
                           and e["time_unix_nano"]), default=None)
        ttfb_s = (first_chunk - span.start_ns) / 1e9 if first_chunk is not None and first_chunk >= span.start_ns \
            else attributes.get("gen_ai.response.time_to_first_chunk")
        output = attributes.get("gen_ai.output.messages")
        if output is None:
            completions = [m for m in _indexed_messages(span, "gen_ai.completion.") if m.get("content")]
            output = completions or None
        input_messages: Any = attributes.get("gen_ai.input.messages")
        if input_messages is None:
            input_messages = _indexed_messages(span, "gen_ai.prompt.")
        extra: dict[str, Any] = {}
        cached = as_int(span.attr("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"))
        if cached:
            extra[F.LLM_CACHED_TOKENS] = cached
        mapping = llm_mapping(span, call_id=call_id, ttfb_s=ttfb_s, output=output, extra_facts=extra)
        reasons = [r.lower() for r in finish_reasons(span, output)]
        streaming = attributes.get("gen_ai.is_streaming") is True or attributes.get("llm.is_streaming") is True
        # a stream closed early reports no finish reason at all (observed: "" in the output message)
        cut_short = any(r in CUT_SHORT for r in reasons) or (streaming and not any(reasons)
                                                             and mapping.output_tokens is None)
        return standalone_turn(span, mapping, input_messages=input_messages, cut_short=cut_short)
