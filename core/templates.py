"""Message templates: merge fields, rendering and SMS segment counting."""

from __future__ import annotations

import string
from dataclasses import dataclass

MERGE_FIELDS = frozenset({"business", "first_name", "hi", "booking_link"})

DEFAULTS = {
    "business_hours": (
        "{hi}, it's {business}. Sorry we missed your call! What can we help you with? "
        "Reply here and we'll text right back. Reply STOP to opt out."
    ),
    "after_hours": (
        "{hi}, it's {business}. Sorry we missed your call - we're closed right now. "
        "Tell us what you need and we'll get back to you first thing. Reply STOP to opt out."
    ),
    "existing_customer": (
        "{hi}, it's {business}. Sorry we missed you! Reply here and we'll get right back to you. "
        "Reply STOP to opt out."
    ),
    "voicemail_prompt": (
        "Sorry, nobody at {business} could take your call. We'll text you in a moment. "
        "You can also leave a message after the tone."
    ),
    "screen_prompt": "Call for {business}. Press 1 to take this call.",
}

# Templates that are sent as the first text and must name the business and say how to opt out.
FIRST_MESSAGES = ("business_hours", "after_hours", "existing_customer")

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2"
    count: int
    units: int


def segments(text: str) -> Segments:
    """How many SMS segments ``text`` takes, as carriers count them."""
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in text):
        units = sum(2 if ch in _GSM7_EXTENDED else 1 for ch in text)
        count = 1 if units <= 160 else -(-units // 153)
        return Segments("GSM-7", count, units)
    # UCS-2 counts UTF-16 code units: characters outside the BMP (most emoji) take two.
    units = len(text.encode("utf-16-le")) // 2
    count = 1 if units <= 70 else -(-units // 67)
    return Segments("UCS-2", count, units)


def fields_in(template: str) -> set[str]:
    """The merge fields a template uses; raises ValueError on broken braces."""
    names: set[str] = set()
    for _literal, field, _spec, _conv in string.Formatter().parse(template):
        if field is not None:
            names.add(field)
    return names


def render(template: str, *, business: str, first_name: str | None, booking_link: str | None) -> str:
    first = (first_name or "").strip()
    values = {
        "business": business,
        "first_name": first,
        "hi": f"Hi {first}" if first else "Hi there",
        "booking_link": booking_link or "",
    }
    text = template.format_map(values)
    return " ".join(text.split())
