"""Offering slots and reading the caller's pick: examples and properties."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.replies import format_slot, is_none_suit, offer_text, parse_choice

CHICAGO = ZoneInfo("America/Chicago")
UTC = ZoneInfo("UTC")
# Tue Dec 1 10:00 AM, Tue Dec 1 3:00 PM, Thu Dec 3 9:30 AM (Chicago), given in UTC as a calendar would.
SLOTS = [
    datetime(2026, 12, 1, 16, 0, tzinfo=UTC),
    datetime(2026, 12, 1, 21, 0, tzinfo=UTC),
    datetime(2026, 12, 3, 15, 30, tzinfo=UTC),
]


def test_format_slot_is_in_the_callers_zone() -> None:
    assert format_slot(SLOTS[0], CHICAGO) == "Tue Dec 1, 10:00 AM"
    assert format_slot(SLOTS[1], CHICAGO) == "Tue Dec 1, 3:00 PM"
    assert format_slot(SLOTS[2], CHICAGO) == "Thu Dec 3, 9:30 AM"
    assert format_slot(SLOTS[0], UTC) == "Tue Dec 1, 4:00 PM"
    assert format_slot(datetime(2026, 7, 4, 0, 5, tzinfo=CHICAGO), CHICAGO) == "Sat Jul 4, 12:05 AM"
    assert format_slot(datetime(2026, 7, 4, 12, 0, tzinfo=CHICAGO), CHICAGO) == "Sat Jul 4, 12:00 PM"


def test_format_slot_follows_daylight_saving() -> None:
    # 15:00 UTC is 10 AM in Chicago in March after the change, 9 AM before it.
    assert format_slot(datetime(2026, 3, 9, 15, tzinfo=UTC), CHICAGO) == "Mon Mar 9, 10:00 AM"
    assert format_slot(datetime(2026, 3, 6, 15, tzinfo=UTC), CHICAGO) == "Fri Mar 6, 9:00 AM"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        format_slot(datetime(2026, 12, 1, 10), CHICAGO)
    with pytest.raises(ValueError, match="time zone"):
        parse_choice("1", [datetime(2026, 12, 1, 10)], CHICAGO)


def test_offer_text() -> None:
    assert offer_text(SLOTS, CHICAGO) == (
        "1) Tue Dec 1, 10:00 AM\n2) Tue Dec 1, 3:00 PM\n3) Thu Dec 3, 9:30 AM\nReply 1, 2 or 3."
    )
    assert offer_text(SLOTS[:2], CHICAGO).endswith("\nReply 1 or 2.")
    assert offer_text(SLOTS[:1], CHICAGO) == "1) Tue Dec 1, 10:00 AM\nReply 1."
    assert offer_text([*SLOTS, SLOTS[2] + timedelta(days=1)], CHICAGO).endswith("Reply 1, 2, 3 or 4.")
    with pytest.raises(ValueError):
        offer_text([], CHICAGO)


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("2", 1),
        ("#2", 1),
        ("# 2", 1),
        ("option 2", 1),
        ("Option #2", 1),
        ("option2", 1),
        ("number two", 1),
        ("Number 2 please", 1),
        ("the second one", 1),
        ("2nd", 1),
        ("second", 1),
        ("Second!", 1),
        ("2 please", 1),
        ("2.", 1),
        ("ok 2 works for me, thanks", 1),
        ("I'll take 3", 2),
        ("Ill take #3 thx", 2),
        ("the 3pm one", 1),
        ("3 pm", 1),
        ("3:00 p.m.", 1),
        ("Tuesday at 10", 0),
        ("tues 10am", 0),
        ("Tue 10", 0),
        ("10:00", 0),
        ("10", 0),  # beyond the offer, a bare number is an hour, and one slot has it
        ("9:30", 2),
        ("thursday", 2),
        ("Thursday morning works", 2),
        ("Dec 3", 2),
        ("December 3rd", 2),
        ("12/3", 2),
        ("Tue Dec 1, 3:00 PM", 1),
        ("one", 0),
        ("1st", 0),
        ("the first one", 0),
        ("first", 0),
        ("the last one", 2),
        ("the middle one", 1),
        ("la segunda", 1),
        ("opción 3", 2),
        ("el martes a las 10", 0),
        ("2 at 3pm", 1),
        ("I have 2 kids, 3 works", 2),
        (" 2!! ", 1),
        ("ok 2 then", 1),
        ("I'll take the second, thanks", 1),
        ("Can I do the 2nd one please", 1),
        ("the last option works for me", 2),
        ("the first time slot", 0),
        ("\uff12", 1),  # fullwidth 2
    ],
)
def test_parse_choice_reads_the_pick(text: str, index: int) -> None:
    assert parse_choice(text, SLOTS, CHICAGO) == index


@pytest.mark.parametrize(
    "text",
    [
        "any",
        "any of them",
        "either is fine",
        "whichever",
        "none of those work",
        "no",
        "not 2",
        "can't do 2",
        "2 or 3",
        "2, 3",
        "2-3",
        "1 and 2",
        "both",
        "tomorrow",
        "tomorrow at 10",
        "today",
        "Tuesday",  # two slots on Tuesday
        "Tuesday or Thursday",
        "4",
        "#4",
        "option 4",
        "0",
        "99",
        "fourth",
        "5pm",
        "Wednesday",
        "Dec 2",
        "2 at 10am",  # option 2 is at 3 PM: the reply contradicts itself
        "maybe 2",
        "hi",
        "",
        "what times do you have next week?",
        "give me a second",
        "555-1234",
        "1/2",
        # In a longer reply a number needs words that make it a pick.
        "I have 2 questions about the price",
        "first I need to know the price",
        "did you get my last text?",
        "the first time I called it was fine",
    ],
)
def test_parse_choice_refuses_doubt(text: str) -> None:
    assert parse_choice(text, SLOTS, CHICAGO) is None


def test_relative_days_count_only_with_a_date() -> None:
    assert parse_choice("tomorrow at 10", SLOTS, CHICAGO) is None
    assert parse_choice("tomorrow at 10", SLOTS, CHICAGO, today=date(2026, 11, 30)) == 0
    assert parse_choice("today at 3", SLOTS, CHICAGO, today=date(2026, 12, 1)) == 1
    assert parse_choice("tomorrow", SLOTS, CHICAGO, today=date(2026, 12, 2)) == 2
    assert parse_choice("tomorrow", SLOTS, CHICAGO, today=date(2026, 12, 5)) is None


def test_parse_choice_with_fewer_slots() -> None:
    assert parse_choice("1", SLOTS[:1], CHICAGO) == 0
    assert parse_choice("2", SLOTS[:1], CHICAGO) is None
    assert parse_choice("the last one", SLOTS[:2], CHICAGO) == 1
    assert parse_choice("1", [], CHICAGO) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none of those work", True),
        ("None of these", True),
        ("no", True),
        ("No thanks", True),
        ("nope", True),
        ("neither", True),
        ("can't do any of those", True),
        ("I cant make any of those", True),
        ("something else", True),
        ("Do you have something later?", True),
        ("later in the week", True),
        ("a different day", True),
        ("those don't work for me", True),
        ("too early", True),
        ("otro día", True),
        ("no puedo", True),
        ("2", False),
        ("Tuesday at 10", False),
        ("yes", False),
        ("the second one", False),
        ("ok", False),
        ("no problem, 2 works", False),
        ("", False),
    ],
)
def test_is_none_suit(text: str, expected: bool) -> None:
    assert is_none_suit(text) is expected


# Properties ------------------------------------------------------------------------------------

ZONES = st.sampled_from([CHICAGO, UTC, ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles")])
STARTS = st.lists(
    st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    min_size=1,
    max_size=12,
)


@given(text=st.text(max_size=200), offered=STARTS, tz=ZONES)
def test_parse_choice_is_in_range_or_none(text: str, offered: list[datetime], tz: ZoneInfo) -> None:
    index = parse_choice(text, offered, tz)
    assert index is None or 0 <= index < len(offered)


@given(
    text=st.lists(
        st.sampled_from(
            ["2", "#", "option", "tue", "10", "am", ":", "30", "pm", "second", "one", "or", " ", "dec"]
        ),
        max_size=12,
    ).map(" ".join),
    offered=STARTS,
    tz=ZONES,
)
def test_parse_choice_on_near_misses_is_in_range_or_none(
    text: str, offered: list[datetime], tz: ZoneInfo
) -> None:
    index = parse_choice(text, offered, tz)
    assert index is None or 0 <= index < len(offered)


@given(data=st.data(), offered=STARTS, tz=ZONES)
def test_numbers_in_range_always_map_to_their_slot(
    data: st.DataObject, offered: list[datetime], tz: ZoneInfo
) -> None:
    n = data.draw(st.integers(min_value=1, max_value=len(offered)))
    form = data.draw(st.sampled_from(["{n}", "#{n}", "option {n}", " {n} ", "Option {n}", "#{n}!", "{n}."]))
    assert parse_choice(form.format(n=n), offered, tz) == n - 1


@given(text=st.text(max_size=200))
def test_is_none_suit_never_crashes(text: str) -> None:
    assert isinstance(is_none_suit(text), bool)
