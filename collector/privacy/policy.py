"""Applying the PII policy to what becomes rows: attributes, span events, facts, tool calls, call-log events
(collector/pipeline.py calls it once per item, after mapping)."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import orjson

from collector.mappers.base import DerivedEvent, ToolCallDraft
from collector.privacy.config import ACTIONS, CLASSES, LABELS
from collector.privacy.detectors import CARD, CARD_RUN, EMAIL, NON_DIGITS, PHONE, PHONE_RUN, RUNS, is_card, phone_digits
from collector.privacy.locations import (
    BUILTIN_KEYS,
    EITHER,
    EVENT_CLASSES,
    EVENT_DATA_CLASSES,
    FACT_CLASSES,
    MESSAGE_EVENTS,
    MESSAGE_EVENT_KEYS,
    MESSAGE_FAMILIES,
    MESSAGE_KEYS,
    STRUCTURAL,
    TOOL_ARGUMENTS,
    TOOL_CONTAINERS,
    TOOL_ERROR,
    TOOL_ROLES,
    TOOL_TYPES,
    flattened_class,
    is_marked,
)
from storage import facts as F

__all__ = ["PiiPolicy", "KEEP_ALL"]


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
        for name, cls in (*BUILTIN_KEYS.items(), *attributes):
            if name.endswith("*"):
                prefixes.append((name[:-1], cls))
            else:
                exact[name] = cls
        for prefix, role_suffix in MESSAGE_FAMILIES:
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
        if cls == TOOL_ERROR:
            return self.actions["tool"] != "keep"
        if cls in (EITHER, "transcript") or cls.startswith("messages:"):
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
        label = LABELS[cls]
        if self.actions[cls] == "hash":
            if cls == "phone":
                text = phone_digits(text) or NON_DIGITS.sub("", text) or text
            elif cls == "email":
                text = text.strip().lower()
            elif cls == "card":
                text = NON_DIGITS.sub("", text) or text
            return f"[{label} #{self._digest(cls, text)}]"
        if cls == "phone":
            digits = NON_DIGITS.sub("", text)
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
        return self._marker("card", candidate) if is_card(candidate) else candidate

    def _sub_phone(self, match: re.Match[str]) -> str:
        candidate = match.group(0)
        if phone_digits(candidate):
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
                if phone_digits(chunk):
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
                    text = EMAIL.sub(self._sub_email, text)
            elif cls == "card":
                text = CARD.sub(self._sub_card, text)
            else:
                text = PHONE.sub(self._sub_phone, text)
        return text

    def _found_in(self, text: str) -> bool:
        """Does ``text`` (e.g. the JSON of all of a span's attributes) hold anything a detector hides?"""
        runs = None
        for cls in self._detect:
            if cls == "email":
                if "@" in text and EMAIL.search(text):
                    return True
                continue
            if runs is None:
                runs = text.encode("utf-8", "surrogatepass").translate(RUNS)
            if cls == "card":
                if CARD_RUN in runs and any(is_card(m.group(0)) for m in CARD.finditer(text)):
                    return True
            elif PHONE_RUN in runs:
                for match in PHONE.finditer(text):
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
        if node.get("role") in TOOL_ROLES or node.get("type") in TOOL_TYPES:
            here = "tool"
        out = {}
        for key, item in node.items():
            if key in STRUCTURAL:
                out[key] = self.scan(item)
            elif key in TOOL_CONTAINERS:
                out[key] = self._walk(item, "tool")
            elif here == "tool" or key in TOOL_ARGUMENTS:
                out[key] = self._payload("tool", item)
            else:
                out[key] = self._walk(item, here)
        return out

    def _class_of(self, key: str, attributes: Mapping[str, Any], tool_span: bool) -> str | None:
        cls = self._exact.get(key)
        if cls is None and self._prefixes and key.startswith(self._prefix_tuple):
            for prefix, found in self._prefixes:
                if key.startswith(prefix):
                    cls = flattened_class(key, prefix, found, attributes) if found.startswith("messages:") \
                        else found
                    break
        if cls is None and self._marked and is_marked(key):
            cls = "personal"
        if cls == EITHER:
            cls = "tool" if tool_span else "transcript"
        elif cls == TOOL_ERROR:
            cls = "tool" if tool_span else None
        return cls

    def _value(self, cls: str | None, key: str, value: Any) -> Any:
        """One attribute's value under its class (None: no class, the detectors only)."""
        if cls is None:
            return self.scan(value)
        if cls == "transcript" and (key in MESSAGE_KEYS or isinstance(value, (dict, list))
                                    or (isinstance(value, str) and value[:1] in ("{", "["))):
            return self._messages(value, cls)   # chat messages: tool calls inside follow the tool class
        if cls == "tool" and key in MESSAGE_KEYS:
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
            if self._marked and any(is_marked(key) for key in attributes):
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
            cls = MESSAGE_EVENTS.get(name) if isinstance(name, str) else None
            if cls is None:
                redacted = self.attributes(attributes, tool_span=tool_span)
            else:
                redacted = {key: self._messages(value, "tool" if key == "tool_calls" else cls)
                            if key in MESSAGE_EVENT_KEYS else
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
        cls = EVENT_CLASSES.get(event)
        if message:
            message = self._payload(cls, message) if cls is not None else self.status(message, tool_span=tool_span)
        if isinstance(data, dict):
            out = {}
            for key, value in data.items():
                if key == "body" or (cls is not None and key in MESSAGE_EVENT_KEYS):
                    out[key] = self._messages(value, "tool" if key == "tool_calls" else cls) if cls is not None \
                        else self.scan(value)
                elif key in EVENT_DATA_CLASSES and (key != "error" or cls == "tool"):
                    out[key] = self._value(EVENT_DATA_CLASSES[key], key, value)
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


KEEP_ALL = PiiPolicy()   # the policy of tests and tools that build rows without settings
