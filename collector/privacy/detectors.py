"""Finding phone numbers, e-mail addresses and payment card numbers in any text.

Each match is validated in Python (digit counts, Luhn, number plans): the patterns find candidates only. A
match never starts or ends inside a word or a longer number (look-arounds), so hex ids, timestamps and
version strings are left alone, and markers contain no quote or backslash, so JSON text stays JSON.
"""

from __future__ import annotations

import re

__all__ = ["EMAIL", "CARD", "PHONE", "RUNS", "CARD_RUN", "PHONE_RUN", "NON_DIGITS", "luhn_valid", "is_card",
           "phone_digits"]

EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
                   r"(?![\w-])")
# The first character is matched before the look-behind checks the one before it: the regex engine then skips
# ahead to candidate characters instead of trying every position (several times faster on JSON text).
CARD = re.compile(r"[2-6](?<![\w.+-].)(?:[ -]?\d){12,18}(?![\w])")
PHONE = re.compile(r"[+(\d](?<![\w+.].)[\d ().+-]{5,40}\d(?![\w])")
# Quick test before any regex: digits and separators become "0" (bytes.translate), and a card needs a run of 13
# of them, a phone number (as phone_digits reads it) one of 9.
RUNS = bytes(48 if 48 <= i <= 57 or i in b" -.()+" else 120 for i in range(256))
CARD_RUN, PHONE_RUN = b"0" * 13, b"0" * 9
NON_DIGITS = re.compile(r"\D+")
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


def is_card(candidate: str) -> str | None:
    """The digits of a payment card number (13–19 digits, issuer 2–6, Luhn check), else None."""
    digits = NON_DIGITS.sub("", candidate)
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
        return digits
    return None


def _nanp(digits: str) -> bool:
    """A North American number: ten digits, the area code starting with 2–9 (the exchange is not checked:
    the 555-123-4567 of examples and test data must count)."""
    return len(digits) == 10 and digits[0] in "23456789"


def phone_digits(candidate: str) -> str | None:
    """The normalized digits of a phone number written in ``candidate``, else None.

    Recognized: ``+`` and 8–15 digits (E.164, any separators); ``00`` and 10–17 digits; North American numbers
    (10 digits, or 11 with a leading 1, the area code starting with 2–9) bare or grouped 3-3-4; national numbers
    with a trunk ``0`` (9–12 digits in at least two groups of 2–6, or 10–11 bare digits). Normalized for hashing:
    international without ``+`` / ``00``, North American with their country code 1.
    """
    text = candidate.strip()
    digits = NON_DIGITS.sub("", text)
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
