"""Offering appointment slots by text and reading which one the caller picked. Pure functions.

:func:`parse_choice` books only on a reply it is sure of. Booking the wrong time costs a wasted
trip and a lost customer; asking again costs one text. So anything doubtful (two candidates, a
negation, "any", a day we cannot date without a clock) is None, and the caller re-asks or hands
off. A bare number within the offer is the option number, since the offer says "Reply 1, 2 or
3"; a bare number beyond it is read as an hour ("10" for the 10:00 AM slot) if exactly one slot
has that hour, and otherwise is out of range. In a reply of more than a few words a number or
ordinal counts only beside words that make it a pick ("I'll take 3", "2 works", "the second
one"), so "I have 2 questions" books nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from core.keywords import fold

SlotLabel = datetime

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# A reply longer than this is not a pick from a short list; the cap keeps the parser cheap.
_MAX_CHARS = 500


def _local(start: datetime, tz: ZoneInfo) -> datetime:
    # A naive datetime would be read in the server's zone, which is the wrong clock to guess.
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"slot start {start.isoformat()} has no time zone")
    return start.astimezone(tz)


def format_slot(start: datetime, tz: ZoneInfo) -> str:
    """Like "Tue Dec 1, 10:00 AM", in the caller's time zone; names in English whatever the locale."""
    local = _local(start, tz)
    hour = local.hour % 12 or 12
    meridiem = "AM" if local.hour < 12 else "PM"
    return (
        f"{_DAY_NAMES[local.weekday()]} {_MONTH_NAMES[local.month - 1]} {local.day}, "
        f"{hour}:{local.minute:02d} {meridiem}"
    )


def offer_text(starts: Sequence[datetime], tz: ZoneInfo) -> str:
    """The numbered slots, one a line, then "Reply 1, 2 or 3." (or "Reply 1 or 2.", "Reply 1.")."""
    if not starts:
        raise ValueError("no slots to offer")
    lines = [f"{i}) {format_slot(start, tz)}" for i, start in enumerate(starts, 1)]
    numbers = [str(i) for i in range(1, len(starts) + 1)]
    choices = numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} or {numbers[-1]}"
    return "\n".join([*lines, f"Reply {choices}."])


_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
    "primero": 1, "primera": 1, "segundo": 2, "segunda": 2, "tercero": 3, "tercera": 3, "cuarto": 4,
    "cuarta": 4, "quinto": 5, "quinta": 5,
}  # fmt: skip
_WEEKDAYS = {
    "mon": 0, "monday": 0, "tue": 1, "tues": 1, "tuesday": 1, "wed": 2, "weds": 2, "wednesday": 2,
    "thu": 3, "thur": 3, "thurs": 3, "thursday": 3, "fri": 4, "friday": 4, "sat": 5, "saturday": 5,
    "sun": 6, "sunday": 6, "lunes": 0, "martes": 1, "miercoles": 2, "jueves": 3, "viernes": 4,
    "sabado": 5, "domingo": 6,
}  # fmt: skip
_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4, "april": 4,
    "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8, "sep": 9, "sept": 9,
    "september": 9, "oct": 10, "october": 10, "nov": 11, "november": 11, "dec": 12, "december": 12,
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7, "agosto": 8,
    "septiembre": 9, "octubre": 10, "noviembre": 11, "diciembre": 12,
}  # fmt: skip

