"""Phone numbers: E.164 normalisation, masking for logs, and the caller's likely time zones."""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import timezone as pn_timezone

# Caller IDs Twilio uses when the number is withheld.
_ANONYMOUS = {"", "anonymous", "restricted", "unknown", "private", "unavailable", "blocked"}
_ANONYMOUS_DIGITS = {"266696687", "7378742833", "2562533", "8656696", "86282452253"}


def is_anonymous(raw: str | None) -> bool:
    """True for withheld caller IDs ('Anonymous', 'Restricted', '+266696687', ...)."""
    if raw is None:
        return True
    text = raw.strip().lower()
    if text in _ANONYMOUS:
        return True
    digits = "".join(ch for ch in text if ch.isdigit())
    return digits in _ANONYMOUS_DIGITS


def to_e164(raw: str | None, default_region: str = "US") -> str | None:
    """The number in E.164, or None when it is not a valid phone number."""
    if not raw:
        return None
    try:
        parsed = phonenumbers.parse(raw.strip(), default_region)
    except phonenumbers.NumberParseException:
        return None
    # Possible (right length for the country), not "valid": fictional 555 numbers used in demos,
    # tests and by carriers for new ranges must still normalise to one record.
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask(number: str | None) -> str:
    """A log-safe form that keeps the country code and the last two digits: ``+1*******67``."""
    if not number:
        return "-"
    text = str(number)
    if len(text) <= 4:
        return "*" * len(text)
    prefix = "+1" if text.startswith("+1") else text[:1]
    return prefix + "*" * (len(text) - len(prefix) - 2) + text[-2:]


def time_zones(e164: str) -> list[str]:
    """The IANA zones the number's prefix maps to (empty when unknown)."""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return []
    zones = [z for z in pn_timezone.time_zones_for_number(parsed) if z != pn_timezone.UNKNOWN_TIMEZONE]
    return zones


def national(e164: str) -> str:
    """Human display form, e.g. ``(555) 010-2030``."""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)


DIGIT_RUN = re.compile(r"\+?\d[\d\-\s().]{8,}\d")


def redact_numbers(text: str) -> str:
    """Mask every run of 9+ digits (a phone number, however formatted) in free text."""

    def repl(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        if len(digits) < 9:
            return m.group(0)
        return "+" + "*" * (len(digits) - 2) + digits[-2:]

    return DIGIT_RUN.sub(repl, text)
