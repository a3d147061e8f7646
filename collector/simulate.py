"""Traffic source: a realistic, seeded voice-agent OTLP generator and sender (``callscope simulate``, bench/).

Nothing here goes through the OTel SDK: protobuf messages are built directly, so tens of thousands of spans
are generated and pre-encoded in seconds. Everything but absolute times is a pure function of ``seed``;
times are relative to ``start`` (default: now minus ``WINDOW``), so a fixed ``start`` makes it byte-exact.

What a call looks like (docs/conventions.md is the contract; design.md §4 the statuses, §5 the events):

* Three agents with their own models, voices, tools and scripts: ``sarah-support`` (ISP support, mostly
  inbound, OpenAI gpt-4o-mini / gpt-4o), ``max-sales`` (outbound campaigns, gpt-4o / claude), ``ivy-booking``
  (dental bookings and reminder campaigns, Groq llama). Directions inbound / outbound / web, campaigns (some
  calls have none), E.164 ``call.from`` / ``call.to`` for phone calls (555-01xx fictional numbers).
* Statuses in fixed proportions (completed 70 %, failed 8 %, missed 6 %, declined 5 %, active 5 %,
  ringing 3 %, queued 3 %; with ``count >= 7`` every status occurs at least once). ``SimulatedCall.status`` is
  what the ledger must show; ``expected["status_source"]`` says which signal decides it:

  - ``completed``: session span ``call`` (voice.stage=session) ended OK, with ``call.completed`` log for most
    calls (source ``event``), explicit ``call.status="completed"`` on some session spans (``call.status``),
    else only the span (``session_span``). Phone calls carry non-terminal ``call.ringing`` / ``call.answered``
    events before, and often ``sip.response.code=200``.
  - ``failed``: an LLM provider error (llm span ERROR + exception span event, session ERROR, ``call.failed``
    log with ``call.status_reason``), an invalid number (SIP 404/484 session span + ``call.failed`` log), or a
    pipeline crash (tts span ERROR, session span ERROR only: source ``session_span``, reason = status message).
  - ``declined`` (SIP 603/486) and ``missed`` (480/408 outbound, 487 inbound caller hang-up after waiting):
    either a short session span carrying ``sip.response.code`` (status ERROR on some, so SIP must win over
    the span status; source ``sip``) or ``call.declined`` / ``call.missed`` log records with no spans.
  - ``active``: a conversation cut at "now": ended spans and past logs are sent, the session span and any
    unfinished turn/stage span are not (``expected["open_span_ids"]``). Call metadata then only exists on
    the lifecycle log records (``call.*`` attributes).
  - ``ringing``: ``call.ringing`` (after ``call.queued`` for some) and nothing else; ``queued``: one
    ``call.queued`` log record with ``call.status="queued"`` and no trace context (correlate by ``call.id``).

* Conversations (2–8 turns; outbound and half the others open with an agent greeting turn that has only a
  tts child). Per user turn: ``turn`` span (turn.number, turn.user_text, turn.agent_text, turn.interrupted on
  some, turn.v2v_ms / turn.eou_ms on some) starting when the user starts speaking, children
  ``stt`` [user stopped → final transcript, lognormal median 250 ms], ``llm`` (5–30 ms after STT final,
  llm.ttft_ms lognormal by model, gen_ai.* provider/model/usage, llm.output), optional tool
  ``execute_tool <name>`` between two llm spans (gen_ai.tool.*; ~12 % fail with status ERROR + error.type;
  sensitive tools ask the contact first: integration.approval_requested → granted / denied), ``tts``
  (15–120 ms after the first token, tts.ttfb_ms lognormal by provider around 180 ms, tts.text,
  tts.characters). Interrupted turns cut the agent's audio and the user's next turn starts early.
  A few calls end in a ``transfer`` span (voice.stage=transfer, transfer.target) that succeeds or fails, some
  with the agent's hang-up tool. The root ``call`` span carries call.id/direction/campaign/agent/from/to,
  recording url, summary, tags (string array), extracted (JSON string) and sometimes call.cost/currency.
  ``call.id`` is on every span for 70 % of calls; for the rest only on the session and turn spans, so stage
  spans must be correlated by trace id (they then carry no turn.number either).
* Log records (trace_id / span_id of the call and the relevant span, body a short message, severity INFO /
  WARNING=13 / ERROR=17): lifecycle, user./agent. speaking, agent.interrupted, path.transition (flow agents),
  tool.transfer.* / transfer.*, tool.hangup.*, integration.approval_*, and post-call webhook deliveries
  (webhook.queued, webhook.sent, webhook.response_success | webhook.response_failed with retries,
  webhook.retry_exhausted for a few). Calls served by the old worker (one of four) put the event name in the
  ``event.name`` attribute instead of ``LogRecord.event_name``.
* ~15 % "GenAI" calls (completed / failed only) with no native attributes at all: root
  ``invoke_workflow voice_session`` (gen_ai.operation.name=invoke_workflow, as LiveKit ≥ 1.8 does; its end
  ends the call), per turn ``invoke_agent <agent>`` with gen_ai.conversation.id (the call id) and
  gen_ai.agent.name, children ``chat <model>`` (new keys gen_ai.provider.name / usage.input_tokens or old
  gen_ai.system / usage.prompt_tokens; gen_ai.response.time_to_first_chunk in seconds) and
  ``execute_tool <name>``; log events ``gen_ai.client.inference.operation.details`` (event_name) or old
  ``gen_ai.user.message`` / ``gen_ai.choice`` (event.name attribute, kvlist bodies).

Per call, spans are exported in end-time order in 5 s windows like a BatchSpanProcessor, so children come
before parents and the root span is last; ``encode_requests`` packs many calls per request the same way.
``expected`` holds the ground truth for tests (see ``_expected`` for its keys).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

if TYPE_CHECKING:
    from collector.tls import ClientTls

__all__ = [
    "STATUSES", "WINDOW", "SimulatedCall", "SimulationReport", "generate_calls", "encode_requests",
    "run_simulation",
]

STATUSES = ("queued", "ringing", "active", "completed", "failed", "declined", "missed")
WINDOW = timedelta(hours=3)
"""Calls are spread over ``[start, start + WINDOW]``; open calls sit at its end ("now")."""

_STATUS_SHARES = {"completed": 0.70, "failed": 0.08, "missed": 0.06, "declined": 0.05, "active": 0.05,
                  "ringing": 0.03, "queued": 0.03}
_GENAI_SHARE = 0.15 / (0.70 + 0.08)      # of completed / failed calls → ~15 % of all calls
_SPARSE_ID_SHARE = 0.30                  # calls with call.id only on session and turn spans
_EXPORT_WINDOW_NS = 5_000_000_000        # BatchSpanProcessor / BatchLogRecordProcessor schedule delay
_MAX_EXPORT_BATCH = 512
_MS = 1_000_000
_S = 1_000_000_000

_INTERNAL, _SERVER, _CLIENT = Span.SPAN_KIND_INTERNAL, Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
_OK, _ERROR = Status.STATUS_CODE_UNSET, Status.STATUS_CODE_ERROR
_INFO, _WARN, _ERR = 9, 13, 17
_SEVERITY_TEXT = {_INFO: "INFO", _WARN: "WARN", _ERR: "ERROR"}


# --------------------------------------------------------------------------------------------- public types

@dataclass(frozen=True)
class SimulatedCall:
    """One generated call: the OTLP requests to send (in order) and what the ledger must show."""

    call_id: str
    status: str
    trace_requests: tuple[ExportTraceServiceRequest, ...]
    log_requests: tuple[ExportLogsServiceRequest, ...]
    expected: dict[str, Any]

    @property
    def span_count(self) -> int:
        return sum(len(ss.spans) for r in self.trace_requests for rs in r.resource_spans for ss in rs.scope_spans)

    @property
    def log_count(self) -> int:
        return sum(len(sl.log_records) for r in self.log_requests for rl in r.resource_logs for sl in rl.scope_logs)


@dataclass(frozen=True)
class SimulationReport:
    """What ``run_simulation`` sent. ``requests`` counts accepted exports, ``retries`` the extra attempts."""

    endpoint: str
    transport: str               # "grpc" | "http"
    calls: int
    spans: int
    log_records: int
    requests: int
    retries: int
    rejected_spans: int          # from partial_success
    rejected_log_records: int
    failed_requests: int         # permanent errors or retries given up
    elapsed_s: float
    errors: tuple[str, ...] = ()  # the first few failure messages

    @property
    def rejected(self) -> int:
        return self.rejected_spans + self.rejected_log_records

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ------------------------------------------------------------------------------------------ agent profiles

@dataclass(frozen=True)
class _Tool:
    name: str
    median_ms: float
    args: Callable[[random.Random], dict[str, Any]]
    result: Callable[[random.Random, dict[str, Any]], dict[str, Any]]
    needs_approval: bool = False


@dataclass(frozen=True)
class _Agent:
    name: str
    number: str
    directions: tuple[tuple[str, float], ...]
    campaigns: dict[str, tuple[str | None, ...]]
    llms: tuple[tuple[str, str, str, float, float, float], ...]   # provider, model, response model, ttft, tok/s, w
    stts: tuple[tuple[str, str, float], ...]                      # provider, model, median ms
    ttss: tuple[tuple[str, str, str, float], ...]                 # provider, model, voice, ttfb median ms
    greeting: str
    exchanges: tuple[tuple[str, str, str | None, str], ...]       # user, agent, tool, topic
    closing: tuple[str, str]
    denied_text: str
    tool_failed_text: str
    transfer_ask: tuple[str, str] | None
    flow: tuple[str, ...]                                         # conversational path nodes, () = none
    webhook_url: str
    role: str


def _tool(name: str, median_ms: float, args: Callable[[random.Random], dict[str, Any]],
          result: Callable[[random.Random, dict[str, Any]], dict[str, Any]], needs_approval: bool = False) -> _Tool:
    return _Tool(name, median_ms, args, result, needs_approval)


_TOOLS = {t.name: t for t in (
    _tool("check_outage", 320, lambda r: {"zip_code": r.choice(["94107", "10001", "60614", "73301"])},
          lambda r, a: {"outage": True, "zip_code": a["zip_code"], "eta": "16:00", "ticket": f"OUT-{r.randint(1000, 9999)}"}),
    _tool("lookup_account", 180, lambda r: {"account_number": f"{r.randint(100000, 999999)}"},
          lambda r, a: {"account_number": a["account_number"], "name": "Jordan Miller", "plan": "Gigabit", "balance": 84.5}),
    _tool("issue_refund", 450, lambda r: {"amount": 12.0, "currency": "USD", "reason": "outage credit"},
          lambda r, a: {"credit_id": f"CR-{r.randint(10000, 99999)}", "amount": a["amount"], "status": "applied"}, True),
    _tool("create_ticket", 380, lambda r: {"category": "technician_visit", "priority": r.choice(["normal", "high"])},
          lambda r, a: {"ticket_id": f"T-{r.randint(10000, 99999)}", "sla_hours": 24}),
    _tool("get_lead", 150, lambda r: {"phone": "+14155550142"},
          lambda r, a: {"lead_id": f"L-{r.randint(1000, 9999)}", "company": "Globex", "source": "webinar"}),
    _tool("send_pricing_email", 600, lambda r: {"template": "growth-plan", "to": "buyer@globex.example"},
          lambda r, a: {"message_id": f"<{r.getrandbits(40):x}@mail.example>", "queued": True}),
    _tool("check_availability", 260, lambda r: {"days": 5, "duration_min": 30},
          lambda r, a: {"slots": ["Thu 14:00", "Fri 10:00"]}),
    _tool("schedule_demo", 520, lambda r: {"slot": "Thu 14:00", "attendee": "buyer@globex.example"},
          lambda r, a: {"event_id": f"EV-{r.randint(1000, 9999)}", "slot": a["slot"]}),
    _tool("find_slots", 240, lambda r: {"service": "cleaning", "within_days": 7},
          lambda r, a: {"slots": ["Mon 09:00", "Wed 15:00"], "provider": "Dr. Patel"}),
    _tool("book_appointment", 480, lambda r: {"slot": "Wed 15:00", "service": "cleaning", "patient_id": f"P-{r.randint(100, 999)}"},
          lambda r, a: {"appointment_id": f"A-{r.randint(10000, 99999)}", "confirmed": True}),
    _tool("cancel_appointment", 410, lambda r: {"appointment_id": f"A-{r.randint(10000, 99999)}"},
          lambda r, a: {"cancelled": True, "appointment_id": a["appointment_id"]}, True),
    _tool("send_sms_confirmation", 700, lambda r: {"to": "+12125550177", "template": "booking"},
          lambda r, a: {"sid": f"SM{r.getrandbits(64):016x}", "status": "queued"}),
    _tool("lookup_patient", 210, lambda r: {"name": "Priya Shah", "dob": "1988-03-03"},
          lambda r, a: {"patient_id": f"P-{r.randint(100, 999)}", "found": True}),
)}

_TOOL_ERRORS = (("timeout", "tool call timed out after 5s"), ("http_500", "upstream returned HTTP 500"),
                ("tool_error", "record not found"))

_AGENTS = (
    _Agent(
        name="sarah-support", number="+18005550101",
        directions=(("inbound", 0.7), ("web", 0.3)),
        campaigns={"inbound": (None, None, None, "support-hotline"), "web": (None, "website-widget"),
                   "outbound": ("outage-callbacks",)},
        llms=(("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 380, 95, 0.7),
              ("openai", "gpt-4o", "gpt-4o-2024-08-06", 560, 70, 0.3)),
        stts=(("deepgram", "nova-3", 240),),
        ttss=(("cartesia", "sonic-2", "warm-female", 150), ("elevenlabs", "eleven_flash_v2_5", "Rachel", 230)),
        greeting="Hi, this is Sarah from Northwind Fiber support. How can I help you today?",
        exchanges=(
            ("Hi, my internet has been dropping out since this morning.",
             "There is a known outage in your area; technicians expect it fixed by 4 PM.", "check_outage", "outage"),
            ("Can you look up my account? The number is 4 4 7 1 9 2.",
             "Thanks, I found your account under Jordan Miller. You're on the Gigabit plan.", "lookup_account", "account"),
            ("Why is my bill higher this month?",
             "Your promotional discount ended on the first, which added fifteen dollars.", None, "billing"),
            ("Can I get a refund for the days I was offline?",
             "I've applied a credit of twelve dollars to your next bill.", "issue_refund", "refund"),
            ("The router light is blinking orange.",
             "An orange light usually means no signal. Please unplug the router for thirty seconds and plug it back in.",
             None, "router"),
            ("Okay, I restarted it, and it's green now.",
             "Great, that means the connection is back. Is there anything else I can help with?", None, "router"),
            ("Can you open a ticket for a technician visit?",
             "I've opened a ticket; a technician will call you within 24 hours.", "create_ticket", "technician"),
        ),
        closing=("No, that's all, thank you.", "You're welcome, have a great day!"),
        denied_text="No problem, I won't apply the credit.",
        tool_failed_text="I'm having trouble reaching that system right now; I'll make a note and follow up.",
        transfer_ask=("Can I talk to a real person, please?", "Of course, I'm transferring you to a specialist now."),
        flow=(), webhook_url="https://hooks.northwind.example/callscope", role="Support call",
    ),
    _Agent(
        name="max-sales", number="+14155550188",
        directions=(("outbound", 0.85), ("web", 0.15)),
        campaigns={"outbound": ("q3-renewals", "spring-promo", "webinar-followup"), "web": (None, "pricing-page"),
                   "inbound": (None,)},
        llms=(("openai", "gpt-4o", "gpt-4o-2024-08-06", 560, 70, 0.6),
              ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", 620, 80, 0.4)),
        stts=(("deepgram", "nova-3", 240), ("assemblyai", "universal-streaming", 300)),
        ttss=(("elevenlabs", "eleven_flash_v2_5", "Adam", 230),),
        greeting="Hi, this is Max from Acme CRM. Do you have a minute to talk about your team's sales workflow?",
        exchanges=(
            ("Sure, what's this about?",
             "We help sales teams cut admin work by automating follow-ups. How many reps are on your team?", None, "intro"),
            ("Is this about the webinar last week?",
             "Yes, I see you attended our pipeline automation webinar on Tuesday.", "get_lead", "webinar"),
            ("We have about twenty reps.",
             "Got it. For teams of twenty, most customers pick our Growth plan.", None, "sizing"),
            ("What does it cost?",
             "The Growth plan is forty-nine dollars per user per month, billed annually.", None, "pricing"),
            ("Can you send me the pricing by email?",
             "Done, I've sent the pricing sheet to your work email.", "send_pricing_email", "pricing"),
            ("Could we set up a demo?",
             "I have Thursday at 2 PM or Friday at 10 AM, which works better?", "check_availability", "demo"),
            ("Thursday at two works.", "Perfect, you're booked for a demo Thursday at 2 PM.", "schedule_demo", "demo"),
            ("We already use another CRM.",
             "Many of our customers switched from other tools; we migrate your data for free.", None, "objection"),
        ),
        closing=("Sounds good, thanks.", "Thanks for your time, talk to you soon!"),
        denied_text="Understood, I won't do that.",
        tool_failed_text="Sorry, our system is slow right now; I'll email you the details instead.",
        transfer_ask=("Can I speak with your account executive?", "Sure, let me connect you with our account executive."),
        flow=("intro", "qualify", "pitch", "book_demo", "wrap_up"),
        webhook_url="https://crm.acme.example/webhooks/voice", role="Sales call",
    ),
    _Agent(
        name="ivy-booking", number="+12125550123",
        directions=(("inbound", 0.5), ("outbound", 0.2), ("web", 0.3)),
        campaigns={"inbound": (None,), "outbound": ("appointment-reminders",), "web": (None,)},
        llms=(("groq", "llama-3.3-70b-versatile", "llama-3.3-70b-versatile", 210, 250, 0.8),
              ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 380, 95, 0.2)),
        stts=(("deepgram", "nova-3", 240),),
        ttss=(("cartesia", "sonic-2", "friendly-receptionist", 150),),
        greeting="Hello, you've reached Bright Smile Dental, this is Ivy. How can I help?",
        exchanges=(
            ("I'd like to book a cleaning.",
             "The next openings are Monday at 9 AM or Wednesday at 3 PM.", "find_slots", "booking"),
            ("Wednesday at three, please.",
             "You're booked for a cleaning on Wednesday at 3 PM with Dr. Patel.", "book_appointment", "booking"),
            ("Can you send me a text confirmation?",
             "Sure, I've sent a confirmation text to your phone.", "send_sms_confirmation", "confirmation"),
            ("I need to cancel my appointment on Friday.",
             "I've cancelled your Friday appointment. Would you like to rebook?", "cancel_appointment", "cancellation"),
            ("Do you take Delta Dental insurance?", "Yes, we're in network with Delta Dental.", None, "insurance"),
            ("What's your address?", "We're at 120 Market Street, second floor.", None, "directions"),
            ("My name is Priya Shah, born March third, 1988.",
             "Thank you Priya, I found your file.", "lookup_patient", "identification"),
        ),
        closing=("That's everything, thanks.", "You're welcome, see you soon!"),
        denied_text="Okay, I'll keep the appointment as it is.",
        tool_failed_text="I'm sorry, the scheduling system isn't responding; our front desk will call you back.",
        transfer_ask=None,
        flow=("greeting", "identify_patient", "schedule", "confirm", "goodbye"),
        webhook_url="https://api.brightsmile.example/voice/events", role="Booking call",
    ),
)


# ----------------------------------------------------------------------------------------------- resources

def _attrs(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in values.items() if v is not None]


def _any(v: Any) -> AnyValue:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[_any(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=_attrs(v)))
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    raise TypeError(f"unsupported attribute value {v!r}")


def _worker_resource(i: int) -> Resource:
    old = i == 3
    return Resource(attributes=_attrs({
        "service.name": "voice-agent", "service.namespace": "voice", "service.version": "2.9.1" if old else "2.14.0",
        "service.instance.id": f"voice-worker-{i}", "host.name": f"voice-worker-{i}",
        "deployment.environment.name": "production", "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.22.0" if old else "1.27.0",
    }))


_NATIVE_RESOURCES = tuple(_worker_resource(i) for i in range(4))
_OLD_WORKER = 3            # its SDK puts the log event name in the ``event.name`` attribute
_GENAI_RESOURCES = tuple(Resource(attributes=_attrs({
    "service.name": "assistant-api", "service.version": "1.4.0", "service.instance.id": f"assistant-api-{i}",
    "deployment.environment.name": "production", "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.27.0",
})) for i in range(2))
_SCOPE_NATIVE = InstrumentationScope(name="voice-platform", version="2.14.0")
_SCOPE_EVENTS = InstrumentationScope(name="voice-platform.events", version="2.14.0")
_SCOPE_AGENT = InstrumentationScope(name="voice-assistant.agent", version="1.4.0")
_SCOPE_OPENAI = InstrumentationScope(name="opentelemetry.instrumentation.openai_v2", version="2.1b0")


# ------------------------------------------------------------------------------------------- call builder

class _Sp:
    __slots__ = ("span_id", "parent", "name", "kind", "start", "end", "attrs", "status", "message", "events",
                 "depth", "scope")

    def __init__(self, span_id: bytes, parent: bytes, name: str, kind: int, start: int, end: int,
                 attrs: dict[str, Any], depth: int, scope: InstrumentationScope) -> None:
        self.span_id, self.parent, self.name, self.kind = span_id, parent, name, kind
        self.start, self.end, self.attrs, self.depth, self.scope = start, end, attrs, depth, scope
        self.status, self.message = _OK, ""
        self.events: list[tuple[int, str, dict[str, Any]]] = []

    def fail(self, message: str, error_type: str | None = None) -> None:
        self.status, self.message = _ERROR, message
        if error_type:
            self.attrs["error.type"] = error_type


class _Lg:
    __slots__ = ("time", "name", "body", "attrs", "severity", "span_id", "traced", "observed")

    def __init__(self, t: int, name: str, body: Any, attrs: dict[str, Any], severity: int, span_id: bytes,
                 traced: bool, observed: int) -> None:
        self.time, self.name, self.body, self.attrs, self.severity = t, name, body, attrs, severity
        self.span_id, self.traced, self.observed = span_id, traced, observed


def _lognormal(r: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, r.lognormvariate(math.log(median), sigma)))


def _ms(value: float) -> int:
    return int(round(value * _MS))


def _pick_weighted(r: random.Random, pairs: Sequence[tuple[Any, float]]) -> Any:
    return r.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def _phone(r: random.Random) -> str:
    return f"+1{r.choice(['415', '212', '312', '617', '646', '737', '206', '305'])}5550{r.randint(100, 199)}"


class _CallBuilder:
    """Builds one call on a relative timeline (ns from 0), then shifts it into place."""

    def __init__(self, r: random.Random, status: str, flavour: str) -> None:
        self.r = r
        self.status = status
        self.flavour = flavour
        self.trace_id = r.getrandbits(128).to_bytes(16, "big")
        self.spans: list[_Sp] = []
        self.logs: list[_Lg] = []
        self.turns: list[dict[str, Any]] = []         # truth per turn, with "_span" (the turn span)
        self.tool_calls: list[dict[str, Any]] = []
        self.approvals: list[dict[str, Any]] = []
        self.transfer: dict[str, Any] | None = None
        self.session: _Sp | None = None
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
        self.old_sdk = worker == _OLD_WORKER
        self.sparse_ids = r.random() < _SPARSE_ID_SHARE
        self.call_id = ""
        self.agent = _AGENTS[0]
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

    def span(self, name: str, parent: _Sp | None, start: int, end: int, attrs: dict[str, Any], *,
             kind: int = _INTERNAL, scope: InstrumentationScope = _SCOPE_NATIVE) -> _Sp:
        s = _Sp(self.sid(), parent.span_id if parent else b"", name, kind, start, end, attrs,
                parent.depth + 1 if parent else 0, scope)
        self.spans.append(s)
        return s

    def log(self, t: int, name: str, body: Any, attrs: dict[str, Any] | None = None, *, span: _Sp | None = None,
            severity: int = _INFO, with_call_id: bool = True, traced: bool = True) -> _Lg:
        data: dict[str, Any] = {}
        if with_call_id and self.flavour == "native":
            data["call.id"] = self.call_id
        data.update(attrs or {})
        rec = _Lg(t, name, body, data, severity, span.span_id if span else b"", traced,
                  t + _ms(self.r.uniform(1, 40)))
        self.logs.append(rec)
        return rec

    def call_attrs(self) -> dict[str, Any]:
        return {"call.direction": self.direction, "call.agent": self.agent.name, "call.campaign": self.campaign,
                "call.from": self.from_number, "call.to": self.to_number}

    # -- call identity
    def identity(self, direction: str, agent: _Agent | None = None) -> None:
        r = self.r
        if agent is None:
            candidates = [a for a in _AGENTS if any(d == direction for d, _ in a.directions)]
            agent = r.choice(candidates)
        self.agent, self.direction = agent, direction
        self.campaign = r.choice(agent.campaigns.get(direction, (None,)))
        if direction == "inbound":
            self.from_number, self.to_number = _phone(r), agent.number
        elif direction == "outbound":
            self.from_number, self.to_number = agent.number, _phone(r)
        self.call_id = f"call_{r.getrandbits(96):024x}"

    # -- lifecycle-only calls
    def queued(self) -> None:
        self.identity(self.r.choice(("outbound", "outbound", "inbound")))
        self.status_source = "call.status"
        self.log(0, "call.queued", "Waiting for a free concurrency slot",
                 {**self.call_attrs(), "call.status": "queued", "queue.position": self.r.randint(1, 12),
                  "queue.name": f"{self.agent.name}-lines"}, traced=False)
        self.cut = _ms(self.r.uniform(1000, 60000))

    def ringing(self) -> None:
        r = self.r
        self.identity(r.choice(("outbound", "outbound", "inbound")))
        self.session = _Sp(self.sid(), b"", "call", _SERVER, 0, 0, {}, 0, _SCOPE_NATIVE)   # started, not ended
        t = 0
        if self.direction == "outbound" and r.random() < 0.4:
            self.log(t - _ms(r.uniform(2000, 40000)), "call.queued", "Queued by the dialer",
                     {**self.call_attrs(), "queue.position": r.randint(1, 5)}, traced=False)
        self.log(t, "call.ringing", f"Ringing {self.to_number}", self.call_attrs(), span=self.session)
        self.cut = t + _ms(r.uniform(1000, 20000))

    def sip_outcome(self) -> None:
        """declined / missed: a short session span with sip.response.code, or lifecycle events only."""
        r = self.r
        if self.status == "declined":
            self.identity("outbound")
            code, reason = r.choice(((603, "Decline"), (603, "Decline"), (486, "Busy Here"), (600, "Busy Everywhere")))
            duration = _ms(r.uniform(300, 2000) if code in (486, 600) else r.uniform(2500, 15000))
            status_reason = "busy" if code in (486, 600) else "callee declined"
        elif r.random() < 0.7:
            self.identity("outbound")
            code, reason = r.choice(((480, "Temporarily Unavailable"), (408, "Request Timeout")))
            duration = _ms(r.uniform(25000, 45000))
            status_reason = "no answer"
        else:
            self.identity("inbound")
            code, reason = 487, "Request Terminated"
            self.log(-_ms(r.uniform(500, 2000)), "call.queued", "All lines busy, caller waiting",
                     {**self.call_attrs(), "queue.position": r.randint(1, 8)}, traced=False)
            duration = _ms(r.uniform(5000, 40000))
            status_reason = "caller hung up before answer"
        self.sip_code = code
        self.status_reason = status_reason
        via_span = r.random() < 0.6
        sid = self.sid()
        holder = _Sp(sid, b"", "call", _SERVER if self.direction == "inbound" else _CLIENT, -_ms(r.uniform(20, 80)),
                     duration, {}, 0, _SCOPE_NATIVE)
        self.log(0, "call.ringing", f"Ringing {self.to_number}", self.call_attrs(), span=holder if via_span else None)
        if via_span:
            self.status_source = "sip"
            holder.attrs = {"voice.stage": "session", "call.id": self.call_id, **self.call_attrs(),
                            "sip.response.code": code, "sip.response.reason": reason}
            if r.random() < 0.3:
                holder.fail(f"SIP {code} {reason}")
            self.spans.append(holder)
            self.session = holder
        else:
            self.status_source = "event"
            self.log(duration, f"call.{self.status}", f"Call {self.status}: SIP {code} {reason}",
                     {**self.call_attrs(), "sip.response.code": code, "call.status_reason": status_reason})
        self.ended_at = duration
        self.webhooks(duration)

    def invalid_number(self) -> None:
        r = self.r
        self.identity("outbound")
        code, reason = r.choice(((404, "Not Found"), (484, "Address Incomplete")))
        self.sip_code, self.status_reason = code, "invalid number"
        duration = _ms(r.uniform(200, 1500))
        s = self.span("call", None, 0, duration, {"voice.stage": "session", "call.id": self.call_id,
                                                  **self.call_attrs(), "sip.response.code": code,
                                                  "call.status_reason": "invalid number"}, kind=_CLIENT)
        s.fail(f"SIP {code} {reason}")
        self.session = s
        self.log(duration, "call.failed", f"Call failed: invalid number {self.to_number}",
                 {**self.call_attrs(), "call.status_reason": "invalid number", "sip.response.code": code},
                 span=s, severity=_ERR)
        self.status_source = "event"
        self.ended_at = duration
        self.webhooks(duration)

    # -- conversations
    def conversation(self, outcome: str) -> None:
        """outcome: completed | provider_error | crash | active."""
        r = self.r
        agent = r.choice(_AGENTS)
        self.identity(_pick_weighted(r, agent.directions), agent)
        self.llm = _pick_weighted(r, [(x, x[5]) for x in agent.llms])
        self.stt = r.choice(agent.stts)
        self.tts = r.choice(agent.ttss)
        phone = self.direction != "web"
        session = _Sp(self.sid(), b"", "call", _SERVER if self.direction == "inbound" else _INTERNAL, 0, 0,
                      {}, 0, _SCOPE_NATIVE)
        self.session = session
        lifecycle = self.call_attrs()
        t = 0
        if phone:
            if self.direction == "outbound" and r.random() < 0.3:
                self.log(-_ms(r.uniform(1000, 30000)), "call.queued", "Queued by the dialer",
                         {**lifecycle, "queue.position": r.randint(1, 5)}, traced=False)
            self.log(0, "call.ringing", f"Ringing {self.to_number}", lifecycle, span=session)
            t += _ms(r.uniform(4000, 18000) if self.direction == "outbound" else r.uniform(500, 3500))
            self.log(t, "call.answered", "Call answered", lifecycle, span=session)
        else:
            self.log(0, "call.answered", "Web session connected", {**lifecycle, "client": "web-sdk"}, span=session)
        session.start = t + _ms(r.uniform(10, 60))
        self.started_at = session.start
        if r.random() < 0.85:
            self.recording_url = f"https://recordings.voice.example/{self.call_id}.mp3"
            self.log(session.start + _ms(r.uniform(150, 450)), "call.recording_started", "Recording started",
                     {"recording.url": self.recording_url, "recording.channels": 2}, span=session)
        cursor = session.start + _ms(r.uniform(300, 900))
        total_turns = r.randint(2, 8)
        self.greeting = self.direction == "outbound" or r.random() < 0.5
        node = 0
        if agent.flow:
            self.log(cursor, "path.transition", f"Entered node {agent.flow[0]}",
                     {"path.from_node": "start", "path.to_node": agent.flow[0]}, span=session,
                     with_call_id=not self.sparse_ids)
        number = 0
        if self.greeting:
            number = 1
            cursor = self.greeting_turn(session, cursor)
        user_turns = max(1, total_turns - number)
        scripted = r.sample(agent.exchanges, min(len(agent.exchanges), user_turns - 1))
        transfer = outcome == "completed" and agent.transfer_ask is not None and r.random() < 0.07
        last: tuple[str, str, str | None, str] = (*agent.closing, None, "closing")
        if transfer and agent.transfer_ask:
            last = (*agent.transfer_ask, None, "transfer")
        script = [*scripted, last][:user_turns]
        while len(script) < user_turns:
            script.insert(0, r.choice(agent.exchanges))
        interrupt_next_start: int | None = None
        last_audio_end = cursor
        for i, exchange in enumerate(script):
            number += 1
            final = i == len(script) - 1
            fail = None
            if final and outcome == "provider_error":
                fail = "llm"
            elif final and outcome == "crash":
                fail = "tts"
            if agent.flow and i % 2 == 1 and node < len(agent.flow) - 1:
                node += 1
            start = interrupt_next_start if interrupt_next_start is not None else cursor
            may_interrupt = not final and r.random() < 0.12
            cursor, interrupt_next_start, last_audio_end = self.user_turn(
                session, number, start, exchange, fail=fail, interrupt=may_interrupt,
                node=(agent.flow[node - 1] if node else agent.flow[0], agent.flow[node]) if agent.flow else None)
        end_t = max(s.end for s in self.spans) if self.spans else cursor
        end_reason = "user_hangup"
        if transfer:
            end_t = self.do_transfer(session, last_audio_end + _ms(r.uniform(150, 400)))
            end_reason = "transferred" if self.transfer and self.transfer["ok"] else "transfer_failed"
        elif outcome in ("completed", "active") and r.random() < 0.5:
            t_h = last_audio_end + _ms(r.uniform(200, 500))
            self.log(t_h, "tool.hangup.invoked", "Agent requested hangup", {"tool.name": "end_call"},
                     span=session)
            end_t = t_h + _ms(r.uniform(150, 400))
            self.log(end_t, "tool.hangup.completed", "Call hung up by the agent", {"tool.name": "end_call"},
                     span=session)
            end_reason = "agent_hangup"
        session.end = max(end_t, max(s.end for s in self.spans)) + _ms(r.uniform(50, 300))
        session.attrs = {"voice.stage": "session", "call.id": self.call_id, **self.call_attrs(),
                         "call.recording.url": self.recording_url, "call.end_reason": end_reason}
        if phone and r.random() < 0.5:
            session.attrs["sip.response.code"] = 200
            self.sip_code = 200
        self.spans.append(session)
        if outcome == "active":
            self.status_source = "open"
            first_turn_end = min(t["_span"].end for t in self.turns)
            self.cut = r.randint(first_turn_end + _ms(50), max(first_turn_end + _ms(60), session.end - _ms(100)))
            return
        if outcome == "completed":
            self.post_call(session)
            if r.random() < 0.12:
                session.attrs["call.status"] = "completed"
                self.status_source = "call.status"
            elif r.random() < 0.7:
                self.status_source = "event"
            else:
                self.status_source = "session_span"
            if self.status_source != "session_span":
                self.log(session.end, "call.completed", "Call completed",
                         {"call.duration_s": round((session.end - session.start) / _S, 3),
                          "call.end_reason": end_reason}, span=session)
        elif outcome == "provider_error":
            reason = f"LLM provider error: {self.llm[0]} returned 503 Service Unavailable"
            self.status_reason = reason
            session.attrs["call.status_reason"] = reason
            session.fail(reason, "llm_provider_error")
            self.log(session.end, "call.failed", "Call failed: LLM provider unavailable",
                     {"call.status_reason": reason, "error.type": "llm_provider_error"}, span=session, severity=_ERR)
            self.status_source = "event"
        else:   # crash
            message = f"pipeline error: {self.tts[0]} TTS websocket closed unexpectedly (code 1006)"
            session.fail(message, "websocket_closed")
            self.status_reason = message
            self.status_source = "session_span"
        self.ended_at = session.end
        self.webhooks(session.end)

    def post_call(self, session: _Sp) -> None:
        r = self.r
        topics = list(dict.fromkeys(t["topic"] for t in self.turns if t.get("topic") not in (None, "closing", "greeting")))
        resolved = r.random() < 0.8
        self.summary = (f"{self.agent.role} with {self.from_number if self.direction == 'inbound' else self.to_number or 'web visitor'}: "
                        f"discussed {', '.join(topics) or 'general questions'}; {'resolved' if resolved else 'follow-up needed'}.")
        self.tags = [*topics[:3], "resolved" if resolved else "follow-up"]
        self.extracted = {"intent": topics[0] if topics else "other", "resolved": resolved,
                          "sentiment": r.choice(["positive", "neutral", "neutral", "negative"]),
                          "callback_requested": not resolved}
        session.attrs.update({"call.summary": self.summary, "call.tags": self.tags,
                              "call.extracted": json.dumps(self.extracted)})
        if r.random() < 0.45:
            minutes = (session.end - session.start) / _S / 60
            self.currency = "EUR" if r.random() < 0.1 else "USD"
            self.cost = round(minutes * r.uniform(0.07, 0.14), 4)
            session.attrs["call.cost"] = self.cost
            session.attrs["call.cost.currency"] = self.currency

    def stage_ids(self, number: int) -> dict[str, Any]:
        return {} if self.sparse_ids else {"call.id": self.call_id, "turn.number": number}

    def speak(self, turn: _Sp, audio_start: int, audio_end: int, text: str) -> None:
        cid = not self.sparse_ids
        self.log(audio_start, "agent.started_speaking", "Agent started speaking", {"turn.number": turn.attrs["turn.number"]},
                 span=turn, with_call_id=cid)
        self.log(audio_end, "agent.ended_speaking", "Agent ended speaking",
                 {"turn.number": turn.attrs["turn.number"], "text.characters": len(text)}, span=turn, with_call_id=cid)

    def tts_span(self, turn: _Sp, number: int, start: int, text: str) -> tuple[_Sp, int, int]:
        r = self.r
        provider, model, voice, median = self.tts
        ttfb = _ms(_lognormal(r, median, 0.3, 60, 1500))
        chars = len(text)
        synth_end = start + ttfb + _ms(chars * r.uniform(1.5, 4.0))
        s = self.span("tts", turn, start, synth_end, {
            "voice.stage": "tts", **self.stage_ids(number), "tts.provider": provider, "tts.model": model,
            "tts.voice": voice, "tts.text": text, "tts.characters": chars, "tts.ttfb_ms": round(ttfb / _MS, 3),
        }, kind=_CLIENT)
        audio_start = start + ttfb
        return s, audio_start, audio_start + _ms(chars * r.uniform(55, 70))

    def greeting_turn(self, session: _Sp, cursor: int) -> int:
        text = self.agent.greeting
        turn = self.span("turn", session, cursor, 0, {"voice.stage": "turn", "call.id": self.call_id,
                                                      "turn.number": 1, "turn.agent_text": text})
        tts, audio_start, audio_end = self.tts_span(turn, 1, cursor + _ms(self.r.uniform(2, 8)), text)
        turn.end = max(audio_end, tts.end)
        self.speak(turn, audio_start, audio_end, text)
        self.turns.append({"_span": turn, "number": 1, "user_text": None, "agent_text": text, "interrupted": False,
                           "stt_ms": None, "llm_ttft_ms": None, "tts_ttfb_ms": tts.attrs["tts.ttfb_ms"],
                           "voice_to_voice_ms": None, "reported_v2v_ms": None, "eou_ms": None,
                           "llm_provider": None, "llm_model": None, "stt_provider": None,
                           "tts_provider": self.tts[0], "input_tokens": None, "output_tokens": None,
                           "topic": "greeting", "_stage_spans": [tts]})
        return audio_end + _ms(_lognormal(self.r, 700, 0.5, 250, 4000))

    def llm_span(self, turn: _Sp, number: int, start: int, *, history_tokens: int, output_text: str | None,
                 output_tokens: int, finish: str) -> tuple[_Sp, int]:
        r = self.r
        provider, model, response_model, ttft_median, tps, _w = self.llm
        ttft = _ms(_lognormal(r, ttft_median, 0.45, 90, 6000))
        end = start + ttft + _ms(output_tokens / tps * 1000)
        attrs: dict[str, Any] = {
            "voice.stage": "llm", **self.stage_ids(number), "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider, "gen_ai.request.model": model, "gen_ai.response.model": response_model,
            "gen_ai.request.temperature": 0.4, "gen_ai.usage.input_tokens": history_tokens,
            "gen_ai.usage.output_tokens": output_tokens, "llm.ttft_ms": round(ttft / _MS, 3),
            "gen_ai.response.finish_reasons": [finish],
        }
        if output_text:
            attrs["llm.output"] = output_text
        s = self.span("llm", turn, start, end, attrs, kind=_CLIENT)
        return s, start + ttft

    def user_turn(self, session: _Sp, number: int, start: int, exchange: tuple[str, str, str | None, str], *,
                  fail: str | None, interrupt: bool, node: tuple[str, str] | None) -> tuple[int, int | None, int]:
        """One user turn; returns (next cursor, next user start if interrupted, agent audio end)."""
        r = self.r
        agent = self.agent
        user_text, agent_text, tool_name, topic = exchange
        cid = not self.sparse_ids
        turn = self.span("turn", session, start, 0, {"voice.stage": "turn", "call.id": self.call_id,
                                                     "turn.number": number, "turn.user_text": user_text})
        truth: dict[str, Any] = {"_span": turn, "number": number, "user_text": user_text, "interrupted": False,
                                 "topic": topic, "reported_v2v_ms": None, "eou_ms": None, "tts_ttfb_ms": None,
                                 "voice_to_voice_ms": None, "tts_provider": None, "_stage_spans": []}
        self.turns.append(truth)
        words = len(user_text.split())
        user_stop = start + _ms(words * r.uniform(260, 360) + 250)
        self.log(start, "user.started_speaking", "User started speaking", {"turn.number": number}, span=turn,
                 with_call_id=cid)
        self.log(user_stop, "user.stopped_speaking", "User stopped speaking",
                 {"turn.number": number, "speech.duration_ms": round((user_stop - start) / _MS, 1)},
                 span=turn, with_call_id=cid)
        stt_provider, stt_model, stt_median = self.stt
        stt_end = user_stop + _ms(_lognormal(r, stt_median, 0.35, 80, 2500))
        stt = self.span("stt", turn, user_stop, stt_end, {
            "voice.stage": "stt", **self.stage_ids(number), "stt.provider": stt_provider, "stt.model": stt_model,
            "stt.transcript": user_text, "stt.is_final": True,
            "stt.audio_seconds": round((user_stop - start) / _S, 3), "stt.language": "en",
        }, kind=_CLIENT)
        llm_start = stt_end + _ms(r.uniform(5, 30))
        eou_ms = round((llm_start - user_stop) / _MS - r.uniform(1, 4), 3)
        where = r.random()
        if where < 0.3:
            stt.attrs["stt.eou_ms"] = eou_ms
            truth["eou_ms"] = eou_ms
        elif where < 0.55:
            turn.attrs["turn.eou_ms"] = eou_ms
            truth["eou_ms"] = eou_ms
        if node and node[0] != node[1]:
            self.log(stt_end + _ms(1), "path.transition", f"{node[0]} → {node[1]}",
                     {"path.from_node": node[0], "path.to_node": node[1], "path.condition": topic}, span=turn,
                     with_call_id=cid)
        if node:
            self.log(llm_start, "path.node_generation_started", f"Generating at node {node[1]}",
                     {"path.node": node[1]}, span=turn, with_call_id=cid)
            # A few flow turns hit a path error (decided without the RNG, so other draws stay put).
            if (number * 7 + int(self.call_id.encode().hex()[-4:], 16)) % 23 == 0:
                self.log(llm_start + _ms(2), "path.error", f"No edge matched at node {node[1]}; staying",
                         {"path.node": node[1], "error.type": "NoMatchingEdge"}, span=turn,
                         severity=_ERR, with_call_id=cid)
        history = 850 + 70 * number + r.randint(0, 40)
        stage_spans: list[_Sp] = [stt]
        truth.update({"stt_ms": round((stt_end - user_stop) / _MS, 3), "stt_provider": stt_provider,
                      "llm_provider": self.llm[0], "llm_model": self.llm[2]})
        if fail == "llm":
            llm_end = llm_start + _ms(r.uniform(1500, 10000))
            llm = self.span("llm", turn, llm_start, llm_end, {
                "voice.stage": "llm", **self.stage_ids(number), "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self.llm[0], "gen_ai.request.model": self.llm[1],
                "gen_ai.usage.input_tokens": history,
            }, kind=_CLIENT)
            llm.fail("Error code: 503 - upstream connect error or disconnect/reset before headers", "503")
            llm.events.append((llm_end, "exception", {"exception.type": "openai.InternalServerError",
                                                      "exception.message": "Error code: 503"}))
            stage_spans.append(llm)
            turn.end = llm_end + _ms(r.uniform(2, 10))
            turn.fail("LLM request failed", "503")
            truth.update({"agent_text": None, "llm_ttft_ms": None, "input_tokens": history, "output_tokens": None,
                          "_stage_spans": stage_spans})
            return turn.end, None, turn.end
        out_tokens = math.ceil(len(agent_text.split()) * 1.35) + 1
        llm_cursor = llm_start
        input_total, output_total = 0, 0
        first_ttft: float | None = None
        spoken = agent_text
        if tool_name:
            tool = _TOOLS[tool_name]
            call_tokens = r.randint(18, 42)
            llm1, _ft = self.llm_span(turn, number, llm_cursor, history_tokens=history, output_text=None,
                                      output_tokens=call_tokens, finish="tool_calls")
            first_ttft = llm1.attrs["llm.ttft_ms"]
            stage_spans.append(llm1)
            input_total += history
            output_total += call_tokens
            tool_call_id = "call_" + "".join(r.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", k=24))
            args = tool.args(r)
            t = llm1.end + _ms(r.uniform(2, 10))
            granted = True
            if tool.needs_approval:
                granted = r.random() < 0.8
                self.log(t, "integration.approval_requested", f"Asked the contact to confirm {tool.name}",
                         {"tool.name": tool.name, "gen_ai.tool.call.id": tool_call_id,
                          "gen_ai.tool.call.arguments": json.dumps(args)}, span=turn, with_call_id=cid)
                t += _ms(r.uniform(1200, 4500))
                self.log(t, "integration.approval_granted" if granted else "integration.approval_denied",
                         f"Contact {'confirmed' if granted else 'declined'} {tool.name}",
                         {"tool.name": tool.name, "gen_ai.tool.call.id": tool_call_id}, span=turn, with_call_id=cid)
                self.approvals.append({"tool_name": tool.name, "tool_call_id": tool_call_id, "granted": granted})
            if granted:
                tool_end = t + _ms(_lognormal(r, tool.median_ms, 0.5, 30, 8000))
                failed = r.random() < 0.12
                attrs: dict[str, Any] = {
                    "voice.stage": "tool", **self.stage_ids(number), "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": tool.name, "gen_ai.tool.type": "function",
                    "gen_ai.tool.call.id": tool_call_id, "gen_ai.tool.call.arguments": json.dumps(args),
                }
                span = self.span(f"execute_tool {tool.name}", turn, t, tool_end, attrs)
                error = None
                if failed:
                    error_type, message = r.choice(_TOOL_ERRORS)
                    attrs["gen_ai.tool.call.result"] = json.dumps({"error": message})
                    span.fail(message, error_type)
                    error = error_type
                    spoken = agent.tool_failed_text
                else:
                    attrs["gen_ai.tool.call.result"] = json.dumps(tool.result(r, args))
                stage_spans.append(span)
                self.tool_calls.append({"tool_call_id": tool_call_id, "tool_name": tool.name, "turn_number": number,
                                        "is_error": failed, "error": error, "span_id": span.span_id.hex()})
                t = tool_end
            else:
                spoken = agent.denied_text
            llm_cursor = t + _ms(r.uniform(5, 20))
            history += call_tokens + 60
            out_tokens = math.ceil(len(spoken.split()) * 1.35) + 1
        llm, first_token = self.llm_span(turn, number, llm_cursor, history_tokens=history, output_text=spoken,
                                         output_tokens=out_tokens, finish="stop")
        stage_spans.append(llm)
        input_total += history
        output_total += out_tokens
        if first_ttft is None:
            first_ttft = llm.attrs["llm.ttft_ms"]
        turn.attrs["turn.agent_text"] = spoken
        tts_start = first_token + _ms(r.uniform(15, 120))
        tts, audio_start, audio_end = self.tts_span(turn, number, tts_start, spoken)
        stage_spans.append(tts)
        truth.update({"agent_text": spoken, "llm_ttft_ms": first_ttft, "input_tokens": input_total,
                      "output_tokens": output_total, "tts_provider": self.tts[0], "_stage_spans": stage_spans})
        if fail == "tts":
            tts.end = tts_start + _ms(r.uniform(2000, 5000))
            del tts.attrs["tts.ttfb_ms"]
            tts.fail("websocket closed unexpectedly (code 1006)", "websocket_closed")
            turn.end = max(tts.end, llm.end) + _ms(r.uniform(2, 10))
            turn.fail("TTS failed", "websocket_closed")
            return turn.end, None, turn.end
        truth["tts_ttfb_ms"] = tts.attrs["tts.ttfb_ms"]
        v2v = round((audio_start - user_stop) / _MS, 3)
        truth["voice_to_voice_ms"] = v2v
        if r.random() < 0.5:
            reported = round(v2v + r.uniform(-15, 40), 1)
            turn.attrs["turn.v2v_ms"] = reported
            truth["reported_v2v_ms"] = reported
        next_start: int | None = None
        if interrupt:
            fraction = r.uniform(0.2, 0.7)
            cut = audio_start + int((audio_end - audio_start) * fraction)
            audio_end = cut
            tts.end = min(tts.end, cut)
            tts.attrs["tts.interrupted"] = True
            turn.attrs["turn.interrupted"] = True
            truth["interrupted"] = True
            next_start = cut - _ms(r.uniform(150, 400))
            self.log(cut, "agent.interrupted", "The contact interrupted the agent",
                     {"turn.number": number, "spoken.characters": int(len(spoken) * fraction)},
                     span=turn, with_call_id=cid)
        elif r.random() < 0.5:
            turn.attrs["turn.interrupted"] = False
        self.speak(turn, audio_start, audio_end, spoken)
        turn.end = max(audio_end, tts.end, llm.end)
        return audio_end + _ms(_lognormal(r, 700, 0.5, 250, 4000)), next_start, audio_end

    def do_transfer(self, session: _Sp, start: int) -> int:
        r = self.r
        target = "+18005550150"
        ok = r.random() < 0.75
        end = start + _ms(r.uniform(6000, 20000) if ok else r.uniform(20000, 30000))
        s = self.span("transfer", session, start, end, {
            "voice.stage": "transfer", **({} if self.sparse_ids else {"call.id": self.call_id}),
            "transfer.target": target, "transfer.type": r.choice(["cold", "warm"]),
        })
        data = {"transfer.target": target}
        self.log(start, "tool.transfer.invoked", f"Transferring to {target}", data, span=s)
        self.log(start + _ms(r.uniform(200, 500)), "transfer.human_dialing", f"Dialing {target}", data, span=s)
        if ok:
            self.log(end - _ms(r.uniform(100, 300)), "transfer.human_answered", "Human agent answered", data, span=s)
            self.log(end, "tool.transfer.completed", "Transfer completed", data, span=s)
            self.log(end + _ms(5), "transfer.completed", "Caller bridged to a human agent", data, span=s)
        else:
            s.fail("no answer from transfer target", "no_answer")
            self.log(end, "tool.transfer.failed", f"Transfer to {target} failed: no answer",
                     {**data, "error.type": "no_answer"}, span=s, severity=_ERR)
        self.transfer = {"target": target, "ok": ok, "span_id": s.span_id.hex()}
        return end

    def webhooks(self, t: int) -> None:
        r = self.r
        if r.random() >= 0.9:
            return
        agent = self.agent
        holder = self.session if self.session in self.spans else None
        base = {"webhook.url": agent.webhook_url, "webhook.event": "call.ended",
                "webhook.id": f"wh_{r.getrandbits(48):012x}"}
        t += _ms(r.uniform(30, 150))
        self.log(t, "webhook.queued", "Webhook queued", base, span=holder)
        roll = r.random()
        failures = 0 if roll < 0.85 else (r.randint(1, 2) if roll < 0.96 else 3)
        for attempt in range(1, 4):
            t += _ms(r.uniform(5, 40)) if attempt == 1 else _ms(1000 * 2 ** (attempt - 2) * r.uniform(0.9, 1.1))
            data = {**base, "webhook.attempt": attempt}
            self.log(t, "webhook.sent", f"POST {agent.webhook_url} (attempt {attempt})", data, span=holder)
            if attempt <= failures:
                code = r.choice([500, 502, 503, 504])
                t += _ms(r.uniform(80, 3000))
                self.log(t, "webhook.response_failed", f"Webhook responded {code}",
                         {**data, "http.response.status_code": code, "http.duration_ms": round(r.uniform(80, 3000), 1)},
                         span=holder, severity=_WARN)
                if attempt == 3:
                    self.log(t + _ms(5), "webhook.retry_exhausted", "Webhook gave up after 3 attempts",
                             {**base, "webhook.attempts": 3}, span=holder, severity=_ERR)
                continue
            t += _ms(r.uniform(40, 400))
            self.log(t, "webhook.response_success", "Webhook delivered",
                     {**data, "http.response.status_code": r.choice([200, 200, 202, 204]),
                      "http.duration_ms": round(r.uniform(40, 400), 1)}, span=holder)
            break

    # -- GenAI flavour
    def genai(self, failed: bool) -> None:
        r = self.r
        agent = r.choice(_AGENTS)
        self.agent = agent
        self.direction = None
        self.call_id = str(uuid.UUID(int=r.getrandbits(128), version=4))
        self.llm = _pick_weighted(r, [(x, x[5]) for x in agent.llms])
        provider, model, response_model, ttft_median, tps, _w = self.llm
        new_keys = r.random() < 0.5
        conv_everywhere = r.random() < 0.5
        self.worker = r.randrange(len(_GENAI_RESOURCES))
        self.old_sdk = not new_keys
        conv = {"gen_ai.conversation.id": self.call_id}
        root = _Sp(self.sid(), b"", "invoke_workflow voice_session", _INTERNAL, 0, 0, {
            "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "voice_session",
            "gen_ai.agent.name": agent.name, **conv}, 0, _SCOPE_AGENT)
        self.session = root
        self.started_at = 0
        cursor = _ms(r.uniform(300, 800))
        n = r.randint(2, 8)
        script = [*r.sample(agent.exchanges, min(n - 1, len(agent.exchanges))), (*agent.closing, None, "closing")]
        while len(script) < n:
            script.insert(0, r.choice(agent.exchanges))
        for number, (user_text, agent_text, tool_name, topic) in enumerate(script[:n], start=1):
            final = number == n
            user_stop = cursor + _ms(len(user_text.split()) * r.uniform(260, 360) + 250)
            ia_start = user_stop + _ms(r.uniform(150, 400))
            ia = self.span(f"invoke_agent {agent.name}", root, ia_start, 0, {
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent.name, **conv,
                "gen_ai.provider.name" if new_keys else "gen_ai.system": provider, "gen_ai.request.model": model,
            }, scope=_SCOPE_AGENT)
            history = 700 + 80 * number
            spoken = agent_text
            first_ttft: float | None = None
            t = ia_start + _ms(r.uniform(2, 8))
            in_total = out_total = 0
            if tool_name:
                tool = _TOOLS[tool_name]
                c1, ttft = self.chat(ia, t, history, r.randint(18, 40), None, new_keys, conv_everywhere, "tool_calls")
                first_ttft = ttft
                in_total += history
                out_total += c1.attrs.get("gen_ai.usage.output_tokens", c1.attrs.get("gen_ai.usage.completion_tokens", 0))
                t = c1.end + _ms(r.uniform(2, 10))
                call_key = "call_" + "".join(r.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=24))
                args = tool.args(r)
                tool_end = t + _ms(_lognormal(r, tool.median_ms, 0.5, 30, 8000))
                attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool.name,
                         "gen_ai.tool.type": "function", "gen_ai.tool.call.id": call_key,
                         "gen_ai.tool.call.arguments": json.dumps(args), **(conv if conv_everywhere else {})}
                tspan = self.span(f"execute_tool {tool.name}", ia, t, tool_end, attrs, scope=_SCOPE_AGENT)
                tool_failed = r.random() < 0.12
                error = None
                if tool_failed:
                    error, message = r.choice(_TOOL_ERRORS)
                    tspan.fail(message, error)
                    spoken = agent.tool_failed_text
                else:
                    attrs["gen_ai.tool.call.result"] = json.dumps(tool.result(r, args))
                self.tool_calls.append({"tool_call_id": call_key, "tool_name": tool.name, "turn_number": number,
                                        "is_error": tool_failed, "error": error, "span_id": tspan.span_id.hex()})
                t = tool_end + _ms(r.uniform(5, 20))
                history += 90
            out_tokens = math.ceil(len(spoken.split()) * 1.35) + 1
            chat, ttft = self.chat(ia, t, history, out_tokens, spoken, new_keys, conv_everywhere, "stop",
                                   fail=failed and final)
            in_total += history
            out_total += out_tokens
            if first_ttft is None and not (failed and final):
                first_ttft = ttft  # a failed request reports no time to first chunk: the turn has no TTFT
            ia.end = chat.end + _ms(r.uniform(1, 3))
            if failed and final:
                ia.fail("rate limited by provider", "429")
            self.turns.append({"_span": ia, "number": number, "user_text": None,
                               "agent_text": None if failed and final else spoken, "interrupted": False,
                               "stt_ms": None, "llm_ttft_ms": first_ttft, "tts_ttfb_ms": None,
                               "voice_to_voice_ms": None, "reported_v2v_ms": None, "eou_ms": None,
                               "llm_provider": provider, "llm_model": response_model, "stt_provider": None,
                               "tts_provider": None, "input_tokens": in_total,
                               "output_tokens": None if failed and final else out_total, "topic": topic,
                               "_stage_spans": []})
            cursor = chat.start + _ms(ttft + 300 + len(spoken) * r.uniform(55, 70) + _lognormal(r, 700, 0.5, 250, 4000))
            if failed and final:
                break
        root.end = max(s.end for s in self.spans) + _ms(r.uniform(100, 500))
        if failed:
            message = f"{provider} rate limit exceeded (429)"
            root.fail(message, "429")
            self.status_reason = message
        self.spans.append(root)
        self.status_source = "session_span"
        self.ended_at = root.end

    def chat(self, parent: _Sp, start: int, input_tokens: int, output_tokens: int, text: str | None,
             new_keys: bool, conv_everywhere: bool, finish: str, *, fail: bool = False) -> tuple[_Sp, float]:
        r = self.r
        provider, model, response_model, ttft_median, tps, _w = self.llm
        ttft_ns = _ms(_lognormal(r, ttft_median, 0.45, 90, 6000))
        end = start + ttft_ns + _ms(output_tokens / tps * 1000)
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                                 **({"gen_ai.conversation.id": self.call_id} if conv_everywhere else {})}
        if new_keys:
            attrs.update({"gen_ai.provider.name": provider, "gen_ai.usage.input_tokens": input_tokens})
        else:
            attrs.update({"gen_ai.system": provider, "gen_ai.usage.prompt_tokens": input_tokens})
        if fail:
            end = start + _ms(r.uniform(200, 900))
            s = self.span(f"chat {model}", parent, start, end, attrs, kind=_CLIENT, scope=_SCOPE_OPENAI)
            s.fail("Error code: 429 - rate_limit_exceeded", "429")
            return s, round(ttft_ns / _MS, 3)
        attrs.update({"gen_ai.response.model": response_model, "gen_ai.response.finish_reasons": [finish],
                      "gen_ai.response.time_to_first_chunk": ttft_ns / _S,
                      "gen_ai.usage.output_tokens" if new_keys else "gen_ai.usage.completion_tokens": output_tokens})
        if text and new_keys:
            attrs["gen_ai.output.messages"] = json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": finish}])
        s = self.span(f"chat {model}", parent, start, end, attrs, kind=_CLIENT, scope=_SCOPE_OPENAI)
        if new_keys:
            self.log(end, "gen_ai.client.inference.operation.details", f"chat {model}", {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
                "gen_ai.response.model": response_model,
                "gen_ai.output.messages": attrs.get("gen_ai.output.messages", "[]"),
            }, span=s)
        else:
            self.log(start, "gen_ai.user.message", {"content": "(redacted)"}, {"gen_ai.system": provider}, span=s)
            if text:
                self.log(end, "gen_ai.choice",
                         {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}},
                         {"gen_ai.system": provider}, span=s)
        return s, round(ttft_ns / _MS, 3)

    # -- output
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
        trace_requests = self.trace_requests(sent)
        log_requests = self.log_requests(logs)
        expected = self.expected(sent, sent_ids, open_spans, logs, offset)
        return SimulatedCall(self.call_id, self.status, trace_requests, log_requests, expected)

    def resource(self) -> Resource:
        return (_GENAI_RESOURCES if self.flavour == "genai" else _NATIVE_RESOURCES)[self.worker]

    def trace_requests(self, spans: list[_Sp]) -> tuple[ExportTraceServiceRequest, ...]:
        out = []
        resource = self.resource()
        for group in _windows(spans, lambda s: s.end):
            scopes: dict[str, tuple[InstrumentationScope, list[Span]]] = {}
            for s in group:
                scopes.setdefault(s.scope.name, (s.scope, []))[1].append(self.span_pb(s))
            # The exporter groups a batch by scope; the scope holding the batch's last span goes last, so a
            # root span ends the request (within a request, order across scopes carries no meaning).
            last = group[-1].scope.name
            ordered = [v for k, v in scopes.items() if k != last] + [scopes[last]]
            out.append(ExportTraceServiceRequest(resource_spans=[ResourceSpans(
                resource=resource, scope_spans=[ScopeSpans(scope=sc, spans=pbs) for sc, pbs in ordered],
            )]))
        return tuple(out)

    def span_pb(self, s: _Sp) -> Span:
        return Span(
            trace_id=self.trace_id, span_id=s.span_id, parent_span_id=s.parent, name=s.name, kind=s.kind,
            start_time_unix_nano=s.start, end_time_unix_nano=s.end, attributes=_attrs(s.attrs), flags=0x101,
            events=[Span.Event(time_unix_nano=t, name=n, attributes=_attrs(a)) for t, n, a in s.events],
            status=Status(code=s.status, message=s.message),
        )

    def log_requests(self, logs: list[_Lg]) -> tuple[ExportLogsServiceRequest, ...]:
        out = []
        resource = self.resource()
        scope = _SCOPE_OPENAI if self.flavour == "genai" else _SCOPE_EVENTS
        for group in _windows(logs, lambda lg: lg.time):
            out.append(ExportLogsServiceRequest(resource_logs=[ResourceLogs(
                resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=[self.log_pb(lg) for lg in group])],
            )]))
        return tuple(out)

    def log_pb(self, lg: _Lg) -> LogRecord:
        attrs = lg.attrs
        event_name = lg.name
        if self.old_sdk:
            attrs = {"event.name": lg.name, **attrs}
            event_name = ""
        body = AnyValue(string_value=lg.body) if isinstance(lg.body, str) else _any(lg.body)
        traced = lg.traced
        return LogRecord(
            time_unix_nano=lg.time, observed_time_unix_nano=lg.observed, severity_number=lg.severity,
            severity_text=_SEVERITY_TEXT[lg.severity], body=body, attributes=_attrs(attrs), event_name=event_name,
            trace_id=self.trace_id if traced else b"", span_id=lg.span_id if traced else b"",
            flags=1 if traced else 0,
        )

    def expected(self, sent: list[_Sp], sent_ids: set[bytes], open_spans: list[_Sp], logs: list[_Lg],
                 offset: int) -> dict[str, Any]:
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
        started_at = _dt(self.started_at + offset)
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
            "ended_at": None if self.ended_at is None else _dt(self.ended_at + offset),
            "duration_s": None if self.ended_at is None else round((self.ended_at - self.started_at) / _S, 3),
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


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // _S, tz=timezone.utc) + timedelta(microseconds=(ns % _S) // 1000)


def _windows(items: list[Any], key: Callable[[Any], int]) -> Iterator[list[Any]]:
    """Group time-ordered items like a batch processor: one export per schedule window, ≤ 512 each."""
    group: list[Any] = []
    window = None
    for item in items:
        w = key(item) // _EXPORT_WINDOW_NS
        if group and (w != window or len(group) >= _MAX_EXPORT_BATCH):
            yield group
            group = []
        window = w
        group.append(item)
    if group:
        yield group


# --------------------------------------------------------------------------------------------- generation

def _allocate_statuses(count: int, r: random.Random) -> list[str]:
    shares = _STATUS_SHARES
    quotas = {s: int(count * p) for s, p in shares.items()}
    if count >= len(shares):
        for s in quotas:
            quotas[s] = max(1, quotas[s])
    remainder = count - sum(quotas.values())
    order = sorted(shares, key=lambda s: -(count * shares[s] - int(count * shares[s])))
    i = 0
    while remainder > 0:
        quotas[order[i % len(order)]] += 1
        remainder -= 1
        i += 1
    while remainder < 0:
        biggest = max(quotas, key=lambda s: quotas[s])
        quotas[biggest] -= 1
        remainder += 1
    statuses = [s for s, n in quotas.items() for _ in range(n)]
    r.shuffle(statuses)
    return statuses


def _iter_calls(count: int, seed: int, start: datetime | None) -> Iterator[SimulatedCall]:
    if count < 0:
        raise ValueError("count must be >= 0")
    if start is None:
        start = datetime.now(timezone.utc) - WINDOW
    elif start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    window_start = int(start.timestamp()) * _S + start.microsecond * 1000
    window_ns = int(WINDOW.total_seconds()) * _S
    now = window_start + window_ns
    master = random.Random(seed)
    for status in _allocate_statuses(count, master):
        r = random.Random(master.getrandbits(64))
        genai = status in ("completed", "failed") and r.random() < _GENAI_SHARE
        b = _CallBuilder(r, status, "genai" if genai else "native")
        if genai:
            b.genai(failed=status == "failed")
        elif status == "queued":
            b.queued()
        elif status == "ringing":
            b.ringing()
        elif status in ("declined", "missed"):
            b.sip_outcome()
        elif status == "failed":
            kind = r.choices(("provider_error", "invalid_number", "crash"), weights=(0.55, 0.25, 0.2))[0]
            if kind == "invalid_number":
                b.invalid_number()
            else:
                b.conversation(kind)
        elif status == "active":
            b.conversation("active")
        else:
            b.conversation("completed")
        if b.cut is not None:
            offset = now - b.cut - _ms(r.uniform(500, 3000))
        else:
            last = max([s.end for s in b.spans] + [lg.time for lg in b.logs])
            first = min([s.start for s in b.spans] + [lg.time for lg in b.logs])
            latest = max(window_start, now - (last - first) - 10 * 60 * _S)
            offset = r.randint(window_start, latest) - first
        yield b.finish(offset)


def generate_calls(count: int, *, seed: int = 1, start: datetime | None = None) -> list[SimulatedCall]:
    """``count`` simulated calls spread over ``[start, start + WINDOW]`` (default start: now − WINDOW).

    >>> calls = generate_calls(100, seed=7, start=datetime(2025, 1, 1, tzinfo=timezone.utc))
    >>> sorted({c.status for c in calls}) == sorted(STATUSES)
    True
    """
    return list(_iter_calls(count, seed, start))


# ------------------------------------------------------------------------------------------------ encoding

def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes | bytearray) -> bytes:
    return bytes((number << 3 | 2,)) + _varint(len(payload)) + payload


def _pack(items: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Frame (resource, scope, record) bytes as an Export*ServiceRequest. Traces and logs share field numbers:
    request.1 = Resource{Spans,Logs}; .1 = resource, .2 = Scope{Spans,Logs}; .1 = scope, .2 = records."""
    groups: dict[bytes, dict[bytes, list[bytes]]] = {}
    for resource, scope, record in items:
        # re-insert so that iteration order follows each group's *last* record (roots end their request)
        scopes = groups.pop(resource, {})
        records = scopes.pop(scope, [])
        records.append(record)
        scopes[scope] = records
        groups[resource] = scopes
    out = bytearray()
    for resource, scopes in groups.items():
        inner = bytearray(_field(1, resource))
        for scope, records in scopes.items():
            body = bytearray(_field(1, scope))
            for record in records:
                body += _field(2, record)
            inner += _field(2, body)
        out += _field(1, inner)
    return bytes(out)