_ALT = "|".join
_TIME_PATTERNS = (
    re.compile(r"(?<![\w:/.])(?P<h>\d{1,2})(?::(?P<m>[0-5]\d))?\s?(?P<mer>[ap])\.?\s?m\b\.?"),
    # A lone "a"/"p" only when attached ("10a"): "2 a day" is not 2 AM.
    re.compile(r"(?<![\w:/.])(?P<h>\d{1,2})(?::(?P<m>[0-5]\d))?(?P<mer>[ap])\b"),
    re.compile(r"(?<![\w:/.])(?P<h>\d{1,2}):(?P<m>[0-5]\d)(?![\w:])"),
    re.compile(r"(?:\bat|@|\ba las|\blas)\s?(?P<h>\d{1,2})(?![\w:/.])"),
    re.compile(r"(?<![\w:/.])(?P<h>\d{1,2})\s?o\s?clock\b"),
    re.compile(r"\b(?P<noon>noon|midday|mediodia)\b"),
)
_DATE_PATTERNS = (
    re.compile(
        rf"\b(?P<mon>{_ALT(sorted(_MONTHS, key=len, reverse=True))})\.?\s?"
        r"(?P<d>\d{1,2})(?:st|nd|rd|th)?(?!\w)"
    ),
    # Day first, but never "may": "2 may work" is a pick, not the 2nd of May.
    re.compile(
        rf"(?<![\w/])(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s(?:of\s|de\s)?"
        rf"(?P<mon>{_ALT(sorted(set(_MONTHS) - {'may'}, key=len, reverse=True))})\b"
    ),
    re.compile(r"(?<![\w/.])(?P<mon>\d{1,2})/(?P<d>\d{1,2})(?:/\d{2,4})?(?![\w/])"),
)
_WEEKDAY = re.compile(rf"\b(?P<day>{_ALT(sorted(_WEEKDAYS, key=len, reverse=True))})\b")
_RELATIVE_DAY = re.compile(r"\b(?P<rel>today|tonight|tomorrow|tmrw|tmr|tomorow|hoy|manana)\b")
_OPTION = re.compile(
    r"(?:\b(?:option|opcion|number|numero|choice|slot|num|opt|nr)(?![a-z])\.?\s?#?\s?|#\s?)"
    rf"(?P<n>\d{{1,2}}|{_ALT(_NUMBER_WORDS)})\b"
)
_ORDINAL = re.compile(
    rf"(?<!\ba )(?<!\bone )\b(?:(?P<word>{_ALT(_ORDINALS)})|(?P<n>\d{{1,2}})(?:st|nd|rd|th)|(?P<last>last))\b"
    r"(?! thing| time(?! slot)| week| month| year| of)"
)
_MIDDLE = re.compile(r"\b(?:the )?middle(?: one)?\b")
_UNIT = (
    r"(?:weeks?|days?|hours?|hrs?|mins?|minutes?|months?|years?|yrs?|times|kids?|people|persons?|dogs?|cats?|"
    r"stor(?:y|ies)|beds?|bedrooms?|baths?|bathrooms?|rooms?|floors?|sinks?|toilets?|outlets?|units?|"
    r"more|x|dollars?|bucks|percent|semanas?|dias?|horas?|minutos?)"
)
_BARE_NUMBER = re.compile(rf"(?<![\w$#.,:/-])(?P<n>\d{{1,2}})(?![\w%/:-]|\.\d|,\d)(?!\s{_UNIT}\b)")
_NUMBER_WORD = re.compile(rf"\b(?P<w>{_ALT(_NUMBER_WORDS)})\b(?!\s{_UNIT}\b)")
# In a longer reply a number or ordinal is a pick only beside words that make it one: "I'll take
# 3", "2 works", "the second one". "I have 2 questions" or "first I need a price" are not picks.
_SHORT_REPLY = 4
_PICK_BEFORE = frozenset(
    {"take", "do", "want", "pick", "choose", "with", "book", "grab", "prefer", "the", "la", "el"}
)
_PICK_AFTER = re.compile(
    r"\W*(?:$|(?:one|option|slot|choice|please|pls|plz|works|work|is good|is fine|is perfect|is great|"
    r"sounds good|sounds great|thanks|thank you|thx|ty|for me|then|por favor|gracias|esta bien)\b)"
)
# Words that make a pick unsafe: a negation ("not 2"), indifference ("any") or a spread ("both").
_DOUBT = re.compile(
    r"\b(?:not|no|nope|nah|dont|cant|cannot|wont|doesnt|isnt|aint|none|neither|nor|never|any|anything|anytime|"
    r"either|whichever|whatever|both|except|unless|maybe|ninguno|ninguna|cualquiera|"
    r"ambos|ambas|tampoco|nunca)\b"
)


