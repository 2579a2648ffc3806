"""What a caller's reply is about: a deterministic, offline, weighted-rule intent classifier.

Intents: booking, quote, urgent, question, existing_customer, wrong_number and other. Each
:class:`Rule` adds its weight to its intent when its pattern occurs in the text; the best intent
wins if it reaches the threshold and beats the runner-up, urgent winning ties because a missed
emergency costs more than a needless escalation. Anything else is ``other``, for a person.

Opt-out is not an intent here: :func:`core.keywords.is_opt_out` runs first and wins outright.

A business tunes the rules through config (:func:`rules_from_config`) or swaps the classifier for
its own, such as a language model, through :func:`load_classifier`; nothing here needs one.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from core.keywords import fold

INTENTS = ("booking", "quote", "urgent", "question", "existing_customer", "wrong_number", "other")
REGEX_PREFIX = "re:"
# Longer than any carrier delivers; the cap keeps one pasted essay from slowing the worker.
MAX_CHARS = 2000


@dataclass(frozen=True)
class Rule:
    """Evidence for an intent.

    ``pattern`` is a phrase unless it starts with ``re:``, in which case the rest is a regex.
    A phrase matches whole words, ignoring case, accents, apostrophes and the punctuation or
    spacing between its words; a word ending in ``*`` matches any ending ("leak*" matches
    "leaking"). A regex is searched in the folded text (:func:`core.keywords.fold`: lowercase, no
    accents, no apostrophes), so write it in lowercase. A negative weight counts against.
    """

    intent: str
    pattern: str
    weight: float

    def __post_init__(self) -> None:
        if self.intent not in INTENTS:
            raise ValueError(f"unknown intent {self.intent!r}; expected one of {', '.join(INTENTS)}")
        if not self.pattern.strip() or self.pattern.strip() == REGEX_PREFIX:
            raise ValueError(f"empty pattern in a rule for {self.intent!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float):
            raise ValueError(f"weight for {self.pattern!r} must be a number")
        if not math.isfinite(self.weight):
            raise ValueError(f"weight for {self.pattern!r} must be finite")

    @property
    def label(self) -> str:
        return f"{self.intent}:{self.pattern}"


@dataclass(frozen=True)
class Classification:
    """The verdict, with its evidence so a person reading the timeline can see why.

    ``scores`` has every intent's summed weight; ``matched`` the rules that fired, as
    "intent:pattern"; ``confidence`` is in [0, 1] and stays at or below 0.3 for ``other``.
    """

    intent: str
    confidence: float
    scores: dict[str, float] = field(hash=False)
    matched: tuple[str, ...]
    name: str | None
    email: str | None


@runtime_checkable
class Classifier(Protocol):
    """What a plug-in provides; it must be as deterministic as the caller needs its tests to be."""

    def classify(self, text: str) -> Classification: ...


def _rules(intent: str, weight: float, *patterns: str) -> tuple[Rule, ...]:
    return tuple(Rule(intent, pattern, weight) for pattern in patterns)


_WEEKDAYS = (
    r"re:\b(?:(?:mon|tue|tues|wed|wednes|thu|thur|thurs|fri|sat|satur|sun)(?:day)?"
    r"|lunes|martes|miercoles|jueves|viernes|sabado|domingo)\b"
)

# Weights: 3 is a strong sign, 2 a good one, 1 a hint; 4 and 8 are kept for damage and danger, and a
# negative weight takes back a match ("quit smoking" is a habit, not an outlet). Tuned on
# tests/corpus/intents.yaml for plumbers, electricians, HVAC, cleaners and salons.
DEFAULT_RULES: tuple[Rule, ...] = (
    *_rules("booking", 3, "send someone", "send somebody", "send a tech*", "squeeze me in", "fit me in",
            "book an appointment", "make an appointment", "set up an appointment", "get on the schedule",
            "need a plumber", "need an electrician", "need a technician", "need a cleaner", "need a cleaning",
            "looking for a plumber", "looking for an electrician", "hacer una cita", "agendar"),
    *_rules("booking", 2, "come out", "come by", "come over", "come take a look", "come look", "stop by",
            "swing by", "schedul*", "book", "booking", "appointment", "appt", "availability",
            "when can you", "can you come", "can someone", "can somebody", "need someone", "need somebody",
            "someone to come", "somebody to come", "have someone", "get someone", "are you available",
            "any openings", "next available", "earliest", "pueden venir", "puede venir",
            "necesito un", "cita"),
    *_rules("booking", 1, "available", "fix", "repair*", "install*", "replace", "replac*", "clean*",
            "haircut", "color", "highlights", "manicure", "pedicure", "tune up", "tune-up", "inspection",
            "look at", "check out", "take a look", "today", "tomorrow", "this week", "next week",
            "morning", "afternoon", "evening", "weekend", "asap", "soon", _WEEKDAYS,
            "arreglar", "reparar", "manana"),
    *_rules("quote", 3, "how much", "price*", "pricing", "cost", "costs", "quote", "estimate*", "ballpark",
            "what do you charge", "what would it cost", "what does it cost", "rates", "cuanto cuesta",
            "cuanto cobran", "precio*", "cotizacion", "presupuesto"),
    *_rules("quote", 2, "charge", "fee", "fees", "cheap*", "afford*", "flat rate", "hourly",
            "re:\\$\\s?\\d", "what would it be", "roughly", "cuanto"),
    *_rules("quote", 3, "is there a fee", "trip charge", "service call fee", "diagnostic fee"),
    *_rules("quote", 1, "budget", "free"),
    # Danger to life outweighs any booking talk around it: "I smell gas, can you come tomorrow?"
    *_rules("urgent", 8, "smell gas", "smells like gas", "gas smell", "gas leak", "carbon monoxide",
            "co alarm", "co detector", "spark*", "smoke", "smoking", "burning smell", "smells like burning",
            "smell burning", "smells burnt", "fire", "on fire", "electrocut*", "huele a gas", "fuga de gas",
            "olor a gas", "chispas", "humo", "incendio"),
    *_rules("urgent", -8, "quit smoking", "stop smoking", "no smoking", "fire up", "fired up"),
    *_rules("urgent", 4, "flood*", "burst*", "gushing", "water everywhere", "shocked", "no heat",
            "frozen pipe*", "pipe froze", "pipes froze", "sewage", "pouring", "caving in", "inundacion",
            "inundado", "sin calefaccion"),
    *_rules("urgent", 3, "emergenc*", "urgent*", "emergencia", "urgente"),
    *_rules("urgent", 2, "through the ceiling", "through my ceiling", "from the ceiling", "freezing",
            "no power", "power out", "power is out", "power outage", "no ac", "no a/c", "no air",
            "ac is out", "no hot water", "backing up", "backed up", "overflow*", "cant turn off",
            "wont shut off", "cant shut off", "wont turn off", "dangerous", "hazard", "right away",
            "immediately", "right now", "asap", "help!", "breaker keeps tripping", "tripping",
            "sin luz", "sin agua caliente", "ahorita"),
    *_rules("urgent", 1, "leak*", "baby", "newborn", "elderly", "infant", "pregnant", "sick",
            "tonight", "wont stop", "!!", "re:!{3,}", "help", "fuga"),
    *_rules("question", 3, "hours", "what time do you open", "what time do you close", "are you open",
            "located", "location", "where are you", "do you service", "do you serve", "service area",
            "service my area", "do you cover", "do you come to", "do you go to", "do you work in",
            "licensed", "insured", "horario", "donde estan", "donde se ubican", "ubicados"),
    *_rules("question", 2, "open on", "open today", "open tomorrow", "open late", "open now",
            "open saturday", "open sunday", "do you do", "do you handle", "do you fix", "do you install",
            "do you offer", "do you work on", "do you sell", "do you take", "do you accept", "do you have",
            "can you do", "address", "what areas", "which areas", "how long does", "how long will",
            "do you guys", "is there a", "warranty", "financing", "credit card*", "trabajan en",
            "aceptan"),
    *_rules("question", 1, "what time", "when do you", "question", "wondering", "curious"),
    *_rules("question", 0.5, "re:\\?", "do you", "are you", "is it"),
    *_rules("existing_customer", 3, "invoice", "bill", "billing", "billed", "receipt", "refund*",
            "charged me", "charged twice", "overcharged", "you were here", "you were out", "you came out",
            "you guys came", "you came by", "came out last", "you fixed", "you installed", "you replaced",
            "you repaired", "you did", "your tech*", "your guy", "your plumber", "your electrician",
            "my appointment", "our appointment", "reschedul*", "existing customer", "current customer",
            "previous customer", "repeat customer", "my account", "my payment", "payment",
            "same problem", "same issue", "still not fixed", "was supposed to", "on his way",
            "on their way", "on the way", "eta", "running late", "work order", "job number",
            "factura", "mi cita", "cambiar la cita", "ya vinieron", "vinieron"),
    *_rules("existing_customer", 2, "last week", "last time", "last month", "last year", "yesterday",
            "again", "still", "came back", "follow up", "following up", "paid", "pay", "cancel",
            "technician", "the tech", "warranty", "guarantee", "my service", "otra vez", "todavia"),
    *_rules("wrong_number", 5, "wrong number", "wrong #", "wrong person", "numero equivocado",
            "equivocado", "you have the wrong", "no one here called", "nobody here called"),
    *_rules("wrong_number", 3, "didnt call", "did not call", "never called", "not me", "dont know you",
            "do not know you", "dont know who", "no llame", "no te llame", "no le llame", "who are you",
            "i didnt call you", "never heard of", "stop calling"),
    *_rules("wrong_number", 2, "who is this", "whos this", "who dis", "who is that", "quien es",
            "quien habla"),
)  # fmt: skip

_PUNCT_ONLY = re.compile(r"\W+")


def _phrase_regex(phrase: str) -> str:
    words = fold(phrase).split()
    parts = []
    for word in words:
        wildcard = word.endswith("*") and len(word) > 1
        body = word.rstrip("*") if wildcard else word
        # Punctuation inside a word ("a/c", "help!") must be found literally.
        parts.append(re.escape(body) + (r"\w*" if wildcard else ""))
    joined = r"[\W_]+".join(parts)
    start = r"(?<!\w)" if re.match(r"\w", parts[0]) else ""
    end = r"(?!\w)" if re.search(r"\w$", words[-1].rstrip("*")) or words[-1].endswith("*") else ""
    return f"{start}{joined}{end}"


def compile_rule(rule: Rule) -> re.Pattern[str]:
    """The regex a rule runs as; raises ValueError naming the rule when its regex is invalid."""
    if rule.pattern.startswith(REGEX_PREFIX):
        source = rule.pattern[len(REGEX_PREFIX) :]
    else:
        if _PUNCT_ONLY.fullmatch(rule.pattern):
            source = re.escape(rule.pattern)
        else:
            source = _phrase_regex(rule.pattern)
    try:
        return re.compile(source)
    except re.error as exc:
        raise ValueError(f"bad regex in rule {rule.label!r}: {exc}") from exc


class RuleClassifier:
    """Sums matched rule weights per intent. Linear in rules times text, no state between calls."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES, threshold: float = 1.0) -> None:
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError("threshold must be a finite number >= 0")
        self.rules = tuple(rules)
        self.threshold = float(threshold)
        self._compiled = tuple((rule, compile_rule(rule)) for rule in self.rules)

    def classify(self, text: str) -> Classification:
        folded = fold(text[:MAX_CHARS])
        scores = dict.fromkeys(INTENTS, 0.0)
        matched: list[str] = []
        for rule, regex in self._compiled:
            if regex.search(folded):
                scores[rule.intent] += rule.weight
                matched.append(rule.label)
        intent, confidence = self._decide(scores)
        return Classification(
            intent=intent,
            confidence=confidence,
            scores=scores,
            matched=tuple(matched),
            name=extract_name(text[:MAX_CHARS]),
            email=extract_email(text[:MAX_CHARS]),
        )

    def _decide(self, scores: Mapping[str, float]) -> tuple[str, float]:
        # Sorted by score, then by INTENTS order with urgent lifted first, so ties are settled the
        # same way every time and in urgent's favour.
        order = {name: (0 if name == "urgent" else 1, i) for i, name in enumerate(INTENTS)}
        ranked = sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))
        (best, top), runner_up = ranked[0], ranked[1][1] if len(ranked) > 1 else 0.0
        # Saturation: how far past the threshold the evidence goes; share: how little the other
        # intents dispute it. Both in [0, 1], so their product is too.
        saturation = max(top, 0.0) / (max(top, 0.0) + max(self.threshold, 1.0))
        wins = top > 0 and top >= self.threshold and (top > runner_up or best == "urgent")
        if not wins:
            return "other", round(0.3 * (1.0 - saturation), 3)
        positive = sum(score for score in scores.values() if score > 0)
        return best, round(saturation * top / positive, 3)


