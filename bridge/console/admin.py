"""The suppression list, admin alerts (with a resolve button) and the effective config."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml
from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from bridge.console import blueprint, queries
from bridge.console.common import PER_PAGE, config, page_number, paged, reading, writing
from core.config import masked
from core.models import Alert, utcnow


@blueprint.get("/suppressions")
def suppressions() -> ResponseReturnValue:
    q = request.args.get("q", "")[:60]
    business = request.args.get("business") or None
    number = page_number()
    with reading() as s:
        found = queries.suppressions(s, q, business, (number - 1) * PER_PAGE, PER_PAGE + 1)
        rows, page = paged(found, number)
    return render_template(
        "suppressions.html",
        rows=rows,
        page=page,
        q=q,
        business=business,
        businesses=[b.id for b in config().businesses],
    )


@blueprint.get("/alerts")
def alerts() -> ResponseReturnValue:
    show_all = request.args.get("show") == "all"
    number = page_number()
    with reading() as s:
        rows, page = paged(queries.alerts(s, show_all, (number - 1) * PER_PAGE, PER_PAGE + 1), number)
    return render_template("alerts.html", rows=rows, page=page, show_all=show_all)


@blueprint.post("/alerts/<int:alert_id>/resolve")
def resolve_alert(alert_id: int) -> ResponseReturnValue:
    with writing() as s:
        row = s.get(Alert, alert_id)
        if row is not None and row.resolved_at is None:
            row.resolved_at = utcnow()
            done = True
        else:
            done = False
    if done:
        flash(f"Alert {alert_id} resolved.", "ok")
    else:
        flash(f"Alert {alert_id} is not open (already resolved, or unknown).", "error")
    return redirect(url_for("console.alerts"))


SECRET_WORDS = ("password", "secret", "token", "api_key", "private_key")


def scrub(value: Any, key: str = "") -> Any:
    """On top of core.config.masked: hide anything named like a secret, and the path of webhook
    URLs (a chat webhook URL is itself the credential)."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, key) for v in value]
    lowered = key.lower()
    secret_named = any(word in lowered for word in SECRET_WORDS) and not lowered.endswith("_file")
    if value and secret_named and value != "***":
        return "***"
    if isinstance(value, str) and lowered.endswith("webhook_url") and value.startswith(("http://", "https://")):
        parts = urlsplit(value)
        return f"{parts.scheme}://{parts.hostname or ''}/***"
    return value


@blueprint.get("/config")
def effective_config() -> ResponseReturnValue:
    cfg = config()
    text = yaml.safe_dump(scrub(masked(cfg)), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return render_template("config.html", text=text, source=cfg.source)