def _blank(text: str, match: re.Match[str]) -> str:
    # Spaces keep the other matches' positions and stop two halves of a number joining up.
    return text[: match.start()] + " " * (match.end() - match.start()) + text[match.end() :]


def _times(text: str) -> tuple[str, set[tuple[int, int | None, str | None]]]:
    found: set[tuple[int, int | None, str | None]] = set()
    for pattern in _TIME_PATTERNS:
        while match := pattern.search(text):
            text = _blank(text, match)
            groups = match.groupdict()
            if groups.get("noon"):
                found.add((12, 0, "p"))
                continue
            hour = int(groups["h"])
            minute = int(groups["m"]) if groups.get("m") else None
            meridiem = groups["mer"][0] if groups.get("mer") else None
            if hour > 23 or (meridiem and not 1 <= hour <= 12):
                found.add((-1, None, None))
                continue
            found.add((hour, minute, meridiem))
    return text, found


def _time_fits(spec: tuple[int, int | None, str | None], local: datetime) -> bool:
    hour, minute, meridiem = spec
    if minute is not None and minute != local.minute:
        return False
    if meridiem:
        return local.hour == hour % 12 + (12 if meridiem == "p" else 0)
    if hour == 0 or hour > 12:
        return local.hour == hour
    return local.hour % 12 == hour % 12


def _dates(text: str) -> tuple[str, set[tuple[int, int]]]:
    found: set[tuple[int, int]] = set()
    for pattern in _DATE_PATTERNS:
        while match := pattern.search(text):
            text = _blank(text, match)
            month_text = match.group("mon")
            month = int(month_text) if month_text.isdigit() else _MONTHS[month_text]
            found.add((month, int(match.group("d"))))
    return text, found


def parse_choice(
    text: str, offered: Sequence[SlotLabel], tz: ZoneInfo, today: date | None = None
) -> int | None:
    """The 0-based index of the offered slot the reply picks, or None when it picks none for sure.

    Understands "2", "#2", "option 2", "number two", "the second one", "2nd", "I'll take 3", "the
    3pm one", "Tuesday at 10", "tues 10am", "10:00" and "Dec 1". "Today" and "tomorrow" count only
    when ``today`` (the caller's local date) is given: without a clock they cannot be checked.
    """
    if not offered or not text:
        return None
    local = [_local(start, tz) for start in offered]
    folded = " " + fold(text[:_MAX_CHARS]) + " "
    if _DOUBT.search(folded):
        return None
    words = re.findall(r"\w+", folded)
    rest, times = _times(folded)
    rest, dates = _dates(rest)
    days: set[int] = set()
    while match := _WEEKDAY.search(rest):
        rest = _blank(rest, match)
        days.add(_WEEKDAYS[match.group("day")])
    relative: set[date] = set()
    while match := _RELATIVE_DAY.search(rest):
        rest = _blank(rest, match)
        if today is None:
            return None
        relative.add(today + timedelta(days=0 if match.group("rel") in ("today", "tonight", "hoy") else 1))

    def picked(match: re.Match[str]) -> bool:
        if len(words) <= _SHORT_REPLY:
            return True
        before = rest[: match.start()].split()[-1:]
        return bool(before and before[0] in _PICK_BEFORE) or bool(_PICK_AFTER.match(rest, match.end()))

    picks: set[int] = set()
    while match := _OPTION.search(rest):
        rest = _blank(rest, match)
        number = match.group("n")
        picks.add(int(number) if number.isdigit() else _NUMBER_WORDS[number])
    for match in list(_ORDINAL.finditer(rest)):
        if not picked(match):
            continue
        groups = match.groupdict()
        if groups.get("last"):
            picks.add(len(offered))
        elif groups.get("word"):
            picks.add(_ORDINALS[groups["word"]])
        else:
            picks.add(int(groups["n"]))
    if _MIDDLE.search(rest) and len(offered) == 3:
        picks.add(2)
    for match in _BARE_NUMBER.finditer(rest):
        if not picked(match):
            continue
        number = int(match.group("n"))
        if 1 <= number <= len(offered):
            picks.add(number)
        elif number == 0:
            return None
        else:
            # Beyond the offer a bare number can only be an hour ("10" for the 10:00 AM slot).
            times.add((number, None, None) if number <= 23 else (-1, None, None))

    for match in _NUMBER_WORD.finditer(rest):
        # "one" is usually a pronoun ("the 3pm one"); it is a number only as the whole reply.
        if (match.group("w") in ("one", "una", "uno") and words != [match.group("w")]) or not picked(match):
            continue
        picks.add(_NUMBER_WORDS[match.group("w")])

    if len(picks) > 1 or len({t for t in times if t[0] >= 0}) > 1 or len(days) > 1 or len(dates) > 1:
        return None
    if any(t[0] < 0 for t in times) or len(relative) > 1:
        return None

    def fits(slot: datetime) -> bool:
        return (
            all(_time_fits(spec, slot) for spec in times)
            and all(slot.weekday() == day for day in days)
            and all((slot.month, slot.day) == md for md in dates)
            and all(slot.date() == day for day in relative)
        )

    if picks:
        (pick,) = picks
        if not 1 <= pick <= len(offered):
            return None
        return pick - 1 if fits(local[pick - 1]) else None
    if not (times or days or dates or relative):
        return None
    matching = [i for i, slot in enumerate(local) if fits(slot)]
    return matching[0] if len(matching) == 1 else None


