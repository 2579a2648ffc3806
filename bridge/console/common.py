"""Helpers shared by the console's views: the store, paging, formatting and safe links."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import Config
from core.db import transaction
from core.models import Alert

PER_PAGE = 50


def config() -> Config:
    from bridge.app import state

    return state().config


@contextmanager
def reading() -> Iterator[Session]:
    """A session for a page's reads."""
    from bridge.app import state

    with state().factory() as session:
        yield session


@contextmanager
def writing() -> Iterator[Session]:
    """One transaction for an action: commit on success, roll back on any exception."""
    from bridge.app import state

    with transaction(state().factory) as session:
        yield session


@dataclass(frozen=True)
class Page:
    number: int
    per_page: int
    has_next: bool

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page

    def link(self, number: int) -> str:
        args = {k: v for k, v in request.args.items() if k != "page" and v}
        args["page"] = str(number)
        return f"{request.path}?{urlencode(args)}"


def page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 100_000))
    except ValueError:
        return 1


def paged(rows: list[Any], number: int, per_page: int = PER_PAGE) -> tuple[list[Any], Page]:
    """Rows fetched with ``limit per_page + 1``: the extra row only says there is a next page."""
    return rows[:per_page], Page(number, per_page, len(rows) > per_page)


def open_alerts(session: Session) -> int:
    query = select(func.count()).select_from(Alert).where(Alert.resolved_at.is_(None))
    return int(session.scalar(query) or 0)


def fmt_time(value: datetime | str | None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        value = parsed
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def safe_url(url: Any) -> str | None:
    """An http(s) URL to link to, or None (never a javascript: or data: link)."""
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return url
    return None
