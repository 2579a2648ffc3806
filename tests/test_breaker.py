"""core.breaker: when a call a job can do without is skipped (the caller lookup's end-to-end test
is in test_hubspot_connector)."""

from __future__ import annotations

import pytest

from core.breaker import Breaker

CRM = ("bright-spark", "hubspot")


def test_opens_after_failures_in_a_row_and_lets_one_trial_through_after_the_cool_off() -> None:
    b = Breaker(failures=3, cool_off=30)
    assert [b.failed(CRM, 0), b.failed(CRM, 1)] == [False, False]
    assert b.succeeded(CRM) is False  # a success in between: the count starts again
    assert [b.failed(CRM, 2), b.failed(CRM, 3), b.failed(CRM, 4)] == [False, False, True]
    assert b.is_open(CRM) and not b.allow(CRM, 5) and not b.allow(CRM, 33.9)
    assert b.allow(("other", "hubspot"), 5)  # per business and connector
    assert b.allow(CRM, 34) and not b.allow(CRM, 34)  # one trial at a time
    assert b.failed(CRM, 35) is True  # the trial failed: open for another cool-off
    assert not b.allow(CRM, 64) and b.allow(CRM, 65)
    assert b.succeeded(CRM) is True and not b.is_open(CRM) and b.allow(CRM, 66)


def test_lookups_already_under_way_neither_extend_nor_reopen_it() -> None:
    b = Breaker(failures=2, cool_off=30)
    assert [b.failed(CRM, 0), b.failed(CRM, 0), b.failed(CRM, 20)] == [False, True, False]
    assert b.allow(CRM, 30)  # the late failure did not push the cool-off back


def test_a_clock_set_back_does_not_keep_it_open() -> None:
    b = Breaker(failures=1, cool_off=30)
    b.failed(CRM, 1000)
    assert not b.allow(CRM, 1000)
    assert b.allow(CRM, 900)


@pytest.mark.parametrize("failures, cool_off", [(0, 30), (3, 0)])
def test_refuses_settings_that_never_close_or_never_open(failures: int, cool_off: float) -> None:
    with pytest.raises(ValueError):
        Breaker(failures, cool_off)
