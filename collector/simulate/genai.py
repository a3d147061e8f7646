"""Calls instrumented with the GenAI semantic conventions only (no native attributes at all).

Completed or failed only. Root ``invoke_workflow voice_session`` (gen_ai.operation.name=invoke_workflow, as
LiveKit ≥ 1.8 does; its end ends the call), per turn ``invoke_agent <agent>`` with gen_ai.conversation.id
(the call id) and gen_ai.agent.name, children ``chat <model>`` (new keys gen_ai.provider.name /
usage.input_tokens or old gen_ai.system / usage.prompt_tokens; gen_ai.response.time_to_first_chunk in
seconds) and ``execute_tool <name>``; log events ``gen_ai.client.inference.operation.details`` (event_name)
or old ``gen_ai.user.message`` / ``gen_ai.choice`` (event.name attribute, kvlist bodies).
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from collector.simulate.builder import CallBuilder
from collector.simulate.model import CLIENT, INTERNAL, MS, S, DraftSpan, lognormal, ms, pick_weighted
from collector.simulate.profiles import AGENTS, GENAI_RESOURCES, SCOPE_AGENT, SCOPE_OPENAI, TOOL_ERRORS, TOOLS

__all__ = ["build_genai_call"]


def build_genai_call(b: CallBuilder, failed: bool) -> None:
    r = b.r
    agent = r.choice(AGENTS)
    b.agent = agent
    b.direction = None
    b.call_id = str(uuid.UUID(int=r.getrandbits(128), version=4))
    b.llm = pick_weighted(r, [(x, x[5]) for x in agent.llms])
    provider, model, response_model, ttft_median, tps, _w = b.llm
    new_keys = r.random() < 0.5
    conv_everywhere = r.random() < 0.5
    b.worker = r.randrange(len(GENAI_RESOURCES))
    b.old_sdk = not new_keys
    conv = {"gen_ai.conversation.id": b.call_id}
    root = DraftSpan(b.sid(), b"", "invoke_workflow voice_session", INTERNAL, 0, 0, {
        "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "voice_session",
        "gen_ai.agent.name": agent.name, **conv}, 0, SCOPE_AGENT)
    b.session = root
    b.started_at = 0
    cursor = ms(r.uniform(300, 800))
    n = r.randint(2, 8)
    script = [*r.sample(agent.exchanges, min(n - 1, len(agent.exchanges))), (*agent.closing, None, "closing")]
    while len(script) < n:
        script.insert(0, r.choice(agent.exchanges))
    for number, (user_text, agent_text, tool_name, topic) in enumerate(script[:n], start=1):
        final = number == n
        user_stop = cursor + ms(len(user_text.split()) * r.uniform(260, 360) + 250)
        ia_start = user_stop + ms(r.uniform(150, 400))
        ia = b.span(f"invoke_agent {agent.name}", root, ia_start, 0, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent.name, **conv,
            "gen_ai.provider.name" if new_keys else "gen_ai.system": provider, "gen_ai.request.model": model,
        }, scope=SCOPE_AGENT)
        history = 700 + 80 * number
        spoken = agent_text
        first_ttft: float | None = None
        t = ia_start + ms(r.uniform(2, 8))
        in_total = out_total = 0
        if tool_name:
            tool = TOOLS[tool_name]
            c1, ttft = _chat(b, ia, t, history, r.randint(18, 40), None, new_keys, conv_everywhere, "tool_calls")
            first_ttft = ttft
            in_total += history
            out_total += c1.attrs.get("gen_ai.usage.output_tokens", c1.attrs.get("gen_ai.usage.completion_tokens", 0))
            t = c1.end + ms(r.uniform(2, 10))
            call_key = "call_" + "".join(r.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=24))
            args = tool.args(r)
            tool_end = t + ms(lognormal(r, tool.median_ms, 0.5, 30, 8000))
            attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool.name,
                     "gen_ai.tool.type": "function", "gen_ai.tool.call.id": call_key,
                     "gen_ai.tool.call.arguments": json.dumps(args), **(conv if conv_everywhere else {})}
            tspan = b.span(f"execute_tool {tool.name}", ia, t, tool_end, attrs, scope=SCOPE_AGENT)
            tool_failed = r.random() < 0.12
            error = None
            if tool_failed:
                error, message = r.choice(TOOL_ERRORS)
                tspan.fail(message, error)
                spoken = agent.tool_failed_text
            else:
                attrs["gen_ai.tool.call.result"] = json.dumps(tool.result(r, args))
            b.tool_calls.append({"tool_call_id": call_key, "tool_name": tool.name, "turn_number": number,
                                 "is_error": tool_failed, "error": error, "span_id": tspan.span_id.hex()})
            t = tool_end + ms(r.uniform(5, 20))
            history += 90
        out_tokens = math.ceil(len(spoken.split()) * 1.35) + 1
        chat, ttft = _chat(b, ia, t, history, out_tokens, spoken, new_keys, conv_everywhere, "stop",
                           fail=failed and final)
        in_total += history
        out_total += out_tokens
        if first_ttft is None and not (failed and final):
            first_ttft = ttft  # a failed request reports no time to first chunk: the turn has no TTFT
        ia.end = chat.end + ms(r.uniform(1, 3))
        if failed and final:
            ia.fail("rate limited by provider", "429")
        b.turns.append({"_span": ia, "number": number, "user_text": None,
                        "agent_text": None if failed and final else spoken, "interrupted": False,
                        "stt_ms": None, "llm_ttft_ms": first_ttft, "tts_ttfb_ms": None,
                        "voice_to_voice_ms": None, "reported_v2v_ms": None, "eou_ms": None,
                        "llm_provider": provider, "llm_model": response_model, "stt_provider": None,
                        "tts_provider": None, "input_tokens": in_total,
                        "output_tokens": None if failed and final else out_total, "topic": topic,
                        "_stage_spans": []})
        cursor = chat.start + ms(ttft + 300 + len(spoken) * r.uniform(55, 70) + lognormal(r, 700, 0.5, 250, 4000))
        if failed and final:
            break
    root.end = max(s.end for s in b.spans) + ms(r.uniform(100, 500))
    if failed:
        message = f"{provider} rate limit exceeded (429)"
        root.fail(message, "429")
        b.status_reason = message
    b.spans.append(root)
    b.status_source = "session_span"
    b.ended_at = root.end


def _chat(b: CallBuilder, parent: DraftSpan, start: int, input_tokens: int, output_tokens: int, text: str | None,
          new_keys: bool, conv_everywhere: bool, finish: str, *, fail: bool = False) -> tuple[DraftSpan, float]:
    r = b.r
    provider, model, response_model, ttft_median, tps, _w = b.llm
    ttft_ns = ms(lognormal(r, ttft_median, 0.45, 90, 6000))
    end = start + ttft_ns + ms(output_tokens / tps * 1000)
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                             **({"gen_ai.conversation.id": b.call_id} if conv_everywhere else {})}
    if new_keys:
        attrs.update({"gen_ai.provider.name": provider, "gen_ai.usage.input_tokens": input_tokens})
    else:
        attrs.update({"gen_ai.system": provider, "gen_ai.usage.prompt_tokens": input_tokens})
    if fail:
        end = start + ms(r.uniform(200, 900))
        s = b.span(f"chat {model}", parent, start, end, attrs, kind=CLIENT, scope=SCOPE_OPENAI)
        s.fail("Error code: 429 - rate_limit_exceeded", "429")
        return s, round(ttft_ns / MS, 3)
    attrs.update({"gen_ai.response.model": response_model, "gen_ai.response.finish_reasons": [finish],
                  "gen_ai.response.time_to_first_chunk": ttft_ns / S,
                  "gen_ai.usage.output_tokens" if new_keys else "gen_ai.usage.completion_tokens": output_tokens})
    if text and new_keys:
        attrs["gen_ai.output.messages"] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": finish}])
    s = b.span(f"chat {model}", parent, start, end, attrs, kind=CLIENT, scope=SCOPE_OPENAI)
    if new_keys:
        b.log(end, "gen_ai.client.inference.operation.details", f"chat {model}", {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
            "gen_ai.response.model": response_model,
            "gen_ai.output.messages": attrs.get("gen_ai.output.messages", "[]"),
        }, span=s)
    else:
        b.log(start, "gen_ai.user.message", {"content": "(redacted)"}, {"gen_ai.system": provider}, span=s)
        if text:
            b.log(end, "gen_ai.choice",
                  {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}},
                  {"gen_ai.system": provider}, span=s)
    return s, round(ttft_ns / MS, 3)


# -- output
