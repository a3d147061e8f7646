"""Where personal data is found by place: the attributes of each convention that hold a class's values, the
flattened and structured chat messages, the facts and the call-log events (and their data keys)."""

from __future__ import annotations

import re
from typing import Any, Mapping

from storage import facts as F

__all__ = ["BUILTIN_KEYS", "MESSAGE_FAMILIES", "TOOL_ERROR", "EITHER", "TOOL_ROLES", "TOOL_TYPES", "STRUCTURAL",
           "TOOL_CONTAINERS", "TOOL_ARGUMENTS", "flattened_class", "is_marked", "MESSAGE_KEYS", "MESSAGE_EVENTS",
           "MESSAGE_EVENT_KEYS", "EVENT_CLASSES", "EVENT_DATA_CLASSES", "FACT_CLASSES"]

_MARKED_SEGMENT = re.compile(r"(^|\.)pii\.")


def is_marked(key: str) -> bool:
    """A key a framework marks personal: a ``pii`` segment (LiveKit ``lk.pii.*``)."""
    return "pii." in key and _MARKED_SEGMENT.search(key) is not None


def flattened_class(key: str, prefix: str, family: str, attributes: Mapping[str, Any]) -> str | None:
    """``llm.input_messages.3.message.content`` and the like: transcript, or tool inside a tool call or for
    a tool-role message; structural leaves (role, name, id…) are not personal."""
    rest = key[len(prefix):]
    index, _, field = rest.partition(".")
    if not index.isdigit() or not field:
        return None
    leaf = field.rsplit(".", 1)[-1]
    if leaf in STRUCTURAL:
        return None
    if "tool_call" in field or leaf in TOOL_ARGUMENTS:
        return "tool"
    role = attributes.get(f"{prefix}{index}.{family.removeprefix('messages:')}")
    return "tool" if role in TOOL_ROLES else "transcript"


EITHER = "either"   # the class depends on the span: tool payload on a tool span, transcript elsewhere
TOOL_ERROR = "tool error"   # a tool's error text on a tool span (it often quotes the payload); elsewhere free text

# Attributes whose value is personal by what it is, per convention (research/otel-voice-conventions.md).
BUILTIN_KEYS: dict[str, str] = {
    # native convention (docs/conventions.md)
    "call.from": "phone", "call.to": "phone", "call.recording.url": "recording", "call.summary": "transcript",
    "stt.transcript": "transcript", "transcript": "transcript", "turn.user_text": "transcript",
    "turn.agent_text": "transcript", "tts.text": "transcript", "text": "transcript", "llm.output": "transcript",
    "transfer.target": "phone",
    # Pipecat: llm input (chat messages JSON), outputs, STT transcript, TTS text
    "input": "transcript", "output": "transcript", "text_output": "transcript",
    "tool.arguments": "tool", "tool.result": "tool", "tool.parameters": "tool",
    # LiveKit (≥ 1.7 under lk.pii.*, older without)
    "lk.pii.sip.phoneNumber": "phone", "lk.sip.phoneNumber": "phone", "lk.sip.trunkPhoneNumber": "phone",
    "lk.pii.user_transcript": "transcript", "lk.user_transcript": "transcript",
    "lk.pii.user_input": "transcript", "lk.user_input": "transcript",
    "lk.pii.instructions": "transcript", "lk.instructions": "transcript",
    "lk.pii.response.text": "transcript", "lk.response.text": "transcript",
    "lk.pii.input_text": "transcript", "lk.input_text": "transcript",
    "lk.pii.chat_ctx": "transcript", "lk.chat_ctx": "transcript",
    "lk.pii.response.function_calls": "tool", "lk.response.function_calls": "tool",
    "lk.pii.function_tool.arguments": "tool", "lk.function_tool.arguments": "tool",
    "lk.pii.function_tool.output": "tool", "lk.function_tool.output": "tool", "lk.pii.arguments": "tool",
    # OpenTelemetry GenAI semantic conventions
    "gen_ai.input.messages": "transcript", "gen_ai.output.messages": "transcript",
    "gen_ai.system_instructions": "transcript", "gen_ai.prompt": "transcript", "gen_ai.completion": "transcript",
    "gen_ai.tool.call.arguments": "tool", "gen_ai.tool.call.result": "tool",
    # OpenInference / OpenLLMetry: inputs and outputs are tool payloads on tool spans, texts elsewhere
    "input.value": EITHER, "output.value": EITHER, "traceloop.entity.input": EITHER,
    "traceloop.entity.output": EITHER, "tool_call.function.arguments": "tool",
    "message.content": "transcript", "message.contents": "transcript", "llm.prompts": "transcript",
    "llm.prompt_template.variables": "transcript", "message.contents.*": "transcript",
    "exception.message": TOOL_ERROR, "exception.stacktrace": TOOL_ERROR, "frame.error.message": TOOL_ERROR,
    "error.message": TOOL_ERROR,
    # OpenTelemetry general conventions
    "user.email": "email", "user.full_name": "personal", "user.name": "personal",
    "recording.url": "recording",
}
# Flattened message lists: (prefix, where the message's role is relative to "<prefix><index>.")
MESSAGE_FAMILIES = (("llm.input_messages.", "message.role"), ("llm.output_messages.", "message.role"),
                    ("gen_ai.prompt.", "role"), ("gen_ai.completion.", "role"))
