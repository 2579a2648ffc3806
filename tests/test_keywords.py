"""Opt-out, opt-in and help detection: the corpus of both kinds, the judgment calls, and properties."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core import keywords
from core.keywords import HELP, OPT_IN, OPT_OUT, is_help, is_opt_in, is_opt_out, keyword, opt_out_match

CORPUS = yaml.safe_load((Path(__file__).parent / "corpus" / "opt_out.yaml").read_text(encoding="utf-8"))
OPT_OUTS: list[str] = CORPUS["opt_out"]
NOT_OPT_OUTS: list[str] = CORPUS["not_opt_out"]


def test_corpus_is_substantial_and_disjoint() -> None:
    assert len(OPT_OUTS) >= 50 and len(NOT_OPT_OUTS) >= 40
    assert not set(OPT_OUTS) & set(NOT_OPT_OUTS)


@pytest.mark.parametrize("body", OPT_OUTS)
def test_opt_out_corpus(body: str) -> None:
    assert is_opt_out(body), body
    assert opt_out_match(body)


@pytest.mark.parametrize("body", NOT_OPT_OUTS)
def test_not_opt_out_corpus(body: str) -> None:
    assert not is_opt_out(body), (body, opt_out_match(body))
    assert opt_out_match(body) is None


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("STOP", "opt_out"),
        ("stop", "opt_out"),
        ("Stop!!", "opt_out"),
        (" stop. ", "opt_out"),
        ("STOP 🛑", "opt_out"),
        ("🛑STOP🛑", "opt_out"),
        ("StopAll", "opt_out"),
        ("unsubscribe", "opt_out"),
        ("Cancel", "opt_out"),
        ("end.", "opt_out"),
        ("QUIT!", "opt_out"),
        ("revoke", "opt_out"),
        ("OPTOUT", "opt_out"),
        ("opt out", "opt_out"),
        ("Opt-Out", "opt_out"),
        ("\uff33\uff34\uff2f\uff30", "opt_out"),  # fullwidth STOP, as some phone keyboards send
        ("START", "opt_in"),
        ("unstop", "opt_in"),
        ("Yes", "opt_in"),
        ("yes!", "opt_in"),
        ("HELP", "help"),
        ("info?", "help"),
        ("s t o p", None),
        ("stop texting me", None),
        ("yes please", None),
        ("stop2", None),
        ("ΣΤΟΠ", None),
        ("", None),
        (None, None),
        ("   ", None),
        ("🛑", None),
    ],
)
def test_keyword(body: str | None, kind: str | None) -> None:
    assert keyword(body) == kind


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ("STOP", "keyword:STOP"),
        ("opt-out", "keyword:OPTOUT"),
        ("wrong number, stop", "word:stop"),
        ("stop texting me", "stop-texting"),
        ("remove me from your list", "remove-me"),
        ("take me off your list", "take-me-off"),
        ("don't text me", "dont-text"),
        ("unsubscribe me", "word:unsubscribe"),
        ("no more texts", "no-more-texts"),
        ("leave me alone", "leave-me-alone"),
        ("para", "word:para"),
        ("cancelar", "word:cancelar"),
        ("no me envíes más mensajes", "es:no-me-envies"),
        ("darme de baja", "es:de-baja"),
    ],
)
def test_opt_out_match_names_the_rule(body: str, rule: str) -> None:
    assert opt_out_match(body) == rule


def test_rule_names_are_unique() -> None:
    for rules in (keywords.OPT_OUT_RULES, keywords.OPT_IN_RULES, keywords.HELP_RULES):
        names = [rule.name for rule in rules]
        assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("START", True),
        ("Unstop", True),
        ("YES", True),
        ("start again", True),
        ("Start again please", True),
        ("resubscribe", True),
        ("please resubscribe me", True),
        ("you can text me again", True),
        ("opt me back in", True),
        ("alta", True),
        ("darme de alta", True),
        ("yes please", False),  # a conversational yes; only the bare carrier keyword resubscribes
        ("start the job on Monday", False),
        ("unstop my drain please", False),
        ("STOP", False),
        ("start, no wait, stop", False),  # an opt-out anywhere wins
        ("", False),
        (None, False),
    ],
)
def test_is_opt_in(body: str | None, expected: bool) -> None:
    assert is_opt_in(body) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("HELP", True),
        ("help?", True),
        ("Info", True),
        ("ayuda", True),
        ("help, the basement is flooding", False),  # urgent, not the HELP keyword
        ("I need help with my furnace", False),
        ("more info on pricing please", False),
        ("", False),
        (None, False),
    ],
)
def test_is_help(body: str | None, expected: bool) -> None:
    assert is_help(body) is expected


def test_fold_makes_spellings_equal() -> None:
    assert keywords.fold("Don\u2019t ENVÍES más") == keywords.fold("dont envies mas") == "dont envies mas"


# Properties ------------------------------------------------------------------------------------

SURROUND = st.text(alphabet=" \t\n.,!?¡¿;:-—…*~'\"()🛑✋🙏😡👍", max_size=6)


@st.composite
def recased(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(ch.upper() if flip else ch.lower() for ch, flip in zip(text, flips, strict=True))


@st.composite
def respaced(draw: st.DrawFn, text: str) -> str:
    gaps = draw(
        st.lists(st.sampled_from([" ", "  ", "   "]), min_size=len(text.split()), max_size=len(text.split()))
    )
    return "".join(word + gap for word, gap in zip(text.split(), gaps, strict=True)).strip()


@st.composite
def decorated(draw: st.DrawFn, texts: list[str]) -> tuple[str, str]:
    """A text from the list with its case changed, spaces varied and junk around it."""
    original = draw(st.sampled_from(texts))
    changed = draw(recased(draw(respaced(original))))
    return original, draw(SURROUND) + changed + draw(SURROUND)


KEYWORDS = [(word, "opt_out") for word in sorted(OPT_OUT)] + [("opt out", "opt_out")]
KEYWORDS += [(word, "opt_in") for word in sorted(OPT_IN)] + [(word, "help") for word in sorted(HELP)]


@given(body=st.one_of(st.text(), st.text(alphabet=st.characters(codec="utf-8")), st.binary().map(repr)))
def test_never_crashes_on_arbitrary_unicode(body: str) -> None:
    assert isinstance(is_opt_out(body), bool)
    assert isinstance(is_opt_in(body), bool)
    assert isinstance(is_help(body), bool)
    assert keyword(body) in (None, "opt_out", "opt_in", "help")
    match = opt_out_match(body)
    assert match is None or isinstance(match, str)
    assert (match is not None) == is_opt_out(body)


@given(data=st.data(), pair=st.sampled_from(KEYWORDS))
def test_every_keyword_is_case_punctuation_and_whitespace_invariant(
    data: st.DataObject, pair: tuple[str, str]
) -> None:
    word, kind = pair
    body = data.draw(SURROUND) + data.draw(recased(word)) + data.draw(SURROUND)
    if word == "opt out":
        body = body.replace(
            "opt out", data.draw(st.sampled_from(["opt out", "opt  out", "opt-out", "opt\tout"]))
        )
    assert keyword(body) == kind, body
    assert is_opt_out(body) is (kind == "opt_out"), body
    assert is_opt_in(body) is (kind == "opt_in"), body
    assert is_help(body) is (kind == "help"), body


@settings(max_examples=300)
@given(pair=decorated(NOT_OPT_OUTS))
def test_no_sentence_from_the_non_opt_out_corpus_ever_matches(pair: tuple[str, str]) -> None:
    original, body = pair
    assert not is_opt_out(body), (original, body, opt_out_match(body))


@settings(max_examples=300)
@given(pair=decorated(OPT_OUTS))
def test_every_opt_out_survives_case_spacing_and_junk(pair: tuple[str, str]) -> None:
    original, body = pair
    assert is_opt_out(body), (original, body)


@given(
    body=st.lists(st.sampled_from(["no ", "more ", "stop ", "please ", "ya ", "x"]), max_size=200).map(
        "".join
    )
)
def test_long_filler_runs_stay_fast(body: str) -> None:
    # Overlapping fillers once meant exponential backtracking; a scan must finish at once.
    is_opt_out(body)
    is_opt_in(body)
