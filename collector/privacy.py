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

import hashlib
import hmac
import re
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import orjson

from collector.mappers.base import DerivedEvent, ToolCallDraft
from storage import facts as F

__all__ = ["CLASSES", "ACTIONS", "DEFAULT_POLICY", "PiiPolicy", "KEEP_ALL", "parse_policy", "parse_attributes",
           "luhn_valid"]

CLASSES = ("phone", "email", "card", "transcript", "tool", "recording", "personal")
ACTIONS = ("keep", "mask", "hash")
# Payment card numbers are masked unless configured otherwise: PCI DSS forbids storing them in clear and no
# panel needs them. Everything else is kept unless configured, as before this policy existed.
DEFAULT_POLICY = "card=mask"

_LABELS = {"phone": "phone", "email": "email", "card": "card", "transcript": "transcript", "tool": "tool payload",
           "recording": "recording url", "personal": "personal"}
_ALIASES = {"phone_numbers": "phone", "phones": "phone", "emails": "email", "e-mail": "email", "cards": "card",
            "payment_cards": "card", "transcripts": "transcript", "tools": "tool", "tool_payloads": "tool",
            "recordings": "recording", "recording_url": "recording", "recording_urls": "recording",
            "marked": "personal"}


def parse_policy(text: str) -> dict[str, str]:
    """``"mask"`` (every class), ``"phone=hash,email=mask"``, ``"mask,transcript=keep"`` … → action per class.

    Items apply left to right on top of the default (``card=mask``, everything else ``keep``); a bare action
    sets every class, so ``keep`` alone stores everything as sent.
    """
    actions = dict.fromkeys(CLASSES, "keep")
    for item in (part.strip() for part in f"{DEFAULT_POLICY},{text}".split(",")):
        if not item:
            continue
        name, sep, action = item.partition("=")
        if not sep:
            name, action = "all", name
        name, action = name.strip().lower(), action.strip().lower()
        name = _ALIASES.get(name, name)
        if action not in ACTIONS:
            raise ValueError(f"pii: {action!r} is not an action (use keep, mask or hash) in {item!r}")
        if name == "all":
            actions = dict.fromkeys(CLASSES, action)
        elif name in actions:
            actions[name] = action
        else:
            raise ValueError(f"pii: unknown class {name!r} in {item!r}; classes: all, {', '.join(CLASSES)}")
    return actions


def parse_attributes(text: str) -> tuple[tuple[str, str], ...]:
    """``"customer.name, customer.mobile=phone, notes.*=transcript"`` → ((name or prefix*, class), …).

    A name without a class is ``personal``; a trailing ``*`` makes it a prefix.
    """
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, cls = item.partition("=")
        name, cls = name.strip(), _ALIASES.get(cls.strip().lower(), cls.strip().lower()) if sep else "personal"
        if not name or name == "*":
            raise ValueError(f"pii_attributes: {item!r} names no attribute")
        if cls not in CLASSES:
            raise ValueError(f"pii_attributes: unknown class {cls!r} in {item!r}; classes: {', '.join(CLASSES)}")
        found.append((name, cls))
    return tuple(found)


# --- detectors ----------------------------------------------------------------------------------------------
# Each match is validated in Python (digit counts, Luhn, number plans): the patterns find candidates only. A
# match never starts or ends inside a word or a longer number (look-arounds), so hex ids, timestamps and
# version strings are left alone, and markers contain no quote or backslash, so JSON text stays JSON.

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
                    r"(?![\w-])")
# The first character is matched before the look-behind checks the one before it: the regex engine then skips
# ahead to candidate characters instead of trying every position (several times faster on JSON text).
_CARD = re.compile(r"[2-6](?<![\w.+-].)(?:[ -]?\d){12,18}(?![\w])")
_PHONE = re.compile(r"[+(\d](?<![\w+.].)[\d ().+-]{5,40}\d(?![\w])")
# Quick test before any regex: digits and separators become "0" (bytes.translate), and a card needs a run of 13
# of them, a phone number (as _phone_digits reads it) one of 9.
_RUNS = bytes(48 if 48 <= i <= 57 or i in b" -.()+" else 120 for i in range(256))
_CARD_RUN, _PHONE_RUN = b"0" * 13, b"0" * 9
_NON_DIGITS = re.compile(r"\D+")
_GROUPS = re.compile(r"[ ().-]+")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _is_card(candidate: str) -> str | None:
    """The digits of a payment card number (13–19 digits, issuer 2–6, Luhn check), else None."""
    digits = _NON_DIGITS.sub("", candidate)
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
        return digits
    return None


