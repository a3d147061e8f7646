"""Processing stage: the PII policy — what is stored of phone numbers, e-mail addresses, payment card numbers,
transcripts, tool payloads, recording URLs and attributes marked personal (decode → map → **privacy** → records).

Applied once per item, after mapping and before any row is built (collector/pipeline.py): mappers read the true
values, so character counts, tool errors and turn pairing stay right, and every text that becomes a stored row —
raw span attributes, span events, resource attributes, derived facts, tool calls, call-log events and log
bodies — passes through here first. Nothing else in the collector decides what personal data is stored.

Each class has an action:

* ``keep`` — stored as sent;
* ``mask`` — replaced by a type marker (``[email]``, ``[transcript]``…; a phone number keeps its last two
  digits: ``[phone …67]``);
* ``hash`` — replaced by a salted, stable HMAC-SHA256 (``[phone #3f9a0c1d2e4b5a67]``): the same number, address or
  text gives the same marker on every call and every collector sharing ``pii_salt``, so one caller's calls
  still group, and nobody without the salt can test a guess against it.

Phone numbers, e-mail addresses and card numbers are found in any text (detectors below) and in the attributes
that hold them (``call.from``…). Transcripts, tool payloads, recording URLs and marked attributes are found by
where they are: attribute names, fact names, event names; inside chat-message JSON (``gen_ai.input.messages``
and the like) the message text follows the transcript class and tool arguments and results the tool class, while
roles, ids and tool names are kept.
"""

from __future__ import annotations

from collector.privacy.config import ACTIONS, CLASSES, DEFAULT_POLICY, parse_attributes, parse_policy
from collector.privacy.detectors import luhn_valid
from collector.privacy.policy import KEEP_ALL, PiiPolicy

__all__ = ["CLASSES", "ACTIONS", "DEFAULT_POLICY", "PiiPolicy", "KEEP_ALL", "parse_policy", "parse_attributes",
           "luhn_valid"]
