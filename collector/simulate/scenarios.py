"""Scenarios: which calls a simulation holds — how many of each status, which shape builds each — and where
they sit in time. Everything but absolute times is a pure function of ``seed``; times are relative to
``start`` (default: now minus ``WINDOW``), so a fixed ``start`` makes the traffic byte-exact.

Statuses come in fixed proportions (completed 70 %, failed 8 %, missed 6 %, declined 5 %, active 5 %,
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

~15 % of calls (completed / failed only) are "GenAI" calls with no native attributes (genai.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from collector.simulate.builder import CallBuilder
from collector.simulate.conversation import build_conversation
from collector.simulate.genai import build_genai_call
from collector.simulate.lifecycle import build_invalid_number, build_queued, build_ringing, build_sip_outcome
from collector.simulate.model import S, SimulatedCall, ms

__all__ = ["STATUSES", "WINDOW", "generate_calls", "iter_calls"]

STATUSES = ("queued", "ringing", "active", "completed", "failed", "declined", "missed")
WINDOW = timedelta(hours=3)
"""Calls are spread over ``[start, start + WINDOW]``; open calls sit at its end ("now")."""

_STATUS_SHARES = {"completed": 0.70, "failed": 0.08, "missed": 0.06, "declined": 0.05, "active": 0.05,
                  "ringing": 0.03, "queued": 0.03}
_GENAI_SHARE = 0.15 / (0.70 + 0.08)      # of completed / failed calls → ~15 % of all calls


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


def iter_calls(count: int, seed: int, start: datetime | None) -> Iterator[SimulatedCall]:
    if count < 0:
        raise ValueError("count must be >= 0")
    if start is None:
        start = datetime.now(timezone.utc) - WINDOW
    elif start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    window_start = int(start.timestamp()) * S + start.microsecond * 1000
    window_ns = int(WINDOW.total_seconds()) * S
    now = window_start + window_ns
    master = random.Random(seed)
    for status in _allocate_statuses(count, master):
        r = random.Random(master.getrandbits(64))
        genai = status in ("completed", "failed") and r.random() < _GENAI_SHARE
        b = CallBuilder(r, status, "genai" if genai else "native")
        if genai:
            build_genai_call(b, failed=status == "failed")
        elif status == "queued":
            build_queued(b)
        elif status == "ringing":
            build_ringing(b)
        elif status in ("declined", "missed"):
            build_sip_outcome(b)
        elif status == "failed":
            kind = r.choices(("provider_error", "invalid_number", "crash"), weights=(0.55, 0.25, 0.2))[0]
            if kind == "invalid_number":
                build_invalid_number(b)
            else:
                build_conversation(b, kind)
        elif status == "active":
            build_conversation(b, "active")
        else:
            build_conversation(b, "completed")
        if b.cut is not None:
            offset = now - b.cut - ms(r.uniform(500, 3000))
        else:
            last = max([s.end for s in b.spans] + [lg.time for lg in b.logs])
            first = min([s.start for s in b.spans] + [lg.time for lg in b.logs])
            latest = max(window_start, now - (last - first) - 10 * 60 * S)
            offset = r.randint(window_start, latest) - first
        yield b.finish(offset)


def generate_calls(count: int, *, seed: int = 1, start: datetime | None = None) -> list[SimulatedCall]:
    """``count`` simulated calls spread over ``[start, start + WINDOW]`` (default start: now − WINDOW).

    >>> calls = generate_calls(100, seed=7, start=datetime(2025, 1, 1, tzinfo=timezone.utc))
    >>> sorted({c.status for c in calls}) == sorted(STATUSES)
    True
    """
    return list(iter_calls(count, seed, start))