MESSAGE_KEYS = frozenset({"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
                          "input", "output", "lk.pii.chat_ctx", "lk.chat_ctx", "lk.pii.response.function_calls",
                          "lk.response.function_calls"})
STRUCTURAL = frozenset({"role", "type", "id", "name", "tool_call_id", "call_id", "finish_reason", "index",
                        "model", "tool_name"})
TOOL_ROLES = frozenset({"tool", "function", "ipython"})
# message parts that are a tool call or a tool's result (OpenAI, Anthropic, Gemini, GenAI parts)
TOOL_TYPES = frozenset({"tool_result", "tool_call_response", "function_response", "function_call_output",
                        "tool_call", "tool_use", "function_call", "function"})
TOOL_CONTAINERS = frozenset({"tool_calls", "function_call", "function", "functionCall", "functionResponse",
                             "function_response", "tool_use"})
TOOL_ARGUMENTS = frozenset({"arguments", "args", "parameters"})

# Facts (storage/facts.py) that hold a class's values (tests/test_privacy.py checks that each is a declared text
# fact); every other fact goes through the detectors.
FACT_CLASSES = {F.USER_TEXT: "transcript", F.AGENT_TEXT: "transcript", F.LLM_TEXT: "transcript",
                F.PROMPT_TEXT: "transcript", F.SUMMARY: "transcript", F.FROM_NUMBER: "phone",
                F.TO_NUMBER: "phone", F.RECORDING_URL: "recording"}
# Call-log events whose message (and ``text`` / ``content`` data, and log body) is what someone said, or a
# tool's payload.
EVENT_CLASSES = {
    "user.message_received": "transcript", "agent.message_sent": "transcript", "agent.started_speaking": "transcript",
    "agent.greeting_sent": "transcript", "gen_ai.user.message": "transcript", "gen_ai.assistant.message": "transcript",
    "gen_ai.system.message": "transcript", "gen_ai.choice": "transcript", "gen_ai.content.prompt": "transcript",
    "gen_ai.content.completion": "transcript", "gen_ai.client.inference.operation.details": "transcript",
    "gen_ai.tool.message": "tool", "integration.failed": "tool", "tool.transfer.failed": "tool",
}
# Keys of event data (derived events, log attributes) holding a class's values: ``error`` only on tool events.
EVENT_DATA_CLASSES = {"text": "transcript", "content": "transcript", "arguments": "tool", "result": "tool",
                      "error": "tool"}
MESSAGE_EVENTS = {"gen_ai.user.message": "transcript", "gen_ai.assistant.message": "transcript",
                  "gen_ai.system.message": "transcript", "gen_ai.choice": "transcript",
                  "gen_ai.tool.message": "tool"}
MESSAGE_EVENT_KEYS = frozenset({"content", "tool_calls", "message"})
