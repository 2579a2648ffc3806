"""A circuit breaker for calls a job can do without: after a run of failures, stop asking a while.

The caller lookup before a first text (bridge.runtime) is such a call: the text goes out either
way, with the caller's first name when the CRM answers in time. While a CRM is failing, asking it
again for every text only costs a request each (against the CRM's own rate limits, when it is
struggling already) and, when it hangs, the text's whole lookup budget. After ``failures`` failures
in a row the breaker for that key opens for ``cool_off`` seconds; then one call goes through as a
trial, while the others are still refused: its success closes the breaker, its failure opens it
again for another ``cool_off``.

Pure logic, no I/O and no clock of its own: the caller says what time it is. State is per process;
each worker finds out for itself that a CRM is down, after ``failures`` requests.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int = 0
    open_until: float | None = None
    trial: bool = False  # the one call let through after the cool-off is under way


class Breaker:
    def __init__(self, failures: int = 3, cool_off: float = 30.0) -> None:
        if failures < 1 or cool_off <= 0:
            raise ValueError("a breaker needs failures >= 1 and cool_off > 0")
        self.failures = failures
        self.cool_off = cool_off
        self._states: dict[Hashable, _State] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable, now: float) -> bool:
        """Whether to make the call now. After the cool-off, True once (the trial) until it ends."""
        with self._lock:
            state = self._states.get(key)
            if state is None or state.open_until is None:
                return True
            if state.trial:
                return False
            # A clock set back by more than the cool-off would keep the breaker open for that much
            # longer: count that as the cool-off over.
            if state.open_until - self.cool_off <= now < state.open_until:
                return False
            state.trial = True
            return True

    def succeeded(self, key: Hashable) -> bool:
        """The call worked: the breaker closes. True when it was open."""
        with self._lock:
            state = self._states.pop(key, None)
            return state is not None and state.open_until is not None

    def failed(self, key: Hashable, now: float) -> bool:
        """The call failed. True when this failure opened the breaker (to say so once)."""
        with self._lock:
            state = self._states.setdefault(key, _State())
            state.failures += 1
            trial, state.trial = state.trial, False
            if trial or (state.open_until is None and state.failures >= self.failures):
                state.open_until = now + self.cool_off
                return True
            return False

    def is_open(self, key: Hashable) -> bool:
        with self._lock:
            state = self._states.get(key)
            return state is not None and state.open_until is not None