def rules_from_config(
    data: Mapping[str, Sequence[Mapping[str, object]]],
    base: Sequence[Rule] = DEFAULT_RULES,
    replace: bool = False,
) -> tuple[Rule, ...]:
    """Rules from a business's config, e.g. ``{"urgent": [{"phrase": "sparks", "weight": 3}]}``.

    Each entry has a ``phrase`` or a ``regex`` and an optional ``weight`` (default 1). Added to
    ``base`` unless ``replace``; an entry for a pattern already in ``base`` reweighs it in place,
    so weight 0 switches a default off.
    """
    extra: list[Rule] = []
    for intent, entries in data.items():
        if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
            raise ValueError(f"rules for {intent!r} must be a list")
        for entry in entries:
            extra.append(_rule_from_entry(intent, entry))
    if replace:
        return tuple(extra)
    overrides = {(rule.intent, rule.pattern): rule for rule in extra}
    merged = [overrides.pop((rule.intent, rule.pattern), rule) for rule in base]
    return (*merged, *(rule for rule in extra if (rule.intent, rule.pattern) in overrides))


def _rule_from_entry(intent: str, entry: Mapping[str, object]) -> Rule:
    if not isinstance(entry, Mapping):
        raise ValueError(f"each rule for {intent!r} must be a mapping with 'phrase' or 'regex'")
    unknown = set(entry) - {"phrase", "regex", "weight"}
    if unknown:
        raise ValueError(f"unknown keys in a rule for {intent!r}: {', '.join(sorted(map(str, unknown)))}")
    phrase, regex = entry.get("phrase"), entry.get("regex")
    if (phrase is None) == (regex is None):
        raise ValueError(f"a rule for {intent!r} needs exactly one of 'phrase' or 'regex'")
    text = phrase if phrase is not None else regex
    if not isinstance(text, str):
        raise ValueError(f"the pattern of a rule for {intent!r} must be a string")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"weight for {text!r} must be a number")
    rule = Rule(intent, text if phrase is not None else REGEX_PREFIX + text, float(weight))
    compile_rule(rule)
    return rule