def encode_requests(calls: Iterable[SimulatedCall], *, spans_per_request: int = 512,
                    logs_per_request: int | None = None) -> tuple[list[bytes], list[bytes]]:
    """Pre-encoded OTLP trace and log request bodies for ``calls``, packed like one BatchSpanProcessor.

    Spans of all calls are ordered by end time (children before parents, every call's root last) and cut
    into requests of at most ``spans_per_request`` spans; logs likewise by time (``logs_per_request``,
    default the same). Bodies parse as ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest``.
    """
    if spans_per_request < 1:
        raise ValueError("spans_per_request must be >= 1")
    logs_per_request = spans_per_request if logs_per_request is None else logs_per_request
    if logs_per_request < 1:
        raise ValueError("logs_per_request must be >= 1")
    spans: list[tuple[int, int, int, bytes, bytes, bytes]] = []
    logs: list[tuple[int, int, int, bytes, bytes, bytes]] = []
    for ci, call in enumerate(calls):
        seq = 0
        for req in call.trace_requests:
            for rs in req.resource_spans:
                rb = rs.resource.SerializeToString(deterministic=True)
                for ss in rs.scope_spans:
                    sb = ss.scope.SerializeToString(deterministic=True)
                    for sp in ss.spans:
                        spans.append((sp.end_time_unix_nano, ci, seq, rb, sb, sp.SerializeToString()))
                        seq += 1
        seq = 0
        for lreq in call.log_requests:
            for rl in lreq.resource_logs:
                rb = rl.resource.SerializeToString(deterministic=True)
                for sl in rl.scope_logs:
                    sb = sl.scope.SerializeToString(deterministic=True)
                    for lr in sl.log_records:
                        logs.append((lr.time_unix_nano, ci, seq, rb, sb, lr.SerializeToString()))
                        seq += 1
    spans.sort(key=lambda x: (x[0], x[1], x[2]))
    logs.sort(key=lambda x: (x[0], x[1], x[2]))
    trace_bodies = [_pack([(x[3], x[4], x[5]) for x in spans[i:i + spans_per_request]])
                    for i in range(0, len(spans), spans_per_request)]
    log_bodies = [_pack([(x[3], x[4], x[5]) for x in logs[i:i + logs_per_request]])
                  for i in range(0, len(logs), logs_per_request)]
    return trace_bodies, log_bodies