def _nanp(digits: str) -> bool:
    """A North American number: ten digits, the area code starting with 2–9 (the exchange is not checked:
    the 555-123-4567 of examples and test data must count)."""
    return len(digits) == 10 and digits[0] in "23456789"


def _phone_digits(candidate: str) -> str | None:
    """The normalized digits of a phone number written in ``candidate``, else None.

    Recognized: ``+`` and 8–15 digits (E.164, any separators); ``00`` and 10–17 digits; North American numbers
    (10 digits, or 11 with a leading 1, the area code starting with 2–9) bare or grouped 3-3-4; national numbers with a trunk ``0`` (9–12
    digits in at least two groups of 2–6, or 10–11 bare digits). Normalized for hashing: international without
    ``+`` / ``00``, North American with their country code 1.
    """
    text = candidate.strip()
    digits = _NON_DIGITS.sub("", text)
    count = len(digits)
    if count < 7:
        return None
    if text.startswith("+"):
        return digits if 8 <= count <= 15 else None
    if digits.startswith("00"):
        return digits[2:] if 10 <= count <= 17 else None
    groups = [len(g) for g in _GROUPS.split(text.strip("()")) if g]
    if count == 10 and _nanp(digits) and groups in ([3, 3, 4], [10]):
        return "1" + digits
    if count == 11 and digits[0] == "1" and _nanp(digits[1:]) and groups in ([1, 3, 3, 4], [11], [1, 10]):
        return digits
    if digits[0] == "0" and digits[1] != "0":
        if len(groups) == 1:
            return digits if 10 <= count <= 11 else None
        if 9 <= count <= 12 and all(2 <= size <= 6 for size in groups):
            return digits
    return None