def load_classifier(
    spec: str | None,
    rules: Sequence[Rule] = DEFAULT_RULES,
    threshold: float = 1.0,
    options: Mapping[str, object] | None = None,
) -> Classifier:
    """The business's classifier: a :class:`RuleClassifier`, or ``"package.module:ClassName"``.

    A plug-in class is built with ``options`` as keyword arguments (rules and threshold are for
    the rule classifier only) and must have ``classify(text) -> Classification``.
    """
    if spec is None or not spec.strip():
        return RuleClassifier(rules, threshold)
    module_name, _, class_name = spec.strip().partition(":")
    if not module_name or not class_name:
        raise ValueError(f"classifier {spec!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"classifier module {module_name!r} cannot be imported: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not callable(cls):
        raise ValueError(f"{module_name!r} has no class {class_name!r}")
    instance = cls(**dict(options or {}))
    if not isinstance(instance, Classifier):
        raise ValueError(f"{spec!r} has no classify(text) method")
    return instance


_NAME_WORD = r"[^\W\d_](?:[^\W\d_]|['-](?=[^\W\d_]))*"
_STRONG_CUES = re.compile(
    rf"\b(?:my name is|my names|my name's|name is|name's|me llamo|mi nombre es)\s+({_NAME_WORD})"
    rf"(?:\s+({_NAME_WORD}))?",
    re.IGNORECASE,
)
_MEDIUM_CUES = re.compile(
    rf"\b(?:this is|soy|les habla|te habla)\s+({_NAME_WORD})(?:\s+({_NAME_WORD}))?", re.IGNORECASE
)
_WEAK_CUES = (
    re.compile(rf"\b(?:it'?s|i'?m|i am)\s+({_NAME_WORD})(?:\s+({_NAME_WORD}))?", re.IGNORECASE),
    re.compile(
        rf"(?:\b(?:hi|hey|hello|yo|hola)\b[,!.]?\s+|^|[.!?,;:]\s*)({_NAME_WORD})(?:\s+({_NAME_WORD}))?\s+here"
        r"(?=\s*(?:$|[.!?,;:\-\u2013\u2014]|and\b|again\b|from\b|at\b))",
        re.IGNORECASE,
    ),
    re.compile(
        rf"\b(?:thanks|thank you|thx|cheers|regards|gracias)[,!.]?\s+({_NAME_WORD})(?:\s+({_NAME_WORD}))?"
        r"\s*[.!]?\s*$",
        re.IGNORECASE,
    ),
    re.compile(rf"(?:^|\s)[-~\u2013\u2014]\s*({_NAME_WORD})(?:\s+({_NAME_WORD}))?\s*$"),
)
# Words that follow "this is", "it's" or "I'm" far more often than a name does.
_NOT_NAMES = frozenset(
    """a an the my your our his her their its it this that these those me us we you he she they i im
    here there home back not no yes so too very really still just about regarding re for from with in
    at on to of and or but if by as up out off over urgent important emergency bad good great fine ok
    okay crazy insane wrong right correct serious weird strange broken done sure sorry calling again
    also actually literally totally definitely absolutely gonna going trying looking hoping wondering
    ready available interested new old late early busy free open closed out back cold hot wet dry
    leaking flooding worse better same different someone somebody anyone anybody everyone nobody
    nothing something everything all both each either neither whoever what who why how when where
    which can could would should will shall may might must do does did have has had be been being is
    are was were am get got need needs want wants still please thanks thank hi hey hello yo hola ya
    monday tuesday wednesday thursday friday saturday sunday today tomorrow tonight yesterday morning
    afternoon evening night week weekend january february march april june july august september
    october november december water gas power heat air sink toilet pipe pipes leak help plumber
    electrician customer owner tenant landlord manager mom dad mother father wife husband son
    daughter sir maam madam guy guys man lady el la los las de del un una mi tu su yo es muy aqui
    ahi para por con sin que quien stupid dumb awful horrible nuts wild nice cool awesome perfect
    amazing lol lmao spam fake scam messed ridiculous cliente nuevo nueva dueno inquilino""".split()
)
_NOT_NAME_ENDINGS = ("ing", "ly", "ous", "ful", "ible", "able", "ive", "ness", "ment", "tion", "'s")


def _nameish(word: str, need_capital: bool) -> bool:
    folded = fold(word)
    if folded in _NOT_NAMES or len(folded) < 2 or len(folded) > 20:
        return False
    if folded.endswith(_NOT_NAME_ENDINGS) or word.lower().endswith(_NOT_NAME_ENDINGS):
        return False
    return word[0].isupper() or not need_capital


def _proper(word: str) -> str:
    return word[:1].upper() + word[1:].lower() if word.islower() or word.isupper() else word


def extract_name(text: str) -> str | None:
    """The caller's name when they give it ("this is Dana", "Dana here", "my name is Dana Smith").

    Capitals are the evidence that a word is a name, so they are required after the weaker cues
    ("it's", "I'm", "... here"). In a text typed all in one case they carry no information: then
    only "my name is" and "this is" count, and never for a word on the list of common words.
    """
    text = text[:MAX_CHARS].replace("\u2019", "'")
    cased = not (text.islower() or text.isupper())
    for cues, need_capital in ((_STRONG_CUES, False), (_MEDIUM_CUES, cased)):
        found = _name_from(cues, text, need_capital)
        if found:
            return found
    if not cased:
        return None
    for cue in _WEAK_CUES:
        found = _name_from(cue, text, True)
        if found:
            return found
    return None


def _name_from(cue: re.Pattern[str], text: str, need_capital: bool) -> str | None:
    for match in cue.finditer(text):
        first, last = match.group(1), match.group(2)
        if not _nameish(first, need_capital):
            continue
        # A surname needs its capital even in a lowercase text: "dana need a plumber" is no name.
        if last and _nameish(last, True) and last[0].isupper():
            return f"{_proper(first)} {_proper(last)}"
        return _proper(first)
    return None


_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])"
)


def extract_email(text: str) -> str | None:
    """The first email address in the text, as written, or None."""
    match = _EMAIL.search(text[:MAX_CHARS])
    return match.group(0) if match else None
