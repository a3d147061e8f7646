"""The call builder: one call's spans and log records on a relative timeline (ns from 0), the ground truth
of what the ledger must show, and ``finish``, which shifts the call into place and encodes it.

What the call contains is decided by the shape that drives the builder: collector/simulate/lifecycle.py (calls
that never talk: queued, ringing, declined, missed, invalid number), conversation.py (native voice-agent
conversations) and genai.py (calls instrumented with GenAI conventions only). ``expected`` lists the truth's
keys.
"""

from __future__ import annotations

import random
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector.simulate import encoding
from collector.simulate.model import (
    ERR, INFO, INTERNAL, WARN, DraftLog, DraftSpan, S, SimulatedCall, ms, phone_number, utc_datetime,
)
from collector.simulate.profiles import (
    AGENTS, GENAI_RESOURCES, NATIVE_RESOURCES, OLD_WORKER, SCOPE_EVENTS, SCOPE_NATIVE, SCOPE_OPENAI, Agent,
)

__all__ = ["CallBuilder", "SPARSE_ID_SHARE"]

SPARSE_ID_SHARE = 0.30                  # calls with call.id only on session and turn spans


class CallBuilder:
    """Builds one call on a relative timeline (ns from 0), then shifts it into place."""

    def __init__(self, r: random.Random, status: str, flavour: str) -> None:
        self.r = r
        self.status = status
        self.flavour = flavour
        self.trace_id = r.getrandbits(128).to_bytes(16, "big")
        self.spans: list[DraftSpan] = []
        self.logs: list[DraftLog] = []
        self.turns: list[dict[str, Any]] = []         # truth per turn, with "_span" (the turn span)
        self.tool_calls: list[dict[str, Any]] = []
        self.approvals: list[dict[str, Any]] = []
        self.transfer: dict[str, Any] | None = None
        self.session: DraftSpan | None = None
        self.status_source = "event"
        self.status_reason: str | None = None
        self.sip_code: int | None = None
        self.cost: float | None = None
        self.currency: str | None = None
        self.summary: str | None = None
        self.tags: list[str] | None = None
        self.extracted: dict[str, Any] | None = None
        self.recording_url: str | None = None
        self.greeting = False
        self.cut: int | None = None                    # active / ringing: nothing after this is sent
        self.ended_at: int | None = None
        self.started_at = 0
        worker = r.randrange(4)
        self.worker = worker
        self.old_sdk = worker == OLD_WORKER
        self.sparse_ids = r.random() < SPARSE_ID_SHARE
        self.call_id = ""
        self.agent = AGENTS[0]
        self.direction: str | None = None
        self.campaign: str | None = None
        self.from_number: str | None = None
        self.to_number: str | None = None
        self.llm: tuple[str, str, str, float, float, float] = self.agent.llms[0]
        self.stt: tuple[str, str, float] = self.agent.stts[0]
        self.tts: tuple[str, str, str, float] = self.agent.ttss[0]

    # -- primitives
    def sid(self) -> bytes:
        return (self.r.getrandbits(64) | 1).to_bytes(8, "big")

    def span(self, name: str, parent: DraftSpan | None, start: int, end: int, attrs: dict[str, Any], *,
             kind: int = INTERNAL, scope: InstrumentationScope = SCOPE_NATIVE) -> DraftSpan:
        s = DraftSpan(self.sid(), parent.span_id if parent else b"", name, kind, start, end, attrs,
                      parent.depth + 1 if parent else 0, scope)
        self.spans.append(s)
        return s

    def log(self, t: int, name: str, body: Any, attrs: dict[str, Any] | None = None, *, span: DraftSpan | None = None,
            severity: int = INFO, with_call_id: bool = True, traced: bool = True) -> DraftLog:
        data: dict[str, Any] = {}
        if with_call_id and self.flavour == "native":
            data["call.id"] = self.call_id
        data.update(attrs or {})
        rec = DraftLog(t, name, body, data, severity, span.span_id if span else b"", traced,
                       t + ms(self.r.uniform(1, 40)))
        self.logs.append(rec)
        return rec

    def call_attrs(self) -> dict[str, Any]:
        return {"call.direction": self.direction, "call.agent": self.agent.name, "call.campaign": self.campaign,
                "call.from": self.from_number, "call.to": self.to_number}

    # -- call identity
    def identity(self, direction: str, agent: Agent | None = None) -> None:
        r = self.r
        if agent is None:
            candidates = [a for a in AGENTS if any(d == direction for d, _ in a.directions)]
            agent = r.choice(candidates)
        self.agent, self.direction = agent, direction
        self.campaign = r.choice(agent.campaigns.get(direction, (None,)))
        if direction == "inbound":
            self.from_number, self.to_number = phone_number(r), agent.number
        elif direction == "outbound":
            self.from_number, self.to_number = agent.number, phone_number(r)
        self.call_id = f"call_{r.getrandbits(96):024x}"

    # -- after the call (every shape of call that ended)
    def webhooks(self, t: int) -> None:
        r = self.r
        if r.random() >= 0.9:
            return
        agent = self.agent
        holder = self.session if self.session in self.spans else None
        base = {"webhook.url": agent.webhook_url, "webhook.event": "call.ended",
                "webhook.id": f"wh_{r.getrandbits(48):012x}"}
        t += ms(r.uniform(30, 150))
        self.log(t, "webhook.queued", "Webhook queued", base, span=holder)
        roll = r.random()
        failures = 0 if roll < 0.85 else (r.randint(1, 2) if roll < 0.96 else 3)
        for attempt in range(1, 4):
            t += ms(r.uniform(5, 40)) if attempt == 1 else ms(1000 * 2 ** (attempt - 2) * r.uniform(0.9, 1.1))
            data = {**base, "webhook.attempt": attempt}
            self.log(t, "webhook.sent", f"POST {agent.webhook_url} (attempt {attempt})", data, span=holder)
            if attempt <= failures:
                code = r.choice([500, 502, 503, 504])
                t += ms(r.uniform(80, 3000))
                self.log(t, "webhook.response_failed", f"Webhook responded {code}",
                         {**data, "http.response.status_code": code, "http.duration_ms": round(r.uniform(80, 3000), 1)},
                         span=holder, severity=WARN)
                if attempt == 3:
                    self.log(t + ms(5), "webhook.retry_exhausted", "Webhook gave up after 3 attempts",
                             {**base, "webhook.attempts": 3}, span=holder, severity=ERR)
                continue
            t += ms(r.uniform(40, 400))
            self.log(t, "webhook.response_success", "Webhook delivered",
                     {**data, "http.response.status_code": r.choice([200, 200, 202, 204]),
                      "http.duration_ms": round(r.uniform(40, 400), 1)}, span=holder)
            break

    def finish(self, offset: int) -> SimulatedCall:
        for s in self.spans:
            s.start += offset
            s.end += offset
            s.events = [(t + offset, n, a) for t, n, a in s.events]
        for lg in self.logs:
            lg.time += offset
            lg.observed += offset
        if self.session is not None and self.session not in self.spans:
            self.session.start += offset
        cut = None if self.cut is None else self.cut + offset
        if cut is not None:
            sent = [s for s in self.spans if s.end <= cut]
            open_spans = [s for s in self.spans if s.end > cut and s.start <= cut]
            if self.session is not None and self.session not in self.spans:
                open_spans.append(self.session)
            logs = [lg for lg in self.logs if lg.time <= cut]
        else:
            sent, open_spans, logs = self.spans, [], self.logs
        sent_ids = {s.span_id for s in sent}
        sent.sort(key=lambda s: (s.end, -s.depth, s.start))
        logs.sort(key=lambda lg: lg.time)
        trace_requests = encoding.trace_requests(self.trace_id, self.resource(), sent)
        log_requests = encoding.log_requests(self.trace_id, self.resource(),
                                             SCOPE_OPENAI if self.flavour == "genai" else SCOPE_EVENTS, logs,
                                             event_name_attribute=self.old_sdk)
        expected = self.expected(sent, sent_ids, open_spans, logs, offset)
        return SimulatedCall(self.call_id, self.status, trace_requests, log_requests, expected)

    def resource(self) -> Resource:
        return (GENAI_RESOURCES if self.flavour == "genai" else NATIVE_RESOURCES)[self.worker]

    def expected(self, sent: list[DraftSpan], sent_ids: set[bytes], open_spans: list[DraftSpan],
                 logs: list[DraftLog], offset: int) -> dict[str, Any]:
        """Ground truth. Keys: call_id, trace_ids, flavour, status, status_source, status_reason, direction,
        campaign, agent, from, to, sip_code, started_at, ended_at, duration_s, turn_count, turns (dicts per
        ended turn span), interrupted_turns, interruption_count, tool_calls, tool_call_count, failed_tools,
        approvals, transfer, webhook_events, events (log event names in time order), log_event_style,
        call_id_on_all_spans, span_count, log_count, session_span_id, open_span_ids, greeting, cost, currency,
        summary, tags, extracted, recording_url."""
        turns = []
        for t in self.turns:
            if t["_span"].span_id not in sent_ids:
                continue
            turns.append({k: v for k, v in t.items() if not k.startswith("_") and k != "topic"})
        sent_turns = {t["number"] for t in turns}
        tool_calls = [tc for tc in self.tool_calls if bytes.fromhex(tc["span_id"]) in sent_ids]
        started_at = utc_datetime(self.started_at + offset)
        events = [lg.name for lg in logs]
        return {
            "call_id": self.call_id,
            "trace_ids": [] if (not self.spans and not any(lg.traced for lg in logs)) else [self.trace_id.hex()],
            "flavour": self.flavour,
            "status": self.status,
            "status_source": self.status_source,
            "status_reason": self.status_reason,
            "direction": self.direction,
            "campaign": self.campaign,
            "agent": self.agent.name,
            "from": self.from_number,
            "to": self.to_number,
            "sip_code": self.sip_code,
            "started_at": started_at,
            "ended_at": None if self.ended_at is None else utc_datetime(self.ended_at + offset),
            "duration_s": None if self.ended_at is None else round((self.ended_at - self.started_at) / S, 3),
            "turn_count": len(turns),
            "turns": turns,
            "interrupted_turns": [t["number"] for t in turns if t["interrupted"]],
            "interruption_count": sum(1 for t in turns if t["interrupted"]),
            "tool_calls": tool_calls,
            "tool_call_count": len(tool_calls),
            "failed_tools": [tc["tool_call_id"] for tc in tool_calls if tc["is_error"]],
            "approvals": [a for a in self.approvals if any(lg.attrs.get("gen_ai.tool.call.id") == a["tool_call_id"]
                                                           and lg.name != "integration.approval_requested" for lg in logs)],
            "transfer": self.transfer if self.transfer and bytes.fromhex(self.transfer["span_id"]) in sent_ids else None,
            "webhook_events": [e for e in events if e.startswith("webhook.")],
            "events": events,
            "log_event_style": "attribute" if self.old_sdk else "event_name",
            "call_id_on_all_spans": self.flavour == "native" and not self.sparse_ids,
            "span_count": len(sent),
            "log_count": len(logs),
            "session_span_id": self.session.span_id.hex() if self.session is not None else None,
            "open_span_ids": sorted(s.span_id.hex() for s in open_spans),
            "turns_seen": sorted({t["number"] for t in self.turns
                                  if t["_span"].span_id in sent_ids
                                  or any(s.span_id in sent_ids for s in t["_stage_spans"])} | sent_turns),
            "greeting": self.greeting,
            "cost": self.cost,
            "currency": self.currency,
            "summary": self.summary,
            "tags": self.tags,
            "extracted": self.extracted,
            "recording_url": self.recording_url if self.session and self.session.span_id in sent_ids else None,
        }


