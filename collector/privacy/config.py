"""The PII policy as configured: the classes of personal data, the actions, and the parsing of the
``pii`` and ``pii_attributes`` settings (collector/settings.py)."""

from __future__ import annotations

__all__ = ["CLASSES", "ACTIONS", "DEFAULT_POLICY", "LABELS", "parse_policy", "parse_attributes"]

CLASSES = ("phone", "email", "card", "transcript", "tool", "recording", "personal")
ACTIONS = ("keep", "mask", "hash")
# Payment card numbers are masked unless configured otherwise: PCI DSS forbids storing them in clear and no
# panel needs them. Everything else is kept unless configured, as before this policy existed.
DEFAULT_POLICY = "card=mask"

LABELS = {"phone": "phone", "email": "email", "card": "card", "transcript": "transcript", "tool": "tool payload",
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
