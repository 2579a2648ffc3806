"""Jinja filters for the console's templates."""

from __future__ import annotations

from datetime import datetime

from bridge.console import blueprint
from bridge.console.common import fmt_time


@blueprint.app_template_filter("console_time")
def console_time(value: datetime | str | None) -> str:
    return fmt_time(value)
