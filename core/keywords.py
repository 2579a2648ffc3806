"""Carrier keywords and plain-language opt-out, opt-in and help in inbound texts. Pure functions.

Twilio's default keyword list is the floor. The FCC's 2024 rule lets a caller revoke consent "by
any reasonable means", so :func:`is_opt_out` also accepts plain phrases in English and Spanish.
The phrases are data (:data:`OPT_OUT_RULES`), each with a name that :func:`opt_out_match` returns,
so every suppression can say why it happened.

The judgment calls, each pinned by ``tests/corpus/opt_out.yaml``:

- Missing an opt-out breaks the law and texts someone who asked us to stop; a false one loses a
  lead that a person can still call. So doubtful cases lean towards opt-out, except where a
  common word has an everyday meaning in this business.
- CANCEL, END, QUIT and CANCELAR count only as the whole message, as carriers treat them. "I need
  to cancel my appointment" changes a booking; treating it as an opt-out would silence a
  customer in the middle of one.
- STOP, UNSUBSCRIBE, PARA, ALTO, BASTA and the like count as a clause of their own, with only
  politeness around them: "wrong number, stop", "please stop", "Stop!! who is this".
- A phrase limited to a time ("don't text me after 9pm, call instead", "stop texting me so
  early") is a preference about when to text, not a revocation; it goes to a person. Without
  the time limit the same phrase is an opt-out, "call me instead" or not.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "UNSTOP", "YES"})
HELP = frozenset({"HELP", "INFO"})

Scope = Literal["message", "clause", "phrase"]

# ASCII, curly, backtick, acute and modifier-letter apostrophes: phones type all of them.
_APOSTROPHES = re.compile("['`\u2018\u2019\u00b4\u02bc]")
_WORDS = re.compile(r"[^\W_]+")
# A new line ends a clause ("wrong number\nstop"); spaces and tabs do not.
_CLAUSE_BREAKS = re.compile(r"[.!?;,:\n\r…¡¿()\[\]{}\"“”|/]+")
_NON_WORD = re.compile(r"[\W_]+")


def fold(text: str) -> str:
    """Lowercase, accents and apostrophes removed: the one spelling every matcher here compares.

    Shared with :mod:`core.intent` and :mod:`core.replies` so "Don't", "dont" and "DON'T" (curly), or
    "envíes" and "envies", are the same word everywhere. NFKD also flattens fullwidth letters.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _APOSTROPHES.sub("", bare.casefold())


@dataclass(frozen=True)
class Phrase:
    """One named rule. ``pattern`` is a regex over a folded clause whose words are single-spaced.

    ``scope`` says how much of the text the pattern must cover:
    ``message`` the whole text (punctuation aside); ``clause`` one clause, with only the
    politeness in :data:`FILLERS` around it; ``phrase`` anywhere in a clause, unless that clause
    limits it to a time (see the module notes).
    """

    name: str
    pattern: str
    scope: Scope = "phrase"


# Words that do not change what a short clause means: "please stop", "stop now thanks".
FILLERS = (
    "please", "pls", "plz", "plse", "now", "right now", "ok", "okay", "k", "just", "thanks",
    "thank you", "thx", "ty", "sorry", "again", "already", "seriously", "asap", "immediately", "it",
    "all", "hi", "hey", "hello", "yes", "no", "nope", "wrong number", "wrong person", "who is this",
    "whos this", "por favor", "porfa", "porfavor", "ya", "gracias", "hola", "oye",
    "numero equivocado", "quien es",
)  # fmt: skip

_TEXT_VERBS = r"(?:text|txt|message|msg|sms|contact|email|e mail|spam|bother|harass|send me|send us)"
_TEXTING = (
    r"(?:texting|txting|texing|messaging|msging|contacting|calling|bothering|spamming|bugging|harassing|"
    r"emailing|hitting me up|sending (?:me|us|texts|messages|these|this|those|sms))"
)
_MESSAGES = r"(?:texts|text messages|messages|msgs|txts|sms|texting|messaging|spam|notifications|reminders)"
_LISTISH = r"(?:list|lists|texts|messages|system|database|contacts|contact list|mailing list|texting list)"
_OWNER = r"(?:(?:your|the|this|ur|that|all|any|all your|all the|these) )?"
_ES_SEND = (
    r"(?:envie|envies|envien|envia|mande|mandes|manden|escribas|escriba|escriban|contacte|contactes|"
    r"contacten|textee|textees|texteen|molestes|moleste|molesten)"
)
_ES_MESSAGES = r"(?:mensajes|mensajitos|textos|sms|msjs|mensaje|texto)"

