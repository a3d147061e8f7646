"""Map stage helper: read chat message lists (OpenAI, Anthropic, Gemini, GenAI "parts") that LLM spans carry.

Used where a convention has no tool span (Pipecat native tracing, bare OpenAI instrumentations): the tool
calls of the current exchange are recovered from the next LLM request's input — the assistant's tool calls
and the tool results that follow the last user message — and a failed tool is recognized from its result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from collector.mappers.base import as_json_text, parse_json

__all__ = ["RecoveredTool", "recover_tools", "last_user_text", "result_error", "messages_of"]

# Frameworks that swallow a tool's exception tell the LLM in words (Pipecat: "The function `x` failed and
# returned no result."; LiveKit: "An internal error occurred").
_FAILED_TEXT = re.compile(r"\bfailed and returned no result\b|^an internal error occurred|^error\b|"
                          r"^(\w+)?(error|exception)\s*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RecoveredTool:
    tool_call_id: str
    name: str
    arguments: str | None
    result: str | None
    error: str | None


def messages_of(value: Any) -> list[dict[str, Any]]:
    parsed = parse_json(value)
    if isinstance(parsed, dict):
        parsed = parsed.get("messages") or parsed.get("items") or [parsed]
    return [m for m in parsed if isinstance(m, dict)] if isinstance(parsed, list) else []


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content or None
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in (None, "text", "input_text"):
                text = part.get("text") if part.get("text") is not None else part.get("content")
                if isinstance(text, str):
                    texts.append(text)
        return " ".join(t for t in texts if t) or None
    return None


def _is_tool_result_message(message: dict[str, Any]) -> bool:
    if message.get("role") in ("tool", "function"):
        return True
    for key in ("content", "parts"):
        parts = message.get(key)
        if isinstance(parts, list) and parts and all(
                isinstance(p, dict) and (p.get("type") in ("tool_result", "tool_call_response", "function_response")
                                         or "function_response" in p or "functionResponse" in p) for p in parts):
            return True
    return False


def _user_index(messages: list[dict[str, Any]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user" and not _is_tool_result_message(message):
            return index
    return -1


def last_user_text(value: Any) -> str | None:
    """The text of the last user message (what this LLM request answers)."""
    messages = messages_of(value)
    index = _user_index(messages)
    if index < 0:
        return None
    message = messages[index]
    return _text(message.get("content")) or _text(message.get("parts"))


def result_error(result: Any) -> str | None:
    """The error a tool result reports, if it reports one (``{"error": …}``, a failure sentence, …)."""
    parsed = parse_json(result)
    if isinstance(parsed, str):
        result = parsed
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if error not in (None, False, ""):
            return error if isinstance(error, str) else as_json_text(error)
        status = parsed.get("status")
        if isinstance(status, str) and status.lower() in ("error", "failed", "failure"):
            return as_json_text(parsed.get("message") or parsed.get("detail") or parsed)
        return None
    if isinstance(result, str):
        text = result.strip().strip('"').strip()
        if parsed is None and text[:1] in ("{", "["):
            try:
                return result_error(json.loads(text))
            except ValueError:
                pass
        if _FAILED_TEXT.search(text):
            return text
    return None


def _arguments(value: Any) -> str | None:
    return as_json_text(value) if value is not None else None


def recover_tools(value: Any) -> list[RecoveredTool]:
    """Tool calls answered after the last user message of an LLM request's input, with their results."""
    messages = messages_of(value)
    start = _user_index(messages) + 1
    calls: dict[str, tuple[str, str | None]] = {}
    order: list[str] = []
    results: dict[str, tuple[str | None, bool]] = {}
    for message in messages[start:]:
        role = message.get("role")
        # OpenAI chat: assistant.tool_calls[] / role=tool {tool_call_id, content}
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                function = call.get("function") if isinstance(call.get("function"), dict) else call
                key = str(call.get("id") or call.get("call_id") or f"call_{len(order)}")
                calls[key] = (str(function.get("name") or "unknown"), _arguments(function.get("arguments")))
                order.append(key)
        if role in ("tool", "function") and (message.get("tool_call_id") or message.get("id")):
            key = str(message.get("tool_call_id") or message.get("id"))
            results[key] = (as_json_text(message.get("content")), False)
        # Anthropic content blocks / GenAI parts / Gemini parts
        for field in ("content", "parts"):
            parts = message.get(field)
            if not isinstance(parts, list):
                continue
            for part in parts:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind in ("tool_use", "tool_call"):
                    key = str(part.get("id") or f"call_{len(order)}")
                    calls[key] = (str(part.get("name") or "unknown"),
                                  _arguments(part.get("input", part.get("arguments"))))
                    order.append(key)
                elif kind in ("tool_result", "tool_call_response"):
                    key = str(part.get("tool_use_id") or part.get("id") or "")
                    if key:
                        content = part.get("content", part.get("response", part.get("result")))
                        results[key] = (as_json_text(content), bool(part.get("is_error")))
                elif "function_call" in part or "functionCall" in part:
                    call = part.get("function_call") or part.get("functionCall") or {}
                    name = str(call.get("name") or "unknown")
                    key = str(call.get("id") or name)
                    calls[key] = (name, _arguments(call.get("args")))
                    order.append(key)
                elif "function_response" in part or "functionResponse" in part:
                    response = part.get("function_response") or part.get("functionResponse") or {}
                    key = str(response.get("id") or response.get("name") or "")
                    if key:
                        results[key] = (as_json_text(response.get("response")), False)
    tools = []
    for key in dict.fromkeys(order):
        if key not in results:
            continue   # asked for, not answered yet: the span that carries the answer reports it
        name, arguments = calls[key]
        result, flagged = results[key]
        error = result_error(result)
        if flagged and error is None:
            error = result or "tool failed"
        tools.append(RecoveredTool(key, name, arguments, None if error is not None and result == error else result,
                                   error))
    return tools
