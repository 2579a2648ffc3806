"""Carrier keywords in inbound texts: opt-out, opt-in and help. Pure functions.

Twilio's default opt-out list is the floor; the FCC's "any reasonable means" rule is why the
reply conversation (issue 5) extends :func:`intent` with plain-language phrases.
"""

from __future__ import annotations

import re

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "UNSTOP", "YES"})
HELP = frozenset({"HELP", "INFO"})

_STRIP = re.compile(r"[^A-Z]")


def keyword(body: str | None) -> str | None:
    """'opt_out', 'opt_in', 'help' or None for a text that is exactly one keyword."""
    if not body:
        return None
    words = body.strip().upper().split()
    if len(words) != 1 and not (len(words) == 2 and words[0] + words[1] == "OPTOUT"):
        return None
    word = _STRIP.sub("", "".join(words))
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None
