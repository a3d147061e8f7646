"""Who calls: three agents with their own models, voices, tools and scripts, and the SDK identities
(resources, instrumentation scopes) their telemetry carries. Pure data; the builders draw from it.

``sarah-support`` (ISP support, mostly inbound, OpenAI gpt-4o-mini / gpt-4o), ``max-sales`` (outbound
campaigns, gpt-4o / claude), ``ivy-booking`` (dental bookings and reminder campaigns, Groq llama). Phone
numbers are fictional (555-01xx).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector.simulate.encoding import key_values

__all__ = ["Tool", "Agent", "TOOLS", "TOOL_ERRORS", "AGENTS", "NATIVE_RESOURCES", "OLD_WORKER",
           "GENAI_RESOURCES", "SCOPE_NATIVE", "SCOPE_EVENTS", "SCOPE_AGENT", "SCOPE_OPENAI"]


@dataclass(frozen=True)
class Tool:
    name: str
    median_ms: float
    args: Callable[[random.Random], dict[str, Any]]
    result: Callable[[random.Random, dict[str, Any]], dict[str, Any]]
    needs_approval: bool = False


@dataclass(frozen=True)
class Agent:
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
          result: Callable[[random.Random, dict[str, Any]], dict[str, Any]], needs_approval: bool = False) -> Tool:
    return Tool(name, median_ms, args, result, needs_approval)


TOOLS = {t.name: t for t in (
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

TOOL_ERRORS = (("timeout", "tool call timed out after 5s"), ("http_500", "upstream returned HTTP 500"),
                ("tool_error", "record not found"))

AGENTS = (
    Agent(
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
    Agent(
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
    Agent(
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



# ------------------------------------------------------------------------------- SDK identities

def _worker_resource(i: int) -> Resource:
    old = i == 3
    return Resource(attributes=key_values({
        "service.name": "voice-agent", "service.namespace": "voice", "service.version": "2.9.1" if old else "2.14.0",
        "service.instance.id": f"voice-worker-{i}", "host.name": f"voice-worker-{i}",
        "deployment.environment.name": "production", "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.22.0" if old else "1.27.0",
    }))


NATIVE_RESOURCES = tuple(_worker_resource(i) for i in range(4))
OLD_WORKER = 3            # its SDK puts the log event name in the ``event.name`` attribute
GENAI_RESOURCES = tuple(Resource(attributes=key_values({
    "service.name": "assistant-api", "service.version": "1.4.0", "service.instance.id": f"assistant-api-{i}",
    "deployment.environment.name": "production", "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.27.0",
})) for i in range(2))
SCOPE_NATIVE = InstrumentationScope(name="voice-platform", version="2.14.0")
SCOPE_EVENTS = InstrumentationScope(name="voice-platform.events", version="2.14.0")
SCOPE_AGENT = InstrumentationScope(name="voice-assistant.agent", version="1.4.0")
SCOPE_OPENAI = InstrumentationScope(name="opentelemetry.instrumentation.openai_v2", version="2.1b0")