# ------------------------------------------------------------------------------------------------- sending

class _Retryable(Exception):
    def __init__(self, message: str, delay: float | None) -> None:
        super().__init__(message)
        self.delay = delay


class _Permanent(Exception):
    pass


_INITIAL_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_MAX_RETRY_ELAPSED_S = 120.0


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Minimal protobuf wire walker (no googleapis-common-protos dependency)."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            length, i = _read_varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type")
        yield number, wire, value


def retry_delay_from_status(details: bytes) -> float | None:
    """``RetryInfo.retry_delay`` (seconds) from a serialized ``google.rpc.Status``, else None."""
    try:
        for number, wire, value in _fields(details):
            if number != 3 or wire != 2:
                continue
            type_url, payload = "", b""
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    type_url = v.decode()
                elif n == 2 and w == 2:
                    payload = v
            if not type_url.endswith("google.rpc.RetryInfo"):
                continue
            for n, w, v in _fields(payload):
                if n == 1 and w == 2:
                    seconds = nanos = 0
                    for dn, dw, dv in _fields(v):
                        if dn == 1 and dw == 0:
                            seconds = dv
                        elif dn == 2 and dw == 0:
                            nanos = dv
                    return seconds + nanos / 1e9
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _GrpcTransport:
    name = "grpc"

    def __init__(self, target: str, *, insecure: bool, timeout: float, tls: ClientTls | None = None,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self._grpc = grpc
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if tls is not None:
            self.channel = tls.grpc_channel(target, options)
        else:
            self.channel = (grpc.aio.insecure_channel(target, options=options) if insecure
                            else grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options))
        self.metadata = metadata
        self.traces = trace_service_pb2_grpc.TraceServiceStub(self.channel)
        self.logs = logs_service_pb2_grpc.LogsServiceStub(self.channel)
        self.timeout = timeout
        self.retryable = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                          grpc.StatusCode.DEADLINE_EXCEEDED}

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self.metadata)
        except self._grpc.aio.AioRpcError as exc:
            message = f"{exc.code().name}: {exc.details()}"
            if exc.code() not in self.retryable:
                raise _Permanent(message) from exc
            delay = None
            for key, value in exc.trailing_metadata() or ():
                if key == "grpc-status-details-bin" and isinstance(value, bytes):
                    delay = retry_delay_from_status(value)
            raise _Retryable(message, delay) from exc

    async def export_traces(self, request: ExportTraceServiceRequest) -> int:
        response = await self._call(self.traces.Export, request)
        return response.partial_success.rejected_spans

    async def export_logs(self, request: ExportLogsServiceRequest) -> int:
        response = await self._call(self.logs.Export, request)
        return response.partial_success.rejected_log_records

    async def close(self) -> None:
        await self.channel.close()