OPT_OUT_RULES: tuple[Phrase, ...] = (
    Phrase("word:stop", r"(?:stop all|stop it|stopall|stopp|stahp|stop)", "clause"),
    Phrase("word:unsubscribe", r"(?:unsubscribe me|unsubscribe|unsubcribe|unsuscribe|unsub)", "clause"),
    Phrase("word:opt-out", r"(?:opt out|optout|opt me out)", "clause"),
    Phrase("word:revoke", r"revoke", "clause"),
    Phrase("word:enough", r"(?:no more|enough)", "clause"),
    Phrase("word:para", r"(?:para ya|parale|para|alto|ya basta|basta|detente|baja)", "clause"),
    Phrase("word:cancelar", r"(?:cancelar|cancela|cancelo)", "message"),
    Phrase(
        "stop-texting",
        rf"(?<!dont )(?<!do not )(?<!never )\b(?:stop|quit|cease|stahp|stopp|please stop) {_TEXTING}\b",
    ),
    Phrase(
        "stop-the-texts",
        rf"(?<!dont )(?<!do not )(?<!never )\b(?:stop|end|cancel|quit) {_OWNER}(?:\w+ )?{_MESSAGES}\b",
    ),
    Phrase(
        "dont-text",
        rf"\b(?:dont|do not|pls dont|never|no longer) (?:ever )?{_TEXT_VERBS} (?:me|us|this|here)\b",
    ),
    Phrase(
        "dont-want-texts",
        rf"\b(?:dont|do not|no longer) (?:want|wish|need) (?:to (?:receive|get) )?(?:any |your |these |more "
        rf"|anymore |those )*{_MESSAGES}\b",
    ),
    Phrase("no-more-texts", rf"\bno more {_MESSAGES}\b"),
    Phrase("unsubscribe", r"\bunsub(?:scribe|scribed|scribing|cribe|scribe me)?\b"),
    Phrase("opt-out", r"\bopt (?:me )?out\b"),
    Phrase(
        "remove-my-number",
        r"\b(?:remove|delete|erase|drop|lose|forget) (?:my|this) (?:phone |cell )?number\b",
    ),
    Phrase(
        "remove-me",
        rf"\b(?:remove|delete|erase|drop|unlist) (?:me|us)(?: from {_OWNER}(?:\w+ )?{_LISTISH}\b|"
        r"(?= please| now| asap| thanks| thank you|$))",
    ),
    Phrase(
        "take-me-off",
        rf"\b(?:take|get|put) (?:me|us|my number|this number) (?:off|out of) {_OWNER}(?:\w+ )?{_LISTISH}\b",
    ),
    Phrase("take-me-off-alone", r"\b(?:take|get) (?:me|us|my number|this number) off(?: please| now|$)"),
    Phrase("leave-me-alone", r"\bleave me alone\b"),
    Phrase("revoke-consent", r"\b(?:revoke|revoking|withdraw|withdrawing) (?:my |all )?consent\b"),
    Phrase("es:no-me-envies", rf"\bno (?:me |nos )?{_ES_SEND}(?= mas\b| nada\b| {_ES_MESSAGES}\b|$)"),
    Phrase("es:no-mas-mensajes", rf"\bno (?:quiero |deseo )?(?:mas|recibir mas|recibir) {_ES_MESSAGES}\b"),
    Phrase("es:ya-no", rf"\bya no (?:me |nos )?(?:{_ES_SEND}|quiero {_ES_MESSAGES})\b"),
    Phrase("es:de-baja", r"\b(?:darme|darnos|dar|dame|denme|doy|me doy|darse|darle) de baja\b"),
    Phrase(
        "es:deja-de",
        r"\bdej(?:a|e|en|ar|en ya) de (?:enviarme|mandarme|escribirme|textearme|contactarme|molestarme|"
        r"enviar|mandar|escribir|textear|llamarme)\b",
    ),
    Phrase(
        "es:quitame",
        r"\b(?:quit|sac|borr|elimin)(?:a|e|en|ar)(?:me|nos)? de (?:la|su|tu|sus|tus|esta) lista\b",
    ),
    Phrase("es:borra-mi-numero", r"\b(?:borr|elimin|quit)(?:a|e|en|ar) mi numero\b"),
    Phrase("es:dejame-en-paz", r"\bdej(?:a|e|en)(?:me|nos) en paz\b"),
)

OPT_IN_RULES: tuple[Phrase, ...] = (
    Phrase("word:start", r"(?:start again|start|unstop|resume|restart)", "clause"),
    Phrase(
        "word:resubscribe",
        r"(?:resubscribe|re subscribe|subscribe|opt me back in|opt back in|opt me in|opt in)",
        "clause",
    ),
    Phrase("word:alta", r"(?:darme de alta|dar de alta|dame de alta|alta|suscribirme|suscribir)", "clause"),
    Phrase("resubscribe", r"\b(?:resubscribe|re subscribe)\b"),
    Phrase("opt-back-in", r"\bopt (?:me )?(?:back )?in\b"),
    Phrase(
        "start-again",
        r"\b(?:start|resume|restart) (?:texting|messaging|sending)(?: me| us)?(?: texts)? again\b",
    ),
    Phrase(
        "text-me-again", r"\b(?:you can|ok to|okay to|feel free to|please) (?:text|message) (?:me|us) again\b"
    ),
    Phrase("sign-me-up", r"\bsign me (?:back )?up\b"),
    Phrase("es:alta", r"\b(?:darme|dar|dame|denme|me doy) de alta\b"),
)

