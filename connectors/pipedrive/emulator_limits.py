"""Pipedrive's two rate limits: a rolling burst window and a daily token budget, per token.

Costs follow Pipedrive's token-based model in spirit: v2 endpoints cost about half of v1, search
costs most. Rejected requests cost nothing and do not occupy the burst window, so a client that
honours ``Retry-After`` recovers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

V2_COSTS = {"search": 10, "write": 5, "read": 2}
V1_MULTIPLIER = 2


def request_cost(method: str, path: str) -> int:
    if path.endswith("/search") or "/itemSearch" in path:
        kind = "search"
    elif method.upper() in ("GET", "HEAD", "OPTIONS"):
        kind = "read"
    else:
        kind = "write"
    return V2_COSTS[kind] * (V1_MULTIPLIER if path.startswith("/v1/") else 1)


def check_burst_limit(value: object) -> tuple[int, float] | None:
    """Validate ``[n, seconds]`` or None; raise ValueError with a readable reason."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("burst_limit must be [requests, seconds] or null")
    count, window = value
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("burst_limit requests must be a positive integer")
    if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
        raise ValueError("burst_limit seconds must be a positive number")
    return count, float(window)


def check_budget(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("daily_token_budget must be a non-negative integer")
    return value


@dataclass
class Decision:
    allowed: bool
    headers: dict[str, str]
    daily_exhausted: bool = False


class RateLimiter:
    """Not thread-safe on its own: the emulator calls it under its lock."""

    def __init__(self, burst_limit: tuple[int, float] | None, daily_budget: int,
                 clock: Callable[[], float] = time.monotonic,
                 today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> None:
        self.burst_limit = check_burst_limit(burst_limit)
        self.daily_budget = check_budget(daily_budget)
        self._clock = clock
        self._today = today
        self.windows: dict[str, deque[float]] = {}
        self.used: dict[str, int] = {}
        self._day = today()

    def reset(self) -> None:
        self.windows.clear()
        self.used.clear()
        self._day = self._today()

    def admit(self, principal: str, cost: int) -> Decision:
        now = self._clock()
        if self._today() != self._day:  # the budget resets at 00:00 UTC
            self._day = self._today()
            self.used.clear()
        headers: dict[str, str] = {}
        window = self.windows.setdefault(principal, deque())
        if self.burst_limit is not None:
            limit, seconds = self.burst_limit
            while window and window[0] <= now - seconds:
                window.popleft()
            if len(window) >= limit:
                wait = max(1, math.ceil(window[0] + seconds - now))
                headers.update(self._burst_headers(limit, 0, wait))
                headers["x-daily-ratelimit-token-remaining"] = str(self.remaining(principal))
                headers["Retry-After"] = str(wait)
                return Decision(False, headers)
        remaining = self.remaining(principal)
        if cost > remaining:
            headers.update(self._burst_headers_now(window, now))
            headers["x-daily-ratelimit-token-remaining"] = "0"
            headers["Retry-After"] = str(self._seconds_to_midnight())
            return Decision(False, headers, daily_exhausted=True)
        self.used[principal] = self.used.get(principal, 0) + cost
        if self.burst_limit is not None:
            window.append(now)
        headers.update(self._burst_headers_now(window, now))
        headers["x-daily-ratelimit-token-remaining"] = str(self.remaining(principal))
        return Decision(True, headers)

    def remaining(self, principal: str) -> int:
        return max(0, self.daily_budget - self.used.get(principal, 0))

    def _burst_headers_now(self, window: deque[float], now: float) -> dict[str, str]:
        if self.burst_limit is None:
            return {}
        limit, seconds = self.burst_limit
        reset = math.ceil(window[0] + seconds - now) if window else math.ceil(seconds)
        return self._burst_headers(limit, max(0, limit - len(window)), max(1, reset))

    @staticmethod
    def _burst_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
        return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-reset": str(reset)}

    def _seconds_to_midnight(self) -> int:
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        return max(1, math.ceil((midnight - now).total_seconds()))

    def snapshot(self) -> dict[str, object]:
        return {
            "burst_limit": list(self.burst_limit) if self.burst_limit else None,
            "daily_token_budget": self.daily_budget,
            "daily_tokens_used": dict(self.used),
        }