class PiiPolicy:
    """The configured policy; ``active`` is False when everything is kept (the pipeline then skips it)."""

    def __init__(self, actions: Mapping[str, str] | None = None, *, salt: str = "",
                 attributes: Iterable[tuple[str, str]] = ()) -> None:
        self.actions = {cls: "keep" for cls in CLASSES}
        self.actions.update(actions or {})
        for cls, action in self.actions.items():
            if cls not in CLASSES or action not in ACTIONS:
                raise ValueError(f"pii: bad action {action!r} for class {cls!r}")
        if "hash" in self.actions.values() and len(salt) < 16:
            raise ValueError("pii: hash needs pii_salt (CALLSCOPE_PII_SALT), a secret of at least 16 characters, "
                             "the same on every collector (change it and the same value hashes differently)")
        # Without a salt (no class hashed), the keyed hashes this module still makes (turn pairing keys of
        # masked transcripts) use a fixed key: they only need to be equal for equal texts.
        self._key = (salt or "callscope-pii").encode("utf-8")
        self.active = any(action != "keep" for action in self.actions.values())
        self._detect = tuple(cls for cls in ("email", "card", "phone") if self.actions[cls] != "keep")
        exact: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        for name, cls in (*_BUILTIN_KEYS.items(), *attributes):
            if name.endswith("*"):
                prefixes.append((name[:-1], cls))
            else:
                exact[name] = cls
        for prefix, role_suffix in _MESSAGE_FAMILIES:
            prefixes.append((prefix, "messages:" + role_suffix))
        self._exact = {key: cls for key, cls in exact.items() if self._matters(cls)}
        self._prefixes = tuple((p, c) for p, c in prefixes if self._matters(c))
        self._prefix_tuple = tuple(p for p, _ in self._prefixes)
        self._marked = self.actions["personal"] != "keep"
        self._keys_matter = bool(self._exact or self._prefixes or self._marked)
        # Only the phone / e-mail / card classes are hidden: an item whose text holds none of them and no
        # attribute that holds one by name needs no walk (needs() says so with a few C-speed searches).
        self.detectors_only = all(self.actions[cls] == "keep" for cls in ("transcript", "tool", "recording",
                                                                            "personal"))

    def _matters(self, cls: str) -> bool:
        if cls == _TOOL_ERROR:
            return self.actions["tool"] != "keep"
        if cls in (_EITHER, "transcript") or cls.startswith("messages:"):
            # transcripts too when only tools are hidden: chat messages hold tool calls and results
            return self.actions["transcript"] != "keep" or self.actions["tool"] != "keep"
        return self.actions[cls] != "keep"

    # --- markers ------------------------------------------------------------------------------------------

    def _digest(self, cls: str, normalized: str) -> str:
        message = f"{cls}\0{normalized}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:16]

    def _marker(self, cls: str, value: Any) -> str:
        """The marker replacing ``value`` (any type) under ``cls``'s action (mask or hash)."""
        text = value if isinstance(value, str) else _canonical(value)
        label = _LABELS[cls]
        if self.actions[cls] == "hash":
            if cls == "phone":
                text = _phone_digits(text) or _NON_DIGITS.sub("", text) or text
            elif cls == "email":
                text = text.strip().lower()
            elif cls == "card":
                text = _NON_DIGITS.sub("", text) or text
            return f"[{label} #{self._digest(cls, text)}]"
        if cls == "phone":
            digits = _NON_DIGITS.sub("", text)
            return f"[phone …{digits[-2:]}]" if len(digits) >= 4 else "[phone]"
        return f"[{label}]"

    def status(self, text: str, *, tool_span: bool = False) -> str:
        """A span's status message: on a tool span the tool's error (tool class), elsewhere free text."""
        return self._payload("tool", text) if tool_span else self.text(text)

    def pair_key(self, text: str) -> str:
        """A turn pairing key (LiveKit user and agent turns repeat the user's words): kept with the transcript,
        else a keyed hash, so the words are not stored and equal texts still pair."""
        if self.actions["transcript"] == "keep":
            return self.text(text)
        return f"[transcript #{self._digest('transcript', text)}]"

    # --- detectors ----------------------------------------------------------------------------------------

    def _sub_email(self, match: re.Match[str]) -> str:
        return self._marker("email", match.group(0))

    def _sub_card(self, match: re.Match[str]) -> str:
        candidate = match.group(0)
        return self._marker("card", candidate) if _is_card(candidate) else candidate

    def _sub_phone(self, match: re.Match[str]) -> str:
        candidate = match.group(0)
        if _phone_digits(candidate):
            return self._marker("phone", candidate)
        if " " not in candidate:
            return candidate
        # several numbers in a row ("555-123-4567 555-987-6543"): the longest run of tokens that is a number,
        # from left to right
        tokens = candidate.split(" ")
        out: list[str] = []
        start = 0
        while start < len(tokens):
            for end in range(min(len(tokens), start + 6), start, -1):
                chunk = " ".join(tokens[start:end])
                if _phone_digits(chunk):
                    out.append(self._marker("phone", chunk))
                    start = end
                    break
            else:
                out.append(tokens[start])
                start += 1
        return " ".join(out)

    def text(self, text: str) -> str:
        """Free text with the phone numbers, e-mail addresses and card numbers the policy hides replaced."""
        for cls in self._detect:
            if cls == "email":
                if "@" in text:
                    text = _EMAIL.sub(self._sub_email, text)
            elif cls == "card":
                text = _CARD.sub(self._sub_card, text)
            else:
                text = _PHONE.sub(self._sub_phone, text)
        return text

    def _found_in(self, text: str) -> bool:
        """Does ``text`` (e.g. the JSON of all of a span's attributes) hold anything a detector hides?"""
        runs = None
        for cls in self._detect:
            if cls == "email":
                if "@" in text and _EMAIL.search(text):
                    return True
                continue
            if runs is None:
                runs = text.encode("utf-8", "surrogatepass").translate(_RUNS)
            if cls == "card":
                if _CARD_RUN in runs and any(_is_card(m.group(0)) for m in _CARD.finditer(text)):
                    return True
            elif _PHONE_RUN in runs:
                for match in _PHONE.finditer(text):
                    if self._sub_phone(match) != match.group(0):
                        return True
        return False

    def scan(self, value: Any) -> Any:
        """``value`` (str, list, dict, anything) with the detectors applied to every string in it."""
        if not self._detect:
            return value
        kind = type(value)
        if kind is str:
            return self.text(value)
        if kind is list or kind is tuple:
            return [self.scan(item) for item in value]
        if kind is dict:
            return {key: self.scan(item) for key, item in value.items()}
        return value

    # --- classes --------------------------------------------------------------------------------------------

    def _payload(self, cls: str, value: Any) -> Any:
        """A whole value of class ``cls``: kept (detectors still apply) or replaced by its marker."""
        if value is None or value == "":
            return value
        if self.actions[cls] == "keep":
            return self.scan(value)
        return self._marker(cls, value)

    def _messages(self, value: Any, root: str) -> Any:
        """Chat messages (a JSON string or its structure): texts follow ``root`` (transcript) or the tool class
        inside tool calls and results; structural fields (roles, ids, names, types) are kept."""
        if self.actions["transcript"] == "keep" and self.actions["tool"] == "keep":
            return self.scan(value)
        if isinstance(value, str):
            if value[:1] not in ("{", "["):
                return self._payload(root, value)
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                return self._payload(root, value)
            return orjson.dumps(self._walk(parsed, root), default=str).decode()
        return self._walk(value, root)

    def _walk(self, node: Any, context: str) -> Any:
        """One node of a message structure. Inside a tool call or result everything but structural fields is
        the tool's payload, replaced whole (numbers included); elsewhere strings are message text."""
        if isinstance(node, str):
            return self._payload(context, node)
        if isinstance(node, list):
            return [self._walk(item, context) for item in node]
        if not isinstance(node, dict):
            return node if context != "tool" else self._payload("tool", node)
        here = context
        if node.get("role") in _TOOL_ROLES or node.get("type") in _TOOL_TYPES:
            here = "tool"
        out = {}
        for key, item in node.items():
            if key in _STRUCTURAL:
                out[key] = self.scan(item)
            elif key in _TOOL_CONTAINERS:
                out[key] = self._walk(item, "tool")
            elif here == "tool" or key in _TOOL_ARGUMENTS:
                out[key] = self._payload("tool", item)
            else:
                out[key] = self._walk(item, here)
        return out

    def _class_of(self, key: str, attributes: Mapping[str, Any], tool_span: bool) -> str | None:
        cls = self._exact.get(key)
        if cls is None and self._prefixes and key.startswith(self._prefix_tuple):
            for prefix, found in self._prefixes:
                if key.startswith(prefix):
                    cls = _flattened_class(key, prefix, found, attributes) if found.startswith("messages:") \
                        else found
                    break
        if cls is None and self._marked and _is_marked(key):
            cls = "personal"
        if cls == _EITHER:
            cls = "tool" if tool_span else "transcript"
        elif cls == _TOOL_ERROR:
            cls = "tool" if tool_span else None
        return cls

    def _value(self, cls: str | None, key: str, value: Any) -> Any:
        """One attribute's value under its class (None: no class, the detectors only)."""
        if cls is None:
            return self.scan(value)
        if cls == "transcript" and (key in _MESSAGE_KEYS or isinstance(value, (dict, list))
                                    or (isinstance(value, str) and value[:1] in ("{", "["))):
            return self._messages(value, cls)   # chat messages: tool calls inside follow the tool class
        if cls == "tool" and key in _MESSAGE_KEYS:
            return self._messages(value, cls)   # lists of function calls: names and ids stay readable
        return self._payload(cls, value)

    def attributes(self, attributes: dict[str, Any], *, tool_span: bool = False,
                   serialized: str | None = None) -> dict[str, Any]:
        """Attributes as they may be stored; the same dict when nothing in it is hidden.

        ``serialized`` (their JSON, when the caller has it) lets a dict that holds nothing to hide be passed
        over with a few C-speed searches instead of a walk.
        """
        if not self.active or not attributes:
            return attributes
        if serialized is not None and not self._needs_walk(attributes, serialized):
            return attributes
        out = {}
        changed = False
        for key, value in attributes.items():
            new = self._value(self._class_of(key, attributes, tool_span) if self._keys_matter else None, key, value)
            changed = changed or new is not value and new != value
            out[key] = new
        return out if changed else attributes

    def needs(self, probe: Callable[[], str], *attribute_maps: Mapping[str, Any]) -> bool:
        """Whether an item must go through the policy: always when a class is found by place (transcripts,
        tools…); with the detectors only, when an attribute holds a hidden class by name or ``probe()`` (all of
        the item's text, e.g. its JSON) holds a phone number, address or card number."""
        if not self.active:
            return False
        if not self.detectors_only:
            return True
        for attributes in attribute_maps:
            if attributes and self._has_classified_key(attributes):
                return True
        return self._found_in(probe())

    def _has_classified_key(self, attributes: Mapping[str, Any]) -> bool:
        if not self._exact.keys().isdisjoint(attributes):
            return True
        return bool(self._prefixes) and any(key.startswith(self._prefix_tuple) for key in attributes)

    def _needs_walk(self, attributes: Mapping[str, Any], serialized: str) -> bool:
        if self._keys_matter:
            if not self._exact.keys().isdisjoint(attributes):
                return True
            if self._prefixes and any(key.startswith(self._prefix_tuple) for key in attributes):
                return True
            if self._marked and any(_is_marked(key) for key in attributes):
                return True
        return bool(self._detect) and self._found_in(serialized)

    def span_events(self, events: list[dict[str, Any]], *, tool_span: bool = False) -> list[dict[str, Any]]:
        """Span events with their attributes under the policy; the content of chat-message events (LiveKit ≤ 1.7
        ``gen_ai.user.message``…) is a transcript, or a tool result for ``gen_ai.tool.message``."""
        if not self.active or not events:
            return events
        out = []
        for event in events:
            attributes = event.get("attributes") or {}
            name = event.get("name")
            cls = _MESSAGE_EVENTS.get(name) if isinstance(name, str) else None
            if cls is None:
                redacted = self.attributes(attributes, tool_span=tool_span)
            else:
                redacted = {key: self._messages(value, "tool" if key == "tool_calls" else cls)
                            if key in _MESSAGE_EVENT_KEYS else
                            self._value(self._class_of(key, attributes, tool_span), key, value)
                            for key, value in attributes.items()}
            out.append(event if redacted == attributes else {**event, "attributes": redacted})
        return out

    def facts(self, facts: dict[str, Any]) -> dict[str, Any]:
        """Derived facts (storage/derive.sql reads them into turns and calls) under the policy."""
        if not self.active or not facts:
            return facts
        out = {}
        for key, value in facts.items():
            if key == F.TURN_PAIR_KEY and isinstance(value, str):
                out[key] = self.pair_key(value)
                continue
            cls = FACT_CLASSES.get(key)
            out[key] = self.scan(value) if cls is None else self._payload(cls, value)
        return out

    def tool_call(self, draft: ToolCallDraft) -> ToolCallDraft:
        """Arguments, result and error text of a tool call follow the tool class (an error is often the result)."""
        if not self.active:
            return draft
        return replace(draft, arguments=self._payload("tool", draft.arguments),
                       result=self._payload("tool", draft.result),
                       error=self._payload("tool", draft.error) if draft.error else draft.error,
                       tool_name=self.scan(draft.tool_name))

    def event(self, event: str, message: str | None, data: Any, *, tool_span: bool = False
              ) -> tuple[str | None, Any]:
        """(message, data) of a call-log event, derived or sent as a log record, under the policy.

        The message and body of an event that carries what someone said (``user.message_received``, GenAI
        message events…) follow the transcript class, those of tool events the tool class; data keys follow
        their attribute's class. On a tool span (``tool_span``) an event's message is the tool's (an exception).
        """
        if not self.active:
            return message, data
        cls = _EVENT_CLASSES.get(event)
        if message:
            message = self._payload(cls, message) if cls is not None else self.status(message, tool_span=tool_span)
        if isinstance(data, dict):
            out = {}
            for key, value in data.items():
                if key == "body" or (cls is not None and key in _MESSAGE_EVENT_KEYS):
                    out[key] = self._messages(value, "tool" if key == "tool_calls" else cls) if cls is not None \
                        else self.scan(value)
                elif key in _EVENT_DATA_CLASSES and (key != "error" or cls == "tool"):
                    out[key] = self._value(_EVENT_DATA_CLASSES[key], key, value)
                else:
                    found = self._class_of(key, data, tool_span or cls == "tool") if self._keys_matter else None
                    out[key] = self._value(found, key, value)
            data = out
        elif data is not None:
            data = self.scan(data)
        return message, data

    def derived(self, derived: DerivedEvent) -> DerivedEvent:
        if not self.active:
            return derived
        message, data = self.event(derived.event, derived.message, derived.data)
        return replace(derived, message=message, data=data)