HELP_RULES: tuple[Phrase, ...] = (Phrase("word:ayuda", r"(?:ayuda|informacion)", "message"),)

# A clause limited to a time is a preference about when to text, not a revocation.
_TIME_LIMIT = re.compile(
    r"\b(?:(?:after|before|until|till|til|past|by|at) (?:\d|noon|midnight|dark|work|dinner|lunch|bedtime|"
    r"night|the evening|the morning|sunset|sunrise)"
    r"|(?:late |so late |this late )?at night|in the (?:morning|evening|afternoon)"
    r"|(?:so|this|too) (?:late|early)"
    r"|(?:on|during|over) (?:the )?(?:weekends?|sundays?|saturdays?|weekdays|holidays|work|business hours|"
    r"work hours|the day|the week|dinner|lunch)|while i(?:m| am) at work|at work|between \d"
    r"|(?:despues|antes) de (?:las|la) |(?:en|por) la (?:noche|manana|tarde)|tan (?:tarde|temprano)"
    r"|los fines de semana|de noche)"
)


_FILLER = re.compile(
    "(?:" + "|".join(sorted((re.escape(f) for f in FILLERS), key=len, reverse=True)) + ")(?= |$)"
)


def _compile(rule: Phrase) -> re.Pattern[str]:
    if rule.scope == "clause":
        return re.compile(rf"(?:{rule.pattern})(?= |$)")
    return re.compile(rule.pattern)


def _is_clause(core: re.Pattern[str], clause: str) -> bool:
    """Whether ``clause`` is ``core`` (once or more) with only fillers around it.

    Scanned word group by word group rather than as one regex: keywords and fillers overlap
    ("stop all" is one keyword, or "stop" and the filler "all"), and a nested repetition over
    overlapping alternatives backtracks exponentially on a long text.
    """
    pos, found = 0, False
    while pos < len(clause):
        step = core.match(clause, pos)
        if step:
            found = True
        else:
            step = _FILLER.match(clause, pos)
            if not step:
                return False
        pos = step.end() + 1
    return found


_COMPILED: dict[str, tuple[tuple[Phrase, re.Pattern[str]], ...]] = {
    kind: tuple((rule, _compile(rule)) for rule in rules)
    for kind, rules in (("opt_out", OPT_OUT_RULES), ("opt_in", OPT_IN_RULES), ("help", HELP_RULES))
}


def _sole_word(body: str) -> str | None:
    words = _WORDS.findall(fold(body))
    if words == ["opt", "out"]:
        return "OPTOUT"
    return words[0].upper() if len(words) == 1 else None


def keyword(body: str | None) -> str | None:
    """'opt_out', 'opt_in', 'help' or None for a text that is exactly one carrier keyword.

    Case, accents, punctuation, whitespace and emoji around the word do not count ("Stop!!",
    " stop. ", "STOP 🛑"); letters spread out ("s t o p") are not a keyword.
    """
    if not body:
        return None
    word = _sole_word(body)
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None


def _clauses(body: str) -> list[str]:
    parts = (_NON_WORD.sub(" ", part).strip() for part in _CLAUSE_BREAKS.split(fold(body)))
    return [part for part in parts if part]


def _match(kind: str, body: str) -> str | None:
    clauses = _clauses(body)
    message = " ".join(clauses)
    for rule, regex in _COMPILED[kind]:
        if rule.scope == "message":
            if regex.fullmatch(message):
                return rule.name
            continue
        for clause in clauses:
            if rule.scope == "clause":
                if _is_clause(regex, clause):
                    return rule.name
            elif regex.search(clause) and not _TIME_LIMIT.search(clause):
                return rule.name
    return None


def opt_out_match(body: str | None) -> str | None:
    """The name of the rule that makes ``body`` an opt-out ("keyword:STOP", "stop-texting"...), or None."""
    if not body:
        return None
    if keyword(body) == "opt_out":
        return f"keyword:{_sole_word(body)}"
    return _match("opt_out", body)


def is_opt_out(body: str | None) -> bool:
    """True when the caller revokes consent, by carrier keyword or plain words (see the module notes)."""
    return opt_out_match(body) is not None


def is_opt_in(body: str | None) -> bool:
    """True for START, UNSTOP, YES alone, or plain "start again", "resubscribe", "alta".

    A conversational "yes please" is not a resubscription: only the bare carrier keyword is. An
    opt-out anywhere in the text wins over an opt-in, since texting someone who said stop is the
    worse mistake.
    """
    if not body or is_opt_out(body):
        return False
    return keyword(body) == "opt_in" or _match("opt_in", body) is not None


def is_help(body: str | None) -> bool:
    """True for HELP or INFO alone (or AYUDA). "Help, the basement is flooding" is not a HELP keyword."""
    if not body or is_opt_out(body):
        return False
    return keyword(body) == "help" or _match("help", body) is not None