class _HttpTransport:
    name = "http"

    def __init__(self, base: str, *, timeout: float, concurrency: int, tls: ClientTls | None = None,
                 headers: dict[str, str] | None = None) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.base = base.rstrip("/")
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.server_hostname = tls.server_name if tls is not None else None
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, concurrency),
                                           ssl=tls.ssl_context() if tls is not None else True),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def _post(self, path: str, body: bytes) -> bytes:
        try:
            async with self.session.post(self.base + path, data=body, headers=self.headers,
                                         server_hostname=self.server_hostname) as resp:
                payload = await resp.read()
                if resp.status == 200:
                    return payload
                message = f"HTTP {resp.status} from {path}: {payload[:200]!r}"
                if resp.status in (429, 502, 503, 504):
                    raise _Retryable(message, _retry_after(resp.headers.get("Retry-After")))
                raise _Permanent(message)
        except (self._aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", None) from exc

    async def export_traces(self, request: ExportTraceServiceRequest) -> int:
        payload = await self._post("/v1/traces", request.SerializeToString())
        return ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans if payload else 0

    async def export_logs(self, request: ExportLogsServiceRequest) -> int:
        payload = await self._post("/v1/logs", request.SerializeToString())
        return ExportLogsServiceResponse.FromString(payload).partial_success.rejected_log_records if payload else 0

    async def close(self) -> None:
        await self.session.close()


def _request_key(request: Any) -> int:
    if isinstance(request, ExportTraceServiceRequest):
        return max((s.end_time_unix_nano for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans),
                   default=0)
    return max((lr.time_unix_nano for rl in request.resource_logs for sl in rl.scope_logs for lr in sl.log_records),
               default=0)


async def run_simulation(endpoint: str, *, calls: int, concurrency: int = 8, seed: int = 1, insecure: bool = True,
                         progress: Callable[[int], None] | None = None, timeout: float = 30.0,
                         tls: ClientTls | None = None, api_key: str | None = None) -> SimulationReport:
    """Generate ``calls`` calls and send them to an OTLP receiver, ``concurrency`` calls at a time.

    ``endpoint`` is ``host:port`` (or ``grpc://host:port``) for OTLP/gRPC, ``http(s)://host:port`` for
    OTLP/HTTP protobuf. Each call's trace and log requests go out in time order (its root span last).
    RESOURCE_EXHAUSTED / UNAVAILABLE / DEADLINE_EXCEEDED and HTTP 429/502/503/504 are retried with
    exponential backoff (0.5 s doubling to 30 s, ±20 % jitter), waiting at least the server's RetryInfo /
    Retry-After, for up to 120 s per request. ``progress`` gets the number of calls finished so far.
    ``tls`` talks TLS to the collector (gRPC, or HTTP at ``https://``); ``api_key`` is sent as
    ``Authorization: Bearer <key>``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    transport: _GrpcTransport | _HttpTransport
    authorization = {"authorization": f"Bearer {api_key}"} if api_key else {}
    if endpoint.startswith(("http://", "https://")):
        transport = _HttpTransport(endpoint, timeout=timeout, concurrency=concurrency, tls=tls,
                                   headers=authorization)
    else:
        transport = _GrpcTransport(endpoint.removeprefix("grpc://"), insecure=insecure, timeout=timeout, tls=tls,
                                   metadata=tuple(authorization.items()))
    stats = {"spans": 0, "logs": 0, "requests": 0, "retries": 0, "rejected_spans": 0, "rejected_logs": 0,
             "failed": 0, "calls": 0}
    errors: list[str] = []
    jitter = random.Random(seed ^ 0x5EED)
    loop = asyncio.get_running_loop()

    async def export(request: Any) -> None:
        is_trace = isinstance(request, ExportTraceServiceRequest)
        if is_trace:
            count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        else:
            count = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        backoff = _INITIAL_BACKOFF_S
        deadline = loop.time() + _MAX_RETRY_ELAPSED_S
        while True:
            try:
                rejected = await (transport.export_traces(request) if is_trace else transport.export_logs(request))
            except _Retryable as exc:
                delay = max(exc.delay or 0.0, backoff * jitter.uniform(0.8, 1.2))
                if loop.time() + delay > deadline:
                    stats["failed"] += 1
                    if len(errors) < 10:
                        errors.append(f"gave up after retries: {exc}")
                    return
                stats["retries"] += 1
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            except _Permanent as exc:
                stats["failed"] += 1
                if len(errors) < 10:
                    errors.append(str(exc))
                return
            stats["requests"] += 1
            stats["spans" if is_trace else "logs"] += count
            stats["rejected_spans" if is_trace else "rejected_logs"] += rejected
            return

    source = _iter_calls(calls, seed, None)

    async def worker() -> None:
        for call in source:      # one shared iterator: each worker takes the next call
            requests = sorted([*call.trace_requests, *call.log_requests], key=_request_key)
            for request in requests:
                await export(request)
            stats["calls"] += 1
            if progress is not None:
                progress(stats["calls"])

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, max(1, calls))):
                group.create_task(worker())
    finally:
        await transport.close()
    return SimulationReport(
        endpoint=endpoint, transport=transport.name, calls=stats["calls"], spans=stats["spans"],
        log_records=stats["logs"], requests=stats["requests"], retries=stats["retries"],
        rejected_spans=stats["rejected_spans"], rejected_log_records=stats["rejected_logs"],
        failed_requests=stats["failed"], elapsed_s=time.perf_counter() - started, errors=tuple(errors),
    )