# Whole replies that turn the offer down; inside a longer text "no" may be about anything.
_NONE_SUIT_WHOLE = re.compile(
    r"(?:(?:ok|okay|sorry|hmm|um|thanks|thank you|unfortunately) )*"
    r"(?:none|neither|nope|nah|no|no thanks|no thank you|not really|no sorry|ninguno|ninguna|no gracias)"
    r"(?: (?:sorry|thanks|thank you|gracias|lo siento))*"
)
_NONE_SUIT = re.compile(
    r"\b(?:none of (?:those|these|them|the above|that|the times|the options)|none (?:work|works|suit)|"
    r"neither (?:of|one|works|work)|not (?:those|these|any)|"
    r"(?:cant|cannot|can not|wont|couldnt|unable to) (?:do|make|make it|come|be there|be home|be available)"
    r"(?: to)?(?: (?:any|those|these|them|either|that|then|at those times))|"
    r"(?:doesnt|dont|wont|does not|do not|will not|didnt|would not|wouldnt|none) (?:work|suit|fit)|"
    r"(?:something|anything|anytime|some time|sometime) (?:else|other|later|earlier|different)|"
    r"(?:another|other|different|a different|some other|any other|a later|an earlier|later|earlier) "
    r"(?:time|times|day|days|date|dates|option|options|slot|slots|week)|"
    r"later (?:in|this|that) (?:the )?(?:week|month|day|afternoon|evening)|"
    r"(?:too|so) (?:early|late|soon)|(?:otro|otra) (?:dia|hora|fecha|horario)|no puedo|ninguno|ninguna)\b"
)


def is_none_suit(text: str) -> bool:
    """True when the caller turns down every offered slot: "none of those work", "no", "later in the week".

    The booking path then sends the booking link or hands off instead of re-offering blindly.
    """
    folded = " ".join(re.sub(r"[\W_]+", " ", fold(text[:_MAX_CHARS])).split())
    return bool(_NONE_SUIT_WHOLE.fullmatch(folded) or _NONE_SUIT.search(folded))