def _canonical(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return str(value)


_MARKED_SEGMENT = re.compile(r"(^|\.)pii\.")


def _is_marked(key: str) -> bool:
    """A key a framework marks personal: a ``pii`` segment (LiveKit ``lk.pii.*``)."""
    return "pii." in key and _MARKED_SEGMENT.search(key) is not None


def _flattened_class(key: str, prefix: str, family: str, attributes: Mapping[str, Any]) -> str | None:
    """``llm.input_messages.3.message.content`` and the like: transcript, or tool inside a tool call or for
    a tool-role message; structural leaves (role, name, id…) are not personal."""
    rest = key[len(prefix):]
    index, _, field = rest.partition(".")
    if not index.isdigit() or not field:
        return None
    leaf = field.rsplit(".", 1)[-1]
    if leaf in _STRUCTURAL:
        return None
    if "tool_call" in field or leaf in _TOOL_ARGUMENTS:
        return "tool"
    role = attributes.get(f"{prefix}{index}.{family.removeprefix('messages:')}")
    return "tool" if role in _TOOL_ROLES else "transcript"


_EITHER = "either"   # the class depends on the span: tool payload on a tool span, transcript elsewhere
_TOOL_ERROR = "tool error"   # a tool's error text on a tool span (it often quotes the payload); elsewhere free text

# Attributes whose value is personal by what it is, per convention (research/otel-voice-conventions.md).
_BUILTIN_KEYS: dict[str, str] = {
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
    "input.value": _EITHER, "output.value": _EITHER, "traceloop.entity.input": _EITHER,
    "traceloop.entity.output": _EITHER, "tool_call.function.arguments": "tool",
    "message.content": "transcript", "message.contents": "transcript", "llm.prompts": "transcript",
    "llm.prompt_template.variables": "transcript", "message.contents.*": "transcript",
    "exception.message": _TOOL_ERROR, "exception.stacktrace": _TOOL_ERROR, "frame.error.message": _TOOL_ERROR,
    "error.message": _TOOL_ERROR,
    # OpenTelemetry general conventions
    "user.email": "email", "user.full_name": "personal", "user.name": "personal",
    "recording.url": "recording",
}
# Flattened message lists: (prefix, where the message's role is relative to "<prefix><index>.")
_MESSAGE_FAMILIES = (("llm.input_messages.", "message.role"), ("llm.output_messages.", "message.role"),
                     ("gen_ai.prompt.", "role"), ("gen_ai.completion.", "role"))
_MESSAGE_KEYS = frozenset({"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
                           "input", "output", "lk.pii.chat_ctx", "lk.chat_ctx", "lk.pii.response.function_calls",
                           "lk.response.function_calls"})
_STRUCTURAL = frozenset({"role", "type", "id", "name", "tool_call_id", "call_id", "finish_reason", "index",
                         "model", "tool_name"})
_TOOL_ROLES = frozenset({"tool", "function", "ipython"})
# message parts that are a tool call or a tool's result (OpenAI, Anthropic, Gemini, GenAI parts)
_TOOL_TYPES = frozenset({"tool_result", "tool_call_response", "function_response", "function_call_output",
                         "tool_call", "tool_use", "function_call", "function"})
_TOOL_CONTAINERS = frozenset({"tool_calls", "function_call", "function", "functionCall", "functionResponse",
                              "function_response", "tool_use"})
_TOOL_ARGUMENTS = frozenset({"arguments", "args", "parameters"})

# Facts (storage/facts.py) that hold a class's values; every other text fact goes through the detectors
# (tests/test_privacy.py checks that each text fact of the contract is either here or a closed vocabulary).
FACT_CLASSES = {F.USER_TEXT: "transcript", F.AGENT_TEXT: "transcript", F.LLM_TEXT: "transcript",
                F.PROMPT_TEXT: "transcript", F.SUMMARY: "transcript", F.FROM_NUMBER: "phone",
                F.TO_NUMBER: "phone", F.RECORDING_URL: "recording"}
# Call-log events whose message (and ``text`` / ``content`` data, and log body) is what someone said, or a
# tool's payload.
_EVENT_CLASSES = {
    "user.message_received": "transcript", "agent.message_sent": "transcript", "agent.started_speaking": "transcript",
    "agent.greeting_sent": "transcript", "gen_ai.user.message": "transcript", "gen_ai.assistant.message": "transcript",
    "gen_ai.system.message": "transcript", "gen_ai.choice": "transcript", "gen_ai.content.prompt": "transcript",
    "gen_ai.content.completion": "transcript", "gen_ai.client.inference.operation.details": "transcript",
    "gen_ai.tool.message": "tool", "integration.failed": "tool", "tool.transfer.failed": "tool",
}
# Keys of event data (derived events, log attributes) holding a class's values: ``error`` only on tool events.
_EVENT_DATA_CLASSES = {"text": "transcript", "content": "transcript", "arguments": "tool", "result": "tool",
                       "error": "tool"}
_MESSAGE_EVENTS = {"gen_ai.user.message": "transcript", "gen_ai.assistant.message": "transcript",
                   "gen_ai.system.message": "transcript", "gen_ai.choice": "transcript",
                   "gen_ai.tool.message": "tool"}
_MESSAGE_EVENT_KEYS = frozenset({"content", "tool_calls", "message"})

KEEP_ALL = PiiPolicy()   # the policy of tests and tools that build rows without settings
