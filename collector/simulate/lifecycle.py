"""Calls that never become a conversation: queued, ringing, declined, missed, and a failed dial.

What decides their status (design.md §4): ``queued`` is one ``call.queued`` log record with
``call.status="queued"`` and no trace context (correlate by ``call.id``); ``ringing`` is ``call.ringing``
(after ``call.queued`` for some) and nothing else; ``declined`` (SIP 603/486/600) and ``missed`` (480/408
outbound, 487 inbound caller hang-up after waiting) are either a short session span carrying
``sip.response.code`` (status ERROR on some, so SIP must win over the span status) or ``call.declined`` /
``call.missed`` log records with no spans; an invalid number is a SIP 404/484 session span and a
``call.failed`` log record.
"""

from __future__ import annotations

from collector.simulate.builder import CallBuilder
from collector.simulate.model import CLIENT, ERR, SERVER, DraftSpan, ms
from collector.simulate.profiles import SCOPE_NATIVE

__all__ = ["build_queued", "build_ringing", "build_sip_outcome", "build_invalid_number"]


def build_queued(b: CallBuilder) -> None:
    b.identity(b.r.choice(("outbound", "outbound", "inbound")))
    b.status_source = "call.status"
    b.log(0, "call.queued", "Waiting for a free concurrency slot",
          {**b.call_attrs(), "call.status": "queued", "queue.position": b.r.randint(1, 12),
           "queue.name": f"{b.agent.name}-lines"}, traced=False)
    b.cut = ms(b.r.uniform(1000, 60000))


def build_ringing(b: CallBuilder) -> None:
    r = b.r
    b.identity(r.choice(("outbound", "outbound", "inbound")))
    b.session = DraftSpan(b.sid(), b"", "call", SERVER, 0, 0, {}, 0, SCOPE_NATIVE)   # started, not ended
    t = 0
    if b.direction == "outbound" and r.random() < 0.4:
        b.log(t - ms(r.uniform(2000, 40000)), "call.queued", "Queued by the dialer",
              {**b.call_attrs(), "queue.position": r.randint(1, 5)}, traced=False)
    b.log(t, "call.ringing", f"Ringing {b.to_number}", b.call_attrs(), span=b.session)
    b.cut = t + ms(r.uniform(1000, 20000))


def build_sip_outcome(b: CallBuilder) -> None:
    """declined / missed: a short session span with sip.response.code, or lifecycle events only."""
    r = b.r
    if b.status == "declined":
        b.identity("outbound")
        code, reason = r.choice(((603, "Decline"), (603, "Decline"), (486, "Busy Here"), (600, "Busy Everywhere")))
        duration = ms(r.uniform(300, 2000) if code in (486, 600) else r.uniform(2500, 15000))
        status_reason = "busy" if code in (486, 600) else "callee declined"
    elif r.random() < 0.7:
        b.identity("outbound")
        code, reason = r.choice(((480, "Temporarily Unavailable"), (408, "Request Timeout")))
        duration = ms(r.uniform(25000, 45000))
        status_reason = "no answer"
    else:
        b.identity("inbound")
        code, reason = 487, "Request Terminated"
        b.log(-ms(r.uniform(500, 2000)), "call.queued", "All lines busy, caller waiting",
              {**b.call_attrs(), "queue.position": r.randint(1, 8)}, traced=False)
        duration = ms(r.uniform(5000, 40000))
        status_reason = "caller hung up before answer"
    b.sip_code = code
    b.status_reason = status_reason
    via_span = r.random() < 0.6
    sid = b.sid()
    holder = DraftSpan(sid, b"", "call", SERVER if b.direction == "inbound" else CLIENT, -ms(r.uniform(20, 80)),
                       duration, {}, 0, SCOPE_NATIVE)
    b.log(0, "call.ringing", f"Ringing {b.to_number}", b.call_attrs(), span=holder if via_span else None)
    if via_span:
        b.status_source = "sip"
        holder.attrs = {"voice.stage": "session", "call.id": b.call_id, **b.call_attrs(),
                        "sip.response.code": code, "sip.response.reason": reason}
        if r.random() < 0.3:
            holder.fail(f"SIP {code} {reason}")
        b.spans.append(holder)
        b.session = holder
    else:
        b.status_source = "event"
        b.log(duration, f"call.{b.status}", f"Call {b.status}: SIP {code} {reason}",
              {**b.call_attrs(), "sip.response.code": code, "call.status_reason": status_reason})
    b.ended_at = duration
    b.webhooks(duration)


def build_invalid_number(b: CallBuilder) -> None:
    r = b.r
    b.identity("outbound")
    code, reason = r.choice(((404, "Not Found"), (484, "Address Incomplete")))
    b.sip_code, b.status_reason = code, "invalid number"
    duration = ms(r.uniform(200, 1500))
    s = b.span("call", None, 0, duration, {"voice.stage": "session", "call.id": b.call_id,
                                           **b.call_attrs(), "sip.response.code": code,
                                           "call.status_reason": "invalid number"}, kind=CLIENT)
    s.fail(f"SIP {code} {reason}")
    b.session = s
    b.log(duration, "call.failed", f"Call failed: invalid number {b.to_number}",
          {**b.call_attrs(), "call.status_reason": "invalid number", "sip.response.code": code},
          span=s, severity=ERR)
    b.status_source = "event"
    b.ended_at = duration
    b.webhooks(duration)


# -- conversations
