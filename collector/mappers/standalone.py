"""Map stage helper: a root LLM span with no voice framework around it is one exchange, a turn of its own.

Bare LLM instrumentations (OTel openai-v2, OpenLLMetry, OpenInference's OpenAI instrumentor) export each
request as its own trace: no call, no turn span. Such a root span asks storage/derive/turns.sql for a turn number
(``turn_seq``), bounds the turn, names the user message it answers (``prompt_text``), flags a reply cut
short, and reports the tool calls its input shows were answered since the last user message.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from collector.mappers.base import DerivedEvent, SpanMapping, ToolCallDraft, us
from collector.mappers.messages import last_user_text, messages_of, recover_tools
from collector.items import SpanIn
from storage import facts as F

__all__ = ["standalone_turn", "finish_reasons", "is_transfer", "CUT_SHORT"]

CUT_SHORT = frozenset({"error", "cancelled", "canceled", "interrupted", "abort", "aborted"})


def is_transfer(tool_name: str | None) -> bool:
    """A tool that hands the call to someone else (``transfer_call``, ``transferToHuman``, …): seed 002's call
    tool ``tool.transfer``, whatever framework ran it."""
    return bool(tool_name) and "transfer" in tool_name.lower()


def finish_reasons(span: SpanIn, output_messages: Any = None) -> list[str]:
    """``gen_ai.response.finish_reasons`` (array or string), else the output messages' ``finish_reason``."""
    value = span.attributes.get("gen_ai.response.finish_reasons", span.attributes.get("llm.finish_reason"))
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(m.get("finish_reason")) for m in messages_of(output_messages)
            if isinstance(m, dict) and "finish_reason" in m and m.get("finish_reason") is not None]


def standalone_turn(span: SpanIn, mapping: SpanMapping, *, input_messages: Any, cut_short: bool = False,
                    recover: bool = True) -> SpanMapping:
    """``mapping`` of a root LLM span turned into its own turn; spans with a parent are returned unchanged."""
    if span.parent_span_id is not None or mapping.turn_number is not None:
        return mapping
    facts = dict(mapping.facts)
    facts.update({F.TURN_SEQ: True, F.TURN_START_US: us(span.start_ns), F.TURN_END_US: us(span.end_ns)})
    prompt = last_user_text(input_messages)
    if prompt and F.PROMPT_TEXT not in facts:
        facts[F.PROMPT_TEXT] = prompt
    events = list(mapping.events)
    if cut_short:
        facts[F.INTERRUPTED] = True
        events.append(DerivedEvent(span.end_ns, "agent.interrupted", "the reply was cut short", None))
    tools = list(mapping.tool_calls)
    if recover and not tools:
        for tool in recover_tools(input_messages):
            tools.append(ToolCallDraft(tool.tool_call_id, tool.name, None, span.start_ns, tool.arguments,
                                       tool.result, tool.error is not None, tool.error))
            data = {"tool": tool.name, "tool_call_id": tool.tool_call_id}
            prefix = "tool.transfer" if is_transfer(tool.name) else "integration"
            events.append(DerivedEvent(span.start_ns, f"{prefix}.invoked", None, {**data, "arguments": tool.arguments}))
            events.append(DerivedEvent(span.start_ns, f"{prefix}.failed", tool.error, {**data, "error": tool.error})
                          if tool.error is not None else
                          DerivedEvent(span.start_ns, f"{prefix}.completed", None, {**data, "result": tool.result}))
    return replace(mapping, facts=facts, events=tuple(events), tool_calls=tuple(tools))
